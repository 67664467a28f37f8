//! `/sdapi/v1/extra-single-image` and `/extra-batch-images` (A1111's extras tab: upscaling a finished image)
//! with A1111's field names and defaults.

use serde::{Deserialize, Serialize};

/// The fields both extras requests share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ExtrasOptions {
    /// 0 = scale by `upscaling_resize`, 1 = to `upscaling_resize_w`×`upscaling_resize_h`.
    pub resize_mode: u32,
    /// Whether the UI would show the results (accepted, changes nothing).
    pub show_extras_results: bool,
    /// GFPGAN face restoration strength (sdrt has none: must be 0).
    pub gfpgan_visibility: f64,
    /// CodeFormer face restoration strength (sdrt has none: must be 0).
    pub codeformer_visibility: f64,
    /// CodeFormer weight.
    pub codeformer_weight: f64,
    /// Scale factor for `resize_mode` 0.
    pub upscaling_resize: f64,
    /// Target width for `resize_mode` 1.
    pub upscaling_resize_w: u32,
    /// Target height for `resize_mode` 1.
    pub upscaling_resize_h: u32,
    /// Centre-crop to the target size in `resize_mode` 1.
    pub upscaling_crop: bool,
    /// The upscaler.
    pub upscaler_1: String,
    /// A second upscaler blended in (sdrt supports none: its visibility must be 0).
    pub upscaler_2: String,
    /// How much of `upscaler_2` to blend in.
    pub extras_upscaler_2_visibility: f64,
    /// Upscale before face restoration.
    pub upscale_first: bool,
}

impl Default for ExtrasOptions {
    fn default() -> Self {
        Self {
            resize_mode: 0,
            show_extras_results: true,
            gfpgan_visibility: 0.0,
            codeformer_visibility: 0.0,
            codeformer_weight: 0.0,
            upscaling_resize: 2.0,
            upscaling_resize_w: 512,
            upscaling_resize_h: 512,
            upscaling_crop: true,
            upscaler_1: "None".into(),
            upscaler_2: "None".into(),
            extras_upscaler_2_visibility: 0.0,
            upscale_first: false,
        }
    }
}

/// `POST /sdapi/v1/extra-single-image`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ExtrasSingleImageRequest {
    /// The options.
    #[serde(flatten)]
    pub options: ExtrasOptions,
    /// Base64 image (optionally a `data:` URL).
    pub image: String,
}

/// One image of `/extra-batch-images`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ExtrasFile {
    /// Base64 image.
    pub data: String,
    /// Its file name.
    pub name: String,
}

/// `POST /sdapi/v1/extra-batch-images`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ExtrasBatchImagesRequest {
    /// The options.
    #[serde(flatten)]
    pub options: ExtrasOptions,
    /// The images.
    #[serde(rename = "imageList")]
    pub image_list: Vec<ExtrasFile>,
}

/// The answer to `/extra-single-image`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExtrasSingleImageResponse {
    /// A1111's "Postprocess …" parameters as text.
    pub html_info: String,
    /// Base64 PNG.
    pub image: String,
}

/// The answer to `/extra-batch-images`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExtrasBatchImagesResponse {
    /// A1111's "Postprocess …" parameters as text.
    pub html_info: String,
    /// Base64 PNGs, in order.
    pub images: Vec<String>,
}
