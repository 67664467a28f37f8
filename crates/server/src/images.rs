//! Images as the API carries them: base64 strings, optionally `data:` URLs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sdrt_api_types::{PngInfoRequest, PngInfoResponse};
use sdrt_io::DecodeLimits;
use sdrt_processing::RgbImage;

use crate::error::{Error, Result};

/// The bytes of a base64 image; a `data:image/…;base64,` prefix is allowed.
pub(crate) fn decode_base64(field: &'static str, text: &str) -> Result<Vec<u8>> {
    let payload = text.split_once(";base64,").map_or(text, |(_, data)| data);
    BASE64.decode(payload.trim()).map_err(|e| Error::Field {
        field,
        message: format!("not base64 ({e}); send the image file's bytes base64-encoded"),
    })
}

/// Decodes a base64 PNG, JPEG or WebP image to RGB.
pub(crate) fn decode_image(limits: &DecodeLimits, field: &'static str, text: &str) -> Result<RgbImage> {
    let image = sdrt_io::flatten(&load(limits, field, text)?);
    Ok(RgbImage { width: image.width(), height: image.height(), pixels: image.into_raw() })
}

/// An inpainting mask as A1111 reads it (`create_binary_mask`: an alpha channel when it has transparency).
pub(crate) fn decode_mask(
    limits: &DecodeLimits,
    field: &'static str,
    text: &str,
    round: bool,
) -> Result<image::GrayImage> {
    Ok(sdrt_io::mask_from_image(&load(limits, field, text)?, round))
}

fn load(limits: &DecodeLimits, field: &'static str, text: &str) -> Result<image::DynamicImage> {
    let bytes = decode_base64(field, text)?;
    limits
        .load_image(&bytes)
        .map_err(|e| Error::Field { field, message: format!("not a PNG, JPEG or WebP image sdrt can decode: {e}") })
}

/// `POST /sdapi/v1/png-info`: the infotext, the other text items and the parsed parameters (empty when the
/// image carries no infotext, as A1111 answers).
pub(crate) fn png_info(limits: &DecodeLimits, request: &PngInfoRequest) -> Result<PngInfoResponse> {
    let bytes = decode_base64("image", &request.image)?;
    let info = limits
        .read_image_info(&bytes)
        .map_err(|e| Error::Field { field: "image", message: format!("cannot read its metadata: {e}") })?;
    let items = info.items.into_iter().map(|(key, text)| (key, text.into())).collect();
    let text = info.infotext.unwrap_or_default();
    let parameters =
        if text.is_empty() { Default::default() } else { sdrt_io::ParsedInfotext::parse(&text).to_a1111_parameters() };
    Ok(PngInfoResponse { info: text, items, parameters })
}
