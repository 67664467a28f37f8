//! End-to-end: every committed A1111-semantics case (tests/fixtures/e2e) generated through the runner, the
//! same way `sdrt txt2img`/`img2img` do, compared on final latents, pixels, infotext and UNet calls.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ndarray::ArrayD;
use ndarray_npy::read_npy;
use sdrt_api_types::Txt2ImgRequest;
use sdrt_models::SessionConfig;
use sdrt_processing::RgbImage;
use sdrt_runtime::{
    GenerationJob, GenerationSettings, ModelProvider, ProcessingRequest, ProcessingRunner, parse_randn_source,
};
use sdrt_tests::oracle::{checkpoint_twin_cases, reproduce_cases, reproduce_oracle, request, settings};
use sdrt_tests::{fixture, fixture_json, fixtures_dir};
use serde_json::Value;

#[test]
fn every_reference_case_reproduces_through_checkpoint_twins() {
    let cases = reproduce_cases("e2e/cases.json", checkpoint_twin_cases("e2e/cases.json"));
    let models: std::collections::BTreeSet<&str> =
        cases["cases"].as_array().unwrap().iter().filter_map(|c| c["model"].as_str()).collect();
    assert!(models.len() >= 2, "SD 1.x and SDXL twins are covered: {models:?}");
}

#[test]
fn every_inpainting_and_hires_case_reproduces_through_checkpoint_twins() {
    let inpaint = reproduce_cases("passes/inpaint.json", checkpoint_twin_cases("passes/inpaint.json"));
    assert!(!inpaint["cases"].as_array().unwrap().is_empty());
    let hires = reproduce_cases("passes/cases.json", checkpoint_twin_cases("passes/cases.json"));
    assert!(!hires["cases"].as_array().unwrap().is_empty());
}

/// LoRA at two multipliers and with split te/unet multipliers, a textual-inversion embedding, a separate VAE and
/// two styles on the sd15-tiny checkpoint (tools/fixtures/gen_networks_e2e.py): latents, pixels and infotexts
/// (`Lora hashes`, `TI hashes`, `VAE hash`/`VAE`, styled prompts) as A1111 makes them.
#[test]
fn every_network_embedding_vae_and_style_case_reproduces() {
    let cases = reproduce_oracle("networks_e2e/cases.json");
    let names: Vec<&str> = cases["cases"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["lora_half", "lora_one", "lora_split", "embedding", "vae", "styles"]);
}

#[test]
fn every_reference_case_reproduces_through_the_runner() {
    let cases = reproduce_oracle("e2e/cases.json");
    assert!(cases["cases"].as_array().unwrap().len() >= 12, "the oracle has its cases");
}

/// Hires fix (tests/fixtures/passes, tools/fixtures/gen_passes.py): every latent and image upscaler family, a
/// second-pass sampler and prompt, truncation, prompt timelines, SDXL.
#[test]
fn every_hires_case_reproduces_through_the_runner() {
    let cases = reproduce_oracle("passes/cases.json");
    let upscalers: std::collections::BTreeSet<&str> =
        cases["cases"].as_array().unwrap().iter().filter_map(|c| c["request"]["hr_upscaler"].as_str()).collect();
    assert!(upscalers.len() >= 6, "latent and image upscaler families are covered: {upscalers:?}");
}

/// Inpainting (tests/fixtures/passes/inpaint.json): every masked-content mode, invert, "Only masked" with
/// padding on a larger image, soft masks with a noise multiplier, a 9-channel inpainting UNet with and
/// without a mask.
#[test]
fn every_inpainting_case_reproduces_through_the_runner() {
    let cases = reproduce_oracle("passes/inpaint.json");
    let fills: std::collections::BTreeSet<u64> =
        cases["cases"].as_array().unwrap().iter().filter_map(|c| c["request"]["inpainting_fill"].as_u64()).collect();
    assert_eq!(fills.len(), 4, "every masked-content mode is covered");
}

