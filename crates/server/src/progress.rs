//! What `GET /sdapi/v1/progress` reports: the running job's step, fed by the runner's progress events.

use std::sync::Mutex;
use std::time::Instant;

use sdrt_api_types::{ProgressResponse, ProgressState};
use sdrt_runtime::{ProgressEvent, ProgressSink};

/// The state of the job that is running, if any.
#[derive(Debug, Default)]
pub(crate) struct ProgressTracker {
    current: Mutex<Option<RunningJob>>,
}

#[derive(Debug, Clone)]
struct RunningJob {
    job_no: i64,
    job_count: i64,
    job_timestamp: String,
    step: i64,
    steps: i64,
    eta_seconds: f64,
    started: Instant,
    interrupted: bool,
    /// The current batch was skipped (A1111 clears it when the next batch starts).
    skipped: bool,
    /// The latest live preview (encoded only when `/progress` asks for it).
    preview: Option<std::sync::Arc<sdrt_processing::RgbImage>>,
}

impl ProgressTracker {
    /// A job with `batches` batches of `steps` steps starts.
    pub(crate) fn start(&self, batches: u32, steps: u32, job_timestamp: String) {
        *self.lock() = Some(RunningJob {
            job_no: 0,
            job_count: i64::from(batches),
            job_timestamp,
            step: 0,
            steps: i64::from(steps),
            eta_seconds: 0.0,
            started: Instant::now(),
            interrupted: false,
            skipped: false,
            preview: None,
        });
    }

    /// The job ended (finished, failed or interrupted).
    pub(crate) fn finish(&self) {
        *self.lock() = None;
    }

    /// Marks the running job as interrupted; false when nothing runs.
    pub(crate) fn mark_interrupted(&self) -> bool {
        match self.lock().as_mut() {
            Some(job) => {
                job.interrupted = true;
                true
            }
            None => false,
        }
    }

    /// Marks the running batch as skipped; false when nothing runs.
    pub(crate) fn mark_skipped(&self) -> bool {
        match self.lock().as_mut() {
            Some(job) => {
                job.skipped = true;
                true
            }
            None => false,
        }
    }

    /// [`ProgressTracker::snapshot`] with the live preview as a base64 PNG in `current_image` (A1111's
    /// `/progress` unless `skip_current_image`).
    pub(crate) fn snapshot_with_preview(&self) -> ProgressResponse {
        let preview = self.lock().as_ref().and_then(|job| job.preview.clone());
        let mut response = self.snapshot();
        response.current_image = preview.and_then(|image| {
            use base64::Engine;
            sdrt_io::encode_png_rgb8(&image.pixels, image.width, image.height, &[])
                .ok()
                .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
        });
        response
    }

    /// A1111's progress: batches done plus the fraction of the current one, over all batches.
    pub(crate) fn snapshot(&self) -> ProgressResponse {
        let Some(job) = self.lock().clone() else { return ProgressResponse::default() };
        let per_batch = if job.steps > 0 { job.step as f64 / job.steps as f64 } else { 0.0 };
        let progress = ((job.job_no as f64 + per_batch) / job.job_count.max(1) as f64).clamp(0.0, 1.0);
        let eta_relative = if progress > 0.0 {
            job.started.elapsed().as_secs_f64() / progress - job.started.elapsed().as_secs_f64()
        } else {
            job.eta_seconds
        };
        ProgressResponse {
            progress,
            eta_relative,
            state: ProgressState {
                interrupted: job.interrupted,
                skipped: job.skipped,
                job: format!("Batch {} out of {}", job.job_no + 1, job.job_count),
                job_count: job.job_count,
                job_timestamp: job.job_timestamp,
                job_no: job.job_no,
                sampling_step: job.step,
                sampling_steps: job.steps,
                ..ProgressState::default()
            },
            current_image: None,
            textinfo: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RunningJob>> {
        // A panic while holding this lock leaves plain numbers behind; keep serving them.
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ProgressSink for ProgressTracker {
    fn on_progress(&self, event: &ProgressEvent) {
        if let Some(job) = self.lock().as_mut() {
            if job.job_no != event.batch as i64 {
                job.skipped = false;
            }
            job.job_no = event.batch as i64;
            job.step = event.step as i64;
            job.steps = event.total as i64;
            job.eta_seconds = event.eta.as_secs_f64();
            if let Some(preview) = &event.preview {
                job.preview = Some(std::sync::Arc::clone(preview));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn idle_is_zero_and_steps_count_across_batches() {
        let tracker = ProgressTracker::default();
        assert_eq!(tracker.snapshot().progress, 0.0);
        tracker.start(2, 10, "20261124000000".into());
        let event = ProgressEvent { job: 0, batch: 1, step: 5, total: 10, eta: Duration::from_secs(1), preview: None };
        tracker.on_progress(&event);
        let snapshot = tracker.snapshot();
        assert!((snapshot.progress - 0.75).abs() < 1e-12, "{}", snapshot.progress);
        assert_eq!((snapshot.state.job_no, snapshot.state.sampling_step), (1, 5));
        assert!(tracker.mark_skipped() && tracker.snapshot().state.skipped);
        tracker.on_progress(&ProgressEvent { batch: 1, step: 6, ..event.clone() });
        assert!(tracker.snapshot().state.skipped, "the same batch stays skipped");
        tracker.on_progress(&ProgressEvent { batch: 0, step: 1, ..event });
        assert!(!tracker.snapshot().state.skipped, "another batch clears it, as A1111's next iteration does");
        assert!(tracker.mark_interrupted() && tracker.snapshot().state.interrupted);
        tracker.finish();
        assert!(!tracker.mark_interrupted(), "nothing runs after finish");
        assert!(!tracker.mark_skipped(), "nothing to skip after finish");
    }
}
