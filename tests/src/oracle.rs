//! The A1111 oracle harness: runs the committed reference cases (tests/fixtures/e2e, tests/fixtures/passes)
//! through the runner, the way `sdrt txt2img`/`img2img` do, and compares final latents, pixels, infotext,
//! seeds and UNet calls.

use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use sdrt_api_types::{Img2ImgRequest, Txt2ImgRequest};
use sdrt_models::SessionConfig;
use sdrt_processing::RgbImage;
use sdrt_runtime::{
    EmbeddingLibrary, GenerationJob, GenerationOutput, GenerationSettings, HookPoint, JobInfo, LoraLibrary,
    ModelProvider, ProcessingRequest, ProcessingRunner, RunnerHook, Stage, VaeLibrary, parse_randn_source,
};
use serde_json::Value;

use crate::{fixture, fixture_json, fixtures_dir};

/// Final latents must agree within this fraction of their standard deviation. The oracle's discrimination
/// table shows a changed prompt weight or CFG scale moves them by ≥ 390× this.
pub const LATENT_TOLERANCE: f64 = 1e-4;
/// Pixels may differ by this many 8-bit levels (float noise can flip a truncation).
pub const PIXEL_TOLERANCE: i32 = 2;

/// A committed PNG fixture as an RGB image.
pub fn decode_png(relative: &str) -> RgbImage {
    let bytes = std::fs::read(fixture(relative)).unwrap();
    let png = sdrt_io::decode_png(&bytes).unwrap();
    RgbImage { width: png.width, height: png.height, pixels: png.pixels }
}

/// The generation settings a case was made with (A1111 options, model, upscalers).
pub fn settings(case: &Value, version: &str) -> GenerationSettings {
    let s = &case["settings"];
    let folder = || {
        fixture(&format!("models/{}/model_index.json", case["model"].as_str().unwrap()))
            .parent()
            .unwrap()
            .display()
            .to_string()
    };
    // A relative model path is a fixture (tests/fixtures/networks_e2e names the checkpoint that way).
    let model = case["model_path"].as_str().map_or_else(folder, |path| fixtures_dir().join(path).display().to_string());
    let mut settings = GenerationSettings {
        model: Some(model),
        randn_source: parse_randn_source(s["randn_source"].as_str().unwrap()).unwrap(),
        clip_skip: s["CLIP_stop_at_last_layers"].as_u64().unwrap() as u32,
        eta_noise_seed_delta: s["eta_noise_seed_delta"].as_u64().unwrap(),
        emphasis: s["emphasis"].as_str().unwrap().parse().unwrap(),
        upscaler_dir: Some(fixtures_dir().join("passes/upscalers")),
        esrgan_tile: s["ESRGAN_tile"].as_u64().map_or(192, |t| t as u32),
        esrgan_tile_overlap: s["ESRGAN_tile_overlap"].as_u64().map_or(8, |t| t as u32),
        version: version.to_owned(),
        ..GenerationSettings::default()
    };
    if case["libraries"].as_bool() == Some(true) {
        with_fixture_libraries(&mut settings);
    }
    if let Some(vae) = s["sd_vae"].as_str() {
        settings.sd_vae = vae.to_owned();
    }
    settings
}

/// The committed LoRAs, embeddings, VAEs and styles, as an A1111 data folder would give them.
pub fn with_fixture_libraries(settings: &mut GenerationSettings) {
    let dir = fixtures_dir();
    settings.loras = Arc::new(LoraLibrary::new(vec![dir.join("loras")]).unwrap());
    settings.embeddings = Arc::new(EmbeddingLibrary::new(vec![dir.join("embeddings")]).unwrap());
    settings.vaes = Arc::new(VaeLibrary::new(vec![], vec![dir.join("vaes")], vec![]).unwrap());
    settings.styles = Arc::new(sdrt_io::StyleDatabase::load(&fixture("networks_e2e/styles.csv")).unwrap());
}

