//! Single-file checkpoints (tests/fixtures/checkpoints, written by tools/fixtures/gen_checkpoints.py): the
//! graphs sdrt builds from LDM weights reproduce torch (diffusers/transformers) component by component, and
//! broken files fail with errors that name the file and the tensor.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4, ArrayD, Axis, Ix2, Ix3, Ix4, s};
use ndarray_npy::read_npy;
use sdrt_models::{
    AppliedLora, AttentionKind, Checkpoint, CheckpointKind, CheckpointOptions, GraphOptions, GroupNormKind,
    LoadedModel, Lora, ModelFamily, ModelFolder, PredictionType, SessionConfig, TextLayer, UnetInput, Winograd,
};
use sdrt_tests::{fixture, fixture_json};
use serde_json::Value;

/// Relative to max(1, |reference|): the built graphs run the same math as torch in another order. The
/// references come from torch's AVX2 kernels; on an AVX-512 CPU onnxruntime's kernels sum in another order
/// again (the portable UNet measured 1.02e-5 there).
const TOLERANCE: f32 = 2e-5;
/// The tiny VAE encoder's `quant_conv` is scaled up ~5× (gen_pipelines.py `shape_vae`), which amplifies
/// float32 summation-order noise: on an AVX2 CPU the optimum export of the same weights differs from torch by
/// 1.9e-5 here (onnxruntime 1.31.1, one thread), and the built graph by 1.7e-5.
const VAE_ENCODER_TOLERANCE: f32 = 5e-5;

fn checkpoint(name: &str) -> PathBuf {
    fixture(&format!("checkpoints/{name}"))
}

