//! `sdrt serve`: A1111's `/sdapi/v1` HTTP API over one model folder (or a folder of them); `sdrt worker`:
//! runs the jobs of a Redis queue that `sdrt serve --queue` fills.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Args;
use sdrt_runtime::GenerationSettings;

use crate::generate::{SessionArgs, bundled_model};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (A1111's API listens on 7860).
    #[arg(long, default_value = "127.0.0.1:7860")]
    pub listen: SocketAddr,
    /// Send every job to a Redis queue (`redis://HOST:PORT[/DB]`) that `sdrt worker`s run, instead of running
    /// them in this process. Several servers may share one queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// With `--queue`: seconds a finished job's result stays in Redis.
    #[arg(long, default_value_t = 3600)]
    pub result_ttl: u64,
    /// Jobs that may wait in the queue; more are answered 429 with `Retry-After`.
    #[arg(long, default_value_t = sdrt_server::DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,
    /// Stop a job that runs longer than this many seconds (its state becomes `timed_out`); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub job_timeout: u64,
    /// HTTP Basic credentials every request must carry: `user:password[,user2:password2]` (A1111's flag).
    #[arg(long, env = "SDRT_API_AUTH")]
    pub api_auth: Option<String>,
    /// Origins whose browsers may call the API (`https://app.example,https://other.example`, or `*`); none by
    /// default. Cross-site POSTs from other origins are refused.
    #[arg(long, value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,
    /// Models, data folders, libraries and sessions.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `sdrt worker`: runs jobs from a Redis queue that `sdrt serve --queue` fills.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The queue: `redis://HOST:PORT[/DB]`.
    #[arg(long)]
    pub queue: String,
    /// This worker's name in the queue (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a job may stay pending without its worker's heartbeat before another worker takes it over.
    #[arg(long, default_value_t = 60.0)]
    pub reclaim_after: f64,
    /// A job started this many times without finishing (its workers died) ends as failed.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds a finished job's result stays in Redis.
    #[arg(long, default_value_t = 3600)]
    pub result_ttl: u64,
    /// Stop a job that runs longer than this many seconds (its state becomes `timed_out`); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub job_timeout: u64,
    /// Models, data folders, libraries and sessions.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What a node that runs jobs loads: shared by `sdrt serve` and `sdrt worker`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Model folder used when a request does not set `override_settings.sd_model_checkpoint`; default:
    /// the bundled tiny random-weight pipeline.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// An AUTOMATIC1111 data folder as it is (A1111's flag): its `models/Stable-diffusion`, `models/Lora`,
    /// `models/LyCORIS`, `models/VAE`, `styles.csv` and `config.json` settings (checkpoint, clip skip, ENSD, RNG,
    /// emphasis, VAE). Other flags override what it gives.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A folder laid out like A1111's `models/Stable-diffusion` (subfolders included): ONNX model folders and
    /// `.safetensors` checkpoints, offered by their names (`GET /sdapi/v1/sd-models`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Where `save_images: true` requests write their PNGs.
    #[arg(long, default_value = "outputs")]
    pub outdir: PathBuf,
    /// Folder of upscaler models (`<name>.onnx`, ESRGAN family) that `hr_upscaler` may name.
    #[arg(long)]
    pub upscaler_dir: Option<PathBuf>,
    /// Styles, LoRAs, embeddings and VAEs requests may name (over what `--data-dir` gives).
    #[command(flatten)]
    pub libraries: crate::generate::LibraryArgs,
    /// What one request may ask for.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Execution provider, threads and ONNX Runtime session tuning.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `--max-*`: bounds on one request.
#[derive(Args, Debug)]
#[command(next_help_heading = "Request limits")]
pub struct LimitArgs {
    /// Largest image side in pixels (width, height, hires target, extras upscale).
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_side)]
    pub max_side: u32,
    /// Most pixels in one image (hires target included).
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_pixels)]
    pub max_pixels: u64,
    /// Most pixels in one batch (width × height × batch_size).
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_batch_pixels)]
    pub max_batch_pixels: u64,
    /// Most sampling steps per pass.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_steps)]
    pub max_steps: u32,
    /// Most images per batch.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_batch_size)]
    pub max_batch_size: u32,
    /// Most images in one request (batch_size × n_iter).
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_images)]
    pub max_images: u64,
    /// Longest prompt, in characters.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_prompt_chars)]
    pub max_prompt_chars: usize,
    /// Deepest nesting of (, [ and { in a prompt.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().request.max_prompt_nesting)]
    pub max_prompt_nesting: usize,
    /// Largest side of an image decoded from a request (checked before decoding).
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().decode.max_side)]
    pub max_decoded_side: u32,
    /// Most memory one image decode may allocate, in MiB.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().decode.max_bytes >> 20)]
    pub max_decoded_mb: u64,
    /// Longest PNG text chunk read (png-info), in bytes after decompression.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().decode.max_text_bytes)]
    pub max_text_chunk_bytes: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = sdrt_server::ServerLimits::default().max_body_bytes >> 20)]
    pub max_body_mb: usize,
}

