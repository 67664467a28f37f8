//! A loaded ONNX model with named inputs and outputs: the building block of the typed components.
//!
//! Callers always hand in f32 (or i64 token ids) and get f32 back; the model's declared element types decide
//! the conversion (f16 models take and return float16, int32 token ids, int64 timesteps).

use std::path::{Path, PathBuf};

use half::f16;
use ndarray::ArrayD;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

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

/// An input value before conversion to the dtype the model declares.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// Floating-point data; becomes f32, f16, f64, or (rounded) an integer type.
    F32(ArrayD<f32>),
    /// Integer data (token ids); becomes i64 or i32.
    I64(ArrayD<i64>),
}

/// One ONNX model loaded into ONNX Runtime.
pub struct OnnxModel {
    component: String,
    path: PathBuf,
    provider: ExecutionProvider,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    session: Session,
    /// Wall time spent inside `Session::run` and how many runs, for overhead measurements.
    run_time: std::time::Duration,
    runs: u64,
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
        let environment = environment()?;
        if !path.is_file() {
            return Err(Error::File { path: path.to_owned(), reason: format!("{component} model file is missing") });
        }
        let builder = Session::builder(environment).map_err(|e| Error::Session {
            component: component.to_owned(),
            action: "creating session options",
            reason: e.to_string(),
        })?;
        let mut builder = config.apply(builder, component)?;
        let session = builder.commit_from_file(path).map_err(|e| Error::Session {
            component: component.to_owned(),
            action: "loading the model",
            reason: format!("{e} (file {})", path.display()),
        })?;
        let inputs = session.inputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect();
        tracing::info!(provider = %config.provider, "session ready");
        Ok(Self {
            component: component.to_owned(),
            path: path.to_owned(),
            provider: config.provider,
            inputs,
            outputs,
            session,
            run_time: std::time::Duration::ZERO,
            runs: 0,
        })
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

    /// Runs the model on named f32 inputs and returns every output as f32 (converting from and to the dtypes
    /// the model declares).
    pub fn run_f32(&mut self, inputs: Vec<(&str, ArrayD<f32>)>) -> Result<Vec<(String, ArrayD<f32>)>> {
        let inputs = inputs.into_iter().map(|(name, array)| (name.to_owned(), Input::F32(array))).collect();
        let names: Vec<String> = self.outputs.iter().map(|t| t.name.clone()).collect();
        let outputs = self.run(inputs, &names)?;
        Ok(names.into_iter().zip(outputs).collect())
    }

    /// Runs the model and returns the outputs named in `wanted`, in that order, as f32.
    pub(crate) fn run(&mut self, inputs: Vec<(String, Input)>, wanted: &[String]) -> Result<Vec<ArrayD<f32>>> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let info = self.input(&name).ok_or_else(|| Error::Tensor {
                component: self.component.clone(),
                tensor: name.clone(),
                problem: format!("is not an input of {} (inputs: {})", self.path.display(), self.input_list()),
            })?;
            let value = self.to_value(info, input)?;
            values.push((name, value));
        }
        let component = self.component.clone();
        let started = std::time::Instant::now();
        let outputs = self.session.run(values).map_err(|e| Error::Session {
            component: component.clone(),
            action: "running",
            reason: e.to_string(),
        })?;
        self.run_time += started.elapsed();
        self.runs += 1;
        let mut result = Vec::with_capacity(wanted.len());
        for name in wanted {
            let value = outputs.get(name.as_str()).ok_or_else(|| Error::Tensor {
                component: component.clone(),
                tensor: name.clone(),
                problem: "is not an output of the model".to_owned(),
            })?;
            result.push(extract_f32(&component, name, value)?);
        }
        Ok(result)
    }

    fn input_list(&self) -> String {
        self.inputs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    fn to_value(&self, info: &TensorInfo, input: Input) -> Result<DynValue> {
        let tensor_error =
            |problem: String| Error::Tensor { component: self.component.clone(), tensor: info.name.clone(), problem };
        let shape = match &input {
            Input::F32(a) => a.shape().to_vec(),
            Input::I64(a) => a.shape().to_vec(),
        };
        check_shape(info, &shape).map_err(&tensor_error)?;
        let created = match (input, info.dtype.as_str()) {
            (Input::F32(a), "f32") => Tensor::from_array(a).map(Tensor::into_dyn),
            (Input::F32(a), "f16") => Tensor::from_array(a.mapv(f16::from_f32)).map(Tensor::into_dyn),
            (Input::F32(a), "f64") => Tensor::from_array(a.mapv(f64::from)).map(Tensor::into_dyn),
            // Integer timesteps: A1111's k-diffusion wrappers pass fractional timesteps; int64 exports round.
            (Input::F32(a), "i64") => Tensor::from_array(a.mapv(|v| v.round() as i64)).map(Tensor::into_dyn),
            (Input::F32(a), "i32") => Tensor::from_array(a.mapv(|v| v.round() as i32)).map(Tensor::into_dyn),
            (Input::I64(a), "i64") => Tensor::from_array(a).map(Tensor::into_dyn),
            (Input::I64(a), "i32") => {
                let narrowed = a.mapv(|v| i32::try_from(v).unwrap_or(i32::MAX));
                Tensor::from_array(narrowed).map(Tensor::into_dyn)
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

fn tensor_info(name: &str, dtype: &ValueType) -> TensorInfo {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => {
            TensorInfo { name: name.to_owned(), dtype: ty.to_string(), shape: shape.iter().copied().collect() }
        }
        other => TensorInfo { name: name.to_owned(), dtype: other.to_string(), shape: Vec::new() },
    }
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
    fn wrong_rank_or_fixed_dimension_is_reported_with_both_shapes() {
        let message = check_shape(&info(&[-1, 4, -1, -1]), &[2, 9, 8, 8]).expect_err("channels differ");
        assert!(message.contains("[?, 4, ?, ?]") && message.contains("[2, 9, 8, 8]"), "{message}");
        assert!(check_shape(&info(&[]), &[1]).is_err());
    }
}
