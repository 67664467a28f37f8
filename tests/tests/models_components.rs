//! Every tiny fixture pipeline loads through `sdrt-models` and its typed components reproduce the
//! committed onnxruntime references (tests/fixtures/components/, written by tools/fixtures/gen_components.py).

use std::path::Path;

use ndarray::{Array1, Array2, Array3, Array4, ArrayD, Axis, Ix2, Ix3, Ix4, IxDyn, s};
use sdrt_models::{LoadedModel, ModelFolder, SessionConfig, TextLayer, UnetInput};
use sdrt_tests::{fixture, fixture_json, fixtures_dir};

/// f32 pipelines must match within 5e-5 (relative to max(1, |reference|)); fp16 within the fp16 tolerance the
/// fixture suggests. The references come from an AVX-512 machine; ONNX Runtime's MLAS picks other GEMM/conv
/// kernels on AVX2-only CPUs, whose different summation order moves VAE-encoder outputs by up to 1.5e-5
/// (measured on an AVX2 EPYC); a wrong weight or layout moves them by orders of magnitude more.
fn tolerance(pipeline: &str) -> f32 {
    if pipeline.ends_with("fp16") { 1e-2 } else { 5e-5 }
}

/// Reads a little-endian `.npy` array (f32, f16, f64, i64, i32) as f64.
fn read_npy(relative: &str) -> ArrayD<f64> {
    let bytes = std::fs::read(fixture(relative)).expect("npy readable");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{relative} is not .npy");
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("utf8 header");
    assert!(header.contains("'fortran_order': False"), "{relative}: {header}");
    let descr = header.split("'descr': '").nth(1).and_then(|r| r.split('\'').next()).expect("descr");
    let shape_text = header.split("'shape': (").nth(1).and_then(|r| r.split(')').next()).expect("shape");
    let shape: Vec<usize> =
        shape_text.split(',').filter(|d| !d.trim().is_empty()).map(|d| d.trim().parse().expect("dim")).collect();
    let data = &bytes[start + header_len..];
    let values: Vec<f64> = match descr {
        "<f4" => data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        "<f2" => data.chunks_exact(2).map(|c| f64::from(f16_to_f32(u16::from_le_bytes([c[0], c[1]])))).collect(),
        "<f8" => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        "<i8" => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64).collect(),
        "<i4" => data.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        other => panic!("{relative}: unsupported dtype {other}"),
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).expect("shape matches data")
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f32::from(bits & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        31 => {
            if mantissa == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}

fn f32s(relative: &str) -> ArrayD<f32> {
    read_npy(relative).mapv(|v| v as f32)
}

fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max relative |d| {worst:e} > {tol:e}");
}

fn load(pipeline: &str) -> LoadedModel {
    let folder = ModelFolder::open(&fixtures_dir().join("models").join(pipeline)).expect("folder opens");
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    LoadedModel::load(folder, &config).expect("model loads")
}

