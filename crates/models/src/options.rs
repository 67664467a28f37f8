//! Session configuration: graph optimisation, threads, memory, profiling and the execution provider.

use std::path::PathBuf;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::error::{Error, Result};

/// How much ONNX Runtime rewrites the graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizationLevel {
    /// No rewrites (useful to compare against the exported graph).
    Disabled,
    /// Constant folding and redundant-node removal.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout changes (ONNX Runtime's default).
    #[default]
    All,
}

/// Where a session runs. Every provider except CPU needs its cargo feature and provider libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU kernels.
    #[default]
    Cpu,
    /// NVIDIA CUDA (cargo feature `cuda`, `onnxruntime-gpu` libraries).
    Cuda {
        /// GPU index.
        device_id: i32,
    },
    /// NVIDIA TensorRT (cargo feature `tensorrt`); nodes TensorRT cannot take run on CPU.
    TensorRt {
        /// GPU index.
        device_id: i32,
    },
    /// Apple Core ML (cargo feature `coreml`, macOS builds of ONNX Runtime).
    CoreMl,
    /// Intel OpenVINO, through the `onnxruntime-openvino` build (`cargo xtask provision-ort --openvino`).
    OpenVino {
        /// The OpenVINO device the graphs are compiled for.
        device: OpenVinoDevice,
        /// What OpenVINO computes in.
        precision: Precision,
    },
}

/// An OpenVINO device: its CPU plugin, an Intel GPU (integrated or discrete) or an Intel NPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenVinoDevice {
    /// The CPU plugin (fp32, or bf16 on AVX512_BF16/AMX CPUs).
    #[default]
    Cpu,
    /// An Intel GPU; `index` picks one of several (OpenVINO's `GPU.1`).
    Gpu {
        /// OpenVINO's GPU number; `None` = its first GPU.
        index: Option<u8>,
    },
    /// An Intel NPU.
    Npu,
}

impl OpenVinoDevice {
    /// Parses `cpu`, `gpu`, `gpu.N` or `npu` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "cpu" => Some(Self::Cpu),
            "gpu" => Some(Self::Gpu { index: None }),
            "npu" => Some(Self::Npu),
            other => {
                let index = other.strip_prefix("gpu.")?.parse().ok()?;
                Some(Self::Gpu { index: Some(index) })
            }
        }
    }

    /// OpenVINO's name for the device: `CPU`, `GPU`, `GPU.1`, `NPU`.
    pub fn name(self) -> String {
        match self {
            Self::Cpu => "CPU".to_owned(),
            Self::Gpu { index: None } => "GPU".to_owned(),
            Self::Gpu { index: Some(index) } => format!("GPU.{index}"),
            Self::Npu => "NPU".to_owned(),
        }
    }
}

/// The number format a provider computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit float: the exact path.
    Fp32,
    /// bfloat16 matrix multiplies and convolutions with f32 accumulation (AVX512_BF16 or AMX CPUs).
    Bf16,
    /// 16-bit float: what Intel GPUs and NPUs compute in natively (OpenVINO's default there).
    Fp16,
}

impl Precision {
    /// `fp32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }
}

/// `--precision`: a precision, or `auto` (OpenVINO's CPU: bf16 where the CPU computes it natively, fp32
/// elsewhere; OpenVINO's GPU and NPU: fp16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    /// Always fp32.
    Fp32,
    /// bf16; an error on a CPU without native bf16 and on GPUs and NPUs.
    Bf16,
    /// fp16; OpenVINO GPUs and NPUs only.
    Fp16,
    /// What the device computes fastest without a visible loss: see the type's docs.
    #[default]
    Auto,
}

impl PrecisionChoice {
    /// The precision this choice comes to on OpenVINO's CPU plugin on this CPU.
    pub fn resolve(self) -> Result<Precision> {
        self.resolve_on(OpenVinoDevice::Cpu)
    }

    /// The precision this choice comes to on `device` (this machine's CPU for the CPU plugin).
    pub fn resolve_on(self, device: OpenVinoDevice) -> Result<Precision> {
        match device {
            OpenVinoDevice::Cpu => self.resolve_for(cpu_bf16_extension()),
            OpenVinoDevice::Gpu { .. } | OpenVinoDevice::Npu => match self {
                Self::Fp32 => Ok(Precision::Fp32),
                Self::Fp16 | Self::Auto => Ok(Precision::Fp16),
                Self::Bf16 => {
                    let device = device.name();
                    let reason = format!(
                        "OpenVINO's {device} computes fp16 or fp32, not bf16; use --precision fp16, fp32 or auto"
                    );
                    Err(Error::Precision { precision: "bf16", reason })
                }
            },
        }
    }

