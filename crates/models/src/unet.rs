//! The denoising UNet: whatever timestep form, extra conditioning and channel count the export declares.
//!
//! Timesteps: the caller passes one f32 per batch item. Exports with a scalar `[]` timestep (current optimum)
//! need them all equal; `[B]` exports get them as they are; int64 exports get them rounded to the nearest
//! integer (k-diffusion samplers produce fractional timesteps, which such an export cannot represent).

use std::path::Path;

use ndarray::{Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis, CowArray, Ix4, IxDyn, concatenate};

use crate::error::{Error, Result};
use crate::options::SessionConfig;
use crate::session::{Input, OnnxModel};

/// One UNet call's inputs (all f32; the wrapper converts to the export's dtypes).
#[derive(Debug, Clone)]
pub struct UnetInput<'a> {
    /// Noisy latents `[B, 4, h, w]`, already scaled for the model's input.
    pub sample: ArrayView4<'a, f32>,
    /// One timestep per batch item `[B]`.
    pub timesteps: ArrayView1<'a, f32>,
    /// Cross-attention conditioning `[B, S, D]`.
    pub encoder_hidden_states: ArrayView3<'a, f32>,
    /// Inpainting UNets: mask and masked-image latents `[B, 5, h, w]`, appended to `sample` on the channel axis.
    pub inpaint_conditioning: Option<ArrayView4<'a, f32>>,
    /// SDXL: pooled text embedding `[B, P]`.
    pub text_embeds: Option<ArrayView2<'a, f32>>,
    /// SDXL: `[B, 6]` original size, crop top-left, target size.
    pub time_ids: Option<ArrayView2<'a, f32>>,
    /// LCM: guidance embedding `[B, C]`.
    pub timestep_cond: Option<ArrayView2<'a, f32>>,
}

impl<'a> UnetInput<'a> {
    /// Inputs for a plain text-to-image UNet.
    pub fn new(
        sample: ArrayView4<'a, f32>,
        timesteps: ArrayView1<'a, f32>,
        encoder_hidden_states: ArrayView3<'a, f32>,
    ) -> Self {
        Self {
            sample,
            timesteps,
            encoder_hidden_states,
            inpaint_conditioning: None,
            text_embeds: None,
            time_ids: None,
            timestep_cond: None,
        }
    }
}

/// A loaded UNet.
#[derive(Debug)]
pub struct Unet {
    model: OnnxModel,
    in_channels: Option<usize>,
    timestep_rank: usize,
    output: String,
}

impl Unet {
    /// Loads the UNet at `path`.
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Self> {
        Self::from_model(OnnxModel::load_with("unet", path, config)?)
    }

    /// A1111's `is_using_v_parameterization_for_sd2`: one call with x = 0.5, context = 0.5 (two tokens) at
    /// t = 999; a v-prediction model's output minus its input averages below −1.
    pub(crate) fn a1111_v_prediction_test(&mut self) -> Result<bool> {
        let width = self
            .model
            .input("encoder_hidden_states")
            .and_then(|t| t.shape.last().copied())
            .filter(|w| *w > 0)
            .unwrap_or(1024) as usize;
        let x = Array4::from_elem((1, 4, 8, 8), 0.5f32);
        let context = ndarray::Array3::from_elem((1, 2, width), 0.5f32);
        let t = ndarray::Array1::from_elem(1, 999.0f32);
        let out = self.predict(&UnetInput::new(x.view(), t.view(), context.view()))?;
        let mean = out.iter().zip(x.iter()).map(|(o, i)| f64::from(o - i)).sum::<f64>() / out.len() as f64;
        Ok(mean < -1.0)
    }

    pub(crate) fn from_model(model: OnnxModel) -> Result<Self> {
        let missing = |tensor: &str| Error::Tensor {
            component: model.component().to_owned(),
            tensor: tensor.to_owned(),
            problem: format!("missing: the UNet's inputs are {}", list(&model)),
        };
        let sample = model.input("sample").ok_or_else(|| missing("sample"))?;
        if sample.rank() != 4 {
            return Err(Error::Tensor {
                component: "unet".into(),
                tensor: "sample".into(),
                problem: format!("expected rank 4, found {sample}"),
            });
        }
        let in_channels = usize::try_from(sample.shape[1]).ok();
        let timestep = model.input("timestep").ok_or_else(|| missing("timestep"))?;
        if timestep.rank() > 1 {
            return Err(Error::Tensor {
                component: "unet".into(),
                tensor: "timestep".into(),
                problem: format!("expected a scalar or [batch], found {timestep}"),
            });
        }
        model.input("encoder_hidden_states").ok_or_else(|| missing("encoder_hidden_states"))?;
        let timestep_rank = timestep.rank();
        let output = model.outputs().first().map(|o| o.name.clone()).ok_or_else(|| missing("(an output)"))?;
        let mut model = model;
        model.keep_resident(&["encoder_hidden_states", "text_embeds", "time_ids"]);
        Ok(Self { model, in_channels, timestep_rank, output })
    }

