//! The conditioning stage against A1111: chunking of tests/fixtures/tokenizer/chunks_sd{1,2}.json, encoded
//! conditioning against the component references of the tiny pipelines (tests/fixtures/components/), and
//! every e2e case's cond/uncond tensors (tests/fixtures/e2e/cases.json, written by A1111 v1.10's code path).

use ndarray::{Array1, Array2, Array3, Axis, concatenate, s};
use sdrt_models::{ClipTokenizer, LoadedModel, ModelFolder, SessionConfig, TextLayer};
use sdrt_processing::{
    ClipTextEncoder, Cond, Conditioner, Embedder, Emphasis, PromptTokenizer, ScheduleSteps, tokenize_prompt,
};
use sdrt_tests::{fixture, fixture_json, fixtures_dir, json_f32s};

fn tokenizer(kind: &str, pad: &str) -> ClipTokenizer {
    fixture(&format!("models/_tokenizers/{kind}/tokenizer_config.json"));
    ClipTokenizer::from_dir(&fixtures_dir().join("models/_tokenizers").join(kind), pad).expect("tokenizer loads")
}

fn load(pipeline: &str) -> LoadedModel {
    let folder = ModelFolder::open(&fixtures_dir().join("models").join(pipeline)).expect("folder opens");
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    LoadedModel::load(folder, &config).expect("model loads")
}

fn npy<D: ndarray::Dimension>(relative: &str) -> ndarray::Array<f32, D> {
    ndarray_npy::read_npy(fixture(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

/// Max |got − want| / max(1, |want|).
fn worst<'a>(got: impl IntoIterator<Item = &'a f32>, want: impl IntoIterator<Item = &'a f32>) -> f32 {
    got.into_iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &Array2<f32>, want: &Array2<f32>) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    let d = worst(got, want);
    assert!(d <= 1e-5, "{what}: max relative |d| {d:e}");
}

/// Compares every prompt's chunks with A1111's; returns the prompts whose token ids differ.
fn check_chunks(file: &str, tokenizer: &dyn PromptTokenizer) -> Vec<String> {
    let fixture = fixture_json(file);
    assert_eq!(fixture["pad"].as_u64(), Some(u64::from(tokenizer.pad_id())), "{file}: pad id");
    let mut differing = Vec::new();
    let prompts = fixture["prompts"].as_array().expect("prompts");
    assert!(prompts.len() >= 20);
    for case in prompts {
        let text = case["text"].as_str().expect("text");
        let got = tokenize_prompt(tokenizer, text, Emphasis::Original).expect("tokenizes");
        let want = case["chunks"].as_array().expect("chunks");
        assert_eq!(got.chunks.len(), want.len(), "{file} {text:?}: chunk count");
        assert_eq!(got.token_count as u64, case["token_count"].as_u64().expect("count"), "{file} {text:?}: count");
        for (i, (chunk, want)) in got.chunks.iter().zip(want).enumerate() {
            if chunk.tokens != ids(&want["tokens"]) {
                differing.push(text.to_owned());
            }
            let multipliers = want["multipliers"].as_array().expect("multipliers");
            assert_eq!(chunk.multipliers.len(), multipliers.len(), "{file} {text:?} chunk {i}");
            for (pos, (got, want)) in chunk.multipliers.iter().zip(multipliers).enumerate() {
                let want = want.as_f64().expect("weight");
                assert!((f64::from(*got) - want).abs() <= 1e-6, "{file} {text:?} chunk {i} pos {pos}: {got} vs {want}");
            }
        }
    }
    differing
}

#[test]
fn sd1_chunks_match_a1111_tokenize_line() {
    let differing = check_chunks("tokenizer/chunks_sd1.json", &tokenizer("clip-pad-eos", "<|endoftext|>"));
    assert!(differing.is_empty(), "token ids differ for {differing:?}");
}

#[test]
fn sd2_chunks_match_a1111_with_open_clip_padding() {
    // The fixture tokenized with open_clip; sdrt's CLIP tokenizer with pad `!` stands in for it.
    let differing = check_chunks("tokenizer/chunks_sd2.json", &tokenizer("clip-pad-0", "!"));
    assert!(differing.is_empty(), "token ids differ for {differing:?}");
}

#[test]
fn chunking_snapshot() {
    let tokenizer = tokenizer("clip-pad-0", "!");
    let mut out = String::new();
    for prompt in ["a (red:1.3) [cat], sitting BREAK on a mat", "(masterpiece), ((best quality))", ""] {
        let tokenized = tokenize_prompt(&tokenizer, prompt, Emphasis::Original).expect("tokenizes");
        out.push_str(&format!("{prompt:?} token_count={}\n", tokenized.token_count));
        for chunk in &tokenized.chunks {
            let used = chunk.tokens.iter().position(|&t| t == tokenizer.eos_id()).expect("an EOS") + 2;
            let pairs: Vec<String> =
                chunk.tokens[..used].iter().zip(&chunk.multipliers).map(|(t, m)| format!("{t}×{m:.4}")).collect();
            out.push_str(&format!("  {} …{} more\n", pairs.join(" "), 77 - used));
        }
    }
    insta::assert_snapshot!(out);
}

fn sd1_conditioner(model: &mut LoadedModel, layer: TextLayer) -> Conditioner<'_> {
    let tokenizer = model.tokenizer.as_ref().expect("tokenizer");
    let encoder = ClipTextEncoder::new(model.text_encoder.as_mut().expect("text encoder"), layer);
    Conditioner::new(vec![Embedder::new(tokenizer, Box::new(encoder))], Emphasis::Original, false)
}