fn check_pipeline(pipeline: &str) {
    let index = fixture_json(&format!("components/{pipeline}/index.json"));
    let file = |name: &serde_json::Value| format!("components/{pipeline}/{}", name.as_str().expect("file name"));
    let tol = tolerance(pipeline);
    let mut model = load(pipeline);
    let mut checked = 0;
    for call in index["calls"].as_array().expect("calls") {
        let component = call["component"].as_str().expect("component");
        let outputs = &call["outputs"];
        let input = |name: &str| f32s(&file(&call["inputs"][name]));
        match component {
            "text_encoder" | "text_encoder_2" => {
                let ids = read_npy(&file(&call["inputs"]["input_ids"]))
                    .mapv(|v| v as i64)
                    .into_dimensionality::<Ix2>()
                    .expect("[B, 77]");
                let encoder = if component == "text_encoder" {
                    model.text_encoder.as_mut()
                } else {
                    model.text_encoder_2.as_mut()
                };
                let encoder = encoder.expect("encoder loaded");
                let last = encoder.encode(&ids, TextLayer::Last).expect("encodes");
                assert_close(
                    &format!("{pipeline} {component} last_hidden_state"),
                    &last.hidden.into_dyn(),
                    &f32s(&file(&outputs["last_hidden_state"])),
                    tol,
                );
                for pooled_name in ["text_embeds", "pooler_output"] {
                    if !outputs[pooled_name].is_null() {
                        let pooled = last.pooled.clone().expect("pooled output").into_dyn();
                        assert_close(
                            &format!("{pipeline} {component} {pooled_name}"),
                            &pooled,
                            &f32s(&file(&outputs[pooled_name])),
                            tol,
                        );
                    }
                }
                if let Some(layers) = encoder.layer_count() {
                    let penultimate = encoder.encode(&ids, TextLayer::Penultimate).expect("penultimate");
                    let name = format!("hidden_states.{}", layers - 1);
                    assert_close(
                        &format!("{pipeline} {component} {name}"),
                        &penultimate.hidden.into_dyn(),
                        &f32s(&file(&outputs[name.as_str()])),
                        tol,
                    );
                }
            }
            "unet" => {
                let sample = input("sample").into_dimensionality::<Ix4>().expect("rank 4");
                let batch = sample.len_of(Axis(0));
                let timestep = input("timestep");
                let timesteps = Array1::from_elem(batch, timestep.iter().copied().next().expect("a timestep"));
                let cond = input("encoder_hidden_states").into_dimensionality::<Ix3>().expect("rank 3");
                let latents = sample.slice(s![.., ..4, .., ..]);
                let extra = sample.slice(s![.., 4.., .., ..]);
                let mut unet_input = UnetInput::new(latents, timesteps.view(), cond.view());
                if sample.len_of(Axis(1)) > 4 {
                    unet_input.inpaint_conditioning = Some(extra);
                }
                let text_embeds = (!call["inputs"]["text_embeds"].is_null())
                    .then(|| input("text_embeds").into_dimensionality::<Ix2>().expect("[B, P]"));
                let time_ids = (!call["inputs"]["time_ids"].is_null())
                    .then(|| input("time_ids").into_dimensionality::<Ix2>().expect("[B, 6]"));
                unet_input.text_embeds = text_embeds.as_ref().map(|a| a.view());
                unet_input.time_ids = time_ids.as_ref().map(|a| a.view());
                let out = model.unet.predict(&unet_input).expect("unet runs");
                assert_close(&format!("{pipeline} unet"), &out.into_dyn(), &f32s(&file(&outputs["out_sample"])), tol);
            }
            "vae_encoder" => {
                let image = input("sample").into_dimensionality::<Ix4>().expect("rank 4");
                let encoder = model.vae_encoder().expect("vae encoder loads on first use");
                let dist = encoder.encode(image.view()).expect("encodes");
                match &call["derived"] {
                    serde_json::Value::Null => {
                        assert!(dist.logvar.is_none(), "legacy export has no logvar");
                        assert_close(
                            &format!("{pipeline} latent_sample"),
                            &dist.mean.into_dyn(),
                            &f32s(&file(&outputs["latent_sample"])),
                            tol,
                        );
                    }
                    derived => {
                        assert_close(
                            &format!("{pipeline} vae mean"),
                            &dist.mean.clone().into_dyn(),
                            &f32s(&file(&derived["mean"])),
                            tol,
                        );
                        let logvar = dist.logvar.clone().expect("logvar").into_dyn();
                        assert_close(&format!("{pipeline} vae logvar"), &logvar, &f32s(&file(&derived["logvar"])), tol);
                        let zero = ndarray::Array4::<f32>::zeros(dist.mean.raw_dim());
                        assert_eq!(dist.sample(zero.view()).expect("samples"), dist.mean, "zero noise gives the mean");
                    }
                }
            }
            "vae_decoder" => {
                let latents = input("latent_sample").into_dimensionality::<Ix4>().expect("rank 4");
                let image = model.vae_decoder.decode(latents.view()).expect("decodes");
                assert_close(
                    &format!("{pipeline} vae_decoder"),
                    &image.into_dyn(),
                    &f32s(&file(&outputs["sample"])),
                    tol,
                );
            }
            other => panic!("unexpected component {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 4, "{pipeline}: only {checked} calls checked");
}

#[test]
fn sd15_tiny_components_match() {
    check_pipeline("sd15-tiny");
}

#[test]
fn sd2_tiny_v_components_match() {
    check_pipeline("sd2-tiny-v");
}

#[test]
fn sdxl_tiny_components_match() {
    check_pipeline("sdxl-tiny");
}

#[test]
fn sd15_inpaint_tiny_components_match() {
    check_pipeline("sd15-inpaint-tiny");
}

#[test]
fn sd15_tiny_legacy_components_match() {
    check_pipeline("sd15-tiny-legacy");
}

#[test]
fn sd15_tiny_fp16_components_match() {
    check_pipeline("sd15-tiny-fp16");
}

#[test]
fn clip_skip_2_matches_a1111_with_the_final_layer_norm_from_the_onnx_file() {
    let index = fixture_json("components/sd15-tiny/index.json");
    let reference = &index["extra"]["clip_skip2"];
    let ids = read_npy(&format!("components/sd15-tiny/{}", reference["input_ids"].as_str().expect("ids")))
        .mapv(|v| v as i64)
        .into_dimensionality::<Ix2>()
        .expect("[B, 77]");
    let mut model = load("sd15-tiny");
    let encoder = model.text_encoder.as_mut().expect("text encoder");
    let skip2 = encoder.encode(&ids, TextLayer::ClipSkip(2)).expect("clip skip 2");
    let want = f32s(&format!("components/sd15-tiny/{}", reference["file"].as_str().expect("file")));
    assert_close("clip skip 2", &skip2.hidden.clone().into_dyn(), &want, 1e-5);
    let last = encoder.encode(&ids, TextLayer::ClipSkip(1)).expect("clip skip 1");
    assert!((&last.hidden - &skip2.hidden).iter().any(|d| d.abs() > 1e-3), "clip skip must change the conditioning");
}

#[test]
fn clip_skip_on_an_export_without_hidden_states_is_an_error_not_a_panic() {
    let mut model = load("sd15-tiny-legacy");
    let ids = Array2::from_elem((1, 77), 49407i64);
    let encoder = model.text_encoder.as_mut().expect("text encoder");
    let message = encoder.encode(&ids, TextLayer::ClipSkip(2)).expect_err("legacy export").to_string();
    assert!(message.contains("clip skip 2") && message.contains("hidden_states"), "{message}");
}

#[test]
fn fp16_models_take_and_return_f32_for_callers() {
    let model = load("sd15-tiny-fp16");
    let sample = model.unet.model().inputs().into_iter().find(|t| t.name == "sample").expect("sample input");
    assert_eq!(sample.dtype, "f16");
    assert!(Path::new(model.unet.model().path()).is_file());
}

#[test]
fn the_vae_encoder_loads_only_when_first_asked_for() {
    let mut model = load("sd15-tiny");
    assert!(!model.vae_encoder_loaded(), "txt2img never pays for the encoder");
    assert!(model.has_vae_encoder());
    model.vae_encoder().expect("loads on demand");
    assert!(model.vae_encoder_loaded());
}

fn load_with(pipeline: &str, config: SessionConfig) -> LoadedModel {
    let folder = ModelFolder::open(&fixtures_dir().join("models").join(pipeline)).expect("folder opens");
    LoadedModel::load(folder, &SessionConfig { intra_op_threads: Some(1), ..config }).expect("model loads")
}

#[test]
fn bound_io_gives_the_same_outputs_as_plain_runs_while_shapes_change_and_memory_is_released() {
    // An export keeps its UNet arena unless told otherwise (`SessionConfig::releases_unet_memory`).
    let release = SessionConfig { release_unet_memory: Some(true), ..SessionConfig::default() };
    let mut bound = load_with("sd15-tiny", release.clone());
    let plain_config = SessionConfig { bound_io: false, parallel_load: false, ..release };
    let mut plain = load_with("sd15-tiny", plain_config);
    let dim = bound.unet.model().inputs().iter().find(|t| t.name == "encoder_hidden_states").expect("cond").shape[2];
    let dim = usize::try_from(dim).expect("fixed width");
    // Repeated shapes reuse the pre-allocated output; a new batch size or resolution re-learns it.
    for (step, (batch, side)) in [(2, 8), (2, 8), (1, 8), (2, 8), (2, 16), (2, 16)].into_iter().enumerate() {
        // Five channels, sliced to four: a non-contiguous view takes the copying path.
        let wide = Array4::from_shape_fn((batch, 5, side, side), |(b, c, y, x)| {
            ((b * 7 + c * 3 + y * 5 + x + step) as f32 * 0.37).sin()
        });
        let sample = wide.slice(s![.., ..4, .., ..]);
        let cond = Array3::from_shape_fn((batch, 77, dim), |(b, t, d)| ((b + t * 3 + d) as f32 * 0.11).cos());
        let timesteps = Array1::from_elem(batch, 500.0 - step as f32 * 40.0);
        let input = UnetInput::new(sample, timesteps.view(), cond.view());
        if step % 2 == 1 {
            // A pass's last call hands the arena's memory back; ONNX Runtime must accept that on both run paths.
            plain.unet.release_memory_after_next_run();
            bound.unet.release_memory_after_next_run();
        }
        let want = plain.unet.predict(&input).expect("plain run");
        let got = bound.unet.predict(&input).expect("bound run");
        assert_eq!(got, want, "step {step}: batch {batch}, {side}×{side}");
        let contiguous = sample.to_owned();
        let input = UnetInput::new(contiguous.view(), timesteps.view(), cond.view());
        assert_eq!(bound.unet.predict(&input).expect("zero-copy run"), want, "step {step}, contiguous input");
        let decoded = bound.vae_decoder.decode(want.view()).expect("decode");
        assert_eq!(decoded, plain.vae_decoder.decode(want.view()).expect("plain decode"), "step {step}: decode");
    }
    // 12 UNet runs in 4 shape runs of 4, 2, 2, 4 calls: the first call of each learns the output.
    assert_eq!(bound.unet.model().bound_runs(), 12 - 4);
    assert_eq!(plain.unet.model().bound_runs(), 0);
}
