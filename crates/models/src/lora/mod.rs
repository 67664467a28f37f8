//! LoRA files (A1111's built-in Lora extension): `.safetensors` networks whose modules add a low-rank ΔW to
//! checkpoint weights. Each module is matched to the checkpoint weight it changes ([`names`]), and its ΔW is
//! written into the component's graph as `W + ΔW·scale·multiplier` (`crate::graph`), which ONNX Runtime folds
//! into one weight when the session is built: the checkpoint file is never copied or rewritten.
//!
//! Module kinds (A1111's `network_*.py`, tried in this order): LoRA/LoCon (`lora_up`/`lora_down`, PEFT
//! `lora_B`/`lora_A`; conv kernels; `alpha`, `scale`), and full (`diff`) deltas. Scale: `scale` when stored,
//! else `alpha / rank` (rank = `lora_down`'s first dimension), else 1.

mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::checkpoint::{Checkpoint, TensorFile};
use crate::error::Result;

pub(crate) use names::Component;

/// A LoRA file, its modules grouped by network key.
pub struct Lora {
    file: TensorFile,
    modules: BTreeMap<String, ModuleTensors>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora").field("path", &self.file.path()).field("modules", &self.modules.len()).finish()
    }
}

/// The tensor names of one module, by role.
#[derive(Debug, Clone, Default)]
struct ModuleTensors {
    up: Option<String>,
    down: Option<String>,
    mid: Option<String>,
    alpha: Option<String>,
    scale: Option<String>,
    diff: Option<String>,
    other: Vec<String>,
    /// Named `lora_A`/`lora_B` (PEFT): A1111 then reads only the two matrices, so `alpha` and `scale` are unused.
    peft: bool,
}

/// Module-name suffixes and the role each tensor plays.
const SUFFIXES: &[(&str, Role)] = &[
    (".lora_up.weight", Role::Up),
    (".lora_down.weight", Role::Down),
    (".lora_mid.weight", Role::Mid),
    (".lora_B.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".alpha", Role::Alpha),
    (".scale", Role::Scale),
    (".diff", Role::Diff),
];

#[derive(Debug, Clone, Copy)]
enum Role {
    Up,
    Down,
    Mid,
    Alpha,
    Scale,
    Diff,
}

impl Lora {
    /// Opens a LoRA `.safetensors` file and groups its tensors into modules.
    pub fn open(path: &Path) -> Result<Self> {
        let _span = tracing::info_span!("models::open_lora", path = %path.display()).entered();
        let file = TensorFile::open(path)?;
        let mut modules: BTreeMap<String, ModuleTensors> = BTreeMap::new();
        for name in file.names() {
            let found = SUFFIXES.iter().find_map(|(suffix, role)| name.strip_suffix(suffix).map(|key| (key, *role)));
            let Some((key, role)) = found else {
                // Keys of kinds sdrt does not read (LoHa, LoKr, norm, …) keep their module name for the report.
                let key = name.rsplit_once('.').map_or(name, |(key, _)| key);
                modules.entry(key.to_owned()).or_default().other.push(name.to_owned());
                continue;
            };
            let module = modules.entry(key.to_owned()).or_default();
            module.peft |= name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight");
            let slot = match role {
                Role::Up => &mut module.up,
                Role::Down => &mut module.down,
                Role::Mid => &mut module.mid,
                Role::Alpha => &mut module.alpha,
                Role::Scale => &mut module.scale,
                Role::Diff => &mut module.diff,
            };
            *slot = Some(name.to_owned());
        }
        if modules.is_empty() {
            return Err(file.file_error("holds no tensors".to_owned()));
        }
        Ok(Self { file, modules })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn scalar(&self, name: &Option<String>) -> Result<Option<f32>> {
        let Some(name) = name else { return Ok(None) };
        let (_, values) = self.file.f32(name)?;
        match values.as_slice() {
            [value] => Ok(Some(*value)),
            _ => Err(self.file.tensor_error(name, format!("has {} values; expected one", values.len()))),
        }
    }

    /// The ΔW of one module with its scale (before the multiplier), shaped as its stored factors allow;
    /// `dyn_dim` keeps only the first ranks (DyLoRA), without changing the scale, as A1111 does.
    fn delta(&self, key: &str, module: &ModuleTensors, dyn_dim: Option<usize>) -> Result<Option<Delta>> {
        if let Some(diff) = &module.diff {
            let (shape, values) = self.file.f32(diff)?;
            let scale = self.scalar(&module.scale)?.unwrap_or(1.0);
            return Ok(Some(Delta { factors: Factors::Full { shape, values }, scale, pad_in_channels: 0 }));
        }
        let (Some(up), Some(down)) = (&module.up, &module.down) else { return Ok(None) };
        if module.mid.is_some() {
            return Err(self.file.tensor_error(
                &format!("{key}.lora_mid.weight"),
                "is a CP-decomposed (lora_mid) LoCon module, which sdrt does not apply yet".to_owned(),
            ));
        }
        let (up_shape, up_values) = self.file.f32(up)?;
        let (down_shape, down_values) = self.file.f32(down)?;
        let rank = down_shape.first().copied().unwrap_or(0);
        if rank == 0 || up_shape.len() < 2 || up_shape[1] != rank {
            return Err(self
                .file
                .tensor_error(up, format!("has shape {up_shape:?}, which does not multiply {down}'s {down_shape:?}")));
        }
        let (alpha, stored_scale) =
            if module.peft { (None, None) } else { (self.scalar(&module.alpha)?, self.scalar(&module.scale)?) };
        let scale = match (stored_scale, alpha) {
            (Some(scale), _) => scale,
            (None, Some(alpha)) => alpha / rank as f32,
            (None, None) => 1.0,
        };
        let outputs = up_shape[0];
        let inputs = down_values.len() / rank;
        // Conv kernels: ΔW has `lora_down`'s kernel size (A1111's `rebuild_conventional`).
        let mut shape = vec![outputs, down_shape.get(1).copied().unwrap_or(inputs)];
        shape.extend_from_slice(down_shape.get(2..).unwrap_or(&[]));
        let kept = dyn_dim.map_or(rank, |d| d.clamp(1, rank));
        let up: Vec<f32> = up_values.chunks_exact(rank).flat_map(|row| row[..kept].to_vec()).collect();
        let down = down_values[..kept * inputs].to_vec();
        let factors = Factors::LowRank { up, down, outputs, rank: kept, inputs, shape };
        Ok(Some(Delta { factors, scale, pad_in_channels: 0 }))
    }
}

/// How a ΔW is stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Factors {
    /// `up [outputs, rank] @ down [rank, inputs]`, reshaped to `shape`.
    LowRank { up: Vec<f32>, down: Vec<f32>, outputs: usize, rank: usize, inputs: usize, shape: Vec<usize> },
    /// The whole ΔW.
    Full { shape: Vec<usize>, values: Vec<f32> },
}

/// One module's ΔW, to be added to a weight as `ΔW · factor`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delta {
    pub factors: Factors,
    /// The module's scale (`scale`, `alpha / rank` or 1) times the network's multiplier.
    pub scale: f32,
    /// Zero input channels appended to ΔW: a 4-channel ΔW on an inpainting UNet's 9-channel `conv_in` changes
    /// only the latent channels (A1111 pads it with 5 zeros after them).
    pub pad_in_channels: usize,
}