fn sdxl_conditioner(model: &mut LoadedModel) -> Conditioner<'_> {
    let first = ClipTextEncoder::new(model.text_encoder.as_mut().expect("text encoder"), TextLayer::Penultimate);
    let second = ClipTextEncoder::new(model.text_encoder_2.as_mut().expect("text encoder 2"), TextLayer::Penultimate);
    let embedders = vec![
        Embedder::new(model.tokenizer.as_ref().expect("tokenizer"), Box::new(first)),
        Embedder::new(model.tokenizer_2.as_ref().expect("tokenizer 2"), Box::new(second)),
    ];
    Conditioner::new(embedders, Emphasis::Original, true)
}

const PROMPTS: [&str; 2] = ["a photo of an astronaut riding a horse on mars", ""];

#[test]
fn sd15_conditioning_matches_the_text_encoder_reference() {
    let mut model = load("sd15-tiny");
    let mut conditioner = sd1_conditioner(&mut model, TextLayer::ClipSkip(1));
    let conds = conditioner.encode_texts(&PROMPTS).expect("encodes");
    let want: Array3<f32> = npy("components/sd15-tiny/text_encoder.out.last_hidden_state.npy");
    for (i, cond) in conds.iter().enumerate() {
        assert_close(&format!("prompt {i}"), &cond.hidden, &want.index_axis(Axis(0), i).to_owned());
        assert!(cond.pooled.is_none(), "SD1 has no pooled conditioning");
    }
    assert_eq!(conditioner.encoder_calls(), 1);
}

#[test]
fn sd15_two_chunk_prompt_is_154_rows_and_chunks_encode_separately() {
    let mut model = load("sd15-tiny");
    let mut conditioner = sd1_conditioner(&mut model, TextLayer::ClipSkip(1));
    let long = format!("{} BREAK {}", PROMPTS[0], PROMPTS[0]);
    let conds = conditioner.encode_texts(&[&long]).expect("encodes");
    assert_eq!(conds[0].hidden.dim(), (154, 8));
    // Both chunks hold the same text and no weights, so each equals the single-chunk encoding.
    let want: Array3<f32> = npy("components/sd15-tiny/text_encoder.out.last_hidden_state.npy");
    let single = want.index_axis(Axis(0), 0).to_owned();
    assert_close("chunk 0", &conds[0].hidden.slice(s![..77, ..]).to_owned(), &single);
    assert_close("chunk 1", &conds[0].hidden.slice(s![77.., ..]).to_owned(), &single);
}

#[test]
fn sd15_clip_skip_2_matches_the_penultimate_layer_with_final_norm() {
    let mut model = load("sd15-tiny");
    let mut conditioner = sd1_conditioner(&mut model, TextLayer::ClipSkip(2));
    let conds = conditioner.encode_texts(&PROMPTS).expect("encodes");
    let want: Array3<f32> = npy("components/sd15-tiny/clip_skip2.npy");
    let last: Array3<f32> = npy("components/sd15-tiny/text_encoder.out.last_hidden_state.npy");
    for (i, cond) in conds.iter().enumerate() {
        assert_close(&format!("clip skip 2, prompt {i}"), &cond.hidden, &want.index_axis(Axis(0), i).to_owned());
        assert!(worst(&cond.hidden, last.index_axis(Axis(0), i)) > 1e-3, "clip skip must change the result");
    }
}

#[test]
fn sdxl_conditioning_concatenates_both_encoders_and_zeroes_an_empty_negative() {
    let mut model = load("sdxl-tiny");
    let mut conditioner = sdxl_conditioner(&mut model);
    let schedules =
        conditioner.learned_conditioning(&[PROMPTS[0].to_owned()], ScheduleSteps::new(8), false).expect("cond");
    let cond = &schedules[0][0].1;
    let first: Array3<f32> = npy("components/sdxl-tiny/text_encoder.out.hidden_states.3.npy");
    let second: Array3<f32> = npy("components/sdxl-tiny/text_encoder_2.out.hidden_states.2.npy");
    let want = concatenate(Axis(1), &[first.index_axis(Axis(0), 0), second.index_axis(Axis(0), 0)]).expect("concat");
    assert_eq!(cond.hidden.dim(), (77, 20));
    assert_close("sdxl cond", &cond.hidden, &want);
    let pooled: Array2<f32> = npy("components/sdxl-tiny/text_encoder_2.out.text_embeds.npy");
    let got = cond.pooled.clone().expect("pooled").insert_axis(Axis(0));
    assert_close("sdxl pooled", &got, &pooled.slice(s![..1, ..]).to_owned());

    let negative = conditioner.learned_conditioning(&[String::new()], ScheduleSteps::new(8), true).expect("uncond");
    let uncond = &negative[0][0].1;
    assert_eq!(uncond.hidden.dim(), (77, 20));
    assert!(uncond.hidden.iter().all(|&v| v == 0.0));
    assert_eq!(uncond.pooled.as_ref().map(Array1::len), Some(12));
    assert!(uncond.pooled.as_ref().expect("pooled").iter().all(|&v| v == 0.0));
}

