//! LoRA files (A1111's built-in Lora extension): `.safetensors` networks whose modules add a low-rank ΔW to
//! checkpoint weights. Each module is matched to the checkpoint weight it changes ([`names`]), and its ΔW is
//! written into the component's graph as `W + ΔW·scale·multiplier` (`crate::graph`), which ONNX Runtime folds
//! into one weight when the session is built: the checkpoint file is never copied or rewritten.
//!
//! Module kinds (A1111's `network_*.py`, tried in this order): LoRA/LoCon (`lora_up`/`lora_down`, PEFT
//! `lora_B`/`lora_A` whose alpha A1111 drops; conv kernels; `dyn`), LoHa (`hada_w{1,2}_{a,b}`), LoKr (`lokr_w1`
//! or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`), full (`diff`, `diff_b`) and norm (`w_norm`, `b_norm`). Scale:
//! `scale` when stored, else `alpha / rank`, else 1; bias deltas take the multiplier only. CP-decomposed LoCon
//! (`lora_mid`) is rebuilt as A1111's `rebuild_cp_decomposition`, CP-decomposed LoHa and LoKr (`hada_t1`/`hada_t2`,
//! `lokr_t2`) as its `make_weight_cp`; DoRA, IA3, GLoRA and OFT modules are reported and left out.

mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::checkpoint::{Checkpoint, TensorFile};
use crate::error::Result;

pub(crate) use names::Component;

/// A LoRA file, its modules grouped by network key.
pub struct Lora {
    file: TensorFile,
    /// Network key (a tensor name before its first `.`, as A1111 splits it) → part (`lora_up.weight`, `alpha`)
    /// → tensor name.
    modules: BTreeMap<String, BTreeMap<String, String>>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora").field("path", &self.file.path()).field("modules", &self.modules.len()).finish()
    }
}

/// A module's tensors by part name.
type Parts = BTreeMap<String, String>;

/// Parts of kinds sdrt does not apply, for the report.
const UNSUPPORTED_PARTS: &[(&str, &str)] =
    &[("dora_scale", "DoRA"), ("on_input", "IA3"), ("a1.weight", "GLoRA"), ("oft_blocks", "OFT"), ("oft_diag", "OFT")];

