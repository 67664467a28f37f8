//! `sdrt worker`: reads jobs from the Redis streams through the consumer group, runs them through the same
//! preparation and `ProcessingRunner` as the in-process queue, publishes progress, stores the result and only
//! then acknowledges the entry.
//!
//! A job whose worker died stays pending in the group; any worker claims it back (`XAUTOCLAIM`) once it has been
//! idle for `reclaim_after`, and runs it again, up to `max_attempts` starts. A live worker keeps its running
//! job's entry fresh (`XCLAIM … JUSTID`) so nobody takes it while it runs. Redis errors never end the worker:
//! it retries with backoff, and a finished job's result is stored before anything else happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use sdrt_api_types::{ImageResponse, Img2ImgRequest, JobState, Txt2ImgRequest};
use sdrt_runtime::JobControl;

use super::{
    CURRENT, GROUP, QUEUES, WORKERS, WorkerRecord, connect, ensure_group, error_record, job_key, live_workers,
    now_seconds, queue_key, state_name, unavailable,
};
use crate::error::{Error, Result};
use crate::progress::ProgressTracker;
use crate::state::ServerState;

/// How a worker takes part in the queue.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This worker's consumer name (unique per worker: the host name and process id by default).
    pub name: String,
    /// A job pending this long without its worker's heartbeat is taken over by another worker.
    pub reclaim_after: Duration,
    /// A job started this many times without finishing ends as failed.
    pub max_attempts: u32,
    /// How long a finished job's result stays in Redis.
    pub result_ttl: Duration,
    /// How long an idle worker blocks reading its own stream before it looks again for dead workers' jobs
    /// and for jobs of models no worker holds.
    pub poll: Duration,
    /// A job running longer is stopped and ends `timed_out` (`None`: no limit).
    pub job_timeout: Option<Duration>,
}

impl WorkerOptions {
    /// Defaults for `url`: a unique name, reclaim after 60 s, 3 attempts, results kept for an hour.
    pub fn new(url: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        Self {
            url: url.into(),
            name: format!("{host}-{}", std::process::id()),
            reclaim_after: Duration::from_secs(60),
            max_attempts: 3,
            result_ttl: Duration::from_secs(3600),
            poll: Duration::from_millis(100),
            job_timeout: None,
        }
    }
}

/// Starts a job unless it finished, was cancelled, or has been started too often (then it fails here).
const START: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', '0'} end
if state ~= 'queued' and state ~= 'running' then return {'finished', '0'} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'exhausted', tostring(attempts - 1)}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started', ARGV[3])
redis.call('HDEL', KEYS[1], 'progress')
return {'started', tostring(attempts)}
";

/// Stores a job's outcome if this worker still owns it (another may have taken it over meanwhile).
const FINISH: &str = r"
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Runs jobs from the queue at `options.url` on `state`'s models until `shutdown` is set; the job in progress
/// then finishes (and is stored and acknowledged) before this returns.
pub async fn run_worker(state: Arc<ServerState>, options: WorkerOptions, shutdown: Arc<AtomicBool>) -> Result<()> {
    let mut worker = Worker::new(state, options).await?;
    let mut backoff = Backoff::default();
    while !shutdown.load(Ordering::SeqCst) {
        let outcome = match worker.step().await {
            Ok(false) => worker.wait_for_own_job().await,
            other => other,
        };
        match outcome {
            Ok(_) => backoff.reset(),
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(worker = %worker.options.name, %error, "queue unreachable; retrying in {wait:?}");
                eprintln!("worker {}: {error}; retrying in {wait:?}", worker.options.name);
                tokio::time::sleep(wait).await;
            }
        }
    }
    let _: redis::RedisResult<()> = worker.connection.hdel(WORKERS, &worker.options.name).await;
    eprintln!("worker {} stopped", worker.options.name);
    Ok(())
}

struct Worker {
    state: Arc<ServerState>,
    /// The settings this worker was started with; each job runs on them plus the cluster's posted options.
    base_settings: sdrt_runtime::GenerationSettings,
    options: WorkerOptions,
    connection: redis::aio::ConnectionManager,
    /// The model this worker has loaded (its stream is read first).
    held: String,
    last_reclaim: Instant,
    last_heartbeat: Option<Instant>,
}

