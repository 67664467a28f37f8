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
}

impl ExecutionProvider {
    /// ONNX Runtime's name for the provider, e.g. `CUDAExecutionProvider`.
    pub fn onnx_runtime_name(&self) -> &'static str {
        match self {
            Self::Cpu => "CPUExecutionProvider",
            Self::Cuda { .. } => "CUDAExecutionProvider",
            Self::TensorRt { .. } => "TensorrtExecutionProvider",
            Self::CoreMl => "CoreMLExecutionProvider",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "CPU"),
            Self::Cuda { device_id } => write!(f, "CUDA (device {device_id})"),
            Self::TensorRt { device_id } => write!(f, "TensorRT (device {device_id})"),
            Self::CoreMl => write!(f, "CoreML"),
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
    /// CPU memory arena (faster repeated runs, more resident memory).
    pub memory_arena: bool,
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            optimization: OptimizationLevel::All,
            intra_op_threads: None,
            memory_arena: true,
            memory_pattern: true,
            intra_op_spinning: true,
            prepacking: true,
            bound_io: true,
            parallel_load: true,
            profiling: None,
            provider: ExecutionProvider::Cpu,
            graph: crate::graph::GraphOptions::default(),
            network_cache: 1,
        }
    }
}

impl SessionConfig {
    /// The intra-op thread count this configuration resolves to.
    pub fn resolved_intra_op_threads(&self) -> usize {
        self.intra_op_threads.unwrap_or_else(num_cpus::get_physical).max(1)
    }

    /// Applies every option to `builder`; `component` names the model in errors.
    pub(crate) fn apply(&self, builder: SessionBuilder, component: &str) -> Result<SessionBuilder> {
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
            builder = builder.with_profiling(prefix).map_err(option_error("enabling profiling"))?;
        }
        self.register_provider(builder, component)
    }

    fn register_provider(&self, builder: SessionBuilder, component: &str) -> Result<SessionBuilder> {
        let provider = self.provider;
        let dispatch = provider_dispatch(provider, self.memory_arena).map_err(|reason| Error::Provider {
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
    provider: ExecutionProvider,
    memory_arena: bool,
) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    match provider {
        ExecutionProvider::Cpu => Ok(ort::ep::CPU::default().with_arena_allocator(memory_arena).build()),
        ExecutionProvider::Cuda { device_id } => cuda_dispatch(device_id),
        ExecutionProvider::TensorRt { device_id } => tensorrt_dispatch(device_id),
        ExecutionProvider::CoreMl => coreml_dispatch(),
    }
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
fn tensorrt_dispatch(device_id: i32) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
    Ok(ort::ep::TensorRT::default().with_device_id(device_id).build())
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_dispatch(_device_id: i32) -> std::result::Result<ort::ep::ExecutionProviderDispatch, String> {
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
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_provider_not_compiled_in_says_which_feature() {
        let reason = provider_dispatch(ExecutionProvider::Cuda { device_id: 0 }, true).err().expect("not compiled in");
        assert!(reason.contains("--features cuda"), "{reason}");
    }
}
