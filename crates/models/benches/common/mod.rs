//! What the models benches share: the sd15-tiny fixture's component files and deterministic inputs.

use std::path::PathBuf;

/// `component/model.onnx` of the committed sd15-tiny pipeline.
pub fn sd15_tiny(component: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models/sd15-tiny")
        .join(component)
        .join("model.onnx")
}

/// Deterministic values in [−0.5, 0.5) from a multiplicative hash.
pub fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
        .collect()
}
