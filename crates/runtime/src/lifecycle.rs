//! `ProcessingRunner`: the one execution boundary every generation goes through.
//!
//! prepare (caller's thread) → execute (on the execution queue) → finalize (caller's thread), with observer
//! hooks before and after each stage and execute/total times recorded into the runner's metrics, as
//! A1111's ProcessingRunner does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::metrics::{JobMetrics, RuntimeMetrics};
use crate::progress::{JobControl, NoProgress, ProgressSink};
use crate::queue::ExecutionQueue;

/// A lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Validate the request, resolve seeds and models, parse prompts.
    Prepare,
    /// Encode, sample, decode: the model work, serialised on the execution queue.
    Execute,
    /// Build infotexts, save files, assemble the result.
    Finalize,
}

impl Stage {
    /// The stage's name, also its key in [`JobMetrics`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Execute => "execute",
            Self::Finalize => "finalize",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where in the lifecycle a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Just before the stage starts.
    Before(Stage),
    /// Just after the stage succeeded (A1111's on_prepare / on_execute / on_finalize).
    After(Stage),
}

/// Identity of a running job, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Runner-wide job number, in submission order.
    pub id: u64,
    /// `txt2img`, `img2img`, …
    pub kind: &'static str,
}

/// Observes the lifecycle (logging, extensions, tests). Hooks must not fail the job.
pub trait RunnerHook: Send + Sync {
    /// Called at each hook point of each job.
    fn on_stage(&self, point: HookPoint, job: &JobInfo);
}

/// What a job's stages share: identity, timings, progress and stop controls.
pub struct JobContext {
    /// The job's identity.
    pub info: JobInfo,
    /// Timings recorded by the stages (text_encode, sample, decode, save, …).
    pub metrics: JobMetrics,
    /// Where step progress goes.
    pub progress: Arc<dyn ProgressSink>,
    /// Interrupt / skip flags.
    pub control: JobControl,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").field("info", &self.info).field("metrics", &self.metrics).finish()
    }
}

/// The three stages of one kind of job (txt2img, img2img, …).
pub trait ProcessingJob: Send + 'static {
    /// What prepare hands to execute.
    type Prepared: Send + 'static;
    /// What execute hands to finalize.
    type Executed: Send + 'static;
    /// The job's result.
    type Output;
    /// Short name used in logs, metrics and hooks.
    fn kind(&self) -> &'static str;
    /// Validate and resolve everything the model work needs.
    fn prepare(self, context: &mut JobContext) -> Result<Self::Prepared>;
    /// The model work. Runs on the execution queue.
    fn execute(prepared: Self::Prepared, context: &mut JobContext) -> Result<Self::Executed>;
    /// Turn the model output into the result (infotext, files).
    fn finalize(executed: Self::Executed, context: &mut JobContext) -> Result<Self::Output>;
}

/// Runs jobs through prepare → execute → finalize.
#[derive(Default)]
pub struct ProcessingRunner {
    queue: ExecutionQueue,
    hooks: Vec<Arc<dyn RunnerHook>>,
    metrics: Mutex<RuntimeMetrics>,
    next_job: AtomicU64,
}

impl std::fmt::Debug for ProcessingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessingRunner").field("hooks", &self.hooks.len()).field("queue", &self.queue).finish()
    }
}

