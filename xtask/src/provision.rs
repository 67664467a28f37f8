//! `cargo xtask provision-ort [--openvino|--gpu]`: installs the pinned ONNX Runtime libraries from their PyPI wheels.
//!
//! The `ort` crate's own binary download cannot work offline; PyPI can. pip fetches one pinned wheel
//! (platform and Python tag fixed so the file and its sha256 never change), we verify it and unpack the
//! library into the cache folder that `sdrt-models` searches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sdrt_models::RuntimeBuild;
use sha2::{Digest, Sha256};

/// One pinned PyPI wheel and the libraries taken from it.
struct Wheel {
    build: RuntimeBuild,
    file: &'static str,
    sha256: &'static str,
    /// Files unpacked from the wheel's `onnxruntime/capi/`, with their sha256.
    libraries: &'static [(&'static str, &'static str)],
}

const STANDARD: Wheel = Wheel {
    build: RuntimeBuild::Standard,
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
    libraries: &[
        ("libonnxruntime.so.1.31.1", "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
        ("libonnxruntime_providers_shared.so", "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d"),
    ],
};

/// The CPU device only: the wheel's GPU and NPU plugins (24 MB) are left out.
const OPENVINO: Wheel = Wheel {
    build: RuntimeBuild::OpenVino,
    file: "onnxruntime_openvino-1.24.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "3007c803634cc69c6d52af1dea7ce729d9bb62b9a11070fd2f959119199007a8",
    libraries: &[
        ("libonnxruntime.so.1.24.1", "2d963a419b96018b79dfe63bb50120ddcb724149912a8a6d8ac747a557c089f4"),
        ("libonnxruntime_providers_shared.so", "5e02c1ff90e7d71365264dbb6767c00f04a8b57a96cddbc0085c61fa1393250d"),
        ("libonnxruntime_providers_openvino.so", "bf0159d2681d76e7de03fbd302a9204e5490f30816bd41826d57acf7a8dff363"),
        ("libopenvino.so.2541", "ac9634b715a242a61644c77bc38f17508fe73f517e418027e2410f4bee004943"),
        ("libopenvino_intel_cpu_plugin.so", "034df890550ae9199fe5f8608c0df8fd0fe355f303bad56bea10bae14c14c3cb"),
        ("libopenvino_onnx_frontend.so.2541", "f426710881d8c1a01d5ed6d7eaa076d923b19983d3ab3a18bb19d25dba7d8923"),
        ("libtbb.so.12", "6781dc6aa8b2ca237d0164258e70266a44667756c02a9a039782ec1d1a67b653"),
        ("libtbbmalloc.so", "d7166b1e54c17d8f25be63e22fc2366bbe7b1b8cc3a7ea629dea59caeba9c020"),
    ],
};

/// NVIDIA's build: the CUDA and TensorRT providers (CUDA 13). 255 MB to download, 314 MB unpacked, so only
/// `--gpu` fetches it; NVIDIA's own libraries (CUDA, cuDNN, TensorRT) are the user's, found at run time.
const GPU: Wheel = Wheel {
    build: RuntimeBuild::Gpu,
    file: "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6",
    libraries: &[
        ("libonnxruntime.so.1.31.1", "5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303"),
        ("libonnxruntime_providers_shared.so", "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d"),
        ("libonnxruntime_providers_cuda.so", "d5290158115fa5569a3fe8f1f4037ee9b0e86658a96e52f852bbb7039aa88137"),
        ("libonnxruntime_providers_tensorrt.so", "1882ee49fdb0e6fc2d272b00cfaf9a3310bf8580a34385c0eec4d82014ea172e"),
    ],
};

/// Makes sure the standard library is in its cache folder; returns its path. Does nothing when it already is.
pub(crate) fn provision() -> Result<PathBuf> {
    provision_wheel(&STANDARD)
}

/// The same for the OpenVINO build (`--openvino`).
pub(crate) fn provision_openvino() -> Result<PathBuf> {
    provision_wheel(&OPENVINO)
}

/// The same for NVIDIA's build (`--gpu`).
pub(crate) fn provision_gpu() -> Result<PathBuf> {
    provision_wheel(&GPU)
}

fn provision_wheel(wheel: &Wheel) -> Result<PathBuf> {
    let build = wheel.build;
    let dir = build.cache_dir();
    let library = build.library_path();
    if wheel.libraries.iter().all(|(name, sha)| file_sha256(&dir.join(name)).is_ok_and(|found| found == *sha)) {
        return Ok(library);
    }
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        bail!(
            "the pinned {} wheel is for Linux x86-64; on this platform install ONNX Runtime >= 1.{} yourself and \
             set ORT_DYLIB_PATH to its shared library",
            build.package(),
            sdrt_models::MIN_ORT_MINOR
        );
    }
    let download = tempdir_in(&dir)?;
    let file = download_wheel(wheel, &download)?;
    let sha = file_sha256(&file)?;
    if sha != wheel.sha256 {
        bail!("{} has sha256 {sha}, expected {}; refusing to install it", file.display(), wheel.sha256);
    }
    unpack_libraries(&file, wheel.libraries, &dir)?;
    std::fs::remove_dir_all(&download).ok();
    eprintln!("installed {build} into {}", dir.display());
    Ok(library)
}

fn download_wheel(wheel: &Wheel, into: &Path) -> Result<PathBuf> {
    let requirement = format!("{}=={}", wheel.build.package(), wheel.build.version());
    eprintln!("downloading the {requirement} wheel with pip (PyPI)…");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"])
        .arg(&requirement)
        .arg("--dest")
        .arg(into)
        .status()
        .context("running `python3 -m pip download` (install python3 and pip, e.g. `apt-get install python3-pip`)")?;
    if !status.success() {
        bail!("`python3 -m pip download {requirement}` failed ({status}); is PyPI reachable?");
    }
    let file = into.join(wheel.file);
    if !file.is_file() {
        bail!("pip did not produce {} in {}", wheel.file, into.display());
    }
    Ok(file)
}

fn unpack_libraries(wheel: &Path, libraries: &[(&str, &str)], dir: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?).context("opening the wheel")?;
    for (name, sha) in libraries {
        let mut entry =
            archive.by_name(&format!("onnxruntime/capi/{name}")).with_context(|| format!("{name} in the wheel"))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        let found = hex(&Sha256::digest(&bytes));
        if found != *sha {
            bail!("{name} in the wheel has sha256 {found}, expected {sha}");
        }
        // Write beside the target, then rename: a reader never sees half a library.
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, &bytes)?;
        std::fs::rename(&partial, dir.join(name))?;
    }
    Ok(())
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let download = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    Ok(download)
}

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes sure `redis-server` is on `PATH` (the scale-out tests start their own): installs the distribution's
/// package with apt when it is missing and this user may, else says what to run.
pub(crate) fn redis_server() -> Result<()> {
    let present = |program: &str| Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if present("redis-server") {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root || !present("apt-get") {
        bail!(
            "redis-server is not installed; install it (`sudo apt-get install redis-server`, or your distribution's package)"
        );
    }
    eprintln!("installing redis-server with apt-get (the scale-out tests start their own)…");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "redis-server"][..]] {
        let status = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status}); install redis-server yourself", args.join(" "));
        }
    }
    Ok(())
}