/// The case's request, with its init image and mask read from the fixtures.
pub fn request(case: &Value) -> ProcessingRequest {
    let json = case["request"].to_string();
    match case["mode"].as_str().unwrap() {
        "txt2img" => ProcessingRequest::Txt2Img(Txt2ImgRequest::from_json(&json).unwrap()),
        "img2img" => {
            let mut request = Img2ImgRequest::from_json(&json).unwrap();
            let path = case["request"]["init_image"].as_str().unwrap();
            request.init_images = vec![path.to_owned()];
            let mask = case["request"]["mask_image"].as_str().map(|mask| {
                request.mask = Some(mask.to_owned());
                sdrt_io::mask_from_image(&image::open(fixture(mask)).unwrap(), request.mask_round)
            });
            ProcessingRequest::Img2Img { request, init_images: vec![decode_png(path)], mask }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Records the runner's lifecycle points.
#[derive(Default)]
pub struct StageLog(pub Mutex<Vec<HookPoint>>);

impl RunnerHook for StageLog {
    fn on_stage(&self, point: HookPoint, _job: &JobInfo) {
        self.0.lock().unwrap().push(point);
    }
}

/// Runs a case through the runner, checking that it passes every lifecycle stage and times every stage.
pub fn generate(case: &Value, version: &str, provider: &Arc<ModelProvider>) -> GenerationOutput {
    let log = Arc::new(StageLog::default());
    let runner = ProcessingRunner::new().with_hook(log.clone());
    let job = GenerationJob::new(request(case), settings(case, version), provider.clone());
    let (output, metrics) = runner.run(job).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    let stages = log.0.lock().unwrap().clone();
    assert_eq!(
        stages,
        [Stage::Prepare, Stage::Execute, Stage::Finalize]
            .into_iter()
            .flat_map(|s| [HookPoint::Before(s), HookPoint::After(s)])
            .collect::<Vec<_>>(),
        "every generation goes through the runner's lifecycle"
    );
    for stage in ["prepare", "text_encode", "sample", "decode", "total"] {
        assert!(metrics.stages.contains_key(stage), "{stage} not timed: {metrics:?}");
    }
    output
}

fn std_dev(values: &ArrayD<f32>) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    (values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Problems found, and the worst latent difference as a fraction of the reference's standard deviation.
pub fn compare_case(case: &Value, version: &str, provider: &Arc<ModelProvider>) -> (Vec<String>, f64) {
    let name = case["name"].as_str().unwrap();
    let output = generate(case, version, provider);
    let mut problems = Vec::new();
    let expected: ArrayD<f32> = read_npy(fixture(case["latents"].as_str().unwrap())).unwrap();
    assert_eq!(output.images.len(), expected.shape()[0], "{name}: image count");
    let std = std_dev(&expected);
    // Cases that pass through 8-bit pixels mid-way (hires image upscalers) carry their own measured tolerance.
    let tolerance = case["latent_tolerance"].as_f64().unwrap_or(LATENT_TOLERANCE * std);
    let mut worst = 0.0f64;
    for (i, image) in output.images.iter().enumerate() {
        let want = expected.index_axis(Axis(0), i);
        let diff = image.latents.iter().zip(want.iter()).map(|(a, b)| f64::from((a - b).abs())).fold(0.0, f64::max);
        worst = worst.max(diff / std);
        if diff > tolerance {
            problems.push(format!("{name}[{i}]: latents differ by {diff:.3e} > {tolerance:.3e}"));
        }
        let reference = decode_png(case["images"][i].as_str().unwrap());
        let worst =
            image.image.pixels.iter().zip(&reference.pixels).map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs()).max();
        if worst.is_none_or(|w| w > PIXEL_TOLERANCE) {
            problems.push(format!("{name}[{i}]: pixels differ by {worst:?} levels"));
        }
        let infotext = case["infotexts"][i].as_str().unwrap();
        if image.infotext != infotext {
            problems.push(format!("{name}[{i}]: infotext\n  ours: {:?}\n  ref:  {infotext:?}", image.infotext));
        }
        let seeds = (case["all_seeds"][i].as_u64().unwrap(), case["all_subseeds"][i].as_u64().unwrap());
        if (image.seed, image.subseed) != seeds {
            problems.push(format!("{name}[{i}]: seeds {:?} != {seeds:?}", (image.seed, image.subseed)));
        }
    }
    let calls = case["unet_calls"].as_u64().unwrap() as usize;
    if output.unet_calls != calls {
        problems.push(format!("{name}: {} UNet calls, the reference made {calls}", output.unet_calls));
    }
    (problems, worst)
}

/// Runs every case of an oracle file through the runner and checks its discrimination table (each recorded
/// change must move the latents by more than 10× the tolerance); returns the cases for coverage checks.
pub fn reproduce_oracle(relative: &str) -> Value {
    reproduce_cases(relative, fixture_json(relative))
}

/// The cases of an oracle file whose model has a single-file checkpoint twin (tests/fixtures/checkpoints,
/// the same weights in LDM layout), run through the checkpoint: its built graphs instead of the export.
/// Only `Model hash` changes in the infotext (A1111's hash of the checkpoint file).
pub fn checkpoint_twin_cases(relative: &str) -> Value {
    let mut cases = fixture_json(relative);
    let all = cases["cases"].as_array().unwrap().clone();
    let twins: Vec<Value> = all
        .into_iter()
        .filter_map(|mut case| {
            let model = case["model"].as_str().unwrap().to_owned();
            let path = fixtures_dir().join(format!("checkpoints/{model}.safetensors"));
            // Cases that pass through 8-bit pixels mid-way carry a tolerance measured on the export's rounding
            // flips; another graph of the same model flips other pixels, so they say nothing about the model.
            if !path.is_file() || case.get("latent_tolerance").is_some() {
                return None;
            }
            let unet = fixture(&format!("models/{model}/unet/model.onnx"));
            let folder_hash = sdrt_io::model_hash(unet.parent()?.parent()?).unwrap();
            let twin_hash = sdrt_io::model_hash(&path).unwrap();
            for infotext in case["infotexts"].as_array_mut().unwrap() {
                let text = infotext.as_str().unwrap().replace(&folder_hash, &twin_hash);
                *infotext = Value::from(text);
            }
            case["model_path"] = Value::from(path.display().to_string());
            Some(case)
        })
        .collect();
    cases["cases"] = Value::from(twins);
    cases
}

/// [`reproduce_cases_with`] on the default (CPU) sessions, one thread.
pub fn reproduce_cases(relative: &str, cases: Value) -> Value {
    reproduce_cases_with(relative, cases, SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() })
}

/// Runs `cases` (from the oracle file `relative`) on sessions made with `config`; panics listing every case
/// that does not reproduce.
pub fn reproduce_cases_with(relative: &str, cases: Value, config: SessionConfig) -> Value {
    sdrt_models::ensure_runtime_for(&config.provider).unwrap();
    let version = cases["a1111_version"].as_str().unwrap();
    let provider = Arc::new(ModelProvider::new(config));
    let mut problems = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let (found, worst) = compare_case(case, version, &provider);
        eprintln!("{}: max |Δlatents| = {worst:.2e} × std", case["name"].as_str().unwrap());
        problems.extend(found);
    }
    for entry in cases["discrimination"].as_array().map_or(&[][..], Vec::as_slice) {
        if let Some(ratio) = entry["ratio_to_tolerance"].as_f64() {
            assert!(ratio > 10.0, "the tolerance must catch {}: only {ratio:.1}× it", entry["change"]);
        }
    }
    assert!(problems.is_empty(), "{relative}: {} problems:\n{}", problems.len(), problems.join("\n"));
    cases
}
