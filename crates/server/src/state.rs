//! What every request handler shares: the model provider, the runner, the settings, the job queue and the
//! running job's progress (its controls live with the job in the queue).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sdrt_api_types::RequestLimits;
use sdrt_io::DecodeLimits;
use sdrt_runtime::{GenerationSettings, ModelProvider, ProcessingRunner};

use crate::progress::ProgressTracker;

/// Jobs that may wait in the queue by default (`sdrt serve --queue-capacity`).
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

/// What the server accepts from one request; the generation limits travel in the settings' `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Sizes, steps, images and prompt lengths of a generation request.
    pub request: RequestLimits,
    /// Images decoded from request bodies (init images, masks, png-info, extras).
    pub decode: DecodeLimits,
    /// The largest request body, in bytes: room for a batch of large base64 init images (a 1024² PNG is ~4 MB).
    pub max_body_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self { request: RequestLimits::default(), decode: DecodeLimits::default(), max_body_bytes: 64 << 20 }
    }
}

/// The server's shared state; build one, then hand it to [`crate::router`].
pub struct ServerState {
    pub(crate) provider: Arc<ModelProvider>,
    pub(crate) runner: Arc<ProcessingRunner>,
    /// Settings every job starts from (`POST options` changes them; a request's `override_settings` apply on
    /// top, for that job only).
    settings: Mutex<GenerationSettings>,
    /// Every generation job, first in, first out, one at a time (A1111's queue lock).
    pub(crate) jobs: crate::jobs::Jobs,
    /// The Redis queue shared with `sdrt worker`s, when the server runs with `--queue`: jobs go there instead.
    pub(crate) cluster: Option<crate::cluster::SharedQueue>,
    /// Who may call the API.
    pub(crate) access: crate::security::AccessPolicy,
    /// What one request may ask for.
    pub(crate) limits: ServerLimits,
    /// Held by whatever computes (a generation job, an extras upscale), so two never share the CPU and memory.
    pub(crate) compute: tokio::sync::Mutex<()>,
    pub(crate) progress: Arc<ProgressTracker>,
    /// SHA-256 of each registered model, computed on first listing (A1111 caches its hashes too).
    model_hashes: Mutex<BTreeMap<PathBuf, Option<String>>>,
}

impl ServerState {
    /// A server over `provider`'s models; `settings.model` names the model used when a request does not
    /// override `sd_model_checkpoint`, and `settings.outdir` decides whether `save_images` writes files.
    pub fn new(provider: Arc<ModelProvider>, settings: GenerationSettings) -> Self {
        let limits = ServerLimits { request: settings.limits, ..ServerLimits::default() };
        Self {
            limits,
            provider,
            runner: Arc::new(ProcessingRunner::new()),
            settings: Mutex::new(settings),
            jobs: crate::jobs::Jobs::new(DEFAULT_QUEUE_CAPACITY, None),
            cluster: None,
            compute: tokio::sync::Mutex::new(()),
            access: crate::security::AccessPolicy::default(),
            progress: Arc::new(ProgressTracker::default()),
            model_hashes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sends every job to the Redis queue at `url` (`redis://HOST:PORT[/DB]`), where `sdrt worker`s run them;
    /// this server then keeps no job of its own. Finished jobs' results stay in Redis for `result_ttl`.
    pub async fn with_redis_queue(mut self, url: &str, result_ttl: std::time::Duration) -> crate::Result<Self> {
        let capacity = self.jobs.capacity();
        self.cluster = Some(Arc::new(crate::cluster::RedisQueue::connect(url, capacity, result_ttl).await?));
        Ok(self)
    }

    /// At most `capacity` jobs wait in the queue (more get 429), and a job running longer than `timeout` is
    /// stopped.
    pub fn with_queue_limits(mut self, capacity: usize, timeout: Option<std::time::Duration>) -> Self {
        self.jobs = crate::jobs::Jobs::new(capacity, timeout);
        self
    }

    /// Requests are checked against `limits` (the generation limits also become the settings' `limits`, which
    /// the runner checks again).
    pub fn with_limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self.settings.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).limits = limits.request;
        self
    }

    /// Callers are checked against `policy` (credentials, allowed origins, loopback `Host` names).
    pub fn with_access(mut self, policy: crate::security::AccessPolicy) -> Self {
        self.access = policy;
        self
    }

    /// The registered model a client names: by name, by A1111 title (`name [hash]`) or by hash (10+ hex
    /// digits). A path is never accepted through the API: it would point the server at any folder.
    pub(crate) fn registered_model(&self, value: &str) -> Result<String, sdrt_runtime::Error> {
        let registered = self.provider.registered();
        let name = value.split(" [").next().unwrap_or(value).trim();
        for candidate in [name, name.strip_suffix(".safetensors").unwrap_or(name)] {
            if registered.contains_key(candidate) {
                return Ok(candidate.to_owned());
            }
        }
        let by_hash = value.len() >= sdrt_io::SHORT_HASH_LEN && value.chars().all(|c| c.is_ascii_hexdigit());
        if by_hash {
            for (model, path) in registered {
                if self.model_sha256(path).is_some_and(|sha| sha.starts_with(&value.to_ascii_lowercase())) {
                    return Ok(model.clone());
                }
            }
        }
        Err(sdrt_runtime::Error::UnknownModel {
            name: value.to_owned(),
            known: registered.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The full SHA-256 behind a model's `Model hash`, hashed once; `None` for what is not a model folder.
    pub(crate) fn model_sha256(&self, path: &Path) -> Option<String> {
        let cached = self.model_hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(path).cloned();
        cached.unwrap_or_else(|| {
            let hash = sdrt_io::model_sha256(path).ok();
            let mut hashes = self.model_hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            hashes.insert(path.to_owned(), hash.clone());
            hash
        })
    }

    /// The current settings.
    pub(crate) fn settings(&self) -> GenerationSettings {
        self.settings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the settings (jobs already running keep theirs).
    pub(crate) fn set_settings(&self, settings: GenerationSettings) {
        *self.settings.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    }
}