    /// The precision this choice comes to on OpenVINO's CPU plugin, on a CPU whose native bf16 extension is
    /// `bf16_extension`.
    pub fn resolve_for(self, bf16_extension: Option<&'static str>) -> Result<Precision> {
        match (self, bf16_extension) {
            (Self::Fp32, _) | (Self::Auto, None) => Ok(Precision::Fp32),
            (Self::Bf16 | Self::Auto, Some(_)) => Ok(Precision::Bf16),
            (Self::Fp16, _) => Err(Error::Precision {
                precision: "fp16",
                reason: "OpenVINO's CPU plugin computes fp32 or bf16; fp16 is for --provider openvino:gpu or \
                         openvino:npu"
                    .to_owned(),
            }),
            // OpenVINO ignores a bf16 hint on such a CPU and computes f32 (measured: outputs identical to fp32), so
            // accepting it would report a precision that never ran.
            (Self::Bf16, None) => Err(Error::Precision {
                precision: "bf16",
                reason: "this CPU has neither AVX512_BF16 nor AMX, so OpenVINO would compute in f32 anyway; use \
                         --precision fp32 or auto"
                    .to_owned(),
            }),
        }
    }
}

/// The CPU extension that computes bf16 natively (`AMX_BF16` or `AVX512_BF16`), if this CPU has one.
pub fn cpu_bf16_extension() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        // AMX detection is not stable in `std::arch`; Linux lists the flag once the kernel enabled it.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|f| f == "amx_bf16"))
        {
            return Some("AMX_BF16");
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return Some("AVX512_BF16");
        }
    }
    None
}

impl ExecutionProvider {
    /// ONNX Runtime's name for the provider, e.g. `CUDAExecutionProvider`.
    pub fn onnx_runtime_name(&self) -> &'static str {
        match self {
            Self::Cpu => "CPUExecutionProvider",
            Self::Cuda { .. } => "CUDAExecutionProvider",
            Self::TensorRt { .. } => "TensorrtExecutionProvider",
            Self::CoreMl => "CoreMLExecutionProvider",
            Self::OpenVino { .. } => "OpenVINOExecutionProvider",
        }
    }

    /// The ONNX Runtime build a process needs for this provider.
    pub fn runtime_build(&self) -> crate::RuntimeBuild {
        match self {
            Self::OpenVino { .. } => crate::RuntimeBuild::OpenVino,
            Self::Cuda { .. } | Self::TensorRt { .. } => crate::RuntimeBuild::Gpu,
            Self::Cpu | Self::CoreMl => crate::RuntimeBuild::Standard,
        }
    }

    /// Whether graphs for this provider may use ONNX Runtime's `com.microsoft` contrib operators (OpenVINO
    /// compiles standard ONNX only; a contrib node would run on the CPU provider between OpenVINO pieces).
    pub fn runs_contrib_ops(&self) -> bool {
        !matches!(self, Self::OpenVino { .. })
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "CPU"),
            Self::Cuda { device_id } => write!(f, "CUDA (device {device_id})"),
            Self::TensorRt { device_id } => write!(f, "TensorRT (device {device_id})"),
            Self::CoreMl => write!(f, "CoreML"),
            Self::OpenVino { device, precision } => write!(f, "OpenVINO ({}, {})", device.name(), precision.name()),
        }
    }
}

