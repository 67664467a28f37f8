//! A1111 API wire types: default requests and responses (insta JSON snapshots) and parsing of real
//! A1111-style request bodies, as clients such as the webui's own API docs and `webuiapi` send them.

use sdrt_api_types::{
    GenerationInfo, ImageResponse, Img2ImgRequest, Options, ProgressResponse, Txt2ImgRequest, sampler_items,
    scheduler_items,
};

#[test]
fn default_requests_match_a1111() {
    insta::assert_json_snapshot!("txt2img_default", Txt2ImgRequest::default());
    insta::assert_json_snapshot!("img2img_default", Img2ImgRequest::default());
    insta::assert_json_snapshot!("options_default", Options::default());
}

#[test]
fn default_responses_serialize() {
    let info = GenerationInfo {
        prompt: "a cat".into(),
        all_prompts: vec!["a cat".into(); 2],
        all_seeds: vec![1, 2],
        all_subseeds: vec![7, 8],
        infotexts: vec!["a cat\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 512x512".into()],
        ..GenerationInfo::default()
    };
    let response = ImageResponse {
        images: vec!["iVBORw0KGgo=".into()],
        parameters: serde_json::to_value(Txt2ImgRequest::default()).unwrap(),
        info: info.to_info_string(),
    };
    let value = serde_json::to_value(&response).unwrap();
    assert!(value["info"].is_string(), "info is a JSON string, as A1111 sends it");
    let decoded: GenerationInfo = serde_json::from_str(value["info"].as_str().unwrap()).unwrap();
    assert_eq!(decoded.all_seeds, vec![1, 2]);
    insta::assert_json_snapshot!("generation_info", info);
    insta::assert_json_snapshot!("progress_default", ProgressResponse::default());
    insta::assert_json_snapshot!("samplers", sampler_items());
    insta::assert_json_snapshot!("schedulers", scheduler_items());
}

#[test]
fn parses_a_real_txt2img_body() {
    let body = r#"{
        "prompt": "a lighthouse on a cliff at dusk, (dramatic sky:1.2)",
        "negative_prompt": "blurry",
        "styles": [],
        "seed": 1234,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "sampler_name": "DPM++ 2M Karras",
        "batch_size": 2,
        "n_iter": 1,
        "steps": 25,
        "cfg_scale": 6.5,
        "width": 768,
        "height": 512,
        "restore_faces": false,
        "tiling": false,
        "do_not_save_samples": false,
        "do_not_save_grid": false,
        "eta": 0,
        "denoising_strength": 0.45,
        "s_min_uncond": 0,
        "s_churn": 0,
        "s_tmax": null,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337},
        "override_settings_restore_afterwards": true,
        "refiner_checkpoint": null,
        "refiner_switch_at": null,
        "disable_extra_networks": false,
        "comments": {},
        "enable_hr": true,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 10,
        "hr_resize_x": 0,
        "hr_resize_y": 0,
        "hr_checkpoint_name": null,
        "hr_sampler_name": null,
        "hr_prompt": "",
        "hr_negative_prompt": "",
        "sampler_index": "Euler",
        "script_name": null,
        "script_args": [],
        "send_images": true,
        "save_images": false,
        "alwayson_scripts": {},
        "my_extension_field": [1, 2, 3]
    }"#;
    let request = Txt2ImgRequest::from_json(body).unwrap();
    assert_eq!(request.base.seed, 1234);
    assert_eq!((request.base.width, request.base.height, request.base.batch_size), (768, 512, 2));
    assert_eq!(request.base.override_settings["CLIP_stop_at_last_layers"], 2);
    assert_eq!(request.hr_scale, 2.0);
    assert_eq!(request.denoising_strength, 0.45);
    assert_eq!(request.extra["my_extension_field"], serde_json::json!([1, 2, 3]));
    assert_eq!(request.extra["comments"], serde_json::json!({}));
    let sampling = request.validate(&sdrt_api_types::RequestLimits::default()).unwrap();
    assert_eq!(sampling.first_pass.sampler.name, "DPM++ 2M");
    assert_eq!(sampling.first_pass.scheduler.label, "Automatic");
    assert_eq!(sampling.first_pass.effective_scheduler().map(|s| s.label), Some("Karras"));
    assert_eq!(sampling.hires_pass, Some(sampling.first_pass));
    insta::assert_json_snapshot!("txt2img_parsed", request);
}

#[test]
fn parses_a_real_img2img_body() {
    let body = r#"{
        "init_images": ["data:image/png;base64,iVBORw0KGgo="],
        "prompt": "oil painting",
        "sampler_name": "Euler a",
        "scheduler": "exponential",
        "steps": 30,
        "denoising_strength": 0.6,
        "mask": "iVBORw0KGgo=",
        "mask_blur": 8,
        "inpainting_fill": 1,
        "inpaint_full_res": false,
        "inpaint_full_res_padding": 32,
        "inpainting_mask_invert": 0,
        "resize_mode": 1,
        "include_init_images": true
    }"#;
    let request = Img2ImgRequest::from_json(body).unwrap();
    assert_eq!(request.effective_mask_blur(), (8, 8));
    assert_eq!(request.base.steps, 30);
    assert!(request.include_init_images);
    let sampling = request.validate(&sdrt_api_types::RequestLimits::default()).unwrap();
    assert_eq!((sampling.first_pass.sampler.name, sampling.first_pass.scheduler.label), ("Euler a", "Exponential"));
}

#[test]
fn bad_requests_name_the_field_and_the_fix() {
    let err = Txt2ImgRequest::from_json(r#"{"width": 513, "steps": 0, "sampler_name": "Euler c"}"#)
        .unwrap()
        .validate(&sdrt_api_types::RequestLimits::default())
        .unwrap_err();
    assert_eq!(err.fields(), ["width", "steps", "sampler_name"]);
    let text = err.to_string();
    assert!(text.contains("width: 513 is not a multiple of 8"), "{text}");
    assert!(text.contains("unknown sampler \"Euler c\"; use one of: DPM++ 2M"), "{text}");
    let err = Txt2ImgRequest::from_json(r#"{"batch_size": "two"}"#).unwrap_err();
    assert_eq!(err.fields(), ["batch_size"]);
}
