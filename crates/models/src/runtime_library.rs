//! Finding and loading the ONNX Runtime shared library (the `ort` crate is built with `load-dynamic`).
//!
//! Search order: `ORT_DYLIB_PATH`, the provisioned cache folder, an installed Python `onnxruntime` package.
//! `ort::init()` panics when the library is missing, so every path is checked and loaded with
//! `ort::init_from`, which returns an error instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The ONNX Runtime release that `cargo xtask provision-ort` installs.
pub const PROVISIONED_ORT_VERSION: &str = "1.31.1";
/// The lowest ONNX Runtime minor version the `ort` bindings accept (`api-30`).
pub const MIN_ORT_MINOR: u32 = 30;

/// Folder where `cargo xtask provision-ort` unpacks the library:
/// `$SDRT_ORT_DIR`, else `$XDG_CACHE_HOME/sdrt/onnxruntime-<version>`, else `~/.cache/sdrt/onnxruntime-<version>`.
pub fn ort_cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("SDRT_ORT_DIR") {
        return PathBuf::from(dir);
    }
    let cache_root = non_empty_env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty_env("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache_root.join("sdrt").join(format!("onnxruntime-{PROVISIONED_ORT_VERSION}"))
}

/// The library file inside [`ort_cache_dir`].
pub fn provisioned_library_path() -> PathBuf {
    ort_cache_dir().join(library_file_name())
}

/// Where the library was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLocation {
    /// The shared library file.
    pub path: PathBuf,
    /// `ORT_DYLIB_PATH`, `cache` or `python`.
    pub source: &'static str,
}

/// The places searched for the library; [`RuntimeSearch::from_env`] is what sdrt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSearch {
    /// `ORT_DYLIB_PATH`, when set and not empty.
    pub dylib_path: Option<PathBuf>,
    /// The provisioned cache folder.
    pub cache_dir: PathBuf,
    /// The Python interpreter asked for an installed `onnxruntime` package.
    pub python: PathBuf,
}

impl RuntimeSearch {
    /// The search sdrt performs: `ORT_DYLIB_PATH`, [`ort_cache_dir`], then `python3` on `PATH`.
    pub fn from_env() -> Self {
        Self {
            dylib_path: non_empty_env("ORT_DYLIB_PATH").map(PathBuf::from),
            cache_dir: ort_cache_dir(),
            python: PathBuf::from("python3"),
        }
    }

    /// Finds the library without loading it.
    pub fn locate(&self) -> Result<RuntimeLocation> {
        let mut searched = Vec::new();
        if let Some(path) = &self.dylib_path {
            if path.is_file() {
                return Ok(RuntimeLocation { path: path.clone(), source: "ORT_DYLIB_PATH" });
            }
            // An explicit choice that points nowhere is a mistake to report, not to paper over with another
            // library.
            return Err(Error::RuntimeNotFound {
                wanted: PROVISIONED_ORT_VERSION,
                searched: format!(
                    "ORT_DYLIB_PATH={} (no such file); unset ORT_DYLIB_PATH to use the provisioned library",
                    path.display()
                ),
                cache: self.cache_dir.clone(),
                min_minor: MIN_ORT_MINOR,
            });
        }
        let cached = self.cache_dir.join(library_file_name());
        if cached.is_file() {
            return Ok(RuntimeLocation { path: cached, source: "cache" });
        }
        searched.push(format!("{} (missing)", cached.display()));
        match python_onnxruntime_library(&self.python) {
            Some(path) => {
                return Ok(RuntimeLocation { path, source: "python" });
            }
            None => searched.push(format!("{} package `onnxruntime` (not installed)", self.python.display())),
        }
        Err(Error::RuntimeNotFound {
            wanted: PROVISIONED_ORT_VERSION,
            searched: searched.join("; "),
            cache: self.cache_dir.clone(),
            min_minor: MIN_ORT_MINOR,
        })
    }
}

/// Finds the library without loading it, searching as [`RuntimeSearch::from_env`] says.
pub fn locate_runtime() -> Result<RuntimeLocation> {
    RuntimeSearch::from_env().locate()
}

fn library_file_name() -> String {
    format!("libonnxruntime.so.{PROVISIONED_ORT_VERSION}")
}

/// Loads ONNX Runtime once per process and returns where it came from.
///
/// Later calls return the first outcome: ONNX Runtime cannot be unloaded or swapped within a process.
pub fn ensure_runtime() -> Result<RuntimeLocation> {
    loaded_runtime().map(|(location, _)| location.clone())
}

/// The process-wide ONNX Runtime environment that every session is created in.
pub(crate) fn environment() -> Result<&'static ort::environment::Environment> {
    loaded_runtime().map(|(_, environment)| environment)
}

type Loaded = (RuntimeLocation, ort::environment::Environment);

fn loaded_runtime() -> Result<&'static Loaded> {
    static LOADED: OnceLock<std::result::Result<Loaded, (PathBuf, String)>> = OnceLock::new();
    let outcome = LOADED.get_or_init(|| {
        let location = locate_runtime().map_err(|e| (PathBuf::new(), e.to_string()))?;
        let _span = tracing::info_span!("models::load_runtime", path = %location.path.display()).entered();
        let load_error = |e: &dyn std::fmt::Display| (location.path.clone(), e.to_string());
        let builder = ort::init_from(&location.path).map_err(|e| load_error(&e))?;
        let environment = builder.with_name("sdrt").build().map_err(|e| load_error(&e))?;
        tracing::info!(source = location.source, "ONNX Runtime loaded");
        Ok((location, environment))
    });
    outcome.as_ref().map_err(|(path, reason)| {
        if path.as_os_str().is_empty() {
            // Not found at all: rebuild the full "what to run" message.
            locate_runtime().err().unwrap_or_else(|| Error::RuntimeLoad { path: path.clone(), reason: reason.clone() })
        } else {
            Error::RuntimeLoad { path: path.clone(), reason: reason.clone() }
        }
    })
}

fn python_onnxruntime_library(python: &Path) -> Option<PathBuf> {
    let script = "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let output = Command::new(python).args(["-c", script]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let capi = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    let entries = std::fs::read_dir(&capi).ok()?;
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}
