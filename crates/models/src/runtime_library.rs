//! Finding and loading the ONNX Runtime shared library (the `ort` crate is built with `load-dynamic`).
//!
//! Three builds are provisioned: the standard one (CPU provider), OpenVINO's (`onnxruntime-openvino`, an older
//! release that carries the OpenVINO provider and its libraries) and NVIDIA's (`onnxruntime-gpu`: the CUDA and
//! TensorRT providers, only on request). A process loads one of them, chosen by the provider its first session
//! asks for. Search order for each: `ORT_DYLIB_PATH`, the provisioned cache
//! folder, an installed Python package. `ort::init()` panics when the library is missing, so every path is
//! checked and loaded with `ort::init_from`, which returns an error instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::options::ExecutionProvider;

/// The ONNX Runtime release that `cargo xtask provision-ort` installs.
pub const PROVISIONED_ORT_VERSION: &str = "1.31.1";
/// The lowest ONNX Runtime minor version the `ort` bindings accept (`api-24`: the OpenVINO build is 1.24).
pub const MIN_ORT_MINOR: u32 = 24;

/// Which ONNX Runtime build a process loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeBuild {
    /// PyPI `onnxruntime`: the CPU provider (the default, exact fp32 path).
    Standard,
    /// PyPI `onnxruntime-openvino`: the OpenVINO provider, its OpenVINO and TBB libraries, and the CPU provider.
    OpenVino,
    /// PyPI `onnxruntime-gpu`: the CUDA and TensorRT providers (they need NVIDIA's own libraries, see
    /// [`crate::CudaSearch`]) and the CPU provider.
    Gpu,
}

impl RuntimeBuild {
    /// The release provisioned for this build.
    pub fn version(self) -> &'static str {
        match self {
            Self::Standard | Self::Gpu => PROVISIONED_ORT_VERSION,
            Self::OpenVino => "1.24.1",
        }
    }

    /// The PyPI package it comes from.
    pub fn package(self) -> &'static str {
        match self {
            Self::Standard => "onnxruntime",
            Self::OpenVino => "onnxruntime-openvino",
            Self::Gpu => "onnxruntime-gpu",
        }
    }

    /// The command that provisions it.
    pub fn provision_command(self) -> &'static str {
        match self {
            Self::Standard => "cargo xtask provision-ort",
            Self::OpenVino => "cargo xtask provision-ort --openvino",
            Self::Gpu => "cargo xtask provision-ort --gpu",
        }
    }

    /// Whether a session on `provider` can run in a process that loaded this build.
    pub fn serves(self, provider: &ExecutionProvider) -> bool {
        match self {
            Self::Standard => matches!(provider, ExecutionProvider::Cpu | ExecutionProvider::CoreMl),
            Self::OpenVino => matches!(provider, ExecutionProvider::Cpu | ExecutionProvider::OpenVino { .. }),
            Self::Gpu => matches!(
                provider,
                ExecutionProvider::Cpu | ExecutionProvider::Cuda { .. } | ExecutionProvider::TensorRt { .. }
            ),
        }
    }

    /// Folder where `cargo xtask provision-ort` unpacks this build: `$SDRT_ORT_DIR` (standard),
    /// `$SDRT_ORT_OPENVINO_DIR` or `$SDRT_ORT_GPU_DIR`, else `$XDG_CACHE_HOME/sdrt/<package>-<version>`, else
    /// `~/.cache/sdrt/<package>-<version>`.
    pub fn cache_dir(self) -> PathBuf {
        let override_variable = match self {
            Self::Standard => "SDRT_ORT_DIR",
            Self::OpenVino => "SDRT_ORT_OPENVINO_DIR",
            Self::Gpu => "SDRT_ORT_GPU_DIR",
        };
        if let Some(dir) = non_empty_env(override_variable) {
            return PathBuf::from(dir);
        }
        let cache_root = non_empty_env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| non_empty_env("HOME").map(|home| Path::new(&home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        cache_root.join("sdrt").join(format!("{}-{}", self.package(), self.version()))
    }

    /// The main library's file name.
    pub fn library_file_name(self) -> String {
        format!("libonnxruntime.so.{}", self.version())
    }

    /// The main library inside [`RuntimeBuild::cache_dir`].
    pub fn library_path(self) -> PathBuf {
        self.cache_dir().join(self.library_file_name())
    }

    /// A file that must sit beside the main library for this build to be the right one.
    fn companion_file(self) -> Option<&'static str> {
        match self {
            Self::Standard => None,
            Self::OpenVino => Some("libonnxruntime_providers_openvino.so"),
            Self::Gpu => Some("libonnxruntime_providers_cuda.so"),
        }
    }
}

impl std::fmt::Display for RuntimeBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ONNX Runtime {} ({})", self.version(), self.package())
    }
}

/// Folder of the standard build ([`RuntimeBuild::cache_dir`]).
pub fn ort_cache_dir() -> PathBuf {
    RuntimeBuild::Standard.cache_dir()
}

/// The standard build's library file inside [`ort_cache_dir`].
pub fn provisioned_library_path() -> PathBuf {
    RuntimeBuild::Standard.library_path()
}

/// Where the library was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLocation {
    /// The shared library file.
    pub path: PathBuf,
    /// `ORT_DYLIB_PATH`, `cache` or `python`.
    pub source: &'static str,
    /// The build searched for.
    pub build: RuntimeBuild,
}