/// The SDE samplers with A1111's Brownian-tree noise (tests/fixtures/passes/sde.json, generated with
/// k-diffusion's `BrownianTreeNoiseSampler` on torchsde): every SDE sampler, a batch, img2img.
#[test]
fn every_sde_case_reproduces_through_the_runner() {
    let cases = reproduce_oracle("passes/sde.json");
    let samplers: std::collections::BTreeSet<&str> =
        cases["cases"].as_array().unwrap().iter().filter_map(|c| c["request"]["sampler_name"].as_str()).collect();
    assert_eq!(samplers.len(), 4, "every SDE sampler is covered: {samplers:?}");
}

#[test]
fn saved_png_round_trips_the_infotext_and_latents() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("e2e/cases.json");
    let case = &cases["cases"][0];
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(ModelProvider::new(SessionConfig::default()));
    let settings = GenerationSettings {
        outdir: Some(dir.path().to_owned()),
        save_latents: true,
        ..settings(case, cases["a1111_version"].as_str().unwrap())
    };
    let job = GenerationJob::new(request(case), settings, provider);
    let (output, metrics) = ProcessingRunner::new().run(job).unwrap();
    assert!(metrics.stages.contains_key("save"));
    let image = &output.images[0];
    let path = image.path.as_ref().unwrap();
    assert!(path.file_name().unwrap().to_string_lossy().starts_with("00000-"), "{}", path.display());
    let bytes = std::fs::read(path).unwrap();
    let info = sdrt_io::read_image_info(&bytes).unwrap();
    assert_eq!(info.infotext.as_deref(), case["infotexts"][0].as_str());
    let saved: ArrayD<f32> = read_npy(image.latents_path.as_ref().unwrap()).unwrap();
    assert_eq!(saved, image.latents);
    assert!(Path::new(&path.with_extension("npy")).is_file());
}

/// Interrupts the job from the progress callback once `at` steps are done.
struct InterruptAt {
    at: usize,
    control: sdrt_runtime::JobControl,
    seen: Mutex<Vec<(usize, usize)>>,
}

impl sdrt_runtime::ProgressSink for InterruptAt {
    fn on_progress(&self, event: &sdrt_runtime::ProgressEvent) {
        self.seen.lock().unwrap().push((event.step, event.total));
        if event.step == self.at {
            self.control.interrupt();
        }
    }
}

#[test]
fn progress_reports_every_step_and_interrupt_stops_after_the_current_one() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("e2e/cases.json");
    let case = &cases["cases"][0];
    let steps = case["request"]["steps"].as_u64().unwrap() as usize;
    let provider = Arc::new(ModelProvider::new(SessionConfig::default()));
    let runner = ProcessingRunner::new();
    let version = cases["a1111_version"].as_str().unwrap();

    let control = sdrt_runtime::JobControl::default();
    let full = Arc::new(InterruptAt { at: usize::MAX, control: control.clone(), seen: Mutex::default() });
    let job = GenerationJob::new(request(case), settings(case, version), provider.clone());
    let (complete, metrics) = runner.run_with(job, full.clone(), control).unwrap();
    let expected: Vec<(usize, usize)> = (1..=steps).map(|s| (s, steps)).collect();
    assert_eq!(*full.seen.lock().unwrap(), expected, "one event per step with the total");
    assert_eq!(metrics.steps, steps);
    assert!(!complete.interrupted);

    let control = sdrt_runtime::JobControl::default();
    let stopper = Arc::new(InterruptAt { at: 3, control: control.clone(), seen: Mutex::default() });
    let job = GenerationJob::new(request(case), settings(case, version), provider);
    let (stopped, metrics) = runner.run_with(job, stopper.clone(), control).unwrap();
    assert!(stopped.interrupted, "the job reports the interrupt");
    assert_eq!(stopper.seen.lock().unwrap().len(), 3, "no step runs after the interrupt");
    assert_eq!(metrics.steps, 3);
    assert_eq!(stopped.unet_calls, 3, "sampling stopped after the current step");
    assert_eq!(stopped.images.len(), 1, "the last denoised prediction is still decoded");
    assert_ne!(stopped.images[0].latents, complete.images[0].latents);
}

