//! A1111's img2img resize modes (`images.resize_image`): just resize, crop and resize, resize and fill.
//!
//! Resampling is PIL's LANCZOS reproduced bit for bit ([`crate::pil_resize`]), as A1111 calls it. Images
//! already at the target size are passed through untouched.

use image::RgbImage;
use image::imageops;

use crate::error::{Error, Result};
use crate::pil_resize::{PilFilter, pil_resize};

/// How an init image is fitted to the requested size (A1111's `resize_mode` 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Stretch to the size, ignoring the aspect ratio.
    #[default]
    JustResize,
    /// Scale to cover the size, keeping the aspect ratio, and crop the centre.
    CropAndResize,
    /// Scale to fit inside the size, keeping the aspect ratio, and fill the bands by stretching the edges.
    ResizeAndFill,
}

impl ResizeMode {
    /// A1111's `resize_mode` number; 3 (latent upscale) belongs to hires fix, not to init images.
    pub fn from_a1111(mode: u32) -> Result<Self> {
        match mode {
            0 => Ok(Self::JustResize),
            1 => Ok(Self::CropAndResize),
            2 => Ok(Self::ResizeAndFill),
            other => Err(Error::Invalid {
                field: "resize_mode",
                message: format!("{other} is not supported for init images; use 0 (resize), 1 (crop) or 2 (fill)"),
            }),
        }
    }
}

/// Fits `image` to `width`×`height` with `mode`.
pub fn resize_image(image: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> Result<RgbImage> {
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        return Err(Error::Invalid {
            field: "image",
            message: format!(
                "cannot resize {}x{} to {width}x{height}; sizes must be positive",
                image.width(),
                image.height()
            ),
        });
    }
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let _span = tracing::info_span!("io::resize", ?mode, width, height).entered();
    Ok(match mode {
        ResizeMode::JustResize => lanczos(image, width, height),
        ResizeMode::CropAndResize => crop_and_resize(image, width, height),
        ResizeMode::ResizeAndFill => resize_and_fill(image, width, height),
    })
}

fn lanczos(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    pil_resize(image, width.max(1), height.max(1), PilFilter::Lanczos)
}

/// A1111's `src_w`/`src_h` for a mode: the scaled size that covers (`cover`) or fits inside the target.
fn scaled_size(image: &RgbImage, width: u32, height: u32, cover: bool) -> (u32, u32) {
    let (iw, ih) = (u64::from(image.width()), u64::from(image.height()));
    let (w, h) = (u64::from(width), u64::from(height));
    // ratio > src_ratio ⇔ w·ih > iw·h, compared exactly in integers.
    let target_wider = w * ih > iw * h;
    let use_width = if cover { target_wider } else { !target_wider && w * ih != iw * h };
    if use_width { (width, (ih * w / iw).max(1) as u32) } else { ((iw * h / ih).max(1) as u32, height) }
}

fn paste_centered(canvas: &mut RgbImage, image: &RgbImage) {
    let x = i64::from(canvas.width() / 2) - i64::from(image.width() / 2);
    let y = i64::from(canvas.height() / 2) - i64::from(image.height() / 2);
    imageops::replace(canvas, image, x, y);
}

fn crop_and_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = scaled_size(image, width, height, true);
    let mut canvas = RgbImage::new(width, height);
    paste_centered(&mut canvas, &lanczos(image, src_w, src_h));
    canvas
}

fn resize_and_fill(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = scaled_size(image, width, height, false);
    let resized = lanczos(image, src_w, src_h);
    let mut canvas = RgbImage::new(width, height);
    paste_centered(&mut canvas, &resized);
    let fill_h = (height / 2).saturating_sub(src_h / 2);
    let fill_w = (width / 2).saturating_sub(src_w / 2);
    if src_w == width && fill_h > 0 {
        let top = imageops::crop_imm(&resized, 0, 0, width, 1).to_image();
        let bottom = imageops::crop_imm(&resized, 0, src_h - 1, width, 1).to_image();
        imageops::replace(&mut canvas, &lanczos(&top, width, fill_h), 0, 0);
        imageops::replace(&mut canvas, &lanczos(&bottom, width, fill_h), 0, i64::from(fill_h + src_h));
    } else if src_h == height && fill_w > 0 {
        let left = imageops::crop_imm(&resized, 0, 0, 1, height).to_image();
        let right = imageops::crop_imm(&resized, src_w - 1, 0, 1, height).to_image();
        imageops::replace(&mut canvas, &lanczos(&left, fill_w, height), 0, 0);
        imageops::replace(&mut canvas, &lanczos(&right, fill_w, height), i64::from(fill_w + src_w), 0);
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn wide() -> RgbImage {
        RgbImage::from_fn(8, 4, |x, _| if x < 4 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) })
    }

    #[test]
    fn same_size_is_untouched_and_modes_parse() {
        let image = wide();
        assert_eq!(resize_image(&image, 8, 4, ResizeMode::CropAndResize).unwrap(), image);
        assert_eq!(ResizeMode::from_a1111(2).unwrap(), ResizeMode::ResizeAndFill);
        assert!(ResizeMode::from_a1111(3).unwrap_err().to_string().contains("resize_mode"));
    }

    #[test]
    fn just_resize_stretches() {
        let out = resize_image(&wide(), 4, 4, ResizeMode::JustResize).unwrap();
        assert_eq!(out.dimensions(), (4, 4));
        assert!(out.get_pixel(0, 2)[0] > 200 && out.get_pixel(3, 2)[2] > 200);
    }

    #[test]
    fn crop_keeps_the_centre_and_fill_keeps_everything() {
        let cropped = resize_image(&wide(), 4, 4, ResizeMode::CropAndResize).unwrap();
        assert_eq!(cropped.dimensions(), (4, 4));
        // Scaled to 8×4 (covering), the centre 4 columns hold two red and two blue.
        assert!(cropped.get_pixel(0, 0)[0] > 200 && cropped.get_pixel(3, 0)[2] > 200);
        let filled = resize_image(&wide(), 4, 4, ResizeMode::ResizeAndFill).unwrap();
        // Scaled to 4×2 in the middle rows; the top and bottom bands stretch the edge rows, so no black remains.
        assert!(filled.pixels().all(|p| p.0 != [0, 0, 0]), "fill bands cover the canvas");
    }

    #[test]
    fn zero_sizes_are_errors() {
        assert!(resize_image(&wide(), 0, 4, ResizeMode::JustResize).is_err());
    }
}
