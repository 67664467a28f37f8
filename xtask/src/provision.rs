//! `cargo xtask provision-ort`: installs the pinned ONNX Runtime shared library from its PyPI wheel.
//!
//! The `ort` crate's own binary download cannot work offline; PyPI can. pip fetches one pinned wheel
//! (platform and Python tag fixed so the file and its sha256 never change), we verify it and unpack the
//! library into the cache folder that `sdrt-models` searches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const WHEEL: &str = "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
const WHEEL_SHA256: &str = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
/// Files unpacked from the wheel, with their sha256.
const LIBRARIES: &[(&str, &str)] = &[
    ("libonnxruntime.so.1.31.1", "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
    ("libonnxruntime_providers_shared.so", "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d"),
];

/// Makes sure the library is in the cache folder; returns its path. Does nothing when it already is.
pub(crate) fn provision() -> Result<PathBuf> {
    let dir = sdrt_models::ort_cache_dir();
    let library = sdrt_models::provisioned_library_path();
    if LIBRARIES.iter().all(|(name, sha)| file_sha256(&dir.join(name)).is_ok_and(|found| found == *sha)) {
        return Ok(library);
    }
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        bail!(
            "the pinned ONNX Runtime wheel is for Linux x86-64; on this platform install ONNX Runtime >= 1.{} \
             yourself and set ORT_DYLIB_PATH to its shared library",
            sdrt_models::MIN_ORT_MINOR
        );
    }
    let download = tempdir_in(&dir)?;
    let wheel = download_wheel(&download)?;
    let sha = file_sha256(&wheel)?;
    if sha != WHEEL_SHA256 {
        bail!("{} has sha256 {sha}, expected {WHEEL_SHA256}; refusing to install it", wheel.display());
    }
    unpack_libraries(&wheel, &dir)?;
    std::fs::remove_dir_all(&download).ok();
    eprintln!("installed ONNX Runtime {} into {}", sdrt_models::PROVISIONED_ORT_VERSION, dir.display());
    Ok(library)
}

fn download_wheel(into: &Path) -> Result<PathBuf> {
    let version = sdrt_models::PROVISIONED_ORT_VERSION;
    eprintln!("downloading the onnxruntime {version} wheel with pip (PyPI)…");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"])
        .arg(format!("onnxruntime=={version}"))
        .arg("--dest")
        .arg(into)
        .status()
        .context("running `python3 -m pip download` (install python3 and pip, e.g. `apt-get install python3-pip`)")?;
    if !status.success() {
        bail!("`python3 -m pip download onnxruntime=={version}` failed ({status}); is PyPI reachable?");
    }
    let wheel = into.join(WHEEL);
    if !wheel.is_file() {
        bail!("pip did not produce {WHEEL} in {}", into.display());
    }
    Ok(wheel)
}

fn unpack_libraries(wheel: &Path, dir: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?).context("opening the wheel")?;
    for (name, sha) in LIBRARIES {
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
