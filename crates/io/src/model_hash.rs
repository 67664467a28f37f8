//! The `Model hash` sdrt writes into infotexts, for a checkpoint file or an ONNX model folder.
//!
//! A checkpoint file: the first 10 lower-case hex digits of the file's SHA-256, A1111's own hash. An ONNX
//! folder has no single checkpoint, so there it is the SHA-256 of `unet/model.onnx`, the file that
//! identifies the model. Hashes are cached by path, size and modification time: in memory, and for files of
//! 64 MiB or more also in `hashes.json` of sdrt's cache folder (`SDRT_CACHE_DIR`, else `$XDG_CACHE_HOME/sdrt`,
//! else `~/.cache/sdrt`), as A1111 keeps its `cache.json`, so a multi-gigabyte checkpoint is read once, not
//! once per start. Weights kept in external-data files
//! beside it are not hashed, so two exports sharing a graph file but not weights would share a hash.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_error};

/// Hex digits A1111 shows as a model's short hash.
pub const SHORT_HASH_LEN: usize = 10;

/// Full lower-case hex SHA-256 of the checkpoint file `model`, or of `unet/model.onnx` when `model` is a
/// folder, read in 1 MiB blocks.
pub fn model_sha256(model: &Path) -> Result<String> {
    let _span = tracing::info_span!("io::model_hash", model = %model.display()).entered();
    let path = if model.is_file() { model.to_owned() } else { model.join("unet").join("model.onnx") };
    if !path.is_file() {
        return Err(Error::MissingUnet { path });
    }
    let stamp = std::fs::metadata(&path).map_err(io_error("reading metadata of", &path))?;
    let key = (path.clone(), stamp.len(), stamp.modified().ok());
    let cache = HASH_CACHE.get_or_init(Default::default);
    if let Some(hash) = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
        return Ok(hash.clone());
    }
    let persisted = stamp.len() >= PERSIST_FROM_BYTES;
    // Nanoseconds as an integer: JSON floats would not round-trip exactly.
    let mtime = stamp
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    let disk_cache = disk_cache_path().filter(|_| persisted);
    let hash = match disk_cache.as_deref().and_then(|cache| disk_cache_lookup(cache, &path, stamp.len(), mtime)) {
        Some(hash) => hash,
        None => {
            let hash = sha256_file(&path)?;
            if let Some(cache) = &disk_cache {
                disk_cache_store(cache, &path, stamp.len(), mtime, &hash);
            }
            hash
        }
    };
    cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, hash.clone());
    Ok(hash)
}

/// Files this large have their hash kept on disk across runs.
const PERSIST_FROM_BYTES: u64 = 64 << 20;

fn disk_cache_path() -> Option<std::path::PathBuf> {
    Some(cache_dir()?.join("hashes.json"))
}

/// sdrt's cache folder: `SDRT_CACHE_DIR`, else `$XDG_CACHE_HOME/sdrt`, else `~/.cache/sdrt`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("SDRT_CACHE_DIR").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
            .map(|c| c.join("sdrt"))
    })
}

fn read_disk_cache(file: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

fn disk_cache_lookup(file: &Path, path: &Path, size: u64, mtime: Option<u64>) -> Option<String> {
    let cache = read_disk_cache(file);
    let entry = cache.get(&path.canonicalize().ok()?.display().to_string())?;
    let fresh = entry["size"].as_u64() == Some(size) && entry["mtime_ns"].as_u64() == mtime;
    fresh.then(|| entry["sha256"].as_str().map(str::to_owned)).flatten()
}

/// Best effort: a cache that cannot be written costs a re-hash next time, nothing else.
fn disk_cache_store(file: &Path, path: &Path, size: u64, mtime: Option<u64>, hash: &str) {
    let Ok(key) = path.canonicalize() else { return };
    let mut cache = read_disk_cache(file);
    cache.insert(key.display().to_string(), serde_json::json!({"size": size, "mtime_ns": mtime, "sha256": hash}));
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(file, serde_json::to_vec_pretty(&cache).unwrap_or_default()));
    if let Err(e) = written {
        tracing::warn!(cache = %file.display(), "could not keep the model hash: {e}");
    }
}

type HashKey = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
static HASH_CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<HashKey, String>>> =
    std::sync::OnceLock::new();

fn sha256_file(path: &Path) -> Result<String> {
    sha256_from(path, 0)
}

/// A1111's "addnet" hash of a `.safetensors` network (`hashes.addnet_hash_safetensors`): the SHA-256 of the file
/// after its header (the tensor data only), so editing the metadata keeps the hash. `Lora hashes` shows its
/// first [`NETWORK_SHORT_HASH_LEN`] digits.
pub fn addnet_hash(path: &Path) -> Result<String> {
    let mut length = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(io_error("opening", path))?;
    file.read_exact(&mut length).map_err(io_error("reading the header of", path))?;
    let header = u64::from_le_bytes(length);
    sha256_from(path, header.saturating_add(8))
}

/// Hex digits A1111 shows of a network's hash (`shorthash`).
pub const NETWORK_SHORT_HASH_LEN: usize = 12;

fn sha256_from(path: &Path, offset: u64) -> Result<String> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path).map_err(io_error("opening", path))?;
    file.seek(std::io::SeekFrom::Start(offset)).map_err(io_error("seeking in", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io_error("reading", path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The infotext `Model hash`: the first [`SHORT_HASH_LEN`] hex digits of [`model_sha256`].
pub fn model_hash(model_dir: &Path) -> Result<String> {
    let mut full = model_sha256(model_dir)?;
    full.truncate(SHORT_HASH_LEN);
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_first_ten_hex_digits_of_unet_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("unet")).unwrap();
        std::fs::write(dir.path().join("unet/model.onnx"), b"abc").unwrap();
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(model_hash(dir.path()).unwrap(), "ba7816bf8f");
        assert!(model_sha256(dir.path()).unwrap().ends_with("f20015ad"));
    }

    #[test]
    fn a_checkpoint_file_is_hashed_whole_like_a1111() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(model_hash(&file).unwrap(), "ba7816bf8f");
    }

    #[test]
    fn the_disk_cache_answers_for_an_unchanged_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, file) = (dir.path().join("hashes.json"), dir.path().join("model.safetensors"));
        std::fs::write(&file, b"abc").unwrap();
        let stamp = std::fs::metadata(&file).unwrap();
        let mtime = stamp.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        disk_cache_store(&cache, &file, 3, Some(mtime), "cached");
        assert_eq!(disk_cache_lookup(&cache, &file, 3, Some(mtime)).as_deref(), Some("cached"));
        assert_eq!(disk_cache_lookup(&cache, &file, 4, Some(mtime)), None, "another size");
        assert_eq!(disk_cache_lookup(&cache, &file, 3, Some(mtime + 1)), None, "another mtime");
    }

    #[test]
    fn missing_unet_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = model_hash(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unet/model.onnx"), "{err}");
    }
}
