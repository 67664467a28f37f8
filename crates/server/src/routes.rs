//! The `/sdapi/v1` routes and the function that serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use sdrt_api_types::{
    EmbeddingItem, EmbeddingsResponse, ErrorResponse, ExtrasBatchImagesRequest, ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest, ExtrasSingleImageResponse, ImageResponse, Img2ImgRequest, JobAccepted, JobKind, JobState,
    JobStatus, JobSubmission, LatentUpscaleModeItem, LoraItem, Options, PngInfoRequest, PngInfoResponse,
    ProgressResponse, PromptStyleItem, SamplerItem, SchedulerItem, SdModelItem, SdVaeItem, Txt2ImgRequest,
    UpscalerItem, WorkerStatus, sampler_items, scheduler_items,
};

use crate::error::{Error, Result};
use crate::openapi::{SchemaFn, schema};
use crate::state::ServerState;
use crate::{extras, generate, images};

type Shared = State<Arc<ServerState>>;

/// Every `/sdapi/v1` and `/sdrt/v1` endpoint over `state`, built from [`OPERATIONS`] (which `/openapi.json`
/// documents, so the two cannot differ).
pub fn router(state: Arc<ServerState>) -> Router {
    let access = axum::middleware::from_fn_with_state(Arc::clone(&state), crate::security::enforce);
    OPERATIONS
        .iter()
        .fold(Router::new(), |router, operation| router.route(operation.path, (operation.handler)()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::map_response_with_state(Arc::clone(&state), json_rejections))
        .layer(access)
        .with_state(state)
}

type Handler = fn() -> MethodRouter<Arc<ServerState>>;

/// One route: what `/openapi.json` says of it, and its handler.
pub(crate) struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The JSON body's schema, for routes that take one.
    pub request: Option<SchemaFn>,
    /// The success status and its body's schema.
    pub response: (u16, SchemaFn),
    handler: Handler,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<SchemaFn>,
    response: (u16, SchemaFn),
    handler: Handler,
) -> Operation {
    Operation { method, path, summary, request, response, handler }
}

type Value = serde_json::Value;