/// The places searched for the library; [`RuntimeSearch::from_env`] is what sdrt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSearch {
    /// The build looked for.
    pub build: RuntimeBuild,
    /// `ORT_DYLIB_PATH`, when set and not empty.
    pub dylib_path: Option<PathBuf>,
    /// The provisioned cache folder.
    pub cache_dir: PathBuf,
    /// The Python interpreter asked for an installed `onnxruntime` package.
    pub python: PathBuf,
}

impl RuntimeSearch {
    /// The search sdrt performs for the standard build: `ORT_DYLIB_PATH`, [`ort_cache_dir`], then `python3`.
    pub fn from_env() -> Self {
        Self::for_build(RuntimeBuild::Standard)
    }

    /// The search sdrt performs for `build`.
    pub fn for_build(build: RuntimeBuild) -> Self {
        Self {
            build,
            dylib_path: non_empty_env("ORT_DYLIB_PATH").map(PathBuf::from),
            cache_dir: build.cache_dir(),
            python: PathBuf::from("python3"),
        }
    }

    /// Finds the library without loading it.
    pub fn locate(&self) -> Result<RuntimeLocation> {
        let build = self.build;
        let not_found = |searched: String| Error::RuntimeNotFound {
            wanted: build.to_string(),
            searched,
            command: build.provision_command(),
            cache: self.cache_dir.clone(),
            min_minor: MIN_ORT_MINOR,
        };
        if let Some(path) = &self.dylib_path {
            if path.is_file() {
                return Ok(RuntimeLocation { path: path.clone(), source: "ORT_DYLIB_PATH", build });
            }
            // An explicit choice that points nowhere is a mistake to report, not to paper over with another
            // library.
            return Err(not_found(format!(
                "ORT_DYLIB_PATH={} (no such file); unset ORT_DYLIB_PATH to use the provisioned library",
                path.display()
            )));
        }
        let mut searched = Vec::new();
        let cached = self.cache_dir.join(build.library_file_name());
        if cached.is_file() && build.companion_file().is_none_or(|name| self.cache_dir.join(name).is_file()) {
            return Ok(RuntimeLocation { path: cached, source: "cache", build });
        }
        searched.push(format!("{} (missing)", cached.display()));
        match python_onnxruntime_library(&self.python, build.companion_file()) {
            Some(path) => return Ok(RuntimeLocation { path, source: "python", build }),
            None => searched.push(format!("{} package `{}` (not installed)", self.python.display(), build.package())),
        }
        Err(not_found(searched.join("; ")))
    }
}

/// Finds the standard library without loading it, searching as [`RuntimeSearch::from_env`] says.
pub fn locate_runtime() -> Result<RuntimeLocation> {
    RuntimeSearch::from_env().locate()
}

/// Loads the standard ONNX Runtime once per process and returns where it came from.
///
/// Later calls return the first outcome: ONNX Runtime cannot be unloaded or swapped within a process.
pub fn ensure_runtime() -> Result<RuntimeLocation> {
    ensure_runtime_for(&ExecutionProvider::Cpu)
}

/// Loads the ONNX Runtime build `provider` needs, once per process; an error when the process already loaded
/// a build that cannot run it.
pub fn ensure_runtime_for(provider: &ExecutionProvider) -> Result<RuntimeLocation> {
    loaded_runtime(provider).map(|(location, _)| location.clone())
}

/// The process-wide ONNX Runtime environment that every session on `provider` is created in.
pub(crate) fn environment(provider: &ExecutionProvider) -> Result<&'static ort::environment::Environment> {
    loaded_runtime(provider).map(|(_, environment)| environment)
}

type Loaded = (RuntimeLocation, ort::environment::Environment);

fn loaded_runtime(provider: &ExecutionProvider) -> Result<&'static Loaded> {
    static LOADED: OnceLock<std::result::Result<Loaded, (RuntimeBuild, PathBuf, String)>> = OnceLock::new();
    let wanted = provider.runtime_build();
    let outcome = LOADED.get_or_init(|| {
        let location =
            RuntimeSearch::for_build(wanted).locate().map_err(|e| (wanted, PathBuf::new(), e.to_string()))?;
        let _span = tracing::info_span!("models::load_runtime", path = %location.path.display()).entered();
        let load_error = |e: &dyn std::fmt::Display| (wanted, location.path.clone(), e.to_string());
        let builder = ort::init_from(&location.path).map_err(|e| load_error(&e))?;
        let environment = builder.with_name("sdrt").build().map_err(|e| load_error(&e))?;
        tracing::info!(source = location.source, build = %wanted, "ONNX Runtime loaded");
        Ok((location, environment))
    });
    match outcome {
        Ok(loaded) if loaded.0.build.serves(provider) => Ok(loaded),
        Ok(loaded) => Err(Error::RuntimeMismatch {
            loaded: loaded.0.build.to_string(),
            provider: provider.to_string(),
            wanted: wanted.to_string(),
        }),
        Err((build, path, reason)) if path.as_os_str().is_empty() => {
            // Not found at all: rebuild the full "what to run" message.
            Err(RuntimeSearch::for_build(*build).locate().err().unwrap_or_else(|| Error::RuntimeLoad {
                path: path.clone(),
                reason: reason.clone(),
                command: build.provision_command(),
            }))
        }
        Err((build, path, reason)) => {
            Err(Error::RuntimeLoad { path: path.clone(), reason: reason.clone(), command: build.provision_command() })
        }
    }
}

fn python_onnxruntime_library(python: &Path, companion: Option<&str>) -> Option<PathBuf> {
    let script = "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let output = Command::new(python).args(["-c", script]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let capi = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    if companion.is_some_and(|name| !capi.join(name).is_file()) {
        return None;
    }
    let entries = std::fs::read_dir(&capi).ok()?;
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}
