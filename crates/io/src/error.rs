//! The error type of sdrt-io: every variant names the file or stage and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", "renaming into place").
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Encoding an image failed.
    #[error("encoding {format}: {message}")]
    Encode {
        /// "PNG", "JPEG" or "WebP".
        format: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// Decoding an image or its metadata failed.
    #[error("decoding {format}: {message}")]
    Decode {
        /// "PNG", "JPEG", "WebP", "EXIF" or "image".
        format: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The pixel buffer does not match the stated size.
    #[error("image buffer holds {actual} bytes but {width}x{height} RGB8 needs {expected}; pass width*height*3 bytes")]
    BufferSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A caller-supplied argument is unusable.
    #[error("{field}: {message}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The model folder lacks the file its hash is defined over.
    #[error("model hash: {path} is missing; point at an ONNX model folder with unet/model.onnx")]
    MissingUnet {
        /// The expected UNet path.
        path: PathBuf,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { action, path, source }
}
