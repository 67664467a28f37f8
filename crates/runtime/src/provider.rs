//! The model provider: resolves a model by registered name or folder path, loads it once, keeps the one
//! in use resident (as A1111 keeps one checkpoint loaded), switches and unloads on request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sdrt_models::{CheckpointOptions, LoadedModel, ModelFolder, SessionConfig};

use crate::error::{Error, Result};

/// A loaded model shared between the provider and the jobs using it.
pub type SharedModel = Arc<Mutex<LoadedModel>>;

/// What the provider knows about the resident model.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    /// The loaded model; lock it for the length of a generation.
    pub model: SharedModel,
    /// Folder name (A1111's "Model" infotext value).
    pub name: String,
    /// `Model hash` (first 10 hex digits of unet/model.onnx's SHA-256).
    pub hash: String,
    /// The folder.
    pub path: PathBuf,
    /// Time the load took (zero when it was already resident).
    pub load_time: Duration,
}

/// Loads and caches models.
#[derive(Debug)]
pub struct ModelProvider {
    config: SessionConfig,
    checkpoint_options: CheckpointOptions,
    names: BTreeMap<String, PathBuf>,
    resident: Mutex<Option<ModelHandle>>,
    loads: AtomicUsize,
}

impl ModelProvider {
    /// A provider whose sessions use `config`.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            checkpoint_options: CheckpointOptions::default(),
            names: BTreeMap::new(),
            resident: Mutex::new(None),
            loads: AtomicUsize::new(0),
        }
    }

    /// Checkpoints are opened with `options` (the `--prediction` override).
    pub fn with_checkpoint_options(mut self, options: CheckpointOptions) -> Self {
        self.checkpoint_options = options;
        self
    }

    /// Registers `path` under `name`, so requests may name it.
    pub fn register(&mut self, name: impl Into<String>, path: impl Into<PathBuf>) {
        self.names.insert(name.into(), path.into());
    }

    /// Registers the models in `dir`, laid out like A1111's `models/Stable-diffusion` (subfolders included):
    /// every ONNX model folder (holding `model_index.json`) by its folder path relative to `dir`, and every
    /// `.safetensors` checkpoint by its relative path without the extension (A1111's `model_name`); `*.vae.*`
    /// files are VAEs, not models. Returns the names.
    pub fn register_folder_of_models(&mut self, dir: &Path) -> Result<Vec<String>> {
        let mut found = Vec::new();
        self.register_tree(dir, dir, 0, &mut found)?;
        found.sort();
        Ok(found)
    }

    fn register_tree(&mut self, root: &Path, dir: &Path, depth: usize, found: &mut Vec<String>) -> Result<()> {
        const MAX_DEPTH: usize = 8;
        let entries =
            std::fs::read_dir(dir).map_err(|source| Error::ModelDirectory { path: dir.to_owned(), source })?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if path.join("model_index.json").is_file() {
                self.register(relative.clone(), path);
                found.push(relative);
            } else if path.is_dir() && depth < MAX_DEPTH {
                self.register_tree(root, &path, depth + 1, found)?;
            } else if is_model_checkpoint(&path) {
                let name = relative.strip_suffix(".safetensors").unwrap_or(&relative).to_owned();
                self.register(name.clone(), path);
                found.push(name);
            }
        }
        Ok(())
    }

    /// Registered names and their folders.
    pub fn registered(&self) -> &BTreeMap<String, PathBuf> {
        &self.names
    }

    /// The session configuration models are loaded with.
    pub fn session_config(&self) -> &SessionConfig {
        &self.config
    }

    /// How many loads from disk happened (cache misses).
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// The folder a request's model string means: a registered name, else a path.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        if let Some(path) = self.names.get(name_or_path) {
            return Ok(path.clone());
        }
        let path = PathBuf::from(name_or_path);
        if path.is_dir() || sdrt_models::is_checkpoint_file(&path) {
            return Ok(path);
        }
        Err(Error::UnknownModel {
            name: name_or_path.to_owned(),
            known: self.names.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The model for `name_or_path`, loading it (and unloading the resident one) unless it is resident.
    pub fn get(&self, name_or_path: &str) -> Result<ModelHandle> {
        let path = self.resolve(name_or_path)?;
        let mut resident = self.lock_resident();
        if let Some(handle) = resident.as_ref().filter(|h| same_folder(&h.path, &path)) {
            return Ok(ModelHandle { load_time: Duration::ZERO, ..handle.clone() });
        }
        // Drop the old sessions before loading the new ones so two models never sit in memory together.
        *resident = None;
        let handle = self.load(&path)?;
        *resident = Some(handle.clone());
        Ok(handle)
    }

    /// The resident model's folder, if any.
    pub fn current(&self) -> Option<PathBuf> {
        self.lock_resident().as_ref().map(|h| h.path.clone())
    }

    /// Frees the resident model (jobs still holding it keep it alive until they finish).
    pub fn unload(&self) {
        *self.lock_resident() = None;
    }

    fn load(&self, path: &Path) -> Result<ModelHandle> {
        let _span = tracing::info_span!("runtime::load_model", path = %path.display()).entered();
        let started = Instant::now();
        let folder = ModelFolder::open_with(path, self.checkpoint_options)
            .map_err(|source| Error::Model { path: path.to_owned(), source })?;
        let name = folder.name();
        let hash = sdrt_io::model_hash(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let model =
            LoadedModel::load(folder, &self.config).map_err(|source| Error::Model { path: path.to_owned(), source })?;
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(ModelHandle {
            model: Arc::new(Mutex::new(model)),
            name,
            hash,
            path: path.to_owned(),
            load_time: started.elapsed(),
        })
    }

    fn lock_resident(&self) -> MutexGuard<'_, Option<ModelHandle>> {
        // A panic while holding the lock leaves only a cache behind; the data is still valid.
        self.resident.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A `.safetensors` file that is not a standalone VAE (`name.vae.safetensors`).
fn is_model_checkpoint(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    path.is_file() && name.ends_with(".safetensors") && !name.ends_with(".vae.safetensors")
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
