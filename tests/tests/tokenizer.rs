//! The CLIP tokenizer on the committed vocabulary (tests/fixtures/models/_tokenizers/) against ids that
//! transformers' slow and fast `CLIPTokenizer` produce (checked by tools/fixtures/gen_pipelines.py).

use sdrt_models::{BOS_TOKEN_ID, ClipTokenizer, EOS_TOKEN_ID, ModelFolder};
use sdrt_tests::{fixture, fixtures_dir};

fn tokenizer(kind: &str, pad: &str) -> ClipTokenizer {
    fixture(&format!("models/_tokenizers/{kind}/tokenizer_config.json"));
    ClipTokenizer::from_dir(&fixtures_dir().join("models/_tokenizers").join(kind), pad).expect("tokenizer loads")
}

const ASTRONAUT: [u32; 10] = [320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496];

#[test]
fn the_reference_prompt_tokenizes_like_transformers() {
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let ids = tok.tokenize(&["a photo of an astronaut riding a horse on mars"]).expect("tokenizes");
    assert_eq!(ids, vec![ASTRONAUT.to_vec()]);
}

#[test]
fn case_and_whitespace_are_normalised() {
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let ids = tok.tokenize(&["  A   PHOTO of\tan\nastronaut riding a horse on MARS "]).expect("tokenizes");
    assert_eq!(ids[0], ASTRONAUT.to_vec());
}

#[test]
fn fragments_are_tokenized_separately() {
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let ids = tok.tokenize(&["a photo of ", "an astronaut", ""]).expect("tokenizes");
    assert_eq!(ids, vec![vec![320, 1125, 539], vec![550, 18376], vec![]]);
}

#[test]
fn html_entities_are_unescaped_like_a1111() {
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let escaped = tok.tokenize(&["fish &amp; chips"]).expect("tokenizes");
    let plain = tok.tokenize(&["fish & chips"]).expect("tokenizes");
    assert_eq!(escaped, plain);
}

#[test]
fn padding_follows_tokenizer_config() {
    let sd1 = tokenizer("clip-pad-eos", "<|endoftext|>");
    let sd2 = tokenizer("clip-pad-0", "!");
    assert_eq!((sd1.pad_id(), sd2.pad_id()), (EOS_TOKEN_ID, 0));
    let padded = sd2.encode_padded("a photo").expect("tokenizes");
    assert_eq!(padded.len(), 77);
    assert_eq!(&padded[..4], &[BOS_TOKEN_ID, 320, 1125, EOS_TOKEN_ID]);
    assert!(padded[4..].iter().all(|id| *id == 0));
}

#[test]
fn the_comma_token_is_a_word() {
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let ids = tok.tokenize(&["a, b"]).expect("tokenizes");
    assert_eq!(ids[0][1], tok.comma_id());
    assert_eq!(tok.comma_id(), 267);
}

#[test]
fn model_folders_load_their_tokenizers_with_the_right_pad() {
    let folder = ModelFolder::open(&fixtures_dir().join("models/sdxl-tiny")).expect("opens");
    let first = ClipTokenizer::load(folder.tokenizer.as_ref().expect("tokenizer")).expect("loads");
    let second = ClipTokenizer::load(folder.tokenizer_2.as_ref().expect("tokenizer_2")).expect("loads");
    assert_eq!((first.pad_id(), second.pad_id()), (EOS_TOKEN_ID, 0));
}

#[test]
fn a_pad_token_missing_from_the_vocabulary_is_an_error() {
    let dir = fixtures_dir().join("models/_tokenizers/clip-pad-eos");
    let message = ClipTokenizer::from_dir(&dir, "<|no such token|>").expect_err("bad pad").to_string();
    assert!(message.contains("pad_token") && message.contains("<|no such token|>"), "{message}");
}

/// Every prompt of tests/fixtures/tokenizer/tokenize.json gives the slow (A1111, ftfy) ids, including the
/// prompts where the fast tokenizer differs (entities, ligatures, full-width text, mojibake, curly quotes,
/// final sigma).
#[test]
fn fixture_prompts_match_the_slow_tokenizer() {
    let cases = sdrt_tests::fixture_json("tokenizer/tokenize.json");
    let tok = tokenizer("clip-pad-eos", "<|endoftext|>");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect()
    };
    let prompts = cases["prompts"].as_array().expect("prompts");
    assert!(prompts.len() >= 30);
    let mut slow_only = 0;
    for case in prompts {
        let text = case["text"].as_str().expect("text");
        let got = tok.tokenize(&[text]).expect("tokenizes").remove(0);
        assert_eq!(got, ids(&case["slow"]["raw"]), "{text:?}");
        let with_special = tok.encode_padded(text).expect("tokenizes");
        let slow_ids = ids(&case["slow"]["ids"]);
        if slow_ids.len() <= 77 {
            assert_eq!(&with_special[..slow_ids.len()], slow_ids.as_slice(), "{text:?}");
        }
        slow_only += usize::from(case["slow_fast_differ"].as_bool() == Some(true));
    }
    assert!(slow_only >= 9, "the fixture should cover the slow-only ftfy cases, has {slow_only}");
}
