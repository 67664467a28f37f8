//! PNG files with A1111's `parameters` text chunk: written as PIL writes it (tEXt when the text is Latin-1,
//! uncompressed iTXt otherwise) and read back from tEXt, zTXt and iTXt chunks.

use crate::error::{Error, Result};
use crate::load::DecodeLimits;

/// The text chunk key A1111 stores the infotext under.
pub const PARAMETERS_KEY: &str = "parameters";

/// PNG file signature.
pub(crate) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

fn encode_error(e: impl std::fmt::Display) -> Error {
    Error::Encode { format: "PNG", message: e.to_string() }
}

fn decode_error(e: impl std::fmt::Display) -> Error {
    Error::Decode { format: "PNG", message: e.to_string() }
}

pub(crate) fn check_rgb8(pixels: &[u8], width: u32, height: u32) -> Result<()> {
    let expected = width as usize * height as usize * 3;
    if pixels.len() != expected || width == 0 || height == 0 {
        return Err(Error::BufferSize { width, height, expected, actual: pixels.len() });
    }
    Ok(())
}

/// True when every character fits in one Latin-1 byte (what PIL's `encode("latin-1")` accepts).
pub fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) <= 0xFF)
}

/// Encodes an RGB8 image as PNG with text chunks, in order: tEXt for Latin-1 values, iTXt otherwise.
pub fn encode_png_rgb8(pixels: &[u8], width: u32, height: u32, texts: &[(&str, &str)]) -> Result<Vec<u8>> {
    let _span = tracing::info_span!("io::encode_png", width, height).entered();
    check_rgb8(pixels, width, height)?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in texts {
            if is_latin1(value) {
                encoder.add_text_chunk((*key).to_string(), (*value).to_string()).map_err(encode_error)?;
            } else {
                encoder.add_itxt_chunk((*key).to_string(), (*value).to_string()).map_err(encode_error)?;
            }
        }
        let mut writer = encoder.write_header().map_err(encode_error)?;
        writer.write_image_data(pixels).map_err(encode_error)?;
        writer.finish().map_err(encode_error)?;
    }
    Ok(out)
}

/// Encodes an RGB8 PNG whose `parameters` chunk holds `infotext`.
pub fn encode_png_with_infotext(pixels: &[u8], width: u32, height: u32, infotext: &str) -> Result<Vec<u8>> {
    encode_png_rgb8(pixels, width, height, &[(PARAMETERS_KEY, infotext)])
}

/// A decoded PNG: RGB8 pixels plus its text chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct PngImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB8 pixels, row-major.
    pub pixels: Vec<u8>,
    /// Every text chunk as (keyword, text): tEXt first, then zTXt, then iTXt, each in file order.
    pub texts: Vec<(String, String)>,
}

impl PngImage {
    /// The `parameters` text, if any.
    pub fn parameters(&self) -> Option<&str> {
        self.texts.iter().find(|(k, _)| k == PARAMETERS_KEY).map(|(_, v)| v.as_str())
    }
}

/// Reads every text chunk (before or after the image data) without keeping the pixels.
pub fn read_png_texts(bytes: &[u8], limits: &DecodeLimits) -> Result<Vec<(String, String)>> {
    Ok(decode_png_within(bytes, limits)?.texts)
}

/// Decodes a PNG to RGB8 (expanding palette, grey, alpha and 16-bit) and collects its text chunks, within the
/// default [`DecodeLimits`].
pub fn decode_png(bytes: &[u8]) -> Result<PngImage> {
    decode_png_within(bytes, &DecodeLimits::default())
}

/// [`decode_png`] within `limits`: a large image or a compressed text chunk that would expand beyond them is an
/// error before the memory is allocated.
pub fn decode_png_within(bytes: &[u8], limits: &DecodeLimits) -> Result<PngImage> {
    let _span = tracing::info_span!("io::decode_png", bytes = bytes.len()).entered();
    let png_limits = png::Limits { bytes: usize::try_from(limits.max_bytes).unwrap_or(usize::MAX) };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png_limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(decode_error)?;
    let (width, height) = (reader.info().width, reader.info().height);
    if width > limits.max_side || height > limits.max_side {
        let side = limits.max_side;
        return Err(decode_error(format!("{width}x{height} is larger than {side}x{side} (--max-decoded-side)")));
    }
    let size = reader.output_buffer_size().ok_or_else(|| decode_error("image too large for memory"))?;
    let mut buffer = vec![0; size];
    let frame = reader.next_frame(&mut buffer).map_err(decode_error)?;
    buffer.truncate(frame.buffer_size());
    reader.finish().map_err(decode_error)?;
    let pixels = to_rgb8(&buffer, frame.color_type)?;
    let info = reader.info();
    let mut texts: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    // `get_text` alone would inflate a compressed chunk without bound: a 1 MB zTXt can hold 1 GB of text.
    let too_long = |keyword: &str| {
        let limit = limits.max_text_bytes;
        decode_error(format!("text chunk {keyword:?} expands beyond {limit} bytes (--max-text-chunk-bytes)"))
    };
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        chunk.decompress_text_with_limit(limits.max_text_bytes).map_err(|_| too_long(&chunk.keyword))?;
        texts.push((chunk.keyword.clone(), chunk.get_text().map_err(decode_error)?));
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        chunk.decompress_text_with_limit(limits.max_text_bytes).map_err(|_| too_long(&chunk.keyword))?;
        texts.push((chunk.keyword.clone(), chunk.get_text().map_err(decode_error)?));
    }
    if let Some((keyword, _)) = texts.iter().find(|(_, text)| text.len() > limits.max_text_bytes) {
        return Err(too_long(keyword));
    }
    Ok(PngImage { width: frame.width, height: frame.height, pixels, texts })
}

fn to_rgb8(buffer: &[u8], color: png::ColorType) -> Result<Vec<u8>> {
    Ok(match color {
        png::ColorType::Rgb => buffer.to_vec(),
        png::ColorType::Rgba => buffer.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buffer.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buffer.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(decode_error("palette was not expanded")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(w: u32, h: u32) -> Vec<u8> {
        (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn latin1_goes_to_text_and_other_text_to_itxt() {
        let latin = "café, Steps: 20";
        let unicode = "猫, Steps: 20";
        let bytes = encode_png_rgb8(&pixels(4, 3), 4, 3, &[("a", latin), ("b", unicode)]).unwrap();
        let has_chunk = |name: &[u8]| bytes.windows(4).any(|w| w == name);
        assert!(has_chunk(b"tEXt") && has_chunk(b"iTXt"));
        let image = decode_png(&bytes).unwrap();
        assert_eq!(image.texts, vec![("a".into(), latin.into()), ("b".into(), unicode.into())]);
        assert_eq!(image.pixels, pixels(4, 3));
    }

    #[test]
    fn parameters_round_trip() {
        let text = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 1";
        let bytes = encode_png_with_infotext(&pixels(2, 2), 2, 2, text).unwrap();
        assert_eq!(decode_png(&bytes).unwrap().parameters(), Some(text));
    }

    #[test]
    fn wrong_buffer_size_says_what_is_needed() {
        let err = encode_png_rgb8(&[0; 5], 2, 2, &[]).unwrap_err().to_string();
        assert!(err.contains("needs 12"), "{err}");
    }
}