/// An interrupt that arrives after a batch's last step (while it decodes) keeps that batch whole, as A1111
/// does, and runs no further batch; the runner is usable afterwards.
#[test]
fn an_interrupt_during_decode_keeps_the_batch_and_stops_the_job() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("e2e/cases.json");
    let mut case = cases["cases"][0].clone();
    case["request"]["n_iter"] = serde_json::json!(2);
    let steps = case["request"]["steps"].as_u64().unwrap() as usize;
    let provider = Arc::new(ModelProvider::new(SessionConfig::default()));
    let runner = ProcessingRunner::new();
    let version = cases["a1111_version"].as_str().unwrap();
    let run = |at: usize| {
        let control = sdrt_runtime::JobControl::default();
        let sink = Arc::new(InterruptAt { at, control: control.clone(), seen: Mutex::default() });
        let job = GenerationJob::new(request(&case), settings(&case, version), provider.clone());
        runner.run_with(job, sink, control).unwrap().0
    };
    let stopped = run(steps);
    assert!(stopped.interrupted);
    assert_eq!(stopped.unet_calls, steps, "the second batch never samples");
    let complete = run(usize::MAX);
    assert!(!complete.interrupted);
    assert_eq!(complete.images.len(), 2);
    assert_eq!(stopped.images.len(), 1);
    assert_eq!(stopped.images[0].latents, complete.images[0].latents, "the decoding batch is whole");
    assert_eq!(stopped.images[0].image, complete.images[0].image);
}

#[test]
fn pad_cond_uncond_batches_prompts_of_different_lengths() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("e2e/cases.json");
    let case = cases["cases"].as_array().unwrap().iter().find(|c| c["name"] == "sd15_long_prompt").unwrap();
    let steps = case["request"]["steps"].as_u64().unwrap() as usize;
    let provider = Arc::new(ModelProvider::new(SessionConfig::default()));
    let version = cases["a1111_version"].as_str().unwrap();
    let padded = GenerationSettings { pad_cond_uncond: true, ..settings(case, version) };
    let job = GenerationJob::new(request(case), padded, provider.clone());
    let (output, _) = ProcessingRunner::new().run(job).unwrap();
    assert_eq!(output.unet_calls, steps, "cond and padded uncond share one call per step");
    let reference = case["unet_calls"].as_u64().unwrap() as usize;
    assert_eq!(reference, 2 * steps, "without padding A1111 makes two calls per step");
    let expected: ArrayD<f32> = read_npy(fixture(case["latents"].as_str().unwrap())).unwrap();
    let moved = output.images[0].latents.iter().zip(expected.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(moved > 0.0 && output.images[0].latents.iter().all(|v| v.is_finite()), "padding changes the result");
}

#[test]
fn img2img_fits_other_sizes_and_rejects_latent_upscale_by_name() {
    sdrt_models::ensure_runtime().unwrap();
    let cases = fixture_json("e2e/cases.json");
    let case = cases["cases"].as_array().unwrap().iter().find(|c| c["mode"] == "img2img").unwrap();
    let provider = Arc::new(ModelProvider::new(SessionConfig::default()));
    let version = cases["a1111_version"].as_str().unwrap();
    let small = RgbImage { width: 48, height: 32, pixels: (0..48 * 32 * 3).map(|i| (i % 251) as u8).collect() };
    for mode in [0, 1, 2] {
        let ProcessingRequest::Img2Img { mut request, .. } = request(case) else { unreachable!() };
        request.resize_mode = mode;
        let job = ProcessingRequest::Img2Img { request, init_images: vec![small.clone()], mask: None };
        let (output, _) =
            ProcessingRunner::new().run(GenerationJob::new(job, settings(case, version), provider.clone())).unwrap();
        assert_eq!((output.images[0].image.width, output.images[0].image.height), (64, 64), "mode {mode}");
    }
    let ProcessingRequest::Img2Img { mut request, .. } = request(case) else { unreachable!() };
    request.resize_mode = 3;
    let job = ProcessingRequest::Img2Img { request, init_images: vec![small], mask: None };
    let err = ProcessingRunner::new().run(GenerationJob::new(job, settings(case, version), provider)).unwrap_err();
    assert!(err.to_string().contains("resize_mode"), "{err}");
}