    /// Channels of the `sample` input (4, or 9 for inpainting), when the export fixes them.
    pub fn in_channels(&self) -> Option<usize> {
        self.in_channels
    }

    /// Whether the export takes SDXL's `text_embeds` and `time_ids`.
    pub fn takes_sdxl_conditioning(&self) -> bool {
        self.model.input("text_embeds").is_some() && self.model.input("time_ids").is_some()
    }

    /// Whether the export takes LCM's `timestep_cond`.
    pub fn takes_timestep_cond(&self) -> bool {
        self.model.input("timestep_cond").is_some()
    }

    /// The underlying model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// Makes the next [`Unet::predict`] return the memory its activations took to the system when it ends
    /// (ONNX Runtime's CPU arena keeps it otherwise: 0.8 GiB at 512×512 with CFG for an SD1.5 checkpoint's graphs,
    /// 3 GiB for its export). Call it before a pass's last UNet call, so that the VAE decode and the wait for the
    /// next job do not hold it; the next job's first call takes it back page by page. No effect on providers
    /// other than the CPU's, nor where `SessionConfig::releases_unet_memory` says to keep it.
    pub fn release_memory_after_next_run(&mut self) {
        self.model.release_arena_after_next_run();
    }

    /// Runs one denoiser call and returns the prediction `[B, 4, h, w]`.
    pub fn predict(&mut self, input: &UnetInput<'_>) -> Result<Array4<f32>> {
        let _span = tracing::info_span!("models::unet").entered();
        let batch = input.sample.shape()[0];
        if batch == 0 {
            return Err(self.error("sample", "batch is empty".to_owned()));
        }
        if input.timesteps.len() != batch {
            return Err(
                self.error("timestep", format!("got {} timesteps for a batch of {batch}", input.timesteps.len()))
            );
        }
        let sample = self.sample(input)?;
        let timestep = self.timestep(input.timesteps)?;
        let mut inputs = vec![
            ("sample".to_owned(), Input::F32(sample.view())),
            ("timestep".to_owned(), Input::F32(timestep.view())),
            ("encoder_hidden_states".to_owned(), Input::F32(input.encoder_hidden_states.into_dyn())),
        ];
        for (name, value) in
            [("text_embeds", input.text_embeds), ("time_ids", input.time_ids), ("timestep_cond", input.timestep_cond)]
        {
            match (value, self.model.input(name).is_some()) {
                (Some(v), true) => inputs.push((name.to_owned(), Input::F32(v.into_dyn()))),
                (None, false) => {}
                (None, true) => {
                    return Err(self.error(name, "is required by this UNet but the caller gave none".to_owned()));
                }
                (Some(_), false) => {
                    return Err(self.error(
                        name,
                        format!("was given but this UNet does not take it (inputs: {})", list(&self.model)),
                    ));
                }
            }
        }
        let output = self.model.run(inputs, std::slice::from_ref(&self.output))?.remove(0);
        let shape = output.shape().to_vec();
        output
            .into_dimensionality::<Ix4>()
            .map_err(|_| self.error(&self.output, format!("expected rank 4, found {shape:?}")))
    }

    /// The `sample` input: the latents as given, or with the inpainting channels appended.
    fn sample<'a>(&self, input: &UnetInput<'a>) -> Result<CowArray<'a, f32, IxDyn>> {
        let wants_nine = self.in_channels == Some(9);
        match (&input.inpaint_conditioning, wants_nine) {
            (None, false) => Ok(CowArray::from(input.sample.into_dyn())),
            (Some(extra), true) => concatenate(Axis(1), &[input.sample, extra.view()])
                .map(|a| CowArray::from(a.into_dyn()))
                .map_err(|e| self.error("sample", format!("latents {:?} and inpainting conditioning {:?} do not stack: {e}", input.sample.shape(), extra.shape()))),
            (None, true) => Err(self.error("sample", "this is an inpainting UNet (9 channels): pass inpaint_conditioning (mask + masked-image latents, 5 channels)".to_owned())),
            (Some(_), false) => Err(self.error("sample", format!("inpaint_conditioning was given but this UNet takes {:?} channels, not 9", self.in_channels))),
        }
    }

    fn timestep<'a>(&self, timesteps: ArrayView1<'a, f32>) -> Result<CowArray<'a, f32, IxDyn>> {
        if self.timestep_rank == 1 {
            return Ok(CowArray::from(timesteps.into_dyn()));
        }
        let first = timesteps[0];
        if timesteps.iter().any(|t| *t != first) {
            return Err(self.error(
                "timestep",
                format!("this export takes one scalar timestep, but the batch has different ones: {timesteps}"),
            ));
        }
        Ok(CowArray::from(ndarray::arr0(first).into_dyn()))
    }

    fn error(&self, tensor: &str, problem: String) -> Error {
        Error::Tensor { component: self.model.component().to_owned(), tensor: tensor.to_owned(), problem }
    }
}

fn list(model: &OnnxModel) -> String {
    model.inputs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
