//! A loaded ONNX model with named inputs and outputs: the building block of the typed components.
//!
//! Callers always hand in f32 (or i64 token ids) and get f32 back; the model's declared element types decide
//! the conversion (f16 models take and return float16, int32 token ids, int64 timesteps).

use std::path::{Path, PathBuf};

use half::f16;
use ndarray::{ArrayD, ArrayViewD};
use ort::memory::{AllocationDevice, Allocator};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Outlet, Tensor, TensorElementType, TensorRef, ValueType};

use crate::error::{Error, Result};
use crate::options::{ExecutionProvider, SessionConfig};
use crate::runtime_library::environment;

/// Name, element type and shape of one model input or output, as the ONNX file declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type: `f32`, `f16`, `i64`, `i32`, ….
    pub dtype: String,
    /// Dimensions; `-1` for symbolic ones.
    pub shape: Vec<i64>,
}

impl TensorInfo {
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> =
            self.shape.iter().map(|d| if *d < 0 { "?".to_owned() } else { d.to_string() }).collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// An input value before conversion to the dtype the model declares. Borrowed, so that f32 data in standard
/// layout reaches an f32 input without a copy.
#[derive(Debug, Clone)]
pub(crate) enum Input<'a> {
    /// Floating-point data; becomes f32, f16, f64, or (rounded) an integer type.
    F32(ArrayViewD<'a, f32>),
    /// Integer data (token ids); becomes i64 or i32.
    I64(ArrayViewD<'a, i64>),
}

/// Output tensors allocated once and handed to ONNX Runtime on every run with the same input shapes and
/// wanted outputs.
struct BoundOutputs {
    input_shapes: Vec<Vec<usize>>,
    wanted: Vec<String>,
    options: RunOptions<HasSelectedOutputs>,
}

/// One ONNX model loaded into ONNX Runtime.
pub struct OnnxModel {
    component: String,
    path: PathBuf,
    provider: ExecutionProvider,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// `None` only after a rebuild for new input shapes failed; the next run tries again.
    session: Option<Session>,
    /// OpenVINO with static shapes: the session is rebuilt for each new set of input shapes.
    per_shape: Option<PerShapeSessions>,
    /// Sessions built for a set of input shapes (OpenVINO static shapes).
    shape_builds: u64,
    /// Pass inputs without copying and reuse pre-allocated outputs (`SessionConfig::bound_io`).
    bound_io: bool,
    /// Outputs of the last input shapes seen, learned from a first run with those shapes.
    bound_outputs: Option<BoundOutputs>,
    /// Wall time spent inside `Session::run` and how many runs, for overhead measurements.
    run_time: std::time::Duration,
    runs: u64,
    /// Runs that wrote into pre-allocated outputs.
    bound_runs: u64,
    /// Where inputs named by [`OnnxModel::keep_resident`] are kept between runs; `None` = not kept.
    resident_device: Option<(AllocationDevice<'static>, i32)>,
    /// Inputs kept on `resident_device` while their data stays the same.
    resident: Vec<ResidentInput>,
    /// Copies of resident inputs made to the device (once per distinct value, not once per run).
    uploads: u64,
    /// The weight files whose mapped pages are handed back after loading and after each run with new input
    /// shapes; `None` where the provider computes from them.
    weight_pages: Option<WeightPages>,
    /// Whether the session allocates from ONNX Runtime's CPU arena (`SessionConfig::arena_for`) and may hand it
    /// back (`SessionConfig::releases_unet_memory`).
    releasable_arena: bool,
    /// Hand the arena's free blocks back to the system at the end of the next run.
    release_arena: bool,
}

/// ONNX Runtime's run option that shrinks the named devices' arenas at the end of a run: every block no tensor
/// holds any more goes back to the system.
const ARENA_SHRINKAGE: &str = "memory.enable_memory_arena_shrinkage";

/// A provider that compiles its own copy of the weights (OpenVINO) reads ONNX Runtime's mapping of the weight
/// files while it loads the graph and again in its first run with each input shape (where it converts them into
/// its own layout), and not after that: those reads are dropped from the resident set (`mapped_pages`), 1.1 GiB of
/// peak memory on SD1.5-shaped bf16.
#[derive(Debug)]
struct WeightPages {
    /// The weight file (a checkpoint), or the folder of an export's external data.
    root: PathBuf,
    /// Input shapes whose first run has been seen.
    seen_shapes: Vec<Vec<Vec<usize>>>,
}

impl WeightPages {
    fn for_provider(provider: ExecutionProvider, root: &Path) -> Option<Self> {
        matches!(provider, ExecutionProvider::OpenVino { .. })
            .then(|| Self { root: root.to_owned(), seen_shapes: Vec::new() })
    }

    fn release(&self) {
        let bytes = crate::mapped_pages::release_file_pages(&self.root);
        tracing::debug!(path = %self.root.display(), bytes, "released mapped weight pages");
    }

    /// After a run: releases again when these input shapes ran for the first time.
    fn after_run(&mut self, shapes: &[Vec<usize>]) {
        if !self.seen_shapes.iter().any(|seen| seen == shapes) {
            self.seen_shapes.push(shapes.to_vec());
            self.release();
        }
    }
}

/// Where a session's graph comes from, kept so that it can be loaded again for new input shapes.
#[derive(Debug, Clone)]
enum GraphSource {
    /// An ONNX file, its external data beside it.
    File(PathBuf),
    /// A graph built in memory whose initializers stay in a file under `folder` (a checkpoint's); `origin` names
    /// that file in messages.
    Built { model: Vec<u8>, folder: PathBuf, origin: PathBuf },
}

/// OpenVINO with static shapes, one session per set of input shapes. ONNX Runtime fixes the graph's symbolic
/// dimensions (its free-dimension overrides) before the provider takes the graph, so OpenVINO compiles a graph
/// that is static from its inputs on, once, at session creation. Left to itself the provider would take the
/// symbolic graph and rewrite only its input shapes at the first run of each size: measured 5–8 % slower per
/// UNet step on SD1.5-shaped bf16 (tools/bench/README.md). Only the last shapes' session is kept (each holds
/// its own compiled copy of the weights).
#[derive(Debug)]
struct PerShapeSessions {
    source: GraphSource,
    config: SessionConfig,
    built_from_checkpoint: bool,
    /// Per input: its name and the symbol of each dimension (empty where fixed or unnamed).
    symbols: Vec<(String, Vec<String>)>,
    /// The dimension values the current session was built with; `None` = the load-time (symbolic) session.
    built_for: Option<Vec<(String, i64)>>,
}

impl PerShapeSessions {
    /// The symbol values these inputs give. A symbol two inputs disagree on stays symbolic (the provider then
    /// fixes it at run time).
    fn dimension_values(&self, inputs: &[(String, Input<'_>)]) -> Vec<(String, i64)> {
        let mut values: Vec<(String, i64)> = Vec::new();
        let mut conflicting: Vec<String> = Vec::new();
        for (name, input) in inputs {
            let Some((_, symbols)) = self.symbols.iter().find(|(input_name, _)| input_name == name) else { continue };
            for (symbol, size) in symbols.iter().zip(input.shape()).filter(|(symbol, _)| !symbol.is_empty()) {
                let size = i64::try_from(*size).unwrap_or(i64::MAX);
                match values.iter().find(|(known, _)| known == symbol) {
                    Some((_, known)) if *known != size => conflicting.push(symbol.clone()),
                    Some(_) => {}
                    None => values.push((symbol.clone(), size)),
                }
            }
        }
        values.retain(|(symbol, _)| !conflicting.contains(symbol));
        values.sort();
        values
    }
}

/// An input that stays on the provider's device between runs (the conditioning across a generation's steps): it is
/// copied there once, and again only when the caller's data changes.
struct ResidentInput {
    name: String,
    /// The data now on the device (`None` until the first run), to tell whether the next run's is the same.
    host: Option<(Vec<usize>, Vec<f32>)>,
    value: Option<DynValue>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("component", &self.component)
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish()
    }
}

impl OnnxModel {
    /// Loads `path` as component `component` (used in error messages) with the default (CPU) configuration.
    pub fn load(component: &str, path: &Path) -> Result<Self> {
        Self::load_with(component, path, &SessionConfig::default())
    }

    /// Loads `path` as component `component` with `config`'s options and execution provider.
    pub fn load_with(component: &str, path: &Path, config: &SessionConfig) -> Result<Self> {
        let _span = tracing::info_span!("models::load_session", component, path = %path.display()).entered();
        if !path.is_file() {
            return Err(Error::File { path: path.to_owned(), reason: format!("{component} model file is missing") });
        }
        // An export keeps its external data beside the graph file.
        let weights = path.parent().unwrap_or(path);
        Self::from_source(component, path, weights, GraphSource::File(path.to_owned()), config, false)
    }

    /// Loads a graph built in memory (a checkpoint's); `source` names the file it came from in messages.
    pub(crate) fn from_graph(
        component: &str,
        source: &Path,
        graph: crate::graph::BuiltGraph,
        config: &SessionConfig,
    ) -> Result<Self> {
        let _span = tracing::info_span!("models::load_built_session", component, source = %source.display()).entered();
        // The weights stay in the checkpoint: ONNX Runtime reads each initializer's byte range from it.
        let (model, folder) = graph.for_loading();
        let graph = GraphSource::Built { model, folder, origin: source.to_owned() };
        Self::from_source(component, source, source, graph, config, true)
    }

    fn from_source(
        component: &str,
        path: &Path,
        weights: &Path,
        source: GraphSource,
        config: &SessionConfig,
        built_from_checkpoint: bool,
    ) -> Result<Self> {
        let per_shape = config.openvino_static_shapes && matches!(config.provider, ExecutionProvider::OpenVino { .. });
        // The load-time session of a per-shape model only tells the inputs and outputs: kept out of the compiled
        // model cache, OpenVINO compiles nothing for it.
        let load_config =
            if per_shape { SessionConfig { openvino_cache: None, ..config.clone() } } else { config.clone() };
        let session = build_session(component, &source, &load_config, built_from_checkpoint, &[])?;
        tracing::info!(provider = %config.provider, "session ready");
        let per_shape = per_shape.then(|| PerShapeSessions {
            symbols: session
                .inputs()
                .iter()
                .map(|input| (input.name().to_owned(), dimension_symbols(input.dtype())))
                .collect(),
            source,
            config: config.clone(),
            built_from_checkpoint,
            built_for: None,
        });
        Ok(Self::from_session(component, path, weights, session, per_shape, config, built_from_checkpoint))
    }

    fn from_session(
        component: &str,
        path: &Path,
        weights: &Path,
        session: Session,
        per_shape: Option<PerShapeSessions>,
        config: &SessionConfig,
        built_from_checkpoint: bool,
    ) -> Self {
        let weight_pages = WeightPages::for_provider(config.provider, weights);
        if let Some(pages) = &weight_pages {
            pages.release();
        }
        let inputs = tensor_infos(session.inputs());
        let outputs = tensor_infos(session.outputs());
        Self {
            component: component.to_owned(),
            path: path.to_owned(),
            provider: config.provider,
            inputs,
            outputs,
            session: Some(session),
            per_shape,
            shape_builds: 0,
            bound_io: config.bound_io,
            bound_outputs: None,
            run_time: std::time::Duration::ZERO,
            runs: 0,
            bound_runs: 0,
            resident_device: config.resident_device(),
            resident: Vec::new(),
            uploads: 0,
            weight_pages,
            releasable_arena: config.provider == ExecutionProvider::Cpu
                && config.arena_for(component, built_from_checkpoint)
                && config.releases_unet_memory(built_from_checkpoint),
            release_arena: false,
        }
    }

    /// With OpenVINO's static shapes, replaces the session by one built for these inputs' shapes when they differ
    /// from the current one's. The old session goes first: two compiled copies of the weights never coexist.
    fn fit_session_to(&mut self, inputs: &[(String, Input<'_>)]) -> Result<()> {
        let Some(per_shape) = &mut self.per_shape else { return Ok(()) };
        let values = per_shape.dimension_values(inputs);
        if self.session.is_some() && per_shape.built_for.as_ref() == Some(&values) {
            return Ok(());
        }
        let _span = tracing::info_span!("models::build_session_for_shapes", component = %self.component).entered();
        per_shape.built_for = None;
        self.session = None;
        let session = build_session(
            &self.component,
            &per_shape.source,
            &per_shape.config,
            per_shape.built_from_checkpoint,
            &values,
        )?;
        tracing::info!(dimensions = ?values, "session built for these shapes");
        self.session = Some(session);
        per_shape.built_for = Some(values);
        self.shape_builds += 1;
        if let Some(pages) = &mut self.weight_pages {
            pages.seen_shapes.clear();
            pages.release();
        }
        Ok(())
    }

    /// The inputs as the current session declares them: the model's own, or with the symbolic dimensions fixed
    /// to the last run's sizes where the session was built for them (OpenVINO static shapes).
    pub fn session_inputs(&self) -> Vec<TensorInfo> {
        match &self.session {
            Some(session) => tensor_infos(session.inputs()),
            None => self.inputs.clone(),
        }
    }

    /// How many sessions were built for a set of input shapes (OpenVINO static shapes; 0 elsewhere).
    pub fn shape_builds(&self) -> u64 {
        self.shape_builds
    }

    /// Makes the next run hand the CPU memory arena's free blocks back to the system when it ends, so that what
    /// runs next (another model, or nothing until the next job) does not sit beside this session's activations.
    /// The run after that one faults its activations in afresh. No effect on sessions without a CPU arena or
    /// configured to keep it.
    pub(crate) fn release_arena_after_next_run(&mut self) {
        self.release_arena = self.releasable_arena;
    }

    /// The component name given at load time.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The execution provider the session was created with (registration errors are never hidden, so this is
    /// the provider in use; ONNX Runtime still runs nodes the provider lacks on CPU).
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.inputs.clone()
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.outputs.clone()
    }

    pub(crate) fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub(crate) fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|t| t.name == name)
    }

    pub(crate) fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|t| t.name.as_str())
    }

    /// Total wall time spent inside ONNX Runtime's `run` for this session, and the number of runs.
    pub fn run_stats(&self) -> (std::time::Duration, u64) {
        (self.run_time, self.runs)
    }

    /// How many runs wrote into pre-allocated output tensors (`SessionConfig::bound_io`).
    pub fn bound_runs(&self) -> u64 {
        self.bound_runs
    }

    /// Runs the model on named f32 inputs and returns every output as f32 (converting from and to the dtypes
    /// the model declares).
    pub fn run_f32(&mut self, inputs: Vec<(&str, ArrayD<f32>)>) -> Result<Vec<(String, ArrayD<f32>)>> {
        let inputs = inputs.iter().map(|(name, array)| ((*name).to_owned(), Input::F32(array.view()))).collect();
        let names: Vec<String> = self.outputs.iter().map(|t| t.name.clone()).collect();
        let outputs = self.run(inputs, &names)?;
        Ok(names.into_iter().zip(outputs).collect())
    }

    /// Keeps these f32 inputs on the provider's device between runs while their data stays the same, on providers
    /// with device memory (CUDA, TensorRT; `SessionConfig::resident_inputs`). Names the model lacks are ignored.
    pub(crate) fn keep_resident(&mut self, names: &[&str]) {
        if self.resident_device.is_none() {
            return;
        }
        for name in names {
            if self.input(name).is_some_and(|info| info.dtype == "f32") {
                self.resident.push(ResidentInput { name: (*name).to_owned(), host: None, value: None });
            }
        }
    }

    /// How many times a resident input was copied to the device.
    pub fn resident_uploads(&self) -> u64 {
        self.uploads
    }

    /// Copies resident inputs whose data changed since the last run to the device.
    fn refresh_resident(&mut self, inputs: &[(String, Input<'_>)]) -> Result<()> {
        let Some((device, device_id)) = self.resident_device.clone() else { return Ok(()) };
        for resident in &mut self.resident {
            let Some((_, Input::F32(array))) = inputs.iter().find(|(name, _)| *name == resident.name) else { continue };
            let same = resident
                .host
                .as_ref()
                .is_some_and(|(shape, data)| shape == array.shape() && array.iter().eq(data.iter()));
            if same {
                continue;
            }
            let upload_error = |e: ort::Error| Error::Tensor {
                component: self.component.clone(),
                tensor: resident.name.clone(),
                problem: format!("could not be copied to the device: {e}"),
            };
            let host = Tensor::from_array(array.to_owned()).map_err(upload_error)?;
            resident.value = Some(host.to(device.clone(), device_id).map_err(upload_error)?.into_dyn());
            resident.host = Some((array.shape().to_vec(), array.iter().copied().collect()));
            self.uploads += 1;
        }
        Ok(())
    }

    /// Runs the model and returns the outputs named in `wanted`, in that order, as f32.
    pub(crate) fn run(&mut self, inputs: Vec<(String, Input<'_>)>, wanted: &[String]) -> Result<Vec<ArrayD<f32>>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, input)| input.shape().to_vec()).collect();
        self.fit_session_to(&inputs)?;
        self.refresh_resident(&inputs)?;
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let info = self.input(&name).ok_or_else(|| Error::Tensor {
                component: self.component.clone(),
                tensor: name.clone(),
                problem: format!("is not an input of {} (inputs: {})", self.path.display(), self.input_list()),
            })?;
            check_shape(info, input.shape()).map_err(|problem| Error::Tensor {
                component: self.component.clone(),
                tensor: name.clone(),
                problem,
            })?;
            let resident = self.resident.iter().find(|r| r.name == name).and_then(|r| r.value.as_ref());
            let value = match resident {
                Some(on_device) => SessionInputValue::from(on_device),
                None => self.to_value(info, input)?,
            };
            values.push((name, value));
        }
        let component = self.component.clone();
        let run_error =
            |e: ort::Error| Error::Session { component: component.clone(), action: "running", reason: e.to_string() };
        let release = std::mem::take(&mut self.release_arena);
        let shrinkage = if release { "cpu:0" } else { "" };
        // Only a session that may release ever sets the option, so only it needs it reset on the other runs.
        if self.releasable_arena
            && let Some(bound) = self.bound_outputs.as_mut().filter(|b| b.fits(&shapes, wanted))
        {
            bound.options.set(ARENA_SHRINKAGE, shrinkage).map_err(run_error)?;
        }
        let bound = self.bound_outputs.as_ref().filter(|b| b.fits(&shapes, wanted));
        let shrinking_options = match (bound, release) {
            (None, true) => {
                let mut options = RunOptions::new().map_err(run_error)?;
                options.set(ARENA_SHRINKAGE, shrinkage).map_err(run_error)?;
                Some(options)
            }
            _ => None,
        };
        let session = self.session.as_mut().ok_or_else(|| Error::Session {
            component: component.clone(),
            action: "running",
            reason: "the session for these input shapes could not be built (see the earlier error)".to_owned(),
        })?;
        let started = std::time::Instant::now();
        let outputs = match (bound, &shrinking_options) {
            (Some(bound), _) => session.run_with_options(values, &bound.options),
            (None, Some(options)) => session.run_with_options(values, options),
            (None, None) => session.run(values),
        }
        .map_err(run_error)?;
        self.run_time += started.elapsed();
        self.runs += 1;
        if let Some(pages) = &mut self.weight_pages {
            pages.after_run(&shapes);
        }
        self.bound_runs += u64::from(bound.is_some());
        if release {
            tracing::debug!(component = %component, "released the memory arena's free blocks");
        }
        let mut result = Vec::with_capacity(wanted.len());
        for name in wanted {
            let value = outputs.get(name.as_str()).ok_or_else(|| Error::Tensor {
                component: component.clone(),
                tensor: name.clone(),
                problem: "is not an output of the model".to_owned(),
            })?;
            result.push(extract_f32(&component, name, value)?);
        }
        let learn = self.bound_io && self.bound_outputs.as_ref().is_none_or(|b| !b.fits(&shapes, wanted));
        drop(outputs);
        if learn {
            self.bound_outputs = self.preallocate_outputs(shapes, wanted, &result);
        }
        Ok(result)
    }

    /// Output tensors for the next runs with these input shapes: one per wanted f32 output, shaped like this
    /// run's. `None` (plain runs) when an output is not f32 or cannot be allocated.
    fn preallocate_outputs(
        &self,
        input_shapes: Vec<Vec<usize>>,
        wanted: &[String],
        outputs: &[ArrayD<f32>],
    ) -> Option<BoundOutputs> {
        let mut selector = OutputSelector::no_default();
        for (name, output) in wanted.iter().zip(outputs) {
            if self.output(name)?.dtype != "f32" {
                return None;
            }
            let tensor = Tensor::<f32>::new(&Allocator::default(), output.shape().to_vec()).ok()?;
            selector = selector.with(name.as_str()).preallocate(name.as_str(), tensor);
        }
        let options = RunOptions::new().ok()?.with_outputs(selector);
        Some(BoundOutputs { input_shapes, wanted: wanted.to_vec(), options })
    }

    fn input_list(&self) -> String {
        self.inputs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    fn to_value<'v>(&self, info: &TensorInfo, input: Input<'v>) -> Result<SessionInputValue<'v>> {
        let tensor_error =
            |problem: String| Error::Tensor { component: self.component.clone(), tensor: info.name.clone(), problem };
        let created: ort::Result<SessionInputValue<'v>> = match (input, info.dtype.as_str()) {
            (Input::F32(a), "f32") if self.bound_io && a.is_standard_layout() => {
                TensorRef::from_array_view(a).map(SessionInputValue::from)
            }
            (Input::F32(a), "f32") => Tensor::from_array(a.to_owned()).map(SessionInputValue::from),
            (Input::F32(a), "f16") => Tensor::from_array(a.mapv(f16::from_f32)).map(SessionInputValue::from),
            (Input::F32(a), "f64") => Tensor::from_array(a.mapv(f64::from)).map(SessionInputValue::from),
            // Integer timesteps: A1111's k-diffusion wrappers pass fractional timesteps; int64 exports round.
            (Input::F32(a), "i64") => Tensor::from_array(a.mapv(|v| v.round() as i64)).map(SessionInputValue::from),
            (Input::F32(a), "i32") => Tensor::from_array(a.mapv(|v| v.round() as i32)).map(SessionInputValue::from),
            (Input::I64(a), "i64") => Tensor::from_array(a.to_owned()).map(SessionInputValue::from),
            (Input::I64(a), "i32") => {
                let narrowed = a.mapv(|v| i32::try_from(v).unwrap_or(i32::MAX));
                Tensor::from_array(narrowed).map(SessionInputValue::from)
            }
            (Input::I64(_), other) => {
                return Err(tensor_error(format!("expects dtype {other}, but sdrt passes integer ids (i64/i32)")));
            }
            (Input::F32(_), other) => {
                return Err(tensor_error(format!("has dtype {other}, which sdrt cannot feed from f32 data")));
            }
        };
        created.map_err(|e| tensor_error(format!("could not be created: {e}")))
    }
}

impl BoundOutputs {
    fn fits(&self, input_shapes: &[Vec<usize>], wanted: &[String]) -> bool {
        self.input_shapes == input_shapes && self.wanted == wanted
    }
}

impl Input<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Input::F32(a) => a.shape(),
            Input::I64(a) => a.shape(),
        }
    }
}

