//! Infotext writing and parsing: a table of A1111-style generation parameters rendered to infotexts
//! (insta snapshots, reviewed against A1111 v1.10's `create_infotext` rules), parsed back
//! (`parse_generation_parameters`), and round-tripped.

use sdrt_io::{GenerationParams, HiresParams, InfotextValue, ParsedInfotext};

fn base() -> GenerationParams {
    GenerationParams {
        prompt: "a photo of an astronaut riding a horse on mars".into(),
        steps: 20,
        sampler: "DPM++ 2M".into(),
        schedule_type: Some("Karras".into()),
        seed: 1234,
        model_hash: Some("6ce0161689".into()),
        model: Some("v1-5-pruned-emaonly".into()),
        version: Some("v1.10.1".into()),
        ..GenerationParams::default()
    }
}

fn cases() -> Vec<(&'static str, GenerationParams)> {
    let hires = HiresParams {
        upscale: Some(InfotextValue::Float(2.0)),
        steps: Some(10),
        upscaler: Some("Latent".into()),
        ..HiresParams::default()
    };
    vec![
        ("01_minimal", GenerationParams { prompt: "a cat".into(), ..GenerationParams::default() }),
        ("02_reference", base()),
        ("03_negative", GenerationParams { negative_prompt: "blurry, lowres".into(), ..base() }),
        ("04_multiline_prompt", GenerationParams { prompt: "line one\nline two\n\nline four".into(), ..base() }),
        ("05_multiline_negative", GenerationParams { negative_prompt: "bad\nworse".into(), ..base() }),
        (
            "06_automatic_schedule",
            GenerationParams { sampler: "Euler a".into(), schedule_type: Some("Automatic".into()), ..base() },
        ),
        ("07_int_cfg", GenerationParams { cfg_scale: InfotextValue::Int(7), ..base() }),
        ("08_fractional_cfg", GenerationParams { cfg_scale: InfotextValue::Float(4.5), ..base() }),
        ("09_variation", GenerationParams { variation_seed: Some(99), variation_seed_strength: Some(0.25), ..base() }),
        ("10_seed_resize", GenerationParams { seed_resize_from: Some((768, 512)), ..base() }),
        ("11_clip_skip_2", GenerationParams { clip_skip: 2, ..base() }),
        ("12_clip_skip_1_hidden", GenerationParams { clip_skip: 1, ..base() }),
        ("13_ensd_and_cpu_rng", GenerationParams { ensd: Some(31337), rng: "CPU".into(), ..base() }),
        ("14_nv_rng", GenerationParams { rng: "NV".into(), ..base() }),
        (
            "15_img2img",
            GenerationParams {
                denoising_strength: Some(0.75),
                init_image_hash: None,
                extra: vec![("Mask blur".into(), InfotextValue::Int(4))],
                ..base()
            },
        ),
        ("16_hires", GenerationParams { denoising_strength: Some(0.7), hires: Some(hires.clone()), ..base() }),
        (
            "17_hires_resize_and_sampler",
            GenerationParams {
                denoising_strength: Some(0.5),
                hires: Some(HiresParams {
                    upscale: None,
                    resize: Some((1024, 1024)),
                    sampler: Some("Euler a".into()),
                    prompt: Some("detailed, sharp".into()),
                    ..hires
                }),
                ..base()
            },
        ),
        ("18_quoted_model_name", GenerationParams { model: Some("my model: v2, final".into()), ..base() }),
        (
            "19_quoted_extra",
            GenerationParams { extra: vec![("Lora hashes".into(), "cat: abc123, dog: def456".into())], ..base() },
        ),
        (
            "20_unicode_prompt",
            GenerationParams {
                prompt: "猫が帽子をかぶっている, 桜".into(),
                negative_prompt: "低品質".into(),
                ..base()
            },
        ),
        (
            "21_tiling_vae",
            GenerationParams {
                tiling: true,
                vae: Some("vae-ft-mse-840000".into()),
                vae_hash: Some("735e4c3a44".into()),
                ..base()
            },
        ),
        (
            "22_small_float",
            GenerationParams { extra: vec![("Schedule min sigma".into(), InfotextValue::Float(1e-5))], ..base() },
        ),
        (
            "23_bool_extra",
            GenerationParams { extra: vec![("Discard penultimate sigma".into(), InfotextValue::Bool(true))], ..base() },
        ),
        ("24_empty_prompt", GenerationParams { prompt: String::new(), ..base() }),
        ("25_no_version_no_model", GenerationParams { model: None, model_hash: None, version: None, ..base() }),
        ("26_large_seed", GenerationParams { seed: 4_294_967_294, ..base() }),
        ("27_key_equals_value", GenerationParams { extra: vec![("Pad conds".into(), "Pad conds".into())], ..base() }),
        (
            "28_denoise_via_extra_in_place",
            GenerationParams { extra: vec![("Denoising strength".into(), InfotextValue::Float(0.3))], ..base() },
        ),
    ]
}