/// The entry's tensors as a [`Cond`]; checks its chunks (first encoder) against sdrt's tokenization too.
fn reference_cond(entry: &serde_json::Value) -> Cond {
    let hidden: Array2<f32> = npy(entry["tensor"].as_str().expect("tensor"));
    let pooled = entry["pooled"].as_str().map(npy::<ndarray::Ix1>);
    Cond { hidden, pooled }
}

fn check_entry(case: &str, role: &str, entry: &serde_json::Value, got: &(usize, std::sync::Arc<Cond>)) {
    let want = reference_cond(entry);
    let what = format!("{case} {role} (end {})", got.0);
    assert_eq!(got.0 as u64, entry["end_step"].as_u64().expect("end_step"), "{what}: end step");
    assert_close(&what, &got.1.hidden, &want.hidden);
    match (&got.1.pooled, &want.pooled) {
        (Some(got), Some(want)) => {
            let d = worst(got, want);
            assert!(d <= 1e-5, "{what} pooled: {d:e}");
        }
        (None, None) => {}
        (got, want) => panic!("{what}: pooled present {} vs reference {}", got.is_some(), want.is_some()),
    }
}

#[test]
fn e2e_cases_conditioning_matches_a1111() {
    let cases = fixture_json("e2e/cases.json");
    let mut checked = 0;
    for case in cases["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let request = &case["request"];
        let settings = &case["settings"];
        let emphasis: Emphasis = settings["emphasis"].as_str().expect("emphasis").parse().expect("known emphasis");
        let reference = &case["conditioning"];
        // The schedule's step count (2 × steps for second-order samplers) is the last uncond entry's end.
        let uncond_entries = reference["uncond"].as_array().expect("uncond");
        let total_steps = uncond_entries.last().expect("an entry")["end_step"].as_u64().expect("end") as usize;
        let steps = ScheduleSteps::new(total_steps);
        let mut model = load(case["model"].as_str().expect("model"));
        // The chunk ids of the first encoder agree too.
        let model_tokenizer = model.tokenizer.as_ref().expect("tokenizer");
        let want_conds = reference["cond"].as_array().expect("cond");
        for entry in want_conds.iter().flat_map(|c| c["schedule"].as_array().expect("schedule")) {
            let text = entry["text"].as_str().expect("text");
            let tokenized = tokenize_prompt(model_tokenizer, text, emphasis).expect("tokenizes");
            let want_chunks = entry["chunks"].as_array().expect("chunks");
            assert_eq!(tokenized.chunks.len(), want_chunks.len(), "{name} {text:?}");
            for (got, want) in tokenized.chunks.iter().zip(want_chunks) {
                assert_eq!(got.tokens, ids(&want["tokens"]), "{name} {text:?}");
                let d = worst(&got.multipliers, &json_f32s(&want["multipliers"]));
                assert!(d <= 1e-6, "{name} {text:?} multipliers {d:e}");
            }
        }
        let mut conditioner = match case["model"].as_str() {
            Some("sdxl-tiny") => sdxl_conditioner(&mut model),
            _ => {
                let skip = settings["CLIP_stop_at_last_layers"].as_u64().expect("clip skip") as u32;
                sd1_conditioner(&mut model, TextLayer::ClipSkip(skip))
            }
        };
        assert_eq!(conditioner.emphasis(), emphasis, "{name}: the fixtures use the default emphasis");
        let prompt = request["prompt"].as_str().expect("prompt").to_owned();
        let negative = request["negative_prompt"].as_str().expect("negative").to_owned();
        let conds = conditioner.multicond(&[prompt], steps).expect("cond");
        let unconds = conditioner.learned_conditioning(&[negative], steps, true).expect("uncond");
        let want_conds = reference["cond"].as_array().expect("cond");
        assert_eq!(conds[0].len(), want_conds.len(), "{name}: AND sub-prompts");
        for (k, ((schedule, weight), want)) in conds[0].iter().zip(want_conds).enumerate() {
            assert_eq!(*weight, want["weight"].as_f64().expect("weight"), "{name} cond {k} weight");
            let entries = want["schedule"].as_array().expect("schedule");
            assert_eq!(schedule.len(), entries.len(), "{name} cond {k}: schedule length");
            for (entry, got) in entries.iter().zip(schedule) {
                check_entry(name, &format!("cond {k}"), entry, got);
                checked += 1;
            }
        }
        assert_eq!(unconds[0].len(), uncond_entries.len(), "{name}: uncond schedule length");
        for (entry, got) in uncond_entries.iter().zip(&unconds[0]) {
            check_entry(name, "uncond", entry, got);
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} schedule entries checked");
}
