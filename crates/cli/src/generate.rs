//! `sdrt txt2img` / `sdrt img2img`: A1111-named flags → an API request → the runner, with a progress bar.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sdrt_api_types::{GenerationRequest, Img2ImgRequest, Txt2ImgRequest};
use sdrt_models::{
    AttentionKind, ExecutionProvider, GraphOptions, GroupNormKind, OpenVinoDevice, OptimizationLevel, PrecisionChoice,
    SessionConfig, Winograd,
};
use sdrt_processing::RgbImage;
use sdrt_runtime::{
    GenerationJob, GenerationOutput, GenerationSettings, JobControl, JobMetrics, ModelProvider, ProcessingRequest,
    ProcessingRunner, ProgressEvent, ProgressSink, parse_randn_source,
};

/// Flags shared by txt2img, img2img and bench, named and defaulted as A1111's UI.
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// What to draw (A1111 prompt syntax: (x:1.2), [x], [a:b:0.5], AND, BREAK).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// What to avoid.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// A saved style to apply (repeat for several; applied in order, as A1111 does).
    #[arg(long = "style")]
    pub styles: Vec<String>,
    /// Styles, LoRAs, embeddings and the VAE.
    #[command(flatten)]
    pub libraries: LibraryArgs,
    /// Sampling steps.
    #[arg(long, default_value_t = 20)]
    pub steps: u32,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.0)]
    pub cfg_scale: f64,
    /// Sampler (A1111 names: "DPM++ 2M", "Euler a", "Euler", "Heun", "DDIM", "UniPC", …).
    #[arg(long, default_value = "DPM++ 2M")]
    pub sampler: String,
    /// Schedule type ("Automatic", "Karras", "Exponential", "Uniform", …).
    #[arg(long, default_value = "Automatic")]
    pub scheduler: String,
    /// Seed; -1 picks a random one.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub seed: i64,
    /// Variation seed; -1 picks a random one.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub subseed: i64,
    /// Variation strength (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub subseed_strength: f64,
    /// "Resize seed from width" (-1 = off).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub seed_resize_from_w: i64,
    /// "Resize seed from height" (-1 = off).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub seed_resize_from_h: i64,
    /// Width in pixels (multiple of 8) [default: the model's size from its .yaml, else 512].
    #[arg(long)]
    pub width: Option<u32>,
    /// Height in pixels (multiple of 8) [default: the model's size from its .yaml, else 512].
    #[arg(long)]
    pub height: Option<u32>,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: u32,
    /// Batches.
    #[arg(long, default_value_t = 1)]
    pub n_iter: u32,
    /// Clip skip (1 = last layer; SD 1.x models) [default: 1, or --data-dir's config.json].
    #[arg(long)]
    pub clip_skip: Option<u32>,
    /// Random number source: gpu (A1111's default, computed with the NV algorithm), cpu or nv [default: gpu,
    /// or --data-dir's config.json].
    #[arg(long)]
    pub rng: Option<String>,
    /// Eta noise seed delta (ENSD) for ancestral samplers [default: 0, or --data-dir's config.json].
    #[arg(long)]
    pub ensd: Option<u64>,
    /// Emphasis mode: "Original", "No norm" or "None" [default: Original, or --data-dir's config.json].
    #[arg(long)]
    pub emphasis: Option<String>,
    /// Pad prompts of different chunk counts with empty chunks so cond and uncond share one UNet call
    /// (A1111's `pad_cond_uncond`; changes results slightly).
    #[arg(long)]
    pub pad_cond_uncond: bool,
    /// Model: an A1111 `.safetensors` checkpoint or an optimum/diffusers ONNX folder; default: --data-dir's
    /// selected checkpoint, else the bundled demo model (models/demo: coloured shapes at 64×64).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// An AUTOMATIC1111 data folder as it is (A1111's flag): its models, LoRAs, VAEs, embeddings, styles and
    /// `config.json` settings; the flags given here win over what it sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Execution provider, threads and ONNX Runtime session tuning.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Output folder.
    #[arg(long, default_value = "outputs")]
    pub outdir: PathBuf,
    /// Also save each image's final latents (before ÷ VAE scaling factor) as a float32 .npy beside it.
    #[arg(long)]
    pub save_latents: bool,
    /// Print a JSON result instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where and how the ONNX Runtime sessions run; the tuning options are mostly for measuring what each one is
