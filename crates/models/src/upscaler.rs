//! Image upscaler models (ESRGAN family: RRDBNet, Real-ESRGAN, …) exported to ONNX, run as A1111's
//! `upscale_pil_patch` runs them: BGR input in [0, 1], output clamped, ×255, rounded half to even, back to RGB.

use std::path::Path;

use ndarray::{Array4, Axis};

use crate::error::{Error, Result};
use crate::options::SessionConfig;
use crate::session::{Input, OnnxModel};

/// A loaded image-to-image upscaler: one `[1, 3, h, w]` input, one `[1, 3, s·h, s·w]` output.
#[derive(Debug)]
pub struct UpscaleModel {
    model: OnnxModel,
    input: String,
    output: String,
}

/// An 8-bit RGB image as rows of interleaved pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbPixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width · height · 3` bytes.
    pub pixels: Vec<u8>,
}

impl UpscaleModel {
    /// Loads the upscaler at `path`; it must have one image input and one image output.
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Self> {
        let model = OnnxModel::load_with("upscaler", path, config)?;
        let (inputs, outputs) = (model.inputs(), model.outputs());
        let (Some(input), Some(output), 1, 1) = (inputs.first(), outputs.first(), inputs.len(), outputs.len()) else {
            return Err(Error::Tensor {
                component: "upscaler".into(),
                tensor: "input".into(),
                problem: format!(
                    "{} has {} inputs and {} outputs; an upscaler takes one image and returns one",
                    path.display(),
                    inputs.len(),
                    outputs.len()
                ),
            });
        };
        let (input, output) = (input.name.clone(), output.name.clone());
        Ok(Self { model, input, output })
    }

    /// Upscales one image (A1111 `upscale_pil_patch`).
    pub fn upscale(&mut self, image: &RgbPixels) -> Result<RgbPixels> {
        let _span = tracing::info_span!("models::upscale", width = image.width, height = image.height).entered();
        let (w, h) = (image.width as usize, image.height as usize);
        if image.pixels.len() != w * h * 3 || w == 0 || h == 0 {
            return Err(Error::Tensor {
                component: "upscaler".into(),
                tensor: self.input.clone(),
                problem: format!("{w}×{h} RGB needs {} bytes, got {}", w * h * 3, image.pixels.len()),
            });
        }
        // BGR channel order, values /255 computed in f64 as numpy does, then cast to the model's f32.
        let tensor = Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
            (f64::from(image.pixels[(y * w + x) * 3 + (2 - c)]) / 255.0) as f32
        });
        let inputs = vec![(self.input.clone(), Input::F32(tensor.view().into_dyn()))];
        let out = self.model.run(inputs, std::slice::from_ref(&self.output))?.remove(0);
        let shape = out.shape().to_vec();
        let out =
            out.into_dimensionality::<ndarray::Ix4>().ok().filter(|o| o.shape()[..2] == [1, 3]).ok_or_else(|| {
                Error::Tensor {
                    component: "upscaler".into(),
                    tensor: self.output.clone(),
                    problem: format!("expected [1, 3, height, width], found {shape:?}"),
                }
            })?;
        let image = out.index_axis(Axis(0), 0);
        let (out_h, out_w) = (image.shape()[1], image.shape()[2]);
        let mut pixels = Vec::with_capacity(out_h * out_w * 3);
        for y in 0..out_h {
            for x in 0..out_w {
                for c in 0..3 {
                    let value = 255.0 * image[[2 - c, y, x]].clamp(0.0, 1.0);
                    pixels.push(value.round_ties_even() as u8);
                }
            }
        }
        Ok(RgbPixels { width: out_w as u32, height: out_h as u32, pixels })
    }
}
