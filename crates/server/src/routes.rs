//! The `/sdapi/v1` routes and the function that serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use sdrt_api_types::{
    ExtrasBatchImagesResponse, ExtrasSingleImageResponse, ImageResponse, Img2ImgRequest, LatentUpscaleModeItem,
    Options, PngInfoRequest, PngInfoResponse, ProgressResponse, SamplerItem, SchedulerItem, SdModelItem,
    Txt2ImgRequest, UpscalerItem, sampler_items, scheduler_items,
};

use crate::error::{Error, Result};
use crate::state::ServerState;
use crate::{extras, generate, images};

type Shared = State<Arc<ServerState>>;

/// Every `/sdapi/v1` endpoint over `state`.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/skip", post(skip))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/options", get(options).post(set_options))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/sdapi/v1/upscalers", get(upscalers))
        .route("/sdapi/v1/latent-upscale-modes", get(latent_upscale_modes))
        .route("/sdapi/v1/sd-vae", get(empty_list))
        .route("/sdapi/v1/face-restorers", get(empty_list))
        .route("/sdapi/v1/realesrgan-models", get(empty_list))
        .route("/sdapi/v1/hypernetworks", get(empty_list))
        .route("/sdapi/v1/scripts", get(scripts))
        .route("/sdapi/v1/memory", get(memory))
        .route("/sdapi/v1/cmd-flags", get(cmd_flags))
        .route("/sdapi/v1/refresh-checkpoints", post(refresh_checkpoints))
        .route("/sdapi/v1/interrogate", post(interrogate))
        .route("/sdapi/v1/extra-single-image", post(extra_single_image))
        .route("/sdapi/v1/extra-batch-images", post(extra_batch_images))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(state)
}

/// The largest request body accepted: room for a batch of large base64 init images (a 1024² PNG is ~4 MB).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// axum answers some rejections (a body over the limit) in plain text; clients parse every body as JSON.
async fn json_rejections(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let detail = format!("the request body is larger than {} MiB; send smaller images", MAX_BODY_BYTES >> 20);
    let body = serde_json::json!({ "error": "PayloadTooLarge", "detail": detail, "body": "", "errors": detail });
    (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response()
}

/// Serves [`router`] on `address` until the process stops.
pub async fn serve(state: Arc<ServerState>, address: SocketAddr) -> std::io::Result<()> {
    serve_on(state, tokio::net::TcpListener::bind(address).await?).await
}

/// Serves [`router`] on an already bound `listener` until the process stops.
pub async fn serve_on(state: Arc<ServerState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /sdapi/v1");
    axum::serve(listener, router(state)).await
}

// Bodies are parsed by api-types rather than axum's `Json`, so a bad field is reported with its JSON path
// and the fix, in the same words as everywhere else.
async fn txt2img(State(state): Shared, body: String) -> Result<Json<ImageResponse>> {
    let request = Txt2ImgRequest::from_json(&body)?;
    generate::txt2img(state, request).await.map(Json)
}

async fn img2img(State(state): Shared, body: String) -> Result<Json<ImageResponse>> {
    let request = Img2ImgRequest::from_json(&body)?;
    generate::img2img(state, request).await.map(Json)
}

async fn extra_single_image(State(state): Shared, body: String) -> Result<Json<ExtrasSingleImageResponse>> {
    let request = serde_json::from_str(&body).map_err(|e| bad_body("image", &e))?;
    extras::single(state, request).await.map(Json)
}

async fn extra_batch_images(State(state): Shared, body: String) -> Result<Json<ExtrasBatchImagesResponse>> {
    let request = serde_json::from_str(&body).map_err(|e| bad_body("imageList", &e))?;
    extras::batch(state, request).await.map(Json)
}

/// A 422 naming `field` with serde's description of what is wrong with the body.
fn bad_body(field: &'static str, error: &serde_json::Error) -> Error {
    Error::Field { field, message: format!("the body is not a valid request: {error}") }
}

/// `POST /sdapi/v1/options`: changes the settings later jobs start from. The answer lists the settings sdrt
/// does not implement (accepted, changing nothing), so a client can see what had no effect.
async fn set_options(State(state): Shared, body: String) -> Result<Json<serde_json::Value>> {
    let mut entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).map_err(|e| {
        Error::Field { field: "options", message: format!("the body must be a JSON object of settings ({e})") }
    })?;
    if let Some(value) = entries.get("sd_model_checkpoint").and_then(serde_json::Value::as_str) {
        // Only registered models, so an unknown one fails here, not in the next job, and no path gets in.
        let name = state.registered_model(value).map_err(Error::Runtime)?;
        entries.insert("sd_model_checkpoint".into(), name.into());
    }
    let mut settings = state.settings();
    let ignored = settings.apply_settings(&entries).map_err(|p| Error::Setting { key: p.key, message: p.problem })?;
    state.set_settings(settings);
    Ok(Json(serde_json::json!({ "ignored": ignored })))
}

async fn png_info(body: String) -> Result<Json<PngInfoResponse>> {
    let request: PngInfoRequest = serde_json::from_str(&body).map_err(|e| Error::Field {
        field: "image",
        message: format!("the body must be {{\"image\": \"<base64>\"}} ({e})"),
    })?;
    images::png_info(&request).map(Json)
}

async fn progress(State(state): Shared) -> Json<ProgressResponse> {
    Json(state.progress.snapshot())
}

async fn interrupt(State(state): Shared) -> Json<serde_json::Value> {
    if state.progress.mark_interrupted() {
        state.current_control().interrupt();
    }
    Json(serde_json::json!({}))
}

