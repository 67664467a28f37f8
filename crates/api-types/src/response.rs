//! Response bodies and the smaller endpoints' types of A1111's `/sdapi/v1` API.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{SAMPLERS, SCHEDULERS, SamplerInfo, SchedulerInfo};
use crate::request::ExtraFields;

/// `txt2img` / `img2img` response: `{images, parameters, info}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageResponse {
    /// Base64 PNGs (empty when `send_images` is false).
    pub images: Vec<String>,
    /// The request as received, with defaults filled in.
    pub parameters: Value,
    /// [`GenerationInfo`] as a JSON *string* (A1111 double-encodes it).
    pub info: String,
}

/// What A1111's `Processed.js()` puts in `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct GenerationInfo {
    /// First prompt.
    pub prompt: String,
    /// Every image's prompt.
    pub all_prompts: Vec<String>,
    /// First negative prompt.
    pub negative_prompt: String,
    /// Every image's negative prompt.
    pub all_negative_prompts: Vec<String>,
    /// First seed.
    pub seed: i64,
    /// Every image's seed.
    pub all_seeds: Vec<i64>,
    /// First variation seed.
    pub subseed: i64,
    /// Every image's variation seed.
    pub all_subseeds: Vec<i64>,
    /// Variation strength.
    pub subseed_strength: f64,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Sampler name.
    pub sampler_name: String,
    /// CFG scale.
    pub cfg_scale: f64,
    /// Steps.
    pub steps: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Face restoration was requested.
    pub restore_faces: bool,
    /// Face restoration model, when used.
    pub face_restoration_model: Option<String>,
    /// Model name.
    pub sd_model_name: Option<String>,
    /// Model hash (see `sdrt_io::model_hash`).
    pub sd_model_hash: Option<String>,
    /// VAE name.
    pub sd_vae_name: Option<String>,
    /// VAE hash.
    pub sd_vae_hash: Option<String>,
    /// Seed resize width (−1 = off).
    pub seed_resize_from_w: i64,
    /// Seed resize height (−1 = off).
    pub seed_resize_from_h: i64,
    /// Denoising strength.
    pub denoising_strength: Option<f64>,
    /// Extra infotext parameters.
    pub extra_generation_params: Map<String, Value>,
    /// 1 when a grid is the first image, else 0.
    pub index_of_first_image: u32,
    /// One infotext per returned image.
    pub infotexts: Vec<String>,
    /// Styles applied.
    pub styles: Vec<String>,
    /// Job timestamp, `%Y%m%d%H%M%S`.
    pub job_timestamp: String,
    /// Clip skip.
    pub clip_skip: u32,
    /// Inpainting conditioning was used.
    pub is_using_inpainting_conditioning: bool,
    /// Program version.
    pub version: String,
}

impl GenerationInfo {
    /// The JSON string A1111 puts in [`ImageResponse::info`].
    pub fn to_info_string(&self) -> String {
        serde_json::to_string(self).expect("GenerationInfo serializes: plain data with string keys")
    }
}

/// `GET /sdapi/v1/progress` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct ProgressRequest {
    /// Do not encode the live preview.
    pub skip_current_image: bool,
}

/// `state` inside [`ProgressResponse`] (A1111's `shared.state.dict()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct ProgressState {
    /// The current image was skipped.
    pub skipped: bool,
    /// The job was interrupted.
    pub interrupted: bool,
    /// Generation is stopping after the current image.
    pub stopping_generation: bool,
    /// Job description.
    pub job: String,
    /// Number of jobs (batches).
    pub job_count: i64,
    /// Job timestamp.
    pub job_timestamp: String,
    /// Index of the current job.
    pub job_no: i64,
    /// Current sampling step.
    pub sampling_step: i64,
    /// Total sampling steps.
    pub sampling_steps: i64,
}

/// `GET /sdapi/v1/progress` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct ProgressResponse {
    /// Progress in [0, 1].
    pub progress: f64,
    /// Estimated seconds left.
    pub eta_relative: f64,
    /// State snapshot.
    pub state: ProgressState,
    /// Live preview (base64 PNG), when available.
    pub current_image: Option<String>,
    /// Text info.
    pub textinfo: Option<String>,
}

/// `POST /sdapi/v1/png-info` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PngInfoRequest {
    /// Base64 image (optionally with a `data:` prefix).
    pub image: String,
}

