//! The `Model hash` sdrt writes into infotexts for an ONNX model folder.
//!
//! Definition: the first 10 lower-case hex digits of the SHA-256 of `unet/model.onnx`, streamed from disk.
//! A1111 uses the first 10 hex digits of the checkpoint file's SHA-256; an ONNX folder has no single
//! checkpoint, and the UNet graph is the file that identifies the model. Weights kept in external-data files
//! beside it are not hashed, so two exports sharing a graph file but not weights would share a hash.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_error};

/// Hex digits A1111 shows as a model's short hash.
pub const SHORT_HASH_LEN: usize = 10;

/// Full lower-case hex SHA-256 of `unet/model.onnx` in `model_dir`, read in 1 MiB blocks.
pub fn model_sha256(model_dir: &Path) -> Result<String> {
    let _span = tracing::info_span!("io::model_hash", model = %model_dir.display()).entered();
    let path = model_dir.join("unet").join("model.onnx");
    if !path.is_file() {
        return Err(Error::MissingUnet { path });
    }
    let mut file = std::fs::File::open(&path).map_err(io_error("opening", &path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io_error("reading", &path))?;
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
    fn missing_unet_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = model_hash(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unet/model.onnx"), "{err}");
    }
}
