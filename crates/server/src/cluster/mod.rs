//! Scale-out on Redis Streams: the API server's side of the shared job queue (`sdrt serve --queue redis://…`)
//! and the layout every API server and worker agrees on.
//!
//! Layout (all keys under `sdrt:`):
//! - `sdrt:next_id`: the job id counter (`INCR`), so ids stay numbers across API servers.
//! - `sdrt:job:{id}`: a hash per job: `kind`, `state`, `created`, `model`, `body` (the request JSON as
//!   received), `stream`, `entry`, `attempts`, `worker`, `progress` (the `/progress` body), `result` (the
//!   A1111 response) or `error`, and the client's `cancel`, `interrupt` and `skip` requests. A finished job's
//!   hash expires after the result TTL.
//! - `sdrt:queue:{model}`: one stream per model name, read through the consumer group `workers`, so a job goes
//!   to a worker that holds its model warm; `sdrt:queues` lists the streams.
//! - `sdrt:workers`: worker name → the models it holds and its last heartbeat (routing, reclaiming).
//! - `sdrt:current`: the job started last (A1111's global `/progress`, `/interrupt`, `/skip`).
//! - `sdrt:options`: the settings posted to any API server (`POST /sdapi/v1/options`), which every worker applies
//!   before each job, as A1111's options are global.
//!
//! State changes that race (start, finish, cancel) are Lua scripts, so a job is started by one worker at a
//! time, finishes once, and a cancelled job never starts.

mod worker;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use sdrt_api_types::{ImageResponse, JobKind, JobState, JobStatus, ProgressResponse};
use serde_json::Value;

use crate::error::{Error, Result};

pub use worker::{WorkerOptions, run_worker};

pub(crate) const GROUP: &str = "workers";
const NEXT_ID: &str = "sdrt:next_id";
const QUEUES: &str = "sdrt:queues";
const WORKERS: &str = "sdrt:workers";
const CURRENT: &str = "sdrt:current";
/// A1111 settings posted to any API server (`POST /sdapi/v1/options`), by key, as JSON: every worker applies them.
const OPTIONS: &str = "sdrt:options";
/// How often a waiting A1111 client's job is looked at.
const WAIT_POLL: Duration = Duration::from_millis(100);

pub(crate) fn job_key(id: u64) -> String {
    format!("sdrt:job:{id}")
}

pub(crate) fn queue_key(model: &str) -> String {
    format!("sdrt:queue:{model}")
}

/// `JobState` as stored (its wire name).
pub(crate) fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::TimedOut => "timed_out",
    }
}

fn parse_state(name: &str) -> JobState {
    match name {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "cancelled" => JobState::Cancelled,
        "timed_out" => JobState::TimedOut,
        _ => JobState::Failed,
    }
}

/// A Redis failure as the server's error (503: the queue is unreachable, retry later).
pub(crate) fn unavailable(error: &redis::RedisError) -> Error {
    Error::QueueUnavailable(error.to_string())
}

/// Seconds since the Unix epoch.
pub(crate) fn now_seconds() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Connects to `url` (`redis://host:port[/db]`); the connection reconnects by itself after Redis restarts.
pub(crate) async fn connect(url: &str) -> Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| Error::Field {
        field: "--queue",
        message: format!("{url:?} is not a Redis URL ({e}); use redis://HOST:PORT[/DB]"),
    })?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    client.get_connection_manager_with_config(config).await.map_err(|e| unavailable(&e))
}

/// The API server's handle on the shared queue.
pub(crate) struct RedisQueue {
    connection: redis::aio::ConnectionManager,
    capacity: usize,
    result_ttl: Duration,
}

/// A job's hash, read whole.
struct StoredJob(std::collections::HashMap<String, String>);

