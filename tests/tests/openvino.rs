//! The OpenVINO execution provider through ONNX Runtime's `onnxruntime-openvino` build
//! (`cargo xtask provision-ort --openvino`). This test binary loads that build, so every session in it runs
//! through it: the A1111 oracle cases must reproduce on it as on the CPU provider.

use std::sync::Arc;

use sdrt_models::{
    Checkpoint, CheckpointOptions, Error, ExecutionProvider, GraphOptions, OnnxModel, OpenVinoDevice, Precision,
    PrecisionChoice, RuntimeBuild, SessionConfig,
};
use sdrt_runtime::{GenerationJob, ModelProvider, ProcessingRunner};
use sdrt_tests::oracle::{checkpoint_twin_cases, reproduce_cases_with, request, settings};
use sdrt_tests::{fixture, fixture_json};

fn openvino(precision: Precision) -> SessionConfig {
    SessionConfig {
        provider: ExecutionProvider::OpenVino { device: OpenVinoDevice::Cpu, precision },
        intra_op_threads: Some(1),
        ..SessionConfig::default()
    }
}

/// Static shapes and the compiled-model cache change nothing in the results: every oracle case reproduces with
/// both, and the cache folder holds what OpenVINO compiled.
#[test]
fn static_shapes_and_the_compiled_model_cache_reproduce_every_case() {
    let cache = tempfile::tempdir().unwrap();
    let config = SessionConfig {
        openvino_static_shapes: true,
        openvino_cache: Some(cache.path().to_owned()),
        ..openvino(Precision::Fp32)
    };
    reproduce_cases_with("e2e/cases.json", fixture_json("e2e/cases.json"), config);
    let cached = std::fs::read_dir(cache.path()).unwrap().count();
    assert!(cached > 0, "OpenVINO wrote nothing into its cache folder {}", cache.path().display());
}

/// Graphs built from checkpoints are rebuilt for new shapes from the graph kept in memory, their weights still
/// read from the checkpoint.
#[test]
fn checkpoint_graphs_reproduce_with_static_shapes() {
    let config = SessionConfig { openvino_static_shapes: true, ..openvino(Precision::Fp32) };
    let cases = reproduce_cases_with("e2e/cases.json", checkpoint_twin_cases("e2e/cases.json"), config);
    assert!(!cases["cases"].as_array().unwrap().is_empty());
}

#[test]
fn every_reference_case_reproduces_on_openvino_fp32() {
    let cases = reproduce_cases_with("e2e/cases.json", fixture_json("e2e/cases.json"), openvino(Precision::Fp32));
    assert!(cases["cases"].as_array().unwrap().len() >= 12, "the oracle has its cases");
}

/// Graphs built from checkpoints use standard ONNX operators only on OpenVINO (no MultiHeadAttention or
/// FusedMatMul), so OpenVINO compiles them whole.
#[test]
fn checkpoint_graphs_reproduce_on_openvino_fp32() {
    let cases = checkpoint_twin_cases("e2e/cases.json");
    let cases = reproduce_cases_with("e2e/cases.json", cases, openvino(Precision::Fp32));
    assert!(!cases["cases"].as_array().unwrap().is_empty());
}

#[test]
fn a_graph_openvino_cannot_take_whole_is_refused_not_run_on_cpu() {
    sdrt_models::ensure_runtime_for(&openvino(Precision::Fp32).provider).unwrap();
    let checkpoint =
        Checkpoint::open(&fixture("checkpoints/sd15-tiny.safetensors"), CheckpointOptions::default()).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let converted = folder.path().join("model");
    // The default graph options use ONNX Runtime's contrib operators, which only its CPU provider runs.
    checkpoint.convert(&converted, GraphOptions::default()).unwrap();
    let unet = converted.join("unet/model.onnx");
    let error = OnnxModel::load_with("unet", &unet, &openvino(Precision::Fp32)).expect_err("must be refused");
    let message = error.to_string();
    assert!(message.contains("unet") && message.contains("fallback"), "{message}");
    // The same file runs on the CPU provider of this build.
    let cpu = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    OnnxModel::load_with("unet", &unet, &cpu).expect("the CPU provider takes contrib operators");
}

#[test]
fn this_process_refuses_providers_its_build_cannot_run() {
    let location = sdrt_models::ensure_runtime_for(&openvino(Precision::Fp32).provider).unwrap();
    assert_eq!(location.build, RuntimeBuild::OpenVino);
    assert!(location.path.ends_with("libonnxruntime.so.1.24.1"), "{}", location.path.display());
    let cpu =
        sdrt_models::ensure_runtime_for(&ExecutionProvider::Cpu).expect("the OpenVINO build has the CPU provider");
    assert_eq!(cpu.build, RuntimeBuild::OpenVino);
    let error = sdrt_models::ensure_runtime_for(&ExecutionProvider::Cuda { device_id: 0 }).unwrap_err();
    assert!(matches!(error, Error::RuntimeMismatch { .. }), "{error:?}");
    assert!(error.to_string().contains("separate sdrt process"), "{error}");
}

