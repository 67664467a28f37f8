//! Inpainting's pixel operations in `sdrt_io` against the Python references (tools/fixtures/gen_passes.py,
//! run with OpenCV 4.10 and Pillow 11): mask blur, crop regions, `masking.fill` and the final overlay, byte
//! for byte.

use image::{GrayImage, RgbImage};
use sdrt_tests::{fixture, fixture_json};

fn rgb(relative: &str) -> RgbImage {
    let png = sdrt_io::decode_png(&std::fs::read(fixture(relative)).unwrap()).unwrap();
    RgbImage::from_raw(png.width, png.height, png.pixels).unwrap()
}

fn gray(relative: &str) -> GrayImage {
    let image = rgb(relative);
    GrayImage::from_fn(image.width(), image.height(), |x, y| image::Luma([image.get_pixel(x, y)[0]]))
}

fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

fn u32_of(value: &serde_json::Value) -> u32 {
    value.as_u64().unwrap() as u32
}

#[test]
fn mask_blur_matches_opencv() {
    let cases = fixture_json("passes/masks.json");
    let mask = gray(cases["mask"].as_str().unwrap());
    for case in cases["blurs"].as_array().unwrap() {
        let ours = sdrt_io::blur_mask(&mask, u32_of(&case["x"]), u32_of(&case["y"]));
        let reference = gray(case["image"].as_str().unwrap());
        assert_eq!(differing(ours.as_raw(), reference.as_raw()), 0, "blur {case}");
    }
}

#[test]
fn crop_regions_match_masking_py() {
    let cases = fixture_json("passes/masks.json");
    let mask = gray(cases["mask"].as_str().unwrap());
    for case in cases["crops"].as_array().unwrap() {
        let blur = u32_of(&case["blur"]);
        let crop = sdrt_io::crop_region(&sdrt_io::blur_mask(&mask, blur, blur), u32_of(&case["padding"])).unwrap();
        let want: Vec<u32> = case["crop"].as_array().unwrap().iter().map(u32_of).collect();
        assert_eq!([crop.0, crop.1, crop.2, crop.3].to_vec(), want, "{case}");
        let (w, h) = (u32_of(&case["width"]), u32_of(&case["height"]));
        let expanded = sdrt_io::expand_crop_region(crop, w, h, mask.width(), mask.height());
        let want: Vec<u32> = case["expanded"].as_array().unwrap().iter().map(u32_of).collect();
        assert_eq!([expanded.0, expanded.1, expanded.2, expanded.3].to_vec(), want, "{case}");
    }
}

#[test]
fn fill_and_overlay_match_pillow() {
    let cases = fixture_json("passes/masks.json");
    let mask = gray(cases["mask"].as_str().unwrap());
    let init = rgb(cases["init"].as_str().unwrap());
    for case in cases["fills"].as_array().unwrap() {
        let blur = u32_of(&case["blur"]);
        let filled = sdrt_io::fill_masked(&init, &sdrt_io::blur_mask(&mask, blur, blur));
        let reference = rgb(case["image"].as_str().unwrap());
        assert_eq!(differing(filled.as_raw(), reference.as_raw()), 0, "fill {case}");
    }
    let inverted = RgbImage::from_fn(init.width(), init.height(), |x, y| {
        let p = init.get_pixel(x, y);
        image::Rgb([255 - p[0], 255 - p[1], 255 - p[2]])
    });
    for case in cases["overlays"].as_array().unwrap() {
        let blur = u32_of(&case["blur"]);
        let mut overlay_mask = sdrt_io::blur_mask(&mask, blur, blur);
        if case["doubled"].as_bool().unwrap() {
            overlay_mask.pixels_mut().for_each(|p| p[0] = p[0].saturating_mul(2));
        }
        let paste_to =
            case["paste_to"].as_array().map(|b| (u32_of(&b[0]), u32_of(&b[1]), u32_of(&b[2]), u32_of(&b[3])));
        let out = sdrt_io::apply_overlay(&inverted, &sdrt_io::overlay_image(&init, &overlay_mask), paste_to).unwrap();
        let reference = rgb(case["image"].as_str().unwrap());
        assert_eq!(differing(out.as_raw(), reference.as_raw()), 0, "overlay {case}");
    }
}