fn load_path(path: &Path, graph: GraphOptions) -> LoadedModel {
    sdrt_models::ensure_runtime().unwrap();
    let name = path.display();
    let folder = ModelFolder::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = SessionConfig { intra_op_threads: Some(1), graph, ..SessionConfig::default() };
    LoadedModel::load(folder, &config).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn npy(entry: &Value, kind: &str, name: &str) -> ArrayD<f32> {
    read_npy(fixture(entry[kind][name].as_str().unwrap_or_else(|| panic!("no {kind} {name}")))).unwrap()
}

fn ids(entry: &Value) -> Array2<i64> {
    let ids: ArrayD<i64> = read_npy(fixture(entry["inputs"]["input_ids"].as_str().unwrap())).unwrap();
    ids.into_dimensionality::<Ix2>().unwrap()
}

fn assert_close(what: &str, ours: &ArrayD<f32>, want: &ArrayD<f32>, tolerance: f32) {
    assert_eq!(ours.shape(), want.shape(), "{what}: shape");
    let worst = ours.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
    assert!(worst <= tolerance, "{what}: differs from torch by {worst:.2e} (tolerance {tolerance:.0e})");
}

fn check_text_encoder(model: &mut LoadedModel, entry: &Value, second: bool, name: &str) {
    let encoder = if second { model.text_encoder_2.as_mut() } else { model.text_encoder.as_mut() }.unwrap();
    let ids = ids(entry);
    let layers = encoder.layer_count().expect("built encoders expose hidden_states.N");
    let last = encoder.encode(&ids, TextLayer::Last).unwrap();
    assert_close(
        &format!("{name} last_hidden_state"),
        &last.hidden.into_dyn(),
        &npy(entry, "outputs", "last_hidden_state"),
        TOLERANCE,
    );
    let pooled_name = if entry["outputs"].get("text_embeds").is_some() { "text_embeds" } else { "pooler_output" };
    assert_close(
        &format!("{name} {pooled_name}"),
        &last.pooled.expect("pooled output").into_dyn(),
        &npy(entry, "outputs", pooled_name),
        TOLERANCE,
    );
    let skip = encoder.encode(&ids, TextLayer::ClipSkip(2)).unwrap();
    assert_close(
        &format!("{name} clip skip 2"),
        &skip.hidden.into_dyn(),
        &npy(entry, "outputs", "clip_skip_2"),
        TOLERANCE,
    );
    let penultimate = encoder.encode(&ids, TextLayer::Penultimate).unwrap();
    let want = npy(entry, "outputs", &format!("hidden_states.{}", layers - 1));
    assert_close(&format!("{name} penultimate"), &penultimate.hidden.into_dyn(), &want, TOLERANCE);
}

fn check_unet(model: &mut LoadedModel, entry: &Value, name: &str) {
    check_unet_within(model, entry, name, TOLERANCE);
}

fn check_unet_within(model: &mut LoadedModel, entry: &Value, name: &str, tolerance: f32) {
    let sample = npy(entry, "inputs", "sample").into_dimensionality::<Ix4>().unwrap();
    let timesteps = npy(entry, "inputs", "timestep").into_dimensionality::<ndarray::Ix1>().unwrap();
    let context = npy(entry, "inputs", "encoder_hidden_states").into_dimensionality::<Ix3>().unwrap();
    let latent = sample.slice(s![.., ..4, .., ..]);
    let conditioning = (sample.shape()[1] == 9).then(|| sample.slice(s![.., 4.., .., ..]));
    let text_embeds = entry["inputs"]
        .get("text_embeds")
        .map(|_| npy(entry, "inputs", "text_embeds").into_dimensionality::<Ix2>().unwrap());
    let time_ids =
        entry["inputs"].get("time_ids").map(|_| npy(entry, "inputs", "time_ids").into_dimensionality::<Ix2>().unwrap());
    let input = UnetInput {
        inpaint_conditioning: conditioning,
        text_embeds: text_embeds.as_ref().map(|a| a.view()),
        time_ids: time_ids.as_ref().map(|a| a.view()),
        ..UnetInput::new(latent, timesteps.view(), context.view())
    };
    let out = model.unet.predict(&input).unwrap();
    assert_close(&format!("{name} unet"), &out.into_dyn(), &npy(entry, "outputs", "out_sample"), tolerance);
}

/// The UNet built for fp16 compute (GPUs) runs here too, ONNX Runtime casting around the CPU kernels that have no
/// fp16 version, so its numbers are checked against torch's f32 on every machine. torch's own `unet.half()` on
/// these weights differs from its f32 by 1.0e-2 (sd15), 1.4e-2 (inpaint) and 6.3e-3 (sdxl)
/// (tools/fixtures/measure_fp16_unet.py); sdrt's fp16 graphs by 4.8e-3, 1.24e-2 and 6.8e-3.
#[test]
fn unets_computing_in_fp16_match_torch_as_closely_as_torch_fp16() {
    for name in ["sd15-tiny", "sdxl-tiny", "sd15-inpaint-tiny"] {
        let entries = fixture_json(&format!("checkpoints/references/{name}.json"));
        let half = GraphOptions { half_unet: true, ..GraphOptions::default() };
        let mut model = load_path(&checkpoint(&format!("{name}.safetensors")), half);
        check_unet_within(&mut model, &entries["unet"], &format!("{name} (fp16)"), 1.5e-2);
    }
}

fn check_vae(model: &mut LoadedModel, entries: &Value, name: &str) {
    let encoder = &entries["vae_encoder"];
    let image = npy(encoder, "inputs", "sample").into_dimensionality::<Ix4>().unwrap();
    let posterior = model.vae_encoder().unwrap().encode(image.view()).unwrap();
    let parameters = npy(encoder, "outputs", "latent_parameters");
    let channels = parameters.shape()[1] / 2;
    let mean = parameters.slice_axis(Axis(1), (..channels).into()).to_owned();
    let logvar = parameters.slice_axis(Axis(1), (channels..).into()).mapv(|v| v.clamp(-30.0, 20.0));
    assert_close(&format!("{name} vae mean"), &posterior.mean.into_dyn(), &mean, VAE_ENCODER_TOLERANCE);
    let logvar_ours = posterior.logvar.expect("distribution").into_dyn();
    assert_close(&format!("{name} vae logvar"), &logvar_ours, &logvar, VAE_ENCODER_TOLERANCE);
    let decoder = &entries["vae_decoder"];
    let latent: Array4<f32> = npy(decoder, "inputs", "latent_sample").into_dimensionality().unwrap();
    let decoded = model.vae_decoder.decode(latent.view()).unwrap();
    assert_close(&format!("{name} vae decode"), &decoded.into_dyn(), &npy(decoder, "outputs", "sample"), TOLERANCE);
}

fn check_components(name: &str, reference: &str, graph: GraphOptions) {
    check_components_of(&checkpoint(&format!("{name}.safetensors")), reference, graph);
}

fn check_components_of(path: &Path, reference: &str, graph: GraphOptions) {
    let name = &path.file_name().unwrap().to_string_lossy().into_owned();
    let entries = fixture_json(&format!("checkpoints/references/{reference}.json"));
    let mut model = load_path(path, graph);
    check_text_encoder(&mut model, &entries["text_encoder"], false, name);
    if entries.get("text_encoder_2").is_some() {
        check_text_encoder(&mut model, &entries["text_encoder_2"], true, name);
    }
    check_unet(&mut model, &entries["unet"], name);
    check_vae(&mut model, &entries, name);
}

#[test]
fn converted_folders_load_as_exports_and_match_torch() {
    sdrt_models::ensure_runtime().unwrap();
    for name in ["sdxl-tiny", "sd2-tiny-v"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(name);
        let source =
            Checkpoint::open(&checkpoint(&format!("{name}.safetensors")), CheckpointOptions::default()).unwrap();
        source.convert(&out, GraphOptions::default()).unwrap();
        for component in ["text_encoder", "unet", "vae_encoder", "vae_decoder"] {
            assert!(out.join(component).join("model.onnx_data").is_file(), "{name}: {component} weights");
        }
        let folder = ModelFolder::open(&out).unwrap();
        assert!(folder.checkpoint.is_none(), "an ONNX folder, loaded as exports are");
        assert_eq!(folder.scheduler.prediction_type, source_prediction(name));
        // The converted folder is another model: SD 2.x exports are detected by tokenizer padding here.
        assert_eq!(folder.family, if name == "sdxl-tiny" { ModelFamily::Sdxl } else { ModelFamily::Sd2 });
        check_components_of(&out, name, GraphOptions::default());
    }
}

/// With plain attention and MatMul on transposed weights, a converted folder uses standard ONNX operators only.
#[test]
fn converted_folders_can_be_standard_onnx_only() {
    sdrt_models::ensure_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let portable =
        GraphOptions { attention: AttentionKind::Plain, transposed_matmul: false, ..GraphOptions::default() };
    let source = Checkpoint::open(&checkpoint("sd15-tiny.safetensors"), CheckpointOptions::default()).unwrap();
    source.convert(dir.path(), portable).unwrap();
    for component in ["text_encoder", "unet", "vae_encoder", "vae_decoder"] {
        let model = std::fs::read(dir.path().join(component).join("model.onnx")).unwrap();
        assert!(!model.windows(13).any(|w| w == b"com.microsoft"), "{component} uses a contrib operator");
    }
    check_components_of(dir.path(), "sd15-tiny", GraphOptions::default());
}

fn source_prediction(name: &str) -> PredictionType {
    if name == "sd2-tiny-v" { PredictionType::VPrediction } else { PredictionType::Epsilon }
}

#[test]
fn sd15_components_match_torch() {
    check_components("sd15-tiny", "sd15-tiny", GraphOptions::default());
}

#[test]
fn sd15_components_match_torch_with_the_other_graph_options() {
    let plain = GraphOptions {
        attention: AttentionKind::Plain,
        fused_qkv: false,
        group_norm: GroupNormKind::LayerNorm,
        transposed_matmul: false,
        half_unet: false,
        subpixel_upsample: false,
        winograd: None,
        vae_winograd: None,
    };
    check_components("sd15-tiny", "sd15-tiny", plain);
    let native = GraphOptions { group_norm: GroupNormKind::Native, ..GraphOptions::default() };
    check_components("sd15-tiny", "sd15-tiny", native);
}

/// Winograd convolutions on every 3×3 UNet and VAE layer of the tiny models (by default only UNet layers 128 to
/// 640 channels wide and VAE layers from 256 use them): F(4,3) below 16 output channels, F(2,3) from 16, on
/// pictures from 64×64 down to 2×2, with the kernels transformed at load and (sd15) on every run.
#[test]
fn components_match_torch_with_winograd_convolutions_everywhere() {
    let rule = Winograd { min_channels: 1, max_channels: usize::MAX, small_tiles_from: 16, kernels_at_load: true };
    for name in ["sd15-tiny", "sd2-tiny-v", "sdxl-tiny", "sd15-inpaint-tiny"] {
        let everywhere = GraphOptions { winograd: Some(rule), vae_winograd: Some(rule), ..GraphOptions::default() };
        check_components(name, name, everywhere);
    }
    let per_run = Some(Winograd { kernels_at_load: false, ..rule });
    let options = GraphOptions { winograd: per_run, vae_winograd: per_run, ..GraphOptions::default() };
    check_components("sd15-tiny", "sd15-tiny", options);
}

/// The conditioning kept in ONNX Runtime's memory between UNet runs (what CUDA does with GPU memory) is copied
/// once per distinct value and gives the same numbers, bit for bit, as passing it on every run.
#[test]
fn resident_conditioning_is_copied_once_per_value_and_changes_nothing() {
    let entry = &fixture_json("checkpoints/references/sd15-tiny.json")["unet"];
    let sample = npy(entry, "inputs", "sample").into_dimensionality::<Ix4>().unwrap();
    let timesteps = npy(entry, "inputs", "timestep").into_dimensionality::<ndarray::Ix1>().unwrap();
    let context = npy(entry, "inputs", "encoder_hidden_states").into_dimensionality::<Ix3>().unwrap();
    let other_context = context.mapv(|v| v * 0.5);
    let path = checkpoint("sd15-tiny.safetensors");
    let runs = |resident: bool| {
        sdrt_models::ensure_runtime().unwrap();
        let config = SessionConfig { intra_op_threads: Some(1), resident_inputs: Some(resident), ..Default::default() };
        let mut model = LoadedModel::load(ModelFolder::open(&path).unwrap(), &config).unwrap();
        let outputs: Vec<_> = [&context, &context, &other_context, &other_context]
            .into_iter()
            .map(|c| model.unet.predict(&UnetInput::new(sample.view(), timesteps.view(), c.view())).unwrap())
            .collect();
        (outputs, model.unet.model().resident_uploads())
    };
    let (kept, uploads) = runs(true);
    let (passed, no_uploads) = runs(false);
    assert_eq!((uploads, no_uploads), (2, 0), "one copy per distinct conditioning");
    assert_eq!(kept, passed);
    assert_ne!(kept[1], kept[2], "the changed conditioning was used");
}

/// A tensor of a derived checkpoint: dtype, shape, little-endian bytes.
type Stored = (String, Vec<u64>, Vec<u8>);

/// sd15-tiny.safetensors rewritten tensor by tensor (`convert`) plus `extra` tensors, with its `.yaml`.
fn derived_checkpoint(
    dir: &Path,
    name: &str,
    convert: impl Fn(Stored) -> Stored,
    extra: Vec<(String, Stored)>,
) -> PathBuf {
    let bytes = std::fs::read(checkpoint("sd15-tiny.safetensors")).unwrap();
    let (n, json) = header(&bytes);
    let data = &bytes[8 + n..];
    let mut tensors: Vec<(String, Stored)> = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let [begin, end] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            (k.clone(), convert((v["dtype"].as_str().unwrap().to_owned(), shape, data[begin..end].to_vec())))
        })
        .collect();
    tensors.extend(extra);
    let mut header = serde_json::Map::new();
    let mut body = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        let begin = body.len();
        body.extend_from_slice(&bytes);
        header.insert(name, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, body.len()]}));
    }
    let text = serde_json::to_string(&header).unwrap();
    let path = dir.join(format!("{name}.safetensors"));
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&body);
    std::fs::write(&path, file).unwrap();
    std::fs::copy(checkpoint("sd15-tiny.yaml"), path.with_extension("yaml")).unwrap();
    path
}

