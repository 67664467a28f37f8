//! The one error type of `sdrt-runtime`.

use std::path::PathBuf;

/// What can go wrong while running a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lifecycle stage failed; `source` says why.
    #[error("{stage} failed: {source}")]
    Stage {
        /// The stage that failed.
        stage: crate::lifecycle::Stage,
        /// Its error.
        #[source]
        source: Box<Error>,
    },
    /// The queue's worker is gone (a job panicked).
    #[error("the execution queue is closed; start a new runner")]
    QueueClosed,
    /// The job was interrupted before it produced anything.
    #[error("job {job} was interrupted")]
    Interrupted {
        /// The job id.
        job: u64,
    },
    /// A request names a model that is neither registered nor a folder.
    #[error(
        "model {name:?} is neither a registered model ({known}) nor a model folder or .safetensors checkpoint; pass a model folder or checkpoint path"
    )]
    UnknownModel {
        /// What the request said.
        name: String,
        /// Registered names.
        known: String,
    },
    /// Loading a model folder failed.
    #[error("loading the model in {path}: {source}")]
    Model {
        /// The folder.
        path: PathBuf,
        /// The loader's error.
        source: sdrt_models::Error,
    },
    /// Listing a folder of models failed.
    #[error("reading the models folder {path}: {source}")]
    ModelDirectory {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The io crate's error.
        source: sdrt_io::Error,
    },
    /// An init image could not be fitted to the requested size.
    #[error("init image: {source}")]
    InitImage {
        /// The io crate's error.
        source: sdrt_io::Error,
    },
    /// The request is invalid.
    #[error(transparent)]
    Request(#[from] sdrt_api_types::Error),
    /// The request asks for a feature sdrt does not implement yet.
    #[error("{field}: {feature} is not implemented in sdrt yet; leave {field} unset")]
    Unsupported {
        /// The request field.
        field: &'static str,
        /// The feature it asks for.
        feature: &'static str,
    },
    /// A setting (an `override_settings` entry) has a value sdrt cannot use.
    #[error("invalid {field}: {problem}")]
    Setting {
        /// The setting, as a request field path (`override_settings.randn_source`).
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A request field has a value sdrt cannot use (an unknown upscaler, a size out of range, a mask that
    /// is not an image).
    #[error("invalid {field}: {problem}")]
    Field {
        /// The request field.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An upscaler model failed to run.
    #[error("hires upscaler model: {source}")]
    Upscaler {
        /// The models crate's error.
        source: sdrt_models::Error,
    },
    /// A pipeline stage failed.
    #[error(transparent)]
    Processing(#[from] sdrt_processing::Error),
}

impl Error {
    /// The error under any stage wrappers: what actually went wrong.
    pub fn root(&self) -> &Error {
        match self {
            Self::Stage { source, .. } => source.root(),
            other => other,
        }
    }

    /// The lifecycle stage the error happened in, when it came from a job.
    pub fn stage(&self) -> Option<crate::lifecycle::Stage> {
        match self {
            Self::Stage { stage, .. } => Some(*stage),
            _ => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
