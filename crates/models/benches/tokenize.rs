//! Tokenizing a long prompt (three 75-token chunks' worth) with the committed CLIP vocabulary: plain ASCII,
//! which skips ftfy's fixes, and the same prompt with entities, full-width text and curly quotes mixed in.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use sdrt_models::ClipTokenizer;

fn clip_tokenizer() -> ClipTokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/_tokenizers/clip-pad-eos");
    ClipTokenizer::from_dir(&dir, "<|endoftext|>").expect("committed CLIP vocabulary loads")
}

/// About 200 tokens (three 75-token chunks): a typical long A1111 tag prompt.
fn ascii_prompt() -> String {
    let tags = "masterpiece, best quality, ultra detailed, portrait of a knight in ornate silver armor, \
                misty forest at dawn, golden light filtering through ancient oak trees, river reflections, \
                volumetric fog, intricate engraving, cinematic lighting, sharp focus, depth of field";
    [tags; 4].join(", ")
}

fn tokenize(c: &mut Criterion) {
    let tokenizer = clip_tokenizer();
    let ascii = ascii_prompt();
    let tokens = tokenizer.tokenize(&[ascii.as_str()]).expect("tokenizes")[0].len();
    assert!(tokens > 150 && tokens <= 225, "prompt should fill three chunks, has {tokens} tokens");
    let fancy = ascii.replacen("knight", "“knight” &amp; ＳＱＵＩＲＥ", 3).replacen("fog", "ﬁne fog", 3);

    c.bench_function("tokenize 3-chunk prompt (ascii)", |b| {
        b.iter(|| tokenizer.tokenize(&[std::hint::black_box(ascii.as_str())]).expect("tokenizes"))
    });
    c.bench_function("tokenize 3-chunk prompt (needs ftfy fixes)", |b| {
        b.iter(|| tokenizer.tokenize(&[std::hint::black_box(fancy.as_str())]).expect("tokenizes"))
    });
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