/// worth (the defaults are the fastest measured; see tools/bench/README.md).
#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    /// Execution provider: cpu, openvino[:cpu|gpu|gpu.N|npu] (`cargo xtask provision-ort --openvino`),
    /// cuda[:DEVICE] or tensorrt[:DEVICE] (`cargo xtask provision-ort --gpu`; `sdrt doctor` says what NVIDIA
    /// libraries are missing), or coreml (needs the `coreml` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// What the provider computes in: fp32, bf16, fp16 or auto (OpenVINO's CPU: bf16 where the CPU has
    /// AVX512_BF16 or AMX, fp32 elsewhere; its GPU and NPU: fp16; CUDA and TensorRT: a checkpoint's UNet in fp16,
    /// the rest fp32). The CPU provider computes fp32.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// ONNX Runtime intra-op threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Graph optimisation level: disabled, basic, extended or all.
    #[arg(long, default_value = "all")]
    pub graph_optimization: String,
    /// Idle intra-op threads sleep instead of spinning.
    #[arg(long)]
    pub no_spinning: bool,
    /// Do not pre-pack constant weights at load.
    #[arg(long)]
    pub no_prepacking: bool,
    /// CPU memory arena: on or off for every session [default: off for VAEs and graphs built from checkpoints,
    /// on for exported UNets and text encoders, as measured].
    #[arg(long)]
    pub memory_arena: Option<OnOff>,
    /// Hand the UNet's arena back after each pass's last call: on or off [default: on for graphs built from
    /// checkpoints, off for exports, as measured].
    #[arg(long)]
    pub release_unet_memory: Option<OnOff>,
    /// Disable memory-pattern planning.
    #[arg(long)]
    pub no_memory_pattern: bool,
    /// Copy inputs and let ONNX Runtime allocate outputs on every run.
    #[arg(long)]
    pub no_bound_io: bool,
    /// Load the pipeline's components one after another.
    #[arg(long)]
    pub sequential_load: bool,
    /// Text-encoder and UNet sessions kept for LoRA sets used before (switching back costs no rebuild; each
    /// kept UNet holds its own weights: ~3.4 GB for SD 1.5 in fp32). 0 = rebuild on every switch.
    #[arg(long, default_value_t = 1)]
    pub lora_cache: usize,
    /// Where OpenVINO keeps the models it compiled, so the second load of a model skips compiling it
    /// [default: openvino/ in sdrt's cache folder]; `off` compiles on every load.
    #[arg(long)]
    pub openvino_cache: Option<PathBuf>,
    /// OpenVINO compiles each graph for the shapes it runs with (a new session, compiled or taken from the
    /// cache, whenever the size changes) instead of once for any shape: faster steps for a fixed size.
    #[arg(long)]
    pub openvino_static_shapes: bool,
    /// Write ONNX Runtime's per-operator profile of every session as `PREFIX-COMPONENT_TIME.json`
    /// (`tools/bench/ort_profile.py` sums it by operator).
    #[arg(long, value_name = "PREFIX")]
    pub ort_profile: Option<PathBuf>,
    /// How graphs built from checkpoints are written.
    #[command(flatten)]
    pub graph: GraphArgs,
    /// What a `.safetensors` checkpoint predicts when its `.yaml` does not say (A1111's rule): `eps` or `v`.
    #[arg(long, value_enum)]
    pub prediction: Option<PredictionArg>,
}

/// Flags for the ONNX graphs sdrt builds from checkpoints (loading, benchmarking, `sdrt convert`).
#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Graphs built from checkpoints: attention as `multihead` (ONNX Runtime's fused MultiHeadAttention) or
    /// `plain` (MatMul/Softmax).
    #[arg(long, default_value = "multihead")]
    pub graph_attention: String,
    /// Graphs built from checkpoints: group norm as `instancenorm` (exact), `layernorm` (reshape +
    /// LayerNormalization) or `native` (GroupNormalization-21); see `GroupNormKind` for the accuracy cost.
    #[arg(long, default_value = "instancenorm")]
    pub graph_group_norm: String,
    /// Graphs built from checkpoints: keep q, k and v as three matrix multiplies.
    #[arg(long)]
    pub no_fused_qkv: bool,
    /// Graphs built from checkpoints: linear layers as MatMul on a (load-time folded) transposed weight
    /// instead of FusedMatMul with transB.
    #[arg(long)]
    pub no_transposed_matmul: bool,
    /// Graphs built from checkpoints: upsamplers convolve the ×2 nearest-upsampled picture instead of running
    /// folded kernels at the input's size.
    #[arg(long)]
    pub no_subpixel_upsample: bool,
    /// Graphs built from checkpoints: every 3×3 convolution direct (no Winograd; the CPU provider only uses it).
    #[arg(long)]
    pub no_winograd: bool,
    /// Graphs built from checkpoints: the narrowest 3×3 convolution (input or output channels) computed by
    /// Winograd's method.
    #[arg(long, default_value_t = GraphOptions::default().winograd.map_or(0, |w| w.min_channels))]
    pub winograd_min_channels: usize,
    /// Graphs built from checkpoints: 3×3 convolutions with more output channels than this stay direct.
    #[arg(long, default_value_t = GraphOptions::default().winograd.map_or(0, |w| w.max_channels))]
    pub winograd_max_channels: usize,
    /// Graphs built from checkpoints: Winograd convolutions with this many output channels or more use 2×2
    /// output tiles, narrower ones 4×4.
    #[arg(long, default_value_t = GraphOptions::default().winograd.map_or(0, |w| w.small_tiles_from))]
    pub winograd_small_tiles_from: usize,
    /// Graphs built from checkpoints: transform the Winograd kernels at load and keep them (more memory)
    /// instead of on every run.
    #[arg(long)]
    pub winograd_kernels_at_load: bool,
    /// Graphs built from checkpoints: the VAE's 3×3 convolutions all direct.
    #[arg(long)]
    pub no_vae_winograd: bool,
    /// Graphs built from checkpoints: the narrowest VAE 3×3 convolution (input or output channels) computed by
    /// Winograd's method.
    #[arg(long, default_value_t = GraphOptions::default().vae_winograd.map_or(0, |w| w.min_channels))]
    pub vae_winograd_min_channels: usize,
}

