//! An AUTOMATIC1111 data folder as it is (`--data-dir`, A1111's own flag): `models/Stable-diffusion`,
//! `models/Lora` and `models/LyCORIS`, `models/VAE`, `embeddings`, `styles.csv`, and the settings of `config.json` that sdrt
//! honours (checkpoint, clip skip, ENSD, RNG source, emphasis, VAE). Paths from `modules/paths_internal.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::{EmbeddingLibrary, GenerationSettings, LoraLibrary, ModelProvider, VaeLibrary};

/// The `config.json` keys sdrt reads; the rest of A1111's settings change nothing here.
const CONFIG_KEYS: &[&str] =
    &["CLIP_stop_at_last_layers", "eta_noise_seed_delta", "randn_source", "emphasis", "sd_vae"];

/// An A1111 data folder.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// What [`DataDir::apply`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataDirSummary {
    /// Registered model names (`models/Stable-diffusion`).
    pub models: Vec<String>,
    /// The checkpoint `config.json` selects, when it is one of them.
    pub selected_model: Option<String>,
    /// The `config.json` settings applied.
    pub settings: Vec<String>,
}

impl DataDir {
    /// The folder at `root`; an error when it is not a folder.
    pub fn open(root: &Path) -> crate::Result<Self> {
        if !root.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder");
            return Err(crate::Error::ModelDirectory { path: root.to_owned(), source });
        }
        Ok(Self { root: root.to_owned() })
    }

    fn existing(&self, relative: &str) -> Option<PathBuf> {
        Some(self.root.join(relative)).filter(|path| path.is_dir())
    }

    /// `models/Stable-diffusion`.
    pub fn models_dir(&self) -> Option<PathBuf> {
        self.existing("models/Stable-diffusion")
    }

    /// `models/Lora` and `models/LyCORIS` (A1111 reads both).
    pub fn lora_dirs(&self) -> Vec<PathBuf> {
        ["models/Lora", "models/LyCORIS"].into_iter().filter_map(|dir| self.existing(dir)).collect()
    }

    /// `models/VAE`.
    pub fn vae_dir(&self) -> Option<PathBuf> {
        self.existing("models/VAE")
    }

    /// `styles.csv`.
    pub fn styles_file(&self) -> PathBuf {
        self.root.join("styles.csv")
    }

    /// `config.json` (empty when missing).
    pub fn config(&self) -> crate::Result<Map<String, Value>> {
        let path = self.root.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => return Err(crate::Error::ModelDirectory { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| crate::Error::Setting {
            field: path.display().to_string(),
            problem: format!("not a JSON object of settings ({e})"),
        })
    }

    /// Registers the folder's models with `provider` and fills `settings` from it: LoRA and VAE libraries, styles,
    /// and `config.json`'s settings (its `sd_model_checkpoint` becomes the default model when registered, else the
    /// first model found).
    pub fn apply(
        &self,
        settings: &mut GenerationSettings,
        provider: &mut ModelProvider,
    ) -> crate::Result<DataDirSummary> {
        let mut summary = DataDirSummary::default();
        let models_dir = self.models_dir();
        if let Some(dir) = &models_dir {
            summary.models = provider.register_folder_of_models(dir)?;
        }
        settings.loras = Arc::new(LoraLibrary::new(self.lora_dirs())?);
        settings.vaes = Arc::new(VaeLibrary::new(
            models_dir.into_iter().collect(),
            self.vae_dir().into_iter().collect(),
            Vec::new(),
        )?);
        settings.embeddings = Arc::new(EmbeddingLibrary::new(self.existing("embeddings").into_iter().collect())?);
        let styles = self.styles_file();
        settings.styles = Arc::new(
            sdrt_io::StyleDatabase::load(&styles).map_err(|source| crate::Error::Io { path: styles, source })?,
        );
        let config = self.config()?;
        let known: Map<String, Value> = config
            .iter()
            .filter(|(k, _)| CONFIG_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        settings.apply_settings(&known).map_err(|p| crate::Error::Setting {
            field: format!("{}: {}", self.root.join("config.json").display(), p.key),
            problem: p.problem,
        })?;
        summary.settings = known.keys().cloned().collect();
        if let Some(title) = config.get("sd_model_checkpoint").and_then(Value::as_str) {
            // A1111 stores the title, `sub/name.safetensors [hash]`; sdrt registers `sub/name`.
            let name = title.split(" [").next().unwrap_or(title).trim();
            let name = name.strip_suffix(".safetensors").unwrap_or(name);
            if provider.registered().contains_key(name) {
                summary.selected_model = Some(name.to_owned());
                settings.model = Some(name.to_owned());
            }
        }
        if summary.selected_model.is_none() {
            // Without a usable `sd_model_checkpoint`, A1111 starts with the first checkpoint it finds.
            settings.model = summary.models.first().cloned().or(settings.model.take());
        }
        Ok(summary)
    }
}
