//! Inpainting's pixel side, resolved in prepare as A1111's `StableDiffusionProcessingImg2Img.init` does it:
//! invert, blur, "Only masked" crop or whole-picture resize, overlays, masked-content fill, the latent mask
//! and the conditioning mask, and the infotext entries they add.

use image::{GrayImage, Luma, RgbImage, RgbaImage};
use ndarray::Array2;
use sdrt_api_types::Img2ImgRequest;
use sdrt_io::{CropBox, InfotextValue, PilFilter, ResizeMode};
use sdrt_processing::RgbImage as Frame;
use sdrt_processing::{LATENT_FACTOR, LatentMask};

use super::plan::to_image_buffer;

/// `inpainting_fill`: what the masked area starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskedContent {
    /// 0: painted from the surrounding pixels (`masking.fill`).
    Fill,
    /// 1: the original pixels.
    Original,
    /// 2: `masking.fill`, then the latents replaced by seed noise.
    LatentNoise,
    /// 3: `masking.fill`, then the latents zeroed.
    LatentNothing,
}

impl MaskedContent {
    fn from_a1111(fill: u32) -> crate::Result<Self> {
        Ok(match fill {
            0 => Self::Fill,
            1 => Self::Original,
            2 => Self::LatentNoise,
            3 => Self::LatentNothing,
            other => {
                return Err(crate::Error::Field {
                    field: "inpainting_fill",
                    problem: format!(
                        "{other} is not a fill; use 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)"
                    ),
                });
            }
        })
    }

    fn label(self) -> Option<&'static str> {
        match self {
            Self::Fill => Some("fill"),
            Self::Original => None,
            Self::LatentNoise => Some("latent noise"),
            Self::LatentNothing => Some("latent nothing"),
        }
    }
}

/// What execute needs for an inpainting job.
pub(crate) struct InpaintPlan {
    /// Per init image: the original with alpha 255 − mask, laid over every result (A1111 `overlay_images`).
    pub(crate) overlays: Vec<RgbaImage>,
    /// "Only masked": the box of the original the result is fitted back into.
    pub(crate) paste_to: Option<CropBox>,
    /// The area to repaint at latent size.
    pub(crate) latent_mask: LatentMask,
    /// The repaint mask at image size, for inpainting UNets' conditioning.
    pub(crate) conditioning_mask: Array2<f32>,
    pub(crate) content: MaskedContent,
}

/// An inpainting job's images to encode, its plan and its infotext entries.
pub(crate) struct PreparedInpaint {
    pub(crate) images: Vec<Frame>,
    pub(crate) plan: InpaintPlan,
    pub(crate) infotext: Vec<(String, InfotextValue)>,
}