impl ProcessingRunner {
    /// A runner with a one-worker queue and no hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an observer called at every hook point.
    pub fn with_hook(mut self, hook: Arc<dyn RunnerHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Totals over all jobs so far.
    pub fn metrics(&self) -> RuntimeMetrics {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Runs `job` without progress reporting.
    pub fn run<J: ProcessingJob>(&self, job: J) -> Result<(J::Output, JobMetrics)> {
        self.run_with(job, Arc::new(NoProgress), JobControl::default())
    }

    /// Runs `job`, reporting steps to `progress` and obeying `control`.
    pub fn run_with<J: ProcessingJob>(
        &self,
        job: J,
        progress: Arc<dyn ProgressSink>,
        control: JobControl,
    ) -> Result<(J::Output, JobMetrics)> {
        let started = Instant::now();
        let info = JobInfo { id: self.next_job.fetch_add(1, Ordering::SeqCst), kind: job.kind() };
        let _span = tracing::info_span!("runtime::job", id = info.id, kind = info.kind).entered();
        let mut context = JobContext { info, metrics: JobMetrics::default(), progress, control };

        let outcome = self.run_stages(job, &mut context);
        context.metrics.record("total", started.elapsed());
        if let Ok(mut metrics) = self.metrics.lock() {
            metrics.add_job(&context.metrics);
        }
        outcome.map(|output| (output, context.metrics))
    }

    fn run_stages<J: ProcessingJob>(&self, job: J, context: &mut JobContext) -> Result<J::Output> {
        let prepared = self.stage(Stage::Prepare, context, |context| job.prepare(context))?;
        let executed = self.stage(Stage::Execute, context, |context| {
            // The context travels to the queue's worker and back, so the stage can record into it.
            let mut moved = JobContext {
                info: context.info.clone(),
                metrics: std::mem::take(&mut context.metrics),
                progress: context.progress.clone(),
                control: context.control.clone(),
            };
            let (result, metrics) = self.queue.run(move || {
                let result = J::execute(prepared, &mut moved);
                (result, moved.metrics)
            })?;
            context.metrics = metrics;
            result
        })?;
        self.stage(Stage::Finalize, context, |context| J::finalize(executed, context))
    }

    fn stage<T>(
        &self,
        stage: Stage,
        context: &mut JobContext,
        body: impl FnOnce(&mut JobContext) -> Result<T>,
    ) -> Result<T> {
        let _span = tracing::info_span!("runtime::stage", %stage).entered();
        self.notify(HookPoint::Before(stage), &context.info);
        let started = Instant::now();
        let result = body(context);
        context.metrics.record(stage.name(), started.elapsed());
        let value = result.map_err(|source| Error::Stage { stage, source: Box::new(source) })?;
        self.notify(HookPoint::After(stage), &context.info);
        Ok(value)
    }

    fn notify(&self, point: HookPoint, job: &JobInfo) {
        for hook in &self.hooks {
            hook.on_stage(point, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl RunnerHook for Recorder {
        fn on_stage(&self, point: HookPoint, job: &JobInfo) {
            self.0.lock().expect("lock").push(format!("{}:{point:?}", job.kind));
        }
    }

    struct Doubling {
        value: u32,
        fail_in: Option<Stage>,
    }

    impl ProcessingJob for Doubling {
        type Prepared = (u32, Option<Stage>);
        type Executed = (u32, Option<Stage>);
        type Output = u32;
        fn kind(&self) -> &'static str {
            "double"
        }
        fn prepare(self, _: &mut JobContext) -> Result<Self::Prepared> {
            if self.fail_in == Some(Stage::Prepare) {
                Err(Error::Unsupported { field: "value", feature: "bad requests" })
            } else {
                Ok((self.value, self.fail_in))
            }
        }
        fn execute((value, fail_in): Self::Prepared, context: &mut JobContext) -> Result<Self::Executed> {
            context.metrics.record("sample", std::time::Duration::from_millis(1));
            if fail_in == Some(Stage::Execute) { Err(Error::QueueClosed) } else { Ok((value * 2, fail_in)) }
        }
        fn finalize((value, _): Self::Executed, _: &mut JobContext) -> Result<u32> {
            Ok(value + 1)
        }
    }

    #[test]
    fn stages_and_hooks_run_in_order_and_metrics_are_kept() {
        let recorder = Arc::new(Recorder::default());
        let runner = ProcessingRunner::new().with_hook(recorder.clone());
        let (output, metrics) = runner.run(Doubling { value: 20, fail_in: None }).expect("job runs");
        assert_eq!(output, 41);
        let expected: Vec<String> = [
            HookPoint::Before(Stage::Prepare),
            HookPoint::After(Stage::Prepare),
            HookPoint::Before(Stage::Execute),
            HookPoint::After(Stage::Execute),
            HookPoint::Before(Stage::Finalize),
            HookPoint::After(Stage::Finalize),
        ]
        .iter()
        .map(|p| format!("double:{p:?}"))
        .collect();
        assert_eq!(*recorder.0.lock().expect("lock"), expected);
        for stage in ["prepare", "execute", "finalize", "sample", "total"] {
            assert!(metrics.stages.contains_key(stage), "{stage} missing from {metrics:?}");
        }
        assert_eq!(runner.metrics().jobs, 1);
    }

    #[test]
    fn a_failing_stage_stops_the_job_and_names_the_stage() {
        let recorder = Arc::new(Recorder::default());
        let runner = ProcessingRunner::new().with_hook(recorder.clone());
        let error = runner.run(Doubling { value: 1, fail_in: Some(Stage::Execute) }).expect_err("must fail");
        assert_eq!(error.to_string(), "execute failed: the execution queue is closed; start a new runner");
        assert!(matches!(error.root(), Error::QueueClosed), "the stage keeps its typed source: {error:?}");
        let seen = recorder.0.lock().expect("lock").clone();
        assert_eq!(seen.last().map(String::as_str), Some("double:Before(Execute)"));
        assert_eq!(runner.metrics().jobs, 1, "failed jobs are counted");
    }

    #[test]
    fn job_ids_follow_submission_order() {
        struct Id;
        impl RunnerHook for Id {
            fn on_stage(&self, _: HookPoint, _: &JobInfo) {}
        }
        let runner = ProcessingRunner::new().with_hook(Arc::new(Id));
        runner.run(Doubling { value: 1, fail_in: None }).expect("first");
        runner.run(Doubling { value: 1, fail_in: None }).expect("second");
        assert_eq!(runner.metrics().jobs, 2);
    }
}