/// Everything that shapes how a model is loaded into ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Graph optimisation level.
    pub optimization: OptimizationLevel,
    /// Threads used inside one operator; `None` = the number of physical CPU cores.
    pub intra_op_threads: Option<usize>,
    /// CPU memory arena (faster repeated runs, more resident memory); `None` = sdrt's measured choice, see
    /// [`SessionConfig::arena_for`].
    pub memory_arena: Option<bool>,
    /// Hand the UNet's arena back after each pass's last call ([`crate::Unet::release_memory_after_next_run`]);
    /// `None` = sdrt's measured choice, see [`SessionConfig::releases_unet_memory`].
    pub release_unet_memory: Option<bool>,
    /// Memory-pattern planning (helps fixed shapes; ONNX Runtime's default is on).
    pub memory_pattern: bool,
    /// Let idle intra-op threads spin waiting for work (lower latency per operator, busier cores; ONNX
    /// Runtime's default is on).
    pub intra_op_spinning: bool,
    /// Pre-pack constant weights into the kernels' layouts at load (faster runs, more resident memory).
    pub prepacking: bool,
    /// Pass f32 inputs to ONNX Runtime without copying and reuse pre-allocated output tensors while input
    /// shapes stay the same (the UNet's steps, repeated decodes).
    pub bound_io: bool,
    /// Load a pipeline's components on parallel threads.
    pub parallel_load: bool,
    /// Write an ONNX Runtime profile (JSON) with this path prefix.
    pub profiling: Option<PathBuf>,
    /// The execution provider. Registration errors are reported, never silently replaced by CPU.
    pub provider: ExecutionProvider,
    /// How graphs built from checkpoints are written (exported folders are run as they are).
    pub graph: crate::graph::GraphOptions,
    /// Text-encoder and UNet sessions kept for LoRA sets used before, so switching back to one (or to none)
    /// costs no rebuild; each kept UNet holds a copy of its weights (`--lora-cache`).
    pub network_cache: usize,
    /// OpenVINO keeps the models it compiled here (its `CACHE_DIR`), so the next load of the same graph skips
    /// compilation; `None` compiles on every load.
    pub openvino_cache: Option<PathBuf>,
    /// TensorRT keeps the engines it built here (`trt_engine_cache_path`), so the next load of the same graph
    /// skips the build; `None` builds on every load.
    pub tensorrt_cache: Option<PathBuf>,
    /// Keep the inputs that stay the same across a generation's steps (the conditioning) in the provider's
    /// memory between UNet runs: `None` = on for CUDA and TensorRT (copied to the GPU once, not once per step),
    /// off elsewhere; `Some(true)` on CPU keeps them in ONNX Runtime-owned memory (tests the same path).
    pub resident_inputs: Option<bool>,
    /// OpenVINO compiles each graph for the input shapes it is run with instead of once for dynamic shapes:
    /// ONNX Runtime fixes the graph's symbolic dimensions to the run's sizes before OpenVINO takes it, in a
    /// session built at the first run with new sizes (the previous one is dropped first).
    pub openvino_static_shapes: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            optimization: OptimizationLevel::All,
            intra_op_threads: None,
            memory_arena: None,
            release_unet_memory: None,
            memory_pattern: true,
            intra_op_spinning: true,
            prepacking: true,
            bound_io: true,
            parallel_load: true,
            profiling: None,
            provider: ExecutionProvider::Cpu,
            graph: crate::graph::GraphOptions::default(),
            network_cache: 1,
            openvino_cache: None,
            tensorrt_cache: None,
            resident_inputs: None,
            openvino_static_shapes: false,
        }
    }
}

impl SessionConfig {
    /// The intra-op thread count this configuration resolves to.
    pub fn resolved_intra_op_threads(&self) -> usize {
        self.intra_op_threads.unwrap_or_else(num_cpus::get_physical).max(1)
    }

    /// The graph options checkpoint graphs are built with: [`SessionConfig::graph`], limited to standard ONNX
    /// operators when the provider does not run contrib operators, and with Winograd convolutions on ONNX
    /// Runtime's CPU kernels in f32 only (the other providers choose their own convolution algorithms, and F(4,3)'s
    /// tile transforms scale values up to 100×, too close to fp16's range).
    pub fn graph_options(&self) -> crate::graph::GraphOptions {
        let graph = if self.provider.runs_contrib_ops() { self.graph } else { self.graph.standard_ops_only() };
        let cpu = self.provider == ExecutionProvider::Cpu;
        let winograd = graph.winograd.filter(|_| cpu && !graph.half_unet);
        let vae_winograd = graph.vae_winograd.filter(|_| cpu);
        crate::graph::GraphOptions { winograd, vae_winograd, ..graph }
    }

    /// Where [`SessionConfig::resident_inputs`] keeps inputs: the GPU for CUDA and TensorRT, ONNX Runtime's CPU
    /// memory when forced on elsewhere, `None` when off.
    pub(crate) fn resident_device(&self) -> Option<(ort::memory::AllocationDevice<'static>, i32)> {
        let gpu = match self.provider {
            ExecutionProvider::Cuda { device_id } | ExecutionProvider::TensorRt { device_id } => Some(device_id),
            _ => None,
        };
        match (self.resident_inputs.unwrap_or(gpu.is_some()), gpu) {
            (false, _) => None,
            (true, Some(device_id)) => Some((ort::memory::AllocationDevice::CUDA, device_id)),
            (true, None) => Some((ort::memory::AllocationDevice::CPU, 0)),
        }
    }