/// `<lora:…>` tags through the runner on a checkpoint: the tag leaves the encoded text but stays in the
/// infotext with A1111's `Lora hashes`, the network changes the image, a zero multiplier or an unknown name
/// changes nothing, and a job without tags runs on the unmerged weights again.
#[test]
fn lora_tags_merge_networks_and_write_lora_hashes() {
    sdrt_models::ensure_runtime().unwrap();
    let provider =
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }));
    let runner = ProcessingRunner::new();
    let loras = Arc::new(sdrt_runtime::LoraLibrary::new(vec![fixtures_dir().join("loras")]).unwrap());
    let names: Vec<String> = loras.list().into_iter().map(|entry| entry.name).collect();
    assert_eq!(
        names,
        ["sd15-inpaint-conv-in", "sd15-tiny-locon", "sd15-tiny-lycoris", "sd2-tiny-v-lora", "sdxl-tiny-lora"]
    );
    let run = |prompt: &str| tiny_checkpoint_image(&loras, &provider, &runner, prompt, 3);
    let plain = run("a cat ");
    let merged = run("a cat <lora:sd15-tiny-locon:0.5:0.75>");
    let hashes = fixture_json("loras/hashes.json");
    let short = &hashes["sd15-tiny-locon.safetensors"].as_str().unwrap()[..12];
    assert!(
        merged.infotext.starts_with("a cat <lora:sd15-tiny-locon:0.5:0.75>\n"),
        "the infotext keeps the tag: {}",
        merged.infotext
    );
    assert!(merged.infotext.contains(&format!("Lora hashes: \"sd15-tiny-locon: {short}\"")), "{}", merged.infotext);
    assert_ne!(merged.latents, plain.latents, "the network changes the image");
    assert!(!plain.infotext.contains("Lora hashes"));
    assert_eq!(run("a cat <lora:sd15-tiny-locon:0>").latents, plain.latents, "ΔW·0 changes nothing");
    assert_eq!(run("a cat <lora:no-such-network:1>").latents, plain.latents, "unknown names are skipped");
    assert_eq!(run("a cat ").latents, plain.latents, "a job without tags runs on the unmerged weights");
}

