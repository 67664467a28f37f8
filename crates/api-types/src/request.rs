//! `/sdapi/v1/txt2img` and `/sdapi/v1/img2img` request bodies with A1111 v1.10's field names and defaults.
//!
//! A1111 builds these from `StableDiffusionProcessing*` constructor defaults plus a few API-only fields; every
//! field is optional and an explicit JSON `null` means "the default". Unknown fields are accepted and kept in
//! `extra` (A1111's pydantic models ignore them; scripts and extensions send many).

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Unknown JSON fields, kept so they survive a round trip (and reach `parameters` in the response).
pub type ExtraFields = BTreeMap<String, Value>;

/// Fields shared by txt2img and img2img (A1111's `StableDiffusionProcessing` plus the API extras).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct GenerationRequest {
    /// Positive prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Style names to apply (sdrt has no style database; kept for compatibility).
    pub styles: Option<Vec<String>>,
    /// Seed; −1 = random.
    pub seed: i64,
    /// Variation seed; −1 = random.
    pub subseed: i64,
    /// Variation strength in [0, 1].
    pub subseed_strength: f64,
    /// "Resize seed from" height; ≤ 0 = off.
    pub seed_resize_from_h: i64,
    /// "Resize seed from" width; ≤ 0 = off.
    pub seed_resize_from_w: i64,
    /// Sampler name, alias or legacy combined name; `None` = `sampler_index`.
    pub sampler_name: Option<String>,
    /// Deprecated sampler field; A1111's API default "Euler" applies when `sampler_name` is absent.
    pub sampler_index: String,
    /// Scheduler name or label; `None` = Automatic.
    pub scheduler: Option<String>,
    /// Images per batch.
    pub batch_size: u32,
    /// Number of batches.
    pub n_iter: u32,
    /// Sampling steps.
    pub steps: u32,
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Face restoration (not supported by sdrt; recorded).
    pub restore_faces: Option<bool>,
    /// Seamless tiling.
    pub tiling: Option<bool>,
    /// Do not save the individual images.
    pub do_not_save_samples: bool,
    /// Do not save the grid.
    pub do_not_save_grid: bool,
    /// Eta for ancestral/DDIM samplers; `None` = the setting.
    pub eta: Option<f64>,
    /// Skip the unconditional pass below this sigma.
    pub s_min_uncond: Option<f64>,
    /// Euler/Heun/DPM2 churn.
    pub s_churn: Option<f64>,
    /// Churn upper sigma bound.
    pub s_tmax: Option<f64>,
    /// Churn lower sigma bound.
    pub s_tmin: Option<f64>,
    /// Noise multiplier.
    pub s_noise: Option<f64>,
    /// Settings overridden for this request (`CLIP_stop_at_last_layers`, `eta_noise_seed_delta`, …).
    pub override_settings: Map<String, Value>,
    /// Restore overridden settings afterwards.
    pub override_settings_restore_afterwards: bool,
    /// Refiner checkpoint name.
    pub refiner_checkpoint: Option<String>,
    /// Fraction of steps after which the refiner takes over.
    pub refiner_switch_at: Option<f64>,
    /// Ignore `<lora:…>`-style extra-network tags.
    pub disable_extra_networks: bool,
    /// Script to run (not supported by sdrt; recorded).
    pub script_name: Option<String>,
    /// Script arguments.
    pub script_args: Vec<Value>,
    /// Return the images in the response.
    pub send_images: bool,
    /// Save the images on the server.
    pub save_images: bool,
    /// Always-on script arguments.
    pub alwayson_scripts: Map<String, Value>,
    /// Task id to report progress under.
    pub force_task_id: Option<String>,
    /// Infotext whose parameters fill fields the request leaves unset.
    pub infotext: Option<String>,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            styles: None,
            seed: -1,
            subseed: -1,
            subseed_strength: 0.0,
            seed_resize_from_h: -1,
            seed_resize_from_w: -1,
            sampler_name: None,
            sampler_index: crate::names::API_DEFAULT_SAMPLER.to_string(),
            scheduler: None,
            batch_size: 1,
            n_iter: 1,
            steps: 50,
            cfg_scale: 7.0,
            width: 512,
            height: 512,
            restore_faces: None,
            tiling: None,
            do_not_save_samples: false,
            do_not_save_grid: false,
            eta: None,
            s_min_uncond: None,
            s_churn: None,
            s_tmax: None,
            s_tmin: None,
            s_noise: None,
            override_settings: Map::new(),
            override_settings_restore_afterwards: true,
            refiner_checkpoint: None,
            refiner_switch_at: None,
            disable_extra_networks: false,
            script_name: None,
            script_args: Vec::new(),
            send_images: true,
            save_images: false,
            alwayson_scripts: Map::new(),
            force_task_id: None,
            infotext: None,
        }
    }
}

