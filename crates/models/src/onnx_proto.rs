//! Just enough of the ONNX protobuf format to find the text encoder's final LayerNorm and read its weights.
//!
//! A1111's clip skip runs an earlier hidden state through CLIP's `final_layer_norm`, a step the exported
//! graph only applies to `last_hidden_state`. The weights live in the ONNX file as initializers (or
//! `Constant` nodes), possibly in external data files; this module reads the wire format directly (field
//! numbers from onnx.proto3) instead of pulling in a code generator for a handful of fields.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// CLIP's final LayerNorm: y = (x − mean) / sqrt(var + eps) · weight + bias over the last axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub epsilon: f32,
}

impl LayerNorm {
    /// Normalises every row (last axis) of `data` in place.
    pub(crate) fn apply(&self, data: &mut [f32]) {
        let width = self.weight.len();
        for row in data.chunks_mut(width) {
            let n = row.len() as f64;
            let mean = row.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
            let var = row.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + f64::from(self.epsilon)).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = ((f64::from(*v) - mean) * inv) as f32 * w + b;
            }
        }
    }
}

/// Finds the LayerNorm closest upstream of graph output `output` in the ONNX file at `path`.
///
/// Returns `Ok(None)` when the graph has no LayerNorm on that path. Recognises the fused
/// `LayerNormalization` op and the opset < 17 decomposition ending in `Add(Mul(normalised, weight), bias)`;
/// `default_epsilon` (the config's `layer_norm_eps`) is used when the epsilon is not an attribute.
pub(crate) fn final_layer_norm(path: &Path, output: &str, default_epsilon: f32) -> Result<Option<LayerNorm>> {
    let bytes = std::fs::read(path).map_err(|e| Error::File { path: path.to_owned(), reason: e.to_string() })?;
    let parse_error = |reason: String| Error::OnnxFile { path: path.to_owned(), reason };
    let graph = Graph::parse(&bytes).map_err(parse_error)?;
    let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
    graph
        .find_layer_norm(output, default_epsilon, &folder)
        .map_err(|reason| Error::OnnxFile { path: path.to_owned(), reason })
}

#[derive(Debug, Default)]
struct Node<'a> {
    op_type: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    float_attrs: HashMap<String, f32>,
    tensor_attrs: HashMap<String, &'a [u8]>,
}

#[derive(Debug, Default)]
struct Graph<'a> {
    nodes: Vec<Node<'a>>,
    /// Initializer name → encoded TensorProto.
    initializers: HashMap<String, &'a [u8]>,
}

impl<'a> Graph<'a> {
    fn parse(model: &'a [u8]) -> std::result::Result<Self, String> {
        let mut graph_bytes = None;
        for field in Fields::new(model) {
            let field = field?;
            if field.number == 7 {
                graph_bytes = Some(field.bytes()?);
            }
        }
        let graph_bytes = graph_bytes.ok_or("the file has no graph (field 7 of ModelProto)")?;
        let mut graph = Graph::default();
        for field in Fields::new(graph_bytes) {
            let field = field?;
            match field.number {
                1 => graph.nodes.push(parse_node(field.bytes()?)?),
                5 => {
                    let tensor = field.bytes()?;
                    graph.initializers.insert(tensor_name(tensor)?, tensor);
                }
                _ => {}
            }
        }
        if graph.nodes.is_empty() {
            return Err("the graph has no nodes".to_owned());
        }
        Ok(graph)
    }