/// A1111's `sd_vae` through the runner: `Automatic` takes the VAE whose file name starts with the checkpoint's
/// (A1111's prefix rule) and writes `VAE hash`/`VAE`; `None` and unknown names decode with the model's own.
#[test]
fn sd_vae_selects_a_standalone_vae_and_names_it_in_the_infotext() {
    sdrt_models::ensure_runtime().unwrap();
    let provider =
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }));
    let runner = ProcessingRunner::new();
    let vaes = sdrt_runtime::VaeLibrary::new(vec![], vec![fixtures_dir().join("vaes")], vec![]).unwrap();
    let names: Vec<String> = vaes.list().into_iter().map(|entry| entry.name).collect();
    assert_eq!(names, ["sd15-tiny-alt.vae.safetensors"]);
    let settings = GenerationSettings {
        model: Some(fixture("checkpoints/sd15-tiny.safetensors").display().to_string()),
        randn_source: parse_randn_source("CPU").unwrap(),
        vaes: Arc::new(vaes),
        ..GenerationSettings::default()
    };
    let run = |sd_vae: &str| {
        let request = serde_json::json!({"prompt": "a cat", "seed": 5, "steps": 2, "width": 64, "height": 64,
                                         "override_settings": {"sd_vae": sd_vae}});
        let request = Txt2ImgRequest::from_json(&request.to_string()).unwrap();
        let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings.clone(), provider.clone());
        runner.run(job).unwrap().0.images.remove(0)
    };
    let own = run("None");
    let automatic = run("Automatic");
    let hashes = fixture_json("vaes/hashes.json");
    let hash = &hashes["sd15-tiny-alt.vae.safetensors"].as_str().unwrap()[..10];
    assert!(
        automatic.infotext.contains(&format!("Model: sd15-tiny, VAE hash: {hash}, VAE: sd15-tiny-alt.vae.safetensors")),
        "{}",
        automatic.infotext
    );
    assert_eq!(automatic.latents, own.latents, "the VAE does not change the latents");
    assert_ne!(automatic.image.pixels, own.image.pixels, "it changes the pixels");
    assert!(!own.infotext.contains("VAE"), "{}", own.infotext);
    let by_name = run("sd15-tiny-alt.vae.safetensors");
    assert_eq!(by_name.image.pixels, automatic.image.pixels);
    let unknown = run("no-such.vae.safetensors");
    assert_eq!(unknown.image.pixels, own.image.pixels, "an unknown name falls back to the model's own");
}

/// Textual inversion through the pipeline and the runner: the conditioning of a prompt naming an embedding
/// equals torch with the vectors in place, the infotext gets A1111's `TI hashes` (prompt, then negative), and an
/// embedding of another width is left as text.
#[test]
fn embeddings_named_in_prompts_condition_and_write_ti_hashes() {
    sdrt_models::ensure_runtime().unwrap();
    let library = Arc::new(sdrt_runtime::EmbeddingLibrary::new(vec![fixtures_dir().join("embeddings")]).unwrap());
    let names: Vec<String> = library.list().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["tiny-concept", "tiny-one", "tiny-pt", "tiny-style", "tiny-wide", "tiny-xl"]);
    let problems = library.problems();
    assert!(problems.len() == 1 && problems[0].contains("evil.pt"), "{problems:?}");
    let (fitting, skipped) = library.for_model(&[8]);
    let fitting_names: Vec<&str> = fitting.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(fitting_names, ["tiny-concept", "tiny-one", "tiny-pt", "tiny-style"]);
    assert_eq!(skipped, ["tiny-wide", "tiny-xl"]);

    // The pipeline's conditioning: A1111's chunk with the three vectors at positions 4-6.
    let checkpoint = fixture("checkpoints/sd15-tiny.safetensors");
    let folder = sdrt_models::ModelFolder::open(&checkpoint).unwrap();
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    let mut model = sdrt_models::LoadedModel::load(folder, &config).unwrap();
    let mut pipeline = sdrt_processing::Pipeline::new(&mut model).unwrap();
    let spec = sdrt_processing::GenerationSpec {
        prompts: vec!["a photo of tiny-style".into()],
        negative_prompts: vec![String::new()],
        steps: 2,
        cfg_scale: 7.0,
        width: 64,
        height: 64,
        sampler: sdrt_processing::Sampler::from_names("Euler", None, Default::default()).unwrap(),
        noise: sdrt_processing::NoiseParams {
            latent_shape: [4, 8, 8],
            seeds: vec![1],
            subseeds: vec![0],
            subseed_strength: 0.0,
            seed_resize_from: (-1, -1),
            source: sdrt_processing::RandomSource::Gpu,
            eta_noise_seed_delta: 0,
        },
        clip_skip: 1,
        emphasis: sdrt_processing::Emphasis::Original,
        denoising_strength: None,
        pad_cond_uncond: false,
        after_first_pass: None,
        noise_multiplier: 1.0,
        textual_inversions: Arc::new(fitting),
    };
    let conditioning = pipeline.encode_prompts(&spec).unwrap();
    let cond = &conditioning.conds[0][0].0[0].1;
    let reference = fixture_json("embeddings/references/sd15-tiny-style.json");
    let want: ArrayD<f32> =
        read_npy(fixture(reference["text_encoder"]["outputs"]["last_hidden_state"].as_str().unwrap())).unwrap();
    let want = want.into_shape_with_order(cond.hidden.raw_dim()).unwrap();
    let worst = cond.hidden.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "conditioning differs from torch by {worst:.2e}");
    drop(pipeline);

    // The runner: TI hashes of the prompt's, then the negative prompt's embeddings.
    let provider = Arc::new(ModelProvider::new(config));
    let settings = GenerationSettings {
        model: Some(checkpoint.display().to_string()),
        embeddings: library,
        ..GenerationSettings::default()
    };
    let request = serde_json::json!({"prompt": "a photo of tiny-style, tiny-wide", "negative_prompt": "tiny-one",
                                     "seed": 5, "steps": 2, "width": 64, "height": 64});
    let request = Txt2ImgRequest::from_json(&request.to_string()).unwrap();
    let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings, provider);
    let image = ProcessingRunner::new().run(job).unwrap().0.images.remove(0);
    let hashes = fixture_json("embeddings/hashes.json");
    let short = |file: &str| hashes[file].as_str().unwrap()[..12].to_owned();
    let expected = format!(
        "TI hashes: \"tiny-style: {}, tiny-one: {}\"",
        short("tiny-style.safetensors"),
        short("tiny-one.safetensors")
    );
    assert!(image.infotext.contains(&expected), "{}", image.infotext);

    // SDXL: clip_l vectors for CLIP-L, clip_g for CLIP-G.
    let provider =
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }));
    let settings = GenerationSettings {
        model: Some(fixture("checkpoints/sdxl-tiny.safetensors").display().to_string()),
        embeddings: Arc::new(sdrt_runtime::EmbeddingLibrary::new(vec![fixtures_dir().join("embeddings")]).unwrap()),
        ..GenerationSettings::default()
    };
    let run = |prompt: &str| {
        let request = serde_json::json!({"prompt": prompt, "seed": 5, "steps": 2, "width": 64, "height": 64});
        let request = Txt2ImgRequest::from_json(&request.to_string()).unwrap();
        let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings.clone(), provider.clone());
        ProcessingRunner::new().run(job).unwrap().0.images.remove(0)
    };
    let xl = run("a photo of tiny-xl");
    assert!(
        xl.infotext.contains(&format!("TI hashes: \"tiny-xl: {}\"", short("tiny-xl.safetensors"))),
        "{}",
        xl.infotext
    );
    assert_ne!(xl.latents, run("a photo of tiny xl").latents, "the vectors replace the name's tokens");
}

