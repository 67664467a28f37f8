//! Finding NVIDIA's libraries for the CUDA and TensorRT providers (driver, CUDA 13, cuBLAS, cuRAND, cuDNN 9,
//! TensorRT 10) and loading them before ONNX Runtime's provider library asks for them.
//!
//! `libonnxruntime_providers_cuda.so` names its CUDA libraries by soname and opens cuDNN when a kernel first
//! needs it, so they must be on the loader's path or already in the process. Users have them in three places:
//! the system (CUDA toolkit, distribution packages), `LD_LIBRARY_PATH`, or the `nvidia-*` PyPI packages that
//! PyTorch installs (`site-packages/nvidia/*/lib`, which no loader searches). sdrt looks in all three, reports
//! every missing piece with its fix in one message, and opens what it found by full path with `RTLD_GLOBAL`
//! (what `onnxruntime.preload_dlls()` does in Python): a later request for the same soname is then served from
//! the process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::options::ExecutionProvider;

/// The CUDA major version the provisioned `onnxruntime-gpu` wheel is built against.
pub const CUDA_MAJOR: u32 = 13;
/// The oldest Linux driver branch that runs CUDA 13.0 (NVIDIA's CUDA 13.0 release notes).
pub const MIN_DRIVER_MAJOR: u32 = 580;

/// One library a provider needs: its soname, what it is, and how a user gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvidiaLibrary {
    /// The file name the provider asks the loader for.
    pub soname: &'static str,
    /// What it is, for people.
    pub what: &'static str,
    /// How to install it.
    pub fix: &'static str,
}

const DRIVER: NvidiaLibrary = NvidiaLibrary {
    soname: "libcuda.so.1",
    what: "the NVIDIA driver's CUDA library",
    fix: "install the NVIDIA driver (580 or newer) for this GPU",
};

/// What the CUDA provider needs besides the driver, in the order they are opened (dependencies first).
const CUDA_LIBRARIES: &[NvidiaLibrary] = &[
    NvidiaLibrary {
        soname: "libcudart.so.13",
        what: "CUDA 13 runtime",
        fix: "`pip install nvidia-cuda-runtime~=13.0` or the CUDA 13 toolkit",
    },
    NvidiaLibrary {
        soname: "libcublasLt.so.13",
        what: "cuBLASLt 13",
        fix: "`pip install nvidia-cublas~=13.0` or the CUDA 13 toolkit",
    },
    NvidiaLibrary {
        soname: "libcublas.so.13",
        what: "cuBLAS 13",
        fix: "`pip install nvidia-cublas~=13.0` or the CUDA 13 toolkit",
    },
    NvidiaLibrary {
        soname: "libcurand.so.10",
        what: "cuRAND 10",
        fix: "`pip install nvidia-curand~=10.0` or the CUDA 13 toolkit",
    },
    NvidiaLibrary {
        soname: "libcudnn.so.9",
        what: "cuDNN 9 for CUDA 13 (the UNet's and VAE's convolutions)",
        fix: "`pip install nvidia-cudnn-cu13~=9.0` or NVIDIA's cuDNN 9 package for CUDA 13",
    },
];

/// What the TensorRT provider needs on top of the CUDA provider's libraries.
const TENSORRT_LIBRARIES: &[NvidiaLibrary] = &[
    NvidiaLibrary {
        soname: "libnvinfer.so.10",
        what: "TensorRT 10",
        fix: "`pip install tensorrt-cu13-libs` or NVIDIA's TensorRT 10 package for CUDA 13",
    },
    NvidiaLibrary {
        soname: "libnvonnxparser.so.10",
        what: "TensorRT 10's ONNX parser",
        fix: "`pip install tensorrt-cu13-libs` or NVIDIA's TensorRT 10 package for CUDA 13",
    },
];

/// The loaded NVIDIA kernel driver, from `/proc/driver/nvidia/version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvidiaDriver {
    /// The full version, e.g. `580.65.06`.
    pub version: String,
    /// Its major number (the branch).
    pub major: u32,
}

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLibrary {
    /// The library looked for.
    pub library: NvidiaLibrary,
    /// Its file, and where the search found it (`LD_LIBRARY_PATH`, `python nvidia-* package`, `ldconfig` or
    /// `system folder`); `None` when it is nowhere.
    pub location: Option<(PathBuf, &'static str)>,
}

/// The outcome of a search: the driver and every library, found or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaReport {
    /// The driver, or why there is none.
    pub driver: std::result::Result<NvidiaDriver, String>,
    /// Each library the provider needs, the driver's own first.
    pub libraries: Vec<FoundLibrary>,
}

