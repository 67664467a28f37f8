//! The server's error type and its A1111-shaped JSON responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything an endpoint can answer with instead of its result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not a valid request (names the field and the fix).
    #[error(transparent)]
    Request(#[from] sdrt_api_types::Error),
    /// A field sdrt could not use, outside the api-types validation (e.g. an init image that is not one).
    #[error("{field}: {message}")]
    Field {
        /// The request field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A setting value sdrt cannot use (`POST /sdapi/v1/options`).
    #[error("{key}: {message}")]
    Setting {
        /// The setting's name.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The job failed inside the runtime.
    #[error(transparent)]
    Runtime(#[from] sdrt_runtime::Error),
    /// Encoding a result failed.
    #[error("encoding image {index}: {source}")]
    Encode {
        /// Image index in the batch.
        index: usize,
        /// What the encoder said.
        source: sdrt_io::Error,
    },
    /// The blocking job thread panicked or was cancelled.
    #[error("the generation thread stopped: {0}")]
    Worker(String),
    /// The queue holds as many waiting jobs as it may.
    #[error("the job queue is full ({capacity} waiting jobs); retry later")]
    QueueFull {
        /// The queue's capacity (`--queue-capacity`).
        capacity: usize,
    },
    /// No job has this id (never submitted, or finished long enough ago to be forgotten).
    #[error("no job {id}: finished jobs are kept for the last 256 submissions")]
    UnknownJob {
        /// The id asked for.
        id: u64,
    },
    /// The job was cancelled before it produced a result.
    #[error("job {id} was cancelled")]
    Cancelled {
        /// The job.
        id: u64,
    },
    /// The job ran longer than the server's time limit and was stopped.
    #[error("the job ran longer than the server's job time limit ({seconds} s, --job-timeout)")]
    TimedOut {
        /// The limit.
        seconds: u64,
    },
    /// The shared job queue (Redis) cannot be reached; nothing was queued.
    #[error("the job queue (Redis) is unreachable: {0}; retry later")]
    QueueUnavailable(String),
    /// A copy of an error kept with a finished job (its result can be fetched again).
    #[error("{message}")]
    Stored {
        /// The original status.
        status: StatusCode,
        /// The original kind.
        kind: &'static str,
        /// The original message.
        message: String,
    },
}

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A copy that can be answered again (finished jobs keep their error).
    pub(crate) fn snapshot(&self) -> Error {
        Error::Stored { status: self.status(), kind: self.kind(), message: self.to_string() }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::QueueUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::UnknownJob { .. } => StatusCode::NOT_FOUND,
            Error::Cancelled { .. } => StatusCode::CONFLICT,
            Error::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Stored { status, .. } => *status,
            Error::Request(_) | Error::Field { .. } | Error::Setting { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Runtime(error) => match error.root() {
                // Prepare is where the runtime checks a request (overrides, init images, masks, names): a model
                // name it cannot find there is a bad field value, not a missing resource.
                _ if error.stage() == Some(sdrt_runtime::Stage::Prepare) => StatusCode::UNPROCESSABLE_ENTITY,
                sdrt_runtime::Error::UnknownModel { .. } => StatusCode::NOT_FOUND,
                sdrt_runtime::Error::Request(_)
                | sdrt_runtime::Error::InitImage { .. }
                | sdrt_runtime::Error::Unsupported { .. }
                | sdrt_runtime::Error::Field { .. }
                | sdrt_runtime::Error::Setting { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                // A pipeline stage refusing a parameter (a prompt-editing step too large, …) is a bad request
                // found late, not a server fault.
                sdrt_runtime::Error::Processing(sdrt_processing::Error::InvalidParameter { .. }) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Encode { .. } | Error::Worker(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Error::Request(_) | Error::Field { .. } | Error::Setting { .. } => "ValidationError",
            // A request the runtime refused (a field it cannot use) is a validation error like any other.
            Error::Runtime(_) if self.status() == StatusCode::UNPROCESSABLE_ENTITY => "ValidationError",
            Error::Runtime(_) => "RuntimeError",
            Error::Encode { .. } => "EncodeError",
            Error::Worker(_) => "WorkerError",
            Error::QueueFull { .. } => "QueueFull",
            Error::QueueUnavailable(_) => "QueueUnavailable",
            Error::UnknownJob { .. } => "NotFound",
            Error::Cancelled { .. } => "Cancelled",
            Error::TimedOut { .. } => "TimedOut",
            Error::Stored { kind, .. } => kind,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        tracing::warn!(status = %self.status(), "{message}");
        let body = sdrt_api_types::ErrorResponse::new(self.kind(), &without_server_paths(&message));
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, Error::QueueFull { .. } | Error::QueueUnavailable(_)) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}

/// `message` with every absolute path of this machine cut to its file name: the server's folders are not the
/// client's business (the log keeps the full message). Only words whose parent folder exists are paths, so API
/// routes (`/sdrt/v1/jobs/5`) stay as they are.
pub(crate) fn without_server_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (index, word) in message.split(' ').enumerate() {
        if index > 0 {
            out.push(' ');
        }
        let path = word.trim_end_matches([':', ',', ';', ')', '"', '\'', '.']);
        let local = std::path::Path::new(path);
        let is_server_path =
            path.starts_with('/') && local.parent().is_some_and(|p| p != std::path::Path::new("/") && p.is_dir());
        match local.file_name().filter(|_| is_server_path) {
            Some(name) => {
                out.push_str(&name.to_string_lossy());
                out.push_str(&word[path.len()..]);
            }
            None => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_become_file_names_and_routes_stay() {
        let dir = std::env::temp_dir();
        let file = dir.join("model.safetensors");
        let message = format!("loading {}: bad header; poll /sdrt/v1/jobs/5 or see {}.", file.display(), dir.display());
        let cleaned = without_server_paths(&message);
        // Top-level folders (`/tmp`) say nothing about the server's layout and stay.
        let expected = format!("loading model.safetensors: bad header; poll /sdrt/v1/jobs/5 or see {}.", dir.display());
        assert_eq!(cleaned, expected);
    }
}
