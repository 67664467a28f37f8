//! The model side of sampling: the `Denoiser` trait samplers call (σ, x → x0), the `UNetModel` trait, and the
//! UNet adapter over a discrete schedule (`CompVisDenoiser` / `CompVisVDenoiser` / A1111's LCM wrapper).

use ndarray::{ArrayD, Axis, Zip};

use crate::error::{Error, Result};
use crate::model_schedule::ModelSchedule;

/// A latent tensor (NCHW for SD latents; samplers treat it as a flat bag of numbers).
pub type Tensor = ArrayD<f32>;

/// Anything that turns a noisy latent at noise level σ into a prediction of the clean latent.
///
/// Samplers see only this trait, never a model runtime.
pub trait Denoiser {
    /// The denoised (x0) prediction of `x` at noise level `sigma`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// The unconditional x0 prediction of the last [`Denoiser::denoise`] call, when this denoiser applies
    /// classifier-free guidance (needed by DDIM CFG++).
    fn last_uncond(&self) -> Option<&Tensor> {
        None
    }

    /// Multiplies the guidance scale for the following calls (DDIM CFG++ maps CFG 0..12.5 onto 0..1).
    /// Returns `false` when this denoiser has no guidance to scale.
    fn set_guidance_multiplier(&mut self, _multiplier: f64) -> bool {
        false
    }
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        (**self).denoise(x, sigma)
    }
    fn last_uncond(&self) -> Option<&Tensor> {
        (**self).last_uncond()
    }
    fn set_guidance_multiplier(&mut self, multiplier: f64) -> bool {
        (**self).set_guidance_multiplier(multiplier)
    }
}

/// What the UNet's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The model predicts the added noise (SD 1.x, SDXL, SD 2.x base).
    Epsilon,
    /// The model predicts v = α·ε − σ_vp·x0 (SD 2.x 768-v).
    V,
}

/// A UNet: given the scaled latent batch `x_in`, the (possibly fractional) timestep and one conditioning
/// per row of `x_in`, returns its raw prediction (ε or v) with the shape of `x_in`. Implemented for
/// `sdrt-models`' UNet in the pipeline and by test fakes.
pub trait UNetModel {
    /// The conditioning of one batch row (text embeddings, pooled embeddings …).
    type Cond;

    /// One forward pass; `conds[i]` conditions row `i` of `x_in`.
    fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&Self::Cond]) -> Result<Tensor>;

    /// Length of the conditioning's token axis. Guidance batches cond and uncond rows into one call only
    /// when their (padded) lengths agree, as A1111's `CFGDenoiser` does; fakes without a token axis keep 0.
    fn sequence_len(&self, _cond: &Self::Cond) -> usize {
        0
    }

    /// `cond` as guidance would batch it next to a longer conditioning (A1111's `pad_cond_uncond`): its last
    /// token vector repeated up to `stacked_len` (the length of the rows it is stacked with), then
    /// empty-prompt chunks appended up to `target_len`. `None` when the model has no empty-prompt encoding,
    /// in which case guidance falls back to separate calls.
    fn pad_with_empty(&self, _cond: &Self::Cond, _stacked_len: usize, _target_len: usize) -> Option<Self::Cond> {
        None
    }
}

/// A UNet wrapped as a [`Denoiser`] over a discrete schedule, as k-diffusion's `CompVisDenoiser`
/// (ε: x0 = x − σ·ε) and `CompVisVDenoiser` (v: x0 = c_skip·x + c_out·v), or A1111's LCM wrapper.
///
/// The input is scaled by c_in = 1/√(σ²+1) and the timestep is `sigma_to_t(σ)`.
pub struct DiscreteDenoiser<M: UNetModel> {
    model: M,
    schedule: ModelSchedule,
    prediction: Prediction,
}

impl<M: UNetModel> DiscreteDenoiser<M> {
    /// Wraps `model` whose outputs mean `prediction`, on `schedule`.
    pub fn new(model: M, schedule: ModelSchedule, prediction: Prediction) -> Self {
        Self { model, schedule, prediction }
    }

    /// The discrete schedule.
    pub fn schedule(&self) -> &ModelSchedule {
        &self.schedule
    }

    /// The wrapped model.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// x0 of every row of `x`, row `i` conditioned on `conds[i]`.
    pub fn denoise_with(&mut self, x: &Tensor, sigma: f64, conds: &[&M::Cond]) -> Result<Tensor> {
        self.denoise_with_image(x, sigma, conds, None)
    }

