//! A1111's random sources against tests/fixtures/rng/: torch CPU randn (AVX2 and scalar kernels), NV
//! (Philox), torch CUDA randn (computed by the NV algorithm), and ImageRNG compositions (streams, ENSD,
//! variation seeds, seed resize, batches). Prints the largest difference per path (`--nocapture`).

use ndarray::{ArrayD, Axis, IxDyn};
use sdrt_processing::{CpuKernel, ImageRng, NoiseGenerator, NoiseParams, RandomSource, randn};
use sdrt_tests::{fixture, fixture_json};
use serde_json::Value;

/// Reads a little-endian float32, C-order `.npy` file (the only kind the rng fixtures hold).
fn load_npy(relative: &str) -> ArrayD<f32> {
    let bytes = std::fs::read(fixture(relative)).expect("readable fixture");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{relative} is not .npy");
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).expect("ascii header");
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let inside = &header[header.find("'shape': (").expect("shape") + 10..];
    let shape: Vec<usize> =
        inside[..inside.find(')').expect("shape end")].split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let data: Vec<f32> = bytes[header_start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("data matches shape")
}

fn shape_of(value: &Value) -> Vec<usize> {
    value.as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect()
}

/// Largest |a − b|; also checks the shapes agree.
fn max_diff(got: &ArrayD<f32>, expected: &ArrayD<f32>, what: &str) -> f32 {
    assert_eq!(got.shape(), expected.shape(), "{what}");
    got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn source_of(label: &str) -> RandomSource {
    match label {
        "cpu_avx2" => RandomSource::Cpu(CpuKernel::Avx2),
        "cpu_default" => RandomSource::Cpu(CpuKernel::Scalar),
        "nv" => RandomSource::Nv,
        "gpu" => RandomSource::Gpu,
        other => panic!("unknown source {other}"),
    }
}

/// (source label, tolerance): CPU is bit-exact; NV/GPU allow a few float32 ulps (another libm; real CUDA).
const PAIR_SOURCES: [(&str, f32); 4] = [("cpu_avx2", 0.0), ("cpu_default", 0.0), ("nv", 1e-6), ("gpu", 3e-6)];

#[test]
fn single_draws_match_every_source() {
    let cases = fixture_json("rng/cases.json");
    for (label, tolerance) in PAIR_SOURCES {
        let mut worst = 0.0f32;
        let mut compared = 0;
        for pair in cases["pairs"].as_array().expect("pairs") {
            let Some(file) = pair["files"][label].as_str() else { continue };
            let seed = pair["seed"].as_u64().expect("seed");
            let shape = shape_of(&pair["shape"]);
            let got = randn(source_of(label), seed, &shape);
            let diff = max_diff(&got, &load_npy(&format!("rng/{file}")), file);
            assert!(diff <= tolerance, "{label} seed {seed} {shape:?}: max |Δ| {diff}");
            worst = worst.max(diff);
            compared += 1;
        }
        assert!(compared >= 20, "{label}: only {compared} pairs");
        println!("{label}: {compared} pairs, max |Δ| = {worst:e}");
    }
}

fn compositions<'a>(cases: &'a Value, label: &str, kind: &str) -> &'a Vec<Value> {
    cases["compositions"][label][kind].as_array().unwrap_or_else(|| panic!("{label} {kind}"))
}

const COMPOSITION_SOURCES: [(&str, f32); 3] = [("cpu_avx2", 0.0), ("cpu_default", 0.0), ("nv", 1e-6)];

#[test]
fn consecutive_draws_continue_the_stream() {
    let cases = fixture_json("rng/cases.json");
    for (label, tolerance) in COMPOSITION_SOURCES {
        for stream in compositions(&cases, label, "streams") {
            let mut generator = NoiseGenerator::new(source_of(label), stream["seed"].as_u64().expect("seed"));
            for (shape, file) in
                stream["shapes"].as_array().expect("shapes").iter().zip(stream["files"].as_array().expect("files"))
            {
                let file = file.as_str().expect("file");
                let diff = max_diff(&generator.randn(&shape_of(shape)), &load_npy(&format!("rng/{file}")), file);
                assert!(diff <= tolerance, "{label} {file}: {diff}");
            }
        }
    }
}