impl Delta {
    /// The number of values ΔW has.
    pub(crate) fn len(&self) -> usize {
        match &self.factors {
            Factors::LowRank { outputs, inputs, .. } => outputs * inputs,
            Factors::Full { values, .. } => values.len(),
        }
    }

    /// ΔW's shape before padding (the weight's shape when their sizes agree, as A1111 reshapes it).
    pub(crate) fn shape(&self) -> &[usize] {
        match &self.factors {
            Factors::LowRank { shape, .. } | Factors::Full { shape, .. } => shape,
        }
    }
}

/// A LoRA to apply and its strengths.
#[derive(Debug, Clone)]
pub struct AppliedLora {
    /// The network.
    pub lora: std::sync::Arc<Lora>,
    /// Multiplier for the text encoders.
    pub te_multiplier: f32,
    /// Multiplier for the UNet.
    pub unet_multiplier: f32,
    /// DyLoRA rank limit (`dyn=`).
    pub dyn_dim: Option<usize>,
}

/// The ΔW terms of every changed weight of one component, by full checkpoint key.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeightDeltas {
    terms: HashMap<String, Vec<Delta>>,
}

impl WeightDeltas {
    /// The terms for checkpoint key `key`.
    pub(crate) fn get(&self, key: &str) -> &[Delta] {
        self.terms.get(key).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// What applying networks to a checkpoint did: the deltas per component, and the modules it skipped.
#[derive(Debug, Default)]
pub(crate) struct AppliedNetworks {
    pub deltas: HashMap<Component, WeightDeltas>,
    /// `file: module (why)` for each module left out: no checkpoint weight matched it, or its ΔW does not fit
    /// the weight (A1111 logs these and goes on).
    pub skipped: Vec<String>,
}

/// Matches every module of `networks` to `checkpoint`'s weights and computes their ΔW terms.
pub(crate) fn apply(checkpoint: &Checkpoint, networks: &[AppliedLora]) -> Result<AppliedNetworks> {
    let targets = names::Targets::of(checkpoint);
    let mut applied = AppliedNetworks::default();
    for network in networks {
        let lora = &network.lora;
        for (key, module) in &lora.modules {
            let mut skip = |why: &str| applied.skipped.push(format!("{}: {key} ({why})", lora.path().display()));
            let Some((component, target)) = targets.resolve(key) else {
                skip("matches no weight of the model");
                continue;
            };
            let Some(mut delta) = lora.delta(key, module, network.dyn_dim)? else {
                skip("not a kind sdrt applies: needs lora_up/lora_down, lora_A/lora_B or diff");
                continue;
            };
            let Some(entry) = checkpoint.file.entry(&target) else {
                skip("its weight is missing");
                continue;
            };
            let weight = &entry.shape;
            if weight.len() == 4 && weight[1] == 9 && delta.shape().get(1) == Some(&4) {
                delta.pad_in_channels = 5;
            }
            let weight_len: usize = weight.iter().product();
            let padded_len = delta.len() / delta.shape().get(1).copied().unwrap_or(1).max(1)
                * (delta.shape().get(1).copied().unwrap_or(1) + delta.pad_in_channels);
            if padded_len != weight_len {
                skip(&format!("ΔW {:?} does not fit {target} {weight:?}; a LoRA for another model?", delta.shape()));
                continue;
            }
            delta.scale *= match component {
                Component::Unet => network.unet_multiplier,
                Component::TextEncoder(_) => network.te_multiplier,
            };
            applied.deltas.entry(component).or_default().terms.entry(target).or_default().push(delta);
        }
    }
    Ok(applied)
}
