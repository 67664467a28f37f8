//! Reading the generation info out of any image sdrt or A1111 writes, as A1111's `read_info_from_image`.

use crate::error::{Error, Result};
use crate::exif_meta::read_exif_infotext;
use crate::load::DecodeLimits;
use crate::png_meta::{PARAMETERS_KEY, PNG_SIGNATURE, read_png_texts};

/// The infotext of an image and its other text items.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageInfo {
    /// The infotext (`parameters` chunk or EXIF UserComment).
    pub infotext: Option<String>,
    /// Other text items, as (key, text); EXIF files report the comment as `exif comment`, as A1111 does.
    pub items: Vec<(String, String)>,
}

/// Reads the infotext of a PNG, JPEG or WebP file within the default [`DecodeLimits`].
pub fn read_image_info(bytes: &[u8]) -> Result<ImageInfo> {
    DecodeLimits::default().read_image_info(bytes)
}

impl DecodeLimits {
    /// Reads the infotext of a PNG, JPEG or WebP file within these limits.
    pub fn read_image_info(&self, bytes: &[u8]) -> Result<ImageInfo> {
        read_image_info_within(bytes, self)
    }
}

fn read_image_info_within(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageInfo> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        let mut items = read_png_texts(bytes, limits)?;
        let position = items.iter().position(|(k, _)| k == PARAMETERS_KEY);
        let infotext = position.map(|i| items.remove(i).1);
        return Ok(ImageInfo { infotext, items });
    }
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    let is_webp = bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP";
    if is_jpeg || is_webp {
        let infotext = read_exif_infotext(bytes)?;
        let items = infotext.iter().map(|t| ("exif comment".to_string(), t.clone())).collect();
        return Ok(ImageInfo { infotext, items });
    }
    Err(Error::Decode { format: "image", message: "not a PNG, JPEG or WebP file; send one of those".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_jpeg_infotexts_are_found() {
        let pixels = vec![9u8; 2 * 2 * 3];
        let png =
            crate::png_meta::encode_png_rgb8(&pixels, 2, 2, &[("parameters", "p"), ("Software", "sdrt")]).unwrap();
        let info = read_image_info(&png).unwrap();
        assert_eq!(info.infotext.as_deref(), Some("p"));
        assert_eq!(info.items, vec![("Software".to_string(), "sdrt".to_string())]);
        let jpeg = crate::exif_meta::encode_jpeg_with_infotext(&pixels, 2, 2, 80, Some("j")).unwrap();
        assert_eq!(read_image_info(&jpeg).unwrap().infotext.as_deref(), Some("j"));
        assert!(read_image_info(b"GIF89a").is_err());
    }
}
