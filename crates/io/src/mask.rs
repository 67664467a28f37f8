//! Inpainting masks as A1111 prepares them: `create_binary_mask` (alpha masks), OpenCV's bit-exact 8-bit
//! `GaussianBlur` for "Mask blur", and `masking.py`'s crop region for "Only masked".

use image::{DynamicImage, GrayImage, Luma};

/// A1111's `create_binary_mask`: an RGBA mask whose alpha is not fully opaque is its alpha channel
/// (thresholded at 128 when `round`); any other image is its luminance (PIL `convert("L")`).
pub fn mask_from_image(image: &DynamicImage, round: bool) -> GrayImage {
    if let DynamicImage::ImageRgba8(rgba) = image
        && rgba.pixels().any(|p| p[3] != 255)
    {
        let threshold = |alpha: u8| {
            if !round {
                alpha
            } else if alpha > 128 {
                255
            } else {
                0
            }
        };
        return GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| Luma([threshold(rgba.get_pixel(x, y)[3])]));
    }
    let rgb = image.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| Luma([pil_luminance(rgb.get_pixel(x, y).0)]))
}

/// PIL's RGB → L: ITU-R 601-2 luma in 16-bit fixed point, rounded.
pub fn pil_luminance([r, g, b]: [u8; 3]) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// A1111's "Mask blur": `cv2.GaussianBlur` along x with sigma `blur_x` (kernel 2·⌊2.5·σ + 0.5⌋ + 1), then
/// along y with `blur_y`; a zero blur skips its pass.
pub fn blur_mask(mask: &GrayImage, blur_x: u32, blur_y: u32) -> GrayImage {
    let mut out = mask.clone();
    if blur_x > 0 {
        let kernel = gaussian_kernel_q8(kernel_size(blur_x), f64::from(blur_x));
        out = convolve_rows(&out, &kernel, false);
    }
    if blur_y > 0 {
        let kernel = gaussian_kernel_q8(kernel_size(blur_y), f64::from(blur_y));
        out = convolve_rows(&out, &kernel, true);
    }
    out
}

fn kernel_size(blur: u32) -> usize {
    2 * ((2.5 * f64::from(blur) + 0.5) as usize) + 1
}

/// OpenCV's `getGaussianKernelBitExact` followed by `getGaussianKernelFixedPoint_ED` with 8 fraction bits:
/// weights that sum to exactly 256, rounded with error diffusion from the outside in.
fn gaussian_kernel_q8(n: usize, sigma: f64) -> Vec<i64> {
    let scale = -0.125 / (sigma * sigma);
    let half = (n - 1) / 2;
    let values: Vec<f64> =
        (0..half).map(|i| (1 - n as i64 + 2 * i as i64) as f64).map(|x| (x * x * scale).exp()).collect();
    let sum = values.iter().sum::<f64>() * 2.0 + 1.0;
    let normalise = 1.0 / sum;
    let mut kernel = vec![0i64; n];
    let mut error = 0.0;
    let mut total = 0;
    for (i, value) in values.iter().enumerate() {
        let adjusted = value * normalise * 256.0 + error;
        let rounded = adjusted.round_ties_even() as i64;
        error = adjusted - rounded as f64;
        kernel[i] = rounded;
        kernel[n - 1 - i] = rounded;
        total += 2 * rounded;
    }
    kernel[half] = 256 - total;
    kernel
}

/// OpenCV's `BORDER_REFLECT_101` index (`borderInterpolate`).
fn reflect_101(mut p: i64, len: i64) -> usize {
    if len == 1 {
        return 0;
    }
    while p < 0 || p >= len {
        p = if p < 0 { -p } else { 2 * (len - 1) - p };
    }
    p as usize
}

/// One 8-bit fixed-point pass of `kernel` along rows (or columns), rounded as OpenCV's `v_rshr_pack<8>`.
fn convolve_rows(image: &GrayImage, kernel: &[i64], vertical: bool) -> GrayImage {
    let (w, h) = image.dimensions();
    let radius = (kernel.len() / 2) as i64;
    let len = i64::from(if vertical { h } else { w });
    GrayImage::from_fn(w, h, |x, y| {
        let at = i64::from(if vertical { y } else { x });
        let sum: i64 = kernel
            .iter()
            .enumerate()
            .map(|(k, weight)| {
                let source = reflect_101(at + k as i64 - radius, len) as u32;
                let pixel = if vertical { image.get_pixel(x, source)[0] } else { image.get_pixel(source, y)[0] };
                weight * i64::from(pixel)
            })
            .sum();
        Luma([((sum + 128) >> 8).clamp(0, 255) as u8])
    })
}

/// A crop box: left, top, right, bottom (right and bottom exclusive), as PIL boxes are.
pub type CropBox = (u32, u32, u32, u32);