/// The API, one entry per method and path.
#[rustfmt::skip]
pub(crate) const OPERATIONS: &[Operation] = &[
    op("post", "/sdapi/v1/txt2img", "Generate images from a prompt (waits for the job)",
        Some(schema::<Txt2ImgRequest>), (200, schema::<ImageResponse>), || post(txt2img)),
    op("post", "/sdapi/v1/img2img", "Generate images from init images, with an optional inpainting mask (waits)",
        Some(schema::<Img2ImgRequest>), (200, schema::<ImageResponse>), || post(img2img)),
    op("get", "/sdapi/v1/progress", "Progress of the running job, with a live preview",
        None, (200, schema::<ProgressResponse>), || get(progress)),
    op("post", "/sdapi/v1/interrupt", "Interrupt the running job", None, (200, schema::<Value>), || post(interrupt)),
    op("post", "/sdapi/v1/skip", "Skip the running job's current image",
        None, (200, schema::<Value>), || post(skip)),
    op("get", "/sdapi/v1/samplers", "Sampler names", None, (200, schema::<Vec<SamplerItem>>), || get(samplers)),
    op("get", "/sdapi/v1/schedulers", "Scheduler names",
        None, (200, schema::<Vec<SchedulerItem>>), || get(schedulers)),
    op("get", "/sdapi/v1/sd-models", "Registered models with their hashes",
        None, (200, schema::<Vec<SdModelItem>>), || get(sd_models)),
    op("get", "/sdapi/v1/options", "The A1111 settings sdrt honours", None, (200, schema::<Options>), || get(options)),
    op("post", "/sdapi/v1/options", "Change settings for later jobs; answers the keys that change nothing",
        Some(schema::<serde_json::Map<String, Value>>), (200, schema::<Value>), || post(set_options)),
    op("post", "/sdapi/v1/png-info", "The infotext and other text items of a PNG, JPEG or WebP",
        Some(schema::<PngInfoRequest>), (200, schema::<PngInfoResponse>), || post(png_info)),
    op("get", "/sdapi/v1/prompt-styles", "The saved prompt styles (--styles-file)",
        None, (200, schema::<Vec<PromptStyleItem>>), || get(prompt_styles)),
    op("get", "/sdapi/v1/loras", "The LoRA networks prompts may name (--lora-dir)",
        None, (200, schema::<Vec<LoraItem>>), || get(loras)),
    op("post", "/sdapi/v1/refresh-loras", "Rescan the LoRA folder", None, (200, schema::<Value>), || post(refresh_loras)),
    op("get", "/sdapi/v1/embeddings", "The textual-inversion embeddings prompts may name (--embeddings-dir)",
        None, (200, schema::<EmbeddingsResponse>), || get(embeddings)),
    op("post", "/sdapi/v1/refresh-embeddings", "Re-read the embeddings folder",
        None, (200, schema::<Value>), || post(refresh_embeddings)),
    op("get", "/sdapi/v1/upscalers", "Image upscalers", None, (200, schema::<Vec<UpscalerItem>>), || get(upscalers)),
    op("get", "/sdapi/v1/latent-upscale-modes", "Latent upscale modes for hires fix",
        None, (200, schema::<Vec<LatentUpscaleModeItem>>), || get(latent_upscale_modes)),
    op("get", "/sdapi/v1/sd-vae", "Standalone VAE files sd_vae may name", None, (200, schema::<Vec<SdVaeItem>>),
        || get(sd_vae)),
    op("post", "/sdapi/v1/refresh-vae", "Rescan the VAE folders", None, (200, schema::<Value>), || post(refresh_vae)),
    op("get", "/sdapi/v1/face-restorers", "Face restorers (none)",
        None, (200, schema::<Vec<Value>>), || get(empty_list)),
    op("get", "/sdapi/v1/realesrgan-models", "Real-ESRGAN models (none)",
        None, (200, schema::<Vec<Value>>), || get(empty_list)),
    op("get", "/sdapi/v1/hypernetworks", "Hypernetworks (none)",
        None, (200, schema::<Vec<Value>>), || get(empty_list)),
    op("get", "/sdapi/v1/scripts", "Scripts (none)", None, (200, schema::<Value>), || get(scripts)),
    op("get", "/sdapi/v1/memory", "System memory", None, (200, schema::<Value>), || get(memory)),
    op("get", "/sdapi/v1/cmd-flags", "The A1111 flags this server corresponds to",
        None, (200, schema::<Value>), || get(cmd_flags)),
    op("post", "/sdapi/v1/refresh-checkpoints", "Models are fixed at start; answers null",
        None, (200, schema::<Value>), || post(refresh_checkpoints)),
    op("post", "/sdapi/v1/interrogate", "Not available: 501", None, (501, schema::<ErrorResponse>), || post(interrogate)),
    op("post", "/sdapi/v1/extra-single-image", "Upscale one image",
        Some(schema::<ExtrasSingleImageRequest>), (200, schema::<ExtrasSingleImageResponse>), || post(extra_single_image)),
    op("post", "/sdapi/v1/extra-batch-images", "Upscale a list of images",
        Some(schema::<ExtrasBatchImagesRequest>), (200, schema::<ExtrasBatchImagesResponse>), || post(extra_batch_images)),
    op("post", "/sdrt/v1/jobs", "Queue a txt2img or img2img job; 202 at once",
        Some(schema::<JobSubmission>), (202, schema::<JobAccepted>), || post(submit_job)),
    op("get", "/sdrt/v1/jobs/{id}", "A job's state and progress",
        None, (200, schema::<JobStatus>), || get(job_status)),
    op("delete", "/sdrt/v1/jobs/{id}", "Cancel a queued job or interrupt a running one",
        None, (200, schema::<JobStatus>), || delete(cancel_job)),
    op("get", "/sdrt/v1/jobs/{id}/result", "A finished job's A1111 response; 409 until it finishes",
        None, (200, schema::<ImageResponse>), || get(job_result)),
    op("get", "/sdrt/v1/jobs/{id}/events", "Server-sent `status` events (JobStatus JSON) until the job finishes",
        None, (200, schema::<JobStatus>), || get(job_events)),
    op("get", "/sdrt/v1/workers", "The live workers of the Redis queue (empty without --queue)",
        None, (200, schema::<Vec<WorkerStatus>>), || get(workers)),
    op("get", "/openapi.json", "This document", None, (200, schema::<Value>), || get(openapi_document)),
];

/// axum answers some rejections (a body over the limit) in plain text; clients parse every body as JSON.
async fn json_rejections(State(state): Shared, response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let limit = state.limits.max_body_bytes;
    let detail = format!("the request body is larger than {limit} bytes (--max-body-mb); send smaller images");
    let body = sdrt_api_types::ErrorResponse::new("PayloadTooLarge", &detail);
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
    generate::submit_and_wait(state, &body, job).await.map(Json)
}

