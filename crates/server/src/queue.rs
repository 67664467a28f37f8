//! Where a job goes: the in-process queue (`jobs`), or the Redis streams shared by many workers (`cluster`)
//! when the server was started with `--queue`. Every route reaches jobs through these methods.

use std::sync::Arc;

use sdrt_api_types::{ImageResponse, JobStatus, ProgressResponse, WorkerStatus};

use crate::error::Result;
use crate::jobs::PreparedJob;
use crate::state::ServerState;

impl ServerState {
    /// Queues a checked job; `body` is the request JSON as received (what a Redis worker prepares again).
    /// Returns its id and how many jobs are ahead of it.
    pub(crate) async fn submit(self: &Arc<Self>, body: &str, job: PreparedJob) -> Result<(u64, usize)> {
        match &self.cluster {
            Some(queue) => {
                // The request's checkpoint, else the one posted to any API server, else this server's default.
                let posted = queue.options().await?;
                let model = [&job.base.override_settings, &posted]
                    .into_iter()
                    .find_map(|entries| entries.get("sd_model_checkpoint").and_then(serde_json::Value::as_str))
                    .map(str::to_owned)
                    .or_else(|| self.settings().model)
                    .unwrap_or_else(|| "default".to_owned());
                queue.submit(job.kind, &model, body).await
            }
            None => self.jobs.submit(self, job),
        }
    }

    /// Waits until job `id` finishes and returns its result (A1111's blocking endpoints).
    pub(crate) async fn wait_for(&self, id: u64) -> Result<ImageResponse> {
        match &self.cluster {
            Some(queue) => queue.wait(id).await,
            None => self.jobs.wait(id).await,
        }
    }

    /// The finished job's result, `None` while it has not finished.
    pub(crate) async fn job_outcome(&self, id: u64) -> Result<Option<Result<ImageResponse>>> {
        match &self.cluster {
            Some(queue) => queue.outcome(id).await,
            None => self.jobs.outcome(id),
        }
    }

    /// The job's state as `GET /sdrt/v1/jobs/{id}` shows it.
    pub(crate) async fn job_status(&self, id: u64) -> Result<JobStatus> {
        match &self.cluster {
            Some(queue) => queue.status(id).await,
            None => self.jobs.status(id),
        }
    }

    /// Cancels a queued job or interrupts a running one; returns the state afterwards.
    pub(crate) async fn cancel_job(&self, id: u64) -> Result<JobStatus> {
        match &self.cluster {
            Some(queue) => queue.cancel(id).await,
            None => self.jobs.cancel(id),
        }
    }

    /// The live workers of the Redis queue; none without one.
    pub(crate) async fn workers(&self) -> Result<Vec<WorkerStatus>> {
        let Some(queue) = &self.cluster else { return Ok(Vec::new()) };
        let now = crate::cluster::now_seconds();
        let mut workers: Vec<WorkerStatus> = queue
            .live_workers()
            .await?
            .into_iter()
            .map(|worker| WorkerStatus {
                name: worker.name,
                models: worker.models,
                seconds_since_heartbeat: (now - worker.heartbeat).max(0.0),
                running_job: worker.running.map(|id| id.to_string()),
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    /// A1111's `/progress`.
    pub(crate) async fn current_progress(&self, with_preview: bool) -> Result<ProgressResponse> {
        match &self.cluster {
            Some(queue) => queue.current_progress(with_preview).await,
            None if with_preview => Ok(self.progress.snapshot_with_preview()),
            None => Ok(self.progress.snapshot()),
        }
    }

    /// A1111's `/interrupt`: the running job stops after its current step and keeps what it made.
    pub(crate) async fn interrupt_current(&self) -> Result<()> {
        match &self.cluster {
            Some(queue) => queue.signal_current("interrupt").await,
            None => {
                if self.progress.mark_interrupted()
                    && let Some((control, progress)) = self.jobs.running_control()
                {
                    control.interrupt();
                    progress.mark_interrupted();
                }
                Ok(())
            }
        }
    }

    /// A1111's `/skip`: the running batch stops, the next one starts.
    pub(crate) async fn skip_current(&self) -> Result<()> {
        match &self.cluster {
            Some(queue) => queue.signal_current("skip").await,
            None => {
                if self.progress.mark_skipped()
                    && let Some((control, _)) = self.jobs.running_control()
                {
                    control.skip();
                }
                Ok(())
            }
        }
    }
}
