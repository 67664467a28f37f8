//! Latent resampling for hires fix: A1111's "Latent …" upscalers, which are `torch.nn.functional.interpolate`
//! with a mode and an antialias flag (`shared.latent_upscale_modes`), reproduced index for index.

use ndarray::{Array4, Axis};

use crate::denoiser::Tensor;
use crate::error::{Error, Result};

/// One of A1111's latent upscale modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentUpscaleMode {
    /// "Latent": bilinear.
    Bilinear,
    /// "Latent (antialiased)": bilinear with torch's antialias kernel.
    BilinearAntialiased,
    /// "Latent (bicubic)": bicubic, A = −0.75.
    Bicubic,
    /// "Latent (bicubic antialiased)": torch's antialiased bicubic, A = −0.5.
    BicubicAntialiased,
    /// "Latent (nearest)": torch's legacy nearest (floor of dst·scale).
    Nearest,
    /// "Latent (nearest-exact)": nearest of the pixel centre.
    NearestExact,
}

impl LatentUpscaleMode {
    /// Every mode, in A1111's listing order.
    pub const ALL: [Self; 6] = [
        Self::Bilinear,
        Self::BilinearAntialiased,
        Self::Bicubic,
        Self::BicubicAntialiased,
        Self::Nearest,
        Self::NearestExact,
    ];

    /// A1111's name (the `hr_upscaler` value).
    pub fn label(self) -> &'static str {
        match self {
            Self::Bilinear => "Latent",
            Self::BilinearAntialiased => "Latent (antialiased)",
            Self::Bicubic => "Latent (bicubic)",
            Self::BicubicAntialiased => "Latent (bicubic antialiased)",
            Self::Nearest => "Latent (nearest)",
            Self::NearestExact => "Latent (nearest-exact)",
        }
    }

    /// The mode A1111 calls `name`, compared exactly as A1111's dict lookup does.
    pub fn from_label(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.label() == name)
    }

    /// The 1-D taps (source index, weight) of every output index along an axis of `input` → `output`.
    fn taps(self, input: usize, output: usize) -> Vec<Vec<(usize, f64)>> {
        // torch computes the scale in float32 from the sizes when `size=` is given.
        let scale = f64::from(input as f32 / output as f32);
        (0..output)
            .map(|dst| match self {
                Self::Bilinear => linear_taps(dst, scale, input),
                Self::Bicubic => cubic_taps(dst, scale, input),
                Self::BilinearAntialiased => antialiased_taps(dst, scale, input, 1.0, triangle),
                Self::BicubicAntialiased => antialiased_taps(dst, scale, input, 2.0, |x| keys_cubic(x, -0.5)),
                Self::Nearest => vec![(nearest_index(dst, input, output, scale, 0.0), 1.0)],
                Self::NearestExact => vec![(nearest_index(dst, input, output, scale, 0.5), 1.0)],
            })
            .collect()
    }
}

/// `torch.nn.functional.interpolate(latents, size=(height, width), mode, antialias)` on `[B, C, h, w]`.
pub fn upscale_latents(latents: &Tensor, height: usize, width: usize, mode: LatentUpscaleMode) -> Result<Tensor> {
    let _span = tracing::info_span!("processing::upscale_latents", mode = mode.label(), height, width).entered();
    let view = super::nchw(latents, "processing::upscale_latents", "latents", "[batch, 4, height/8, width/8]")?;
    let (batch, channels, in_h, in_w) = view.dim();
    if height == 0 || width == 0 || in_h == 0 || in_w == 0 {
        return Err(Error::InvalidParameter {
            field: "hr_scale",
            problem: format!("cannot resample {in_w}×{in_h} latents to {width}×{height}; sizes must be positive"),
        });
    }
    let rows = mode.taps(in_h, height);
    let cols = mode.taps(in_w, width);
    // Horizontal pass, then vertical, each summed in f64 from the f32 inputs.
    let mut horizontal = Array4::<f32>::zeros((batch, channels, in_h, width));
    for (src, mut dst) in view.axis_iter(Axis(0)).zip(horizontal.axis_iter_mut(Axis(0))) {
        for (src, mut dst) in src.axis_iter(Axis(0)).zip(dst.axis_iter_mut(Axis(0))) {
            for y in 0..in_h {
                for (x, taps) in cols.iter().enumerate() {
                    dst[[y, x]] = taps.iter().map(|&(i, w)| f64::from(src[[y, i]]) * w).sum::<f64>() as f32;
                }
            }
        }
    }
    let mut out = Array4::<f32>::zeros((batch, channels, height, width));
    for (src, mut dst) in horizontal.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        for (src, mut dst) in src.axis_iter(Axis(0)).zip(dst.axis_iter_mut(Axis(0))) {
            for (y, taps) in rows.iter().enumerate() {
                for x in 0..width {
                    dst[[y, x]] = taps.iter().map(|&(i, w)| f64::from(src[[i, x]]) * w).sum::<f64>() as f32;
                }
            }
        }
    }
    Ok(out.into_dyn())
}

