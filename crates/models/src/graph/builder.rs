//! A small ONNX graph builder: named values, nodes, constants, and weights laid out in one external-data blob.
//!
//! Weights never go into the protobuf (a UNet is far over protobuf's 2 GiB limit): each is an initializer
//! whose data is `EXTERNAL`, at an offset in `model.onnx_data`. Loading a checkpoint hands ONNX Runtime each
//! weight's buffer in place of that data (no copy, no file); `sdrt convert` writes the buffers into the file.

use super::proto::{
    AttributeProto, Dimension, EXTERNAL, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attribute_type, data_type,
};

/// The external-data file name graphs refer to (optimum's name for it).
pub(crate) const WEIGHTS_FILE: &str = "model.onnx_data";
/// ONNX IR version 10 (ONNX 1.16), understood by every ONNX Runtime sdrt supports.
const IR_VERSION: i64 = 10;
/// Default-domain opset: 21 has `LayerNormalization` with broadcast scale and `GroupNormalization` per channel.
const OPSET: i64 = 21;
/// Weight offsets are aligned so ONNX Runtime can use the blob's memory in place.
const WEIGHT_ALIGNMENT: usize = 64;

/// One weight of a built graph.
pub(crate) struct Weight {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
    /// Byte offset in [`WEIGHTS_FILE`].
    pub offset: usize,
}

/// An encoded model and its weights.
pub(crate) struct BuiltGraph {
    /// The serialized `ModelProto`.
    pub model: Vec<u8>,
    /// Every weight, at the offsets the model names.
    pub weights: Vec<Weight>,
}

impl BuiltGraph {
    /// Writes [`WEIGHTS_FILE`]: every weight as little-endian f32 at its offset.
    pub(crate) fn write_weights(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut position = 0;
        for weight in &self.weights {
            out.write_all(&vec![0u8; weight.offset - position])?;
            let bytes: Vec<u8> = weight.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes)?;
            position = weight.offset + bytes.len();
        }
        Ok(())
    }
}

impl std::fmt::Debug for BuiltGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltGraph")
            .field("model_bytes", &self.model.len())
            .field("weights", &self.weights.len())
            .finish()
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
    weights: Vec<Weight>,
    /// End of the last weight in [`WEIGHTS_FILE`].
    weight_end: usize,
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

/// A float-list attribute.
#[allow(dead_code)]
pub(crate) fn attr_floats(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        floats: values.to_vec(),
        r#type: attribute_type::FLOATS,
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
            weights: Vec::new(),
            weight_end: 0,
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

    /// A weight initializer `name` with `dims`, stored in the external-data blob.
    pub(crate) fn weight(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        let offset = self.weight_end.next_multiple_of(WEIGHT_ALIGNMENT);
        self.weight_end = offset + values.len() * 4;
        let length = values.len() * 4;
        self.weights.push(Weight { name: name.to_owned(), dims: dims.to_vec(), values, offset });
        let entry = |key: &str, value: String| StringStringEntryProto { key: key.to_owned(), value };
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.to_owned(),
            raw_data: Vec::new(),
            external_data: vec![
                entry("location", WEIGHTS_FILE.to_owned()),
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

    /// Encodes the model; the weights come out separately.
    pub(crate) fn finish(self) -> BuiltGraph {
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
        BuiltGraph { model: super::proto::encode(&model), weights: self.weights }
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
