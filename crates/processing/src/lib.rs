//! Pure Stable Diffusion pipeline stages on `ndarray`: prompt syntax, conditioning, seeds and noise,
//! samplers and schedules, txt2img / img2img / inpaint / hires.
//!
//! Models are reached only through traits implemented by `sdrt-models`; this crate never sees ONNX Runtime.

mod brownian;
mod conditioning;
mod denoiser;
mod error;
mod guidance;
mod model_schedule;
mod noise;
mod pipeline;
mod prompt;
mod rng;
mod sampling;
mod schedules;
mod seeds;

pub use brownian::BrownianNoise;
pub use conditioning::{
    CHUNK_TOKENS, COMMA_PADDING_BACKTRACK, ClipTextEncoder, Cond, Conditioner, Embedder, Emphasis, EncodedText,
    PromptChunk, PromptSchedule, PromptTokenizer, TextEncoder, TextualInversion, TokenEmbedding, TokenVectors,
    TokenizedPrompt, tokenize_prompt, tokenize_prompt_with_embeddings,
};
pub use denoiser::{Denoiser, DiscreteDenoiser, Prediction, Tensor, UNetModel};
pub use error::{Error, Result};
pub use guidance::{CfgDenoiser, ScheduledCond, Unguided};
pub use model_schedule::{ModelSchedule, TRAINING_TIMESTEPS};
pub use noise::{ImageRng, NoiseParams};
pub use pipeline::{
    BatchConditioning, GenerationSpec, LATENT_CHANNELS, LATENT_FACTOR, LatentMask, LatentUpscaleMode, PassInputs,
    Pipeline, RgbImage, SampleOutput, approx_cheap_preview, images_to_tensor, latents_to_images, token_embeddings,
    upscale_latents,
};
pub use prompt::{
    BREAK_TEXT, BREAK_WEIGHT, ExtraNetworkCall, LoraCall, LoraCallError, MulticondList, ScheduleSteps, SubPrompt,
    WeightedText, multicond_prompt_list, parse_attention, parse_extra_network_prompts, parse_extra_networks,
    prompt_schedules, split_and,
};
pub use rng::{CpuKernel, NoiseGenerator, RandomSource, randn};
pub use sampling::{
    Hooks, Img2ImgSteps, NoiseSource, Sampled, Sampler, SamplerKind, SamplerParams, StepEvent, UniPcOptions, UniPcSkip,
    UniPcVariant,
};
pub use schedules::{ModelFamily, Schedule, ScheduleOptions, sigmas};
pub use seeds::{batch_seeds, fixed_seed, random_seed};
