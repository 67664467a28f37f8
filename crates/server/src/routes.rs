//! The `/sdapi/v1` routes and the function that serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
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
    let access = axum::middleware::from_fn_with_state(Arc::clone(&state), crate::security::enforce);
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
        .route("/sdrt/v1/jobs", post(submit_job))
        .route("/sdrt/v1/jobs/{id}", get(job_status).delete(cancel_job))
        .route("/sdrt/v1/jobs/{id}/result", get(job_result))
        .route("/sdrt/v1/jobs/{id}/events", get(job_events))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::map_response_with_state(Arc::clone(&state), json_rejections))
        .layer(access)
        .with_state(state)
}

/// axum answers some rejections (a body over the limit) in plain text; clients parse every body as JSON.
async fn json_rejections(State(state): Shared, response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let limit = state.limits.max_body_bytes;
    let detail = format!("the request body is larger than {limit} bytes (--max-body-mb); send smaller images");
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
    let job = generate::prepare_txt2img(&state, Txt2ImgRequest::from_json(&body)?)?;
    generate::submit_and_wait(state, job).await.map(Json)
}

async fn img2img(State(state): Shared, body: String) -> Result<Json<ImageResponse>> {
    let job = generate::prepare_img2img(&state, Img2ImgRequest::from_json(&body)?)?;
    generate::submit_and_wait(state, job).await.map(Json)
}

/// `POST /sdrt/v1/jobs` with `{"kind": "txt2img" | "img2img", "request": {…A1111 body…}}`: 202 at once with
/// the job's id, its queue position and where to look.
async fn submit_job(State(state): Shared, body: String) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let envelope: serde_json::Value = serde_json::from_str(&body).map_err(|e| bad_body("(body)", &e))?;
    let request = envelope.get("request").map(serde_json::Value::to_string).unwrap_or_else(|| "{}".to_owned());
    let job = match envelope.get("kind").and_then(serde_json::Value::as_str) {
        Some("txt2img") => generate::prepare_txt2img(&state, Txt2ImgRequest::from_json(&request)?)?,
        Some("img2img") => generate::prepare_img2img(&state, Img2ImgRequest::from_json(&request)?)?,
        other => {
            return Err(Error::Field {
                field: "kind",
                message: format!("{other:?} is not a job kind; use \"txt2img\" or \"img2img\""),
            });
        }
    };
    let (id, ahead) = state.jobs.submit(&state, job)?;
    let body = serde_json::json!({
        "id": id.to_string(),
        "state": "queued",
        "queue_position": ahead,
        "status_url": format!("/sdrt/v1/jobs/{id}"),
        "result_url": format!("/sdrt/v1/jobs/{id}/result"),
        "events_url": format!("/sdrt/v1/jobs/{id}/events"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn job_id(raw: &str) -> Result<u64> {
    raw.parse().map_err(|_| Error::Field { field: "id", message: format!("{raw:?} is not a job id (a number)") })
}

async fn job_status(State(state): Shared, Path(id): Path<String>) -> Result<Json<serde_json::Value>> {
    state.jobs.status(job_id(&id)?).map(Json)
}

/// The A1111-shaped response of a finished job; 409 while it is queued or running.
async fn job_result(State(state): Shared, Path(id): Path<String>) -> Result<Json<ImageResponse>> {
    let id = job_id(&id)?;
    match state.jobs.outcome(id)? {
        Some(outcome) => outcome.map(Json),
        None => Err(Error::Stored {
            status: StatusCode::CONFLICT,
            kind: "NotFinished",
            message: format!("job {id} has not finished; poll /sdrt/v1/jobs/{id} or follow its events"),
        }),
    }
}

async fn cancel_job(State(state): Shared, Path(id): Path<String>) -> Result<Json<serde_json::Value>> {
    state.jobs.cancel(job_id(&id)?).map(Json)
}

/// Server-sent events: a `status` event (the `GET /sdrt/v1/jobs/{id}` body) whenever it changes, until the
/// job finishes.
async fn job_events(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = std::result::Result<Event, std::convert::Infallible>>>> {
    let id = job_id(&id)?;
    state.jobs.status(id)?;
    let changes = state.jobs.subscribe();
    let stream = futures_util::stream::unfold(
        (state, changes, None::<String>, false),
        move |(state, mut changes, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let Ok(status) = state.jobs.status(id) else { return None };
                let finished = status["state"].as_str().is_some_and(|s| !matches!(s, "queued" | "running"));
                let text = status.to_string();
                if last.as_deref() != Some(text.as_str()) {
                    let event = Event::default().event("status").data(text.clone());
                    return Some((Ok(event), (state, changes, Some(text), finished)));
                }
                // Steps do not signal the queue: poll progress while waiting for state changes.
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
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

async fn png_info(State(state): Shared, body: String) -> Result<Json<PngInfoResponse>> {
    let request: PngInfoRequest = serde_json::from_str(&body).map_err(|e| Error::Field {
        field: "image",
        message: format!("the body must be {{\"image\": \"<base64>\"}} ({e})"),
    })?;
    images::png_info(&state.limits.decode, &request).map(Json)
}

async fn progress(
    State(state): Shared,
    axum::extract::Query(query): axum::extract::Query<sdrt_api_types::ProgressRequest>,
) -> Json<ProgressResponse> {
    Json(if query.skip_current_image { state.progress.snapshot() } else { state.progress.snapshot_with_preview() })
}

async fn interrupt(State(state): Shared) -> Json<serde_json::Value> {
    if state.progress.mark_interrupted()
        && let Some((control, progress)) = state.jobs.running_control()
    {
        control.interrupt();
        progress.mark_interrupted();
    }
    Json(serde_json::json!({}))
}

async fn skip(State(state): Shared) -> Json<serde_json::Value> {
    if state.progress.mark_skipped()
        && let Some((control, _)) = state.jobs.running_control()
    {
        control.skip();
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