impl LimitArgs {
    /// The server's limits from the flags.
    pub fn limits(&self) -> sdrt_server::ServerLimits {
        sdrt_server::ServerLimits {
            request: sdrt_api_types::RequestLimits {
                max_side: self.max_side,
                max_pixels: self.max_pixels,
                max_batch_pixels: self.max_batch_pixels,
                max_steps: self.max_steps,
                max_batch_size: self.max_batch_size,
                max_images: self.max_images,
                max_prompt_chars: self.max_prompt_chars,
                max_prompt_nesting: self.max_prompt_nesting,
            },
            decode: sdrt_io::DecodeLimits {
                max_side: self.max_decoded_side,
                max_bytes: self.max_decoded_mb.saturating_mul(1 << 20),
                max_text_bytes: self.max_text_chunk_bytes,
            },
            max_body_bytes: self.max_body_mb.saturating_mul(1 << 20),
        }
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let (state, model) = args.node.server_state()?;
    let timeout = (args.job_timeout > 0).then(|| std::time::Duration::from_secs(args.job_timeout));
    let access = sdrt_server::AccessPolicy {
        credentials: match &args.api_auth {
            Some(value) => sdrt_server::AccessPolicy::parse_credentials(value).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        },
        cors_allow_origins: args.cors_allow_origins.clone(),
        loopback_only: args.listen.ip().is_loopback(),
    };
    let state = state.with_queue_limits(args.queue_capacity, timeout).with_access(access);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let state = match &args.queue {
            Some(url) => {
                let ttl = std::time::Duration::from_secs(args.result_ttl.max(1));
                let state = state.with_redis_queue(url, ttl).await.with_context(|| format!("--queue {url}"))?;
                eprintln!("jobs go to the Redis queue at {url}; run `sdrt worker --queue {url}` to process them");
                state
            }
            None => state,
        };
        // Bind first: a port in use is reported before anything claims to be serving.
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("sdrt serving http://{}/sdapi/v1 (default model {})", listener.local_addr()?, model.display());
        sdrt_server::serve_on(Arc::new(state), listener).await.with_context(|| format!("serving on {}", args.listen))
    })
}

/// `sdrt worker`: runs queued jobs until SIGTERM or Ctrl-C, then finishes the job in progress and exits.
pub fn worker(args: &WorkerArgs, shutdown: Arc<AtomicBool>) -> Result<()> {
    let (state, _model) = args.node.server_state()?;
    let mut options = sdrt_server::WorkerOptions::new(args.queue.clone());
    if let Some(name) = &args.name {
        options.name = name.clone();
    }
    options.reclaim_after = std::time::Duration::from_secs_f64(args.reclaim_after.max(0.1));
    options.max_attempts = args.max_attempts.max(1);
    options.result_ttl = std::time::Duration::from_secs(args.result_ttl.max(1));
    options.job_timeout = (args.job_timeout > 0).then(|| std::time::Duration::from_secs(args.job_timeout));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime
        .block_on(sdrt_server::run_worker(Arc::new(state), options, shutdown))
        .with_context(|| format!("worker on {}", args.queue))
}

impl NodeArgs {
    /// Loads ONNX Runtime, registers the models and libraries the flags name, and builds the state jobs run
    /// on; returns it with the default model's path.
    pub fn server_state(&self) -> Result<(sdrt_server::ServerState, PathBuf)> {
        self.session.load_runtime()?;
        let mut provider = self.session.model_provider()?;
        let mut settings = GenerationSettings {
            outdir: Some(self.outdir.clone()),
            upscaler_dir: self.upscaler_dir.clone(),
            ..GenerationSettings::default()
        };
        if let Some(dir) = &self.data_dir {
            crate::generate::apply_data_dir(dir, &mut settings, &mut provider)?;
        }
        if let Some(dir) = &self.models_dir {
            let names =
                provider.register_folder_of_models(dir).with_context(|| format!("--models-dir {}", dir.display()))?;
            eprintln!("models: {}", names.join(", "));
        }
        // --model wins; else the checkpoint --data-dir's config.json selects; else the bundled tiny pipeline.
        let model = match (&self.model, &settings.model) {
            (None, Some(name)) => provider.registered().get(name).cloned().unwrap_or_else(bundled_model),
            (model, _) => model.clone().unwrap_or_else(bundled_model),
        };
        if self.model.is_some() || settings.model.is_none() {
            // Offered by its folder name (a checkpoint by its file stem, A1111's model name), like the
            // --models-dir ones.
            let file_name = if model.is_file() { model.file_stem() } else { model.file_name() };
            let name = file_name.map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned());
            provider.register(name.clone(), &model);
            settings.model = Some(name);
        }
        let models_dir = self.models_dir.as_deref().or_else(|| model.parent().filter(|_| model.is_file()));
        self.libraries.apply(&mut settings, models_dir)?;
        let state = sdrt_server::ServerState::new(Arc::new(provider), settings).with_limits(self.limits.limits());
        Ok((state, model))
    }
}
