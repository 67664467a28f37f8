//! The LoRA networks a job may name (`--lora-dir`, A1111's `models/Lora`): found by file stem, opened once per
//! file version, and resolved from a prompt's `<lora:…>` tags into what the model merges and the infotext's
//! `Lora hashes`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sdrt_models::{AppliedLora, Lora};
use sdrt_processing::{ExtraNetworkCall, LoraCall};

/// The LoRA files of one folder (subfolders included), by file stem as A1111 names them, and by the alias in
/// their metadata (`ss_output_name`).
#[derive(Debug, Default)]
pub struct LoraLibrary {
    folders: Vec<PathBuf>,
    files: Mutex<BTreeMap<String, PathBuf>>,
    /// Names and aliases a tag may use, as A1111's `available_network_aliases`.
    aliases: Mutex<Aliases>,
    opened: Mutex<HashMap<PathBuf, OpenedLora>>,
    /// Short hashes of files looked up by hash, by file version.
    hashes: Mutex<HashMap<PathBuf, (Option<SystemTime>, String)>>,
}

#[derive(Debug, Clone)]
struct OpenedLora {
    modified: Option<SystemTime>,
    lora: Arc<Lora>,
    short_hash: String,
}

/// One entry of [`LoraLibrary::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraEntry {
    /// The name prompts use (`<lora:NAME:…>`): the file stem.
    pub name: String,
    /// The other name prompts may use: the metadata's `ss_output_name`, else the file stem (A1111's alias).
    pub alias: String,
    /// The file.
    pub path: PathBuf,
    /// The file's `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
}

/// A1111's alias table: every file stem and alias to its file; an alias two files share is forbidden (then
/// only a file stem finds a network).
#[derive(Debug, Default)]
struct Aliases {
    paths: BTreeMap<String, PathBuf>,
    forbidden: std::collections::BTreeSet<String>,
    entries: Vec<LoraEntry>,
}

/// The networks a prompt's tags resolve to.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedNetworks {
    pub applied: Vec<AppliedLora>,
    /// `Lora hashes` entries: (name as written, without `:` and `,`; short hash).
    pub hashes: Vec<(String, String)>,
    /// Problems A1111 reports and goes on after (`Lora not found: …`, a bad tag).
    pub warnings: Vec<String>,
}

impl LoraLibrary {
    /// A library over `folders` (A1111's `--lora-dir` and `models/LyCORIS`), scanned now.
    pub fn new(folders: Vec<PathBuf>) -> crate::Result<Self> {
        let library = Self { folders, ..Self::default() };
        library.refresh()?;
        Ok(library)
    }