/// bf16 runs only where the CPU computes it natively; there it must actually change the numbers (OpenVINO
/// ignores a precision hint it cannot follow) while staying close to fp32.
#[test]
fn bf16_runs_only_where_the_cpu_computes_it_and_then_changes_the_numbers() {
    let Ok(precision) = PrecisionChoice::Bf16.resolve() else {
        assert!(sdrt_models::cpu_bf16_extension().is_none());
        let message = PrecisionChoice::Bf16.resolve().unwrap_err().to_string();
        assert!(message.contains("AVX512_BF16"), "{message}");
        assert_eq!(PrecisionChoice::Auto.resolve().unwrap(), Precision::Fp32);
        return;
    };
    assert_eq!(precision, Precision::Bf16);
    let cases = fixture_json("e2e/cases.json");
    let version = cases["a1111_version"].as_str().unwrap();
    let case = &cases["cases"][0];
    let latents = |precision| {
        let provider = Arc::new(ModelProvider::new(openvino(precision)));
        let job = GenerationJob::new(request(case), settings(case, version), provider);
        let (output, _) = ProcessingRunner::new().run(job).unwrap();
        output.images[0].latents.clone()
    };
    let (fp32, bf16) = (latents(Precision::Fp32), latents(Precision::Bf16));
    let norm = |values: &ndarray::ArrayD<f32>| values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    let relative = norm(&(&bf16 - &fp32)) / norm(&fp32);
    eprintln!("bf16 vs fp32 final latents: relative L2 difference {relative:.3e}");
    assert!(relative > 0.0, "bf16 gave exactly the fp32 latents: the precision hint was not applied");
    // bf16 keeps 8 bits of mantissa: 2.7e-2 measured here on an AVX512_BF16 Zen 4 (tools/bench/README.md).
    assert!(relative < 0.1, "bf16 latents are {relative:.3} away from fp32");
}

/// An OpenVINO device this machine lacks is an error that names it, never a silent run on the CPU.
#[test]
fn a_missing_openvino_device_is_an_error_naming_it() {
    let npu = SessionConfig {
        provider: ExecutionProvider::OpenVino { device: OpenVinoDevice::Npu, precision: Precision::Fp16 },
        intra_op_threads: Some(1),
        ..SessionConfig::default()
    };
    sdrt_models::ensure_runtime_for(&npu.provider).unwrap();
    let encoder = fixture("models/sd15-tiny/text_encoder/model.onnx");
    match OnnxModel::load_with("text_encoder", &encoder, &npu) {
        Ok(_) => eprintln!("this machine has an Intel NPU: the text encoder compiled for it"),
        Err(error) => {
            let message = format!("{error}");
            assert!(message.contains("NPU") && message.contains("text_encoder"), "{message}");
        }
    }
}

/// With static shapes ONNX Runtime fixes the graph's symbolic dimensions before OpenVINO takes it: the session
/// declares the run's shapes, a new size builds a new session (the same size again does not), and the outputs are
/// the ones OpenVINO gives for dynamic shapes.
#[test]
fn static_shapes_build_a_session_for_each_new_input_size() {
    let unet = fixture("models/sd15-tiny/unet/model.onnx");
    let mut dynamic = OnnxModel::load_with("unet", &unet, &openvino(Precision::Fp32)).unwrap();
    let config = SessionConfig { openvino_static_shapes: true, ..openvino(Precision::Fp32) };
    let mut fixed = OnnxModel::load_with("unet", &unet, &config).unwrap();
    let declared = |model: &OnnxModel, name: &str| {
        model.session_inputs().into_iter().find(|input| input.name == name).map(|input| input.shape).unwrap()
    };
    assert!(declared(&fixed, "sample").contains(&-1), "the load-time session keeps the model's symbolic dimensions");
    let context = fixed.inputs().into_iter().find(|input| input.name == "encoder_hidden_states").unwrap().shape[2];
    let inputs = |size: usize| {
        let ramp = |shape: &[usize]| {
            let count: usize = shape.iter().product();
            ndarray::ArrayD::from_shape_vec(shape, (0..count).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect())
                .unwrap()
        };
        vec![
            ("sample", ramp(&[2, 4, size, size])),
            ("timestep", ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), 500.0)),
            ("encoder_hidden_states", ramp(&[2, 77, context as usize])),
        ]
    };
    for (size, builds) in [(8, 1), (8, 1), (16, 2)] {
        let got = fixed.run_f32(inputs(size)).unwrap();
        assert_eq!(fixed.shape_builds(), builds, "after a run at {size}×{size}");
        assert_eq!(declared(&fixed, "sample"), vec![2, 4, size as i64, size as i64]);
        let want = dynamic.run_f32(inputs(size)).unwrap();
        let (got, want) = (&got[0].1, &want[0].1);
        assert_eq!(got.shape(), want.shape());
        let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * largest.max(1.0), "static vs dynamic shapes at {size}: max |Δ| {worst}");
    }
    assert_eq!(dynamic.shape_builds(), 0, "dynamic shapes keep their one session");
}
