//! A loaded ONNX model with named f32 inputs and outputs: the building block of the typed components.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ort::session::Session;
use ort::value::Tensor;

use crate::error::{Error, Result};
use crate::runtime_library::environment;

/// Name, element type and shape of one model input or output, as the ONNX file declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type, e.g. `float32`, `float16`, `int64`.
    pub dtype: String,
    /// Dimensions; `-1` for symbolic ones.
    pub shape: Vec<i64>,
}

/// One ONNX model loaded into ONNX Runtime.
pub struct OnnxModel {
    component: String,
    path: PathBuf,
    session: Session,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("component", &self.component).field("path", &self.path).finish()
    }
}

impl OnnxModel {
    /// Loads `path` as component `component` (used in error messages) on the CPU provider.
    pub fn load(component: &str, path: &Path) -> Result<Self> {
        let environment = environment()?;
        if !path.is_file() {
            return Err(Error::File { path: path.to_owned(), reason: format!("{component} model file is missing") });
        }
        let session =
            Session::builder(environment).and_then(|mut builder| builder.commit_from_file(path)).map_err(|e| {
                Error::Session { component: component.to_owned(), action: "loading the model", reason: e.to_string() }
            })?;
        Ok(Self { component: component.to_owned(), path: path.to_owned(), session })
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.session.inputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect()
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.session.outputs().iter().map(|o| tensor_info(o.name(), o.dtype())).collect()
    }

    /// Runs the model on named f32 inputs and returns every output as f32.
    pub fn run_f32(&mut self, inputs: Vec<(&str, ArrayD<f32>)>) -> Result<Vec<(String, ArrayD<f32>)>> {
        let component = self.component.clone();
        let session_error = |action: &'static str| {
            let component = component.clone();
            move |e: ort::Error| Error::Session { component, action, reason: e.to_string() }
        };
        let mut values = Vec::with_capacity(inputs.len());
        for (name, array) in inputs {
            let tensor = Tensor::from_array(array).map_err(session_error("creating an input tensor"))?;
            values.push((name.to_owned(), tensor.into_dyn()));
        }
        let outputs = self.session.run(values).map_err(session_error("running"))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let array = value.try_extract_array::<f32>().map_err(|e| Error::Tensor {
                component: component.clone(),
                tensor: name.to_owned(),
                problem: e.to_string(),
            })?;
            result.push((name.to_owned(), array.to_owned()));
        }
        Ok(result)
    }
}

fn tensor_info(name: &str, dtype: &ort::value::ValueType) -> TensorInfo {
    match dtype {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            TensorInfo { name: name.to_owned(), dtype: ty.to_string(), shape: shape.iter().copied().collect() }
        }
        other => TensorInfo { name: name.to_owned(), dtype: other.to_string(), shape: Vec::new() },
    }
}
