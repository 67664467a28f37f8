//! A1111's built-in image upscalers for hires fix (`None`, `Lanczos`, `Nearest`) and the way
//! `images.resize_image` drives an upscaler: repeated upscales towards a size rounded down to 8, then a final
//! LANCZOS resize to the exact target.

use image::RgbImage;

use crate::pil_resize::{PilFilter, pil_resize};

/// An image upscaler that needs no model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageUpscaler {
    /// "None": one LANCZOS resize to the target.
    None,
    /// "Lanczos": `UpscalerLanczos`.
    Lanczos,
    /// "Nearest": `UpscalerNearest`.
    Nearest,
}

impl ImageUpscaler {
    /// Every built-in upscaler, in A1111's listing order.
    pub const ALL: [Self; 3] = [Self::None, Self::Lanczos, Self::Nearest];

    /// A1111's name.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Lanczos => "Lanczos",
            Self::Nearest => "Nearest",
        }
    }

    /// The upscaler A1111 calls `name` (exact match, as its lookup).
    pub fn from_label(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.label() == name)
    }

    /// `images.resize_image(0, image, width, height, upscaler_name=self)`: A1111's "just resize" with this
    /// upscaler doing the enlarging.
    pub fn resize(self, image: &RgbImage, width: u32, height: u32) -> RgbImage {
        let filter = match self {
            Self::None => return pil_resize(image, width, height, PilFilter::Lanczos),
            Self::Lanczos => PilFilter::Lanczos,
            Self::Nearest => PilFilter::Nearest,
        };
        let scale = enlargement(image, width, height);
        match upscale_with(image, width, height, |current| {
            Ok::<_, std::convert::Infallible>(once(current, scale, filter))
        }) {
            Ok(resized) => resized,
            Err(never) => match never {},
        }
    }

    /// `Upscaler.upscale(image, scale)` with this built-in upscaler (A1111's extras tab).
    pub fn upscale(self, image: &RgbImage, scale: f64) -> RgbImage {
        let filter = match self {
            // `UpscalerNone.do_upscale` returns the image as it is; the LANCZOS to size still runs.
            Self::None => None,
            Self::Lanczos => Some(PilFilter::Lanczos),
            Self::Nearest => Some(PilFilter::Nearest),
        };
        let result = upscale_by(image, scale, |current| {
            Ok::<_, std::convert::Infallible>(filter.map_or_else(|| current.clone(), |f| once(current, scale, f)))
        });
        match result {
            Ok(upscaled) => upscaled,
            Err(never) => match never {},
        }
    }
}

/// One application of a built-in upscaler: a PIL resize of both sides by `scale`, truncated.
fn once(image: &RgbImage, scale: f64, filter: PilFilter) -> RgbImage {
    let (w, h) = ((f64::from(image.width()) * scale) as u32, (f64::from(image.height()) * scale) as u32);
    pil_resize(image, w, h, filter)
}

/// The factor `resize_image` asks an upscaler for: the larger of the two side ratios.
fn enlargement(image: &RgbImage, width: u32, height: u32) -> f64 {
    (f64::from(width) / f64::from(image.width())).max(f64::from(height) / f64::from(image.height()))
}

/// `images.resize_image(0, image, width, height, upscaler)` for any upscaler whose one application is
/// `upscale_once` (a model's fixed factor, or a resize by the requested factor): [`upscale_by`] the larger side
/// ratio when it enlarges, then LANCZOS to the exact target.
pub fn upscale_with<E>(
    image: &RgbImage,
    width: u32,
    height: u32,
    upscale_once: impl FnMut(&RgbImage) -> Result<RgbImage, E>,
) -> Result<RgbImage, E> {
    let scale = enlargement(image, width, height);
    let current = if scale > 1.0 { upscale_by(image, scale, upscale_once)? } else { image.clone() };
    Ok(pil_resize(&current, width, height, PilFilter::Lanczos))
}

/// A1111's `Upscaler.upscale(image, scale)`: up to three applications of `upscale_once` until the image covers
/// its size times `scale` rounded down to a multiple of 8, then LANCZOS to exactly that size.
pub fn upscale_by<E>(
    image: &RgbImage,
    scale: f64,
    mut upscale_once: impl FnMut(&RgbImage) -> Result<RgbImage, E>,
) -> Result<RgbImage, E> {
    let destination = |side: u32| ((f64::from(side) * scale) / 8.0).floor() as u32 * 8;
    let (dest_w, dest_h) = (destination(image.width()), destination(image.height()));
    let mut current = image.clone();
    for pass in 0..3 {
        if current.width() >= dest_w && current.height() >= dest_h && (pass > 0 || scale != 1.0) {
            break;
        }
        let before = current.dimensions();
        current = upscale_once(&current)?;
        if current.dimensions() == before {
            break;
        }
    }
    Ok(pil_resize(&current, dest_w, dest_h, PilFilter::Lanczos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_exactly() {
        for upscaler in ImageUpscaler::ALL {
            assert_eq!(ImageUpscaler::from_label(upscaler.label()), Some(upscaler));
        }
        assert_eq!(ImageUpscaler::from_label("lanczos"), None);
    }

    #[test]
    fn nearest_doubling_is_one_nearest_resize() {
        let image = RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8 * 15, y as u8 * 30, 7]));
        let out = ImageUpscaler::Nearest.resize(&image, 32, 16);
        assert_eq!(out, pil_resize(&image, 32, 16, PilFilter::Nearest));
    }

    #[test]
    fn odd_targets_end_at_the_exact_size() {
        let image = RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]));
        for upscaler in ImageUpscaler::ALL {
            assert_eq!(upscaler.resize(&image, 37, 29).dimensions(), (37, 29), "{upscaler:?}");
        }
    }
}
