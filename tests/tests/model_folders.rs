//! Model-folder detection on every tiny fixture pipeline, and the errors a broken folder gets: missing and
//! corrupt files, parts of different families, an execution provider that cannot register.

use std::path::{Path, PathBuf};

use sdrt_models::{Error, ExecutionProvider, LoadedModel, ModelFamily, ModelFolder, PredictionType, SessionConfig};
use sdrt_tests::fixtures_dir;

fn pipeline(name: &str) -> PathBuf {
    fixtures_dir().join("models").join(name)
}

fn open(name: &str) -> ModelFolder {
    ModelFolder::open(&pipeline(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Copies a pipeline folder (following the fixture's symlinks) so a test can break it.
fn copy_pipeline(name: &str) -> tempfile::TempDir {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                copy_dir(&path, &target)
            } else {
                std::fs::copy(&path, &target).map(|_| ()).expect("copy")
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&pipeline(name), dir.path());
    dir
}

fn cpu() -> SessionConfig {
    SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }
}

#[test]
fn every_fixture_pipeline_is_detected() {
    let cases = [
        ("sd15-tiny", ModelFamily::Sd1, PredictionType::Epsilon, false),
        ("sd2-tiny-v", ModelFamily::Sd2, PredictionType::VPrediction, false),
        ("sdxl-tiny", ModelFamily::Sdxl, PredictionType::Epsilon, false),
        ("sd15-inpaint-tiny", ModelFamily::Sd1, PredictionType::Epsilon, true),
        ("sd15-tiny-legacy", ModelFamily::Sd1, PredictionType::Epsilon, false),
        ("sd15-tiny-fp16", ModelFamily::Sd1, PredictionType::Epsilon, false),
    ];
    for (name, family, prediction, inpainting) in cases {
        let folder = open(name);
        assert_eq!(
            (folder.family, folder.scheduler.prediction_type, folder.inpainting),
            (family, prediction, inpainting),
            "{name}: {folder}"
        );
        assert_eq!(folder.scheduler.beta_schedule, "scaled_linear", "{name}");
        assert_eq!((folder.scheduler.beta_start, folder.scheduler.beta_end), (0.00085, 0.012), "{name}");
        assert_eq!((folder.scheduler.num_train_timesteps, folder.scheduler.steps_offset), (1000, 1), "{name}");
        let scale = if family == ModelFamily::Sdxl { 0.13025 } else { 0.18215 };
        assert_eq!(folder.vae_scaling_factor, scale, "{name}");
    }
}

#[test]
fn sd1_and_sd2_tiny_share_dimensions_so_the_text_encoder_activation_decides() {
    let sd1 = open("sd15-tiny");
    let sd2 = open("sd2-tiny-v");
    assert!(sd1.detected_by.iter().any(|r| r.contains("quick_gelu")), "{:?}", sd1.detected_by);
    assert!(sd2.detected_by.iter().any(|r| r.contains("hidden_act gelu")), "{:?}", sd2.detected_by);
    assert_eq!(sd1.tokenizer.as_ref().map(|t| t.pad_token.as_str()), Some("<|endoftext|>"));
    assert_eq!(sd2.tokenizer.as_ref().map(|t| t.pad_token.as_str()), Some("!"));
}

#[test]
fn display_reads_like_a_summary() {
    let text = open("sd2-tiny-v").to_string();
    assert!(text.starts_with("sd2-tiny-v: Stable Diffusion 2.x, v_prediction prediction"), "{text}");
    assert!(
        text.contains(
            "DDIMScheduler (scaled_linear betas 0.00085..0.012, 1000 training steps, steps offset 1, leading spacing)"
        ),
        "{text}"
    );
    assert!(text.contains("tokenizer (pad !)") && text.contains("VAE scaling factor: 0.18215"), "{text}");
    let xl = open("sdxl-tiny").to_string();
    assert!(xl.contains("Stable Diffusion XL") && xl.contains("text_encoder_2") && xl.contains("tokenizer_2"), "{xl}");
}

#[test]
fn inpainting_is_confirmed_by_the_unet_session() {
    let model = LoadedModel::load(open("sd15-inpaint-tiny"), &cpu()).expect("loads");
    assert!(model.folder.inpainting);
    assert_eq!(model.unet.in_channels(), Some(9));
    assert_eq!(model.provider, ExecutionProvider::Cpu);
}

#[test]
fn a_missing_unet_names_the_file() {
    let dir = copy_pipeline("sd15-tiny");
    std::fs::remove_file(dir.path().join("unet/model.onnx")).expect("remove");
    let error = ModelFolder::open(dir.path()).expect_err("no unet");
    assert!(matches!(error, Error::File { .. }), "{error:?}");
    assert!(error.to_string().contains("unet/model.onnx"), "{error}");
}

#[test]
fn a_missing_model_index_or_scheduler_config_is_reported() {
    let dir = copy_pipeline("sd15-tiny");
    std::fs::remove_file(dir.path().join("scheduler/scheduler_config.json")).expect("remove");
    let message = ModelFolder::open(dir.path()).expect_err("no scheduler").to_string();
    assert!(message.contains("scheduler_config.json") && message.contains("missing"), "{message}");
    std::fs::remove_file(dir.path().join("model_index.json")).expect("remove");
    let message = ModelFolder::open(dir.path()).expect_err("no index").to_string();
    assert!(message.contains("model_index.json"), "{message}");
    let message = ModelFolder::open(Path::new("/nonexistent/model")).expect_err("no folder").to_string();
    assert!(message.contains("/nonexistent/model"), "{message}");
}

#[test]
fn a_missing_tokenizer_is_reported() {
    let dir = copy_pipeline("sd15-tiny");
    std::fs::remove_dir_all(dir.path().join("tokenizer")).expect("remove");
    let message = ModelFolder::open(dir.path()).expect_err("no tokenizer").to_string();
    assert!(message.contains("tokenizer/"), "{message}");
}

#[test]
fn a_corrupt_onnx_file_is_an_error_naming_component_and_file() {
    let dir = copy_pipeline("sd15-tiny");
    std::fs::write(dir.path().join("unet/model.onnx"), b"this is not an onnx model").expect("write");
    let folder = ModelFolder::open(dir.path()).expect("configs are fine");
    let message = LoadedModel::load(folder, &cpu()).expect_err("corrupt").to_string();
    assert!(message.starts_with("unet:") && message.contains("unet/model.onnx"), "{message}");
}

#[test]
fn a_truncated_onnx_file_is_an_error_naming_component_and_file() {
    let dir = copy_pipeline("sd15-tiny");
    let path = dir.path().join("text_encoder/model.onnx");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let folder = ModelFolder::open(dir.path()).expect("configs are fine");
    let message = LoadedModel::load(folder, &cpu()).expect_err("truncated").to_string();
    assert!(message.starts_with("text_encoder:") && message.contains("text_encoder/model.onnx"), "{message}");
}

#[test]
fn an_sdxl_folder_with_an_sd1_unet_is_a_family_error() {
    let dir = copy_pipeline("sdxl-tiny");
    std::fs::copy(pipeline("sd15-tiny").join("unet/model.onnx"), dir.path().join("unet/model.onnx"))
        .expect("swap unet");
    let folder = ModelFolder::open(dir.path()).expect("configs say SDXL");
    assert_eq!(folder.family, ModelFamily::Sdxl);
    let error = LoadedModel::load(folder, &cpu()).expect_err("mixed families");
    assert!(matches!(error, Error::Family { .. }), "{error:?}");
    assert!(error.to_string().contains("text_embeds"), "{error}");
}

#[test]
fn an_sd1_folder_with_an_sdxl_unet_is_a_family_error() {
    let dir = copy_pipeline("sd15-tiny");
    std::fs::copy(pipeline("sdxl-tiny").join("unet/model.onnx"), dir.path().join("unet/model.onnx"))
        .expect("swap unet");
    let error = LoadedModel::load(ModelFolder::open(dir.path()).expect("opens"), &cpu()).expect_err("mixed");
    assert!(error.to_string().contains("Stable Diffusion 1.x") && error.to_string().contains("time_ids"), "{error}");
}

#[test]
fn an_sdxl_folder_without_text_encoder_2_is_reported() {
    let dir = copy_pipeline("sdxl-tiny");
    std::fs::remove_file(dir.path().join("text_encoder_2/model.onnx")).expect("remove");
    let message = ModelFolder::open(dir.path()).expect_err("incomplete SDXL").to_string();
    assert!(message.contains("text_encoder_2/model.onnx"), "{message}");
}

/// CoreML cannot register here; CUDA and TensorRT need the GPU build, which a process that loaded the standard
/// one cannot switch to (tests/tests/cli.rs runs CUDA in its own process). Each is an error, never a CPU run.
#[test]
fn a_provider_that_cannot_register_is_an_error_not_a_silent_cpu_fallback() {
    sdrt_models::ensure_runtime().unwrap();
    for provider in [
        ExecutionProvider::Cuda { device_id: 0 },
        ExecutionProvider::TensorRt { device_id: 0 },
        ExecutionProvider::CoreMl,
    ] {
        let config = SessionConfig { provider, ..cpu() };
        let error = LoadedModel::load(open("sd15-tiny"), &config).expect_err("no such provider on this machine");
        match &error {
            Error::Provider { provider: name, component, reason } => {
                assert_eq!(*name, provider.onnx_runtime_name());
                assert!(!component.is_empty() && !reason.is_empty());
            }
            Error::RuntimeMismatch { provider: name, .. } if provider != ExecutionProvider::CoreMl => {
                assert_eq!(*name, provider.to_string());
            }
            other => panic!("{provider}: expected a provider error, got {other:?}"),
        }
    }
}