#[test]
fn infotexts_render_as_a1111() {
    let rendered: Vec<(String, String)> =
        cases().into_iter().map(|(name, params)| (name.to_string(), params.to_infotext())).collect();
    assert!(rendered.len() >= 20);
    insta::assert_yaml_snapshot!("infotexts", rendered);
}

#[test]
fn infotexts_round_trip() {
    for (name, params) in cases() {
        let text = params.to_infotext();
        let back = GenerationParams::from_infotext(&text);
        if name == "27_key_equals_value" {
            // A bare key (written when key == value) has no `: value`, so A1111's parser drops it too.
            assert!(text.contains(", Pad conds, ") && back.extra.is_empty(), "{text}");
            continue;
        }
        assert_eq!(back.to_infotext(), text, "{name}");
        assert_eq!(back.prompt, params.prompt, "{name}");
        assert_eq!(back.negative_prompt, params.negative_prompt, "{name}");
        assert_eq!(
            (back.seed, back.steps, back.width, back.height),
            (params.seed, params.steps, params.width, params.height),
            "{name}"
        );
        assert_eq!(back.clip_skip, params.clip_skip, "{name}");
        assert_eq!(back.rng, params.rng, "{name}");
    }
}

#[test]
fn parses_real_a1111_infotexts() {
    let text = "masterpiece, 1girl, (blue eyes:1.2)\nNegative prompt: (worst quality:1.4), lowres\n\
                Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, \
                Model hash: 45dee52b, Model: anything-v3, Denoising strength: 0.55, Clip skip: 2, ENSD: 31337, \
                Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, \
                Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.10.1";
    let parsed = ParsedInfotext::parse(text);
    assert_eq!(parsed.prompt, "masterpiece, 1girl, (blue eyes:1.2)");
    assert_eq!(parsed.negative_prompt, "(worst quality:1.4), lowres");
    assert_eq!(parsed.get("Lora hashes"), Some("add_detail: 7c6bad76eb54"));
    assert_eq!(parsed.get("Hires upscaler"), Some("R-ESRGAN 4x+ Anime6B"));
    let map = parsed.to_a1111_parameters();
    assert_eq!(map["Size-1"], "512");
    assert_eq!(map["Size-2"], "768");
    assert_eq!(map["Clip skip"], "2");
    assert_eq!(map["RNG"], "GPU");
    insta::assert_json_snapshot!("parsed_a1111_infotext", map);

    let params = GenerationParams::from_infotext(text);
    assert_eq!((params.width, params.height, params.clip_skip, params.ensd), (512, 768, 2, Some(31337)));
    assert_eq!(params.cfg_scale, InfotextValue::Int(7));
    assert_eq!(params.hires.as_ref().and_then(|h| h.steps), Some(10));
    assert_eq!(params.to_infotext(), text);
}

#[test]
fn prompt_only_text_has_defaults() {
    let map = ParsedInfotext::parse("just a prompt\nwith two lines").to_a1111_parameters();
    assert_eq!(map["Prompt"], "just a prompt\nwith two lines");
    assert_eq!(map["Negative prompt"], "");
    assert_eq!(map["Schedule type"], "Automatic");
}
