//! Encoding a 512×512 RGB PNG with A1111's `parameters` infotext chunk through the public writer, on a smooth
//! image (compresses like a typical generation) and on pseudo-random pixels (the encoder's worst case).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sdrt_io::{DecodeLimits, encode_png_with_infotext, read_png_texts};

const SIZE: u32 = 512;
const INFOTEXT: &str = "a photo of an astronaut riding a horse on mars, highly detailed\n\
Negative prompt: blurry, low quality\n\
Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1234, Size: 512x512, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1";

/// Diagonal colour gradients with a little texture.
fn smooth_image() -> Vec<u8> {
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 3) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let texture = ((x * 7 + y * 13) % 5) as u8;
            pixels.extend([(x / 2) as u8 + texture, (y / 2) as u8, ((x + y) / 4) as u8 + texture]);
        }
    }
    pixels
}

/// Pixels from a multiplicative hash: nothing for deflate to find.
fn noise_image() -> Vec<u8> {
    (0..SIZE * SIZE * 3).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fn png_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("png_encode 512x512 rgb + infotext");
    group.throughput(Throughput::Bytes(u64::from(SIZE * SIZE * 3)));
    for (name, pixels) in [("smooth", smooth_image()), ("noise", noise_image())] {
        let encoded = encode_png_with_infotext(&pixels, SIZE, SIZE, INFOTEXT).expect("encodes");
        let texts = read_png_texts(&encoded, &DecodeLimits::default()).expect("reads back");
        assert_eq!(texts, vec![("parameters".to_owned(), INFOTEXT.to_owned())], "infotext chunk round-trips");
        group.bench_function(name, |b| {
            b.iter(|| encode_png_with_infotext(black_box(&pixels), SIZE, SIZE, INFOTEXT).expect("encodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, png_encode);
criterion_main!(benches);
