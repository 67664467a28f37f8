//! Inpainting in latent space (A1111 `StableDiffusionProcessingImg2Img`): the latent mask blended into every
//! step and into the result, the latent fills ("latent noise", "latent nothing"), and the image conditioning
//! of 9-channel inpainting UNets.

use ndarray::{Array4, Axis, Zip};

use super::upscale::{LatentUpscaleMode, upscale_latents};
use crate::denoiser::{Denoiser, Tensor};
use crate::error::{Error, Result};

/// A1111's latent mask: `nmask` is 1 where the image is repainted, `mask` = 1 − `nmask` where the original
/// latents are kept; one `[h, w]` plane shared by every channel and image.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentMask {
    repaint: ndarray::Array2<f32>,
}

impl LatentMask {
    /// From the mask resized to latent size, as 8-bit values (255 = repaint), rounded to 0/1 when `round`
    /// (A1111's `mask_round`, `np.around`: halves go to even, so 128 → 1.0 and 127 → 0.0).
    pub fn from_levels(levels: &[u8], height: usize, width: usize, round: bool) -> Result<Self> {
        if levels.len() != height * width {
            return Err(Error::Shape {
                stage: "processing::inpaint",
                tensor: "latent mask",
                found: vec![levels.len()],
                expected: format!("{height}×{width} values"),
            });
        }
        let repaint = ndarray::Array2::from_shape_fn((height, width), |(y, x)| {
            let value = f32::from(levels[y * width + x]) / 255.0;
            if round { value.round_ties_even() } else { value }
        });
        Ok(Self { repaint })
    }

    /// `x·nmask + init·mask` for every image and channel.
    pub fn blend(&self, x: &Tensor, init: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        if init.shape() != x.shape() {
            return Err(Error::Shape {
                stage: "processing::inpaint",
                tensor: "init latents",
                found: init.shape().to_vec(),
                expected: format!("{:?} (the sampled latents' shape)", x.shape()),
            });
        }
        let repaint = self.repaint.view().into_dyn();
        let mut out = x.clone();
        for (mut image, original) in out.axis_iter_mut(Axis(0)).zip(init.axis_iter(Axis(0))) {
            for (mut plane, original) in image.axis_iter_mut(Axis(0)).zip(original.axis_iter(Axis(0))) {
                Zip::from(&mut plane).and(&original).and(&repaint).for_each(|v, &i, &n| {
                    *v = *v * n + i * (1.0 - n);
                });
            }
        }
        Ok(out)
    }

    /// `init·mask + noise·nmask` ("latent noise") or `init·mask` ("latent nothing", `noise` = None).
    pub fn fill(&self, init: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let zeros;
        let noise = match noise {
            Some(noise) => noise,
            None => {
                zeros = Tensor::zeros(init.raw_dim());
                &zeros
            }
        };
        self.blend(noise, init)
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        let (h, w) = self.repaint.dim();
        if x.ndim() != 4 || x.shape()[2] != h || x.shape()[3] != w {
            return Err(Error::Shape {
                stage: "processing::inpaint",
                tensor: "latents",
                found: x.shape().to_vec(),
                expected: format!("[batch, channels, {h}, {w}] (the latent mask's size)"),
            });
        }
        Ok(())
    }
}

/// A denoiser that keeps the unmasked area on the init latents, as A1111's `CFGDenoiser` does: k-diffusion
/// samplers blend the denoised prediction; timestep samplers (DDIM, PLMS, UniPC) blend their input instead
/// (`mask_before_denoising`), which here means blending x_σ = x·√(1+σ²) and handing back the prediction the
/// sampler's own ε formula expects.
pub(crate) struct MaskedDenoiser<'a, D: Denoiser> {
    inner: D,
    init: &'a Tensor,
    mask: &'a LatentMask,
    before: bool,
    last_uncond: Option<Tensor>,
}