    /// Whether a session uses the CPU memory arena. Unless set, measured on SD1.5-shaped weights at 512²
    /// (tools/bench/README.md): on for every UNet (without it each step's activations are fresh pages the kernel
    /// faults in and zeroes: the built graph's 3 steps took 24.3 s instead of 23.6 s, the export's 1.27× as long),
    /// off for VAE sessions (decode 0.72–0.81× the time, and the decode's activations are not held beside the
    /// UNet's) and for text encoders built from checkpoints (small activations), on for exported text encoders.
    pub fn arena_for(&self, component: &str, built_from_checkpoint: bool) -> bool {
        self.memory_arena.unwrap_or(component == "unet" || (!built_from_checkpoint && !component.starts_with("vae")))
    }

    /// Whether the UNet hands its arena's memory back after a pass's last call. Unless set, measured on
    /// SD1.5-shaped weights at 512² (tools/bench/README.md): yes for graphs built from checkpoints (0.8 GiB less
    /// peak and between jobs; the next job's first step took no measurable longer), no for exports, whose arena
    /// (3 GiB, for the attention scores they materialise) took the next job's first step 2.5–4 s longer to refill.
    pub fn releases_unet_memory(&self, built_from_checkpoint: bool) -> bool {
        self.release_unet_memory.unwrap_or(built_from_checkpoint)
    }

    /// Applies every option to `builder`; `component` names the model in errors.
    pub(crate) fn apply(
        &self,
        builder: SessionBuilder,
        component: &str,
        built_from_checkpoint: bool,
    ) -> Result<SessionBuilder> {
        let option_error = |action: &'static str| {
            let component = component.to_owned();
            move |e: ort::Error<SessionBuilder>| Error::Session { component, action, reason: e.to_string() }
        };
        let level = match self.optimization {
            OptimizationLevel::Disabled => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        };
        let mut builder = builder
            .with_optimization_level(level)
            .map_err(option_error("setting the optimisation level"))?
            .with_intra_threads(self.resolved_intra_op_threads())
            .map_err(option_error("setting intra-op threads"))?
            .with_memory_pattern(self.memory_pattern)
            .map_err(option_error("setting the memory pattern"))?
            .with_intra_op_spinning(self.intra_op_spinning)
            .map_err(option_error("setting intra-op spinning"))?
            .with_prepacking(self.prepacking)
            .map_err(option_error("setting weight pre-packing"))?;
        if let Some(prefix) = &self.profiling {
            // Sessions load in parallel within one second, so the component keeps their files apart.
            let prefix = format!("{}-{component}", prefix.display());
            builder = builder.with_profiling(prefix).map_err(option_error("enabling profiling"))?;
        }
        if matches!(self.provider, ExecutionProvider::OpenVino { .. }) {
            // A provider that cannot compile the graph (or rejects an option) otherwise hands the nodes to the
            // CPU provider without a word; the user asked for OpenVINO, so that is an error instead.
            builder = builder.with_disable_cpu_fallback().map_err(option_error("refusing CPU fallback"))?;
        }
        self.register_provider(builder, component, self.arena_for(component, built_from_checkpoint))
    }

    fn register_provider(&self, builder: SessionBuilder, component: &str, arena: bool) -> Result<SessionBuilder> {
        let provider = self.provider;
        crate::cuda_libraries::prepare_nvidia_libraries(&provider)?;
        let dispatch = provider_dispatch(self, arena).map_err(|reason| Error::Provider {
            provider: provider.onnx_runtime_name(),
            component: component.to_owned(),
            reason,
        })?;
        builder.with_execution_providers([dispatch.error_on_failure()]).map_err(|e| Error::Provider {
            provider: provider.onnx_runtime_name(),
            component: component.to_owned(),
            reason: format!(
                "{e} (is this ONNX Runtime build compiled with {provider} and are its libraries installed?)"
            ),
        })
    }
}

fn provider_dispatch(
    config: &SessionConfig,
    memory_arena: bool,
) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    match config.provider {
        ExecutionProvider::OpenVino { device, precision } => Ok(openvino_dispatch(config, device, precision)),
        ExecutionProvider::Cpu => Ok(ort::ep::CPU::default().with_arena_allocator(memory_arena).build()),
        ExecutionProvider::Cuda { device_id } => cuda_dispatch(device_id),
        ExecutionProvider::TensorRt { device_id } => tensorrt_dispatch(device_id, config.tensorrt_cache.as_deref()),
        ExecutionProvider::CoreMl => coreml_dispatch(),
    }
}