impl Lora {
    /// Opens a LoRA `.safetensors` file and groups its tensors into modules.
    pub fn open(path: &Path) -> Result<Self> {
        let _span = tracing::info_span!("models::open_lora", path = %path.display()).entered();
        let file = TensorFile::open(path)?;
        let mut modules: BTreeMap<String, Parts> = BTreeMap::new();
        for name in file.names() {
            let (key, part) = name.split_once('.').unwrap_or((name, ""));
            modules.entry(key.to_owned()).or_default().insert(part.to_owned(), name.to_owned());
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

    /// The file's `__metadata__` (kohya's training tags: `ss_output_name`, `sshs_model_hash`, …).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.file.metadata()
    }

    fn scalar(&self, parts: &Parts, part: &str) -> Result<Option<f32>> {
        let Some(name) = parts.get(part) else { return Ok(None) };
        let (_, values) = self.file.f32(name)?;
        match values.as_slice() {
            [value] => Ok(Some(*value)),
            _ => Err(self.file.tensor_error(name, format!("has {} values; expected one", values.len()))),
        }
    }

    fn tensor(&self, parts: &Parts, part: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        parts.get(part).map(|name| self.file.f32(name)).transpose()
    }

    /// `up @ down` of two stored factors, flattened to 2-D as A1111's `rebuild_conventional` does.
    fn product(&self, parts: &Parts, up: &str, down: &str, dyn_dim: Option<usize>) -> Result<Option<Product>> {
        let (Some((up_shape, up_values)), Some((down_shape, down_values))) =
            (self.tensor(parts, up)?, self.tensor(parts, down)?)
        else {
            return Ok(None);
        };
        let rank = down_shape.first().copied().unwrap_or(0);
        if rank == 0 || up_values.len() % rank != 0 || up_values.len() / rank != up_shape[0] {
            return Err(self.file.tensor_error(
                &parts[up],
                format!("has shape {up_shape:?}, which does not multiply {}'s {down_shape:?}", parts[down]),
            ));
        }
        let (outputs, inputs) = (up_shape[0], down_values.len() / rank);
        let kept = dyn_dim.map_or(rank, |d| d.clamp(1, rank));
        let up = up_values.chunks_exact(rank).flat_map(|row| row[..kept].to_vec()).collect();
        let down = down_values[..kept * inputs].to_vec();
        Ok(Some(Product { up, down, outputs, rank: kept, inputs, down_shape }))
    }

    /// A matrix stored whole (`name`) or as two factors (`a @ b`).
    fn matrix(&self, parts: &Parts, whole: &str, a: &str, b: &str) -> Result<Option<Matrix>> {
        if let Some((shape, values)) = self.tensor(parts, whole)? {
            return Ok(Some(Matrix::Dense { shape, values }));
        }
        Ok(self.product(parts, a, b, None)?.map(Matrix::Product))
    }

    /// A1111's `make_weight_cp(t, wa, wb)` factors: `t [rank, rank, kh, kw]`, `wa [rank, out]`, `wb [rank, in]`, as
    /// the product `waᵀ · t · wb`; `None` without `t`.
    fn cp(&self, parts: &Parts, t: &str, wa: &str, wb: &str) -> Result<Option<Tucker>> {
        let Some((mid_shape, mid)) = self.tensor(parts, t)? else { return Ok(None) };
        let (Some((a_shape, a)), Some((b_shape, b))) = (self.tensor(parts, wa)?, self.tensor(parts, wb)?) else {
            return Ok(None);
        };
        let rank = mid_shape.first().copied().unwrap_or(0);
        let square = mid_shape.len() == 4 && mid_shape[1] == rank && rank > 0;
        if !square || a_shape.len() != 2 || a_shape[0] != rank || b_shape.first() != Some(&rank) {
            let problem = format!(
                "has shape {mid_shape:?}; with {wa} {a_shape:?} and {wb} {b_shape:?} a CP module needs \
                 [rank, rank, kh, kw], [rank, out] and [rank, in]"
            );
            return Err(self.file.tensor_error(&parts[t], problem));
        }
        let (outputs, inputs) = (a_shape[1], b.len() / rank);
        // waᵀ: [out, rank], as a LoRA up factor.
        let up = (0..outputs).flat_map(|o| (0..rank).map(move |r| (o, r))).map(|(o, r)| a[r * outputs + o]).collect();
        let product = Product { up, down: b, outputs, rank, inputs, down_shape: b_shape };
        Ok(Some(Tucker { product, mid_shape, mid }))
    }

    /// `scale` when stored, else `alpha / dim` when both exist, else 1 (A1111's `calc_scale`).
    fn scale(&self, parts: &Parts, dim: Option<usize>) -> Result<f32> {
        Ok(match (self.scalar(parts, "scale")?, self.scalar(parts, "alpha")?, dim) {
            (Some(scale), _, _) => scale,
            (None, Some(alpha), Some(dim)) => alpha / dim as f32,
            _ => 1.0,
        })
    }

    /// What one module changes (before multipliers), by A1111's module kinds in its order (LoRA, LoHa, LoKr, full,
    /// norm); `Err(why)` for a kind sdrt does not apply.
    fn updates(&self, parts: &Parts, dyn_dim: Option<usize>) -> Result<std::result::Result<Vec<Update>, String>> {
        if let Some((_, kind)) = UNSUPPORTED_PARTS.iter().find(|(part, _)| parts.keys().any(|p| p.starts_with(part))) {
            return Ok(Err(format!("{kind} modules are not applied by sdrt yet")));
        }
        let has = |part: &str| parts.contains_key(part);
        let weight = |factors: Factors, scale: f32| Update { bias: false, delta: Delta::new(factors, scale) };
        if has("lora_up.weight") && has("lora_down.weight") && has("lora_mid.weight") {
            // A1111 ignores `dyn` for a CP-decomposed module.
            let product = self.product(parts, "lora_up.weight", "lora_down.weight", None)?.unwrap_or_default();
            let (mid_shape, mid) = self.tensor(parts, "lora_mid.weight")?.unwrap_or_default();
            if mid_shape.len() != 4 || mid_shape[..2] != [product.rank, product.rank] {
                let problem = format!("has shape {mid_shape:?}; expected [{0}, {0}, kh, kw]", product.rank);
                return Err(self.file.tensor_error(&parts["lora_mid.weight"], problem));
            }
            let scale = self.scale(parts, Some(product.down_shape[0]))?;
            return Ok(Ok(vec![weight(Factors::Tucker(Tucker { product, mid_shape, mid }), scale)]));
        }
        if has("lora_up.weight") && has("lora_down.weight") {
            let product = self.product(parts, "lora_up.weight", "lora_down.weight", dyn_dim)?.unwrap_or_default();
            let scale = self.scale(parts, Some(product.down_shape[0]))?;
            return Ok(Ok(vec![weight(Factors::LowRank(product), scale)]));
        }
        if has("lora_A.weight") && has("lora_B.weight") {
            // A1111 keeps only the two matrices of a PEFT-named module: its alpha and scale are never read.
            let product = self.product(parts, "lora_B.weight", "lora_A.weight", dyn_dim)?.unwrap_or_default();
            return Ok(Ok(vec![weight(Factors::LowRank(product), 1.0)]));
        }
        if ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"].iter().all(|p| has(p)) {
            let half = |t: &str, a: &str, b: &str| -> Result<Factors> {
                Ok(match self.cp(parts, t, a, b)? {
                    Some(tucker) => Factors::Tucker(tucker),
                    None => Factors::LowRank(self.product(parts, a, b, None)?.unwrap_or_default()),
                })
            };
            let first = half("hada_t1", "hada_w1_a", "hada_w1_b")?;
            let second = half("hada_t2", "hada_w2_a", "hada_w2_b")?;
            // A1111's LoHa dim is hada_w1_b's first axis, CP-decomposed or not.
            let dim = self.tensor(parts, "hada_w1_b")?.and_then(|(shape, _)| shape.first().copied());
            let scale = self.scale(parts, dim)?;
            return Ok(Ok(vec![weight(Factors::Hadamard(Box::new(first), Box::new(second)), scale)]));
        }
        let has_w1 = has("lokr_w1") || (has("lokr_w1_a") && has("lokr_w1_b"));
        let has_w2 = has("lokr_w2") || (has("lokr_w2_a") && has("lokr_w2_b"));
        if has_w1 && has_w2 {
            let w1 = self.matrix(parts, "lokr_w1", "lokr_w1_a", "lokr_w1_b")?;
            let w2 = match self.cp(parts, "lokr_t2", "lokr_w2_a", "lokr_w2_b")? {
                Some(tucker) if !has("lokr_w2") => Some(Matrix::Tucker(tucker)),
                _ => self.matrix(parts, "lokr_w2", "lokr_w2_a", "lokr_w2_b")?,
            };
            let (Some(w1), Some(w2)) = (w1, w2) else { return Ok(Err("incomplete LoKr module".to_owned())) };
            // A1111 takes the rank from lokr_w1_b, then from lokr_w2_b when that exists.
            let rank = |m: &Matrix| match m {
                Matrix::Product(p) | Matrix::Tucker(Tucker { product: p, .. }) => Some(p.rank),
                Matrix::Dense { .. } => None,
            };
            let dim = rank(&w2).or(rank(&w1));
            let scale = self.scale(parts, dim)?;
            return Ok(Ok(vec![weight(Factors::Kronecker(w1, w2), scale)]));
        }
        if let Some((shape, values)) = self.tensor(parts, "diff")? {
            let mut updates = vec![weight(Factors::Full { shape, values }, self.scale(parts, None)?)];
            if let Some((shape, values)) = self.tensor(parts, "diff_b")? {
                updates.push(Update { bias: true, delta: Delta::new(Factors::Full { shape, values }, 1.0) });
            }
            return Ok(Ok(updates));
        }
        if let (Some((w_shape, w)), Some((b_shape, b))) = (self.tensor(parts, "w_norm")?, self.tensor(parts, "b_norm")?)
        {
            let scale = self.scale(parts, None)?;
            return Ok(Ok(vec![
                weight(Factors::Full { shape: w_shape, values: w }, scale),
                Update { bias: true, delta: Delta::new(Factors::Full { shape: b_shape, values: b }, 1.0) },
            ]));
        }
        Ok(Err("not a module kind A1111 knows: needs lora_up/lora_down, lora_A/lora_B, hada_*, lokr_*, diff or \
                w_norm/b_norm"
            .to_owned()))
    }
}