/// A hires prompt naming other networks than the prompt: each pass runs with its own (A1111 activates the
/// hires prompt's at the second pass and the prompt's again for the next batch).
#[test]
fn hires_passes_switch_to_their_own_networks() {
    sdrt_models::ensure_runtime().unwrap();
    let provider =
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }));
    let runner = ProcessingRunner::new();
    let settings = GenerationSettings {
        model: Some(fixture("checkpoints/sd15-tiny.safetensors").display().to_string()),
        randn_source: parse_randn_source("CPU").unwrap(),
        loras: Arc::new(sdrt_runtime::LoraLibrary::new(vec![fixtures_dir().join("loras")]).unwrap()),
        ..GenerationSettings::default()
    };
    let run = |hr_prompt: &str, seed: i64, n_iter: u32| {
        let request = serde_json::json!({
            "prompt": "a cat <lora:sd15-tiny-locon:1>", "hr_prompt": hr_prompt, "seed": seed, "n_iter": n_iter,
            "steps": 2, "width": 64, "height": 64, "enable_hr": true, "hr_scale": 2,
            "hr_upscaler": "Latent", "denoising_strength": 0.6,
        });
        let request = Txt2ImgRequest::from_json(&request.to_string()).unwrap();
        let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings.clone(), provider.clone());
        runner.run(job).unwrap().0.images
    };
    let switched = run("a cat ", 7, 2);
    let shared = run("a cat <lora:sd15-tiny-locon:1>", 7, 1);
    assert_ne!(switched[0].latents, shared[0].latents, "the hires pass ran without the LoRA");
    assert!(switched[0].infotext.contains("Lora hashes: \"sd15-tiny-locon: "), "{}", switched[0].infotext);
    // The second batch's first pass has the prompt's LoRA again: it equals that seed run on its own.
    let alone = run("a cat ", 8, 1);
    assert_eq!(switched[1].latents, alone[0].latents);
}

