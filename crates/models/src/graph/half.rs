//! fp16 compute for a built graph: the activations downstream of chosen inputs run in half precision, the
//! graph's inputs and outputs stay f32.
//!
//! Rather than flip every float in the graph (which would also put the sinusoidal timestep embedding, whose
//! arguments reach 1000 radians, into a type with a step of 0.5 there), types are propagated in node order: the
//! chosen inputs are cast to f16 on entry, a node with an f16 float input computes in f16 (its other float
//! inputs get a `Cast` to f16; for weights ONNX Runtime folds those casts into f16 initializers at load), and a
//! node whose float inputs are all f32 stays f32. Small f32 side paths (the timestep MLP, LoRA products) so
//! stay exact until they meet the f16 stream, as in diffusers' `unet.half()` where the embedding is computed in
//! f32 and cast to the sample's dtype.

use std::collections::HashMap;

use super::builder::attr_int;
use super::proto::{ModelProto, NodeProto, data_type};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    F32,
    F16,
    /// Integers, booleans, bf16 weights before their cast: never converted.
    Other,
}

/// Operators whose outputs are not floats whatever their inputs.
const NON_FLOAT_OUTPUTS: &[&str] = &["Shape", "ArgMax", "Size"];

/// Inputs that ONNX fixes to f32 whatever the data's type (`Resize`'s roi and scales).
fn fixed_f32_inputs(op_type: &str) -> &'static [usize] {
    match op_type {
        "Resize" => &[1, 2],
        _ => &[],
    }
}

/// Rewrites `model` so that everything downstream of the f32 graph inputs named in `half_inputs` computes in
/// f16; the graph's outputs are cast back to f32.
pub(crate) fn compute_in_half(model: &mut ModelProto, half_inputs: &[&str]) {
    let Some(graph) = model.graph.as_mut() else { return };
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    for tensor in &graph.initializer {
        kinds.insert(tensor.name.clone(), kind_of(tensor.data_type));
    }
    let mut nodes = Vec::with_capacity(graph.node.len() * 5 / 4);
    let mut renamed: HashMap<String, String> = HashMap::new();
    for input in &graph.input {
        let element = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).map_or(0, |t| t.elem_type);
        let kind = kind_of(element);
        if kind == Kind::F32 && half_inputs.contains(&input.name.as_str()) {
            let half = format!("{}__f16", input.name);
            nodes.push(cast(&input.name, &half, data_type::FLOAT16));
            kinds.insert(half.clone(), Kind::F16);
            renamed.insert(input.name.clone(), half);
        }
        kinds.insert(input.name.clone(), kind);
    }
    let mut half_copies: HashMap<String, String> = HashMap::new();
    for mut node in std::mem::take(&mut graph.node) {
        for input in &mut node.input {
            if let Some(name) = renamed.get(input.as_str()) {
                input.clone_from(name);
            }
        }
        let fixed = fixed_f32_inputs(&node.op_type);
        let kind_at = |kinds: &HashMap<String, Kind>, name: &str| kinds.get(name).copied().unwrap_or(Kind::Other);
        let floats =
            |kind: Kind| node.input.iter().enumerate().any(|(i, x)| !fixed.contains(&i) && kind_at(&kinds, x) == kind);
        let output_kind = if node.op_type == "Cast" {
            let to = node.attribute.iter().find(|a| a.name == "to").and_then(|a| a.i).unwrap_or(0);
            kind_of(to as i32)
        } else if floats(Kind::F16) {
            for (position, input) in node.input.iter_mut().enumerate() {
                if fixed.contains(&position) || kind_at(&kinds, input) != Kind::F32 {
                    continue;
                }
                let half = half_copies.entry(input.clone()).or_insert_with(|| {
                    let half = format!("{input}__f16");
                    nodes.push(cast(input, &half, data_type::FLOAT16));
                    half
                });
                kinds.insert(half.clone(), Kind::F16);
                input.clone_from(half);
            }
            Kind::F16
        } else if floats(Kind::F32) {
            Kind::F32
        } else {
            Kind::Other
        };
        let output_kind = if NON_FLOAT_OUTPUTS.contains(&node.op_type.as_str()) { Kind::Other } else { output_kind };
        for output in &node.output {
            kinds.insert(output.clone(), output_kind);
        }
        nodes.push(node);
    }
    for output in &graph.output {
        if kinds.get(&output.name) != Some(&Kind::F16) {
            continue;
        }
        let half = format!("{}__f16", output.name);
        for node in &mut nodes {
            for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                if *name == output.name {
                    name.clone_from(&half);
                }
            }
        }
        nodes.push(cast(&half, &output.name, data_type::FLOAT));
    }
    graph.node = nodes;
}

fn kind_of(element: i32) -> Kind {
    match element {
        data_type::FLOAT => Kind::F32,
        data_type::FLOAT16 => Kind::F16,
        _ => Kind::Other,
    }
}

fn cast(from: &str, to: &str, element: i32) -> NodeProto {
    NodeProto {
        input: vec![from.to_owned()],
        output: vec![to.to_owned()],
        op_type: "Cast".to_owned(),
        attribute: vec![attr_int("to", i64::from(element))],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::{Dim, ElementType, GraphBuilder};

    /// `out = sample · cos(t · freq) + weight`: the sinusoid stays f32, the sample's product is f16, the output f32.
    #[test]
    fn only_what_the_half_inputs_reach_computes_in_half() {
        let mut g = GraphBuilder::new("probe");
        let sample = g.input("sample", ElementType::F32, &[Dim::Fixed(4)]);
        let t = g.input("t", ElementType::F32, &[Dim::Fixed(4)]);
        let freq = g.const_f32(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let weight = g.const_f32(&[4], &[0.5; 4]);
        let angle = g.op("Mul", &[&t, &freq], vec![]);
        let wave = g.op("Cos", &[&angle], vec![]);
        let scaled = g.op("Mul", &[&sample, &wave], vec![]);
        let shape = g.op("Shape", &[&scaled], vec![]);
        let flat = g.op("Reshape", &[&scaled, &shape], vec![]);
        let out = g.op("Add", &[&flat, &weight], vec![]);
        g.output(&out, "out", ElementType::F32, &[Dim::Fixed(4)]);
        let mut model = g.finish(std::path::Path::new("probe.safetensors")).model;
        compute_in_half(&mut model, &["sample"]);
        let nodes = model.graph.unwrap().node;
        let casts_to = |to: i32| -> Vec<(String, String)> {
            nodes
                .iter()
                .filter(|n| n.op_type == "Cast" && n.attribute[0].i == Some(i64::from(to)))
                .map(|n| (n.input[0].clone(), n.output[0].clone()))
                .collect()
        };
        let to_half: Vec<String> = casts_to(data_type::FLOAT16).into_iter().map(|(from, _)| from).collect();
        assert_eq!(to_half, ["sample", &wave, &weight], "the sample on entry, f32 values where they meet f16");
        assert_eq!(casts_to(data_type::FLOAT), [("out__f16".to_owned(), "out".to_owned())]);
        let cos = nodes.iter().find(|n| n.op_type == "Cos").unwrap();
        assert_eq!(cos.input, [angle], "the sinusoid is computed from f32 values");
        let reshape = nodes.iter().find(|n| n.op_type == "Reshape").unwrap();
        assert_eq!(reshape.input[1], shape, "Shape's int64 output is never cast");
    }
}