#[test]
fn fp16_checkpoint_matches_torch_fp32_on_the_rounded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let to_f16 = |(dtype, shape, bytes): Stored| {
        assert_eq!(dtype, "F32");
        let halves = bytes
            .chunks_exact(4)
            .flat_map(|b| half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        ("F16".to_owned(), shape, halves)
    };
    let path = derived_checkpoint(dir.path(), "sd15-tiny-fp16", to_f16, Vec::new());
    let summary = Checkpoint::open(&path, CheckpointOptions::default()).unwrap().dtypes();
    assert_eq!(summary, "F16");
    check_components_of(&path, "sd15-tiny-fp16", GraphOptions::default());
}

#[test]
fn ema_copies_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // LDM's EMA names drop the dots; random values that would change every output if they were used.
    let ema =
        |i: u8| (format!("model_ema.diffusion_modelinput_blocks00weight{i}"), ("F32".to_owned(), vec![2], vec![i; 8]));
    let extra =
        vec![ema(1), ema(2), ("model_ema.num_updates".to_owned(), ("I32".to_owned(), vec![], vec![0, 1, 0, 0]))];
    let path = derived_checkpoint(dir.path(), "sd15-tiny-ema", |t| t, extra);
    check_components_of(&path, "sd15-tiny", GraphOptions::default());
}

