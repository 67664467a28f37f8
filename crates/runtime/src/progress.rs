//! Progress events and the interrupt/skip controls a caller holds while a job runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One sampling step finished.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressEvent {
    /// Job number within the runner (0-based, in submission order).
    pub job: u64,
    /// Image batch (iteration) within the job, 0-based.
    pub batch: usize,
    /// Steps done so far in this batch.
    pub step: usize,
    /// Steps this batch will take.
    pub total: usize,
    /// Estimated time left for the batch, from the mean step time so far.
    pub eta: Duration,
    /// A live preview of the batch's first image (A1111's "Approx cheap", latent-sized), every
    /// `show_progress_every_n_steps` steps.
    pub preview: Option<Arc<sdrt_processing::RgbImage>>,
}

/// Where progress goes (a CLI bar, the HTTP progress endpoint, a test recorder).
pub trait ProgressSink: Send + Sync {
    /// Called after every step.
    fn on_progress(&self, event: &ProgressEvent);
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_progress(&self, _event: &ProgressEvent) {}
}

/// Shared flags to stop a running job: interrupt ends the job after the current step (decoding what it
/// has, as A1111 does), skip ends only the current batch.
#[derive(Debug, Clone, Default)]
pub struct JobControl {
    interrupted: Arc<AtomicBool>,
    skipped: Arc<AtomicBool>,
}

impl JobControl {
    /// Asks the job to stop after the current step.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    /// Asks the job to finish the current batch early and go on with the next.
    pub fn skip(&self) {
        self.skipped.store(true, Ordering::SeqCst);
    }

    /// Whether an interrupt was requested.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Whether the current batch should stop; reading it clears a skip so the next batch runs.
    pub fn take_stop_request(&self) -> bool {
        self.is_interrupted() || self.skipped.swap(false, Ordering::SeqCst)
    }
}

/// The estimated time left after `done` of `total` steps took `elapsed`.
pub fn eta(elapsed: Duration, done: usize, total: usize) -> Duration {
    if done == 0 {
        return Duration::ZERO;
    }
    elapsed.div_f64(done as f64).mul_f64(total.saturating_sub(done) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_scales_the_mean_step_time() {
        assert_eq!(eta(Duration::from_secs(4), 2, 10), Duration::from_secs(16));
        assert_eq!(eta(Duration::from_secs(4), 0, 10), Duration::ZERO);
        assert_eq!(eta(Duration::from_secs(4), 10, 10), Duration::ZERO);
    }

    #[test]
    fn skip_is_consumed_but_interrupt_stays() {
        let control = JobControl::default();
        control.skip();
        assert!(control.take_stop_request());
        assert!(!control.take_stop_request());
        control.interrupt();
        assert!(control.take_stop_request());
        assert!(control.take_stop_request());
    }
}
