//! The VAE encoder (image → latent distribution) and decoder (latent → image), both unscaled: callers
//! multiply encoded latents by the folder's `vae_scaling_factor` and divide by it before decoding.

use std::path::Path;

use ndarray::{Array4, ArrayView4, Axis, Ix4, s};

use crate::error::{Error, Result};
use crate::options::SessionConfig;
use crate::session::{Input, OnnxModel};

/// The encoder's posterior.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentDistribution {
    /// Mean `[B, 4, h, w]`.
    pub mean: Array4<f32>,
    /// Log-variance `[B, 4, h, w]`, clamped to [−30, 20] like diffusers; `None` for legacy exports whose
    /// graph returns a sample (`latent_sample`) instead of the distribution.
    pub logvar: Option<Array4<f32>>,
}

impl LatentDistribution {
    /// mean + exp(logvar / 2) · noise, with caller-given standard-normal `noise` (so seeds stay the caller's);
    /// legacy exports return their sample unchanged.
    pub fn sample(&self, noise: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let Some(logvar) = &self.logvar else { return Ok(self.mean.clone()) };
        if noise.shape() != self.mean.shape() {
            return Err(Error::Tensor {
                component: "vae_encoder".to_owned(),
                tensor: "noise".to_owned(),
                problem: format!("expected shape {:?}, found {:?}", self.mean.shape(), noise.shape()),
            });
        }
        let mut out = self.mean.clone();
        ndarray::Zip::from(&mut out).and(logvar).and(noise).for_each(|m, lv, n| *m += (0.5 * lv).exp() * n);
        Ok(out)
    }
}

/// A loaded VAE encoder.
#[derive(Debug)]
pub struct VaeEncoder {
    model: OnnxModel,
    output: String,
}

impl VaeEncoder {
    /// Loads the encoder at `path`.
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Self> {
        Self::from_model(OnnxModel::load_with("vae_encoder", path, config)?)
    }

    pub(crate) fn from_model(model: OnnxModel) -> Result<Self> {
        require_input(&model, "sample", 4)?;
        let output = ["latent_parameters", "latent_sample", "latent_dist"]
            .into_iter()
            .find(|name| model.output(name).is_some())
            .ok_or_else(|| Error::Tensor {
                component: "vae_encoder".to_owned(),
                tensor: "latent_parameters".to_owned(),
                problem: format!(
                    "missing: outputs are {:?}",
                    model.outputs().iter().map(|o| o.name.clone()).collect::<Vec<_>>()
                ),
            })?
            .to_owned();
        Ok(Self { model, output })
    }

    /// Encodes images `[B, 3, H, W]` in [−1, 1].
    pub fn encode(&mut self, image: ArrayView4<'_, f32>) -> Result<LatentDistribution> {
        let _span = tracing::info_span!("models::vae_encode").entered();
        let inputs = vec![("sample".to_owned(), Input::F32(image.into_dyn()))];
        let out = self.model.run(inputs, std::slice::from_ref(&self.output))?.remove(0);
        let out = rank4(&self.model, &self.output, out)?;
        if self.output != "latent_parameters" {
            return Ok(LatentDistribution { mean: out, logvar: None });
        }
        let channels = out.len_of(Axis(1));
        if channels % 2 != 0 {
            return Err(Error::Tensor {
                component: "vae_encoder".to_owned(),
                tensor: self.output.clone(),
                problem: format!("expected an even channel count (mean + logvar), found {:?}", out.shape()),
            });
        }
        let half = channels / 2;
        let mean = out.slice(s![.., ..half, .., ..]).to_owned();
        let logvar = out.slice(s![.., half.., .., ..]).mapv(|v| v.clamp(-30.0, 20.0));
        Ok(LatentDistribution { mean, logvar: Some(logvar) })
    }

    /// The underlying model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }
}

/// A loaded VAE decoder.
#[derive(Debug)]
pub struct VaeDecoder {
    model: OnnxModel,
    output: String,
}

impl VaeDecoder {
    /// Loads the decoder at `path`.
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Self> {
        Self::from_model(OnnxModel::load_with("vae_decoder", path, config)?)
    }

    pub(crate) fn from_model(model: OnnxModel) -> Result<Self> {
        require_input(&model, "latent_sample", 4)?;
        let output = model.outputs().first().map(|o| o.name.clone()).ok_or_else(|| Error::Tensor {
            component: "vae_decoder".to_owned(),
            tensor: "sample".to_owned(),
            problem: "the model has no outputs".to_owned(),
        })?;
        Ok(Self { model, output })
    }

    /// Decodes latents `[B, 4, h, w]` (already divided by the scaling factor) to images `[B, 3, 8h, 8w]` in
    /// about [−1, 1].
    pub fn decode(&mut self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let _span = tracing::info_span!("models::vae_decode").entered();
        let inputs = vec![("latent_sample".to_owned(), Input::F32(latents.into_dyn()))];
        let out = self.model.run(inputs, std::slice::from_ref(&self.output))?.remove(0);
        rank4(&self.model, &self.output, out)
    }

    /// The underlying model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }
}

fn require_input(model: &OnnxModel, name: &str, rank: usize) -> Result<()> {
    match model.input(name) {
        Some(info) if info.rank() == rank => Ok(()),
        Some(info) => Err(Error::Tensor {
            component: model.component().to_owned(),
            tensor: name.to_owned(),
            problem: format!("expected rank {rank}, found {info}"),
        }),
        None => Err(Error::Tensor {
            component: model.component().to_owned(),
            tensor: name.to_owned(),
            problem: format!(
                "missing: inputs are {:?}",
                model.inputs().iter().map(|o| o.name.clone()).collect::<Vec<_>>()
            ),
        }),
    }
}

fn rank4(model: &OnnxModel, name: &str, array: ndarray::ArrayD<f32>) -> Result<Array4<f32>> {
    let shape = array.shape().to_vec();
    array.into_dimensionality::<Ix4>().map_err(|_| Error::Tensor {
        component: model.component().to_owned(),
        tensor: name.to_owned(),
        problem: format!("expected rank 4, found shape {shape:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_uses_the_callers_noise() {
        let mean = Array4::from_elem((1, 1, 1, 2), 1.0f32);
        let logvar = Array4::from_elem((1, 1, 1, 2), (4.0f32).ln());
        let dist = LatentDistribution { mean, logvar: Some(logvar) };
        let noise = Array4::from_shape_vec((1, 1, 1, 2), vec![1.0, -0.5]).expect("shape");
        let sample = dist.sample(noise.view()).expect("same shape");
        assert!((sample[[0, 0, 0, 0]] - 3.0).abs() < 1e-6 && (sample[[0, 0, 0, 1]] - 0.0).abs() < 1e-6);
        assert!(dist.sample(Array4::zeros((1, 1, 2, 2)).view()).is_err());
    }
}