    fn producer(&self, tensor: &str) -> Option<&Node<'a>> {
        self.nodes.iter().find(|n| n.outputs.iter().any(|o| o == tensor))
    }

    /// Walks upstream from `output` (breadth first, bounded) to the first LayerNorm.
    fn find_layer_norm(
        &self,
        output: &str,
        default_epsilon: f32,
        folder: &Path,
    ) -> std::result::Result<Option<LayerNorm>, String> {
        let mut frontier = vec![output.to_owned()];
        for _ in 0..12 {
            let mut next = Vec::new();
            for tensor in &frontier {
                let Some(node) = self.producer(tensor) else { continue };
                if let Some(norm) = self.as_layer_norm(node, default_epsilon, folder)? {
                    return Ok(Some(norm));
                }
                next.extend(node.inputs.iter().filter(|i| !self.initializers.contains_key(*i)).cloned());
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(None)
    }

    fn as_layer_norm(
        &self,
        node: &Node<'a>,
        default_epsilon: f32,
        folder: &Path,
    ) -> std::result::Result<Option<LayerNorm>, String> {
        if node.op_type == "LayerNormalization" && node.inputs.len() >= 3 {
            let weight = self.constant(&node.inputs[1], folder)?.ok_or("LayerNormalization scale is not a constant")?;
            let bias = self.constant(&node.inputs[2], folder)?.ok_or("LayerNormalization bias is not a constant")?;
            let epsilon = node.float_attrs.get("epsilon").copied().unwrap_or(1e-5);
            return Ok(Some(LayerNorm { weight, bias, epsilon }));
        }
        if node.op_type != "Add" || node.inputs.len() != 2 {
            return Ok(None);
        }
        for (bias_input, other) in [(1, 0), (0, 1)] {
            let Some(bias) = self.constant(&node.inputs[bias_input], folder)? else { continue };
            let Some(mul) = self.producer(&node.inputs[other]).filter(|n| n.op_type == "Mul") else { continue };
            for weight_input in &mul.inputs {
                if let Some(weight) = self.constant(weight_input, folder)?
                    && weight.len() == bias.len()
                    && weight.len() > 1
                {
                    return Ok(Some(LayerNorm { weight, bias, epsilon: default_epsilon }));
                }
            }
        }
        Ok(None)
    }

    /// The float values of an initializer or `Constant` output, looking through `Cast`/`Identity`.
    fn constant(&self, name: &str, folder: &Path) -> std::result::Result<Option<Vec<f32>>, String> {
        if let Some(tensor) = self.initializers.get(name) {
            return decode_floats(tensor, folder).map(Some);
        }
        let Some(node) = self.producer(name) else { return Ok(None) };
        match node.op_type.as_str() {
            "Constant" => match node.tensor_attrs.get("value") {
                Some(tensor) => decode_floats(tensor, folder).map(Some),
                None => Ok(None),
            },
            "Cast" | "Identity" if !node.inputs.is_empty() => self.constant(&node.inputs[0], folder),
            _ => Ok(None),
        }
    }
}

fn parse_node(bytes: &[u8]) -> std::result::Result<Node<'_>, String> {
    let mut node = Node::default();
    for field in Fields::new(bytes) {
        let field = field?;
        match field.number {
            1 => node.inputs.push(field.string()?),
            2 => node.outputs.push(field.string()?),
            4 => node.op_type = field.string()?,
            5 => parse_attribute(field.bytes()?, &mut node)?,
            _ => {}
        }
    }
    Ok(node)
}

fn parse_attribute<'a>(bytes: &'a [u8], node: &mut Node<'a>) -> std::result::Result<(), String> {
    let (mut name, mut float, mut tensor) = (String::new(), None, None);
    for field in Fields::new(bytes) {
        let field = field?;
        match (field.number, &field.value) {
            (1, _) => name = field.string()?,
            (2, Value::Fixed32(bits)) => float = Some(f32::from_bits(*bits)),
            (5, _) => tensor = Some(field.bytes()?),
            _ => {}
        }
    }
    if let Some(f) = float {
        node.float_attrs.insert(name.clone(), f);
    }
    if let Some(t) = tensor {
        node.tensor_attrs.insert(name, t);
    }
    Ok(())
}

fn tensor_name(tensor: &[u8]) -> std::result::Result<String, String> {
    for field in Fields::new(tensor) {
        let field = field?;
        if field.number == 8 {
            return field.string();
        }
    }
    Ok(String::new())
}

