//! The Pillow pixel operations A1111's inpainting runs, reproduced with Pillow's integer arithmetic:
//! masked pastes into premultiplied RGBa, `GaussianBlur` (three extended box blurs), RGBa → RGBA, and
//! `alpha_composite`. On top of them: `masking.fill` ("Masked content: fill") and the final overlay.

use image::{GrayImage, RgbImage, Rgba, RgbaImage};

use crate::mask::CropBox;
use crate::resize::{ResizeMode, resize_image};

/// Pillow's `DIV255`: a/255 rounded, in integers.
fn div255(a: u32) -> u32 {
    let t = a + 128;
    ((t >> 8) + t) >> 8
}

/// `Image.new('RGBa').paste(image.convert('RGBA').convert('RGBa'), mask=invert(mask))`: the image's pixels
/// kept where the mask is 0, premultiplied by 255 − mask.
fn premultiplied_where_unmasked(image: &RgbImage, mask: &GrayImage) -> RgbaImage {
    RgbaImage::from_fn(image.width(), image.height(), |x, y| {
        let keep = 255 - u32::from(mask.get_pixel(x, y)[0]);
        let p = image.get_pixel(x, y);
        let c = |v: u8| div255(u32::from(v) * keep) as u8;
        Rgba([c(p[0]), c(p[1]), c(p[2]), keep as u8])
    })
}

/// RGBa → RGBA: colour ·255 / alpha, truncated (Pillow's `rgba2rgbA`).
fn unpremultiply(image: &mut RgbaImage) {
    for p in image.pixels_mut() {
        let alpha = u32::from(p[3]);
        if alpha != 0 && alpha != 255 {
            for c in 0..3 {
                p[c] = ((255 * u32::from(p[c])) / alpha).min(255) as u8;
            }
        }
    }
}

/// Pillow's `_gaussian_blur_radius`: the extended-box radius whose `passes` repetitions have variance
/// radius² (Gwosdek et al.).
fn box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let box_length = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((box_length - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// Pillow's `ImagingLineBoxBlur32` on one line of 4-channel pixels.
fn box_blur_line(line: &[[u8; 4]], radius: f32) -> Vec<[u8; 4]> {
    let size = line.len();
    let r = radius as usize;
    let ww = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24).wrapping_sub((r as u32 * 2 + 1).wrapping_mul(ww))) / 2;
    let last = size - 1;
    let edge_a = (r + 1).min(size);
    let edge_b = size.saturating_sub(r + 1);
    let px = |i: usize, c: usize| u32::from(line[i][c]);
    // The running sum for pixel −1: the first pixel r + 1 times, pixels 0 … r − 1 (the last one repeated
    // past the end of a short line).
    let acc_start = |c: usize| {
        let inside = (0..edge_a.saturating_sub(1)).fold(0u32, |sum, x| sum.wrapping_add(px(x, c)));
        px(0, c)
            .wrapping_mul(r as u32 + 1)
            .wrapping_add(inside)
            .wrapping_add(px(last, c).wrapping_mul((r + 1 - edge_a) as u32))
    };
    let mut acc: [u32; 4] = std::array::from_fn(acc_start);
    let mut out = vec![[0u8; 4]; size];
    let mut step = |x: usize, subtract: usize, add: usize, far_left: usize, far_right: usize| {
        for c in 0..4 {
            acc[c] = acc[c].wrapping_add(px(add, c)).wrapping_sub(px(subtract, c));
            let bulk = acc[c].wrapping_mul(ww).wrapping_add((px(far_left, c) + px(far_right, c)).wrapping_mul(fw));
            out[x][c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
        }
    };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            step(x, 0, x + r, 0, x + r + 1);
        }
        for x in edge_a..edge_b {
            step(x, x - r - 1, x + r, x - r - 1, x + r + 1);
        }
        for x in edge_b..=last {
            step(x, x - r - 1, last, x - r - 1, last);
        }
    } else {
        for x in 0..edge_b {
            step(x, 0, x + r, 0, x + r + 1);
        }
        for x in edge_b..edge_a {
            step(x, 0, last, 0, last);
        }
        for x in edge_a..=last {
            step(x, x - r - 1, last, x - r - 1, last);
        }
    }
    out
}