impl GraphArgs {
    /// The graph options these flags ask for.
    pub fn options(&self) -> Result<GraphOptions> {
        let attention = match self.graph_attention.to_ascii_lowercase().as_str() {
            "multihead" => AttentionKind::MultiHead,
            "plain" => AttentionKind::Plain,
            other => bail!("--graph-attention {other:?} is not an attention kind; use multihead or plain"),
        };
        let group_norm = match self.graph_group_norm.to_ascii_lowercase().as_str() {
            "layernorm" => GroupNormKind::LayerNorm,
            "instancenorm" => GroupNormKind::InstanceNorm,
            "native" => GroupNormKind::Native,
            other => {
                bail!("--graph-group-norm {other:?} is not a group norm kind; use instancenorm, layernorm or native")
            }
        };
        Ok(GraphOptions {
            attention,
            fused_qkv: !self.no_fused_qkv,
            group_norm,
            transposed_matmul: !self.no_transposed_matmul,
            half_unet: false,
            subpixel_upsample: !self.no_subpixel_upsample,
            winograd: (!self.no_winograd).then_some(Winograd {
                min_channels: self.winograd_min_channels,
                max_channels: self.winograd_max_channels,
                small_tiles_from: self.winograd_small_tiles_from,
                kernels_at_load: self.winograd_kernels_at_load,
            }),
            vae_winograd: GraphOptions::default()
                .vae_winograd
                .filter(|_| !self.no_vae_winograd)
                .map(|rule| Winograd { min_channels: self.vae_winograd_min_channels, ..rule }),
        })
    }
}

/// An on/off switch (`--memory-arena on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// 32-bit float.
    Fp32,
    /// bfloat16 (OpenVINO on AVX512_BF16 or AMX CPUs).
    Bf16,
    /// 16-bit float (OpenVINO on Intel GPUs and NPUs; a checkpoint's UNet on CUDA and TensorRT).
    Fp16,
    /// OpenVINO's CPU: bf16 where the CPU computes it natively, fp32 elsewhere; its GPU and NPU: fp16; CUDA and
    /// TensorRT: fp16 for a checkpoint's UNet.
    Auto,
}

impl From<PrecisionArg> for PrecisionChoice {
    fn from(value: PrecisionArg) -> Self {
        match value {
            PrecisionArg::Fp32 => Self::Fp32,
            PrecisionArg::Bf16 => Self::Bf16,
            PrecisionArg::Fp16 => Self::Fp16,
            PrecisionArg::Auto => Self::Auto,
        }
    }
}

/// `--prediction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictionArg {
    /// The added noise (epsilon).
    Eps,
    /// The velocity (v-prediction, SD 2.x 768-v).
    V,
}

impl From<PredictionArg> for sdrt_models::PredictionType {
    fn from(value: PredictionArg) -> Self {
        match value {
            PredictionArg::Eps => Self::Epsilon,
            PredictionArg::V => Self::VPrediction,
        }
    }
}

impl SessionArgs {
    /// The session configuration these flags ask for.
    pub fn session_config(&self) -> Result<SessionConfig> {
        let provider = self.execution_provider()?;
        Ok(SessionConfig {
            provider,
            intra_op_threads: self.threads,
            optimization: self.optimization()?,
            intra_op_spinning: !self.no_spinning,
            prepacking: !self.no_prepacking,
            memory_arena: self.memory_arena.map(|choice| choice == OnOff::On),
            release_unet_memory: self.release_unet_memory.map(|choice| choice == OnOff::On),
            memory_pattern: !self.no_memory_pattern,
            bound_io: !self.no_bound_io,
            parallel_load: !self.sequential_load,
            profiling: self.ort_profile.clone(),
            graph: GraphOptions { half_unet: self.half_unet(provider), ..self.graph.options()? },
            network_cache: self.lora_cache,
            openvino_cache: self.openvino_cache(),
            tensorrt_cache: sdrt_io::cache_dir().map(|dir| dir.join("tensorrt")),
            resident_inputs: None,
            openvino_static_shapes: self.openvino_static_shapes,
        })
    }

    /// `--openvino-cache`: a folder, `off`, or sdrt's cache folder.
    fn openvino_cache(&self) -> Option<PathBuf> {
        match &self.openvino_cache {
            Some(dir) if dir.as_os_str() == "off" => None,
            Some(dir) => Some(dir.clone()),
            None => sdrt_io::cache_dir().map(|dir| dir.join("openvino")),
        }
    }

    /// `--provider` and `--precision` as one execution provider.
    pub fn execution_provider(&self) -> Result<ExecutionProvider> {
        let lowered = self.provider.to_ascii_lowercase();
        let (name, device) = match lowered.split_once(':') {
            Some((name, device)) => (name, Some(device)),
            None => (lowered.as_str(), None),
        };
        let device_id = || -> Result<i32> {
            device.map_or(Ok(0), |d| {
                d.parse().with_context(|| format!("--provider {lowered:?}: the device after `:` must be a number"))
            })
        };
        if device.is_some() && !matches!(name, "cuda" | "tensorrt" | "openvino") {
            bail!("--provider {lowered:?}: only cuda and tensorrt take a device number, and openvino a device");
        }
        let precision = PrecisionChoice::from(self.precision);
        let provider = match name {
            "openvino" => {
                let device = device.map_or(Some(OpenVinoDevice::Cpu), OpenVinoDevice::parse).with_context(|| {
                    format!("--provider {lowered:?}: OpenVINO's devices are cpu, gpu, gpu.N and npu")
                })?;
                ExecutionProvider::OpenVino { device, precision: precision.resolve_on(device)? }
            }
            "cpu" | "coreml" if matches!(precision, PrecisionChoice::Bf16 | PrecisionChoice::Fp16) => {
                let asked = self.precision_flag();
                bail!(
                    "--precision {asked} needs --provider openvino (or, for fp16, cuda or tensorrt); the {name} \
                     provider computes fp32"
                )
            }
            "cuda" | "tensorrt" if precision == PrecisionChoice::Bf16 => {
                bail!("--precision bf16: sdrt runs NVIDIA GPUs in fp16 or fp32; use --precision fp16, fp32 or auto")
            }
            "cpu" => ExecutionProvider::Cpu,
            "cuda" => ExecutionProvider::Cuda { device_id: device_id()? },
            "tensorrt" => ExecutionProvider::TensorRt { device_id: device_id()? },
            "coreml" => ExecutionProvider::CoreMl,
            other => bail!("--provider {other:?} is not a provider; use cpu, openvino, cuda, tensorrt or coreml"),
        };
        Ok(provider)
    }