/// A1111's `masking.get_crop_region_v2`: the bounding box of the mask's non-zero pixels grown by `padding`
/// and clamped to the image; `None` for an empty mask.
pub fn crop_region(mask: &GrayImage, padding: u32) -> Option<CropBox> {
    let (w, h) = mask.dimensions();
    let mut bbox: Option<CropBox> = None;
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel[0] != 0 {
            let (x1, y1, x2, y2) = bbox.unwrap_or((x, y, x + 1, y + 1));
            bbox = Some((x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1)));
        }
    }
    bbox.map(|(x1, y1, x2, y2)| {
        (x1.saturating_sub(padding), y1.saturating_sub(padding), (x2 + padding).min(w), (y2 + padding).min(h))
    })
}

/// A1111's `masking.expand_crop_region`: grows the box (never shrinks it) towards the processing aspect ratio
/// `width`×`height`, keeping it inside the `image_width`×`image_height` image.
pub fn expand_crop_region(
    (x1, y1, x2, y2): CropBox,
    width: u32,
    height: u32,
    image_width: u32,
    image_height: u32,
) -> CropBox {
    let (mut x1, mut y1, mut x2, mut y2) = (i64::from(x1), i64::from(y1), i64::from(x2), i64::from(y2));
    let ratio_crop = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = f64::from(width) / f64::from(height);
    let grow = |lo: &mut i64, hi: &mut i64, desired: f64, limit: i64| {
        let diff = (desired - (*hi - *lo) as f64) as i64;
        *lo -= diff / 2;
        *hi += diff - diff / 2;
        if *hi >= limit {
            let over = *hi - limit;
            *hi -= over;
            *lo -= over;
        }
        if *lo < 0 {
            *hi -= *lo;
            *lo = 0;
        }
        if *hi >= limit {
            *hi = limit;
        }
    };
    if ratio_crop > ratio_processing {
        let desired = (x2 - x1) as f64 / ratio_processing;
        grow(&mut y1, &mut y2, desired, i64::from(image_height));
    } else {
        let desired = (y2 - y1) as f64 * ratio_processing;
        grow(&mut x1, &mut x2, desired, i64::from(image_width));
    }
    (x1 as u32, y1 as u32, x2 as u32, y2 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_matches_opencv_impulse_response() {
        // cv2.GaussianBlur(impulse of 255 at x=20 in a 1×40 row, (21, 1), 4) from opencv-python 4.10.
        let mut row = GrayImage::new(40, 1);
        row.put_pixel(20, 0, Luma([255]));
        let blurred: Vec<u8> = blur_mask(&row, 4, 0).pixels().map(|p| p[0]).collect();
        let expected = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 5, 9, 11, 16, 19, 23, 25, 26, 25, 23, 19, 16, 11, 9, 5, 4, 2, 1, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(blurred, expected);
    }

    #[test]
    fn kernels_sum_to_one_in_q8() {
        for blur in [1, 4, 16, 64] {
            let kernel = gaussian_kernel_q8(kernel_size(blur), f64::from(blur));
            assert_eq!(kernel.iter().sum::<i64>(), 256, "blur {blur}");
        }
    }

    #[test]
    fn crop_region_pads_and_clamps() {
        let mut mask = GrayImage::new(20, 10);
        mask.put_pixel(5, 3, Luma([1]));
        mask.put_pixel(8, 6, Luma([200]));
        assert_eq!(crop_region(&mask, 0), Some((5, 3, 9, 7)));
        assert_eq!(crop_region(&mask, 4), Some((1, 0, 13, 10)));
        assert_eq!(crop_region(&GrayImage::new(4, 4), 2), None);
    }

    #[test]
    fn crop_expands_towards_the_processing_ratio_inside_the_image() {
        assert_eq!(expand_crop_region((10, 10, 20, 30), 64, 64, 100, 100), (5, 10, 25, 30));
        assert_eq!(expand_crop_region((0, 0, 40, 10), 64, 64, 100, 20), (0, 0, 40, 20));
    }

    #[test]
    fn alpha_masks_use_the_alpha_channel() {
        let rgba = image::RgbaImage::from_fn(2, 1, |x, _| image::Rgba([0, 0, 0, if x == 0 { 200 } else { 100 }]));
        let mask = mask_from_image(&DynamicImage::ImageRgba8(rgba.clone()), true);
        assert_eq!(mask.as_raw(), &[255, 0]);
        assert_eq!(mask_from_image(&DynamicImage::ImageRgba8(rgba), false).as_raw(), &[200, 100]);
        let white = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([255, 255, 255])));
        assert_eq!(mask_from_image(&white, true).as_raw(), &[255]);
    }
}
