//! Decoding images that come from outside (API bodies, CLI files) with limits, so a small decompression bomb
//! is refused before it allocates gigabytes.

use std::io::Cursor;

/// Largest side of an image sdrt decodes from outside, in pixels.
pub const MAX_DECODED_SIDE: u32 = 16_384;
/// Most memory one decode may allocate, in bytes.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Decodes a PNG, JPEG or WebP image, refusing one larger than [`MAX_DECODED_SIDE`] per side or needing more
/// than [`MAX_DECODED_BYTES`].
pub fn load_image(bytes: &[u8]) -> crate::Result<image::DynamicImage> {
    let error = |message: String| crate::Error::Decode { format: "image", message };
    let mut reader =
        image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| error(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| error(format!("{e} (at most {MAX_DECODED_SIDE}x{MAX_DECODED_SIDE} pixels are decoded)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bomb_is_refused_and_a_normal_image_loads() {
        let small = crate::encode_png_rgb8(&[10; 4 * 3 * 3], 4, 3, &[]).unwrap();
        assert_eq!(load_image(&small).unwrap().width(), 4);
        // A 20000×20000 black PNG compresses to a few hundred kB but would need 1.2 GB decoded.
        let mut encoder_output = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut encoder_output, 20_000, 20_000);
            encoder.set_color(png::ColorType::Grayscale);
            let mut writer = encoder.write_header().unwrap();
            let mut stream = writer.stream_writer().unwrap();
            let row = vec![0u8; 20_000];
            for _ in 0..20_000 {
                std::io::Write::write_all(&mut stream, &row).unwrap();
            }
            stream.finish().unwrap();
        }
        let err = load_image(&encoder_output).unwrap_err().to_string();
        assert!(err.contains("16384"), "{err}");
    }
}