/// Resolves a masked img2img request. `None`: "Only masked" with an empty mask, which A1111 runs as plain
/// img2img.
pub(crate) fn prepare_inpaint(
    request: &Img2ImgRequest,
    images: &[Frame],
    mask: &GrayImage,
) -> crate::Result<Option<PreparedInpaint>> {
    let (width, height) = (request.base.width, request.base.height);
    let content = MaskedContent::from_a1111(request.inpainting_fill)?;
    let resize_mode =
        ResizeMode::from_a1111(request.resize_mode).map_err(|source| crate::Error::InitImage { source })?;
    let mut infotext: Vec<(String, InfotextValue)> = Vec::new();
    let mut note = |key: &str, value: InfotextValue| infotext.push((key.to_owned(), value));
    let mut mask = mask.clone();
    if request.inpainting_mask_invert == 1 {
        image::imageops::invert(&mut mask);
        note("Mask mode", "Inpaint not masked".into());
    }
    let (blur_x, blur_y) = request.effective_mask_blur();
    let (blur_x, blur_y) = (blur_x.max(0) as u32, blur_y.max(0) as u32);
    mask = sdrt_io::blur_mask(&mask, blur_x, blur_y);
    if (blur_x > 0 || blur_y > 0) && blur_x == blur_y {
        note("Mask blur", InfotextValue::Int(blur_x.into()));
    }
    let first = images.first().ok_or(crate::Error::Field {
        field: "init_images",
        problem: "inpainting needs an init image; send one with the mask".into(),
    })?;
    let (image_mask, overlay_mask, crop) = if request.inpaint_full_res {
        // A1111 crops the image with the mask's box; a mask of another size is first fitted to the image.
        let mask = fit_gray(&mask, first.width, first.height, ResizeMode::JustResize)?;
        let Some(crop) = sdrt_io::crop_region(&mask, request.inpaint_full_res_padding) else {
            return Ok(None);
        };
        let crop = sdrt_io::expand_crop_region(crop, width, height, mask.width(), mask.height());
        let cropped = image::imageops::crop_imm(&mask, crop.0, crop.1, crop.2 - crop.0, crop.3 - crop.1).to_image();
        note("Inpaint area", "Only masked".into());
        note("Masked area padding", InfotextValue::Int(request.inpaint_full_res_padding.into()));
        (fit_gray(&cropped, width, height, ResizeMode::ResizeAndFill)?, mask, Some(crop))
    } else {
        let image_mask = fit_gray(&mask, width, height, resize_mode)?;
        let doubled = GrayImage::from_fn(width, height, |x, y| Luma([image_mask.get_pixel(x, y)[0].saturating_mul(2)]));
        (image_mask, doubled, None)
    };
    let mut overlays = Vec::with_capacity(images.len());
    let mut encoded = Vec::with_capacity(images.len());
    for image in images {
        let buffer = to_image_buffer(image, "init_images")?;
        let fitted = match crop {
            Some(_) => buffer,
            None => resize(&buffer, width, height, resize_mode)?,
        };
        let overlay_mask = fit_gray(&overlay_mask, fitted.width(), fitted.height(), resize_mode)?;
        overlays.push(sdrt_io::overlay_image(&fitted, &overlay_mask));
        let mut work = match crop {
            Some((x1, y1, x2, y2)) => {
                let cropped = image::imageops::crop_imm(&fitted, x1, y1, x2 - x1, y2 - y1).to_image();
                resize(&cropped, width, height, ResizeMode::ResizeAndFill)?
            }
            None => fitted,
        };
        if content != MaskedContent::Original {
            work = sdrt_io::fill_masked(&work, &image_mask);
        }
        encoded.push(Frame { width, height, pixels: work.into_raw() });
    }
    if let Some(label) = content.label() {
        note("Masked content", label.into());
    }
    let plan = InpaintPlan {
        overlays,
        paste_to: crop,
        latent_mask: latent_mask(&image_mask, request.mask_round)?,
        conditioning_mask: Array2::from_shape_fn((height as usize, width as usize), |(y, x)| {
            let value = f32::from(image_mask.get_pixel(x as u32, y as u32)[0]) / 255.0;
            if request.mask_round { value.round_ties_even() } else { value }
        }),
        content,
    };
    Ok(Some(PreparedInpaint { images: encoded, plan, infotext }))
}

/// A1111's latent mask: the image-size mask as RGB, PIL's default (BICUBIC) resize to latent size, channel 0.
fn latent_mask(image_mask: &GrayImage, round: bool) -> crate::Result<LatentMask> {
    let (w, h) = (image_mask.width() / LATENT_FACTOR as u32, image_mask.height() / LATENT_FACTOR as u32);
    let small = sdrt_io::pil_resize(&gray_to_rgb(image_mask), w, h, PilFilter::Bicubic);
    let levels: Vec<u8> = small.pixels().map(|p| p[0]).collect();
    Ok(LatentMask::from_levels(&levels, h as usize, w as usize, round)?)
}

fn gray_to_rgb(mask: &GrayImage) -> RgbImage {
    RgbImage::from_fn(mask.width(), mask.height(), |x, y| {
        let v = mask.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

fn resize(image: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> crate::Result<RgbImage> {
    sdrt_io::resize_image(image, width, height, mode).map_err(|source| crate::Error::InitImage { source })
}

/// `images.resize_image(mode, mask, …)` on a mask: the same resampling per channel as on an RGB image.
fn fit_gray(mask: &GrayImage, width: u32, height: u32, mode: ResizeMode) -> crate::Result<GrayImage> {
    if mask.dimensions() == (width, height) {
        return Ok(mask.clone());
    }
    let resized = resize(&gray_to_rgb(mask), width, height, mode)?;
    Ok(GrayImage::from_fn(width, height, |x, y| Luma([resized.get_pixel(x, y)[0]])))
}
