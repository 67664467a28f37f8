//! A small ONNX graph builder: named values, nodes, constants, and weights that stay in the checkpoint file.
//!
//! Weights never go into the protobuf (a UNet is far over protobuf's 2 GiB limit) and are never copied by
//! sdrt: each is an `EXTERNAL` initializer naming its byte range in the checkpoint, which ONNX Runtime reads
//! (and owns, so it can free what pre-packing and constant folding replace). Layout changes (transposes,
//! fused q/k/v, f16→f32) are graph nodes on those initializers that the runtime folds at load.
//! `sdrt convert` copies the same byte ranges into `model.onnx_data`.

use std::path::{Path, PathBuf};

use super::proto::{
    AttributeProto, Dimension, EXTERNAL, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attribute_type, data_type,
};

/// The external-data file name of converted components (optimum's name for it).
pub(crate) const WEIGHTS_FILE: &str = "model.onnx_data";
/// ONNX IR version 10 (ONNX 1.16), understood by every ONNX Runtime sdrt supports.
const IR_VERSION: i64 = 10;
/// Default-domain opset: 21 has `LayerNormalization` with broadcast scale and `GroupNormalization` per channel.
const OPSET: i64 = 21;
/// Weight offsets in a converted `model.onnx_data` are aligned so runtimes can map them in place.
const WEIGHT_ALIGNMENT: u64 = 64;

/// An ONNX model whose weights are byte ranges of `source`.
pub(crate) struct BuiltGraph {
    pub(super) model: ModelProto,
    source: PathBuf,
}

impl std::fmt::Debug for BuiltGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let initializers = self.model.graph.as_ref().map_or(0, |g| g.initializer.len());
        f.debug_struct("BuiltGraph").field("source", &self.source).field("initializers", &initializers).finish()
    }
}

impl BuiltGraph {
    /// The model bytes to load from memory and the folder ONNX Runtime resolves their external data in (the
    /// checkpoint's).
    pub(crate) fn for_loading(&self) -> (Vec<u8>, PathBuf) {
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut model = self.model.clone();
        for_each_external(&mut model, |tensor| set_entry(tensor, "location", file_name.clone()));
        let folder = self.source.parent().map(Path::to_path_buf).unwrap_or_default();
        (super::proto::encode(&model), folder)
    }

    /// Writes `dir/model.onnx` and `dir/model.onnx_data`, copying each weight's bytes with `copy`
    /// (`start`, `end`, writer) from the source.
    pub(crate) fn write_folder(
        &self,
        dir: &Path,
        copy: impl Fn(usize, usize, &mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut data = std::io::BufWriter::new(std::fs::File::create(dir.join(WEIGHTS_FILE))?);
        let mut model = self.model.clone();
        let mut position = 0u64;
        let mut failure = None;
        for_each_external(&mut model, |tensor| {
            let (start, length) = (entry_u64(tensor, "offset"), entry_u64(tensor, "length"));
            let aligned = position.next_multiple_of(WEIGHT_ALIGNMENT);
            let result = std::io::Write::write_all(&mut data, &vec![0u8; (aligned - position) as usize])
                .and_then(|()| copy(start as usize, (start + length) as usize, &mut data));
            if let Err(e) = result {
                failure.get_or_insert(e);
            }
            set_entry(tensor, "location", WEIGHTS_FILE.to_owned());
            set_entry(tensor, "offset", aligned.to_string());
            position = aligned + length;
        });
        if let Some(e) = failure {
            return Err(e);
        }
        std::io::Write::flush(&mut data)?;
        std::fs::write(dir.join("model.onnx"), super::proto::encode(&model))
    }
}

fn for_each_external(model: &mut ModelProto, mut visit: impl FnMut(&mut TensorProto)) {
    if let Some(graph) = model.graph.as_mut() {
        graph.initializer.iter_mut().filter(|t| t.data_location == EXTERNAL).for_each(&mut visit);
    }
}

fn entry_u64(tensor: &TensorProto, key: &str) -> u64 {
    tensor.external_data.iter().find(|e| e.key == key).and_then(|e| e.value.parse().ok()).unwrap_or(0)
}

fn set_entry(tensor: &mut TensorProto, key: &str, value: String) {
    match tensor.external_data.iter_mut().find(|e| e.key == key) {
        Some(entry) => entry.value = value,
        None => tensor.external_data.push(StringStringEntryProto { key: key.to_owned(), value }),
    }
}

/// A tensor's element type on a graph input or output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ElementType {
    F32,
    I64,
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Builds one graph; values are referred to by name.
pub(crate) struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next_id: usize,
    uses_microsoft_domain: bool,
}

