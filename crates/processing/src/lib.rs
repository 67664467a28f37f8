//! Pure Stable Diffusion pipeline stages on `ndarray`: prompt syntax, conditioning, seeds and noise,
//! samplers and schedules, txt2img / img2img / inpaint / hires.
//!
//! Models are reached only through traits implemented by `sdrt-models`; this crate never sees ONNX Runtime.

mod denoiser;
mod error;
mod noise;
mod prompt;
mod rng;
mod sampling;
mod schedules;
mod seeds;

pub use denoiser::{
    CfgDenoiser, Denoiser, DiscreteDenoiser, ModelSchedule, Prediction, ScheduledCond, TRAINING_TIMESTEPS, Tensor,
    UNetModel, Unguided,
};
pub use error::{Error, Result};
pub use noise::{ImageRng, NoiseParams};
pub use prompt::{
    BREAK_TEXT, BREAK_WEIGHT, MulticondList, ScheduleSteps, SubPrompt, WeightedText, multicond_prompt_list,
    parse_attention, prompt_schedules, split_and,
};
pub use rng::{CpuKernel, NoiseGenerator, RandomSource, randn};
pub use sampling::{
    Hooks, NoiseSource, Sampled, Sampler, SamplerKind, SamplerParams, StepEvent, UniPcOptions, UniPcSkip, UniPcVariant,
    img2img_t_enc,
};
pub use schedules::{ModelFamily, Schedule, ScheduleOptions, sigmas};
pub use seeds::{batch_seeds, fixed_seed, random_seed};