/// Checks rank and the fixed dimensions the model declares.
fn check_shape(info: &TensorInfo, shape: &[usize]) -> std::result::Result<(), String> {
    let fits = info.shape.len() == shape.len()
        && info.shape.iter().zip(shape).all(|(want, got)| *want < 0 || *want as usize == *got);
    if fits {
        Ok(())
    } else {
        let wanted: Vec<String> =
            info.shape.iter().map(|d| if *d < 0 { "?".to_owned() } else { d.to_string() }).collect();
        Err(format!("expected shape [{}] ({}), found {shape:?}", wanted.join(", "), info.dtype))
    }
}

fn extract_f32(component: &str, name: &str, value: &DynValue) -> Result<ArrayD<f32>> {
    let tensor_error =
        |problem: String| Error::Tensor { component: component.to_owned(), tensor: name.to_owned(), problem };
    let element = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(tensor_error(format!("is a {other}, expected a tensor"))),
    };
    let extracted = match element {
        TensorElementType::Float32 => value.try_extract_array::<f32>().map(|a| a.to_owned()),
        TensorElementType::Float16 => value.try_extract_array::<f16>().map(|a| a.mapv(f16::to_f32)),
        TensorElementType::Float64 => value.try_extract_array::<f64>().map(|a| a.mapv(|v| v as f32)),
        other => return Err(tensor_error(format!("has dtype {other}, expected a float type"))),
    };
    extracted.map_err(|e| tensor_error(e.to_string()))
}