impl CudaReport {
    /// Every reason the provider cannot start here, each naming what is missing and how to fix it; empty when
    /// nothing is missing.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.driver {
            Err(reason) => problems.push(reason.clone()),
            Ok(driver) if driver.major < MIN_DRIVER_MAJOR => problems.push(format!(
                "the NVIDIA driver {} is too old for CUDA {CUDA_MAJOR} (needs {MIN_DRIVER_MAJOR} or newer); update \
                 the driver",
                driver.version
            )),
            Ok(_) => {}
        }
        for found in self.libraries.iter().filter(|found| found.location.is_none()) {
            let NvidiaLibrary { soname, what, fix } = found.library;
            problems.push(format!("{soname} ({what}) is not installed: {fix}"));
        }
        problems
    }
}

/// The places searched for NVIDIA's libraries; [`CudaSearch::from_env`] is what sdrt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaSearch {
    /// `LD_LIBRARY_PATH`'s folders, searched first.
    pub ld_library_path: Vec<PathBuf>,
    /// The interpreter asked where the `nvidia` namespace package (PyTorch's CUDA wheels) lives; `None` skips it.
    pub python: Option<PathBuf>,
    /// Ask `ldconfig -p` (the system loader's cache).
    pub ldconfig: bool,
    /// Folders searched last (CUDA toolkit and distribution folders).
    pub system_dirs: Vec<PathBuf>,
    /// The file the loaded NVIDIA kernel module writes its version to.
    pub driver_version_file: PathBuf,
}

