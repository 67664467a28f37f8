//! ONNX Runtime is found, loaded and runs a committed graph through `sdrt-models` with the right numbers;
//! a machine without it gets an error that says what to run.

use ndarray::{ArrayD, IxDyn};
use sdrt_models::{Error, OnnxModel, RuntimeBuild, RuntimeSearch};
use sdrt_tests::{fixture, fixture_json, json_f32s};

#[test]
fn tiny_graph_runs_and_matches_numpy() {
    let expected = fixture_json("tiny_graph/expected.json");
    let shape = |v: &serde_json::Value| -> Vec<usize> {
        v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect()
    };
    let input = ArrayD::from_shape_vec(IxDyn(&shape(&expected["input"])), json_f32s(&expected["input"]["data"]))
        .expect("input shape");
    let mut model = OnnxModel::load("tiny_graph", &fixture("tiny_graph/model.onnx")).expect("model loads");
    assert_eq!(model.inputs()[0].name, "x");
    assert_eq!(model.inputs()[0].dtype, "f32");
    assert_eq!(model.outputs()[0].name, "y");
    let outputs = model.run_f32(vec![("x", input)]).expect("model runs");
    let (name, y) = &outputs[0];
    assert_eq!(name, "y");
    assert_eq!(y.shape(), shape(&expected["output"]).as_slice());
    for (got, want) in y.iter().zip(json_f32s(&expected["output"]["data"])) {
        assert!((got - want).abs() <= 1e-6, "got {got}, want {want}");
    }
}

#[test]
fn a_missing_model_file_is_an_error_naming_the_component() {
    let missing = std::path::Path::new("/nonexistent/unet/model.onnx");
    let message = OnnxModel::load("unet", missing).expect_err("must fail").to_string();
    assert!(message.contains("unet") && message.contains("/nonexistent/unet/model.onnx"), "{message}");
}

#[test]
fn an_empty_cache_says_what_to_run() {
    let empty = std::env::temp_dir().join(format!("sdrt-empty-ort-cache-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let search = RuntimeSearch {
        build: RuntimeBuild::Standard,
        dylib_path: None,
        cache_dir: empty.clone(),
        python: "/nonexistent/python3".into(),
    };
    let error = search.locate().expect_err("nothing to find");
    assert!(matches!(error, Error::RuntimeNotFound { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("cargo xtask provision-ort"), "{message}");
    assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    std::fs::remove_dir_all(empty).ok();
}

#[test]
fn ort_dylib_path_pointing_nowhere_is_reported() {
    let search = RuntimeSearch {
        build: RuntimeBuild::Standard,
        dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
        cache_dir: "/nonexistent/cache".into(),
        python: "/nonexistent/python3".into(),
    };
    let message = search.locate().expect_err("nothing to find").to_string();
    assert!(message.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so (no such file)"), "{message}");
    // Even with a provisioned library available, an ORT_DYLIB_PATH that points nowhere is an error.
    let cache = std::env::temp_dir().join(format!("sdrt-ort-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("libonnxruntime.so.1.31.1"), b"not really").unwrap();
    let search = RuntimeSearch { cache_dir: cache.clone(), ..search };
    let message = search.locate().expect_err("the explicit path wins").to_string();
    assert!(message.contains("unset ORT_DYLIB_PATH"), "{message}");
    std::fs::remove_dir_all(cache).ok();
}

#[test]
fn the_openvino_build_is_found_only_with_its_provider_beside_it() {
    let cache = std::env::temp_dir().join(format!("sdrt-ort-openvino-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let search = RuntimeSearch {
        build: RuntimeBuild::OpenVino,
        dylib_path: None,
        cache_dir: cache.clone(),
        python: "/nonexistent/python3".into(),
    };
    let message = search.locate().expect_err("empty cache").to_string();
    assert!(message.contains("cargo xtask provision-ort --openvino"), "{message}");
    assert!(message.contains("onnxruntime-openvino"), "{message}");
    // The main library alone could be a plain CPU build copied there: the provider must sit beside it.
    std::fs::write(cache.join("libonnxruntime.so.1.24.1"), b"not really").unwrap();
    assert!(search.locate().is_err(), "no OpenVINO provider library beside it");
    std::fs::write(cache.join("libonnxruntime_providers_openvino.so"), b"not really").unwrap();
    let found = search.locate().expect("both files present");
    assert_eq!((found.source, found.build), ("cache", RuntimeBuild::OpenVino));
    std::fs::remove_dir_all(cache).ok();
}
