//! Per-stage timings of each job and their running totals across the runner's life.

use std::collections::BTreeMap;
use std::time::Duration;

/// Stage names that the runner and pipelines record.
pub const STAGE_NAMES: &[&str] = &["prepare", "text_encode", "sample", "decode", "save", "execute", "total"];

/// Timings of one job, by stage name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMetrics {
    /// Wall time per stage; stages that did not run are absent.
    pub stages: BTreeMap<&'static str, Duration>,
    /// Sampling steps performed.
    pub steps: usize,
}

impl JobMetrics {
    /// Adds `elapsed` to `stage` (a stage may run once per batch).
    pub fn record(&mut self, stage: &'static str, elapsed: Duration) {
        *self.stages.entry(stage).or_default() += elapsed;
    }

    /// Time spent in `stage`, zero if it did not run.
    pub fn get(&self, stage: &str) -> Duration {
        self.stages.get(stage).copied().unwrap_or_default()
    }

    /// Sampling steps per second, from the `sample` stage.
    pub fn iterations_per_second(&self) -> f64 {
        let seconds = self.get("sample").as_secs_f64();
        if seconds > 0.0 { self.steps as f64 / seconds } else { 0.0 }
    }
}

/// Totals over every job a runner has run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeMetrics {
    /// Jobs finished (successfully or not).
    pub jobs: u64,
    /// Sum of each stage's time over all jobs.
    pub totals: BTreeMap<&'static str, Duration>,
    /// The last job's timings.
    pub last: JobMetrics,
}

impl RuntimeMetrics {
    /// Folds one finished job into the totals.
    pub fn add_job(&mut self, job: &JobMetrics) {
        self.jobs += 1;
        for (stage, elapsed) in &job.stages {
            *self.totals.entry(stage).or_default() += *elapsed;
        }
        self.last = job.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_accumulate_per_stage_and_per_runner() {
        let mut job = JobMetrics::default();
        job.record("sample", Duration::from_millis(300));
        job.record("sample", Duration::from_millis(200));
        job.steps = 10;
        assert_eq!(job.get("sample"), Duration::from_millis(500));
        assert_eq!(job.get("decode"), Duration::ZERO);
        assert!((job.iterations_per_second() - 20.0).abs() < 1e-9);
        let mut runtime = RuntimeMetrics::default();
        runtime.add_job(&job);
        runtime.add_job(&job);
        assert_eq!(runtime.jobs, 2);
        assert_eq!(runtime.totals["sample"], Duration::from_secs(1));
    }
}