/// How a job that ran came to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Finished,
    /// The client cancelled it while it ran.
    Cancelled,
    /// It ran past `--job-timeout`.
    TimedOut,
}

/// One stream entry: the stream, the entry id and the job id it carries.
struct Delivery {
    stream: String,
    entry: String,
    id: u64,
}

impl Worker {
    async fn new(state: Arc<ServerState>, options: WorkerOptions) -> Result<Self> {
        let mut backoff = Backoff::default();
        let connection = loop {
            match connect(&options.url).await {
                Ok(connection) => break connection,
                Err(Error::QueueUnavailable(reason)) => {
                    let wait = backoff.next();
                    eprintln!(
                        "worker {}: Redis at {} unreachable ({reason}); retrying in {wait:?}",
                        options.name, options.url
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(other) => return Err(other),
            }
        };
        let held = state.settings().model.unwrap_or_else(|| "default".to_owned());
        let last_reclaim = Instant::now().checked_sub(options.reclaim_after).unwrap_or_else(Instant::now);
        eprintln!("worker {} reading {} (model {held})", options.name, queue_key(&held));
        let base_settings = state.settings();
        Ok(Self { state, base_settings, options, connection, held, last_reclaim, last_heartbeat: None })
    }

    /// Runs at most one job; false when there was none.
    async fn step(&mut self) -> Result<bool> {
        self.heartbeat(None).await?;
        let delivery = match self.reclaim().await? {
            Some(delivery) => Some(delivery),
            None => match self.read(&[queue_key(&self.held)]).await? {
                Some(delivery) => Some(delivery),
                None => self.read_orphans().await?,
            },
        };
        let Some(delivery) = delivery else { return Ok(false) };
        self.handle(delivery).await?;
        Ok(true)
    }

    /// Waits up to `options.poll` for a new job on this worker's own stream and runs it; false when none came.
    /// A blocking read, so that a job posted to an idle worker starts at once rather than at its next poll.
    async fn wait_for_own_job(&mut self) -> Result<bool> {
        let Some(delivery) = self.read_within(&[queue_key(&self.held)], Some(self.options.poll)).await? else {
            return Ok(false);
        };
        self.handle(delivery).await?;
        Ok(true)
    }

    async fn heartbeat(&mut self, running: Option<u64>) -> Result<()> {
        if running.is_none() && self.last_heartbeat.is_some_and(|at| at.elapsed() < Duration::from_secs(2)) {
            return Ok(());
        }
        announce(&mut self.connection, &self.options.name, &self.held, running).await.map_err(|e| unavailable(&e))?;
        ensure_group(&mut self.connection, &queue_key(&self.held)).await?;
        self.last_heartbeat = Some(Instant::now());
        Ok(())
    }

    /// A job left pending by a worker that stopped, from any stream.
    async fn reclaim(&mut self) -> Result<Option<Delivery>> {
        if self.last_reclaim.elapsed() < self.options.reclaim_after / 2 {
            return Ok(None);
        }
        self.last_reclaim = Instant::now();
        let streams: Vec<String> = self.connection.smembers(QUEUES).await.map_err(|e| unavailable(&e))?;
        for stream in streams {
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.options.name)
                .arg(self.options.reclaim_after.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.connection)
                .await
                .map_err(|e| unavailable(&e))?;
            if let Some((entry, id)) = first_autoclaimed(&reply) {
                eprintln!("worker {} took over job {id} from a worker that stopped", self.options.name);
                return Ok(Some(Delivery { stream, entry, id }));
            }
        }
        Ok(None)
    }

    /// The next new entry of the first of `streams` that has one, delivered to this worker (one stream at a
    /// time: an entry read is pending on this worker until it acknowledges it).
    async fn read(&mut self, streams: &[String]) -> Result<Option<Delivery>> {
        self.read_within(streams, None).await
    }

    /// `read`, waiting up to `block` on each stream for an entry to arrive (keep it well under the connection's
    /// 5 s response timeout).
    async fn read_within(&mut self, streams: &[String], block: Option<Duration>) -> Result<Option<Delivery>> {
        let mut options = StreamReadOptions::default().group(GROUP, &self.options.name).count(1);
        if let Some(block) = block {
            options = options.block(block.as_millis().max(1) as usize);
        }
        for stream in streams {
            let reply: Option<StreamReadReply> =
                self.connection.xread_options(&[stream], &[">"], &options).await.map_err(|e| unavailable(&e))?;
            let entries = reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids);
            for entry in entries {
                match entry.get::<u64>("id") {
                    Some(id) => return Ok(Some(Delivery { stream: stream.clone(), entry: entry.id, id })),
                    // Not a job entry: nothing to run, nothing to keep.
                    None => self.acknowledge(stream, &entry.id).await?,
                }
            }
        }
        Ok(None)
    }

