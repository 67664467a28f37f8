//! The one error type of `sdrt-runtime`.

/// What can go wrong while running a job; stage failures keep the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lifecycle stage failed.
    #[error("{stage} failed: {message}")]
    Stage { stage: crate::lifecycle::Stage, message: String },
    /// The execution queue's worker is gone (it panicked or was shut down).
    #[error("the execution queue is closed; start a new runner")]
    QueueClosed,
    /// The job was interrupted before it produced anything.
    #[error("job {job} was interrupted")]
    Interrupted { job: u64 },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
