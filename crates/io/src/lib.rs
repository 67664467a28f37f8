//! Files for sdrt: image decode/encode, generation metadata (A1111 infotext), output naming, grids.
//!
//! Knows bytes on disk and image buffers; never tensors, models or HTTP.
//!
//! - [`GenerationParams`]: A1111's infotext, written byte-for-byte as v1.10 does and parsed back
//!   ([`ParsedInfotext`] is `parse_generation_parameters`).
//! - PNG `parameters` chunks (tEXt / iTXt as PIL writes them), JPEG / WebP EXIF UserComment (as piexif), and
//!   [`read_image_info`] for any of them.
//! - Output names ([`apply_pattern`], [`next_image_path`]), [`write_atomically`], [`image_grid`].
//! - [`model_hash`]: the `Model hash` of an ONNX model folder.

mod composite;
mod error;
mod exif_meta;
mod grid;
mod image_info;
mod infotext;
mod load;
mod mask;
mod model_hash;
mod naming;
mod pil_resize;
mod png_meta;
mod resize;
mod styles;
mod tiles;
mod upscaler;

pub use composite::{apply_overlay, fill_masked, flatten, overlay_image};
pub use error::{Error, Result};
pub use exif_meta::{
    DEFAULT_JPEG_QUALITY, decode_user_comment, encode_jpeg_with_infotext, encode_webp_with_infotext,
    exif_block_with_user_comment, read_exif_infotext, user_comment_bytes,
};
pub use grid::{GRID_BACKGROUND, grid_shape, image_grid};
pub use image_info::{ImageInfo, read_image_info};
pub use infotext::{
    GenerationParams, HiresParams, InfotextValue, ParsedInfotext, python_float, quote, rename_pasted_networks, unquote,
};
pub use load::{DecodeLimits, load_image};
pub use mask::{CropBox, blur_mask, crop_region, expand_crop_region, mask_from_image, pil_luminance};
pub use model_hash::{NETWORK_SHORT_HASH_LEN, SHORT_HASH_LEN, addnet_hash, cache_dir, model_hash, model_sha256};
pub use naming::{
    DEFAULT_PATTERN, NameParams, apply_pattern, limit_stem, next_image_path, next_sequence_number, pause_saves,
    sanitize_filename_part, write_atomically,
};
pub use pil_resize::{PilFilter, pil_resize};
pub use png_meta::{
    PARAMETERS_KEY, PngImage, decode_png, decode_png_within, encode_png_rgb8, encode_png_with_infotext, is_latin1,
    read_png_texts,
};
pub use resize::{ResizeMode, resize_image};
pub use styles::{PromptStyle, StyleDatabase, merge_prompts};
pub use tiles::upscale_tiled;
pub use upscaler::{ImageUpscaler, upscale_by, upscale_with};
