//! The execution-queue seam: jobs run in submission order (FIFO) on one worker thread by default,
//! so that concurrent callers never run two generations on the same models at once.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

type Task = Box<dyn FnOnce() + Send>;

/// A FIFO queue drained by a fixed number of worker threads.
pub struct ExecutionQueue {
    sender: Option<mpsc::Sender<Task>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ExecutionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionQueue").field("workers", &self.workers.len()).finish()
    }
}

impl Default for ExecutionQueue {
    fn default() -> Self {
        Self::new(1)
    }
}

impl ExecutionQueue {
    /// A queue with `workers` threads (at least one).
    pub fn new(workers: usize) -> Self {
        let (sender, receiver) = mpsc::channel::<Task>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let workers = (0..workers.max(1))
            .map(|index| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("sdrt-exec-{index}"))
                    .spawn(move || {
                        loop {
                            // The lock is released before the task runs, so other workers can take the next one.
                            let task = match receiver.lock() {
                                Ok(guard) => guard.recv(),
                                Err(_) => return,
                            };
                            match task {
                                Ok(task) => task(),
                                Err(_) => return,
                            }
                        }
                    })
                    .expect("spawning an execution-queue worker thread")
            })
            .collect();
        Self { sender: Some(sender), workers }
    }

    /// Runs `task` on the queue and waits for its result.
    pub fn run<T: Send + 'static>(&self, task: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sender = self.sender.as_ref().ok_or(Error::QueueClosed)?;
        sender
            .send(Box::new(move || {
                // The caller may have stopped waiting; a lost reply is not an error for the worker.
                let _ = reply.send(task());
            }))
            .map_err(|_| Error::QueueClosed)?;
        answer.recv().map_err(|_| Error::QueueClosed)
    }
}

impl Drop for ExecutionQueue {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn one_worker_runs_jobs_in_submission_order() {
        let queue = Arc::new(ExecutionQueue::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (queue, order) = (queue.clone(), order.clone());
                // Submit in order from one thread at a time so the expected order is defined.
                let handle = std::thread::spawn(move || {
                    queue.run(move || order.lock().expect("lock").push(i)).expect("queue open")
                });
                handle.join().expect("submitter");
            })
            .collect();
        drop(handles);
        assert_eq!(*order.lock().expect("lock"), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn results_come_back_to_the_caller() {
        let queue = ExecutionQueue::new(2);
        assert_eq!(queue.run(|| 6 * 7).expect("queue open"), 42);
    }

    #[test]
    fn a_panicking_job_does_not_hang_the_caller() {
        let queue = ExecutionQueue::default();
        assert!(matches!(queue.run(|| -> u8 { panic!("boom") }), Err(Error::QueueClosed)));
    }
}
