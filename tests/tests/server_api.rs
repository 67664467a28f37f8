//! The `/sdapi/v1` HTTP API on the sd15-tiny fixture: same images and infotexts as the runner gives
//! directly, A1111-shaped responses and errors, progress answered while a job runs.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sdrt_api_types::{GenerationInfo, ImageResponse, Txt2ImgRequest};
use sdrt_models::SessionConfig;
use sdrt_runtime::{GenerationJob, GenerationSettings, ModelProvider, ProcessingRequest, ProcessingRunner};
use sdrt_server::ServerState;
use serde_json::{Value, json};
use tower::ServiceExt;

fn tiny_model() -> String {
    sdrt_tests::fixtures_dir().join("models/sd15-tiny").display().to_string()
}

fn provider() -> Arc<ModelProvider> {
    Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }))
}

fn settings() -> GenerationSettings {
    GenerationSettings { model: Some(tiny_model()), ..GenerationSettings::default() }
}

fn server() -> Router {
    sdrt_server::router(Arc::new(ServerState::new(provider(), settings())))
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = app.clone().oneshot(request.body(body).expect("request builds")).await.expect("router answers");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body reads");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn small_request() -> Value {
    json!({"prompt": "a red fox", "negative_prompt": "blurry", "seed": 7, "steps": 4, "width": 64, "height": 64,
           "sampler_name": "Euler", "batch_size": 2, "override_settings": {"randn_source": "CPU"},
           // Fields clients send with values that change nothing must pass.
           "restore_faces": false, "tiling": false, "styles": [], "script_name": "", "alwayson_scripts": {},
           "enable_hr": false, "refiner_checkpoint": "None"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt2img_returns_the_runners_images_with_a1111_info() {
    let app = server();
    let (status, body) = call(&app, "POST", "/sdapi/v1/txt2img", Some(small_request())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response: ImageResponse = serde_json::from_value(body).expect("A1111 response shape");
    let info: GenerationInfo = serde_json::from_str(&response.info).expect("info is a JSON string");
    assert_eq!(info.all_seeds, vec![7, 8]);
    assert_eq!(info.sampler_name, "Euler");
    assert_eq!((info.clip_skip, info.version.as_str()), (1, "sdrt-0.1.0"));
    assert_eq!(response.parameters["steps"], 4);
    assert_eq!(response.parameters["cfg_scale"], 7.0, "defaults are filled in");

    let request = Txt2ImgRequest::from_json(&small_request().to_string()).expect("parses");
    let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings(), provider());
    let (direct, _) = ProcessingRunner::new().run(job).expect("direct run");
    assert_eq!(response.images.len(), 2);
    for ((encoded, generated), infotext) in response.images.iter().zip(&direct.images).zip(&info.infotexts) {
        let png = BASE64.decode(encoded).expect("base64");
        let decoded = sdrt_io::decode_png(&png).expect("a PNG");
        assert_eq!(decoded.pixels, generated.image.pixels, "same pixels as the runner");
        assert_eq!(infotext, &generated.infotext);
        let stored = sdrt_io::read_image_info(&png).expect("metadata").infotext;
        assert_eq!(stored.as_deref(), Some(generated.infotext.as_str()), "infotext in the PNG");
    }

    let (status, png_info) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"image": response.images[0]}))).await;
    assert_eq!(status, StatusCode::OK, "{png_info}");
    assert_eq!(png_info["info"], info.infotexts[0]);
    assert_eq!(png_info["parameters"]["Prompt"], "a red fox");
    assert_eq!(png_info["parameters"]["Negative prompt"], "blurry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_info_of_a_plain_png_is_empty_and_bad_bodies_are_422() {
    let app = server();
    let png = sdrt_io::encode_png_rgb8(&[0; 3], 1, 1, &[]).expect("encodes");
    let (status, answer) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"image": BASE64.encode(png)}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer["info"].as_str(), answer["parameters"].as_object().map(|p| p.len())), (Some(""), Some(0)));
    let (status, answer) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"img": "x"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["detail"].as_str().expect("detail").starts_with("image"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_422_naming_the_field() {
    let app = server();
    for (body, field) in [
        (json!({"width": 65}), "width"),
        (json!({"steps": "many"}), "steps"),
        (json!({"sampler_name": "Euler b"}), "sampler_name"),
    ] {
        let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
        let detail = answer["detail"].as_str().expect("detail");
        assert!(detail.contains(field), "{body}: {detail}");
        assert_eq!(answer["error"], "ValidationError");
    }
    let img2img = |extra: Value| {
        let mut body = json!({"init_images": ["not base64!"], "width": 64, "height": 64, "steps": 2});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        body
    };
    let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(img2img(json!({})))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["detail"].as_str().expect("detail").starts_with("init_images"), "{answer}");
    let valid = BASE64.encode(sdrt_io::encode_png_rgb8(&[0; 64 * 64 * 3], 64, 64, &[]).expect("encodes"));
    let masked = img2img(json!({"mask": "not an image", "init_images": [valid]}));
    let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(masked)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["detail"].as_str().expect("detail").starts_with("mask"), "{answer}");
    for (extra, field) in [
        (json!({"inpainting_fill": 7}), "inpainting_fill"),
        (json!({"mask_blur": -1}), "mask_blur"),
        (json!({"latent_mask": valid}), "latent_mask"),
    ] {
        let mut body = img2img(json!({"mask": valid, "init_images": [valid]}));
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert!(answer["detail"].as_str().expect("detail").contains(field), "{field}: {answer}");
    }
    for (body, field) in [
        (json!({"width": 64, "height": 64, "enable_hr": true, "hr_upscaler": "Lanczoz"}), "hr_upscaler"),
        (json!({"width": 64, "height": 64, "enable_hr": true, "hr_scale": 200}), "hr_scale"),
        (json!({"width": 64, "height": 64, "enable_hr": true, "hr_scale": 0}), "hr_scale"),
        (json!({"width": 64, "height": 64, "sampler_name": "UniPC", "steps": 2}), "steps"),
        (json!({"width": 64, "height": 64, "steps": 2, "prompt": "[a:b:1e400]"}), "prompt"),
        (
            json!({"width": 64, "height": 64, "enable_hr": true, "hr_second_pass_steps": 1, "sampler_name": "DDIM"}),
            "hr_second_pass_steps",
        ),
    ] {
        let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer["detail"].as_str().expect("detail").contains(field), "{body}: {answer}");
    }
    for (body, field) in [
        (json!({"width": 64, "height": 64, "restore_faces": true}), "restore_faces"),
        (json!({"width": 64, "height": 64, "alwayson_scripts": {"controlnet": {}}}), "alwayson_scripts"),
    ] {
        let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        let detail = answer["detail"].as_str().expect("detail");
        assert!(detail.contains(&format!("{field}: ")) && detail.contains("not implemented"), "{detail}");
    }
    let unknown = json!({"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "nope"}});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(unknown)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["detail"].as_str().expect("detail").contains("nope"), "{answer}");
}

/// A PNG whose zTXt chunk inflates to `text_len` bytes (far fewer on the wire).
fn png_with_compressed_text(text_len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        encoder.add_ztxt_chunk("parameters".to_owned(), "a".repeat(text_len)).expect("text chunk");
        encoder.write_header().expect("header").write_image_data(&[0; 8 * 8 * 3]).expect("pixels");
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_refuse_with_the_flag_named() {
    let mut limits = sdrt_server::ServerLimits::default();
    limits.request.max_steps = 5;
    limits.request.max_pixels = 128 * 128;
    limits.request.max_batch_pixels = 2 * 128 * 128;
    limits.request.max_images = 4;
    limits.request.max_prompt_chars = 40;
    limits.request.max_prompt_nesting = 3;
    limits.decode.max_side = 32;
    limits.decode.max_text_bytes = 1000;
    limits.max_body_bytes = 1 << 20;
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), settings()).with_limits(limits)));
    for (body, field, flag) in [
        (json!({"steps": 6}), "steps", "--max-steps"),
        (json!({"width": 256, "height": 128}), "width", "--max-pixels"),
        (json!({"width": 128, "height": 128, "batch_size": 3}), "batch_size", "--max-batch-pixels"),
        (json!({"width": 64, "height": 64, "batch_size": 2, "n_iter": 3}), "n_iter", "--max-images"),
        (json!({"prompt": "a".repeat(41)}), "prompt", "--max-prompt-chars"),
        (json!({"negative_prompt": "((((a))))"}), "negative_prompt", "--max-prompt-nesting"),
        (json!({"width": 64, "height": 64, "enable_hr": true, "hr_scale": 4}), "hr_scale", "--max-pixels"),
        (
            json!({"width": 64, "height": 64, "enable_hr": true, "hr_second_pass_steps": 9}),
            "hr_second_pass_steps",
            "--max-steps",
        ),
    ] {
        let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        let detail = answer["detail"].as_str().expect("detail");
        assert!(detail.contains(&format!("{field}: ")) && detail.contains(flag), "{body}: {detail}");
    }
    // Escaped brackets are text, not nesting; within every limit the job runs.
    let fine = json!({"prompt": "\\(\\(\\(\\(x", "steps": 2, "width": 64, "height": 64, "n_iter": 2, "batch_size": 2});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(fine)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let init = BASE64.encode(sdrt_io::encode_png_rgb8(&[0; 64 * 64 * 3], 64, 64, &[]).expect("encodes"));
    let body = json!({"init_images": [init], "width": 64, "height": 64, "steps": 2});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let detail = answer["detail"].as_str().expect("detail");
    assert!(detail.starts_with("init_images") && detail.contains("--max-decoded-side"), "{detail}");

    // A zTXt chunk inflating past the text limit is refused without inflating it; a small one is read.
    let bomb = png_with_compressed_text(1 << 24);
    let (status, answer) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"image": BASE64.encode(&bomb)}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["detail"].as_str().expect("detail").contains("--max-text-chunk-bytes"), "{answer}");
    let small = BASE64.encode(png_with_compressed_text(900));
    let (status, answer) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"image": small}))).await;
    assert_eq!((status, answer["info"].as_str().map(str::len)), (StatusCode::OK, Some(900)), "{answer}");

    let big = "x".repeat(1 << 20);
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(json!({"prompt": big}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_takes_base64_init_images() {
    let app = server();
    let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let png = sdrt_io::encode_png_rgb8(&pixels, 64, 64, &[]).expect("encodes");
    let body = json!({"init_images": [format!("data:image/png;base64,{}", BASE64.encode(png))], "prompt": "oil",
                      "width": 64, "height": 64, "steps": 4, "denoising_strength": 0.5, "seed": 3,
                      "sampler_name": "k_euler_a"});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["parameters"]["init_images"], Value::Null, "init images are echoed only when asked");
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert_eq!(info.denoising_strength, Some(0.5));
    assert_eq!(info.sampler_name, "Euler a", "the canonical name of k_euler_a");
    assert!(info.infotexts[0].contains("Denoising strength: 0.5"), "{}", info.infotexts[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_and_hires_fix_through_the_api() {
    let app = server();
    let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let init = BASE64.encode(sdrt_io::encode_png_rgb8(&pixels, 64, 64, &[]).expect("encodes"));
    // A smaller mask than the image is resized, as A1111 does; webuiapi always sends image_cfg_scale.
    let mask_pixels: Vec<u8> = (0..32 * 32).flat_map(|i| if i % 32 < 16 { [255; 3] } else { [0; 3] }).collect();
    let mask = BASE64.encode(sdrt_io::encode_png_rgb8(&mask_pixels, 32, 32, &[]).expect("encodes"));
    let body = json!({"init_images": [init], "mask": mask, "prompt": "a red ball", "width": 64, "height": 64,
                      "steps": 3, "seed": 5, "inpainting_fill": 1, "inpaint_full_res": false, "image_cfg_scale": 1.5});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/img2img", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert!(info.infotexts[0].contains("Mask blur: 4"), "{}", info.infotexts[0]);
    let png = BASE64.decode(answer["images"][0].as_str().expect("image")).expect("base64");
    let image = sdrt_io::decode_png(&png).expect("png");
    let original = &pixels[(63 * 64 + 63) * 3..(63 * 64 + 63) * 3 + 3];
    assert_eq!(&image.pixels[(63 * 64 + 63) * 3..(63 * 64 + 63) * 3 + 3], original, "unmasked pixels are kept");

    let body = json!({"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 9, "enable_hr": true,
                      "hr_scale": 2, "hr_upscaler": "Latent (nearest-exact)", "denoising_strength": 0.5});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let png = BASE64.decode(answer["images"][0].as_str().expect("image")).expect("base64");
    let image = sdrt_io::decode_png(&png).expect("png");
    assert_eq!((image.width, image.height), (128, 128));
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert!(info.infotexts[0].contains("Hires upscaler: Latent (nearest-exact)"), "{}", info.infotexts[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_answers_while_a_job_runs_and_interrupt_stops_it() {
    let app = server();
    let (status, idle) = call(&app, "GET", "/sdapi/v1/progress", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((idle["progress"].as_f64(), idle["state"]["sampling_steps"].as_i64()), (Some(0.0), Some(0)));

    let long = json!({"prompt": "x", "steps": 400, "width": 64, "height": 64, "sampler_name": "Euler"});
    let job = tokio::spawn({
        let app = app.clone();
        async move { call(&app, "POST", "/sdapi/v1/txt2img", Some(long)).await }
    });
    let mut seen = None;
    while !job.is_finished() {
        let (_, progress) = call(&app, "GET", "/sdapi/v1/progress", None).await;
        if progress["state"]["sampling_step"].as_i64().unwrap_or(0) > 0 {
            seen = Some(progress);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let seen = seen.expect("a step was reported before the job finished");
    assert_eq!(seen["state"]["sampling_steps"], 400);
    assert!(seen["progress"].as_f64().expect("progress") > 0.0);
    // A1111's live preview ("Approx cheap", latent-sized) every show_progress_every_n_steps (10) steps.
    let mut preview = None;
    while preview.is_none() && !job.is_finished() {
        let (_, progress) = call(&app, "GET", "/sdapi/v1/progress", None).await;
        preview = progress["current_image"].as_str().map(str::to_owned);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let png = BASE64.decode(preview.expect("a preview before the job finished")).expect("base64");
    let decoded = sdrt_io::decode_png(&png).expect("a PNG");
    assert_eq!((decoded.width, decoded.height), (8, 8), "latent-sized, as A1111's cheap approximation");
    let (_, skipped) = call(&app, "GET", "/sdapi/v1/progress?skip_current_image=true", None).await;
    assert!(skipped["current_image"].is_null(), "skip_current_image leaves it out");
    let (status, _) = call(&app, "POST", "/sdapi/v1/interrupt", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = job.await.expect("job task");
    assert_eq!(status, StatusCode::OK, "an interrupted job still returns what it decoded: {answer}");
    assert_eq!(answer["images"].as_array().map(Vec::len), Some(1));
    let (_, after) = call(&app, "GET", "/sdapi/v1/progress", None).await;
    assert_eq!(after["progress"].as_f64(), Some(0.0), "idle again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_tables_and_options() {
    let app = server();
    let (_, samplers) = call(&app, "GET", "/sdapi/v1/samplers", None).await;
    let names: Vec<&str> = samplers.as_array().expect("list").iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"DPM++ 2M") && names.contains(&"Euler a"), "{names:?}");
    let (_, schedulers) = call(&app, "GET", "/sdapi/v1/schedulers", None).await;
    assert_eq!(schedulers[0]["label"], "Automatic");
    let (_, options) = call(&app, "GET", "/sdapi/v1/options", None).await;
    assert_eq!(options["randn_source"], "GPU");
    assert_eq!(options["CLIP_stop_at_last_layers"], 1);
    assert_eq!(options["sd_model_checkpoint"], tiny_model());
    let (_, upscalers) = call(&app, "GET", "/sdapi/v1/upscalers", None).await;
    assert_eq!(
        upscalers,
        json!([
            {"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 4.0},
            {"name": "Lanczos", "model_name": null, "model_path": null, "model_url": null, "scale": 4.0},
            {"name": "Nearest", "model_name": null, "model_path": null, "model_url": null, "scale": 4.0},
        ])
    );
    for route in ["sd-vae", "face-restorers", "realesrgan-models", "hypernetworks"] {
        let (status, list) = call(&app, "GET", &format!("/sdapi/v1/{route}"), None).await;
        assert_eq!((status, list), (StatusCode::OK, json!([])), "{route}");
    }
    let (_, scripts) = call(&app, "GET", "/sdapi/v1/scripts", None).await;
    assert_eq!(scripts, json!({"txt2img": [], "img2img": []}));
    let (_, memory) = call(&app, "GET", "/sdapi/v1/memory", None).await;
    assert!(memory["ram"]["total"].as_f64().expect("total") > 0.0, "{memory}");
    let (status, flags) = call(&app, "GET", "/sdapi/v1/cmd-flags", None).await;
    assert_eq!((status, flags["api"].as_bool()), (StatusCode::OK, Some(true)));
    let (status, _) = call(&app, "POST", "/sdapi/v1/refresh-checkpoints", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = call(&app, "POST", "/sdapi/v1/interrogate", Some(json!({"image": ""}))).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(answer["detail"].as_str().expect("detail").contains("interrogat"), "{answer}");
    let big = "x".repeat(sdrt_server::ServerLimits::default().max_body_bytes + 1);
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(json!({"prompt": big}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer["detail"].as_str().expect("JSON detail").contains("--max-body-mb"), "{answer}");
    let (status, answer) = call(&app, "GET", "/sdapi/v1/no-such-route", None).await;
    assert_eq!((status, answer), (StatusCode::NOT_FOUND, json!({"detail": "Not Found"})), "JSON 404 as A1111");
    let (_, modes) = call(&app, "GET", "/sdapi/v1/latent-upscale-modes", None).await;
    let names: Vec<&str> = modes.as_array().expect("list").iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names[0], "Latent");
    assert_eq!(names.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extras_upscale_finished_images_as_a1111() {
    let app = server();
    let pixels: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 13 % 251) as u8).collect();
    let png = BASE64.encode(sdrt_io::encode_png_rgb8(&pixels, 64, 48, &[]).expect("encodes"));
    let body = json!({"image": png, "upscaler_1": "Lanczos", "upscaling_resize": 2});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/extra-single-image", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let out = sdrt_io::decode_png(&BASE64.decode(answer["image"].as_str().expect("image")).expect("b64")).expect("png");
    let source = image::RgbImage::from_raw(64, 48, pixels.clone()).expect("image");
    let expected = sdrt_io::ImageUpscaler::Lanczos.upscale(&source, 2.0);
    assert_eq!((out.width, out.height), (128, 96));
    assert_eq!(out.pixels, expected.into_raw());
    assert!(answer["html_info"].as_str().expect("info").contains("Postprocess upscale by: 2.0"), "{answer}");

    let body = json!({"imageList": [{"data": png, "name": "a.png"}, {"data": png, "name": "b.png"}],
                      "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60, "upscaler_1": "Nearest"});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/extra-batch-images", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let images = answer["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    let out = sdrt_io::decode_png(&BASE64.decode(images[1].as_str().expect("b64")).expect("b64")).expect("png");
    assert_eq!((out.width, out.height), (100, 60), "cropped to the requested size");

    for (extra, field) in [
        (json!({"gfpgan_visibility": 0.5}), "gfpgan_visibility"),
        (json!({"upscaler_1": "Latent"}), "upscaler_1"),
        (json!({"upscaler_1": "4x-Nothing"}), "upscaler_1"),
        (json!({"upscaling_resize": 1000}), "upscaling_resize"),
    ] {
        let mut body = json!({"image": png, "upscaler_1": "Lanczos"});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        let (status, answer) = call(&app, "POST", "/sdapi/v1/extra-single-image", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {answer}");
        assert!(answer["detail"].as_str().expect("detail").contains(field), "{field}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_models_carry_hashes_and_options_show_what_sdrt_honours() {
    let mut provider = ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() });
    provider.register("sd15-tiny", tiny_model());
    let app = sdrt_server::router(Arc::new(ServerState::new(Arc::new(provider), settings())));
    let (status, models) = call(&app, "GET", "/sdapi/v1/sd-models", None).await;
    assert_eq!(status, StatusCode::OK, "{models}");
    let expected = sdrt_io::model_hash(std::path::Path::new(&tiny_model())).expect("hash");
    assert_eq!(models[0]["hash"], expected.as_str());
    assert_eq!(models[0]["title"], format!("sd15-tiny [{expected}]"));
    assert_eq!(models[0]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(models[0]["filename"], "sd15-tiny", "no server path in a response");
    let (_, options) = call(&app, "GET", "/sdapi/v1/options", None).await;
    assert_eq!((options["emphasis"].as_str(), options["ESRGAN_tile"].as_u64()), (Some("Original"), Some(192)));
    // Clients select models by the title /sd-models gives, or by hash; the server keeps the registered name.
    for selector in [format!("sd15-tiny [{expected}]"), expected.clone()] {
        let (status, answer) =
            call(&app, "POST", "/sdapi/v1/options", Some(json!({"sd_model_checkpoint": selector}))).await;
        assert_eq!(status, StatusCode::OK, "{selector}: {answer}");
        let (_, options) = call(&app, "GET", "/sdapi/v1/options", None).await;
        assert_eq!(options["sd_model_checkpoint"], "sd15-tiny");
        let server_folder = sdrt_tests::fixtures_dir().display().to_string();
        assert!(!options.to_string().contains(&server_folder), "{options}");
    }
    assert_eq!(options["inpainting_mask_weight"].as_f64(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_options_changes_later_jobs_and_rejects_bad_values() {
    let app = server();
    let (status, answer) =
        call(&app, "POST", "/sdapi/v1/options", Some(json!({"randn_source": "CPU", "show_progressbar": true}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["ignored"], json!(["show_progressbar"]), "unimplemented settings are reported");
    let (_, options) = call(&app, "GET", "/sdapi/v1/options", None).await;
    assert_eq!(options["randn_source"], "CPU");

    let mut request = small_request();
    request["override_settings"] = json!({"CLIP_stop_at_last_layers": 2});
    let (_, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(request)).await;
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert!(info.infotexts[0].contains("RNG: CPU"), "the new default applies: {}", info.infotexts[0]);
    assert_eq!(info.clip_skip, 2, "per-request overrides show in info");
    assert!(info.infotexts[0].contains("Clip skip: 2"), "{}", info.infotexts[0]);

    for (body, status, key) in [
        (json!({"randn_source": "quantum"}), StatusCode::UNPROCESSABLE_ENTITY, "randn_source"),
        (json!({"CLIP_stop_at_last_layers": 0}), StatusCode::UNPROCESSABLE_ENTITY, "CLIP_stop_at_last_layers"),
        (json!({"sd_model_checkpoint": "missing-model"}), StatusCode::NOT_FOUND, "missing-model"),
        (json!({"sd_model_checkpoint": "/etc"}), StatusCode::NOT_FOUND, "/etc"),
        (json!({"sd_model_checkpoint": tiny_model()}), StatusCode::NOT_FOUND, "sd15-tiny"),
        (json!([1, 2]), StatusCode::UNPROCESSABLE_ENTITY, "options"),
    ] {
        let (got, answer) = call(&app, "POST", "/sdapi/v1/options", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["detail"].as_str().expect("detail").contains(key), "{body}: {answer}");
    }
    let (_, options) = call(&app, "GET", "/sdapi/v1/options", None).await;
    assert_eq!(options["randn_source"], "CPU", "rejected bodies change nothing");
}

async fn wait_for_state(app: &Router, id: &str, wanted: &[&str]) -> Value {
    for _ in 0..20_000 {
        let (status, body) = call(app, "GET", &format!("/sdrt/v1/jobs/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if wanted.contains(&body["state"].as_str().unwrap_or("")) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("job {id} never reached {wanted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_accepted_at_once_and_give_the_a1111_result() {
    let app = server();
    let (status, accepted) =
        call(&app, "POST", "/sdrt/v1/jobs", Some(json!({"kind": "txt2img", "request": small_request()}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    assert_eq!(accepted["result_url"], format!("/sdrt/v1/jobs/{id}/result"));
    let done = wait_for_state(&app, &id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"], 1.0);
    let (status, result) = call(&app, "GET", &format!("/sdrt/v1/jobs/{id}/result"), None).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let (_, blocking) = call(&app, "POST", "/sdapi/v1/txt2img", Some(small_request())).await;
    assert_eq!(result["images"], blocking["images"], "the job API and A1111's endpoint give the same images");

    let (status, missing) = call(&app, "GET", "/sdrt/v1/jobs/999999", None).await;
    assert_eq!((status, missing["error"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")));
    let (status, bad) = call(&app, "POST", "/sdrt/v1/jobs", Some(json!({"kind": "paint", "request": {}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad["detail"].as_str().unwrap_or("").contains("kind"), "{bad}");
    let (status, bad) =
        call(&app, "POST", "/sdrt/v1/jobs", Some(json!({"kind": "txt2img", "request": {"steps": -3}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a bad request is refused before it is queued: {bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cancel_while_queued_or_running_and_the_queue_has_a_capacity() {
    let state = Arc::new(ServerState::new(provider(), settings()).with_queue_limits(1, None));
    let app = sdrt_server::router(state);
    let long =
        json!({"kind": "txt2img", "request": {"prompt": "x", "steps": 1000, "n_iter": 8, "width": 64, "height": 64}});
    let (_, running) = call(&app, "POST", "/sdrt/v1/jobs", Some(long.clone())).await;
    let running = running["id"].as_str().expect("id").to_owned();
    wait_for_state(&app, &running, &["running"]).await;
    let (status, queued) = call(&app, "POST", "/sdrt/v1/jobs", Some(long.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(queued["queue_position"], 1, "one job runs ahead of it");
    let queued = queued["id"].as_str().expect("id").to_owned();

    let request = Request::builder().method("POST").uri("/sdrt/v1/jobs").header("content-type", "application/json");
    let response = app.clone().oneshot(request.body(Body::from(long.to_string())).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "beyond capacity");
    assert!(response.headers().contains_key("retry-after"));

    let (status, cancelled) = call(&app, "DELETE", &format!("/sdrt/v1/jobs/{queued}"), None).await;
    assert_eq!((status, cancelled["state"].as_str()), (StatusCode::OK, Some("cancelled")));
    let (status, _) = call(&app, "GET", &format!("/sdrt/v1/jobs/{queued}/result"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a cancelled job has no result");

    let (status, _) = call(&app, "GET", &format!("/sdrt/v1/jobs/{running}/result"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "not finished yet");
    let (status, _) = call(&app, "DELETE", &format!("/sdrt/v1/jobs/{running}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let stopped = wait_for_state(&app, &running, &["cancelled", "failed", "succeeded"]).await;
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert!(stopped["job_no"].as_i64().unwrap_or(0) < 7, "it stopped early: {stopped}");

    // The queue and the model stay usable.
    let (status, _) = call(&app, "POST", "/sdapi/v1/txt2img", Some(small_request())).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_the_time_limit_is_stopped_with_a_clear_state() {
    let state = Arc::new(
        ServerState::new(provider(), settings()).with_queue_limits(4, Some(std::time::Duration::from_millis(300))),
    );
    let app = sdrt_server::router(state);
    let long = json!({"prompt": "x", "steps": 1000, "n_iter": 8, "width": 64, "height": 64});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(long)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    assert!(answer["detail"].as_str().unwrap_or("").contains("--job-timeout"), "{answer}");
    let (status, _) = call(&app, "POST", "/sdapi/v1/txt2img", Some(small_request())).await;
    assert_eq!(status, StatusCode::OK, "the next job runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_status_until_the_job_finishes() {
    let app = server();
    let (_, accepted) =
        call(&app, "POST", "/sdrt/v1/jobs", Some(json!({"kind": "txt2img", "request": small_request()}))).await;
    let id = accepted["id"].as_str().expect("id");
    let request = Request::builder().uri(format!("/sdrt/v1/jobs/{id}/events")).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("the stream ends with the job");
    let text = String::from_utf8_lossy(&bytes);
    let states: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| {
            serde_json::from_str::<Value>(data).expect("JSON events")["state"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(states.last().map(String::as_str), Some("succeeded"), "{text}");
}

async fn raw(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.expect("router answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body reads");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_cors_cross_site_posts_and_host_names() {
    let policy = sdrt_server::AccessPolicy {
        credentials: sdrt_server::AccessPolicy::parse_credentials("alice:s3cret").unwrap(),
        cors_allow_origins: vec!["https://app.example".to_owned()],
        loopback_only: true,
    };
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), settings()).with_access(policy)));
    let get = |auth: Option<&str>, host: &str| {
        let mut request = Request::builder().uri("/sdapi/v1/samplers").header("host", host);
        if let Some(auth) = auth {
            request = request.header("authorization", format!("Basic {}", BASE64.encode(auth)));
        }
        request.body(Body::empty()).unwrap()
    };
    let (status, headers, body) = raw(&app, get(None, "127.0.0.1:7860")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Basic");
    assert_eq!(body["detail"], "Incorrect username or password");
    assert_eq!(raw(&app, get(Some("alice:wrong"), "127.0.0.1:7860")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(raw(&app, get(Some("alice:s3cret"), "localhost:7860")).await.0, StatusCode::OK);
    let (status, _, body) = raw(&app, get(Some("alice:s3cret"), "attacker.example:7860")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "DNS rebinding: {body}");

    let post = |origin: &str, content_type: &str| {
        Request::builder()
            .method("POST")
            .uri("/sdapi/v1/options")
            .header("host", "127.0.0.1:7860")
            .header("origin", origin)
            .header("content-type", content_type)
            .header("authorization", format!("Basic {}", BASE64.encode("alice:s3cret")))
            .body(Body::from(r#"{"CLIP_stop_at_last_layers": 2}"#))
            .unwrap()
    };
    let (status, _, body) = raw(&app, post("https://evil.example", "text/plain")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a cross-site simple POST changes nothing: {body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("--cors-allow-origins"), "{body}");
    let (status, headers, _) = raw(&app, post("https://app.example", "application/json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], "https://app.example");
    let (status, _, _) = raw(&app, post("http://127.0.0.1:7860", "application/json")).await;
    assert_eq!(status, StatusCode::OK, "the server's own origin is not cross-site");
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/sdapi/v1/txt2img")
        .header("host", "127.0.0.1:7860")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = raw(&app, preflight).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
}

/// A client that goes away mid-job does not take the job or the queue with it: the job finishes (as in A1111)
/// and the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnecting_mid_job_leaves_the_queue_usable() {
    let app = server();
    let long = json!({"prompt": "x", "steps": 300, "width": 64, "height": 64, "sampler_name": "Euler"});
    let client = tokio::spawn({
        let app = app.clone();
        async move { call(&app, "POST", "/sdapi/v1/txt2img", Some(long)).await }
    });
    for _ in 0..20_000 {
        let (_, progress) = call(&app, "GET", "/sdapi/v1/progress", None).await;
        if progress["state"]["sampling_step"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    client.abort();
    let (status, id) =
        call(&app, "POST", "/sdrt/v1/jobs", Some(json!({"kind": "txt2img", "request": small_request()}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = id["id"].as_str().expect("id").to_owned();
    let done = wait_for_state(&app, &id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "the job after the abandoned one runs: {done}");
    let (status, previous) =
        call(&app, "GET", &format!("/sdrt/v1/jobs/{}", id.parse::<u64>().unwrap() - 1), None).await;
    assert_eq!((status, previous["state"].as_str()), (StatusCode::OK, Some("succeeded")), "the abandoned job finished");
}

/// Every `$ref` in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// The property names a schema allows, through `$ref`, `allOf` and `anyOf`.
fn property_names(schema: &Value, components: &Value) -> Vec<String> {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target.trim_start_matches("#/components/schemas/");
        return property_names(&components[name], components);
    }
    let mut names: Vec<String> =
        schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    for key in ["allOf", "anyOf", "oneOf"] {
        for part in schema[key].as_array().into_iter().flatten() {
            names.extend(property_names(part, components));
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route_with_the_types_schemas() {
    let app = server();
    let (status, document) = call(&app, "GET", "/openapi.json", None).await;
    assert_eq!((status, document["openapi"].as_str()), (StatusCode::OK, Some("3.0.3")));
    let components = &document["components"]["schemas"];
    let mut targets = Vec::new();
    references(&document, &mut targets);
    assert!(targets.len() > 30, "{} references", targets.len());
    for target in &targets {
        let name = target.strip_prefix("#/components/schemas/").expect("a component reference");
        assert!(components.get(name).is_some(), "{target} has no schema");
    }
    // The request schemas name every field the request types read and write (defaults included).
    for (operation, fields) in [
        ("/sdapi/v1/txt2img", serde_json::to_value(Txt2ImgRequest::default()).expect("serializes")),
        ("/sdapi/v1/img2img", serde_json::to_value(sdrt_api_types::Img2ImgRequest::default()).expect("serializes")),
    ] {
        let schema = &document["paths"][operation]["post"]["requestBody"]["content"]["application/json"]["schema"];
        let names = property_names(schema, components);
        for field in fields.as_object().expect("object").keys() {
            assert!(names.contains(field), "{operation}: {field} missing from {names:?}");
        }
    }
    // Every documented method and path is routed (the router's own 404 is `{"detail": "Not Found"}`, a
    // missing method 405); bodies are left broken so that nothing runs.
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            let uri = path.replace("{id}", "987654");
            let body = (method == "post").then(|| json!("not an object"));
            let (status, answer) = call(&app, &method.to_uppercase(), &uri, body).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(answer, json!({"detail": "Not Found"}), "{method} {path} is documented but not routed");
            operations += 1;
        }
    }
    assert_eq!(operations, 37);
    // Without --queue there are no workers to list.
    let (status, workers) = call(&app, "GET", "/sdrt/v1/workers", None).await;
    assert_eq!((status, workers), (StatusCode::OK, json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn styles_merge_into_the_prompts_as_a1111_merges_them() {
    let styles = sdrt_io::StyleDatabase::parse(
        "name,prompt,negative_prompt\nCinematic,\"cinematic still of {prompt}, film grain\",cartoon\nSharp,sharp focus,\n",
    );
    let settings = GenerationSettings { styles: Arc::new(styles), ..settings() };
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), settings)));
    let (status, listed) = call(&app, "GET", "/sdapi/v1/prompt-styles", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed[0],
        json!({"name": "Cinematic", "prompt": "cinematic still of {prompt}, film grain",
                                 "negative_prompt": "cartoon"})
    );
    let request = |prompt: &str, negative: &str, styles: Value| {
        json!({"prompt": prompt, "negative_prompt": negative, "styles": styles, "seed": 3, "steps": 2,
               "width": 64, "height": 64})
    };
    let styled = request(" a fox ", "blurry", json!(["Cinematic", "Sharp", "Unknown"]));
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(styled)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert!(
        info.infotexts[0]
            .starts_with("cinematic still of  a fox , film grain, sharp focus\nNegative prompt: blurry, cartoon\n"),
        "{}",
        info.infotexts[0]
    );
    assert_eq!(answer["parameters"]["prompt"], " a fox ", "the request is echoed as sent");
    // Styling is the same as sending the merged prompts.
    let merged = request("cinematic still of  a fox , film grain, sharp focus", "blurry, cartoon", json!([]));
    let (_, plain) = call(&app, "POST", "/sdapi/v1/txt2img", Some(merged)).await;
    assert_eq!(plain["images"], answer["images"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loras_are_listed_and_merged_when_a_prompt_names_them() {
    let loras = sdrt_runtime::LoraLibrary::new(vec![sdrt_tests::fixtures_dir().join("loras")]).expect("scan");
    let checkpoint = sdrt_tests::fixture("checkpoints/sd15-tiny.safetensors").display().to_string();
    let embeddings = sdrt_runtime::EmbeddingLibrary::new(vec![sdrt_tests::fixtures_dir().join("embeddings")]);
    let settings = GenerationSettings {
        model: Some(checkpoint),
        loras: Arc::new(loras),
        embeddings: Arc::new(embeddings.expect("embeddings")),
        ..settings()
    };
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), settings)));
    let (status, listed) = call(&app, "GET", "/sdapi/v1/embeddings", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["loaded"]["tiny-style"],
        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                                                      "shape": 8, "vectors": 3})
    );
    assert_eq!(listed["loaded"]["tiny-xl"]["shape"], 8 + 12);
    let (status, _) = call(&app, "POST", "/sdapi/v1/refresh-embeddings", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, listed) = call(&app, "GET", "/sdapi/v1/loras", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed[1],
        json!({"name": "sd15-tiny-locon", "alias": "sd15-tiny-locon",
                                 "path": "sd15-tiny-locon.safetensors", "metadata": {}})
    );
    let (status, _) = call(&app, "POST", "/sdapi/v1/refresh-loras", None).await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"prompt": "a fox <lora:sd15-tiny-locon:0.8>", "seed": 1, "steps": 2, "width": 64, "height": 64});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let info: GenerationInfo = serde_json::from_str(answer["info"].as_str().expect("info")).expect("info JSON");
    assert!(info.infotexts[0].contains("Lora hashes: \"sd15-tiny-locon: "), "{}", info.infotexts[0]);

    // On an ONNX export a LoRA is refused, and the error names no server folder.
    let loras = sdrt_runtime::LoraLibrary::new(vec![sdrt_tests::fixtures_dir().join("loras")]).expect("scan");
    let export = GenerationSettings { loras: Arc::new(loras), ..self::settings() };
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), export)));
    let body = json!({"prompt": "a fox <lora:sd15-tiny-locon:0.8>", "steps": 2, "width": 64, "height": 64});
    let (status, answer) = call(&app, "POST", "/sdapi/v1/txt2img", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let detail = answer["detail"].as_str().expect("detail");
    assert!(detail.contains("single-file checkpoints"), "{detail}");
    assert!(!detail.contains(&sdrt_tests::fixtures_dir().display().to_string()), "{detail}");
}

/// A1111's `Lora hashes` paste-back: png-info renames a pasted `<lora:…>` tag to the local file with that hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_info_renames_pasted_loras_by_their_hashes() {
    let loras = Arc::new(sdrt_runtime::LoraLibrary::new(vec![sdrt_tests::fixtures_dir().join("loras")]).unwrap());
    let app = sdrt_server::router(Arc::new(ServerState::new(provider(), GenerationSettings { loras, ..settings() })));
    let hashes = sdrt_tests::fixture_json("loras/hashes.json");
    let hash = &hashes["sd15-tiny-locon.safetensors"].as_str().unwrap()[..12];
    let infotext = format!(
        "a cat <lora:renamed-by-them:0.5> <lora:unknown:1>\nSteps: 4, Seed: 1, Size: 64x64, \
         Lora hashes: \"renamed-by-them: {hash}, unknown: 000000000000\", Version: v1.10.1"
    );
    let png = sdrt_io::encode_png_with_infotext(&[0u8; 3 * 8 * 8], 8, 8, &infotext).unwrap();
    let (status, answer) = call(&app, "POST", "/sdapi/v1/png-info", Some(json!({"image": BASE64.encode(png)}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["parameters"]["Prompt"], "a cat <lora:sd15-tiny-locon:0.5> <lora:unknown:1>");
    assert_eq!(answer["info"], infotext.as_str(), "the infotext itself is returned as stored");
}