    /// Jobs for models no live worker holds: this worker loads the model and runs them.
    async fn read_orphans(&mut self) -> Result<Option<Delivery>> {
        let streams: Vec<String> = self.connection.smembers(QUEUES).await.map_err(|e| unavailable(&e))?;
        let held_elsewhere: std::collections::BTreeSet<String> = live_workers(&mut self.connection)
            .await?
            .into_iter()
            .flat_map(|worker| worker.models.into_iter().map(|model| queue_key(&model)))
            .collect();
        let own = queue_key(&self.held);
        let orphans: Vec<String> =
            streams.into_iter().filter(|stream| *stream != own && !held_elsewhere.contains(stream)).collect();
        self.read(&orphans).await
    }

    async fn acknowledge(&mut self, stream: &str, entry: &str) -> Result<()> {
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(entry)
            .ignore()
            .query_async(&mut self.connection)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn handle(&mut self, delivery: Delivery) -> Result<()> {
        let key = job_key(delivery.id);
        let exhausted = error_record(&Error::Worker(format!(
            "the job was started {} times and its worker stopped each time before finishing (--max-attempts)",
            self.options.max_attempts
        )));
        let (verdict, attempts): (String, String) = redis::Script::new(START)
            .key(&key)
            .arg(&self.options.name)
            .arg(self.options.max_attempts)
            .arg(now_seconds())
            .arg(exhausted)
            .arg(self.options.result_ttl.as_secs().max(1))
            .invoke_async(&mut self.connection)
            .await
            .map_err(|e| unavailable(&e))?;
        if verdict != "started" {
            if verdict == "exhausted" {
                eprintln!("job {} failed: started {attempts} times without finishing", delivery.id);
            }
            return self.acknowledge(&delivery.stream, &delivery.entry).await;
        }
        let _: () = self.connection.set(CURRENT, delivery.id).await.map_err(|e| unavailable(&e))?;
        self.heartbeat(Some(delivery.id)).await?;
        let fields: std::collections::HashMap<String, String> =
            self.connection.hgetall(&key).await.map_err(|e| unavailable(&e))?;
        let model = fields.get("model").cloned().unwrap_or_else(|| self.held.clone());
        self.apply_shared_options().await?;
        let (outcome, ending) = self.run(&delivery, &fields, &model).await;
        self.held = model;
        let (state, field, value) = match (&outcome, ending) {
            (_, Ending::TimedOut) => {
                let seconds = self.options.job_timeout.map_or(0, |t| t.as_secs());
                (JobState::TimedOut, "error", error_record(&Error::TimedOut { seconds }))
            }
            (Ok(response), ending) => (
                if ending == Ending::Cancelled { JobState::Cancelled } else { JobState::Succeeded },
                "result",
                serde_json::to_string(response).unwrap_or_default(),
            ),
            (Err(error), ending) => (
                if ending == Ending::Cancelled { JobState::Cancelled } else { JobState::Failed },
                "error",
                error_record(error),
            ),
        };
        self.store(&delivery, state, field, &value).await;
        self.acknowledge(&delivery.stream, &delivery.entry).await?;
        self.heartbeat(None).await
    }

    /// The worker's own settings with the options posted to any API server over them (A1111's are global).
    async fn apply_shared_options(&mut self) -> Result<()> {
        let posted = super::shared_options(&mut self.connection).await?;
        let mut settings = self.base_settings.clone();
        if let Err(problem) = settings.apply_settings(&posted) {
            // The API server checked them against its own models; this worker keeps its settings for that key.
            eprintln!(
                "worker {}: posted option {} not applied here: {}",
                self.options.name, problem.key, problem.problem
            );
            settings = self.base_settings.clone();
        }
        self.state.set_settings(settings);
        Ok(())
    }

    /// Stores the outcome, retrying while Redis is unreachable: it is acknowledged only once stored.
    async fn store(&mut self, delivery: &Delivery, state: JobState, field: &str, value: &str) {
        let mut backoff = Backoff::default();
        loop {
            let stored: redis::RedisResult<i64> = redis::Script::new(FINISH)
                .key(job_key(delivery.id))
                .arg(&self.options.name)
                .arg(state_name(state))
                .arg(field)
                .arg(value)
                .arg(self.options.result_ttl.as_secs().max(1))
                .invoke_async(&mut self.connection)
                .await;
            match stored {
                Ok(1) => return,
                Ok(_) => {
                    eprintln!("job {}: another worker owns it now; its result stands", delivery.id);
                    return;
                }
                Err(error) => {
                    let wait = backoff.next();
                    eprintln!("job {}: storing the result failed ({error}); retrying in {wait:?}", delivery.id);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Prepares and runs the job while a watcher publishes progress, applies cancel/interrupt/skip and keeps
    /// the entry claimed. Returns the outcome and whether the client cancelled it.
    async fn run(
        &self,
        delivery: &Delivery,
        fields: &std::collections::HashMap<String, String>,
        model: &str,
    ) -> (Result<ImageResponse>, Ending) {
        let prepared = self.prepare(fields, model);
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return (Err(error), Ending::Finished),
        };
        let control = JobControl::default();
        let progress = Arc::new(ProgressTracker::default());
        let cancelled = Arc::new(AtomicBool::new(false));
        let done = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch_job(
            self.connection.clone(),
            WatchedJob {
                id: delivery.id,
                key: job_key(delivery.id),
                stream: delivery.stream.clone(),
                entry: delivery.entry.clone(),
                worker: self.options.name.clone(),
                model: model.to_owned(),
                refresh: self.options.reclaim_after / 3,
            },
            control.clone(),
            Arc::clone(&progress),
            Arc::clone(&cancelled),
            Arc::clone(&done),
        ));
        let timed_out = Arc::new(AtomicBool::new(false));
        let timer = self.options.job_timeout.map(|limit| {
            let (control, timed_out) = (control.clone(), Arc::clone(&timed_out));
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                timed_out.store(true, Ordering::SeqCst);
                control.interrupt();
            })
        });
        let outcome = crate::generate::execute(&self.state, prepared, control, progress).await;
        if let Some(timer) = timer {
            timer.abort();
        }
        done.notify_one();
        let _ = watcher.await;
        let ending = if timed_out.load(Ordering::SeqCst) {
            Ending::TimedOut
        } else if cancelled.load(Ordering::SeqCst) {
            Ending::Cancelled
        } else {
            Ending::Finished
        };
        (outcome, ending)
    }

    /// The request as the API server received it, checked again here (this worker's models and limits).
    fn prepare(
        &self,
        fields: &std::collections::HashMap<String, String>,
        model: &str,
    ) -> Result<crate::jobs::PreparedJob> {
        let body = fields.get("body").map_or("{}", String::as_str);
        let default_model = self.state.settings().model;
        let with_model = |base: &mut sdrt_api_types::GenerationRequest| {
            // A job routed here for another model than this worker's default names it explicitly.
            if default_model.as_deref() != Some(model) && !base.override_settings.contains_key("sd_model_checkpoint") {
                base.override_settings.insert("sd_model_checkpoint".into(), model.into());
            }
        };
        if fields.get("kind").map(String::as_str) == Some("img2img") {
            let mut request = Img2ImgRequest::from_json(body)?;
            with_model(&mut request.base);
            crate::generate::prepare_img2img(&self.state, request)
        } else {
            let mut request = Txt2ImgRequest::from_json(body)?;
            with_model(&mut request.base);
            crate::generate::prepare_txt2img(&self.state, request)
        }
    }
}

struct WatchedJob {
    id: u64,
    key: String,
    stream: String,
    entry: String,
    worker: String,
    /// The model the job runs on (what the worker holds while it runs).
    model: String,
    refresh: Duration,
}

/// While a job runs: publish its progress, act on the client's cancel/interrupt/skip, and re-claim its entry
/// so no other worker takes it over. Redis errors only skip a beat.
async fn watch_job(
    mut connection: redis::aio::ConnectionManager,
    job: WatchedJob,
    control: JobControl,
    progress: Arc<ProgressTracker>,
    cancelled: Arc<AtomicBool>,
    done: Arc<tokio::sync::Notify>,
) {
    let (mut interrupts, mut skips) = (0i64, 0i64);
    let mut last_refresh = Instant::now();
    loop {
        tokio::select! {
            () = done.notified() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let snapshot = serde_json::to_string(&progress.snapshot_with_preview()).unwrap_or_default();
        let _: redis::RedisResult<()> = connection.hset(&job.key, "progress", snapshot).await;
        let requests: redis::RedisResult<(Option<String>, Option<i64>, Option<i64>)> =
            redis::cmd("HMGET").arg(&job.key).arg(&["cancel", "interrupt", "skip"]).query_async(&mut connection).await;
        if let Ok((cancel, interrupt, skip)) = requests {
            let interrupt = interrupt.unwrap_or(0);
            if (cancel.as_deref() == Some("1") && !cancelled.swap(true, Ordering::SeqCst)) || interrupt > interrupts {
                control.interrupt();
                progress.mark_interrupted();
            }
            interrupts = interrupts.max(interrupt);
            let skip = skip.unwrap_or(0);
            if skip > skips {
                control.skip();
                skips = skip;
            }
        }
        if last_refresh.elapsed() >= job.refresh.min(Duration::from_secs(2)) {
            last_refresh = Instant::now();
            // The worker stays live (and listed) through a long job.
            let _: redis::RedisResult<()> = announce(&mut connection, &job.worker, &job.model, Some(job.id)).await;
            let _: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                .arg(&job.stream)
                .arg(GROUP)
                .arg(&job.worker)
                .arg(0)
                .arg(&job.entry)
                .arg("JUSTID")
                .query_async(&mut connection)
                .await;
        }
    }
}

/// Writes this worker's heartbeat, the model it holds and the job it runs to `sdrt:workers`.
async fn announce(
    connection: &mut redis::aio::ConnectionManager,
    name: &str,
    model: &str,
    running: Option<u64>,
) -> redis::RedisResult<()> {
    let record =
        WorkerRecord { name: name.to_owned(), models: vec![model.to_owned()], heartbeat: now_seconds(), running };
    connection.hset(WORKERS, name, serde_json::to_string(&record).unwrap_or_default()).await
}

/// The first entry an `XAUTOCLAIM` reply claimed: its id and job id.
fn first_autoclaimed(reply: &redis::Value) -> Option<(String, u64)> {
    let redis::Value::Array(parts) = reply else { return None };
    let redis::Value::Array(entries) = parts.get(1)? else { return None };
    let redis::Value::Array(entry) = entries.first()? else { return None };
    let entry_id: String = redis::from_redis_value(entry.first()?.clone()).ok()?;
    let fields: Vec<String> = redis::from_redis_value(entry.get(1)?.clone()).ok()?;
    let id = fields.chunks(2).find(|pair| pair[0] == "id").and_then(|pair| pair.get(1)?.parse().ok())?;
    Some((entry_id, id))
}

/// 100 ms doubling to 5 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(100).saturating_mul(1 << self.0.min(6)).min(Duration::from_secs(5));
        self.0 += 1;
        wait
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}
