//! ONNX Runtime for sdrt: finding and loading the runtime, sessions, execution providers, the CLIP
//! tokenizer, model folders and typed text-encoder / UNet / VAE components on `ndarray` arrays.
//!
//! This is the only crate that depends on `ort`; no `ort` type appears in its public API. Callers pass and
//! receive f32 arrays whatever the export's dtypes; see `docs/models.md` for family detection and the
//! tensor conventions.

mod checkpoint;
mod cuda_libraries;
mod error;
mod folder;
mod graph;
mod lora;
mod mapped_pages;
mod onnx_proto;
mod options;
mod pipeline;
mod runtime_library;
mod session;
mod text_encoder;
mod text_fix;
mod tokenizer;
mod unet;
mod upscaler;
mod vae;

pub use checkpoint::{
    Checkpoint, CheckpointKind, CheckpointOptions, NamedTensor, is_checkpoint_file, native_image_size, read_tensors,
};
pub use cuda_libraries::{
    CUDA_MAJOR, CudaReport, CudaSearch, FoundLibrary, MIN_DRIVER_MAJOR, NvidiaDriver, NvidiaLibrary,
};
pub use error::{Error, Result};
pub use folder::{ModelFamily, ModelFolder, PredictionType, SchedulerConfig, TokenizerFiles};
pub use graph::{AttentionKind, GraphOptions, GroupNormKind, Winograd};
pub use lora::{AppliedLora, Lora};
pub use options::{
    ExecutionProvider, OpenVinoDevice, OptimizationLevel, Precision, PrecisionChoice, SessionConfig, cpu_bf16_extension,
};
pub use pipeline::LoadedModel;
pub use runtime_library::{
    MIN_ORT_MINOR, PROVISIONED_ORT_VERSION, RuntimeBuild, RuntimeLocation, RuntimeSearch, ensure_runtime,
    ensure_runtime_for, locate_runtime, ort_cache_dir, provisioned_library_path,
};
pub use session::{OnnxModel, TensorInfo};
pub use text_encoder::{TextEncoder, TextEncoding, TextLayer, TokenReplacement};
pub use tokenizer::{BOS_TOKEN_ID, CLIP_SEQUENCE_LENGTH, ClipTokenizer, EOS_TOKEN_ID};
pub use unet::{Unet, UnetInput};
pub use upscaler::{RgbPixels, UpscaleModel};
pub use vae::{LatentDistribution, VaeDecoder, VaeEncoder};