impl GenerationRequest {
    /// The sampler the request asks for: `sampler_name`, else `sampler_index` (as A1111's API does).
    pub fn requested_sampler(&self) -> &str {
        match self.sampler_name.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => &self.sampler_index,
        }
    }
}

/// `POST /sdapi/v1/txt2img` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
#[schemars(transform = with_shared_fields)]
pub struct Txt2ImgRequest {
    /// Shared generation fields.
    #[serde(skip_deserializing, flatten)]
    pub base: GenerationRequest,
    /// Denoising strength of the hires pass.
    pub denoising_strength: f64,
    /// Run the hires-fix second pass.
    pub enable_hr: bool,
    /// Legacy first-pass width (0 = unused).
    pub firstphase_width: u32,
    /// Legacy first-pass height (0 = unused).
    pub firstphase_height: u32,
    /// Hires upscale factor.
    pub hr_scale: f64,
    /// Hires upscaler name ("Latent", "Lanczos", …); `None` = the default latent upscaler.
    pub hr_upscaler: Option<String>,
    /// Hires steps; 0 = same as the first pass.
    pub hr_second_pass_steps: u32,
    /// Hires target width; 0 = use `hr_scale`.
    pub hr_resize_x: u32,
    /// Hires target height; 0 = use `hr_scale`.
    pub hr_resize_y: u32,
    /// Checkpoint for the second pass.
    pub hr_checkpoint_name: Option<String>,
    /// Sampler for the second pass; `None` = the first pass's.
    pub hr_sampler_name: Option<String>,
    /// Scheduler for the second pass; `None` = the first pass's.
    pub hr_scheduler: Option<String>,
    /// Prompt for the second pass; empty = the first pass's.
    pub hr_prompt: String,
    /// Negative prompt for the second pass; empty = the first pass's.
    pub hr_negative_prompt: String,
    /// Fields A1111 does not define, kept verbatim.
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            base: GenerationRequest::default(),
            denoising_strength: 0.75,
            enable_hr: false,
            firstphase_width: 0,
            firstphase_height: 0,
            hr_scale: 2.0,
            hr_upscaler: None,
            hr_second_pass_steps: 0,
            hr_resize_x: 0,
            hr_resize_y: 0,
            hr_checkpoint_name: None,
            hr_sampler_name: None,
            hr_scheduler: None,
            hr_prompt: String::new(),
            hr_negative_prompt: String::new(),
            extra: ExtraFields::new(),
        }
    }
}