    /// Whether the UNet computes in fp16: on CUDA and TensorRT unless `--precision fp32` (the text encoder and VAE
    /// stay fp32 there, see docs/gpu.md).
    fn half_unet(&self, provider: ExecutionProvider) -> bool {
        let gpu = matches!(provider, ExecutionProvider::Cuda { .. } | ExecutionProvider::TensorRt { .. });
        gpu && PrecisionChoice::from(self.precision) != PrecisionChoice::Fp32
    }

    /// `--precision` as it was spelled on the command line.
    fn precision_flag(&self) -> String {
        format!("{:?}", self.precision).to_lowercase()
    }

    /// Loads the ONNX Runtime build the provider needs and says, on stderr, what a bf16-capable provider will
    /// compute in and why.
    pub fn load_runtime(&self) -> Result<SessionConfig> {
        let config = self.session_config()?;
        if let ExecutionProvider::OpenVino { device, precision } = config.provider {
            let cpu = sdrt_models::cpu_bf16_extension().unwrap_or("no AVX512_BF16/AMX");
            let asked = self.precision_flag();
            eprintln!(
                "OpenVINO ({}) computes in {} (--precision {asked}; CPU: {cpu})",
                device.name(),
                precision.name()
            );
        }
        if matches!(config.provider, ExecutionProvider::Cuda { .. } | ExecutionProvider::TensorRt { .. }) {
            let unet = if config.graph.half_unet { "fp16" } else { "fp32" };
            eprintln!(
                "{} computes a checkpoint's UNet in {unet}, its text encoder and VAE in fp32 (--precision {}); \
                 exported ONNX folders run in the precision they were exported in",
                config.provider,
                self.precision_flag()
            );
        }
        sdrt_models::ensure_runtime_for(&config.provider)?;
        Ok(config)
    }

    /// The model provider these flags ask for.
    pub fn model_provider(&self) -> Result<ModelProvider> {
        let options = sdrt_models::CheckpointOptions { prediction: self.prediction.map(Into::into) };
        Ok(ModelProvider::new(self.session_config()?).with_checkpoint_options(options))
    }

    fn optimization(&self) -> Result<OptimizationLevel> {
        Ok(match self.graph_optimization.to_ascii_lowercase().as_str() {
            "disabled" | "disable" | "none" => OptimizationLevel::Disabled,
            "basic" => OptimizationLevel::Basic,
            "extended" => OptimizationLevel::Extended,
            "all" => OptimizationLevel::All,
            other => bail!("--graph-optimization {other:?} is not a level; use disabled, basic, extended or all"),
        })
    }
}

/// txt2img adds hires fix (A1111's `enable_hr` and `hr_*` fields, in kebab-case).
#[derive(Args, Debug, Clone)]
pub struct Txt2ImgArgs {
    #[command(flatten)]
    pub common: GenerateArgs,
    /// Hires fix: generate at --width×--height, enlarge, then img2img at the larger size.
    #[arg(long)]
    pub enable_hr: bool,
    /// Hires fix enlargement factor (ignored when --hr-resize-x/--hr-resize-y are given).
    #[arg(long, default_value_t = 2.0)]
    pub hr_scale: f64,
    /// Hires upscaler: "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
    /// "Latent (nearest)", "Latent (nearest-exact)", "None", "Lanczos", "Nearest", or the name of a model in
    /// --upscaler-dir.
    #[arg(long, default_value = "Latent")]
    pub hr_upscaler: String,
    /// Folder of upscaler models (`<name>.onnx`, ESRGAN family, run in 192-pixel tiles as A1111 does).
    #[arg(long)]
    pub upscaler_dir: Option<PathBuf>,
    /// Hires pass steps (0 = the same as --steps).
    #[arg(long, default_value_t = 0)]
    pub hr_second_pass_steps: u32,
    /// Resize the hires pass to this width (0 = from --hr-scale or the height's aspect).
    #[arg(long, default_value_t = 0)]
    pub hr_resize_x: u32,
    /// Resize the hires pass to this height (0 = from --hr-scale or the width's aspect).
    #[arg(long, default_value_t = 0)]
    pub hr_resize_y: u32,
    /// Sampler of the hires pass (default: the first pass's).
    #[arg(long)]
    pub hr_sampler_name: Option<String>,
    /// Schedule type of the hires pass (default: the first pass's).
    #[arg(long)]
    pub hr_scheduler: Option<String>,
    /// Prompt of the hires pass (default: --prompt).
    #[arg(long, default_value = "")]
    pub hr_prompt: String,
    /// Negative prompt of the hires pass (default: --negative-prompt).
    #[arg(long, default_value = "")]
    pub hr_negative_prompt: String,
    /// How much the hires pass changes the enlarged image.
    #[arg(long, default_value_t = 0.7)]
    pub denoising_strength: f64,
}

impl Txt2ImgArgs {
    /// The API request these flags describe, for a model trained at `model_side` pixels (see `model_side`).
    pub fn request(&self, model_side: Option<u32>) -> Txt2ImgRequest {
        Txt2ImgRequest {
            base: self.common.base_request(model_side),
            enable_hr: self.enable_hr,
            hr_scale: self.hr_scale,
            hr_upscaler: Some(self.hr_upscaler.clone()),
            hr_second_pass_steps: self.hr_second_pass_steps,
            hr_resize_x: self.hr_resize_x,
            hr_resize_y: self.hr_resize_y,
            hr_sampler_name: self.hr_sampler_name.clone(),
            hr_scheduler: self.hr_scheduler.clone(),
            hr_prompt: self.hr_prompt.clone(),
            hr_negative_prompt: self.hr_negative_prompt.clone(),
            denoising_strength: self.denoising_strength,
            ..Txt2ImgRequest::default()
        }
    }
}