/// `POST /sdapi/v1/png-info` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct PngInfoResponse {
    /// The infotext (`parameters` chunk or EXIF UserComment); empty when none.
    pub info: String,
    /// Every other text item the image carries.
    pub items: Map<String, Value>,
    /// The infotext parsed as A1111's `parse_generation_parameters`.
    pub parameters: Map<String, Value>,
}

/// `GET /sdapi/v1/samplers` item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SamplerItem {
    /// Sampler name.
    pub name: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// A1111's options dict (`scheduler`, `second_order`, `brownian_noise`, …).
    pub options: Map<String, Value>,
}

impl From<&SamplerInfo> for SamplerItem {
    fn from(info: &SamplerInfo) -> Self {
        let mut options = Map::new();
        if let Some(scheduler) = info.default_scheduler {
            options.insert("scheduler".into(), scheduler.into());
        }
        let flags = [
            ("discard_next_to_last_sigma", info.discard_next_to_last_sigma),
            ("uses_ensd", info.uses_ensd),
            ("second_order", info.second_order),
            ("brownian_noise", info.brownian_noise),
        ];
        for (key, set) in flags {
            if set {
                options.insert(key.into(), true.into());
            }
        }
        if let Some(solver) = info.solver_type {
            options.insert("solver_type".into(), solver.into());
        }
        Self { name: info.name.into(), aliases: info.aliases.iter().map(|a| a.to_string()).collect(), options }
    }
}

/// `GET /sdapi/v1/schedulers` item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SchedulerItem {
    /// API name.
    pub name: String,
    /// Label.
    pub label: String,
    /// Aliases (`null` when none, as A1111 sends).
    pub aliases: Option<Vec<String>>,
    /// Default ρ (−1 when none).
    pub default_rho: Option<f64>,
    /// Needs the model's sigma table.
    pub need_inner_model: Option<bool>,
}

impl From<&SchedulerInfo> for SchedulerItem {
    fn from(info: &SchedulerInfo) -> Self {
        Self {
            name: info.name.into(),
            label: info.label.into(),
            aliases: (!info.aliases.is_empty()).then(|| info.aliases.iter().map(|a| a.to_string()).collect()),
            default_rho: Some(info.default_rho),
            need_inner_model: Some(info.need_inner_model),
        }
    }
}

/// The `/samplers` list.
pub fn sampler_items() -> Vec<SamplerItem> {
    SAMPLERS.iter().map(SamplerItem::from).collect()
}

/// The `/schedulers` list.
pub fn scheduler_items() -> Vec<SchedulerItem> {
    SCHEDULERS.iter().map(SchedulerItem::from).collect()
}

/// One `/upscalers` entry (A1111's `UpscalerItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UpscalerItem {
    /// The `hr_upscaler` name.
    pub name: String,
    /// The model's name (none for the built-in resamplers).
    pub model_name: Option<String>,
    /// Where the model file is.
    pub model_path: Option<String>,
    /// Where the model came from.
    pub model_url: Option<String>,
    /// Its native scale (A1111 reports 4 for the built-in ones).
    pub scale: f64,
}

/// One `/latent-upscale-modes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LatentUpscaleModeItem {
    /// The `hr_upscaler` name.
    pub name: String,
}

/// The subset of A1111 settings (`GET/POST /sdapi/v1/options`) that sdrt acts on; others are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Options {
    /// Loaded model's title.
    pub sd_model_checkpoint: Option<String>,
    /// Random source: "GPU", "CPU" or "NV".
    pub randn_source: String,
    /// Clip skip.
    #[serde(rename = "CLIP_stop_at_last_layers")]
    pub clip_stop_at_last_layers: u32,
    /// ENSD: seed offset for ancestral/SDE noise.
    pub eta_noise_seed_delta: i64,
    /// Other settings, kept verbatim.
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sd_model_checkpoint: None,
            randn_source: "GPU".into(),
            clip_stop_at_last_layers: 1,
            eta_noise_seed_delta: 0,
            extra: ExtraFields::new(),
        }
    }
}

