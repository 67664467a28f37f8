//! The A1111-compatible HTTP API (`/sdapi/v1`) of sdrt, with asynchronous jobs.
//!
//! [`router`] builds an axum `Router` over a [`ServerState`]; [`serve`] binds it to an address. Generation
//! requests are queued first in, first out (one job at a time, as A1111's queue lock) and run on a blocking
//! thread through `sdrt_runtime::ProcessingRunner`, so the async handlers (progress, interrupt, the name
//! tables) keep answering while a job runs.
//!
//! Endpoints: `POST txt2img`, `POST img2img`, `GET progress`, `POST interrupt`, `POST skip`, `GET samplers`,
//! `GET schedulers`, `GET sd-models`, `GET options`, `POST png-info`, and sdrt's own job API: `POST
//! /sdrt/v1/jobs` (202 + id), `GET /sdrt/v1/jobs/{id}` (state, progress), `GET …/result`, `DELETE
//! /sdrt/v1/jobs/{id}` (cancel or interrupt), `GET …/events` (server-sent events). The A1111 generation
//! endpoints submit to the same queue and wait. Errors come back as A1111's
//! `{"error", "detail", "body", "errors"}` with 422 for bad requests, 404 for unknown models and 500 for
//! failures inside a job.

mod cluster;
mod error;
mod extras;
mod generate;
mod images;
mod jobs;
mod openapi;
mod progress;
mod queue;
mod routes;
mod security;
mod state;

pub use cluster::{WorkerOptions, run_worker};
pub use error::{Error, Result};
pub use routes::{router, serve, serve_on};
pub use security::AccessPolicy;
pub use state::{DEFAULT_QUEUE_CAPACITY, ServerLimits, ServerState};