/// Creates an ONNX Runtime session for `source` with `config`, its symbolic dimensions fixed to `dimensions`.
fn build_session(
    component: &str,
    source: &GraphSource,
    config: &SessionConfig,
    built_from_checkpoint: bool,
    dimensions: &[(String, i64)],
) -> Result<Session> {
    let session_error = |action: &'static str| {
        let component = component.to_owned();
        move |reason: String| Error::Session { component, action, reason }
    };
    let environment = environment(&config.provider)?;
    let builder =
        Session::builder(environment).map_err(|e| session_error("creating session options")(e.to_string()))?;
    let mut builder = config.apply(builder, component, built_from_checkpoint)?;
    for (symbol, size) in dimensions {
        builder = builder
            .with_dimension_override(symbol, *size)
            .map_err(|e| session_error("fixing a symbolic dimension")(format!("`{symbol}` = {size}: {e}")))?;
    }
    match source {
        GraphSource::File(path) => builder
            .commit_from_file(path)
            .map_err(|e| session_error("loading the model")(format!("{e} (file {})", path.display()))),
        GraphSource::Built { model, folder, origin } => builder
            .with_config_entry("session.model_external_initializers_file_folder_path", folder.to_string_lossy())
            .map_err(|e| session_error("pointing at the checkpoint's folder")(e.to_string()))?
            .commit_from_memory(model)
            .map_err(|e| session_error("loading the built graph")(format!("{e} (built from {})", origin.display()))),
    }
}