    /// Rescans the folders (A1111's `refresh-loras`).
    pub fn refresh(&self) -> crate::Result<()> {
        let mut files = BTreeMap::new();
        for folder in &self.folders {
            // A1111 names networks by file stem; the first file found keeps a name.
            for path in crate::walk::files_under(folder, &|name| name.to_ascii_lowercase().ends_with(".safetensors"))? {
                if let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) {
                    files.entry(stem).or_insert(path);
                }
            }
        }
        let mut aliases = Aliases::default();
        aliases.forbidden.insert("none".to_owned());
        for (name, path) in &files {
            // A file whose header cannot be read is listed under its name; using it reports the problem.
            let metadata = Lora::open(path).map(|lora| lora.metadata().clone()).unwrap_or_default();
            let alias = metadata.get("ss_output_name").cloned().unwrap_or_else(|| name.clone());
            if aliases.paths.contains_key(&alias) {
                aliases.forbidden.insert(alias.to_lowercase());
            }
            aliases.paths.insert(name.clone(), path.clone());
            aliases.paths.insert(alias.clone(), path.clone());
            aliases.entries.push(LoraEntry { name: name.clone(), alias, path: path.clone(), metadata });
        }
        *self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        *self.aliases.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = aliases;
        Ok(())
    }

    /// Every network, by name.
    pub fn list(&self) -> Vec<LoraEntry> {
        self.aliases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entries.clone()
    }

    /// The file a tag's name means: a file stem, or an alias no two files share (A1111's lookup).
    fn find(&self, name: &str) -> Option<PathBuf> {
        let aliases = self.aliases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if aliases.forbidden.contains(&name.to_lowercase()) {
            return self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
        }
        aliases.paths.get(name).cloned()
    }

    /// The networks of `calls` (a prompt's tags): `lora`/`lyco` tags resolved by name, opened (once per file
    /// version) and hashed; names that match no file and tags that cannot be read become warnings, as A1111
    /// logs them and generates without.
    pub(crate) fn resolve(&self, calls: &[ExtraNetworkCall]) -> crate::Result<ResolvedNetworks> {
        let mut resolved = ResolvedNetworks::default();
        let mut missing = Vec::new();
        for call in calls {
            let Some(parsed) = LoraCall::from_call(call) else {
                resolved.warnings.push(format!("skipping unknown extra network: {}", call.kind));
                continue;
            };
            let lora = match parsed {
                Ok(lora) => lora,
                Err(error) => {
                    resolved.warnings.push(error.to_string());
                    continue;
                }
            };
            let Some(path) = self.find(&lora.name) else {
                missing.push(lora.name.clone());
                continue;
            };
            let opened = self.open(&path)?;
            resolved.applied.push(AppliedLora {
                lora: opened.lora,
                te_multiplier: lora.te_multiplier as f32,
                unet_multiplier: lora.unet_multiplier as f32,
                dyn_dim: lora.dyn_dim,
            });
            let key: String = lora.name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
            resolved.hashes.retain(|(name, _)| *name != key);
            resolved.hashes.push((key, opened.short_hash));
        }
        if !missing.is_empty() {
            resolved.warnings.push(format!("Lora not found: {}", missing.join(", ")));
        }
        Ok(resolved)
    }

    /// A1111's Lora `infotext_pasted` on parsed infotext parameters: `<lora:NAME:` tags of `Prompt` renamed to the
    /// local networks with the `Lora hashes` they list (hashing each file once per version).
    pub fn rename_pasted(&self, parameters: &mut serde_json::Map<String, serde_json::Value>) {
        let Some(hashes) = parameters.get("Lora hashes").and_then(serde_json::Value::as_str).map(str::to_owned) else {
            return;
        };
        let prompt = parameters.get("Prompt").and_then(serde_json::Value::as_str).unwrap_or_default();
        let renamed =
            sdrt_io::rename_pasted_networks(prompt, &hashes, |hash| self.name_for_short_hash(hash).ok().flatten());
        parameters.insert("Prompt".into(), renamed.into());
    }

    /// The network whose A1111 short hash (`Lora hashes`) is `short_hash`; hashing each file once per version.
    pub fn name_for_short_hash(&self, short_hash: &str) -> crate::Result<Option<String>> {
        for entry in self.list() {
            let modified = std::fs::metadata(&entry.path).and_then(|m| m.modified()).ok();
            let known = {
                let hashes = self.hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                hashes.get(&entry.path).filter(|(when, _)| *when == modified).map(|(_, hash)| hash.clone())
            };
            let hash = match known {
                Some(hash) => hash,
                None => {
                    let mut hash = sdrt_io::addnet_hash(&entry.path)
                        .map_err(|source| crate::Error::Io { path: entry.path.clone(), source })?;
                    hash.truncate(sdrt_io::NETWORK_SHORT_HASH_LEN);
                    let mut hashes = self.hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    hashes.insert(entry.path.clone(), (modified, hash.clone()));
                    hash
                }
            };
            if hash == short_hash {
                // A1111 pastes the alias (its default `lora_preferred_name`) unless that alias is ambiguous.
                let forbidden =
                    self.aliases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).forbidden.clone();
                let ambiguous = forbidden.contains(&entry.alias.to_lowercase());
                return Ok(Some(if ambiguous { entry.name } else { entry.alias }));
            }
        }
        Ok(None)
    }

    fn open(&self, path: &Path) -> crate::Result<OpenedLora> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = opened.get(path).filter(|e| e.modified == modified) {
            return Ok(entry.clone());
        }
        let lora = Lora::open(path).map_err(|source| crate::Error::Model { path: path.to_owned(), source })?;
        let mut short_hash =
            sdrt_io::addnet_hash(path).map_err(|source| crate::Error::Io { path: path.to_owned(), source })?;
        short_hash.truncate(sdrt_io::NETWORK_SHORT_HASH_LEN);
        let entry = OpenedLora { modified, lora: Arc::new(lora), short_hash };
        opened.insert(path.to_owned(), entry.clone());
        Ok(entry)
    }
}