impl CudaSearch {
    /// This machine's search: `LD_LIBRARY_PATH`, `python3`'s `nvidia-*` packages, `ldconfig -p`, then the CUDA
    /// toolkit's and the distribution's library folders.
    pub fn from_env() -> Self {
        let ld_library_path = std::env::var_os("LD_LIBRARY_PATH")
            .map(|paths| std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        let system_dirs = [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/lib/wsl/lib",
        ];
        Self {
            ld_library_path,
            python: Some(PathBuf::from("python3")),
            ldconfig: true,
            system_dirs: system_dirs.iter().map(PathBuf::from).collect(),
            driver_version_file: PathBuf::from("/proc/driver/nvidia/version"),
        }
    }

    /// Looks for the driver and every library `provider` needs (nothing for providers other than CUDA and
    /// TensorRT).
    pub fn report(&self, provider: &ExecutionProvider) -> CudaReport {
        let mut wanted = vec![DRIVER];
        match provider {
            ExecutionProvider::Cuda { .. } => wanted.extend_from_slice(CUDA_LIBRARIES),
            ExecutionProvider::TensorRt { .. } => {
                wanted.extend_from_slice(CUDA_LIBRARIES);
                wanted.extend_from_slice(TENSORRT_LIBRARIES);
            }
            _ => return CudaReport { driver: Err("not an NVIDIA provider".to_owned()), libraries: Vec::new() },
        }
        let folders = self.folders();
        let cache = if self.ldconfig { ldconfig_cache() } else { Vec::new() };
        let libraries = wanted
            .into_iter()
            .map(|library| {
                let in_folders =
                    folders.iter().map(|(dir, source)| (dir.join(library.soname), *source)).find(|(p, _)| p.is_file());
                let in_cache = || {
                    cache
                        .iter()
                        .find(|(name, path)| name == library.soname && path.is_file())
                        .map(|(_, path)| (path.clone(), "ldconfig"))
                };
                FoundLibrary { library, location: in_folders.or_else(in_cache) }
            })
            .collect();
        CudaReport { driver: self.driver(), libraries }
    }

    fn folders(&self) -> Vec<(PathBuf, &'static str)> {
        let mut folders: Vec<(PathBuf, &'static str)> =
            self.ld_library_path.iter().map(|dir| (dir.clone(), "LD_LIBRARY_PATH")).collect();
        if let Some(python) = &self.python {
            folders.extend(python_nvidia_lib_dirs(python).into_iter().map(|dir| (dir, "python nvidia-* package")));
        }
        folders.extend(self.system_dirs.iter().map(|dir| (dir.clone(), "system folder")));
        folders
    }

    fn driver(&self) -> std::result::Result<NvidiaDriver, String> {
        let text = std::fs::read_to_string(&self.driver_version_file).map_err(|_| {
            format!(
                "no NVIDIA GPU driver is loaded ({} is missing): this machine has no NVIDIA GPU, or its driver is \
                 not installed; use --provider cpu here",
                self.driver_version_file.display()
            )
        })?;
        parse_driver_version(&text).ok_or_else(|| {
            format!("{} does not name a driver version: {:?}", self.driver_version_file.display(), text.trim())
        })
    }
}

/// The version in `/proc/driver/nvidia/version`'s first line (`NVRM version: NVIDIA UNIX x86_64 Kernel Module
/// 580.65.06  Sun Jul ...`; open kernel modules say `Open Kernel Module for x86_64  580.65.06`).
fn parse_driver_version(text: &str) -> Option<NvidiaDriver> {
    let first_line = text.lines().next()?;
    let version = first_line.split_whitespace().find(|word| {
        let mut parts = word.split('.');
        parts.next().is_some_and(|major| major.len() >= 3 && major.parse::<u32>().is_ok())
            && parts.next().is_some_and(|minor| minor.parse::<u32>().is_ok())
    })?;
    let major = version.split('.').next()?.parse().ok()?;
    Some(NvidiaDriver { version: version.to_owned(), major })
}

/// `site-packages/nvidia/*/lib` for every folder of the `nvidia` namespace package `python` sees.
fn python_nvidia_lib_dirs(python: &Path) -> Vec<PathBuf> {
    let script = "import nvidia\nfor p in nvidia.__path__: print(p)";
    let Ok(output) = Command::new(python).args(["-c", script]).output() else { return Vec::new() };
    if !output.status.success() {
        return Vec::new();
    }
    let roots = String::from_utf8_lossy(&output.stdout).lines().map(PathBuf::from).collect::<Vec<_>>();
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        let mut found: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path().join("lib")).filter(|lib| lib.is_dir()).collect();
        found.sort();
        dirs.extend(found);
    }
    dirs
}