/// OpenVINO's device configuration: the inference precision, stated even for f32 so the device's default
/// (bf16 on AMX CPUs, f16 on GPUs) never decides silently.
fn openvino_load_config(device: OpenVinoDevice, precision: Precision) -> String {
    let hint = match precision {
        Precision::Fp32 => "f32",
        Precision::Bf16 => "bf16",
        Precision::Fp16 => "f16",
    };
    format!(r#"{{"{}":{{"INFERENCE_PRECISION_HINT":"{hint}"}}}}"#, device.name())
}

fn openvino_dispatch(
    config: &SessionConfig,
    device: OpenVinoDevice,
    precision: Precision,
) -> ort::ep::ExecutionProviderDispatch {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let mut openvino = ort::ep::OpenVINO::default()
        .with_device_type(device.name())
        .with_num_threads(config.resolved_intra_op_threads())
        .with_dynamic_shapes(!config.openvino_static_shapes)
        .with_arbitrary_config("load_config", openvino_load_config(device, precision));
    if let Some(dir) = &config.openvino_cache {
        openvino = openvino.with_cache_dir(dir.display());
    }
    openvino.build()
}

#[cfg(not(all(feature = "cuda", feature = "tensorrt", feature = "coreml")))]
fn not_compiled_in(feature: &str) -> String {
    format!("sdrt was built without the `{feature}` cargo feature; rebuild with `--features {feature}`")
}

#[cfg(feature = "cuda")]
fn cuda_dispatch(device_id: i32) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Ok(ort::ep::CUDA::default().with_device_id(device_id).build())
}

#[cfg(not(feature = "cuda"))]
fn cuda_dispatch(_device_id: i32) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Err(not_compiled_in("cuda"))
}

#[cfg(feature = "tensorrt")]
fn tensorrt_dispatch(
    device_id: i32,
    engine_cache: Option<&std::path::Path>,
) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    let mut tensorrt = ort::ep::TensorRT::default().with_device_id(device_id);
    if let Some(dir) = engine_cache {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating the engine cache {}: {e}", dir.display()))?;
        tensorrt = tensorrt.with_engine_cache(true).with_engine_cache_path(dir.display());
    }
    Ok(tensorrt.build())
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_dispatch(
    _device_id: i32,
    _engine_cache: Option<&std::path::Path>,
) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Err(not_compiled_in("tensorrt"))
}

#[cfg(feature = "coreml")]
fn coreml_dispatch() -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Ok(ort::ep::CoreML::default().build())
}