/// img2img adds the init image and how far to move from it.
#[derive(Args, Debug, Clone)]
pub struct Img2ImgArgs {
    #[command(flatten)]
    pub common: GenerateArgs,
    /// The init image (PNG, JPEG or WebP).
    #[arg(long)]
    pub init_image: PathBuf,
    /// How much to change the init image (0 = not at all, 1 = entirely).
    #[arg(long, default_value_t = 0.75)]
    pub denoising_strength: f64,
    /// 0 just resize, 1 crop and resize, 2 resize and fill.
    #[arg(long, default_value_t = 0)]
    pub resize_mode: u32,
    /// Inpainting mask (white = repaint; an image with transparency uses its alpha channel).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Mask blur in pixels (both directions).
    #[arg(long, default_value_t = 4)]
    pub mask_blur: i64,
    /// Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    #[arg(long, default_value_t = 1)]
    pub inpainting_fill: u32,
    /// Inpaint area "Only masked": work on the masked region at full resolution (else "Whole picture").
    #[arg(long)]
    pub inpaint_full_res: bool,
    /// Padding around the masked region for --inpaint-full-res, in pixels.
    #[arg(long, default_value_t = 32)]
    pub inpaint_full_res_padding: u32,
    /// 1 inpaints what is not masked.
    #[arg(long, default_value_t = 0)]
    pub inpainting_mask_invert: u32,
    /// Multiplier of the initial noise (A1111's "Noise multiplier for img2img").
    #[arg(long, default_value_t = 1.0)]
    pub initial_noise_multiplier: f64,
    /// Keep soft mask edges instead of rounding the mask to 0/1.
    #[arg(long)]
    pub no_mask_round: bool,
}

/// The tiny random-weight pipeline committed with the repository: `sdrt serve`'s default model.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd15-tiny")
}

/// The demo model committed with the repository (`models/demo`, trained by `tools/demo/train.sh`): a tiny
/// SD 1.x checkpoint that draws coloured shapes; the default model of `txt2img`, `img2img` and `bench`.
pub fn demo_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/demo/sdrt-shapes-demo.safetensors")
}

/// The styles of `path`.
fn load_styles(path: &Path) -> Result<Arc<sdrt_io::StyleDatabase>> {
    let styles = sdrt_io::StyleDatabase::load(path).with_context(|| format!("--styles-file {}", path.display()))?;
    Ok(Arc::new(styles))
}

/// What prompts and settings may name besides the model: styles, LoRAs, embeddings, VAEs.
#[derive(Args, Debug, Clone, Default)]
pub struct LibraryArgs {
    /// A1111's `styles.csv` (name, prompt, negative_prompt) that styles (`--style`, the `styles` field) name.
    #[arg(long)]
    pub styles_file: Option<PathBuf>,
    /// A1111's LoRA folder (`models/Lora`): `<lora:NAME:multiplier>` in a prompt names a file in it.
    #[arg(long)]
    pub lora_dir: Option<PathBuf>,
    /// A1111's `embeddings` folder: textual-inversion files prompts name by file stem.
    #[arg(long)]
    pub embeddings_dir: Option<PathBuf>,
    /// Which VAE decodes (and encodes).
    #[command(flatten)]
    pub vae: VaeArgs,
}

impl LibraryArgs {
    /// Sets what these flags give in `settings` (over what `--data-dir` put there); `models_dir` is where
    /// `*.vae.safetensors` are looked for.
    pub fn apply(&self, settings: &mut GenerationSettings, models_dir: Option<&Path>) -> Result<()> {
        if let Some(path) = &self.styles_file {
            settings.styles = load_styles(path)?;
        }
        if let Some(dir) = &self.lora_dir {
            settings.loras = lora_library(dir)?;
        }
        if let Some(dir) = &self.embeddings_dir {
            settings.embeddings = embedding_library(dir)?;
        }
        self.vae.apply(settings, models_dir)
    }
}

/// A1111's VAE choice: a file, a folder of them, and `*.vae.safetensors` beside the checkpoints.
#[derive(Args, Debug, Clone, Default)]
pub struct VaeArgs {
    /// A standalone VAE file (`*.vae.safetensors`, or one from A1111's `models/VAE`) to use instead of the
    /// model's own (A1111's `--vae-path`).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// A1111's `models/VAE` folder: `sd_vae` names its files.
    #[arg(long)]
    pub vae_dir: Option<PathBuf>,
    /// `Automatic` (a VAE whose file name starts with the checkpoint's; the default), `None` (the model's own) or
    /// a VAE file name; ignored with --vae.
    #[arg(long)]
    pub sd_vae: Option<String>,
}

impl VaeArgs {
    /// The `sd_vae` setting these flags ask for: `--vae`'s file name, else `--sd-vae`.
    pub fn setting(&self) -> Option<String> {
        match self.vae.as_deref().and_then(Path::file_name) {
            Some(name) => Some(name.to_string_lossy().into_owned()),
            None => self.sd_vae.clone(),
        }
    }

    /// Sets `settings`' VAE choice and files from these flags; without any, what `settings` has (from
    /// `--data-dir`) stays, or the VAEs beside the model in `models_dir` are offered.
    pub fn apply(&self, settings: &mut GenerationSettings, models_dir: Option<&Path>) -> Result<()> {
        if let Some(setting) = self.setting() {
            settings.sd_vae = setting;
        }
        if self.vae.is_some() || self.vae_dir.is_some() || settings.vaes.list().is_empty() {
            settings.vaes = self.library(models_dir)?;
        }
        Ok(())
    }

