//! `/sdapi/v1/extra-single-image` and `/extra-batch-images`: finished images enlarged by an upscaler through
//! the runtime's extras upscale, one job at a time like generations, answered as A1111 does.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sdrt_api_types::{
    ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasOptions, ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
};
use sdrt_processing::RgbImage;
use sdrt_runtime::ExtrasTarget;

use crate::error::{Error, Result};
use crate::images::decode_image;
use crate::state::ServerState;

/// Upscales one image.
pub(crate) async fn single(
    state: Arc<ServerState>,
    request: ExtrasSingleImageRequest,
) -> Result<ExtrasSingleImageResponse> {
    let image = decode_image(&state.limits.decode, "image", &request.image)?;
    let (mut images, html_info) = run(state, request.options, vec![image]).await?;
    Ok(ExtrasSingleImageResponse { html_info, image: images.pop().unwrap_or_default() })
}

/// Upscales every image of the list with the same options.
pub(crate) async fn batch(
    state: Arc<ServerState>,
    request: ExtrasBatchImagesRequest,
) -> Result<ExtrasBatchImagesResponse> {
    let images = request
        .image_list
        .iter()
        .map(|file| decode_image(&state.limits.decode, "imageList", &file.data))
        .collect::<Result<Vec<_>>>()?;
    let (images, html_info) = run(state, request.options, images).await?;
    Ok(ExtrasBatchImagesResponse { html_info, images })
}

/// What extras sdrt cannot do is refused with the field named; what changes nothing passes.
fn target(options: &ExtrasOptions) -> Result<ExtrasTarget> {
    let refuse = |field: &'static str, message: &str| Error::Field { field, message: message.to_owned() };
    if options.gfpgan_visibility > 0.0 {
        return Err(refuse("gfpgan_visibility", "sdrt has no face restoration model; send 0"));
    }
    if options.codeformer_visibility > 0.0 {
        return Err(refuse("codeformer_visibility", "sdrt has no face restoration model; send 0"));
    }
    if options.extras_upscaler_2_visibility > 0.0 && options.upscaler_2 != "None" {
        return Err(refuse("extras_upscaler_2_visibility", "blending a second upscaler is not implemented; send 0"));
    }
    match options.resize_mode {
        0 => Ok(ExtrasTarget::By(options.upscaling_resize)),
        1 => Ok(ExtrasTarget::To {
            width: options.upscaling_resize_w,
            height: options.upscaling_resize_h,
            crop: options.upscaling_crop,
        }),
        other => Err(Error::Field {
            field: "resize_mode",
            message: format!("{other} is not a mode; use 0 (scale by) or 1 (scale to)"),
        }),
    }
}

async fn run(state: Arc<ServerState>, options: ExtrasOptions, images: Vec<RgbImage>) -> Result<(Vec<String>, String)> {
    let target = target(&options)?;
    let _turn = state.compute.lock().await;
    let settings = state.settings();
    let worker = Arc::clone(&state);
    let done = tokio::task::spawn_blocking(move || {
        let config = worker.provider.session_config();
        let (upscaled, info) = sdrt_runtime::extras_upscale(&images, &options.upscaler_1, target, &settings, config)?;
        let encoded = upscaled
            .iter()
            .enumerate()
            .map(|(index, image)| {
                sdrt_io::encode_png_rgb8(&image.pixels, image.width, image.height, &[])
                    .map(|png| BASE64.encode(png))
                    .map_err(|source| Error::Encode { index, source })
            })
            .collect::<Result<Vec<_>>>()?;
        let html_info = info.iter().map(|(key, value)| format!("{key}: {value}")).collect::<Vec<_>>().join(", ");
        Ok::<_, Error>((encoded, html_info))
    })
    .await;
    done.map_err(|e| Error::Worker(e.to_string()))?
}
