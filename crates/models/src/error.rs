//! The one error type of `sdrt-models`, with the context a person needs to fix the problem.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No ONNX Runtime shared library was found in any of the searched places.
    #[error(
        "{wanted} was not found (searched: {searched}). Run `{command}` to install it into {cache}, or set \
         ORT_DYLIB_PATH to a libonnxruntime.so of version >= 1.{min_minor}"
    )]
    RuntimeNotFound { wanted: String, searched: String, command: &'static str, cache: PathBuf, min_minor: u32 },
    /// A library was found but could not be loaded (wrong file, too old, wrong architecture).
    #[error(
        "could not load ONNX Runtime from {path}: {reason}. Run `{command}` or point ORT_DYLIB_PATH at a newer libonnxruntime"
    )]
    RuntimeLoad { path: PathBuf, reason: String, command: &'static str },
    /// The process already loaded an ONNX Runtime build that cannot run the provider asked for now.
    #[error(
        "{provider} needs {wanted}, but this process already loaded {loaded}; a process runs one ONNX Runtime \
         build, so start a separate sdrt process for {provider}"
    )]
    RuntimeMismatch { loaded: String, provider: String, wanted: String },
    /// The NVIDIA driver or a library the CUDA/TensorRT provider needs is missing or too old.
    #[error("the {provider} provider cannot run on this machine: {problems}")]
    NvidiaLibraries { provider: String, problems: String },
    /// The CPU cannot compute in the precision asked for.
    #[error("--precision {precision}: {reason}")]
    Precision { precision: &'static str, reason: String },
    /// ONNX Runtime rejected an operation on a session.
    #[error("{component}: ONNX Runtime failed while {action}: {reason}")]
    Session { component: String, action: &'static str, reason: String },
    /// A file or folder that a model needs is missing or unreadable.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A tensor does not have the name, dtype or shape the caller or the model expects.
    #[error("{component}: tensor `{tensor}` {problem}")]
    Tensor { component: String, tensor: String, problem: String },
    /// An execution provider the user asked for could not be used; sdrt never falls back to CPU silently.
    #[error("execution provider {provider} could not be registered for {component}: {reason}")]
    Provider { provider: &'static str, component: String, reason: String },
    /// A configuration file of a model folder is missing a field or has a value sdrt cannot use.
    #[error("{path}: {field}: {problem}")]
    Config { path: PathBuf, field: String, problem: String },
    /// A model folder is not the kind of model the caller asked for, or its parts do not fit together.
    #[error("{folder}: {problem}")]
    Family { folder: PathBuf, problem: String },
    /// An ONNX file could not be parsed (corrupt, truncated, or not ONNX at all).
    #[error("{path}: not a readable ONNX model: {reason}")]
    OnnxFile { path: PathBuf, reason: String },
    /// A checkpoint file is unreadable, corrupt, of an unknown architecture, or lacks a tensor a graph needs.
    #[error("{path}: {}{problem}", tensor_prefix(tensor))]
    Checkpoint { path: PathBuf, tensor: String, problem: String },
    /// The tokenizer files could not be loaded or a text could not be tokenized.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
}

fn tensor_prefix(tensor: &str) -> String {
    if tensor.is_empty() { String::new() } else { format!("tensor `{tensor}`: ") }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