/// `GET /sdapi/v1/sd-models` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SdModelItem {
    /// "name [hash]".
    pub title: String,
    /// Model name.
    pub model_name: String,
    /// Short hash.
    pub hash: Option<String>,
    /// Full sha256.
    pub sha256: Option<String>,
    /// Path of the model.
    pub filename: String,
    /// Config file.
    pub config: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_items_carry_a1111_options() {
        let items = sampler_items();
        let dpm2a = items.iter().find(|i| i.name == "DPM2 a").unwrap();
        assert_eq!(
            serde_json::Value::Object(dpm2a.options.clone()),
            serde_json::json!({"scheduler": "karras", "discard_next_to_last_sigma": true, "uses_ensd": true, "second_order": true})
        );
        let euler = items.iter().find(|i| i.name == "Euler").unwrap();
        assert!(euler.options.is_empty());
    }

    #[test]
    fn scheduler_items_send_null_aliases_when_none() {
        let items = serde_json::to_value(scheduler_items()).unwrap();
        assert_eq!(items[0]["aliases"], Value::Null);
        assert_eq!(items[5]["aliases"], serde_json::json!(["SGMUniform"]));
        assert_eq!(items[2]["default_rho"], 7.0);
    }

    #[test]
    fn info_string_is_json_with_seeds() {
        let info = GenerationInfo { all_seeds: vec![5, 6], ..Default::default() };
        let parsed: Value = serde_json::from_str(&info.to_info_string()).unwrap();
        assert_eq!(parsed["all_seeds"], serde_json::json!([5, 6]));
    }

    #[test]
    fn options_keep_unknown_settings() {
        let options: Options =
            serde_json::from_str(r#"{"CLIP_stop_at_last_layers": 2, "samples_format": "jpg"}"#).unwrap();
        assert_eq!(options.clip_stop_at_last_layers, 2);
        assert_eq!(options.randn_source, "GPU");
        assert_eq!(options.extra["samples_format"], "jpg");
    }
}

/// Every error answer (A1111's `HTTPException` body shape, which its clients read `detail` from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorResponse {
    /// The kind of error (`ValidationError`, `QueueFull`, `NotFound`, …).
    pub error: String,
    /// What went wrong, naming the field and the fix.
    pub detail: String,
    /// Always empty (A1111 fills it with the request body on some errors).
    pub body: String,
    /// The same text as `detail`.
    pub errors: String,
}

impl ErrorResponse {
    /// An error of `kind` saying `message`.
    pub fn new(kind: &str, message: &str) -> Self {
        Self { error: kind.to_owned(), detail: message.to_owned(), body: String::new(), errors: message.to_owned() }
    }
}

/// One entry of `GET /sdapi/v1/prompt-styles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PromptStyleItem {
    /// The name the `styles` request field selects it by.
    pub name: String,
    /// Its prompt (`{prompt}` marks where the request's prompt goes).
    pub prompt: String,
    /// Its negative prompt.
    pub negative_prompt: String,
}

/// One entry of `GET /sdapi/v1/loras`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoraItem {
    /// The name prompts use: `<lora:NAME:multiplier>`.
    pub name: String,
    /// The other name prompts may use: the file's `ss_output_name`, else the same name.
    pub alias: String,
    /// The file's name inside the LoRA folder.
    pub path: String,
    /// The file's training metadata (`__metadata__`; values that are JSON objects parsed, as A1111 does).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// One entry of `GET /sdapi/v1/sd-vae`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SdVaeItem {
    /// The file name, extension included: the value `sd_vae` takes.
    pub model_name: String,
    /// The same file name (A1111 gives the server's path; sdrt keeps its folders to itself).
    pub filename: String,
}

/// One embedding of `GET /sdapi/v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmbeddingItem {
    /// Training step (not read by sdrt).
    pub step: Option<i64>,
    /// Checkpoint hash it was trained on (not read by sdrt).
    pub sd_checkpoint: Option<String>,
    /// Checkpoint name it was trained on (not read by sdrt).
    pub sd_checkpoint_name: Option<String>,
    /// Vector width (SDXL: both encoders' together).
    pub shape: usize,
    /// Token positions it fills.
    pub vectors: usize,
}

/// `GET /sdapi/v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmbeddingsResponse {
    /// Embeddings prompts may name, by name.
    pub loaded: std::collections::BTreeMap<String, EmbeddingItem>,
    /// Embeddings left out, by name.
    pub skipped: std::collections::BTreeMap<String, EmbeddingItem>,
}
