//! ONNX Runtime for sdrt: finding and loading the runtime, sessions, execution providers, the CLIP
//! tokenizer, and typed text-encoder / UNet / VAE components on `ndarray` arrays.
//!
//! This is the only crate that depends on `ort`; no `ort` type appears in its public API.

mod error;
mod runtime_library;
mod session;

pub use error::{Error, Result};
pub use runtime_library::{
    MIN_ORT_MINOR, PROVISIONED_ORT_VERSION, RuntimeLocation, RuntimeSearch, ensure_runtime, locate_runtime,
    ort_cache_dir, provisioned_library_path,
};
pub use session::{OnnxModel, TensorInfo};