/// `up [outputs, rank] @ down [rank, inputs]` (conv kernels flattened into `inputs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Product {
    pub up: Vec<f32>,
    pub down: Vec<f32>,
    pub outputs: usize,
    pub rank: usize,
    pub inputs: usize,
    /// The stored `down` factor's shape (its kernel size shapes a conv ΔW).
    pub down_shape: Vec<usize>,
}

impl Product {
    /// A1111's `output_shape`: `[outputs, down.shape[1]] + down.shape[2:]`.
    fn shape(&self) -> Vec<usize> {
        let mut shape = vec![self.outputs, self.down_shape.get(1).copied().unwrap_or(self.inputs)];
        shape.extend_from_slice(self.down_shape.get(2..).unwrap_or(&[]));
        shape
    }
}

/// A CP-decomposed factor: `ΔW[i, j, k, l] = Σ up[i, n] · mid[n, m, k, l] · down[m, j]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tucker {
    pub product: Product,
    pub mid_shape: Vec<usize>,
    pub mid: Vec<f32>,
}

impl Tucker {
    /// `[outputs, inputs, kh, kw]`.
    pub(crate) fn shape(&self) -> Vec<usize> {
        [&[self.product.outputs, self.product.inputs][..], self.mid_shape.get(2..).unwrap_or(&[])].concat()
    }
}

