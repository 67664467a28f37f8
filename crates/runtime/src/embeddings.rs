//! Textual-inversion embeddings (`--embeddings-dir`, A1111's `embeddings/`): `.safetensors` files, and `.pt`/`.bin`
//! files through the models crate's restricted reader (nothing in them runs), named by their stem, read in
//! A1111's layouts (`string_to_param`; one tensor `[vectors, width]` or `[width]`; SDXL's `clip_l` + `clip_g`)
//! and kept for the models whose text encoders they fit (`modules/textual_inversion/textual_inversion.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::Array2;
use sdrt_processing::TextualInversion;

/// One embedding file.
#[derive(Debug, Clone)]
pub struct EmbeddingEntry {
    /// The name prompts use: the file name without its last extension.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Per text encoder (SDXL: `clip_l`, `clip_g`), `[vectors, width]`.
    pub vectors: Vec<Arc<Array2<f32>>>,
    /// First 12 hex digits of the file's SHA-256 (`TI hashes`).
    pub short_hash: String,
}

/// The embeddings of one folder (subfolders included).
#[derive(Debug, Default)]
pub struct EmbeddingLibrary {
    folders: Vec<PathBuf>,
    entries: Mutex<BTreeMap<String, EmbeddingEntry>>,
    /// `file (why)` for files that could not be read.
    problems: Mutex<Vec<String>>,
}

impl EmbeddingLibrary {
    /// A library over `folders`, read now.
    pub fn new(folders: Vec<PathBuf>) -> crate::Result<Self> {
        let library = Self { folders, ..Self::default() };
        library.refresh()?;
        Ok(library)
    }

    /// Reads the folders again (A1111's `refresh-embeddings`). A file that cannot be read is reported and
    /// left out, as A1111 reports it.
    pub fn refresh(&self) -> crate::Result<()> {
        let mut entries = BTreeMap::new();
        let mut problems = Vec::new();
        for folder in &self.folders {
            let files = crate::walk::files_under(folder, &|name| {
                let lower = name.to_ascii_lowercase();
                [".safetensors", ".pt", ".bin"].iter().any(|ext| lower.ends_with(ext))
            })?;
            for path in files {
                match read_embedding(&path) {
                    // A later file of the same name replaces the earlier one, as in A1111.
                    Ok(entry) => {
                        entries.insert(entry.name.clone(), entry);
                    }
                    Err(why) => problems.push(format!("{} ({why})", path.display())),
                }
            }
        }
        for problem in &problems {
            tracing::warn!("embedding left out: {problem}");
        }
        *self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = entries;
        *self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = problems;
        Ok(())
    }

    /// Every embedding, by name.
    pub fn list(&self) -> Vec<EmbeddingEntry> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    /// Files that could not be read, `file (why)`.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The embeddings whose widths match a model's text encoders (`widths`, SDXL: CLIP-L then CLIP-G), and
    /// the names of those that do not (A1111's `skipped_embeddings`).
    pub fn for_model(&self, widths: &[usize]) -> (Vec<TextualInversion>, Vec<String>) {
        let (mut fitting, mut skipped) = (Vec::new(), Vec::new());
        for entry in self.list() {
            let fits = entry.vectors.len() == widths.len()
                && entry.vectors.iter().zip(widths).all(|(vectors, &width)| vectors.ncols() == width);
            if fits {
                fitting.push(TextualInversion { name: entry.name, vectors: entry.vectors });
            } else {
                skipped.push(entry.name);
            }
        }
        (fitting, skipped)
    }

    /// The short hash of embedding `name`.
    pub(crate) fn short_hash(&self, name: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(name).map(|entry| entry.short_hash.clone())
    }
}

fn read_embedding(path: &Path) -> Result<EmbeddingEntry, String> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tensors = sdrt_models::read_tensors(path).map_err(|e| e.to_string())?;
    let matrix = |tensor: &sdrt_models::NamedTensor| -> Result<Arc<Array2<f32>>, String> {
        let (rows, width) = match tensor.shape.as_slice() {
            [width] => (1, *width),
            [rows, width] => (*rows, *width),
            other => return Err(format!("tensor {} has shape {other:?}; expected [vectors, width]", tensor.name)),
        };
        Array2::from_shape_vec((rows, width), tensor.values.clone()).map(Arc::new).map_err(|e| e.to_string())
    };
    let find = |key: &str| tensors.iter().find(|t| t.name == key);
    let params: Vec<&sdrt_models::NamedTensor> =
        tensors.iter().filter(|t| t.name.starts_with("string_to_param.")).collect();
    let vectors = match (params.as_slice(), find("clip_l"), find("clip_g"), tensors.as_slice()) {
        ([param], _, _, _) => vec![matrix(param)?],
        ([_, _, ..], _, _, _) => return Err("holds several string_to_param terms; A1111 reads one".to_owned()),
        (_, Some(l), Some(g), _) => vec![matrix(l)?, matrix(g)?],
        (_, _, _, [single]) => vec![matrix(single)?],
        _ => {
            let keys: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            return Err(format!("holds {keys:?}; an embedding is one tensor, or clip_l and clip_g (SDXL)"));
        }
    };
    let mut short_hash = sdrt_io::model_sha256(path).map_err(|e| e.to_string())?;
    short_hash.truncate(12);
    Ok(EmbeddingEntry { name, path: path.to_owned(), vectors, short_hash })
}
