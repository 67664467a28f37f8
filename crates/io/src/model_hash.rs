//! The `Model hash` sdrt writes into infotexts, for a checkpoint file or an ONNX model folder.
//!
//! A checkpoint file: the first 10 lower-case hex digits of the file's SHA-256, A1111's own hash. An ONNX
//! folder has no single checkpoint, so there it is the SHA-256 of `unet/model.onnx`, the file that
//! identifies the model. Hashes are cached in memory by path, size and modification time, so a multi-gigabyte
//! checkpoint is read once per process. Weights kept in external-data files
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
    let hash = sha256_file(&path)?;
    cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, hash.clone());
    Ok(hash)
}

type HashKey = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
static HASH_CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<HashKey, String>>> =
    std::sync::OnceLock::new();

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_error("opening", path))?;
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
    fn missing_unet_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = model_hash(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unet/model.onnx"), "{err}");
    }
}
