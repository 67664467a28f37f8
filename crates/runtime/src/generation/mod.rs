//! txt2img and img2img as runner jobs. prepare resolves the request once into a [`plan::JobPlan`] (seeds,
//! samplers, passes, infotext template); execute runs its passes per batch (first pass, then hires fix);
//! finalize writes infotexts and files. Everything after prepare derives from the plan.

mod execute;
mod inpaint;
mod plan;
mod save;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;

use sdrt_api_types::{GenerationRequest, Img2ImgRequest, Txt2ImgRequest};
use sdrt_processing::{RgbImage, Tensor};

use crate::lifecycle::{JobContext, ProcessingJob};
use crate::provider::{ModelHandle, ModelProvider};

pub use plan::{
    ExtrasTarget, extras_upscale, image_upscaler_names, latent_upscale_mode_names, model_upscalers, upscaler_names,
};
pub use settings::{GenerationSettings, SettingProblem, parse_randn_source, randn_source_name};

/// What to generate.
#[derive(Debug, Clone)]
pub enum ProcessingRequest {
    /// Text to image.
    Txt2Img(Txt2ImgRequest),
    /// Image to image; `init_images` and `mask` are already decoded (the request's base64 strings are not
    /// read).
    Img2Img {
        /// The request.
        request: Img2ImgRequest,
        /// Decoded init images; one is used for the whole batch, several are used one per image.
        init_images: Vec<RgbImage>,
        /// Inpainting: the decoded mask (white = repaint), as [`sdrt_io::mask_from_image`] reads it.
        mask: Option<image::GrayImage>,
    },
}

impl ProcessingRequest {
    fn base(&self) -> &GenerationRequest {
        match self {
            Self::Txt2Img(r) => &r.base,
            Self::Img2Img { request, .. } => &request.base,
        }
    }

    fn base_mut(&mut self) -> &mut GenerationRequest {
        match self {
            Self::Txt2Img(r) => &mut r.base,
            Self::Img2Img { request, .. } => &mut request.base,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Txt2Img(_) => "txt2img",
            Self::Img2Img { .. } => "img2img",
        }
    }
}

/// One generated image with everything known about it.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// The pixels.
    pub image: RgbImage,
    /// Its seed.
    pub seed: u64,
    /// Its variation seed.
    pub subseed: u64,
    /// The exact A1111 infotext.
    pub infotext: String,
    /// Final latents `[4, h, w]` as the last pass's sampler returned them (before ÷ the VAE scaling factor).
    pub latents: Tensor,
    /// Where the PNG was saved.
    pub path: Option<PathBuf>,
    /// Where the latents were saved.
    pub latents_path: Option<PathBuf>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// The images, in batch order.
    pub images: Vec<GeneratedImage>,
    /// The job stopped early (the last batch holds the last denoised prediction).
    pub interrupted: bool,
    /// UNet forward calls made.
    pub unet_calls: usize,
    /// Text-encoder calls made.
    pub encoder_calls: usize,
    /// Model name (the folder's).
    pub model_name: String,
    /// Model hash.
    pub model_hash: String,
    /// The settings the job ran with (the caller's, with the request's `override_settings` applied).
    pub settings: GenerationSettings,
}

/// A txt2img or img2img job for [`crate::ProcessingRunner`].
pub struct GenerationJob {
    request: ProcessingRequest,
    settings: GenerationSettings,
    provider: Arc<ModelProvider>,
}

impl GenerationJob {
    /// A job generating `request` with `settings`, taking its model from `provider`.
    pub fn new(request: ProcessingRequest, settings: GenerationSettings, provider: Arc<ModelProvider>) -> Self {
        Self { request, settings, provider }
    }
}

/// What prepare resolved: the model and the plan.
pub struct PreparedGeneration {
    handle: ModelHandle,
    plan: plan::JobPlan,
}

/// What execute produced.
pub struct ExecutedGeneration {
    prepared: PreparedGeneration,
    batches: Vec<execute::BatchResult>,
    interrupted: bool,
    unet_calls: usize,
    encoder_calls: usize,
}

impl ProcessingJob for GenerationJob {
    type Prepared = PreparedGeneration;
    type Executed = ExecutedGeneration;
    type Output = GenerationOutput;

    fn kind(&self) -> &'static str {
        self.request.kind()
    }

    fn prepare(self, context: &mut JobContext) -> crate::Result<PreparedGeneration> {
        plan::prepare(self, context)
    }

    fn execute(prepared: PreparedGeneration, context: &mut JobContext) -> crate::Result<ExecutedGeneration> {
        execute::execute(prepared, context)
    }

    fn finalize(executed: ExecutedGeneration, context: &mut JobContext) -> crate::Result<GenerationOutput> {
        save::finalize(executed, context)
    }
}

fn poisoned() -> crate::Error {
    crate::Error::Processing(sdrt_processing::Error::InvalidParameter {
        field: "model",
        problem: "an earlier job panicked while using this model; load it again".into(),
    })
}