const FLOAT: u64 = 1;
const FLOAT16: u64 = 10;
const DOUBLE: u64 = 11;

/// Decodes a float/float16/double TensorProto (inline, raw or external data) to f32s.
fn decode_floats(tensor: &[u8], folder: &Path) -> std::result::Result<Vec<f32>, String> {
    let mut data_type = 0;
    let mut raw: Option<Vec<u8>> = None;
    let mut floats = Vec::new();
    let mut int32s = Vec::new();
    let mut external: HashMap<String, String> = HashMap::new();
    for field in Fields::new(tensor) {
        let field = field?;
        match (field.number, &field.value) {
            (2, Value::Varint(v)) => data_type = *v,
            (4, Value::Bytes(b)) => {
                floats.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
            (4, Value::Fixed32(bits)) => floats.push(f32::from_bits(*bits)),
            (5, Value::Bytes(b)) => int32s.extend(Varints(b).collect::<std::result::Result<Vec<_>, _>>()?),
            (5, Value::Varint(v)) => int32s.push(*v),
            (9, Value::Bytes(b)) => raw = Some(b.to_vec()),
            (13, Value::Bytes(entry)) => {
                let (key, value) = string_pair(entry)?;
                external.insert(key, value);
            }
            _ => {}
        }
    }
    if let Some(location) = external.get("location") {
        raw = Some(read_external(folder, location, &external)?);
    }
    match (data_type, raw) {
        (FLOAT, Some(bytes)) => {
            Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        (FLOAT, None) => Ok(floats),
        (FLOAT16, Some(bytes)) => {
            Ok(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        (FLOAT16, None) => Ok(int32s.iter().map(|v| half::f16::from_bits(*v as u16).to_f32()).collect()),
        (DOUBLE, Some(bytes)) => {
            Ok(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect())
        }
        (other, _) => Err(format!("constant has ONNX data type {other}, expected float, float16 or double")),
    }
}

fn read_external(
    folder: &Path,
    location: &str,
    entries: &HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let path: PathBuf = folder.join(location);
    let number = |key: &str| entries.get(key).and_then(|v| v.parse::<u64>().ok());
    let mut file = std::fs::File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let offset = number("offset").unwrap_or(0);
    file.seek(SeekFrom::Start(offset)).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    match number("length") {
        Some(length) => {
            bytes.resize(length as usize, 0);
            file.read_exact(&mut bytes).map_err(|e| format!("external data {}: {e}", path.display()))?;
        }
        None => {
            file.read_to_end(&mut bytes).map_err(|e| format!("external data {}: {e}", path.display()))?;
        }
    }
    Ok(bytes)
}

fn string_pair(entry: &[u8]) -> std::result::Result<(String, String), String> {
    let (mut key, mut value) = (String::new(), String::new());
    for field in Fields::new(entry) {
        let field = field?;
        match field.number {
            1 => key = field.string()?,
            2 => value = field.string()?,
            _ => {}
        }
    }
    Ok((key, value))
}

// ------------------------------------------------------------------------------------------- wire format

#[derive(Debug)]
enum Value<'a> {
    Varint(u64),
    /// Skipped: no field sdrt reads is a fixed64.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

#[derive(Debug)]
struct Field<'a> {
    number: u64,
    value: Value<'a>,
}

impl<'a> Field<'a> {
    fn bytes(&self) -> std::result::Result<&'a [u8], String> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(format!("field {} should be length-delimited", self.number)),
        }
    }

    fn string(&self) -> std::result::Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| format!("field {} is not UTF-8", self.number))
    }
}