/// `POST /sdapi/v1/img2img` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
#[schemars(transform = with_shared_fields)]
pub struct Img2ImgRequest {
    /// Shared generation fields.
    #[serde(skip_deserializing, flatten)]
    pub base: GenerationRequest,
    /// How much of the init image to replace, in [0, 1].
    pub denoising_strength: f64,
    /// Base64 init images (optionally `data:image/...;base64,` prefixed).
    pub init_images: Vec<String>,
    /// 0 = just resize, 1 = crop and resize, 2 = resize and fill, 3 = just resize (latent upscale).
    pub resize_mode: u32,
    /// Image CFG scale (instruct-pix2pix models).
    pub image_cfg_scale: Option<f64>,
    /// Base64 inpainting mask.
    pub mask: Option<String>,
    /// Horizontal mask blur in pixels.
    pub mask_blur_x: i64,
    /// Vertical mask blur in pixels.
    pub mask_blur_y: i64,
    /// Mask blur in pixels for both axes; overrides `mask_blur_x/y` when set.
    pub mask_blur: Option<i64>,
    /// Round the mask to 0/1 after blurring.
    pub mask_round: bool,
    /// Masked content: 0 = fill, 1 = original, 2 = latent noise, 3 = latent nothing.
    pub inpainting_fill: u32,
    /// Inpaint at full resolution ("only masked").
    pub inpaint_full_res: bool,
    /// Padding around the mask for full-resolution inpainting, in pixels.
    pub inpaint_full_res_padding: u32,
    /// 0 = inpaint masked, 1 = inpaint not masked.
    pub inpainting_mask_invert: u32,
    /// Multiplier for the initial noise.
    pub initial_noise_multiplier: Option<f64>,
    /// Separate latent mask (base64).
    pub latent_mask: Option<String>,
    /// Return the init images with the results.
    pub include_init_images: bool,
    /// Fields A1111 does not define, kept verbatim.
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl Default for Img2ImgRequest {
    fn default() -> Self {
        Self {
            base: GenerationRequest::default(),
            denoising_strength: 0.75,
            init_images: Vec::new(),
            resize_mode: 0,
            image_cfg_scale: None,
            mask: None,
            mask_blur_x: 4,
            mask_blur_y: 4,
            mask_blur: None,
            mask_round: true,
            inpainting_fill: 0,
            inpaint_full_res: true,
            inpaint_full_res_padding: 0,
            inpainting_mask_invert: 0,
            initial_noise_multiplier: None,
            latent_mask: None,
            include_init_images: false,
            extra: ExtraFields::new(),
        }
    }
}

impl Txt2ImgRequest {
    /// A1111's `calculate_target_resolution`: the hires pass's size before any latent truncation, from
    /// `hr_scale`, or from `hr_resize_x/y` (one side keeps the aspect ratio; both sides cover the box).
    pub fn hires_size(&self) -> (u64, u64) {
        let (width, height) = (u64::from(self.base.width.max(1)), u64::from(self.base.height.max(1)));
        let (x, y) = (u64::from(self.hr_resize_x), u64::from(self.hr_resize_y));
        match (x, y) {
            // Saturating float-to-int casts: an absurd scale gives an absurd (refusable) size, not a wrap.
            (0, 0) => ((width as f64 * self.hr_scale) as u64, (height as f64 * self.hr_scale) as u64),
            (x, 0) => (x, x * height / width),
            (0, y) => (y * width / height, y),
            (x, y) if (width as f64 / height as f64) < (x as f64 / y as f64) => (x, x * height / width),
            (_, y) => (y * width / height, y),
        }
    }
}

impl Img2ImgRequest {
    /// The (x, y) mask blur in effect: `mask_blur` for both axes when set, else `mask_blur_x/y`.
    pub fn effective_mask_blur(&self) -> (i64, i64) {
        self.mask_blur.map_or((self.mask_blur_x, self.mask_blur_y), |blur| (blur, blur))
    }
}

/// The schema of a request type with [`GenerationRequest`]'s fields added: its `base` is flattened by hand
/// (`skip_deserializing`, see [`request_serde`]), which the derived schema cannot see.
fn with_shared_fields(schema: &mut schemars::Schema) {
    let mut settings = schemars::generate::SchemaSettings::openapi3().for_deserialize();
    settings.inline_subschemas = true;
    let shared = settings.into_generator().into_root_schema_for::<GenerationRequest>();
    let Some(shared) = shared.get("properties").and_then(serde_json::Value::as_object) else { return };
    if let Some(properties) =
        schema.ensure_object().entry("properties").or_insert_with(|| Map::new().into()).as_object_mut()
    {
        for (name, property) in shared {
            properties.entry(name.clone()).or_insert_with(|| property.clone());
        }
    }
}

/// Implements serde for a `remote = "Self"` request: top-level `null`s are dropped first (so they mean the
/// default), the shared [`GenerationRequest`] fields are read separately (serde's `flatten` would hide the
/// path of a bad field), and errors carry the JSON path of the offending field.
macro_rules! request_serde {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                <$ty>::from_value(Value::deserialize(deserializer)?)
                    .map_err(|(path, message)| D::Error::custom(format!("{path}: {message}")))
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }

        impl $ty {
            /// Parses a request body; errors name the JSON path of the bad field.
            pub fn from_json(text: &str) -> Result<Self> {
                let value: Value =
                    serde_json::from_str(text).map_err(|e| Error::Json { path: ".".into(), message: e.to_string() })?;
                <$ty>::from_value(value).map_err(|(path, message)| Error::Json { path, message })
            }

            fn from_value(value: Value) -> std::result::Result<Self, (String, String)> {
                let object = without_nulls(value).map_err(|message| (".".to_string(), message))?;
                let base: GenerationRequest =
                    tracked(Value::Object(object.clone()), |d| GenerationRequest::deserialize(d))?;
                let shared = shared_field_names();
                let own: Map<String, Value> = object.into_iter().filter(|(k, _)| !shared.contains(k)).collect();
                let mut request = tracked(Value::Object(own), |d| <$ty>::deserialize(d))?;
                request.base = base;
                Ok(request)
            }
        }
    };
}

request_serde!(Txt2ImgRequest);
request_serde!(Img2ImgRequest);

fn without_nulls(value: Value) -> std::result::Result<Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => Err(format!("expected a JSON object, found {other}")),
    }
}

