//! `ProcessingRunner` for sdrt: the one execution boundary (prepare → execute → finalize, with hooks),
//! execution queue, progress, interrupt and metrics.
//!
//! Every generation (CLI, HTTP API, tests) runs through [`ProcessingRunner`], so stage order, hooks and
//! metrics are the same for all callers.

mod error;
mod lifecycle;
mod metrics;
mod progress;
mod queue;

pub use error::{Error, Result};
pub use lifecycle::{HookPoint, JobContext, JobInfo, ProcessingJob, ProcessingRunner, RunnerHook, Stage};
pub use metrics::{JobMetrics, RuntimeMetrics, STAGE_NAMES};
pub use progress::{JobControl, NoProgress, ProgressEvent, ProgressSink, eta};
pub use queue::ExecutionQueue;