async fn img2img(State(state): Shared, body: String) -> Result<Json<ImageResponse>> {
    let job = generate::prepare_img2img(&state, Img2ImgRequest::from_json(&body)?)?;
    generate::submit_and_wait(state, &body, job).await.map(Json)
}

/// `POST /sdrt/v1/jobs` with `{"kind": "txt2img" | "img2img", "request": {…A1111 body…}}`: 202 at once with
/// the job's id, its queue position and where to look.
async fn submit_job(State(state): Shared, body: String) -> Result<(StatusCode, Json<JobAccepted>)> {
    let submission: JobSubmission = serde_json::from_str(&body).map_err(|e| {
        let message = format!("{e}; send {{\"kind\": \"txt2img\" or \"img2img\", \"request\": {{…}}}}");
        Error::Field { field: "kind", message }
    })?;
    let request = if submission.request.is_null() { "{}".to_owned() } else { submission.request.to_string() };
    let job = match submission.kind {
        JobKind::Txt2img => generate::prepare_txt2img(&state, Txt2ImgRequest::from_json(&request)?)?,
        JobKind::Img2img => generate::prepare_img2img(&state, Img2ImgRequest::from_json(&request)?)?,
    };
    let (id, ahead) = state.submit(&request, job).await?;
    let accepted = JobAccepted {
        id: id.to_string(),
        state: JobState::Queued,
        queue_position: ahead,
        status_url: format!("/sdrt/v1/jobs/{id}"),
        result_url: format!("/sdrt/v1/jobs/{id}/result"),
        events_url: format!("/sdrt/v1/jobs/{id}/events"),
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

fn job_id(raw: &str) -> Result<u64> {
    raw.parse().map_err(|_| Error::Field { field: "id", message: format!("{raw:?} is not a job id (a number)") })
}

async fn job_status(State(state): Shared, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    state.job_status(job_id(&id)?).await.map(Json)
}

/// The A1111-shaped response of a finished job; 409 while it is queued or running.
async fn job_result(State(state): Shared, Path(id): Path<String>) -> Result<Json<ImageResponse>> {
    let id = job_id(&id)?;
    match state.job_outcome(id).await? {
        Some(outcome) => outcome.map(Json),
        None => Err(Error::Stored {
            status: StatusCode::CONFLICT,
            kind: "NotFinished",
            message: format!("job {id} has not finished; poll /sdrt/v1/jobs/{id} or follow its events"),
        }),
    }
}

async fn workers(State(state): Shared) -> Result<Json<Vec<WorkerStatus>>> {
    state.workers().await.map(Json)
}

async fn cancel_job(State(state): Shared, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    state.cancel_job(job_id(&id)?).await.map(Json)
}

/// Server-sent events: a `status` event (the `GET /sdrt/v1/jobs/{id}` body) whenever it changes, until the
/// job finishes.
async fn job_events(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = std::result::Result<Event, std::convert::Infallible>>>> {
    let id = job_id(&id)?;
    state.job_status(id).await?;
    let changes = state.jobs.subscribe();
    let stream = futures_util::stream::unfold(
        (state, changes, None::<String>, false),
        move |(state, mut changes, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let Ok(status) = state.job_status(id).await else { return None };
                let finished = status.state.is_finished();
                let text = serde_json::to_string(&status).unwrap_or_default();
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
    if let Some(queue) = &state.cluster {
        // A1111's options are global: with a shared queue every worker applies them.
        queue.store_options(&entries).await?;
    }
    Ok(Json(serde_json::json!({ "ignored": ignored })))
}

async fn png_info(State(state): Shared, body: String) -> Result<Json<PngInfoResponse>> {
    let request: PngInfoRequest = serde_json::from_str(&body).map_err(|e| Error::Field {
        field: "image",
        message: format!("the body must be {{\"image\": \"<base64>\"}} ({e})"),
    })?;
    let mut info = images::png_info(&state.limits.decode, &request)?;
    // A1111 renames pasted `<lora:…>` tags to the local files with the infotext's `Lora hashes`; hashing a network
    // file the first time reads all of it, so off the async threads.
    let loras = state.settings().loras;
    let mut parameters = std::mem::take(&mut info.parameters);
    info.parameters = tokio::task::spawn_blocking(move || {
        loras.rename_pasted(&mut parameters);
        parameters
    })
    .await
    .map_err(|e| Error::Worker(e.to_string()))?;
    Ok(Json(info))
}

async fn progress(
    State(state): Shared,
    axum::extract::Query(query): axum::extract::Query<sdrt_api_types::ProgressRequest>,
) -> Result<Json<ProgressResponse>> {
    state.current_progress(!query.skip_current_image).await.map(Json)
}

async fn interrupt(State(state): Shared) -> Result<Json<serde_json::Value>> {
    state.interrupt_current().await?;
    Ok(Json(serde_json::json!({})))
}

async fn skip(State(state): Shared) -> Result<Json<serde_json::Value>> {
    state.skip_current().await?;
    Ok(Json(serde_json::json!({})))
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
async fn interrogate() -> (StatusCode, Json<sdrt_api_types::ErrorResponse>) {
    let detail = "interrogate is not available: sdrt has no CLIP or DeepBooru interrogator model";
    (StatusCode::NOT_IMPLEMENTED, Json(sdrt_api_types::ErrorResponse::new("NotImplemented", detail)))
}

/// Unknown routes answer JSON as A1111 (FastAPI) does; clients parse the body of every answer.
/// `GET /openapi.json`: OpenAPI 3.0 for every route, its schemas generated from the api-types.
async fn openapi_document() -> Json<Value> {
    // Through a function pointer: naming `OPERATIONS` here would make the table's type depend on itself.
    Json(crate::openapi::document(operations()))
}

fn operations() -> &'static [Operation] {
    OPERATIONS
}

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
        // The file's name only: the server's folders are not the client's business.
        model_path: path.file_name().map(|file| file.to_string_lossy().into_owned()),
        model_url: None,
        scale: 4.0,
    });
    Json(builtin.chain(models).collect())
}

async fn loras(State(state): Shared) -> Json<Vec<LoraItem>> {
    let library = state.settings().loras;
    let item = |entry: sdrt_runtime::LoraEntry| LoraItem {
        alias: entry.alias,
        path: entry.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        name: entry.name,
        // A1111's read_metadata_from_safetensors: values that look like JSON objects are parsed.
        metadata: entry
            .metadata
            .into_iter()
            .map(|(key, text)| {
                let parsed = text.starts_with('{').then(|| serde_json::from_str(&text).ok()).flatten();
                (key, parsed.unwrap_or(Value::String(text)))
            })
            .collect(),
    };
    Json(library.list().into_iter().map(item).collect())
}

async fn refresh_loras(State(state): Shared) -> Result<Json<Value>> {
    let library = state.settings().loras;
    rescan(move || library.refresh()).await
}

/// A folder rescan off the async threads; answers as A1111 does (`null`).
async fn rescan(refresh: impl FnOnce() -> sdrt_runtime::Result<()> + Send + 'static) -> Result<Json<Value>> {
    tokio::task::spawn_blocking(refresh).await.map_err(|e| Error::Worker(e.to_string()))?.map_err(Error::Runtime)?;
    Ok(Json(Value::Null))
}

async fn embeddings(State(state): Shared) -> Json<EmbeddingsResponse> {
    let item = |entry: &sdrt_runtime::EmbeddingEntry| EmbeddingItem {
        step: None,
        sd_checkpoint: None,
        sd_checkpoint_name: None,
        shape: entry.vectors.iter().map(|v| v.ncols()).sum(),
        vectors: entry.vectors.last().map_or(0, |v| v.nrows()),
    };
    let loaded = state.settings().embeddings.list().iter().map(|e| (e.name.clone(), item(e))).collect();
    Json(EmbeddingsResponse { loaded, skipped: Default::default() })
}

async fn refresh_embeddings(State(state): Shared) -> Result<Json<Value>> {
    let library = state.settings().embeddings;
    rescan(move || library.refresh()).await
}

async fn sd_vae(State(state): Shared) -> Json<Vec<SdVaeItem>> {
    let item = |entry: sdrt_runtime::VaeEntry| SdVaeItem { model_name: entry.name.clone(), filename: entry.name };
    Json(state.settings().vaes.list().into_iter().map(item).collect())
}

async fn refresh_vae(State(state): Shared) -> Result<Json<Value>> {
    let library = state.settings().vaes;
    rescan(move || library.refresh()).await
}

async fn prompt_styles(State(state): Shared) -> Json<Vec<PromptStyleItem>> {
    let styles = state.settings().styles;
    let item = |s: &sdrt_io::PromptStyle| PromptStyleItem {
        name: s.name.clone(),
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.clone(),
    };
    Json(styles.styles().iter().map(item).collect())
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
                    // Relative to the models folder, as the name is: no server path leaves the server.
                    filename: file_name.clone(),
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
            ("sd_vae", serde_json::json!(settings.sd_vae)),
            ("ESRGAN_tile_overlap", serde_json::json!(settings.esrgan_tile_overlap)),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect(),
    })
}