#[test]
fn inpainting_components_match_torch() {
    check_components("sd15-inpaint-tiny", "sd15-inpaint-tiny", GraphOptions::default());
}

#[test]
fn sd2_components_match_torch() {
    check_components("sd2-tiny-v", "sd2-tiny-v", GraphOptions::default());
}

#[test]
fn sdxl_components_match_torch() {
    check_components("sdxl-tiny", "sdxl-tiny", GraphOptions::default());
}

#[test]
fn families_prediction_and_inpainting_are_detected() {
    let open = |name: &str| ModelFolder::open(&checkpoint(&format!("{name}.safetensors"))).unwrap();
    let sd15 = open("sd15-tiny");
    assert_eq!(
        (sd15.family, sd15.inpainting, sd15.scheduler.prediction_type),
        (ModelFamily::Sd1, false, PredictionType::Epsilon)
    );
    assert_eq!(sd15.name(), "sd15-tiny", "A1111's Model is the file stem");
    assert!(open("sd15-inpaint-tiny").inpainting);
    let sd2 = open("sd2-tiny-v");
    assert_eq!((sd2.family, sd2.scheduler.prediction_type), (ModelFamily::Sd2, PredictionType::VPrediction));
    assert!(sd2.detected_by.iter().any(|d| d.contains(".yaml")), "{:?}", sd2.detected_by);
    assert_eq!(open("sdxl-tiny").family, ModelFamily::Sdxl);
    let forced = ModelFolder::open_with(
        &checkpoint("sd2-tiny-v.safetensors"),
        CheckpointOptions { prediction: Some(PredictionType::Epsilon) },
    )
    .unwrap();
    assert_eq!(forced.scheduler.prediction_type, PredictionType::Epsilon, "--prediction wins over the yaml");
}

