//! `ProcessingRunner` for sdrt: the one execution boundary (prepare → execute → finalize, with hooks),
//! execution queue, progress, interrupt and metrics.
//!
//! Every generation (CLI, HTTP API, tests) runs through [`ProcessingRunner`], so stage order, hooks and
//! metrics are the same for all callers.

mod data_dir;
mod embeddings;
mod error;
mod generation;
mod lifecycle;
mod metrics;
mod networks;
mod progress;
mod provider;
mod queue;
mod vaes;
mod walk;

pub use data_dir::{DataDir, DataDirSummary};
pub use embeddings::{EmbeddingEntry, EmbeddingLibrary};
pub use error::{Error, Result};
pub use generation::{
    ExtrasTarget, GeneratedImage, GenerationJob, GenerationOutput, GenerationSettings, ProcessingRequest,
    SettingProblem, extras_upscale, image_upscaler_names, latent_upscale_mode_names, model_upscalers,
    parse_randn_source, randn_source_name, upscaler_names,
};
pub use lifecycle::{HookPoint, JobContext, JobInfo, ProcessingJob, ProcessingRunner, RunnerHook, Stage};
pub use metrics::{JobMetrics, RuntimeMetrics, STAGE_NAMES};
pub use networks::{LoraEntry, LoraLibrary};
pub use progress::{JobControl, NoProgress, ProgressEvent, ProgressSink, eta};
pub use provider::{ModelHandle, ModelProvider, SharedModel};
pub use queue::ExecutionQueue;
pub use vaes::{VaeEntry, VaeLibrary};