/// `(soname, path)` pairs from `ldconfig -p`; empty when it cannot run.
fn ldconfig_cache() -> Vec<(String, PathBuf)> {
    let output = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|program| Command::new(program).arg("-p").output().ok().filter(|o| o.status.success()));
    let Some(output) = output else { return Vec::new() };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, path) = line.trim().split_once(" => ")?;
            let name = name.split_whitespace().next()?;
            Some((name.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

/// Makes sure `provider`'s NVIDIA libraries are present and loaded, once per process; an error naming every
/// missing piece (and its fix) otherwise. Does nothing for other providers.
pub(crate) fn prepare_nvidia_libraries(provider: &ExecutionProvider) -> Result<()> {
    if !matches!(provider, ExecutionProvider::Cuda { .. } | ExecutionProvider::TensorRt { .. }) {
        return Ok(());
    }
    // One outcome per provider kind: TensorRT needs more libraries than CUDA.
    static PREPARED: [OnceLock<std::result::Result<(), Vec<String>>>; 2] = [OnceLock::new(), OnceLock::new()];
    let kind = usize::from(matches!(provider, ExecutionProvider::TensorRt { .. }));
    let outcome = PREPARED[kind].get_or_init(|| {
        let report = CudaSearch::from_env().report(provider);
        let problems = report.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let _span = tracing::info_span!("models::load_nvidia_libraries").entered();
        for found in &report.libraries {
            if let Some((path, source)) = &found.location {
                open_globally(path)
                    .map_err(|reason| vec![format!("{} could not be loaded: {reason}", path.display())])?;
                tracing::info!(library = found.library.soname, source, path = %path.display(), "loaded");
                if found.library.soname.starts_with("libcudnn.so") {
                    open_cudnn_parts(path);
                }
            }
        }
        Ok(())
    });
    outcome
        .clone()
        .map_err(|problems| Error::NvidiaLibraries { provider: provider.to_string(), problems: problems.join("; ") })
}

/// cuDNN 9 opens its engine libraries (`libcudnn_graph.so.9`, `libcudnn_ops.so.9`, …) by soname when first used;
/// from a pip package's folder the loader would not find them, so they are opened here too. Their order of
/// dependence is not fixed across releases: retry until a pass opens nothing new.
fn open_cudnn_parts(main: &Path) {
    let Some(dir) = main.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut pending: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcudnn_") && n.ends_with(".so.9"))
        })
        .collect();
    pending.sort();
    loop {
        let before = pending.len();
        pending.retain(|path| open_globally(path).is_err());
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    for path in pending {
        tracing::warn!(path = %path.display(), "a cuDNN part could not be loaded; kernels needing it will fail");
    }
}

/// Opens `path` with `RTLD_NOW | RTLD_GLOBAL` and keeps it loaded for the life of the process.
#[allow(unsafe_code)]
fn open_globally(path: &Path) -> std::result::Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: opening a library runs its initialisers. These are NVIDIA's own CUDA/cuDNN/TensorRT libraries,
    // which ONNX Runtime's provider would open itself a moment later; nothing is called through the handle, and
    // it is never closed (forgotten), so no symbol outlives its library.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(library);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search_in(root: &Path, driver: Option<&str>) -> CudaSearch {
        let version_file = root.join("driver-version");
        if let Some(text) = driver {
            std::fs::write(&version_file, text).unwrap();
        }
        CudaSearch {
            ld_library_path: vec![root.join("ld")],
            python: None,
            ldconfig: false,
            system_dirs: vec![root.join("system")],
            driver_version_file: version_file,
        }
    }

    fn touch(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), b"").unwrap();
    }

    const DRIVER_580: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n";
    const CUDA: ExecutionProvider = ExecutionProvider::Cuda { device_id: 0 };

    #[test]
    fn driver_versions_are_read_from_both_kernel_module_spellings() {
        let open = parse_driver_version(DRIVER_580).unwrap();
        assert_eq!((open.version.as_str(), open.major), ("580.65.06", 580));
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024";
        assert_eq!(parse_driver_version(proprietary).unwrap().major, 550);
        assert_eq!(parse_driver_version("garbage"), None);
    }

    #[test]
    fn a_machine_without_a_gpu_is_told_so_and_every_missing_library_is_named_with_its_fix() {
        let root = tempfile::tempdir().unwrap();
        let problems = search_in(root.path(), None).report(&CUDA).problems();
        assert!(problems[0].contains("no NVIDIA GPU driver is loaded"), "{problems:?}");
        for soname in ["libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcudnn.so.9"] {
            assert!(problems.iter().any(|p| p.starts_with(soname) && p.contains("install")), "{soname}: {problems:?}");
        }
        assert!(!problems.iter().any(|p| p.contains("libnvinfer")), "TensorRT is not asked of CUDA: {problems:?}");
    }

    #[test]
    fn libraries_are_found_in_ld_library_path_before_system_folders_and_an_old_driver_is_refused() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("system"), "libcuda.so.1");
        for library in CUDA_LIBRARIES {
            touch(&root.path().join("system"), library.soname);
        }
        touch(&root.path().join("ld"), "libcudnn.so.9");
        let report = search_in(root.path(), Some(DRIVER_580)).report(&CUDA);
        assert_eq!(report.problems(), Vec::<String>::new());
        let cudnn = report.libraries.iter().find(|f| f.library.soname == "libcudnn.so.9").unwrap();
        assert_eq!(cudnn.location, Some((root.path().join("ld").join("libcudnn.so.9"), "LD_LIBRARY_PATH")));

        let old = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 2024\n";
        let problems = search_in(root.path(), Some(old)).report(&CUDA).problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("550.54.14 is too old") && problems[0].contains("580"), "{problems:?}");

        let tensorrt = search_in(root.path(), Some(DRIVER_580)).report(&ExecutionProvider::TensorRt { device_id: 0 });
        let problems = tensorrt.problems();
        assert!(problems.len() == 2 && problems[0].starts_with("libnvinfer.so.10"), "{problems:?}");
    }
}