/// Without `parameterization` in the yaml (and no `--prediction`), an SD 2.x checkpoint's prediction type is
/// decided at load by A1111's UNet test, and the model says so.
#[test]
fn sd2_prediction_without_yaml_is_decided_by_a1111s_unet_test() {
    sdrt_models::ensure_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd2.safetensors");
    std::fs::copy(checkpoint("sd2-tiny-v.safetensors"), &path).unwrap();
    let yaml = std::fs::read_to_string(checkpoint("sd2-tiny-v.yaml")).unwrap();
    let without_prediction: String =
        yaml.lines().filter(|l| !l.contains("parameterization")).map(|l| format!("{l}\n")).collect();
    std::fs::write(path.with_extension("yaml"), without_prediction).unwrap();
    let folder = ModelFolder::open(&path).unwrap();
    assert!(folder.detected_by.iter().any(|d| d.contains("decided at load")), "{:?}", folder.detected_by);
    let model =
        LoadedModel::load(folder, &SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }).unwrap();
    let verdict = model.folder.detected_by.iter().rev().find(|d| d.contains("UNet test")).expect("the test ran");
    assert!(verdict.ends_with(&model.folder.scheduler.prediction_type.to_string()), "{verdict}");
}

#[test]
fn standalone_vae_files_are_recognised_with_or_without_prefix() {
    for name in ["sd15-tiny.vae.safetensors", "sd15-tiny-bf16.vae.safetensors"] {
        let vae = Checkpoint::open(&checkpoint(name), CheckpointOptions::default()).unwrap();
        assert_eq!(vae.kind(), CheckpointKind::Vae, "{name}");
        let error = ModelFolder::open(&checkpoint(name)).unwrap_err().to_string();
        assert!(error.contains("standalone VAE"), "{error}");
    }
}

fn broken_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(checkpoint("sd15-tiny.safetensors")).unwrap();
    edit(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::copy(checkpoint("sd15-tiny.yaml"), path.with_extension("yaml")).unwrap();
    path
}

fn header(bytes: &[u8]) -> (usize, Value) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (n, serde_json::from_slice(&bytes[8..8 + n]).unwrap())
}

fn with_header(bytes: &mut Vec<u8>, edit: impl FnOnce(&mut Value)) {
    let (n, mut json) = header(bytes);
    edit(&mut json);
    let text = serde_json::to_string(&json).unwrap();
    let data = bytes.split_off(8 + n);
    bytes.clear();
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&data);
}