/// `image.filter(ImageFilter.GaussianBlur(radius))` on a 4-channel image (Pillow: three box-blur passes
/// along rows, then three along columns).
fn gaussian_blur(image: &RgbaImage, radius: f32) -> RgbaImage {
    if radius == 0.0 {
        return image.clone();
    }
    let r = box_radius(radius, 3);
    if r == 0.0 {
        return image.clone();
    }
    let (w, h) = image.dimensions();
    let mut pixels: Vec<[u8; 4]> = image.pixels().map(|p| p.0).collect();
    for _ in 0..3 {
        pixels = pixels.chunks(w as usize).flat_map(|row| box_blur_line(row, r)).collect();
    }
    let mut columns: Vec<[u8; 4]> = (0..w as usize)
        .flat_map(|x| (0..h as usize).map(move |y| (x, y)))
        .map(|(x, y)| pixels[y * w as usize + x])
        .collect();
    for _ in 0..3 {
        columns = columns.chunks(h as usize).flat_map(|column| box_blur_line(column, r)).collect();
    }
    RgbaImage::from_fn(w, h, |x, y| Rgba(columns[(x * h + y) as usize]))
}

/// Pillow's `alpha_composite(destination, source)`, in place on `destination`.
fn alpha_composite(destination: &mut RgbaImage, source: &RgbaImage) {
    const BITS: u32 = 7;
    let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
    for (dst, src) in destination.pixels_mut().zip(source.pixels()) {
        if src[3] == 0 {
            continue;
        }
        let (sa, da) = (u32::from(src[3]), u32::from(dst[3]));
        let blend = da * (255 - sa);
        let outa255 = sa * 255 + blend;
        let coef1 = sa * 255 * 255 * (1 << BITS) / outa255;
        let coef2 = 255 * (1 << BITS) - coef1;
        for c in 0..3 {
            let mixed = u32::from(src[c]) * coef1 + u32::from(dst[c]) * coef2;
            dst[c] = (shift_div255(mixed + (0x80 << BITS)) >> BITS) as u8;
        }
        dst[3] = shift_div255(outa255 + 0x80) as u8;
    }
}

/// A1111's `images.flatten` with its default background: an image with transparency is composited onto
/// white (`img2img_background_color`); others are just converted to RGB.
pub fn flatten(image: &image::DynamicImage) -> RgbImage {
    let image::DynamicImage::ImageRgba8(rgba) = image else { return image.to_rgb8() };
    let mut canvas = RgbaImage::from_pixel(rgba.width(), rgba.height(), Rgba([255, 255, 255, 255]));
    alpha_composite(&mut canvas, rgba);
    RgbImage::from_fn(canvas.width(), canvas.height(), |x, y| {
        let p = canvas.get_pixel(x, y);
        image::Rgb([p[0], p[1], p[2]])
    })
}

/// A1111's `masking.fill` ("Masked content: fill"): the masked area is painted from ever less blurred
/// copies of the unmasked pixels around it; unmasked pixels come back unchanged.
pub fn fill_masked(image: &RgbImage, mask: &GrayImage) -> RgbImage {
    let masked = premultiplied_where_unmasked(image, mask);
    let mut painted = RgbaImage::new(image.width(), image.height());
    for (radius, repeats) in [(256.0, 1), (64.0, 1), (16.0, 2), (4.0, 4), (2.0, 2), (0.0, 1)] {
        let mut blurred = gaussian_blur(&masked, radius);
        unpremultiply(&mut blurred);
        for _ in 0..repeats {
            alpha_composite(&mut painted, &blurred);
        }
    }
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let p = painted.get_pixel(x, y);
        image::Rgb([p[0], p[1], p[2]])
    })
}

