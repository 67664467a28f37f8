//! The one error type of `sdrt-processing`.

/// Everything that can go wrong in a pipeline stage; each variant names the stage or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied parameter is out of range or unknown.
    #[error("invalid {field}: {problem}")]
    InvalidParameter { field: &'static str, problem: String },
    /// A tensor has a shape the stage cannot work with.
    #[error("{stage}: tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape { stage: &'static str, tensor: &'static str, found: Vec<usize>, expected: String },
    /// A model call made by a stage failed.
    #[error("{stage}: {source}")]
    Model {
        stage: &'static str,
        #[source]
        source: sdrt_models::Error,
    },
    /// The caller asked the stage to stop.
    #[error("{stage}: interrupted at step {step}")]
    Interrupted { stage: &'static str, step: usize },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
