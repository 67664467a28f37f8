//! `/sdrt/v1/jobs` bodies: sdrt's asynchronous job API (A1111 has none), around A1111's request and response.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a job generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// A `/sdapi/v1/txt2img` request.
    Txt2img,
    /// A `/sdapi/v1/img2img` request.
    Img2img,
}

impl JobKind {
    /// The name on the wire ("txt2img").
    pub fn name(self) -> &'static str {
        match self {
            Self::Txt2img => "txt2img",
            Self::Img2img => "img2img",
        }
    }
}

/// `POST /sdrt/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobSubmission {
    /// Which endpoint's request `request` is.
    pub kind: JobKind,
    /// The A1111 request body (`Txt2ImgRequest` or `Img2ImgRequest`, by `kind`); read after `kind` so a bad
    /// field is reported with its path.
    #[serde(default)]
    #[schemars(with = "JobRequestSchema")]
    pub request: Value,
}

/// Only for the schema of [`JobSubmission::request`].
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // never built: it describes the JSON `request` holds
enum JobRequestSchema {
    Txt2Img(crate::Txt2ImgRequest),
    Img2Img(crate::Img2ImgRequest),
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Generating.
    Running,
    /// Finished; the result is ready.
    Succeeded,
    /// Finished with an error (`error` says which).
    Failed,
    /// Cancelled while queued, or interrupted while running (the images made so far are the result).
    Cancelled,
    /// Stopped by the server's job time limit.
    TimedOut,
}

impl JobState {
    /// Whether the job will not change any more.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// `202` answer to [`JobSubmission`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobAccepted {
    /// The job's id.
    pub id: String,
    /// Always `queued`.
    pub state: JobState,
    /// Jobs ahead of this one.
    pub queue_position: usize,
    /// `GET` for [`JobStatus`].
    pub status_url: String,
    /// `GET` for the A1111 response once finished.
    pub result_url: String,
    /// `GET` for server-sent `status` events.
    pub events_url: String,
}

/// `GET /sdrt/v1/jobs/{id}` (also each `status` event, and the answer to `DELETE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobStatus {
    /// The job's id.
    pub id: String,
    /// What it generates.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Jobs ahead of it while queued; `null` otherwise.
    pub queue_position: Option<usize>,
    /// When it was submitted, in seconds since the Unix epoch.
    pub created: f64,
    /// Fraction done, 0 to 1.
    pub progress: f64,
    /// Estimated seconds left.
    pub eta_relative: f64,
    /// The current sampling step.
    pub sampling_step: i64,
    /// Steps of the current pass.
    pub sampling_steps: i64,
    /// Index of the batch running.
    pub job_no: i64,
    /// Batches in the job.
    pub job_count: i64,
    /// Why it failed or was stopped.
    pub error: Option<String>,
    /// With a Redis queue: the worker that runs (or ran) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// With a Redis queue: how many times a worker started it (more than 1 after a worker died mid-job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `GET /sdrt/v1/workers`: one worker of a Redis queue (`sdrt worker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerStatus {
    /// Its consumer name (`--name`).
    pub name: String,
    /// The models it holds loaded (jobs for them are routed to it).
    pub models: Vec<String>,
    /// Seconds since its last heartbeat.
    pub seconds_since_heartbeat: f64,
    /// The job it runs, if any.
    pub running_job: Option<String>,
}