/// A LoKr factor: stored whole, as a product, or CP-decomposed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Matrix {
    Dense { shape: Vec<usize>, values: Vec<f32> },
    Product(Product),
    Tucker(Tucker),
}

impl Matrix {
    /// Its 2-D (or, stored whole, 4-D) shape.
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            Matrix::Dense { shape, .. } => shape.clone(),
            Matrix::Product(p) => vec![p.outputs, p.inputs],
            Matrix::Tucker(t) => t.shape(),
        }
    }
}

/// How a ΔW is stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Factors {
    /// LoRA/LoCon: `up @ down`.
    LowRank(Product),
    /// CP-decomposed LoCon (or one half of a CP-decomposed LoHa).
    Tucker(Tucker),
    /// LoHa: `(w1a @ w1b) ⊙ (w2a @ w2b)`, each half CP-decomposed or not; the first half's shape is ΔW's.
    Hadamard(Box<Factors>, Box<Factors>),
    /// LoKr: `kron(w1, w2)` (a 4-D `w2` keeps its kernel).
    Kronecker(Matrix, Matrix),
    /// The whole ΔW (`diff`, `w_norm`, bias deltas).
    Full { shape: Vec<usize>, values: Vec<f32> },
}

/// What a module adds to a weight (or to its bias).
#[derive(Debug, Clone, PartialEq)]
struct Update {
    bias: bool,
    delta: Delta,
}

/// One module's ΔW, to be added to a weight as `ΔW · scale`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delta {
    pub factors: Factors,
    /// The module's scale (`scale`, `alpha / rank` or 1; 1 for bias deltas) times the network's multiplier.
    pub scale: f32,
    /// Zeros around ΔW, `(before, after)` per axis from the first (empty: none): a 4-channel ΔW on an inpainting
    /// UNet's 9-channel `conv_in` gets 5 input channels after it; OpenCLIP's q, k and v deltas take their rows
    /// of the fused `in_proj_weight`.
    pub padding: Vec<(usize, usize)>,
}

impl Delta {
    fn new(factors: Factors, scale: f32) -> Self {
        Self { factors, scale, padding: Vec::new() }
    }

    /// A delta of `factors` alone, to ask for its shape.
    pub(crate) fn new_for_shape(factors: Factors) -> Self {
        Self::new(factors, 1.0)
    }

    /// ΔW's own shape (before it takes the weight's shape, as A1111's `finalize_updown` reshapes it).
    pub(crate) fn shape(&self) -> Vec<usize> {
        match &self.factors {
            Factors::LowRank(p) => p.shape(),
            Factors::Tucker(t) => t.shape(),
            Factors::Hadamard(first, _) => Delta::new_for_shape((**first).clone()).shape(),
            Factors::Kronecker(w1, w2) => {
                let (a, b) = (w1.shape(), w2.shape());
                let mut shape = vec![a[0] * b[0], a[1] * b[1]];
                shape.extend_from_slice(b.get(2..).unwrap_or(&[]));
                shape
            }
            Factors::Full { shape, .. } => shape.clone(),
        }
    }

