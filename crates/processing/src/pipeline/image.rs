//! Pixels ↔ tensors: VAE output to 8-bit RGB (A1111's truncating conversion) and RGB images to the
//! VAE encoder's [-1, 1] input.

use ndarray::{Array4, Axis, Ix4};

use crate::denoiser::Tensor;
use crate::error::{Error, Result};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width · height · 3` bytes.
    pub pixels: Vec<u8>,
}

/// A1111's "Approx cheap" live preview (`sd_vae_approx.cheap_approximation`): each latent pixel's four
/// channels projected to RGB by a fixed 4×3 matrix (one for SDXL's latent space, one for SD 1.x/2.x), then
/// the decoder's pixel conversion. The preview has the latent's size. `latents` is `[B, 4, h, w]`; the first
/// image is previewed.
pub fn approx_cheap_preview(latents: &Tensor, sdxl: bool) -> Result<RgbImage> {
    const SD: [[f32; 3]; 4] =
        [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];
    const XL: [[f32; 3]; 4] =
        [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]];
    let view = latents.view().into_dimensionality::<Ix4>().map_err(|_| shape_error("latents", latents))?;
    let (batch, channels, height, width) = view.dim();
    if batch == 0 || channels != 4 {
        return Err(shape_error("latents", latents));
    }
    let coefficients = if sdxl { &XL } else { &SD };
    let first = view.index_axis(Axis(0), 0);
    let mut rgb = Array4::<f32>::zeros((1, 3, height, width));
    for y in 0..height {
        for x in 0..width {
            for (c, column) in (0..3).map(|c| (c, coefficients.iter().map(move |row| row[c]))) {
                rgb[[0, c, y, x]] = column.zip(0..4).map(|(k, l)| first[[l, y, x]] * k).sum();
            }
        }
    }
    let mut images = latents_to_images(&rgb.into_dyn())?;
    Ok(images.remove(0))
}

/// VAE decoder output `[B, 3, H, W]` in [-1, 1] → images: clamp((x + 1)/2, 0, 1)·255 then truncation to u8,
/// exactly as A1111 (`astype(np.uint8)` on float32, no rounding).
pub fn latents_to_images(decoded: &Tensor) -> Result<Vec<RgbImage>> {
    let view = decoded.view().into_dimensionality::<Ix4>().map_err(|_| shape_error("decoded image", decoded))?;
    let (_, channels, height, width) = view.dim();
    if channels != 3 {
        return Err(shape_error("decoded image", decoded));
    }
    Ok(view
        .axis_iter(Axis(0))
        .map(|image| {
            let mut pixels = Vec::with_capacity(height * width * 3);
            for y in 0..height {
                for x in 0..width {
                    for c in 0..3 {
                        let unit = ((image[[c, y, x]] + 1.0) / 2.0).clamp(0.0, 1.0);
                        pixels.push((255.0 * unit) as u8);
                    }
                }
            }
            RgbImage { width: width as u32, height: height as u32, pixels }
        })
        .collect())
}

/// Images of one size → `[B, 3, H, W]` in [-1, 1] (x/255·2 − 1), the VAE encoder's input.
pub fn images_to_tensor(images: &[RgbImage]) -> Result<Tensor> {
    let first = images.first().ok_or(Error::InvalidParameter {
        field: "init_images",
        problem: "no images were given; pass at least one".into(),
    })?;
    let (width, height) = (first.width as usize, first.height as usize);
    let mut out = Array4::<f32>::zeros((images.len(), 3, height, width));
    for (mut slot, image) in out.axis_iter_mut(Axis(0)).zip(images) {
        if image.width != first.width || image.height != first.height || image.pixels.len() != width * height * 3 {
            return Err(Error::InvalidParameter {
                field: "init_images",
                problem: format!(
                    "an image of {}×{} with {} bytes among {width}×{height} RGB images; resize them to one size",
                    image.width,
                    image.height,
                    image.pixels.len()
                ),
            });
        }
        for (i, chunk) in image.pixels.chunks_exact(3).enumerate() {
            let (y, x) = (i / width, i % width);
            for c in 0..3 {
                slot[[c, y, x]] = f32::from(chunk[c]) / 255.0 * 2.0 - 1.0;
            }
        }
    }
    Ok(out.into_dyn())
}

fn shape_error(tensor: &'static str, found: &Tensor) -> Error {
    Error::Shape {
        stage: "processing::decode",
        tensor,
        found: found.shape().to_vec(),
        expected: "[batch, 3, height, width]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn conversion_truncates_and_clamps_like_a1111() {
        let mut decoded = Tensor::zeros(IxDyn(&[1, 3, 1, 3]));
        decoded[[0, 0, 0, 0]] = 2.0;
        decoded[[0, 1, 0, 0]] = -3.0;
        decoded[[0, 2, 0, 0]] = 0.999;
        decoded[[0, 0, 0, 1]] = 0.0;
        let images = latents_to_images(&decoded).unwrap();
        assert_eq!(&images[0].pixels[..3], &[255, 0, 254], "0.999 → 254.87 truncates to 254");
        assert_eq!(images[0].pixels[3], 127, "0 → 127.5 truncates to 127");
    }

    #[test]
    fn images_round_trip_through_the_encoder_range() {
        let image = RgbImage { width: 2, height: 1, pixels: vec![0, 128, 255, 10, 20, 30] };
        let tensor = images_to_tensor(std::slice::from_ref(&image)).unwrap();
        assert_eq!(tensor.shape(), &[1, 3, 1, 2]);
        assert_eq!(tensor[[0, 0, 0, 0]], -1.0);
        assert_eq!(tensor[[0, 2, 0, 0]], 1.0);
        let back = latents_to_images(&tensor.mapv(|v| v + 1e-4)).unwrap();
        assert_eq!(back[0], image);
    }

    #[test]
    fn mixed_sizes_are_rejected_with_the_field() {
        let a = RgbImage { width: 1, height: 1, pixels: vec![0; 3] };
        let b = RgbImage { width: 2, height: 1, pixels: vec![0; 6] };
        let err = images_to_tensor(&[a, b]).unwrap_err();
        assert!(err.to_string().contains("init_images"), "{err}");
    }

    #[test]
    fn approx_cheap_projects_each_latent_pixel_like_a1111() {
        let mut latents = Array4::<f32>::zeros((2, 4, 1, 2));
        latents[[0, 0, 0, 0]] = 1.0; // channel 0 only: RGB = (0.298, 0.207, 0.208)
        latents[[0, 3, 0, 1]] = 1.0; // channel 3 only: (-0.184, -0.271, -0.473)
        let preview = approx_cheap_preview(&latents.into_dyn(), false).expect("preview");
        assert_eq!((preview.width, preview.height), (2, 1));
        let level = |v: f32| (255.0 * ((v + 1.0) / 2.0)) as u8;
        assert_eq!(&preview.pixels[..3], &[level(0.298), level(0.207), level(0.208)]);
        assert_eq!(&preview.pixels[3..], &[level(-0.184), level(-0.271), level(-0.473)]);
        assert!(approx_cheap_preview(&Array4::<f32>::zeros((1, 3, 1, 1)).into_dyn(), true).is_err());
    }
}
