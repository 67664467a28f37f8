//! Decoding images that come from outside (API bodies, CLI files) with limits, so a small decompression bomb
//! is refused before it allocates gigabytes.

use std::io::Cursor;

/// How much decoding an image from outside may cost; `sdrt serve --max-decoded-side` and friends set these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest side of an image sdrt decodes, in pixels.
    pub max_side: u32,
    /// Most memory one decode may allocate, in bytes.
    pub max_bytes: u64,
    /// Longest text chunk (after decompression) read from a PNG, in bytes.
    pub max_text_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_side: 16_384, max_bytes: 1 << 30, max_text_bytes: 2 << 20 }
    }
}

impl DecodeLimits {
    /// Decodes a PNG, JPEG or WebP image, refusing one larger than these limits before it allocates.
    pub fn load_image(&self, bytes: &[u8]) -> crate::Result<image::DynamicImage> {
        let error = |message: String| crate::Error::Decode { format: "image", message };
        let mut reader =
            image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| error(e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits.max_alloc = Some(self.max_bytes);
        reader.limits(limits);
        reader.decode().map_err(|e| {
            error(format!("{e} (at most {side}x{side} pixels are decoded: --max-decoded-side)", side = self.max_side))
        })
    }
}

/// [`DecodeLimits::load_image`] with the default limits.
pub fn load_image(bytes: &[u8]) -> crate::Result<image::DynamicImage> {
    DecodeLimits::default().load_image(bytes)
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