/// Runs `deserialize` on `value`, reporting a failure as (JSON path, message).
fn tracked<T>(
    mut value: Value,
    deserialize: impl Fn(serde_path_to_error::Deserializer<'_, '_, Value>) -> std::result::Result<T, serde_json::Error>,
) -> std::result::Result<T, (String, String)> {
    // Each retry fixes one field; a request has far fewer fields than this.
    for _ in 0..256 {
        let mut track = serde_path_to_error::Track::new();
        let result = deserialize(serde_path_to_error::Deserializer::new(value.clone(), &mut track));
        match result {
            Ok(parsed) => return Ok(parsed),
            Err(e) => {
                let (path, message) = (track.path().to_string(), e.to_string());
                if !coerce_string_field(&mut value, &path, &message) {
                    return Err((path, message));
                }
            }
        }
    }
    Err((".".to_owned(), "too many fields needed coercing from strings".to_owned()))
}

/// A1111 (pydantic) accepts numbers and booleans sent as strings (`"steps": "20"`): turns the top-level
/// string field `path` that failed with "invalid type: string" into the number or boolean it spells.
fn coerce_string_field(value: &mut Value, path: &str, message: &str) -> bool {
    if !message.starts_with("invalid type: string") {
        return false;
    }
    let Some(slot) = value.as_object_mut().and_then(|object| object.get_mut(path)) else { return false };
    let Some(text) = slot.as_str().map(str::trim) else { return false };
    let coerced = if message.contains("expected a boolean") {
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return false,
        }
    } else if let Ok(integer) = text.parse::<i64>() {
        Value::from(integer)
    } else if let Some(float) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
        Value::from(float)
    } else {
        return false;
    };
    *slot = coerced;
    true
}

/// JSON names of the [`GenerationRequest`] fields.
fn shared_field_names() -> &'static std::collections::BTreeSet<String> {
    static NAMES: std::sync::LazyLock<std::collections::BTreeSet<String>> =
        std::sync::LazyLock::new(|| match serde_json::to_value(GenerationRequest::default()) {
            Ok(Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
            _ => std::collections::BTreeSet::new(),
        });
    &NAMES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_booleans_sent_as_strings_are_coerced_like_a1111() {
        let request =
            Txt2ImgRequest::from_json(r#"{"steps": "2", "cfg_scale": "6.5", "enable_hr": "true", "seed": "-1"}"#)
                .unwrap();
        assert_eq!((request.base.steps, request.base.cfg_scale, request.enable_hr), (2, 6.5, true));
        let error = Txt2ImgRequest::from_json(r#"{"steps": "many"}"#).unwrap_err().to_string();
        assert!(error.contains("steps"), "{error}");
    }

    #[test]
    fn empty_body_gives_a1111_defaults() {
        let request = Txt2ImgRequest::from_json("{}").unwrap();
        assert_eq!(request, Txt2ImgRequest::default());
        assert_eq!((request.base.steps, request.base.width, request.base.seed), (50, 512, -1));
        assert_eq!(request.base.requested_sampler(), "Euler");
        assert!(request.base.send_images && !request.base.save_images);
    }

    #[test]
    fn null_means_default_and_unknown_fields_are_kept() {
        let request =
            Txt2ImgRequest::from_json(r#"{"steps": null, "sampler_name": null, "my_ext": {"a": 1}, "cfg_scale": 5}"#)
                .unwrap();
        assert_eq!(request.base.steps, 50);
        assert_eq!(request.base.cfg_scale, 5.0);
        assert_eq!(request.denoising_strength, 0.75);
        assert_eq!(request.extra.get("my_ext"), Some(&serde_json::json!({"a": 1})));
        let back = serde_json::to_value(&request).unwrap();
        assert_eq!(back["my_ext"]["a"], 1);
        assert_eq!(back["steps"], 50);
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = Txt2ImgRequest::from_json(r#"{"width": -8}"#).unwrap_err();
        assert!(matches!(&err, Error::Json { path, .. } if path == "width"), "{err}");
        let err = serde_json::from_str::<Img2ImgRequest>(r#"{"steps": "many"}"#).unwrap_err().to_string();
        assert!(err.starts_with("steps:"), "{err}");
        let err = Img2ImgRequest::from_json(r#"{"resize_mode": "crop"}"#).unwrap_err();
        assert!(matches!(&err, Error::Json { path, .. } if path == "resize_mode"), "{err}");
    }

    #[test]
    fn mask_blur_overrides_both_axes() {
        let request = Img2ImgRequest::from_json(r#"{"mask_blur": 9}"#).unwrap();
        assert_eq!(request.effective_mask_blur(), (9, 9));
        assert_eq!(Img2ImgRequest::default().effective_mask_blur(), (4, 4));
    }
}