    /// The VAE files: `*.vae.safetensors` in `models_dir`, every `.safetensors` of `--vae-dir`, and `--vae`.
    pub fn library(&self, models_dir: Option<&Path>) -> Result<Arc<sdrt_runtime::VaeLibrary>> {
        let library = sdrt_runtime::VaeLibrary::new(
            models_dir.map(Path::to_owned).into_iter().collect(),
            self.vae_dir.clone().into_iter().collect(),
            self.vae.clone().into_iter().collect(),
        )
        .context("reading the VAE folders (--vae-dir, the model's folder)")?;
        if let Some(file) = &self.vae
            && !file.is_file()
        {
            bail!("--vae {}: no such file", file.display());
        }
        Ok(Arc::new(library))
    }
}

/// Reads an A1111 data folder into `settings` and `provider` (`--data-dir`), saying what it found.
pub fn apply_data_dir(dir: &Path, settings: &mut GenerationSettings, provider: &mut ModelProvider) -> Result<()> {
    let data = sdrt_runtime::DataDir::open(dir).with_context(|| format!("--data-dir {}", dir.display()))?;
    let summary = data.apply(settings, provider).with_context(|| format!("--data-dir {}", dir.display()))?;
    eprintln!(
        "A1111 data folder {}: {} models{}, {} LoRAs, {} VAEs, {} styles, settings from config.json: {}",
        dir.display(),
        summary.models.len(),
        summary.selected_model.as_ref().map_or(String::new(), |m| format!(" (selected: {m})")),
        settings.loras.list().len(),
        settings.vaes.list().len(),
        settings.styles.styles().len(),
        if summary.settings.is_empty() { "none".to_owned() } else { summary.settings.join(", ") },
    );
    Ok(())
}

/// The textual-inversion embeddings of `dir`.
fn embedding_library(dir: &Path) -> Result<Arc<sdrt_runtime::EmbeddingLibrary>> {
    let library = sdrt_runtime::EmbeddingLibrary::new(vec![dir.to_owned()])
        .with_context(|| format!("--embeddings-dir {}", dir.display()))?;
    for problem in library.problems() {
        eprintln!("warning: embedding left out: {problem}");
    }
    Ok(Arc::new(library))
}

/// The LoRA networks of `dir`.
fn lora_library(dir: &Path) -> Result<Arc<sdrt_runtime::LoraLibrary>> {
    let library = sdrt_runtime::LoraLibrary::new(vec![dir.to_owned()])
        .with_context(|| format!("--lora-dir {}", dir.display()))?;
    Ok(Arc::new(library))
}

/// The image side the selected model was trained at, when its checkpoint's `.yaml` says so: the size used
/// when no `--width`/`--height` is given (as diffusers takes its default size from the model). Models that
/// say nothing get A1111's 512.
pub fn model_side(settings: &GenerationSettings, provider: &ModelProvider) -> Option<u32> {
    let model = settings.model.as_deref()?;
    let path = provider.registered().get(model).cloned().unwrap_or_else(|| PathBuf::from(model));
    sdrt_models::native_image_size(&path)
}

/// A1111's default image side.
const DEFAULT_SIDE: u32 = 512;

impl GenerateArgs {
    /// The request the flags describe; `model_side` is the size when none is given (`model_side`).
    pub fn base_request(&self, model_side: Option<u32>) -> GenerationRequest {
        let side = model_side.unwrap_or(DEFAULT_SIDE);
        GenerationRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            styles: (!self.styles.is_empty()).then(|| self.styles.clone()),
            seed: self.seed,
            subseed: self.subseed,
            subseed_strength: self.subseed_strength,
            seed_resize_from_w: self.seed_resize_from_w,
            seed_resize_from_h: self.seed_resize_from_h,
            sampler_name: Some(self.sampler.clone()),
            scheduler: Some(self.scheduler.clone()),
            batch_size: self.batch_size,
            n_iter: self.n_iter,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            width: self.width.unwrap_or(side),
            height: self.height.unwrap_or(side),
            ..GenerationRequest::default()
        }
    }

    fn base_settings(&self, save: bool) -> GenerationSettings {
        GenerationSettings {
            pad_cond_uncond: self.pad_cond_uncond,
            outdir: save.then(|| self.outdir.clone()),
            save_latents: self.save_latents,
            ..GenerationSettings::default()
        }
    }

    /// The settings flags given on the command line, over whatever `settings` holds.
    fn apply_flags(&self, settings: &mut GenerationSettings) -> Result<()> {
        if let Some(rng) = &self.rng {
            settings.randn_source = parse_randn_source(rng)
                .with_context(|| format!("--rng {rng:?} is not a source; use gpu, cpu or nv"))?;
        }
        if let Some(emphasis) = &self.emphasis {
            settings.emphasis = emphasis
                .parse()
                .map_err(|_| anyhow::anyhow!("--emphasis {emphasis:?}: use \"Original\", \"No norm\" or \"None\""))?;
        }
        if let Some(clip_skip) = self.clip_skip {
            settings.clip_skip = clip_skip;
        }
        if let Some(ensd) = self.ensd {
            settings.eta_noise_seed_delta = ensd;
        }
        if let Some(model) = &self.model {
            settings.model = Some(model.display().to_string());
        }
        Ok(())
    }

    /// Loads ONNX Runtime and makes the settings and the model provider for a job: `--data-dir`'s folder and
    /// `config.json` first, the flags over them; says so when the model is the bundled one.
    pub fn prepare(&self, save: bool) -> Result<(GenerationSettings, Arc<ModelProvider>)> {
        self.session.load_runtime()?;
        let mut provider = self.session.model_provider()?;
        let mut settings = self.base_settings(save);
        if let Some(dir) = &self.data_dir {
            apply_data_dir(dir, &mut settings, &mut provider)?;
        }
        self.apply_flags(&mut settings)?;
        if settings.model.is_none() {
            if !self.json {
                eprintln!(
                    "note: no --model given; using the bundled demo model {} — a tiny model that draws coloured \
                     shapes at 64×64 (see models/demo/README.md). Pass --model PATH for a real model.",
                    demo_model().display()
                );
            }
            settings.model = Some(demo_model().display().to_string());
        }
        let models_dir = self.model.as_deref().and_then(Path::parent);
        self.libraries.apply(&mut settings, models_dir)?;
        Ok((settings, Arc::new(provider)))
    }
}