fn open_error(path: &Path) -> String {
    match ModelFolder::open(path) {
        Ok(folder) => {
            match LoadedModel::load(folder, &SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }) {
                Ok(_) => panic!("{} loaded", path.display()),
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_files_are_errors_naming_the_file_and_tensor() {
    sdrt_models::ensure_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let truncated = broken_copy(dir.path(), "truncated.safetensors", |b| b.truncate(b.len() / 2));
    let message = open_error(&truncated);
    assert!(message.contains("truncated.safetensors") && message.contains("not a valid .safetensors"), "{message}");

    let long_header =
        broken_copy(dir.path(), "long.safetensors", |b| b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes()));
    let message = open_error(&long_header);
    assert!(message.contains("long.safetensors") && message.contains("header"), "{message}");

    let key = "model.diffusion_model.out.2.weight";
    let out_of_range = broken_copy(dir.path(), "range.safetensors", |b| {
        with_header(b, |h| h[key]["data_offsets"][1] = Value::from(u64::MAX / 4));
    });
    let message = open_error(&out_of_range);
    assert!(message.contains("range.safetensors"), "{message}");

    let wrong_dtype = broken_copy(dir.path(), "dtype.safetensors", |b| {
        with_header(b, |h| h[key]["dtype"] = Value::from("I32"));
    });
    let message = open_error(&wrong_dtype);
    assert!(message.contains(key) && message.contains("I32"), "{message}");

    let wrong_shape = broken_copy(dir.path(), "shape.safetensors", |b| {
        with_header(b, |h| {
            let shape = h[key]["shape"].as_array().unwrap().clone();
            let n: u64 = shape.iter().map(|d| d.as_u64().unwrap()).product();
            h[key]["shape"] = serde_json::json!([n]);
        });
    });
    let message = open_error(&wrong_shape);
    assert!(message.contains(key) && message.contains("expected"), "{message}");

    let missing = broken_copy(dir.path(), "missing.safetensors", |b| {
        with_header(b, |h| {
            let entry = h.as_object_mut().unwrap().remove(key).unwrap();
            h["model.diffusion_model.out.2.weight_renamed"] = entry;
        });
    });
    let message = open_error(&missing);
    assert!(message.contains(key) && message.contains("missing"), "{message}");

    let unknown = broken_copy(dir.path(), "unknown.safetensors", |b| {
        with_header(b, |h| {
            let object = h.as_object_mut().unwrap();
            let keys: Vec<String> = object.keys().filter(|k| k.starts_with("cond_stage_model.")).cloned().collect();
            for k in keys {
                let entry = object.remove(&k).unwrap();
                object.insert(k.replace("cond_stage_model.", "something_else."), entry);
            }
        });
    });
    let message = open_error(&unknown);
    assert!(message.contains("unknown.safetensors") && message.contains("no text encoder"), "{message}");

    let lora = broken_copy(dir.path(), "lora.safetensors", |b| {
        with_header(b, |h| {
            let entry = h.as_object_mut().unwrap().remove(key).unwrap();
            h["lora_unet_out_2.lora_down.weight"] = entry;
        });
    });
    let message = open_error(&lora);
    assert!(message.contains("LoRA") && message.contains("lora_unet_out_2"), "{message}");

    let pickle = dir.path().join("model.ckpt");
    std::fs::write(&pickle, b"PK\x03\x04 not really").unwrap();
    let message = Checkpoint::open(&pickle, CheckpointOptions::default()).unwrap_err().to_string();
    assert!(message.contains("pickle") && message.contains(".safetensors"), "{message}");
}

// ------------------------------------------------------------------------------------------------- LoRA

fn lora(name: &str, te_multiplier: f32, unet_multiplier: f32) -> AppliedLora {
    let lora = Lora::open(&fixture(&format!("loras/{name}.safetensors"))).unwrap();
    AppliedLora { lora: std::sync::Arc::new(lora), te_multiplier, unet_multiplier, dyn_dim: None }
}

#[test]
fn lora_merges_match_torch_and_unmerge_restores_the_checkpoint() {
    let mut model = load_path(&checkpoint("sd15-tiny.safetensors"), GraphOptions::default());
    let skipped = model.apply_networks(&[lora("sd15-tiny-locon", 0.5, 0.75)]).unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("lora_unet_not_a_layer (matches no weight of the model)"), "{skipped:?}");
    let merged = fixture_json("loras/references/sd15-tiny-locon.json");
    check_text_encoder(&mut model, &merged["text_encoder"], false, "te 0.5");
    check_unet(&mut model, &merged["unet"], "unet 0.75");
    check_vae(&mut model, &merged, "vae (no LoRA)");

    assert!(model.apply_networks(&[]).unwrap().is_empty());
    let original = fixture_json("checkpoints/references/sd15-tiny.json");
    check_text_encoder(&mut model, &original["text_encoder"], false, "unmerged");
    check_unet(&mut model, &original["unet"], "unmerged");
    // Back to the LoRA: the sessions kept for it (SessionConfig::network_cache) come back unchanged.
    model.apply_networks(&[lora("sd15-tiny-locon", 0.5, 0.75)]).unwrap();
    check_unet(&mut model, &merged["unet"], "re-merged from the cache");
    check_text_encoder(&mut model, &merged["text_encoder"], false, "re-merged from the cache");
}

#[test]
fn lycoris_kinds_merge_as_a1111_merges_them() {
    let mut model = load_path(&checkpoint("sd15-tiny.safetensors"), GraphOptions::default());
    let skipped = model.apply_networks(&[lora("sd15-tiny-lycoris", 0.5, 0.75)]).unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("lora_unet_output_blocks_1_0_out_layers_3 (DoRA"), "{skipped:?}");
    let merged = fixture_json("loras/references/sd15-tiny-lycoris.json");
    check_text_encoder(&mut model, &merged["text_encoder"], false, "LoKr, full diff + diff_b (te 0.5)");
    check_unet(&mut model, &merged["unet"], "LoHa, LoKr, norm, CP LoCon, CP LoHa, CP LoKr (unet 0.75)");
}