#[cfg(not(feature = "coreml"))]
fn coreml_dispatch() -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Err(not_compiled_in("coreml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_threads_are_physical_cores_and_never_zero() {
        let config = SessionConfig::default();
        assert_eq!(config.resolved_intra_op_threads(), num_cpus::get_physical().max(1));
        let zero = SessionConfig { intra_op_threads: Some(0), ..SessionConfig::default() };
        assert_eq!(zero.resolved_intra_op_threads(), 1);
    }

    #[test]
    fn providers_have_onnx_runtime_names() {
        assert_eq!(ExecutionProvider::Cuda { device_id: 0 }.onnx_runtime_name(), "CUDAExecutionProvider");
        assert_eq!(ExecutionProvider::TensorRt { device_id: 1 }.to_string(), "TensorRT (device 1)");
        let openvino = ExecutionProvider::OpenVino { device: OpenVinoDevice::Cpu, precision: Precision::Bf16 };
        assert_eq!(openvino.onnx_runtime_name(), "OpenVINOExecutionProvider");
        assert_eq!(openvino.to_string(), "OpenVINO (CPU, bf16)");
        let gpu =
            ExecutionProvider::OpenVino { device: OpenVinoDevice::Gpu { index: Some(1) }, precision: Precision::Fp16 };
        assert_eq!(gpu.to_string(), "OpenVINO (GPU.1, fp16)");
        assert_eq!(openvino.runtime_build(), crate::RuntimeBuild::OpenVino);
        assert!(!openvino.runs_contrib_ops() && ExecutionProvider::Cpu.runs_contrib_ops());
    }

    #[test]
    fn winograd_convolutions_are_built_for_the_cpu_provider_only() {
        let cpu = SessionConfig::default();
        assert!(cpu.graph_options().winograd.is_some() && cpu.graph_options().vae_winograd.is_some());
        let openvino = ExecutionProvider::OpenVino { device: OpenVinoDevice::Cpu, precision: Precision::Fp32 };
        for provider in [openvino, ExecutionProvider::Cuda { device_id: 0 }, ExecutionProvider::CoreMl] {
            let config = SessionConfig { provider, ..SessionConfig::default() };
            let options = config.graph_options();
            assert_eq!((options.winograd, options.vae_winograd), (None, None), "{provider}");
        }
        let half_unet = crate::graph::GraphOptions { half_unet: true, ..cpu.graph };
        let half = SessionConfig { graph: half_unet, ..cpu };
        assert_eq!(half.graph_options().winograd, None);
        assert!(half.graph_options().vae_winograd.is_some(), "an fp16 UNet leaves the f32 VAE as it is");
    }

    #[test]
    fn the_arena_is_on_for_unets_and_off_for_vaes_unless_set() {
        let config = SessionConfig::default();
        assert!(config.arena_for("unet", false) && config.arena_for("text_encoder", false));
        assert!(!config.arena_for("vae_decoder", false) && !config.arena_for("text_encoder", true));
        assert!(config.arena_for("unet", true));
        assert!(config.releases_unet_memory(true) && !config.releases_unet_memory(false));
        let forced = SessionConfig { memory_arena: Some(true), ..SessionConfig::default() };
        assert!(forced.arena_for("vae_decoder", true));
    }

    #[test]
    fn auto_precision_follows_the_cpu_and_bf16_needs_native_support() {
        assert_eq!(PrecisionChoice::Auto.resolve_for(None).unwrap(), Precision::Fp32);
        assert_eq!(PrecisionChoice::Auto.resolve_for(Some("AMX_BF16")).unwrap(), Precision::Bf16);
        assert_eq!(PrecisionChoice::Fp32.resolve_for(Some("AVX512_BF16")).unwrap(), Precision::Fp32);
        let message = PrecisionChoice::Bf16.resolve_for(None).unwrap_err().to_string();
        assert!(message.contains("--precision bf16") && message.contains("AVX512_BF16"), "{message}");
        let message = PrecisionChoice::Fp16.resolve_for(Some("AMX_BF16")).unwrap_err().to_string();
        assert!(message.contains("openvino:gpu"), "{message}");
    }

    #[test]
    fn gpus_and_npus_compute_fp16_unless_told_fp32() {
        let gpu = OpenVinoDevice::Gpu { index: None };
        assert_eq!(PrecisionChoice::Auto.resolve_on(gpu).unwrap(), Precision::Fp16);
        assert_eq!(PrecisionChoice::Fp32.resolve_on(OpenVinoDevice::Npu).unwrap(), Precision::Fp32);
        let message = PrecisionChoice::Bf16.resolve_on(gpu).unwrap_err().to_string();
        assert!(message.contains("GPU") && message.contains("fp16"), "{message}");
    }

    #[test]
    fn openvino_devices_parse_as_openvino_names_them() {
        for (text, name) in [("cpu", "CPU"), ("GPU", "GPU"), ("gpu.1", "GPU.1"), ("Npu", "NPU")] {
            assert_eq!(OpenVinoDevice::parse(text).map(OpenVinoDevice::name).as_deref(), Some(name), "{text}");
        }
        for bad in ["tpu", "gpu.", "gpu.x", "gpu.1000", ""] {
            assert_eq!(OpenVinoDevice::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn openvino_is_told_the_precision_in_json() {
        let cases = [
            (OpenVinoDevice::Cpu, Precision::Fp32, "CPU", "f32"),
            (OpenVinoDevice::Cpu, Precision::Bf16, "CPU", "bf16"),
            (OpenVinoDevice::Gpu { index: Some(1) }, Precision::Fp16, "GPU.1", "f16"),
        ];
        for (device, precision, key, hint) in cases {
            let config: serde_json::Value =
                serde_json::from_str(&openvino_load_config(device, precision)).expect("json");
            assert_eq!(config[key]["INFERENCE_PRECISION_HINT"].as_str(), Some(hint), "{config}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_provider_not_compiled_in_says_which_feature() {
        let config = SessionConfig { provider: ExecutionProvider::Cuda { device_id: 0 }, ..SessionConfig::default() };
        let reason = provider_dispatch(&config, true).err().expect("not compiled in");
        assert!(reason.contains("--features cuda"), "{reason}");
    }
}