/// The symbol of each dimension of a tensor input (empty where fixed or unnamed).
fn dimension_symbols(dtype: &ValueType) -> Vec<String> {
    match dtype {
        ValueType::Tensor { shape, dimension_symbols, .. } => shape
            .iter()
            .zip(dimension_symbols.iter())
            .map(|(size, symbol)| if *size < 0 { symbol.clone() } else { String::new() })
            .collect(),
        _ => Vec::new(),
    }
}

/// The names, element types and shapes a session declares for its inputs or outputs.
fn tensor_infos(outlets: &[Outlet]) -> Vec<TensorInfo> {
    let info = |outlet: &Outlet| {
        let name = outlet.name().to_owned();
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                TensorInfo { name, dtype: ty.to_string(), shape: shape.iter().copied().collect() }
            }
            other => TensorInfo { name, dtype: other.to_string(), shape: Vec::new() },
        }
    };
    outlets.iter().map(info).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: &[i64]) -> TensorInfo {
        TensorInfo { name: "sample".into(), dtype: "f32".into(), shape: shape.to_vec() }
    }

    #[test]
    fn symbolic_dimensions_accept_any_size() {
        assert!(check_shape(&info(&[-1, 4, -1, -1]), &[2, 4, 8, 8]).is_ok());
    }

    #[test]
    fn static_shapes_fix_each_named_symbol_once_and_leave_disagreements_symbolic() {
        let per_shape = PerShapeSessions {
            source: GraphSource::File(PathBuf::new()),
            config: SessionConfig::default(),
            built_from_checkpoint: false,
            symbols: vec![
                ("sample".into(), vec!["batch".into(), String::new(), "height".into(), "width".into()]),
                ("timestep".into(), vec!["steps".into()]),
                ("context".into(), vec!["batch".into(), "sequence".into(), String::new()]),
            ],
            built_for: None,
        };
        let (sample, timestep, context) = (
            ArrayD::<f32>::zeros(vec![2, 4, 8, 16]),
            ArrayD::<f32>::zeros(vec![1]),
            ArrayD::<f32>::zeros(vec![2, 77, 8]),
        );
        let inputs = vec![
            ("sample".to_owned(), Input::F32(sample.view())),
            ("timestep".to_owned(), Input::F32(timestep.view())),
            ("context".to_owned(), Input::F32(context.view())),
        ];
        let fixed = |pairs: &[(&str, i64)]| pairs.iter().map(|(s, v)| ((*s).to_owned(), *v)).collect::<Vec<_>>();
        assert_eq!(
            per_shape.dimension_values(&inputs),
            fixed(&[("batch", 2), ("height", 8), ("sequence", 77), ("steps", 1), ("width", 16)])
        );
        let context = ArrayD::<f32>::zeros(vec![1, 77, 8]);
        let disagreeing =
            vec![("sample".to_owned(), Input::F32(sample.view())), ("context".to_owned(), Input::F32(context.view()))];
        assert_eq!(
            per_shape.dimension_values(&disagreeing),
            fixed(&[("height", 8), ("sequence", 77), ("width", 16)]),
            "`batch` is 2 in one input and 1 in the other"
        );
    }

    #[test]
    fn wrong_rank_or_fixed_dimension_is_reported_with_both_shapes() {
        let message = check_shape(&info(&[-1, 4, -1, -1]), &[2, 9, 8, 8]).expect_err("channels differ");
        assert!(message.contains("[?, 4, ?, ?]") && message.contains("[2, 9, 8, 8]"), "{message}");
        assert!(check_shape(&info(&[]), &[1]).is_err());
    }
}