/// The overlay A1111 lays over every inpainted result: the original image with alpha 255 − mask.
pub fn overlay_image(image: &RgbImage, mask: &GrayImage) -> RgbaImage {
    let mut overlay = premultiplied_where_unmasked(image, mask);
    unpremultiply(&mut overlay);
    overlay
}

/// A1111's `apply_overlay`: with `paste_to` ("Only masked"), the result is first fitted into the crop box
/// (crop-and-resize) on a transparent canvas of the original size; then the overlay is composited on top.
pub fn apply_overlay(result: &RgbImage, overlay: &RgbaImage, paste_to: Option<CropBox>) -> crate::Result<RgbImage> {
    let mut base = match paste_to {
        Some((x1, y1, x2, y2)) => {
            let fitted = resize_image(result, x2 - x1, y2 - y1, ResizeMode::CropAndResize)?;
            let mut canvas = RgbaImage::new(overlay.width(), overlay.height());
            for (x, y, p) in fitted.enumerate_pixels() {
                canvas.put_pixel(x1 + x, y1 + y, Rgba([p[0], p[1], p[2], 255]));
            }
            canvas
        }
        None => RgbaImage::from_fn(result.width(), result.height(), |x, y| {
            let p = result.get_pixel(x, y);
            Rgba([p[0], p[1], p[2], 255])
        }),
    };
    alpha_composite(&mut base, overlay);
    Ok(RgbImage::from_fn(base.width(), base.height(), |x, y| {
        let p = base.get_pixel(x, y);
        image::Rgb([p[0], p[1], p[2]])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_unmasked_pixels_and_paints_the_hole_from_around_it() {
        let image = RgbImage::from_fn(16, 16, |x, _| image::Rgb([if x < 8 { 200 } else { 40 }, 90, 10]));
        let mut mask = GrayImage::new(16, 16);
        for y in 4..12 {
            for x in 4..12 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        let filled = fill_masked(&image, &mask);
        assert_eq!(filled.get_pixel(0, 0), image.get_pixel(0, 0));
        assert_eq!(filled.get_pixel(15, 15), image.get_pixel(15, 15));
        let hole = filled.get_pixel(8, 8);
        assert!(hole[0] > 40 && hole[0] < 200 && hole[1].abs_diff(90) <= 2, "{hole:?}");
    }

    #[test]
    fn overlay_restores_the_original_where_the_mask_is_zero() {
        let original = RgbImage::from_pixel(4, 4, image::Rgb([10, 20, 30]));
        let result = RgbImage::from_pixel(4, 4, image::Rgb([200, 200, 200]));
        let mut mask = GrayImage::new(4, 4);
        mask.put_pixel(1, 1, image::Luma([255]));
        let out = apply_overlay(&result, &overlay_image(&original, &mask), None).unwrap();
        assert_eq!(out.get_pixel(0, 0), &image::Rgb([10, 20, 30]));
        assert_eq!(out.get_pixel(1, 1), &image::Rgb([200, 200, 200]));
    }

    #[test]
    fn transparent_pixels_flatten_onto_white() {
        let rgba = RgbaImage::from_fn(2, 1, |x, _| Rgba([0, 0, 0, if x == 0 { 0 } else { 255 }]));
        let flat = flatten(&image::DynamicImage::ImageRgba8(rgba));
        assert_eq!(flat.as_raw(), &[255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn box_radius_matches_pillow() {
        // Pillow's _gaussian_blur_radius(2, 3): sigma² = 4/3, L = √17, l = 1, a = 3·(2 − 4)/(6·(4/3 − 4)).
        assert!((box_radius(2.0, 3) - 1.375).abs() < 1e-6, "{}", box_radius(2.0, 3));
    }
}