#[test]
fn sd2_and_sdxl_loras_reach_openclip_attention_and_both_encoders() {
    for (model, network) in [("sd2-tiny-v", "sd2-tiny-v-lora"), ("sdxl-tiny", "sdxl-tiny-lora")] {
        let mut model = load_path(&checkpoint(&format!("{model}.safetensors")), GraphOptions::default());
        let skipped = model.apply_networks(&[lora(network, 0.5, 0.75)]).unwrap();
        // The first OpenCLIP layer has q, k and out modules but no v: A1111 changes none of them.
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().all(|s| s.contains("all of its q, k, v and out modules")), "{skipped:?}");
        let merged = fixture_json(&format!("loras/references/{network}.json"));
        check_text_encoder(&mut model, &merged["text_encoder"], false, network);
        if merged.get("text_encoder_2").is_some() {
            check_text_encoder(&mut model, &merged["text_encoder_2"], true, network);
        }
        check_unet(&mut model, &merged["unet"], network);
    }
}

#[test]
fn lora_on_an_inpainting_conv_in_changes_only_the_latent_channels() {
    let mut model = load_path(&checkpoint("sd15-inpaint-tiny.safetensors"), GraphOptions::default());
    assert!(model.apply_networks(&[lora("sd15-inpaint-conv-in", 1.0, 1.0)]).unwrap().is_empty());
    let merged = fixture_json("loras/references/sd15-inpaint-conv-in.json");
    check_unet(&mut model, &merged["unet"], "inpainting conv_in");
}

#[test]
fn loras_that_do_not_fit_are_reported_and_broken_ones_refused() {
    // An SDXL LoRA on SD 1.x: its second encoder has nothing to change there, its UNet layers have other widths.
    let mut model = load_path(&checkpoint("sd15-tiny.safetensors"), GraphOptions::default());
    let skipped = model.apply_networks(&[lora("sdxl-tiny-lora", 1.0, 1.0)]).unwrap();
    assert!(skipped.len() > 10, "{skipped:?}");
    assert!(skipped.iter().all(|s| s.contains("sdxl-tiny-lora.safetensors: ")), "{skipped:?}");
    assert!(skipped.iter().any(|s| s.contains("lora_te2_") && s.contains("matches no weight")), "{skipped:?}");
    assert!(skipped.iter().any(|s| s.contains("does not fit")), "{skipped:?}");

    let dir = tempfile::tempdir().unwrap();
    let broken = broken_copy(dir.path(), "sd15-tiny.safetensors", |bytes| bytes.truncate(bytes.len() / 2));
    let error = Lora::open(&broken).unwrap_err().to_string();
    assert!(error.contains("sd15-tiny.safetensors"), "{error}");

    let export = fixture("models/sd15-tiny/model_index.json");
    let mut model = load_path(export.parent().unwrap(), GraphOptions::default());
    let error = model.apply_networks(&[lora("sd15-tiny-locon", 1.0, 1.0)]).unwrap_err().to_string();
    assert!(error.contains("single-file checkpoints"), "{error}");
}

// -------------------------------------------------------------------------------------------------- VAE

#[test]
fn a_standalone_vae_replaces_the_models_own_and_goes_back() {
    let alt = fixture("vaes/sd15-tiny-alt.vae.safetensors");
    let alt_references = fixture_json("vaes/references/sd15-tiny-alt.json");
    let own_references = fixture_json("checkpoints/references/sd15-tiny.json");
    for base in [checkpoint("sd15-tiny.safetensors"), fixture("models/sd15-tiny/model_index.json")] {
        let base = if base.ends_with("model_index.json") { base.parent().unwrap().to_owned() } else { base };
        let mut model = load_path(&base, GraphOptions::default());
        model.apply_vae(Some(&alt)).unwrap();
        assert_eq!(model.vae_file(), Some(alt.as_path()));
        check_vae(&mut model, &alt_references, "sd15-tiny-alt.vae");
        model.apply_vae(None).unwrap();
        assert_eq!(model.vae_file(), None);
        let decoder = &own_references["vae_decoder"];
        let latent: Array4<f32> = npy(decoder, "inputs", "latent_sample").into_dimensionality().unwrap();
        let decoded = model.vae_decoder.decode(latent.view()).unwrap().into_dyn();
        assert_close("the model's own VAE again", &decoded, &npy(decoder, "outputs", "sample"), TOLERANCE);
    }
    let mut model = load_path(&checkpoint("sd15-tiny.safetensors"), GraphOptions::default());
    // The checkpoint's own VAE as a file without a .yaml: it takes the model's GroupNorm groups.
    model.apply_vae(Some(&checkpoint("sd15-tiny.vae.safetensors"))).unwrap();
    let decoder = &own_references["vae_decoder"];
    let latent: Array4<f32> = npy(decoder, "inputs", "latent_sample").into_dimensionality().unwrap();
    let decoded = model.vae_decoder.decode(latent.view()).unwrap().into_dyn();
    assert_close("sd15-tiny.vae without a .yaml", &decoded, &npy(decoder, "outputs", "sample"), TOLERANCE);
    let error = model.apply_vae(Some(&checkpoint("sd2-tiny-v.safetensors"))).unwrap_err().to_string();
    assert!(error.contains("sd2-tiny-v.safetensors") && error.contains("not a VAE"), "{error}");
}

