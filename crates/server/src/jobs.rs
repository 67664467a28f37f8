//! The job queue behind every generation endpoint: `POST /sdrt/v1/jobs` (202 with an id), per-job state,
//! progress, result, cancel and a server-sent-events stream; A1111's `txt2img`/`img2img` submit to the same
//! queue and wait for their job.
//!
//! One worker task runs jobs first in, first out, one at a time (A1111's queue lock), each on a blocking
//! thread. A job that fails or panics ends in a failed state and the worker takes the next one. The queue
//! holds at most `capacity` waiting jobs (beyond it: 429 with `Retry-After`); finished jobs are kept for
//! [`RETAINED_FINISHED`] more submissions so clients can fetch results.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sdrt_api_types::{GenerationRequest, ImageResponse, JobKind, JobState, JobStatus};
use sdrt_runtime::{JobControl, ProcessingRequest, ProgressEvent, ProgressSink};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::progress::ProgressTracker;
use crate::state::ServerState;

/// Finished jobs kept for their results; older ones are forgotten.
pub(crate) const RETAINED_FINISHED: usize = 256;

/// A validated request ready to run.
pub(crate) struct PreparedJob {
    pub kind: JobKind,
    pub request: ProcessingRequest,
    pub base: GenerationRequest,
    pub parameters: Value,
    pub denoising_strength: Option<f64>,
}

struct Entry {
    kind: JobKind,
    state: JobState,
    created: SystemTime,
    started: Option<Instant>,
    job: Option<PreparedJob>,
    control: JobControl,
    progress: Arc<ProgressTracker>,
    outcome: Option<std::result::Result<ImageResponse, Error>>,
    cancel_requested: bool,
    timed_out: bool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    queue: VecDeque<u64>,
    entries: HashMap<u64, Entry>,
    finished: VecDeque<u64>,
}

/// The queue; one per server.
pub(crate) struct Jobs {
    inner: Mutex<Inner>,
    /// Wakes the worker when a job is queued.
    queued: tokio::sync::Notify,
    /// Bumped on every state change, so waiters and event streams wake up.
    changed: tokio::sync::watch::Sender<u64>,
    worker_started: std::sync::atomic::AtomicBool,
    capacity: usize,
    timeout: Option<Duration>,
}