/// Bilinear, `align_corners=False`: the source coordinate is clamped at 0 and the right neighbour at the edge.
fn linear_taps(dst: usize, scale: f64, input: usize) -> Vec<(usize, f64)> {
    let src = ((dst as f64 + 0.5) * scale - 0.5).max(0.0);
    let low = (src.floor() as usize).min(input - 1);
    let high = (low + 1).min(input - 1);
    let frac = src - low as f64;
    vec![(low, 1.0 - frac), (high, frac)]
}

/// Keys' cubic convolution kernel with parameter `a`.
fn keys_cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Bicubic, `align_corners=False`, A = −0.75, four taps with indices clamped into the image.
fn cubic_taps(dst: usize, scale: f64, input: usize) -> Vec<(usize, f64)> {
    let src = (dst as f64 + 0.5) * scale - 0.5;
    let base = src.floor();
    let t = src - base;
    let clamp = |i: f64| (i.max(0.0) as usize).min(input - 1);
    [-1.0, 0.0, 1.0, 2.0].into_iter().map(|k| (clamp(base + k), keys_cubic(t - k, -0.75))).collect()
}

fn triangle(x: f64) -> f64 {
    (1.0 - x.abs()).max(0.0)
}

/// torch's antialiased kernels (`_upsample_*_aa`): the filter stretched by the downscale factor, taps inside
/// the image only, weights normalised to sum 1.
fn antialiased_taps(
    dst: usize,
    scale: f64,
    input: usize,
    radius: f64,
    filter: impl Fn(f64) -> f64,
) -> Vec<(usize, f64)> {
    let (support, inv) = if scale >= 1.0 { (radius * scale, 1.0 / scale) } else { (radius, 1.0) };
    let center = scale * (dst as f64 + 0.5);
    let start = ((center - support + 0.5) as i64).max(0) as usize;
    let end = ((center + support + 0.5) as i64).min(input as i64).max(start as i64) as usize;
    let weights: Vec<(usize, f64)> = (start..end).map(|j| (j, filter((j as f64 - center + 0.5) * inv))).collect();
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    if total == 0.0 { weights } else { weights.into_iter().map(|(j, w)| (j, w / total)).collect() }
}

/// torch's `nearest_idx` (offset 0) and `nearest_exact_idx` (offset 0.5).
fn nearest_index(dst: usize, input: usize, output: usize, scale: f64, offset: f64) -> usize {
    if input == output {
        return dst;
    }
    if offset == 0.0 && output == 2 * input {
        return dst >> 1;
    }
    let src = ((dst as f64 + offset) as f32 * scale as f32).floor() as usize;
    src.min(input - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn ramp(h: usize, w: usize) -> Tensor {
        Tensor::from_shape_fn(IxDyn(&[1, 1, h, w]), |d| (d[2] * w + d[3]) as f32)
    }

    #[test]
    fn labels_round_trip() {
        for mode in LatentUpscaleMode::ALL {
            assert_eq!(LatentUpscaleMode::from_label(mode.label()), Some(mode));
        }
        assert_eq!(LatentUpscaleMode::from_label("latent"), None, "A1111's lookup is exact");
    }

    #[test]
    fn bilinear_doubling_matches_torch() {
        // torch.nn.functional.interpolate(arange(4).view(1,1,1,4).float(), size=(1,8), mode="bilinear")
        let out = upscale_latents(&ramp(1, 4), 1, 8, LatentUpscaleMode::Bilinear).unwrap();
        let row: Vec<f32> = out.iter().copied().collect();
        assert_eq!(row, [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
    }

    #[test]
    fn nearest_modes_pick_their_sources() {
        let near = upscale_latents(&ramp(1, 3), 1, 7, LatentUpscaleMode::Nearest).unwrap();
        let exact = upscale_latents(&ramp(1, 3), 1, 7, LatentUpscaleMode::NearestExact).unwrap();
        assert_eq!(near.iter().copied().collect::<Vec<_>>(), [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(exact.iter().copied().collect::<Vec<_>>(), [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn every_mode_keeps_constants_constant() {
        let flat = Tensor::from_elem(IxDyn(&[2, 4, 3, 5]), 1.5);
        for mode in LatentUpscaleMode::ALL {
            let out = upscale_latents(&flat, 7, 9, mode).unwrap();
            assert_eq!(out.shape(), &[2, 4, 7, 9]);
            assert!(out.iter().all(|v| (v - 1.5).abs() < 1e-6), "{mode:?}");
        }
    }
}