    /// ΔW's shape once padded.
    pub(crate) fn padded_shape(&self) -> Vec<usize> {
        let mut shape = self.shape();
        for (axis, (before, after)) in self.padding.iter().enumerate() {
            if let Some(size) = shape.get_mut(axis) {
                *size += before + after;
            }
        }
        shape
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
        // OpenCLIP attention: A1111 changes in_proj_weight (q, k, v rows) and out_proj together, and only when a
        // network has all four modules for that attention.
        let mut attentions: BTreeMap<String, AttentionModules> = BTreeMap::new();
        for (key, parts) in &lora.modules {
            let mut skip = |why: &str| applied.skipped.push(format!("{}: {key} ({why})", lora.path().display()));
            let Some(target) = targets.resolve(key) else {
                skip("matches no weight of the model");
                continue;
            };
            let updates = match lora.updates(parts, network.dyn_dim)? {
                Ok(updates) => updates,
                Err(why) => {
                    skip(&why);
                    continue;
                }
            };
            let (component, weight_key) = match target {
                names::Target::InProjection(component, in_proj, slot) => {
                    let attention = attentions.entry(in_proj).or_insert_with(|| AttentionModules::new(component));
                    attention.projections[slot] = Some((key.clone(), updates));
                    continue;
                }
                names::Target::Weight(component, weight_key) => (component, weight_key),
            };
            if let Some(in_proj) = targets.attention_of_out_projection(&weight_key) {
                let attention = attentions.entry(in_proj).or_insert_with(|| AttentionModules::new(component));
                attention.out = Some((key.clone(), weight_key, updates));
                continue;
            }
            for update in updates {
                place(checkpoint, &mut applied, network, key, component, &weight_key, update);
            }
        }
        for (in_proj, attention) in attentions {
            let AttentionModules { component, projections: [Some(q), Some(k), Some(v)], out: Some(out) } = attention
            else {
                let keys = attention.keys();
                for key in keys {
                    applied.skipped.push(format!(
                        "{}: {key} (A1111 changes an OpenCLIP attention only with all of its q, k, v and out modules)",
                        lora.path().display()
                    ));
                }
                continue;
            };
            let rows = checkpoint.file.entry(&in_proj).map_or(0, |e| e.shape[0] / 3);
            for (slot, (key, updates)) in [q, k, v].into_iter().enumerate() {
                for mut update in updates.into_iter().filter(|u| !u.bias) {
                    update.delta.padding = vec![(slot * rows, (2 - slot) * rows)];
                    place(checkpoint, &mut applied, network, &key, component, &in_proj, update);
                }
            }
            let (key, weight_key, updates) = out;
            for update in updates {
                place(checkpoint, &mut applied, network, &key, component, &weight_key, update);
            }
        }
    }
    Ok(applied)
}

/// The modules of one network for one OpenCLIP attention.
struct AttentionModules {
    component: Component,
    projections: [Option<(String, Vec<Update>)>; 3],
    out: Option<(String, String, Vec<Update>)>,
}

impl AttentionModules {
    fn new(component: Component) -> Self {
        Self { component, projections: [None, None, None], out: None }
    }

    fn keys(&self) -> Vec<String> {
        let projections = self.projections.iter().flatten().map(|(key, _)| key.clone());
        projections.chain(self.out.iter().map(|(key, _, _)| key.clone())).collect()
    }
}

/// Adds one update to the weight (or bias) of `weight_key` when it fits, else reports it.
fn place(
    checkpoint: &Checkpoint,
    applied: &mut AppliedNetworks,
    network: &AppliedLora,
    key: &str,
    component: Component,
    weight_key: &str,
    update: Update,
) {
    let Update { bias, mut delta } = update;
    let target = if bias { weight_key.replace(".weight", ".bias") } else { weight_key.to_owned() };
    let skip = |why: String| format!("{}: {key} ({why})", network.lora.path().display());
    let Some(entry) = checkpoint.file.entry(&target) else {
        applied.skipped.push(skip(format!("{target} is missing")));
        return;
    };
    let shape = &entry.shape;
    if shape.len() == 4 && shape[1] == 9 && delta.shape().get(1) == Some(&4) {
        delta.padding = vec![(0, 0), (0, 5)];
    }
    if delta.padded_shape().iter().product::<usize>() != shape.iter().product::<usize>() {
        let why = format!("ΔW {:?} does not fit {target} {shape:?}; a LoRA for another model?", delta.shape());
        applied.skipped.push(skip(why));
        return;
    }
    delta.scale *= match component {
        Component::Unet => network.unet_multiplier,
        Component::TextEncoder(_) => network.te_multiplier,
    };
    applied.deltas.entry(component).or_default().terms.entry(target).or_default().push(delta);
}