    /// [`DiscreteDenoiser::denoise_with`] for UNets that also take image conditioning (inpainting models):
    /// its rows are appended to the scaled latents on the channel axis, unscaled, as LDM's `c_concat`.
    pub fn denoise_with_image(
        &mut self,
        x: &Tensor,
        sigma: f64,
        conds: &[&M::Cond],
        image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let mut x_in = x.mapv(|v| (f64::from(v) * c_in) as f32);
        if let Some(image) = image {
            x_in = ndarray::concatenate(Axis(1), &[x_in.view(), image.view()]).map_err(|_| Error::Shape {
                stage: "processing::denoise",
                tensor: "image conditioning",
                found: image.shape().to_vec(),
                expected: format!("[{}, channels, height, width] like the latents {:?}", x.shape()[0], x.shape()),
            })?;
        }
        let timestep = self.schedule.sigma_to_t(sigma);
        let out = self.model.predict(&x_in, timestep as f32, conds)?;
        if out.shape() != x.shape() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "unet output",
                found: out.shape().to_vec(),
                expected: format!("{:?} (the latent's shape)", x.shape()),
            });
        }
        let mut denoised = match self.prediction {
            Prediction::Epsilon => combine(x, &out, 1.0, -sigma),
            Prediction::V => {
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                combine(x, &out, c_skip, c_out)
            }
        };
        if self.schedule.is_lcm() {
            lcm_consistency_scaling(&mut denoised, x, timestep);
        }
        Ok(denoised)
    }
}

/// LCM's boundary condition: x0 ← c_out·x0 + c_skip·x with σ_data = 0.5 and the timestep scaled by 10.
fn lcm_consistency_scaling(denoised: &mut Tensor, x: &Tensor, timestep: f64) {
    const SIGMA_DATA: f64 = 0.5;
    let scaled = timestep * 10.0;
    let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
    let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
    Zip::from(denoised).and(x).for_each(|d, &x| *d = (c_out * f64::from(*d) + c_skip * f64::from(x)) as f32);
}

/// a·x + b·y elementwise.
fn combine(x: &Tensor, y: &Tensor, a: f64, b: f64) -> Tensor {
    let mut out = x.clone();
    Zip::from(&mut out).and(y).for_each(|o, &y| *o = (a * f64::from(*o) + b * f64::from(y)) as f32);
    out
}

/// Fake UNets for the unit tests of this module and of guidance.
#[cfg(test)]
pub(crate) mod test_models {
    use ndarray::{Axis, IxDyn};

    use super::{Tensor, UNetModel};
    use crate::error::Result;

    /// ε-model that predicts `x_in · k + t/1000` so outputs depend on both scaling and timestep.
    pub(crate) struct Linear {
        pub(crate) k: f32,
        pub(crate) seen: Vec<(f32, f32)>,
    }

    impl UNetModel for Linear {
        type Cond = f32;
        fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&f32]) -> Result<Tensor> {
            let mut out = x_in.mapv(|v| v * self.k + timestep / 1000.0);
            for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
                self.seen.push((timestep, **cond));
                row += **cond;
            }
            Ok(out)
        }

        fn sequence_len(&self, cond: &f32) -> usize {
            // Negative conds stand for "another token length" so tests can force separate calls.
            usize::from(*cond < 0.0)
        }
    }

    pub(crate) fn latent(v: f32) -> Tensor {
        Tensor::from_elem(IxDyn(&[1, 4, 2, 2]), v)
    }
}

#[cfg(test)]
mod tests {
    use super::test_models::{Linear, latent};
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn epsilon_denoiser_scales_input_and_subtracts_sigma_eps() {
        let model = Linear { k: 0.5, seen: Vec::new() };
        let mut d = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let sigma = 2.0;
        let t = d.schedule().sigma_to_t(sigma);
        let out = d.denoise_with(&latent(3.0), sigma, &[&0.0]).unwrap();
        let eps = 3.0 / (5.0f64).sqrt() * 0.5 + t / 1000.0;
        let expected = 3.0 - sigma * eps;
        assert!((f64::from(out[[0, 0, 0, 0]]) - expected).abs() < 1e-5);
        assert!((f64::from(d.model_mut().seen[0].0) - t).abs() < 1e-3);
    }

    #[test]
    fn v_denoiser_uses_c_skip_and_c_out() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let mut d = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::V);
        let sigma = 1.5;
        let t = d.schedule().sigma_to_t(sigma);
        let out = d.denoise_with(&latent(2.0), sigma, &[&0.25]).unwrap();
        let v = t / 1000.0 + 0.25;
        let expected = 2.0 / (sigma * sigma + 1.0) - sigma / (sigma * sigma + 1.0).sqrt() * v;
        assert!((f64::from(out[[0, 1, 1, 1]]) - expected).abs() < 1e-5);
    }

    #[test]
    fn wrong_output_shape_is_an_error() {
        struct Bad;
        impl UNetModel for Bad {
            type Cond = ();
            fn predict(&mut self, _x: &Tensor, _t: f32, _c: &[&()]) -> Result<Tensor> {
                Ok(Tensor::zeros(IxDyn(&[1, 4, 1, 1])))
            }
        }
        let mut d = DiscreteDenoiser::new(Bad, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let err = d.denoise_with(&latent(1.0), 1.0, &[&()]).unwrap_err();
        assert!(err.to_string().contains("unet output"), "{err}");
    }
}
