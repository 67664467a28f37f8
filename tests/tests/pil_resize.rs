//! `sdrt_io::pil_resize` against Pillow's own `Image.resize` output (tools/fixtures/gen_passes.py): every
//! filter, enlarging, shrinking and mixed sizes, byte for byte; and tiled upscaling with an ESRGAN-architecture
//! ONNX model against A1111's `upscale_with_model`.

use sdrt_io::{PilFilter, pil_resize};
use sdrt_tests::{fixture, fixture_json};

fn load(relative: &str) -> image::RgbImage {
    let png = sdrt_io::decode_png(&std::fs::read(fixture(relative)).unwrap()).unwrap();
    image::RgbImage::from_raw(png.width, png.height, png.pixels).unwrap()
}

#[test]
fn every_filter_matches_pillow_exactly() {
    let cases = fixture_json("passes/pil_resize.json");
    let source = load(cases["source"].as_str().unwrap());
    let mut problems = Vec::new();
    for case in cases["resizes"].as_array().unwrap() {
        let filter = match case["filter"].as_str().unwrap() {
            "lanczos" => PilFilter::Lanczos,
            "nearest" => PilFilter::Nearest,
            "bicubic" => PilFilter::Bicubic,
            "bilinear" => PilFilter::Bilinear,
            other => panic!("unknown filter {other}"),
        };
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let ours = pil_resize(&source, w, h, filter);
        let pillow = load(case["image"].as_str().unwrap());
        let differing = ours.as_raw().iter().zip(pillow.as_raw()).filter(|(a, b)| a != b).count();
        if ours.dimensions() != pillow.dimensions() || differing > 0 {
            problems.push(format!("{filter:?} {w}x{h}: {differing} bytes differ"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tiled_model_upscaling_matches_a1111() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("passes/esrgan.json");
    let source = load(cases["source"].as_str().unwrap());
    let config = sdrt_models::SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let mut model = sdrt_models::UpscaleModel::load(&fixture(cases["model"].as_str().unwrap()), &config).unwrap();
    let mut run = |tile: &image::RgbImage| -> sdrt_models::Result<image::RgbImage> {
        let pixels = sdrt_models::RgbPixels { width: tile.width(), height: tile.height(), pixels: tile.to_vec() };
        let out = model.upscale(&pixels)?;
        Ok(image::RgbImage::from_raw(out.width, out.height, out.pixels).unwrap())
    };
    for case in cases["outputs"].as_array().unwrap() {
        let (tile, overlap) = (case["tile"].as_u64().unwrap() as u32, case["overlap"].as_u64().unwrap() as u32);
        let ours = sdrt_io::upscale_tiled(&source, tile, overlap, &mut run).unwrap();
        let reference = load(case["image"].as_str().unwrap());
        assert_eq!(ours.dimensions(), reference.dimensions(), "tile {tile}");
        let worst = ours.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "tile {tile} overlap {overlap}: pixels differ by {worst} levels");
    }
}