impl StoredJob {
    fn field(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn state(&self) -> JobState {
        parse_state(self.field("state").unwrap_or("failed"))
    }

    fn progress(&self) -> ProgressResponse {
        self.field("progress").and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }

    fn error(&self) -> Option<Error> {
        let stored: Value = serde_json::from_str(self.field("error")?).ok()?;
        Some(stored_error(&stored))
    }
}

/// An error a worker stored with a job, answered again as it was.
fn stored_error(stored: &Value) -> Error {
    let status = stored["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
    let kind = match stored["kind"].as_str().unwrap_or_default() {
        "ValidationError" => "ValidationError",
        "NotFound" => "NotFound",
        "EncodeError" => "EncodeError",
        "WorkerError" => "WorkerError",
        "Cancelled" => "Cancelled",
        "TimedOut" => "TimedOut",
        _ => "RuntimeError",
    };
    Error::Stored {
        status: axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        kind,
        message: stored["message"].as_str().unwrap_or("the job failed").to_owned(),
    }
}

/// `error` as a worker stores it.
pub(crate) fn error_record(error: &Error) -> String {
    let Error::Stored { status, kind, message } = error.snapshot() else { unreachable!("snapshot is Stored") };
    serde_json::json!({ "status": status.as_u16(), "kind": kind, "message": message }).to_string()
}

const CANCEL: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
";

impl RedisQueue {
    pub(crate) async fn connect(url: &str, capacity: usize, result_ttl: Duration) -> Result<Self> {
        Ok(Self { connection: connect(url).await?, capacity: capacity.max(1), result_ttl })
    }

    fn connection(&self) -> redis::aio::ConnectionManager {
        self.connection.clone()
    }

    /// Queues a job for `model`: its hash first, then its stream entry, so a worker never reads an entry
    /// without its job. Returns its id and how many jobs of its stream are ahead of it.
    pub(crate) async fn submit(&self, kind: JobKind, model: &str, body: &str) -> Result<(u64, usize)> {
        let mut connection = self.connection();
        let stream = queue_key(model);
        let waiting: usize = connection.xlen(&stream).await.map_err(|e| unavailable(&e))?;
        if waiting >= self.capacity {
            return Err(Error::QueueFull { capacity: self.capacity });
        }
        ensure_group(&mut connection, &stream).await?;
        let id: u64 = connection.incr(NEXT_ID, 1).await.map_err(|e| unavailable(&e))?;
        let key = job_key(id);
        let kind_name = match kind {
            JobKind::Txt2img => "txt2img",
            JobKind::Img2img => "img2img",
        };
        let fields = [
            ("kind", kind_name.to_owned()),
            ("state", "queued".to_owned()),
            ("created", now_seconds().to_string()),
            ("model", model.to_owned()),
            ("stream", stream.clone()),
            ("body", body.to_owned()),
            ("attempts", "0".to_owned()),
        ];
        let entry: String = redis::pipe()
            .atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .sadd(QUEUES, &stream)
            .ignore()
            .cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("id")
            .arg(id)
            .query_async::<(String,)>(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?
            .0;
        let _: () = connection.hset(&key, "entry", &entry).await.map_err(|e| unavailable(&e))?;
        Ok((id, waiting))
    }

    async fn load(&self, id: u64) -> Result<StoredJob> {
        let fields: std::collections::HashMap<String, String> =
            self.connection().hgetall(job_key(id)).await.map_err(|e| unavailable(&e))?;
        if fields.is_empty() {
            return Err(Error::UnknownJob { id });
        }
        Ok(StoredJob(fields))
    }

    /// The finished job's result, `None` while it has not finished.
    pub(crate) async fn outcome(&self, id: u64) -> Result<Option<Result<ImageResponse>>> {
        let job = self.load(id).await?;
        let state = job.state();
        if !state.is_finished() {
            return Ok(None);
        }
        let result = job.field("result").and_then(|text| serde_json::from_str::<ImageResponse>(text).ok());
        Ok(Some(match (result, job.error(), state) {
            (Some(response), _, JobState::Succeeded | JobState::Cancelled) => Ok(response),
            (_, Some(error), _) => Err(error),
            _ => Err(Error::Cancelled { id }),
        }))
    }

    /// Waits until job `id` finishes (A1111's blocking endpoints).
    pub(crate) async fn wait(&self, id: u64) -> Result<ImageResponse> {
        loop {
            match self.outcome(id).await {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => {}
                // Redis restarting: keep waiting, the job is in its log.
                Err(Error::QueueUnavailable(reason)) => tracing::warn!(id, %reason, "waiting for the queue"),
                Err(other) => return Err(other),
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// The job's state as `GET /sdrt/v1/jobs/{id}` shows it.
    pub(crate) async fn status(&self, id: u64) -> Result<JobStatus> {
        let job = self.load(id).await?;
        let state = job.state();
        let queue_position = match (state, job.field("stream"), job.field("entry")) {
            (JobState::Queued, Some(stream), Some(entry)) => {
                let ahead: Vec<redis::Value> = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg(format!("({entry}"))
                    .query_async(&mut self.connection())
                    .await
                    .map_err(|e| unavailable(&e))?;
                Some(ahead.len())
            }
            _ => None,
        };
        let progress = job.progress();
        let kind = if job.field("kind") == Some("img2img") { JobKind::Img2img } else { JobKind::Txt2img };
        Ok(JobStatus {
            id: id.to_string(),
            kind,
            state,
            queue_position,
            created: job.field("created").and_then(|c| c.parse().ok()).unwrap_or(0.0),
            progress: if state == JobState::Succeeded { 1.0 } else { progress.progress },
            eta_relative: progress.eta_relative,
            sampling_step: progress.state.sampling_step,
            sampling_steps: progress.state.sampling_steps,
            job_no: progress.state.job_no,
            job_count: progress.state.job_count,
            error: job.error().map(|e| e.to_string()),
            worker: job.field("worker").map(str::to_owned),
            attempts: job.field("attempts").and_then(|a| a.parse().ok()),
        })
    }

    /// Cancels a queued job (it never starts) or asks the worker running it to interrupt.
    pub(crate) async fn cancel(&self, id: u64) -> Result<JobStatus> {
        let state: Option<String> = redis::Script::new(CANCEL)
            .key(job_key(id))
            .arg(self.result_ttl.as_secs().max(1))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| unavailable(&e))?;
        if state.is_none() {
            return Err(Error::UnknownJob { id });
        }
        self.status(id).await
    }

    /// A1111's `/progress`: the job started last, while it runs.
    pub(crate) async fn current_progress(&self, with_preview: bool) -> Result<ProgressResponse> {
        let Some(id) = self.current().await? else { return Ok(ProgressResponse::default()) };
        let job = self.load(id).await?;
        if job.state() != JobState::Running {
            return Ok(ProgressResponse::default());
        }
        let mut progress = job.progress();
        if !with_preview {
            progress.current_image = None;
        }
        Ok(progress)
    }

    /// A1111's `/interrupt` and `/skip` (`field` is `interrupt` or `skip`): counted on the running job; its
    /// worker acts on each new count.
    pub(crate) async fn signal_current(&self, field: &str) -> Result<()> {
        if let Some(id) = self.current().await? {
            let _: i64 = self.connection().hincr(job_key(id), field, 1).await.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    async fn current(&self) -> Result<Option<u64>> {
        self.connection().get(CURRENT).await.map_err(|e| unavailable(&e))
    }

    /// Stores settings posted to this server for every worker (and every API server's routing).
    pub(crate) async fn store_options(&self, entries: &serde_json::Map<String, Value>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let fields: Vec<(String, String)> = entries.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let _: () = self.connection().hset_multiple(OPTIONS, &fields).await.map_err(|e| unavailable(&e))?;
        Ok(())
    }

    /// The settings posted to any API server.
    pub(crate) async fn options(&self) -> Result<serde_json::Map<String, Value>> {
        shared_options(&mut self.connection()).await
    }

    /// The workers that sent a heartbeat recently, with the models they hold.
    pub(crate) async fn live_workers(&self) -> Result<Vec<WorkerRecord>> {
        live_workers(&mut self.connection()).await
    }
}

/// A worker as it announces itself in `sdrt:workers`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerRecord {
    pub name: String,
    pub models: Vec<String>,
    pub heartbeat: f64,
    pub running: Option<u64>,
}

/// A worker is live when its heartbeat is younger than this.
pub(crate) const WORKER_LIVENESS: Duration = Duration::from_secs(10);

pub(crate) async fn live_workers(connection: &mut redis::aio::ConnectionManager) -> Result<Vec<WorkerRecord>> {
    let all: std::collections::HashMap<String, String> =
        connection.hgetall(WORKERS).await.map_err(|e| unavailable(&e))?;
    let now = now_seconds();
    Ok(all
        .values()
        .filter_map(|text| serde_json::from_str::<WorkerRecord>(text).ok())
        .filter(|worker| now - worker.heartbeat < WORKER_LIVENESS.as_secs_f64())
        .collect())
}

/// The settings posted to any API server, as a settings map.
pub(crate) async fn shared_options(
    connection: &mut redis::aio::ConnectionManager,
) -> Result<serde_json::Map<String, Value>> {
    let stored: std::collections::HashMap<String, String> =
        connection.hgetall(OPTIONS).await.map_err(|e| unavailable(&e))?;
    Ok(stored.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v))).collect())
}

/// Creates the consumer group of `stream` (and the stream) unless it exists; from the stream's start, so no
/// entry added before is skipped.
pub(crate) async fn ensure_group(connection: &mut redis::aio::ConnectionManager, stream: &str) -> Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map_err(|e| unavailable(&e)),
    }
}

/// Shared handle type for the server state.
pub(crate) type SharedQueue = Arc<RedisQueue>;