impl<'a, D: Denoiser> MaskedDenoiser<'a, D> {
    pub(crate) fn new(inner: D, init: &'a Tensor, mask: &'a LatentMask, before: bool) -> Self {
        Self { inner, init, mask, before, last_uncond: None }
    }
}

impl<D: Denoiser> Denoiser for MaskedDenoiser<'_, D> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if !self.before {
            let denoised = self.inner.denoise(x, sigma)?;
            self.last_uncond = self.inner.last_uncond().cloned();
            return self.mask.blend(&denoised, self.init);
        }
        let k = (1.0 + sigma * sigma).sqrt() as f32;
        let x_vp = x.mapv(|v| v / k);
        let blended = self.mask.blend(&x_vp, self.init)?.mapv(|v| v * k);
        let shift = x - &blended;
        let denoised = self.inner.denoise(&blended, sigma)?;
        self.last_uncond = self.inner.last_uncond().map(|u| u + &shift);
        Ok(denoised + shift)
    }

    fn last_uncond(&self) -> Option<&Tensor> {
        self.last_uncond.as_ref()
    }

    fn set_guidance_multiplier(&mut self, multiplier: f64) -> bool {
        self.inner.set_guidance_multiplier(multiplier)
    }
}

/// `torch.lerp(a, b, w)` for f32, with torch's two-sided formula.
fn lerp(a: f32, b: f32, weight: f32) -> f32 {
    if weight < 0.5 { a + weight * (b - a) } else { b - (b - a) * (1.0 - weight) }
}

/// The pixels a 9-channel inpainting UNet sees (A1111 `inpainting_image_conditioning`):
/// lerp(image, image·(1 − mask), weight), for `images` `[B, 3, H, W]` in [-1, 1] and `mask` `[H, W]` in
/// [0, 1] (1 = repaint; `None` = everything, as A1111 uses without a mask).
pub(crate) fn masked_images(images: &Tensor, mask: Option<&ndarray::Array2<f32>>, weight: f32) -> Result<Tensor> {
    let view = super::nchw(images, "processing::inpaint", "image", "[batch, 3, height, width]")?;
    let (batch, channels, h, w) = view.dim();
    if let Some(mask) = mask
        && mask.dim() != (h, w)
    {
        return Err(Error::Shape {
            stage: "processing::inpaint",
            tensor: "conditioning mask",
            found: mask.shape().to_vec(),
            expected: format!("[{h}, {w}] (the image's size)"),
        });
    }
    let masked = Array4::from_shape_fn((batch, channels, h, w), |(b, c, y, x)| {
        let a = view[[b, c, y, x]];
        let m = mask.map_or(1.0, |m| m[[y, x]]);
        lerp(a, a * (1.0 - m), weight)
    });
    Ok(masked.into_dyn())
}

