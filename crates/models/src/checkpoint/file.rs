//! A `.safetensors` file: memory-mapped once to check its header against the file size, then known by its
//! tensor table. Graphs refer to tensors by byte range (ONNX Runtime reads them from the file itself); the few
//! values sdrt needs on the host are read with positional reads.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// One tensor's place in the file.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file.
    pub start: usize,
    pub end: usize,
}

/// An open `.safetensors` file.
pub(crate) struct TensorFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorEntry>,
    /// The header's `__metadata__` (training tags such as kohya's `ss_output_name`).
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

/// Pickle-based formats sdrt refuses to open, by extension.
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin"];

impl TensorFile {
    /// Maps `path` and validates its header: the JSON header must fit in the file and every tensor's byte
    /// range must lie inside the data section and match its dtype and shape.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        refuse_pickle(path)?;
        let file = File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
        let length = file.metadata().map_err(|e| file_error(path, e.to_string()))?.len();
        if length < 8 {
            return Err(file_error(path, format!("is {length} bytes long, too short for a .safetensors header")));
        }
        let mmap = map(&file).map_err(|e| file_error(path, format!("cannot map the file: {e}")))?;
        if looks_like_pickle(&mmap) {
            return Err(pickle_error(path));
        }
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            let declared = u64::from_le_bytes(mmap[..8].try_into().unwrap_or([0; 8]));
            file_error(
                path,
                format!("not a valid .safetensors file ({e}; header length field {declared}, file size {length})"),
            )
        })?;
        let data_start = 8 + header_len;
        let text_metadata: BTreeMap<String, String> =
            metadata.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (begin, end) = info.data_offsets;
                let entry = TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + begin,
                    end: data_start + end,
                };
                (name, entry)
            })
            .collect::<BTreeMap<_, _>>();
        for (name, entry) in &tensors {
            if entry.end > mmap.len() || entry.start > entry.end {
                return Err(Error::Checkpoint {
                    path: path.to_owned(),
                    tensor: name.clone(),
                    problem: format!("data range {}..{} lies outside the {length}-byte file", entry.start, entry.end),
                });
            }
        }
        // The mapping only served the check; tensors are read by range later, so no mapped pages stay resident.
        drop(mmap);
        Ok(Self { path: path.to_owned(), tensors, metadata: text_metadata })
    }

    /// The header's `__metadata__` strings.
    pub(crate) fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Tensor `name` converted to f32 (from f32, f16, bf16 or f64), with its shape.
    pub(crate) fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let entry = self.entry(name).ok_or_else(|| self.tensor_error(name, "is missing".to_owned()))?;
        let bytes = self
            .read_range(entry.start, entry.end)
            .map_err(|e| self.tensor_error(name, format!("cannot be read: {e}")))?;
        let bytes = bytes.as_slice();
        let values = match entry.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
            }
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::F64 => {
                bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            other => {
                return Err(
                    self.tensor_error(name, format!("has dtype {other:?}; expected a float tensor (F32, F16, BF16)"))
                );
            }
        };
        Ok((entry.shape.clone(), values))
    }

    fn read_range(&self, start: usize, end: usize) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(end - start);
        self.copy_range(start, end, &mut bytes)?;
        Ok(bytes)
    }

    /// Copies byte range `start..end` of the file into `out` (for `sdrt convert`).
    pub(crate) fn copy_range(&self, start: usize, end: usize, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use std::io::{Read, Seek};
        let mut file = File::open(&self.path)?;
        file.seek(std::io::SeekFrom::Start(start as u64))?;
        std::io::copy(&mut file.take((end - start) as u64), out)?;
        Ok(())
    }

    pub(crate) fn tensor_error(&self, name: &str, problem: String) -> Error {
        Error::Checkpoint { path: self.path.clone(), tensor: name.to_owned(), problem }
    }

    pub(crate) fn file_error(&self, problem: String) -> Error {
        file_error(&self.path, problem)
    }
}

#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private to this process. Another process truncating the file while
    // it is mapped could fault; every safetensors loader (PyTorch's included) accepts the same risk for
    // zero-copy reads of multi-gigabyte checkpoints.
    unsafe { Mmap::map(file) }
}

fn file_error(path: &Path, problem: String) -> Error {
    Error::Checkpoint { path: path.to_owned(), tensor: String::new(), problem }
}

fn refuse_pickle(path: &Path) -> Result<()> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension {
        Some(ext) if PICKLE_EXTENSIONS.contains(&ext.as_str()) => Err(pickle_error(path)),
        _ => Ok(()),
    }
}

/// A zip archive (PyTorch ≥ 1.6 `torch.save`) or a raw pickle stream (protocol 2–5).
fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || (bytes.len() > 1 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]))
}

fn pickle_error(path: &Path) -> Error {
    file_error(
        path,
        "is a PyTorch pickle checkpoint (.ckpt/.pt). sdrt never loads pickles: unpickling runs code from the \
         file. Convert it once to .safetensors, e.g. `python -c \"import torch, safetensors.torch as s; \
         d = torch.load('IN.ckpt', map_location='cpu', weights_only=True); s.save_file({k: v.contiguous() for \
         k, v in d.get('state_dict', d).items() if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"`, or \
         download the .safetensors release of the model"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A valid two-tensor file: `a` f32 [2, 2], `b` f16 [3].
    fn valid_file() -> Vec<u8> {
        let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend((0u8..22).collect::<Vec<_>>());
        bytes
    }

    /// The file (tensors are read from disk, so its folder lives as long as it) with every tensor read once.
    fn open_bytes(bytes: &[u8]) -> Result<(tempfile::TempDir, TensorFile)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).expect("write");
        let file = TensorFile::open(&path)?;
        for name in file.names().map(str::to_owned).collect::<Vec<_>>() {
            let _ = file.f32(&name)?;
        }
        Ok((dir, file))
    }

    #[test]
    fn a_valid_file_reads_every_dtype() {
        let (_dir, file) = open_bytes(&valid_file()).expect("valid");
        assert_eq!(file.f32("a").expect("a").0, vec![2, 2]);
        assert_eq!(file.f32("b").expect("b").1.len(), 3);
    }

    #[test]
    fn pickles_are_refused_by_extension_and_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"\x80\x02}q\x00(X\x04\x00\x00\x00name").expect("write");
        let message = TensorFile::open(&path).expect_err("pickle").to_string();
        assert!(message.contains("pickle"), "{message}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any corruption of the header or a truncation is an error (or, by chance, a still-valid file); never
        /// a panic or an out-of-bounds read.
        #[test]
        fn corrupted_headers_never_panic(position in 0usize..130, value in any::<u8>(), cut in 0usize..160) {
            let mut bytes = valid_file();
            let index = position % bytes.len();
            bytes[index] = value;
            bytes.truncate(cut.max(1).min(bytes.len()));
            let _ = open_bytes(&bytes);
        }
    }
}
