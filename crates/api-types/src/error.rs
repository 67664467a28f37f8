//! The error type of sdrt-api-types: bad JSON, unknown names and invalid fields, each naming the field and the fix.

/// A problem with one request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The JSON field name ("width", "hr_scale", …).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request body is not the JSON the endpoint expects.
    #[error("request JSON at `{path}`: {message}")]
    Json {
        /// Path of the offending value ("width", "override_settings.x", "." for the whole body).
        path: String,
        /// serde's description of the problem.
        message: String,
    },
    /// A sampler name that A1111 does not know.
    #[error("{field}: unknown sampler {name:?}; use one of: {valid}")]
    UnknownSampler {
        /// The request field.
        field: &'static str,
        /// The name given.
        name: String,
        /// Every valid name.
        valid: String,
    },
    /// A scheduler name that A1111 does not know.
    #[error("{field}: unknown scheduler {name:?}; use one of: {valid}")]
    UnknownScheduler {
        /// The request field.
        field: &'static str,
        /// The name given.
        name: String,
        /// Every valid name, as "Label (name)".
        valid: String,
    },
    /// One or more fields hold values sdrt cannot run.
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldProblem>),
}

impl Error {
    /// The problems of an [`Error::Invalid`], or the single field of the other variants.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Error::Json { path, .. } => vec![path.as_str()],
            Error::UnknownSampler { field, .. } | Error::UnknownScheduler { field, .. } => vec![field],
            Error::Invalid(problems) => problems.iter().map(|p| p.field).collect(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