/// A node attribute.
pub(crate) fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.to_owned(), i: Some(value), r#type: attribute_type::INT, ..Default::default() }
}

/// A float attribute.
pub(crate) fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.to_owned(), f: Some(value), r#type: attribute_type::FLOAT, ..Default::default() }
}

/// An integer-list attribute.
pub(crate) fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.to_owned(), ints: values.to_vec(), r#type: attribute_type::INTS, ..Default::default() }
}

/// A string attribute.
pub(crate) fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        s: value.as_bytes().to_vec(),
        r#type: attribute_type::STRING,
        ..Default::default()
    }
}

impl GraphBuilder {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            next_id: 0,
            uses_microsoft_domain: false,
        }
    }

    /// Declares a graph input and returns its name.
    pub(crate) fn input(&mut self, name: &str, element: ElementType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, element, dims));
        name.to_owned()
    }

    /// Declares `value` as graph output `name` (through an `Identity` when the names differ).
    pub(crate) fn output(&mut self, value: &str, name: &str, element: ElementType, dims: &[Dim]) {
        if value != name {
            self.nodes.push(NodeProto {
                input: vec![value.to_owned()],
                output: vec![name.to_owned()],
                op_type: "Identity".to_owned(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, element, dims));
    }

    /// A default-domain node with one output.
    pub(crate) fn op(&mut self, op_type: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attributes).remove(0)
    }

    /// A default-domain node with `outputs` outputs.
    pub(crate) fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.push_node("", op_type, inputs, outputs, attributes)
    }

    /// A `com.microsoft` contrib node with one output.
    pub(crate) fn microsoft_op(&mut self, op_type: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.uses_microsoft_domain = true;
        self.push_node("com.microsoft", op_type, inputs, 1, attributes).remove(0)
    }

    fn push_node(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..outputs).map(|_| self.fresh_name()).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.clone(),
            name: String::new(),
            op_type: op_type.to_owned(),
            attribute: attributes,
            domain: domain.to_owned(),
        });
        outputs
    }

    fn fresh_name(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// A weight initializer `name`: `length` bytes at `offset` of the source file, ONNX element type
    /// `data_type`, shape `dims`.
    pub(crate) fn stored(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        offset: usize,
        length: usize,
    ) -> String {
        let entry = |key: &str, value: String| StringStringEntryProto { key: key.to_owned(), value };
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.to_owned(),
            raw_data: Vec::new(),
            external_data: vec![
                entry("location", String::new()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            data_location: EXTERNAL,
        });
        name.to_owned()
    }

    /// A small f32 constant kept inside the model.
    pub(crate) fn const_f32(&mut self, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(dims, data_type::FLOAT, raw)
    }

    /// A 1-D int64 constant kept inside the model (shapes, axes, indices).
    pub(crate) fn const_i64(&mut self, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&[values.len()], data_type::INT64, raw)
    }

    fn constant(&mut self, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> String {
        let name = format!("const{}", self.initializers.len());
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
            ..Default::default()
        });
        name
    }

    /// The finished model, its weights in `source`.
    pub(crate) fn finish(self, source: &Path) -> BuiltGraph {
        let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: OPSET }];
        if self.uses_microsoft_domain {
            opset_import.push(OperatorSetIdProto { domain: "com.microsoft".to_owned(), version: 1 });
        }
        let model = ModelProto {
            ir_version: IR_VERSION,
            producer_name: "sdrt".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
            }),
            opset_import,
        };
        BuiltGraph { model, source: source.to_owned() }
    }
}

fn value_info(name: &str, element: ElementType, dims: &[Dim]) -> ValueInfoProto {
    let elem_type = match element {
        ElementType::F32 => data_type::FLOAT,
        ElementType::I64 => data_type::INT64,
    };
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension { dim_value: Some(*v), dim_param: None },
            Dim::Named(n) => Dimension { dim_value: None, dim_param: Some((*n).to_owned()) },
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}
