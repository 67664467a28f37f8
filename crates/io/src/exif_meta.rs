//! JPEG and WebP files with the infotext in EXIF UserComment, as A1111 writes it through piexif:
//! an Exif IFD holding UserComment = "UNICODE\0" + UTF-16BE text, in a big-endian TIFF block.

use exif::{Field, In, Tag, Value};
use image::ImageDecoder;
use image::ImageEncoder;

use crate::error::{Error, Result};
use crate::png_meta::check_rgb8;

/// piexif's character-code prefixes (8 bytes) of a UserComment.
const UNICODE_PREFIX: &[u8; 8] = b"UNICODE\0";
const ASCII_PREFIX: &[u8; 8] = b"ASCII\0\0\0";

/// A1111's default `jpeg_quality` (also used for lossy WebP there).
pub const DEFAULT_JPEG_QUALITY: u8 = 80;

/// The UserComment bytes piexif's `UserComment.dump(text, encoding="unicode")` produces.
pub fn user_comment_bytes(text: &str) -> Vec<u8> {
    let mut bytes = UNICODE_PREFIX.to_vec();
    bytes.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    bytes
}

/// Decodes a UserComment as piexif's `UserComment.load` does, falling back to lossy UTF-8 of the whole
/// field (A1111's fallback) for undefined or unknown prefixes.
pub fn decode_user_comment(bytes: &[u8]) -> String {
    match bytes.split_at_checked(8) {
        Some((prefix, body)) if prefix == UNICODE_PREFIX => {
            let units: Vec<u16> = body.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        Some((prefix, body)) if prefix == ASCII_PREFIX => String::from_utf8_lossy(body).into_owned(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A big-endian TIFF/EXIF block (without the JPEG "Exif\0\0" header) holding only UserComment.
pub fn exif_block_with_user_comment(text: &str) -> Result<Vec<u8>> {
    let field =
        Field { tag: Tag::UserComment, ifd_num: In::PRIMARY, value: Value::Undefined(user_comment_bytes(text), 0) };
    let mut writer = exif::experimental::Writer::new();
    writer.push_field(&field);
    let mut out = std::io::Cursor::new(Vec::new());
    writer.write(&mut out, false).map_err(|e| Error::Encode { format: "EXIF", message: e.to_string() })?;
    Ok(out.into_inner())
}

/// The UserComment text of a raw TIFF/EXIF block, if it has one.
pub fn user_comment_from_exif_block(block: &[u8]) -> Result<Option<String>> {
    let exif = exif::Reader::new()
        .read_raw(block.to_vec())
        .map_err(|e| Error::Decode { format: "EXIF", message: e.to_string() })?;
    Ok(exif.get_field(Tag::UserComment, In::PRIMARY).and_then(|field| match &field.value {
        Value::Undefined(bytes, _) => Some(decode_user_comment(bytes)),
        _ => None,
    }))
}

/// Encodes RGB8 pixels as JPEG (`quality` 1–100) with the infotext in EXIF UserComment.
pub fn encode_jpeg_with_infotext(
    pixels: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    infotext: Option<&str>,
) -> Result<Vec<u8>> {
    let _span = tracing::info_span!("io::encode_jpeg", width, height).entered();
    check_rgb8(pixels, width, height)?;
    if !(1..=100).contains(&quality) {
        return Err(Error::Invalid {
            field: "quality",
            message: format!("{quality} is outside 1..=100; A1111 uses 80"),
        });
    }
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    if let Some(text) = infotext {
        encoder
            .set_exif_metadata(exif_block_with_user_comment(text)?)
            .map_err(|e| Error::Encode { format: "JPEG", message: e.to_string() })?;
    }
    encoder
        .write_image(pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Encode { format: "JPEG", message: e.to_string() })?;
    Ok(out)
}

/// Encodes RGB8 pixels as lossless WebP with the infotext in an EXIF chunk's UserComment.
///
/// A1111 defaults to lossy WebP (quality 80); the `image` crate only encodes lossless WebP.
pub fn encode_webp_with_infotext(pixels: &[u8], width: u32, height: u32, infotext: Option<&str>) -> Result<Vec<u8>> {
    let _span = tracing::info_span!("io::encode_webp", width, height).entered();
    check_rgb8(pixels, width, height)?;
    let mut out = Vec::new();
    let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
    if let Some(text) = infotext {
        encoder
            .set_exif_metadata(exif_block_with_user_comment(text)?)
            .map_err(|e| Error::Encode { format: "WebP", message: e.to_string() })?;
    }
    encoder
        .write_image(pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Encode { format: "WebP", message: e.to_string() })?;
    Ok(out)
}

/// The raw EXIF block of a JPEG or WebP file, if any.
pub fn exif_block(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let cursor = std::io::Cursor::new(bytes);
    let decode = |format: &'static str| move |e: image::ImageError| Error::Decode { format, message: e.to_string() };
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut decoder = image::codecs::jpeg::JpegDecoder::new(cursor).map_err(decode("JPEG"))?;
        decoder.exif_metadata().map_err(decode("JPEG"))
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        let mut decoder = image::codecs::webp::WebPDecoder::new(cursor).map_err(decode("WebP"))?;
        decoder.exif_metadata().map_err(decode("WebP"))
    } else {
        Err(Error::Decode { format: "image", message: "not a JPEG or WebP file".into() })
    }
}

/// The infotext in a JPEG or WebP file's EXIF UserComment, if any.
pub fn read_exif_infotext(bytes: &[u8]) -> Result<Option<String>> {
    match exif_block(bytes)? {
        Some(block) => Ok(user_comment_from_exif_block(strip_exif_header(&block))?.filter(|t| !t.is_empty())),
        None => Ok(None),
    }
}

/// Some decoders hand back the APP1 payload with its "Exif\0\0" header; the TIFF block starts after it.
fn strip_exif_header(block: &[u8]) -> &[u8] {
    block.strip_prefix(b"Exif\0\0").unwrap_or(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "猫 in a hat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 7, Size: 8x8";

    #[test]
    fn user_comment_is_unicode_prefix_plus_utf16be() {
        assert_eq!(user_comment_bytes("Aé"), b"UNICODE\0\x00A\x00\xe9");
        assert_eq!(decode_user_comment(&user_comment_bytes(TEXT)), TEXT);
        assert_eq!(decode_user_comment(b"ASCII\0\0\0hi"), "hi");
    }

    #[test]
    fn exif_block_is_big_endian_tiff_with_the_comment() {
        let block = exif_block_with_user_comment(TEXT).unwrap();
        assert_eq!(&block[..4], b"MM\0*");
        assert_eq!(user_comment_from_exif_block(&block).unwrap().as_deref(), Some(TEXT));
    }

    #[test]
    fn jpeg_and_webp_round_trip_the_infotext() {
        let pixels = vec![128u8; 8 * 8 * 3];
        let jpeg = encode_jpeg_with_infotext(&pixels, 8, 8, DEFAULT_JPEG_QUALITY, Some(TEXT)).unwrap();
        assert_eq!(read_exif_infotext(&jpeg).unwrap().as_deref(), Some(TEXT));
        let webp = encode_webp_with_infotext(&pixels, 8, 8, Some(TEXT)).unwrap();
        assert_eq!(read_exif_infotext(&webp).unwrap().as_deref(), Some(TEXT));
        let plain = encode_jpeg_with_infotext(&pixels, 8, 8, 90, None).unwrap();
        assert_eq!(read_exif_infotext(&plain).unwrap(), None);
    }
}
