//! Inpainting's once-per-job pixel work at 512²: the mask blur (OpenCV's fixed-point Gaussian, blur 4) and
//! `masking.fill` (six Pillow Gaussian blurs of the premultiplied image and their composites).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use image::{GrayImage, Luma, RgbImage};

fn inputs() -> (RgbImage, GrayImage) {
    let image =
        RgbImage::from_fn(512, 512, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
    let mask = GrayImage::from_fn(512, 512, |x, y| {
        let inside = (x as i64 - 256).pow(2) + (y as i64 - 200).pow(2) < 120 * 120;
        Luma([if inside { 255 } else { 0 }])
    });
    (image, mask)
}

fn mask_ops(c: &mut Criterion) {
    let (image, mask) = inputs();
    c.bench_function("blur_mask_512_blur4", |b| b.iter(|| black_box(sdrt_io::blur_mask(&mask, 4, 4))));
    let blurred = sdrt_io::blur_mask(&mask, 4, 4);
    c.bench_function("fill_masked_512", |b| b.iter(|| black_box(sdrt_io::fill_masked(&image, &blurred))));
}

criterion_group!(benches, mask_ops);
criterion_main!(benches);