/// One 64×64 image (seed 5, CPU noise) of `prompt` on the sd15-tiny checkpoint with `loras`.
fn tiny_checkpoint_image(
    loras: &Arc<sdrt_runtime::LoraLibrary>,
    provider: &Arc<ModelProvider>,
    runner: &ProcessingRunner,
    prompt: &str,
    steps: u32,
) -> sdrt_runtime::GeneratedImage {
    let settings = GenerationSettings {
        model: Some(fixture("checkpoints/sd15-tiny.safetensors").display().to_string()),
        randn_source: parse_randn_source("CPU").unwrap(),
        loras: Arc::clone(loras),
        ..GenerationSettings::default()
    };
    let request = serde_json::json!({"prompt": prompt, "seed": 5, "steps": steps, "width": 64, "height": 64});
    let request = Txt2ImgRequest::from_json(&request.to_string()).unwrap();
    let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings, Arc::clone(provider));
    runner.run(job).unwrap().0.images.remove(0)
}

/// A copy of the safetensors file `from` at `to` whose header carries `metadata` as `__metadata__`.
fn with_metadata(from: &Path, to: &Path, metadata: &[(&str, &str)]) {
    let bytes = std::fs::read(from).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entries: serde_json::Map<String, Value> =
        metadata.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
    header.insert("__metadata__".into(), Value::Object(entries));
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(to, out).unwrap();
}

/// A1111 finds a network by file stem or by its `ss_output_name` alias; an alias two files share finds neither.
#[test]
fn loras_answer_to_their_metadata_alias_unless_two_files_share_it() {
    sdrt_models::ensure_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("loras/sd15-tiny-locon.safetensors");
    with_metadata(&source, &dir.path().join("renamed-file.safetensors"), &[("ss_output_name", "pixel-art")]);
    with_metadata(&source, &dir.path().join("twin-a.safetensors"), &[("ss_output_name", "twin")]);
    with_metadata(&source, &dir.path().join("twin-b.safetensors"), &[("ss_output_name", "twin")]);
    let loras = Arc::new(sdrt_runtime::LoraLibrary::new(vec![dir.path().to_owned()]).unwrap());
    let listed: Vec<(String, String)> = loras.list().into_iter().map(|e| (e.name, e.alias)).collect();
    assert_eq!(listed[0], ("renamed-file".to_owned(), "pixel-art".to_owned()));
    assert_eq!(loras.list()[0].metadata.get("ss_output_name").map(String::as_str), Some("pixel-art"));
    let provider =
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }));
    let runner = ProcessingRunner::new();
    let run = |prompt: &str| tiny_checkpoint_image(&loras, &provider, &runner, prompt, 2);
    let by_name = run("a cat <lora:renamed-file:0.5>");
    let by_alias = run("a cat <lora:pixel-art:0.5>");
    assert_eq!(by_alias.latents, by_name.latents, "the alias finds the same file");
    assert!(by_alias.infotext.contains("Lora hashes: \"pixel-art: "), "named as mentioned: {}", by_alias.infotext);
    let plain = run("a cat ");
    assert_eq!(run("a cat <lora:twin:0.5>").latents, plain.latents, "a shared alias finds nothing");
    assert_eq!(run("a cat <lora:twin-a:0.5>").latents, by_name.latents, "its files still answer to their names");
}