/// A terminal progress bar fed by the runner's step events.
pub struct BarProgress(pub ProgressBar);

impl BarProgress {
    pub fn new(hidden: bool) -> Self {
        let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl ProgressSink for BarProgress {
    fn on_progress(&self, event: &ProgressEvent) {
        self.0.set_prefix(format!("batch {}", event.batch + 1));
        self.0.set_length(event.total as u64);
        self.0.set_position(event.step as u64);
    }
}

pub fn run_job(
    request: ProcessingRequest,
    settings: GenerationSettings,
    provider: Arc<ModelProvider>,
    quiet: bool,
) -> Result<(GenerationOutput, JobMetrics)> {
    let runner = ProcessingRunner::new();
    let progress = Arc::new(BarProgress::new(quiet));
    let job = GenerationJob::new(request, settings, provider);
    let result = runner.run_with(job, progress.clone(), JobControl::default());
    progress.0.finish_and_clear();
    Ok(result?)
}

pub fn txt2img(args: &Txt2ImgArgs) -> Result<()> {
    let common = &args.common;
    let (settings, provider) = common.prepare(true)?;
    let request = args.request(model_side(&settings, &provider));
    request.validate(&sdrt_api_types::RequestLimits::default())?;
    let settings = GenerationSettings { upscaler_dir: args.upscaler_dir.clone(), ..settings };
    let (output, metrics) = run_job(ProcessingRequest::Txt2Img(request), settings, provider, common.json)?;
    report(&output, &metrics, common.json)
}

pub fn img2img(args: &Img2ImgArgs) -> Result<()> {
    let init = read_rgb(&args.init_image)?;
    let mask = args.mask.as_deref().map(|path| read_mask(path, !args.no_mask_round)).transpose()?;
    let (settings, provider) = args.common.prepare(true)?;
    let request = Img2ImgRequest {
        base: args.common.base_request(model_side(&settings, &provider)),
        denoising_strength: args.denoising_strength,
        resize_mode: args.resize_mode,
        // Validation wants non-empty fields; the decoded images travel beside the request.
        init_images: vec![args.init_image.display().to_string()],
        mask: args.mask.as_ref().map(|path| path.display().to_string()),
        mask_blur: Some(args.mask_blur),
        inpainting_fill: args.inpainting_fill,
        inpaint_full_res: args.inpaint_full_res,
        inpaint_full_res_padding: args.inpaint_full_res_padding,
        inpainting_mask_invert: args.inpainting_mask_invert,
        initial_noise_multiplier: Some(args.initial_noise_multiplier),
        mask_round: !args.no_mask_round,
        ..Img2ImgRequest::default()
    };
    request.validate(&sdrt_api_types::RequestLimits::default())?;
    let job = ProcessingRequest::Img2Img { request, init_images: vec![init], mask };
    let (output, metrics) = run_job(job, settings, provider, args.common.json)?;
    report(&output, &metrics, args.common.json)
}

/// Decodes an image file to 8-bit RGB (transparency flattened onto white, as A1111 does).
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let image = sdrt_io::flatten(&read_image(path, "--init-image")?);
    Ok(RgbImage { width: image.width(), height: image.height(), pixels: image.into_raw() })
}

/// Decodes an inpainting mask file as A1111 reads masks.
fn read_mask(path: &Path, round: bool) -> Result<image::GrayImage> {
    Ok(sdrt_io::mask_from_image(&read_image(path, "--mask")?, round))
}

fn read_image(path: &Path, flag: &str) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))?;
    sdrt_io::load_image(&bytes).with_context(|| format!("{flag} {}: not a PNG, JPEG or WebP image", path.display()))
}