fn image_rng(label: &str, seed: u64, subseed: u64, strength: f32, resize: (i64, i64), ensd: u64) -> ImageRng {
    ImageRng::new(NoiseParams {
        latent_shape: [4, 6, 10],
        seeds: vec![seed],
        subseeds: vec![subseed],
        subseed_strength: strength,
        seed_resize_from: resize,
        source: source_of(label),
        eta_noise_seed_delta: ensd,
    })
    .expect("valid noise parameters")
}

fn first_image(noise: ArrayD<f32>) -> ArrayD<f32> {
    noise.index_axis(Axis(0), 0).to_owned()
}

#[test]
fn ensd_reseeds_the_sampler_stream() {
    let cases = fixture_json("rng/cases.json");
    for (label, tolerance) in COMPOSITION_SOURCES {
        for case in compositions(&cases, label, "ensd") {
            let seed = case["seed"].as_u64().expect("seed");
            let mut rng = image_rng(label, seed, 0, 0.0, (0, 0), case["ensd"].as_u64().expect("ensd"));
            for file in case["files"].as_array().expect("files") {
                let file = file.as_str().expect("file");
                let got = first_image(rng.next().expect("noise"));
                let diff = max_diff(&got, &load_npy(&format!("rng/{file}")), file);
                assert!(diff <= tolerance, "{label} {file}: {diff}");
            }
        }
    }
}

#[test]
fn variation_seeds_and_seed_resize_match_a1111() {
    let cases = fixture_json("rng/cases.json");
    for (label, _) in COMPOSITION_SOURCES {
        let mut worst = 0.0f32;
        let variation = compositions(&cases, label, "variation").iter().map(|c| (c, (0, 0)));
        let resize = compositions(&cases, label, "resize")
            .iter()
            .map(|c| (c, (c["seed_resize_from_h"].as_i64().expect("h"), c["seed_resize_from_w"].as_i64().expect("w"))));
        for (case, from) in variation.chain(resize) {
            let seed = case["seed"].as_u64().expect("seed");
            let subseed = case["subseed"].as_u64().unwrap_or(0);
            let strength = case["strength"].as_f64().expect("strength") as f32;
            let file = case["file"].as_str().expect("file");
            let got = first_image(image_rng(label, seed, subseed, strength, from, 0).first().expect("noise"));
            let diff = max_diff(&got, &load_npy(&format!("rng/{file}")), file);
            // slerp runs in torch float32 with its own reduction order; the pure draws and pastes are exact.
            let tolerance = if strength == 0.0 && label != "nv" { 0.0 } else { 2e-6 };
            assert!(diff <= tolerance, "{label} {file}: {diff}");
            worst = worst.max(diff);
        }
        println!("{label}: variation/resize max |Δ| = {worst:e}");
    }
}

#[test]
fn batches_stack_per_image_noise() {
    let cases = fixture_json("rng/cases.json");
    for (label, tolerance) in COMPOSITION_SOURCES {
        for case in compositions(&cases, label, "batch") {
            let ids = |key: &str| -> Vec<u64> {
                case[key].as_array().expect("ids").iter().map(|s| s.as_u64().expect("id")).collect()
            };
            let mut rng = ImageRng::new(NoiseParams {
                latent_shape: [4, 6, 10],
                seeds: ids("seeds"),
                subseeds: ids("subseeds"),
                subseed_strength: case["strength"].as_f64().expect("strength") as f32,
                seed_resize_from: (0, 0),
                source: source_of(label),
                eta_noise_seed_delta: 0,
            })
            .expect("valid noise parameters");
            let file = case["file"].as_str().expect("file");
            let diff = max_diff(&rng.first().expect("noise"), &load_npy(&format!("rng/{file}")), file);
            assert!(diff <= tolerance, "{label} {file}: {diff}");
        }
    }
}