// ------------------------------------------------------------------------------------------ embeddings

#[test]
fn textual_inversion_vectors_replace_token_embeddings_as_a1111s_do() {
    let mut model = load_path(&checkpoint("sd15-tiny.safetensors"), GraphOptions::default());
    let reference = fixture_json("embeddings/references/sd15-tiny-style.json");
    let entry = &reference["text_encoder"];
    let style = sdrt_models::read_tensors(&fixture("embeddings/tiny-style.safetensors")).unwrap().remove(0);
    let width = style.shape[1];
    let replacements: Vec<sdrt_models::TokenReplacement<'_>> = (0..style.shape[0])
        .map(|i| sdrt_models::TokenReplacement { row: 0, position: 4 + i, vector: &style.values[i * width..][..width] })
        .collect();
    let encoder = model.text_encoder.as_mut().unwrap();
    assert!(encoder.supports_embeddings());
    let ids = ids(entry);
    let last = encoder.encode_with_embeddings(&ids, TextLayer::Last, &replacements).unwrap();
    assert_close("with tiny-style", &last.hidden.into_dyn(), &npy(entry, "outputs", "last_hidden_state"), TOLERANCE);
    let skip = encoder.encode_with_embeddings(&ids, TextLayer::ClipSkip(2), &replacements).unwrap();
    assert_close("clip skip 2", &skip.hidden.into_dyn(), &npy(entry, "outputs", "clip_skip_2"), TOLERANCE);
    let wrong = [sdrt_models::TokenReplacement { row: 0, position: 4, vector: &[1.0; 3] }];
    let error = encoder.encode_with_embeddings(&ids, TextLayer::Last, &wrong).unwrap_err().to_string();
    assert!(error.contains("3-wide vector"), "{error}");
    let export = fixture("models/sd15-tiny/model_index.json");
    let mut exported = load_path(export.parent().unwrap(), GraphOptions::default());
    let encoder = exported.text_encoder.as_mut().unwrap();
    assert!(!encoder.supports_embeddings());
    let error = encoder.encode_with_embeddings(&ids, TextLayer::Last, &replacements).unwrap_err().to_string();
    assert!(error.contains(".safetensors checkpoint"), "{error}");
}

#[test]
fn torch_pickle_embeddings_are_read_without_running_them() {
    let pt = sdrt_models::read_tensors(&fixture("embeddings/tiny-pt.pt")).unwrap();
    assert_eq!(pt.len(), 1);
    assert_eq!((pt[0].name.as_str(), pt[0].shape.as_slice()), ("string_to_param.*", &[2, 8][..]));
    let want: ArrayD<f32> = read_npy(fixture("embeddings/references/tiny-pt.vectors.npy")).unwrap();
    assert_eq!(pt[0].values, want.iter().copied().collect::<Vec<_>>(), "fp16 storage read exactly");
    let concept = sdrt_models::read_tensors(&fixture("embeddings/tiny-concept.bin")).unwrap();
    assert_eq!((concept[0].name.as_str(), concept[0].shape.as_slice()), ("<tiny-concept>", &[8][..]));
    let want: ArrayD<f32> = read_npy(fixture("embeddings/references/tiny-concept.vectors.npy")).unwrap();
    assert_eq!(concept[0].values, want.iter().copied().collect::<Vec<_>>());
    let error = sdrt_models::read_tensors(&fixture("embeddings/evil.pt")).unwrap_err().to_string();
    assert!(error.contains("evil.pt") && error.contains("system") && error.contains("never executed"), "{error}");
}