/// Iterates the fields of one protobuf message; a malformed or truncated message yields an error.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn next_field(&mut self) -> std::result::Result<Field<'a>, String> {
        let key = read_varint(&mut self.rest)?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut self.rest)?),
            1 => {
                take(&mut self.rest, 8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(read_varint(&mut self.rest)?).map_err(|_| "length overflows")?;
                Value::Bytes(take(&mut self.rest, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(take(&mut self.rest, 4)?.try_into().map_err(|_| "short fixed32")?)),
            other => return Err(format!("unsupported protobuf wire type {other} (field {number}): file is corrupt")),
        };
        if number == 0 {
            return Err("protobuf field number 0: file is corrupt".to_owned());
        }
        Ok(Field { number, value })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = std::result::Result<Field<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

struct Varints<'a>(&'a [u8]);

impl Iterator for Varints<'_> {
    type Item = std::result::Result<u64, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() { None } else { Some(read_varint(&mut self.0)) }
    }
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> std::result::Result<&'a [u8], String> {
    if rest.len() < len {
        return Err(format!("truncated: needs {len} more bytes, {} left", rest.len()));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn read_varint(rest: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first().ok_or("truncated varint")?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes: file is corrupt".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(number << 3 | 2);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn float_tensor(name: &str, values: &[f32]) -> Vec<u8> {
        let mut t = varint(2 << 3);
        t.extend(varint(FLOAT));
        t.extend(bytes_field(8, name.as_bytes()));
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.extend(bytes_field(9, &raw));
        t
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            n.extend(bytes_field(1, i.as_bytes()));
        }
        n.extend(bytes_field(2, output.as_bytes()));
        n.extend(bytes_field(4, op.as_bytes()));
        n
    }

    fn model(nodes: &[Vec<u8>], initializers: &[Vec<u8>]) -> Vec<u8> {
        let mut g = Vec::new();
        for n in nodes {
            g.extend(bytes_field(1, n));
        }
        for t in initializers {
            g.extend(bytes_field(5, t));
        }
        bytes_field(7, &g)
    }

    #[test]
    fn finds_a_fused_layer_norm_through_an_identity() {
        let bytes = model(
            &[
                node("LayerNormalization", &["h", "w", "b"], "normed"),
                node("Identity", &["normed"], "last_hidden_state"),
            ],
            &[float_tensor("w", &[1.0, 2.0]), float_tensor("b", &[0.5, -0.5])],
        );
        let graph = Graph::parse(&bytes).expect("parses");
        let norm = graph.find_layer_norm("last_hidden_state", 1e-5, Path::new(".")).expect("ok").expect("found");
        assert_eq!(norm.weight, vec![1.0, 2.0]);
        assert_eq!(norm.bias, vec![0.5, -0.5]);
    }

    #[test]
    fn finds_a_decomposed_layer_norm() {
        let bytes = model(
            &[
                node("Div", &["x", "s"], "n"),
                node("Mul", &["n", "w"], "m"),
                node("Add", &["m", "b"], "last_hidden_state"),
            ],
            &[float_tensor("w", &[3.0, 4.0]), float_tensor("b", &[1.0, 2.0])],
        );
        let graph = Graph::parse(&bytes).expect("parses");
        let norm = graph.find_layer_norm("last_hidden_state", 1e-5, Path::new(".")).expect("ok").expect("found");
        assert_eq!((norm.weight, norm.bias, norm.epsilon), (vec![3.0, 4.0], vec![1.0, 2.0], 1e-5));
    }

    #[test]
    fn truncated_bytes_are_an_error_not_a_panic() {
        let bytes = model(&[node("Relu", &["x"], "y")], &[]);
        for cut in 1..bytes.len() {
            let _ = Graph::parse(&bytes[..cut]);
        }
        assert!(Graph::parse(&bytes[..bytes.len() - 2]).is_err());
        assert!(Graph::parse(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn layer_norm_matches_the_formula() {
        let norm = LayerNorm { weight: vec![2.0, 2.0], bias: vec![1.0, 1.0], epsilon: 0.0 };
        let mut row = [1.0f32, 3.0];
        norm.apply(&mut row);
        assert_eq!(row, [-1.0, 3.0]);
    }
}