fn report(output: &GenerationOutput, metrics: &JobMetrics, json: bool) -> Result<()> {
    if json {
        let images: Vec<serde_json::Value> = output
            .images
            .iter()
            .map(|image| {
                serde_json::json!({
                    "path": image.path,
                    "latents_path": image.latents_path,
                    "seed": image.seed,
                    "subseed": image.subseed,
                    "infotext": image.infotext,
                    "width": image.image.width,
                    "height": image.image.height,
                })
            })
            .collect();
        let stages: serde_json::Map<String, serde_json::Value> = metrics
            .stages
            .iter()
            .map(|(stage, time)| ((*stage).to_owned(), serde_json::json!(time.as_secs_f64() * 1e3)))
            .collect();
        let result = serde_json::json!({
            "images": images,
            "model": output.model_name,
            "model_hash": output.model_hash,
            "interrupted": output.interrupted,
            "unet_calls": output.unet_calls,
            "stages_ms": stages,
            "it_per_s": metrics.iterations_per_second(),
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    for image in &output.images {
        match &image.path {
            Some(path) => println!("{}", path.display()),
            None => println!("(not saved) seed {}", image.seed),
        }
    }
    if let Some(first) = output.images.first() {
        eprintln!("\n{}\n", first.infotext);
    }
    eprintln!(
        "{} image(s) in {:.2} s ({:.2} it/s)",
        output.images.len(),
        metrics.get("total").as_secs_f64(),
        metrics.iterations_per_second()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: GenerateArgs,
    }

    /// The settings the flags alone give (no data folder, no model loaded).
    fn flag_settings(args: &GenerateArgs) -> Result<GenerationSettings> {
        let mut settings = args.base_settings(true);
        args.apply_flags(&mut settings)?;
        Ok(settings)
    }

    #[test]
    fn defaults_are_a1111_ui_defaults() {
        let args = Wrapper::try_parse_from(["sdrt", "--prompt", "x"]).unwrap().args;
        let request = args.base_request(None);
        assert_eq!((request.steps, request.width, request.height), (20, 512, 512));
        let request = args.base_request(Some(64));
        assert_eq!((request.width, request.height), (64, 64), "the model's own size when no size is given");
        let wide = Wrapper::try_parse_from(["sdrt", "--width", "96"]).unwrap().args.base_request(Some(64));
        assert_eq!((wide.width, wide.height), (96, 64));
        assert_eq!(request.cfg_scale, 7.0);
        assert_eq!(request.sampler_name.as_deref(), Some("DPM++ 2M"));
        assert_eq!(request.scheduler.as_deref(), Some("Automatic"));
        assert_eq!((request.seed, request.subseed), (-1, -1));
        let settings = flag_settings(&args).unwrap();
        assert_eq!(settings.randn_source, sdrt_processing::RandomSource::Gpu);
        assert_eq!(settings.clip_skip, 1);
        assert!(args.model.is_none(), "no --model means the demo model");
        assert!(demo_model().is_file() && bundled_model().join("model_index.json").is_file());
        let side = sdrt_models::native_image_size(&demo_model());
        assert_eq!(side, Some(64), "the demo model's .yaml gives its 64×64 size, the default when it is the model");
    }

    #[test]
    fn providers_parse_with_devices_and_precision() {
        let parse = |flags: &[&str]| {
            let args = Wrapper::try_parse_from([&["sdrt"][..], flags].concat()).unwrap().args;
            args.session.execution_provider().unwrap()
        };
        assert_eq!(parse(&[]), ExecutionProvider::Cpu);
        assert_eq!(parse(&["--provider", "CUDA:1"]), ExecutionProvider::Cuda { device_id: 1 });
        assert_eq!(parse(&["--provider", "tensorrt"]), ExecutionProvider::TensorRt { device_id: 0 });
        let cpu = OpenVinoDevice::Cpu;
        let fp32 = ExecutionProvider::OpenVino { device: cpu, precision: sdrt_models::Precision::Fp32 };
        assert_eq!(parse(&["--provider", "openvino", "--precision", "fp32"]), fp32);
        let auto = parse(&["--provider", "openvino"]);
        let native = sdrt_models::cpu_bf16_extension().is_some();
        let expected = if native { sdrt_models::Precision::Bf16 } else { sdrt_models::Precision::Fp32 };
        assert_eq!(auto, ExecutionProvider::OpenVino { device: cpu, precision: expected });
        let gpu = OpenVinoDevice::Gpu { index: Some(1) };
        let fp16 = ExecutionProvider::OpenVino { device: gpu, precision: sdrt_models::Precision::Fp16 };
        assert_eq!(parse(&["--provider", "openvino:GPU.1"]), fp16, "GPUs compute fp16 by default");
    }

    #[test]
    fn nvidia_gpus_compute_the_unet_in_fp16_unless_fp32_is_asked_for() {
        let half = |flags: &[&str]| {
            let args = Wrapper::try_parse_from([&["sdrt"][..], flags].concat()).unwrap().args;
            args.session.session_config().unwrap().graph.half_unet
        };
        assert!(half(&["--provider", "cuda"]) && half(&["--provider", "tensorrt:1", "--precision", "fp16"]));
        assert!(!half(&["--provider", "cuda", "--precision", "fp32"]));
        assert!(!half(&["--provider", "cpu"]) && !half(&["--provider", "openvino"]));
    }

    #[test]
    fn bad_flags_say_what_to_use() {
        let args = Wrapper::try_parse_from(["sdrt", "--rng", "quantum"]).unwrap().args;
        let err = flag_settings(&args).unwrap_err().to_string();
        assert!(err.contains("--rng") && err.contains("cpu"), "{err}");
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "tpu"]).unwrap().args;
        assert!(args.session.session_config().unwrap_err().to_string().contains("--provider"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "cpu", "--precision", "bf16"]).unwrap().args;
        assert!(args.session.session_config().unwrap_err().to_string().contains("--provider openvino"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "cuda:x"]).unwrap().args;
        assert!(format!("{:#}", args.session.session_config().unwrap_err()).contains("must be a number"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "cpu:1"]).unwrap().args;
        assert!(args.session.session_config().unwrap_err().to_string().contains("only cuda and tensorrt"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "openvino:tpu"]).unwrap().args;
        assert!(format!("{:#}", args.session.session_config().unwrap_err()).contains("cpu, gpu, gpu.N and npu"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "cpu", "--precision", "fp16"]).unwrap().args;
        assert!(args.session.session_config().unwrap_err().to_string().contains("--precision fp16 needs"));
        let args = Wrapper::try_parse_from(["sdrt", "--provider", "cuda", "--precision", "bf16"]).unwrap().args;
        assert!(args.session.session_config().unwrap_err().to_string().contains("fp16 or fp32"));
        let args = Wrapper::try_parse_from(["sdrt", "--seed", "-1", "--subseed", "5"]).unwrap().args;
        assert_eq!(args.base_request(None).subseed, 5);
    }
}