async fn skip(State(state): Shared) -> Json<serde_json::Value> {
    if state.progress.mark_skipped() {
        state.current_control().skip();
    }
    Json(serde_json::json!({}))
}

/// Lists of things sdrt has none of (separate VAEs, face restorers, Real-ESRGAN models, hypernetworks): empty,
/// as A1111 answers without them.
async fn empty_list() -> Json<Vec<serde_json::Value>> {
    Json(Vec::new())
}

/// `GET /sdapi/v1/scripts`: no scripts (webuiapi calls this in its constructor).
async fn scripts() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "txt2img": [], "img2img": [] }))
}

/// `GET /sdapi/v1/memory`: system RAM in bytes (from /proc/meminfo), and why there are no CUDA figures.
async fn memory() -> Json<serde_json::Value> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> f64 {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib * 1024.0)
    };
    let (total, free) = (field("MemTotal:"), field("MemAvailable:"));
    Json(serde_json::json!({
        "ram": { "free": free, "used": total - free, "total": total },
        "cuda": { "error": "sdrt reports no CUDA memory statistics" },
    }))
}

/// `GET /sdapi/v1/cmd-flags`: the A1111 command-line flags this server corresponds to.
async fn cmd_flags() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "api": true, "nowebui": true, "api_auth": null, "cors_allow_origins": null }))
}

/// `POST /sdapi/v1/refresh-checkpoints`: the registered models are fixed when the server starts; answers as
/// A1111 does (`null`).
async fn refresh_checkpoints() -> Json<serde_json::Value> {
    Json(serde_json::Value::Null)
}

/// `POST /sdapi/v1/interrogate`: sdrt has no interrogator (CLIP / DeepBooru) model.
async fn interrogate() -> (StatusCode, Json<serde_json::Value>) {
    let detail = "interrogate is not available: sdrt has no CLIP or DeepBooru interrogator model";
    (StatusCode::NOT_IMPLEMENTED, Json(serde_json::json!({ "error": "NotImplemented", "detail": detail })))
}

/// Unknown routes answer JSON as A1111 (FastAPI) does; clients parse the body of every answer.
async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "detail": "Not Found" })))
}

async fn upscalers(State(state): Shared) -> Json<Vec<UpscalerItem>> {
    let builtin = sdrt_runtime::image_upscaler_names().into_iter().map(|name| UpscalerItem {
        name: name.to_owned(),
        model_name: None,
        model_path: None,
        model_url: None,
        scale: 4.0,
    });
    let dir = state.settings().upscaler_dir;
    let models = dir.as_deref().map(sdrt_runtime::model_upscalers).unwrap_or_default();
    let models = models.into_iter().map(|(name, path)| UpscalerItem {
        model_name: Some(name.clone()),
        name,
        model_path: Some(path.display().to_string()),
        model_url: None,
        scale: 4.0,
    });
    Json(builtin.chain(models).collect())
}

async fn latent_upscale_modes() -> Json<Vec<LatentUpscaleModeItem>> {
    let item = |name: &str| LatentUpscaleModeItem { name: name.to_owned() };
    Json(sdrt_runtime::latent_upscale_mode_names().into_iter().map(item).collect())
}

async fn samplers() -> Json<Vec<SamplerItem>> {
    Json(sampler_items())
}

async fn schedulers() -> Json<Vec<SchedulerItem>> {
    Json(scheduler_items())
}

/// `GET /sdapi/v1/sd-models`: the registered models with A1111's `name [hash]` titles (hashes are computed once,
/// off the async threads).
async fn sd_models(State(state): Shared) -> Result<Json<Vec<SdModelItem>>> {
    let items = tokio::task::spawn_blocking(move || {
        state
            .provider
            .registered()
            .iter()
            .map(|(name, path)| {
                let sha256 = state.model_sha256(path);
                let hash = sha256.as_ref().map(|full| full[..sdrt_io::SHORT_HASH_LEN.min(full.len())].to_owned());
                // A1111 titles a checkpoint by its file name, extension included.
                let file_name = match path.extension().filter(|_| path.is_file()) {
                    Some(extension) => format!("{name}.{}", extension.to_string_lossy()),
                    None => name.clone(),
                };
                SdModelItem {
                    title: hash.as_ref().map_or_else(|| file_name.clone(), |h| format!("{file_name} [{h}]")),
                    model_name: name.clone(),
                    hash,
                    sha256,
                    filename: path.display().to_string(),
                    config: None,
                }
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Worker(e.to_string()))?;
    Ok(Json(items))
}

async fn options(State(state): Shared) -> Json<Options> {
    let settings = &state.settings();
    Json(Options {
        sd_model_checkpoint: settings.model.clone(),
        randn_source: sdrt_runtime::randn_source_name(settings.randn_source).to_owned(),
        clip_stop_at_last_layers: settings.clip_skip,
        eta_noise_seed_delta: i64::try_from(settings.eta_noise_seed_delta).unwrap_or(i64::MAX),
        extra: [
            ("emphasis", serde_json::json!(settings.emphasis.label())),
            ("pad_cond_uncond", serde_json::json!(settings.pad_cond_uncond)),
            ("inpainting_mask_weight", serde_json::json!(settings.inpainting_mask_weight)),
            ("ESRGAN_tile", serde_json::json!(settings.esrgan_tile)),
            ("ESRGAN_tile_overlap", serde_json::json!(settings.esrgan_tile_overlap)),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect(),
    })
}