impl Jobs {
    pub(crate) fn new(capacity: usize, timeout: Option<Duration>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            queued: tokio::sync::Notify::new(),
            changed: tokio::sync::watch::channel(0).0,
            worker_started: std::sync::atomic::AtomicBool::new(false),
            capacity: capacity.max(1),
            timeout,
        }
    }

    /// How many jobs may wait.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The entries stay consistent between statements; a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    /// Queues `job`; returns its id and how many jobs are ahead of it.
    pub(crate) fn submit(&self, state: &Arc<ServerState>, job: PreparedJob) -> Result<(u64, usize)> {
        self.start_worker(state);
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            return Err(Error::QueueFull { capacity: self.capacity });
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let entry = Entry {
            kind: job.kind,
            state: JobState::Queued,
            created: SystemTime::now(),
            started: None,
            job: Some(job),
            control: JobControl::default(),
            progress: Arc::new(ProgressTracker::default()),
            outcome: None,
            cancel_requested: false,
            timed_out: false,
        };
        inner.entries.insert(id, entry);
        inner.queue.push_back(id);
        let ahead = inner.queue.len() - 1 + usize::from(inner.entries.values().any(|e| e.state == JobState::Running));
        drop(inner);
        self.queued.notify_one();
        self.bump();
        Ok((id, ahead))
    }

    /// Waits until job `id` finishes and returns its result (A1111's blocking endpoints).
    pub(crate) async fn wait(&self, id: u64) -> Result<ImageResponse> {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(outcome) = self.outcome(id)? {
                return outcome;
            }
            if changes.changed().await.is_err() {
                return Err(Error::Worker("the job queue stopped".to_owned()));
            }
        }
    }

    /// The finished job's result, `None` while it has not finished.
    pub(crate) fn outcome(&self, id: u64) -> Result<Option<Result<ImageResponse>>> {
        let inner = self.lock();
        let entry = inner.entries.get(&id).ok_or(Error::UnknownJob { id })?;
        if !entry.state.is_finished() {
            return Ok(None);
        }
        Ok(Some(match (&entry.outcome, entry.state) {
            (Some(Ok(response)), JobState::Succeeded | JobState::Cancelled) => Ok(response.clone()),
            (Some(Err(error)), _) => Err(error.snapshot()),
            (_, JobState::TimedOut) => Err(Error::TimedOut { seconds: self.timeout.map_or(0, |t| t.as_secs()) }),
            _ => Err(Error::Cancelled { id }),
        }))
    }

    /// The job's state as `GET /sdrt/v1/jobs/{id}` shows it.
    pub(crate) fn status(&self, id: u64) -> Result<JobStatus> {
        let inner = self.lock();
        let entry = inner.entries.get(&id).ok_or(Error::UnknownJob { id })?;
        let position = inner.queue.iter().position(|queued| *queued == id);
        let progress = entry.progress.snapshot();
        let created = entry.created.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let error = match &entry.outcome {
            Some(Err(error)) => Some(error.to_string()),
            _ if entry.state == JobState::TimedOut => Some(format!(
                "the job ran longer than the server's job time limit ({} s)",
                self.timeout.map_or(0, |t| t.as_secs())
            )),
            _ => None,
        };
        let finished = entry.state == JobState::Succeeded;
        Ok(JobStatus {
            id: id.to_string(),
            kind: entry.kind,
            state: entry.state,
            queue_position: position,
            created,
            progress: if finished { 1.0 } else { progress.progress },
            eta_relative: progress.eta_relative,
            sampling_step: progress.state.sampling_step,
            sampling_steps: progress.state.sampling_steps,
            job_no: progress.state.job_no,
            job_count: progress.state.job_count,
            error,
            worker: None,
            attempts: None,
        })
    }

    /// Cancels a queued job or interrupts a running one; returns the state afterwards.
    pub(crate) fn cancel(&self, id: u64) -> Result<JobStatus> {
        {
            let mut inner = self.lock();
            let entry = inner.entries.get_mut(&id).ok_or(Error::UnknownJob { id })?;
            match entry.state {
                JobState::Queued => {
                    entry.state = JobState::Cancelled;
                    entry.job = None;
                    inner.queue.retain(|queued| *queued != id);
                    inner.finished.push_back(id);
                }
                JobState::Running => {
                    entry.cancel_requested = true;
                    entry.control.interrupt();
                    entry.progress.mark_interrupted();
                }
                _ => {}
            }
        }
        self.bump();
        self.status(id)
    }

    /// A receiver that changes whenever any job does (for event streams).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The running job's controls (A1111's global interrupt and skip).
    pub(crate) fn running_control(&self) -> Option<(JobControl, Arc<ProgressTracker>)> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .find(|e| e.state == JobState::Running)
            .map(|e| (e.control.clone(), Arc::clone(&e.progress)))
    }

    fn start_worker(&self, state: &Arc<ServerState>) {
        if !self.worker_started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(worker(Arc::clone(state)));
        }
    }

    /// Takes the next queued job and marks it running.
    fn next(&self) -> Option<(u64, PreparedJob, JobControl, Arc<ProgressTracker>)> {
        let mut inner = self.lock();
        while let Some(id) = inner.queue.pop_front() {
            if let Some(entry) = inner.entries.get_mut(&id)
                && let Some(job) = entry.job.take()
            {
                entry.state = JobState::Running;
                entry.started = Some(Instant::now());
                return Some((id, job, entry.control.clone(), Arc::clone(&entry.progress)));
            }
        }
        None
    }

    fn finish(&self, id: u64, outcome: std::result::Result<ImageResponse, Error>) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id) {
            entry.state = if entry.timed_out {
                JobState::TimedOut
            } else if entry.cancel_requested {
                JobState::Cancelled
            } else if outcome.is_ok() {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            entry.outcome = Some(outcome);
            entry.progress.finish();
        }
        inner.finished.push_back(id);
        while inner.finished.len() > RETAINED_FINISHED {
            if let Some(old) = inner.finished.pop_front() {
                inner.entries.remove(&old);
            }
        }
        drop(inner);
        self.bump();
    }

    fn time_out(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id).filter(|e| e.state == JobState::Running) {
            entry.timed_out = true;
            entry.control.interrupt();
        }
    }
}

/// Reports a job's steps both to its own tracker and to A1111's global `/progress`.
struct BothTrackers(Arc<ProgressTracker>, Arc<ProgressTracker>);

impl ProgressSink for BothTrackers {
    fn on_progress(&self, event: &ProgressEvent) {
        self.0.on_progress(event);
        self.1.on_progress(event);
    }
}

async fn worker(state: Arc<ServerState>) {
    loop {
        let Some((id, job, control, progress)) = state.jobs.next() else {
            state.jobs.queued.notified().await;
            continue;
        };
        state.jobs.bump();
        let watchdog = state.jobs.timeout.map(|limit| {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                state.jobs.time_out(id);
            })
        });
        let outcome = crate::generate::execute(&state, job, control, progress).await;
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        state.jobs.finish(id, outcome);
    }
}

/// A job's progress for both the job's tracker and the global one.
pub(crate) fn progress_sink(job: Arc<ProgressTracker>, global: Arc<ProgressTracker>) -> Arc<dyn ProgressSink> {
    Arc::new(BothTrackers(job, global))
}