/// `[mask, masked-image latents]` on the channel axis, the mask reduced to latent size with torch's
/// default (legacy nearest) interpolation.
pub(crate) fn concat_mask(latents: &Tensor, mask: Option<&ndarray::Array2<f32>>) -> Result<Tensor> {
    let (batch, _, h, w) = super::nchw(latents, "processing::inpaint", "latents", "[batch, 4, h, w]")?.dim();
    let small = match mask {
        Some(mask) => {
            let full =
                mask.clone().into_shape_with_order((1, 1, mask.nrows(), mask.ncols())).map_err(|_| Error::Shape {
                    stage: "processing::inpaint",
                    tensor: "conditioning mask",
                    found: mask.shape().to_vec(),
                    expected: "a 2-D mask".into(),
                })?;
            upscale_latents(&full.into_dyn(), h, w, LatentUpscaleMode::Nearest)?
        }
        None => Tensor::ones(ndarray::IxDyn(&[1, 1, h, w])),
    };
    let masks = small.broadcast(ndarray::IxDyn(&[batch, 1, h, w])).map(|m| m.to_owned()).ok_or(Error::Shape {
        stage: "processing::inpaint",
        tensor: "conditioning mask",
        found: small.shape().to_vec(),
        expected: format!("[1, 1, {h}, {w}]"),
    })?;
    ndarray::concatenate(Axis(1), &[masks.view(), latents.view()]).map_err(|_| Error::Shape {
        stage: "processing::inpaint",
        tensor: "image conditioning",
        found: latents.shape().to_vec(),
        expected: "latents that stack with the mask".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn mask() -> LatentMask {
        LatentMask::from_levels(&[0, 255, 128, 127], 2, 2, true).unwrap()
    }

    #[test]
    fn rounding_sends_halves_to_even_like_numpy() {
        assert_eq!(mask().repaint.iter().copied().collect::<Vec<_>>(), [0.0, 1.0, 1.0, 0.0]);
        let soft = LatentMask::from_levels(&[0, 255, 51, 204], 2, 2, false).unwrap();
        assert!((soft.repaint[[1, 0]] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn blend_keeps_the_original_outside_the_mask() {
        let x = Tensor::from_elem(IxDyn(&[2, 4, 2, 2]), 5.0);
        let init = Tensor::from_elem(IxDyn(&[2, 4, 2, 2]), -1.0);
        let out = mask().blend(&x, &init).unwrap();
        assert_eq!(out[[1, 3, 0, 0]], -1.0);
        assert_eq!(out[[1, 3, 0, 1]], 5.0);
        assert_eq!(mask().fill(&init, None).unwrap()[[0, 0, 0, 1]], 0.0, "latent nothing zeroes the hole");
        assert!(mask().blend(&Tensor::zeros(IxDyn(&[1, 4, 3, 3])), &init).is_err());
    }

    struct Echo;
    impl Denoiser for Echo {
        fn denoise(&mut self, x: &Tensor, _sigma: f64) -> Result<Tensor> {
            Ok(x.mapv(|v| v * 0.5))
        }
    }

    #[test]
    fn timestep_samplers_see_a_blended_input_and_a_consistent_prediction() {
        let init = Tensor::from_elem(IxDyn(&[1, 4, 2, 2]), 1.0);
        let m = mask();
        let x = Tensor::from_elem(IxDyn(&[1, 4, 2, 2]), 4.0);
        let sigma = 3.0f64;
        let mut before = MaskedDenoiser::new(Echo, &init, &m, true);
        let d = before.denoise(&x, sigma).unwrap();
        let k = (1.0 + sigma * sigma).sqrt() as f32;
        // Kept pixel: the model saw init·k; ε = (x_blended − D)/σ must equal (x − d)/σ.
        let blended = k;
        let eps_model = (blended - blended * 0.5) / sigma as f32;
        let eps_sampler = (4.0 - d[[0, 0, 0, 0]]) / sigma as f32;
        assert!((eps_model - eps_sampler).abs() < 1e-5);
        let mut after = MaskedDenoiser::new(Echo, &init, &m, false);
        assert_eq!(after.denoise(&x, sigma).unwrap()[[0, 0, 0, 0]], 1.0, "k-diffusion: the x0 is blended");
    }

    #[test]
    fn conditioning_masks_the_image_and_stacks_the_mask_first() {
        let images = Tensor::from_elem(IxDyn(&[1, 3, 4, 4]), 0.5);
        let mut hole = ndarray::Array2::<f32>::zeros((4, 4));
        hole[[0, 0]] = 1.0;
        let masked = masked_images(&images, Some(&hole), 1.0).unwrap();
        assert_eq!((masked[[0, 0, 0, 0]], masked[[0, 0, 1, 1]]), (0.0, 0.5));
        let latents = Tensor::from_elem(IxDyn(&[2, 4, 2, 2]), 7.0);
        let stacked = concat_mask(&latents, Some(&hole)).unwrap();
        assert_eq!(stacked.shape(), &[2, 5, 2, 2]);
        assert_eq!((stacked[[1, 0, 0, 0]], stacked[[1, 0, 1, 1]], stacked[[1, 1, 0, 0]]), (1.0, 0.0, 7.0));
    }
}
