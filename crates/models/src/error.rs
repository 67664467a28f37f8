//! The one error type of `sdrt-models`, with the context a person needs to fix the problem.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No ONNX Runtime shared library was found in any of the searched places.
    #[error(
        "ONNX Runtime {wanted} was not found (searched: {searched}). Run `cargo xtask provision-ort` \
         to install it into {cache}, or set ORT_DYLIB_PATH to a libonnxruntime.so of version >= 1.{min_minor}"
    )]
    RuntimeNotFound { wanted: &'static str, searched: String, cache: PathBuf, min_minor: u32 },
    /// A library was found but could not be loaded (wrong file, too old, wrong architecture).
    #[error(
        "could not load ONNX Runtime from {path}: {reason}. Run `cargo xtask provision-ort` or point ORT_DYLIB_PATH at a newer libonnxruntime"
    )]
    RuntimeLoad { path: PathBuf, reason: String },
    /// ONNX Runtime rejected an operation on a session.
    #[error("{component}: ONNX Runtime failed while {action}: {reason}")]
    Session { component: String, action: &'static str, reason: String },
    /// A file or folder that a model needs is missing or unreadable.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A tensor does not have the name, dtype or shape the caller or the model expects.
    #[error("{component}: tensor `{tensor}` {problem}")]
    Tensor { component: String, tensor: String, problem: String },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
