//! The standalone VAE files a job may select (A1111's `sd_vae`): `*.vae.safetensors` beside the checkpoints and
//! every `.safetensors` in the VAE folders, by file name; and A1111's choice between `Automatic`, `None` and a
//! name for a given checkpoint (`modules/sd_vae.py`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::walk::files_under;

/// One selectable VAE file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeEntry {
    /// Its file name, extension included (A1111's `sd_vae` value and `VAE` infotext value).
    pub name: String,
    /// The file.
    pub path: PathBuf,
}

/// The VAE files of the model folders (`*.vae.safetensors`) and VAE folders (`*.safetensors`), in A1111's
/// search order, plus files given by path (`--vae`).
#[derive(Debug, Default)]
pub struct VaeLibrary {
    model_dirs: Vec<PathBuf>,
    vae_dirs: Vec<PathBuf>,
    extra_files: Vec<PathBuf>,
    files: Mutex<Vec<VaeEntry>>,
}

/// A1111's `sd_vae` values that are not file names.
const AUTOMATIC: &[&str] = &["Automatic", "auto", ""];
const NONE: &str = "None";

impl VaeLibrary {
    /// A library over `model_dirs` (A1111's `models/Stable-diffusion`: `*.vae.safetensors` only), `vae_dirs`
    /// (`models/VAE`: every `.safetensors`) and `extra_files`, scanned now.
    pub fn new(model_dirs: Vec<PathBuf>, vae_dirs: Vec<PathBuf>, extra_files: Vec<PathBuf>) -> crate::Result<Self> {
        let library = Self { model_dirs, vae_dirs, extra_files, ..Self::default() };
        library.refresh()?;
        Ok(library)
    }

    /// Rescans the folders (A1111's `refresh-vae`).
    pub fn refresh(&self) -> crate::Result<()> {
        let mut found = Vec::new();
        for dir in &self.model_dirs {
            found.extend(files_under(dir, &|name| name.ends_with(".vae.safetensors"))?);
        }
        for dir in &self.vae_dirs {
            found.extend(files_under(dir, &|name| name.ends_with(".safetensors"))?);
        }
        found.extend(self.extra_files.iter().cloned());
        let mut files: Vec<VaeEntry> = Vec::new();
        for path in found {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // A1111's dictionary by file name: a later file of the same name replaces the path, not the place.
            match files.iter_mut().find(|entry| entry.name == name) {
                Some(entry) => entry.path = path,
                None => files.push(VaeEntry { name, path }),
            }
        }
        *self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        Ok(())
    }

    /// Every VAE, in search order.
    pub fn list(&self) -> Vec<VaeEntry> {
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether `setting` is a value `sd_vae` may take: `Automatic`, `None` or a listed file name.
    pub fn knows(&self, setting: &str) -> bool {
        AUTOMATIC.contains(&setting) || setting == NONE || self.list().iter().any(|entry| entry.name == setting)
    }

    /// A1111's `resolve_vae` for `checkpoint` (its default `sd_vae_overrides_per_model_preferences`): `None` →
    /// the model's own; a name → that file, or the model's own with a warning when no file has it;
    /// `Automatic` → the first VAE whose file name starts with the checkpoint's stem, else the model's own.
    pub(crate) fn resolve(&self, setting: &str, checkpoint: &Path) -> (Option<VaeEntry>, Option<String>) {
        let files = self.list();
        if setting == NONE {
            return (None, None);
        }
        if AUTOMATIC.contains(&setting) {
            let base = checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stem = base.rsplit_once('.').map_or(base.as_str(), |(stem, _)| stem).to_owned();
            return (files.into_iter().find(|entry| entry.name.starts_with(&stem)), None);
        }
        match files.into_iter().find(|entry| entry.name == setting) {
            Some(entry) => (Some(entry), None),
            None => (None, Some(format!("Couldn't find VAE named {setting}; using None instead"))),
        }
    }
}
