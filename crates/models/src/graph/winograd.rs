//! 3×3 convolutions by Winograd's minimal filtering F(m×m, 3×3), written with standard ONNX operators.
//!
//! A UNet step spends 44 % of its time in 3×3 convolutions that ONNX Runtime already runs at ~90 % of this
//! CPU's fp32 peak, so only fewer multiplies make them faster. F(m, 3) turns each (m+2)×(m+2) input tile and
//! each 3×3 kernel into (m+2)² numbers, multiplies them position by position, and turns the products back into
//! an m×m output tile: (m+2)² multiplies per channel pair and tile instead of 9m² (F(2,3): 16 instead of 36,
//! F(4,3): 36 instead of 144). Summed over input channels, "position by position" becomes one matrix multiply
//! per tile position, which is where the time goes.
//!
//! The graph: pad, then each channel alone through a fixed convolution with (m+2)² outputs and stride m (the
//! input transform Bᵀ·d·B of every tile), a Transpose to tile-position-major, the batched MatMul against the
//! transformed kernels G·w·Gᵀ (one Gemm of the stored kernels against G⊗G), a MatMul for the output transform
//! Aᵀ·M·A, a Transpose that interleaves the tiles back into rows, the crop and the bias.
//!
//! What it costs: the transformed kernels are (m+2)²/9 times the originals (1.8× for F(2,3), 4× for F(4,3)).
//! Folded at load (ONNX Runtime's constant folding) they add that much memory for good, and the fold itself holds
//! another copy while the session is built: on an SD1.5-shaped UNet, 2.2 GB more and a peak 2.2× the direct
//! graphs'. Transformed on every run instead, they cost one memory-bound Gemm per layer (writing ~1 GB per UNet
//! call for the layers up to 640 channels wide) and no memory beyond one layer's kernels at a time. The transforms
//! of the pictures are memory-bound passes that only pay off when there are many channels to share them.
//! Measured per layer shape with `tools/bench/winograd.py` and on the whole model with `tools/bench/options.py`.
//! Results differ from a direct convolution by rounding only: ~4e-7 (F(2,3)) and ~6e-6 (F(4,3)) of the output's
//! largest value.

use super::builder::{attr_int, attr_ints};
use super::layers::Net;

/// Which 3×3 convolutions [`super::GraphOptions::winograd`] computes by Winograd's method, and with which tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winograd {
    /// Layers with fewer input or output channels stay direct convolutions.
    pub min_channels: usize,
    /// Layers with more output channels stay direct convolutions (their transformed weights take the most
    /// memory).
    pub max_channels: usize,
    /// Layers with at least this many output channels use F(2×2, 3×3), narrower ones F(4×4, 3×3) (by default
    /// F(4,3) everywhere: it was faster on every SD1.5 layer measured; F(2,3) is the more exact and, with the
    /// kernels kept, the smaller choice).
    pub small_tiles_from: usize,
    /// Transform the kernels once, at load, and keep them ((m+2)²/9 times the memory of the originals), instead
    /// of on every run from the stored kernels.
    pub kernels_at_load: bool,
}

impl Winograd {
    /// The output tile size for a layer of this width, or `None` for a direct convolution.
    pub(crate) fn tile(self, in_channels: usize, out_channels: usize) -> Option<usize> {
        if in_channels.min(out_channels) < self.min_channels || out_channels > self.max_channels {
            None
        } else if out_channels >= self.small_tiles_from {
            Some(2)
        } else {
            Some(4)
        }
    }
}

/// One F(m, 3) algorithm: the input transform Bᵀ (t×t, t = m+2), the kernel transform G (t×3) and the output
/// transform Aᵀ (m×t), from Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
struct Transforms {
    m: usize,
    b_t: &'static [f64],
    g: &'static [f64],
    a_t: &'static [f64],
}

/// F(2, 3): interpolation points 0, 1, −1, ∞.
const F2: Transforms = Transforms {
    m: 2,
    b_t: &[1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0],
    g: &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0],
    a_t: &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
};

/// F(4, 3): interpolation points 0, 1, −1, 2, −2, ∞.
const F4: Transforms = Transforms {
    m: 4,
    #[rustfmt::skip]
    b_t: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    a_t: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

impl Transforms {
    fn for_tile(m: usize) -> &'static Self {
        if m == 2 { &F2 } else { &F4 }
    }

    fn t(&self) -> usize {
        self.m + 2
    }

    /// The 2-D transform of a `rows × cols` matrix `left` applied on both sides: entry `(i·rows + j, u·cols + v)`
    /// = `left[i][u] · left[j][v]`, as f32.
    fn outer(left: &[f64], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * rows * cols * cols);
        for i in 0..rows {
            for j in 0..rows {
                for u in 0..cols {
                    for v in 0..cols {
                        out.push((left[i * cols + u] * left[j * cols + v]) as f32);
                    }
                }
            }
        }
        out
    }
}

impl Net<'_> {
    /// A 3×3, stride 1, padding 1 convolution of `x` (`[B, in, H, W]`, any H and W) with `weight`
    /// (`[out, in, 3, 3]`, f32) and optional `bias`, by F(`m`×`m`, 3×3).
    pub(crate) fn winograd_conv(
        &mut self,
        x: &str,
        weight: &str,
        bias: Option<&str>,
        channels: [usize; 2],
        m: usize,
        kernels_at_load: bool,
    ) -> String {
        let [in_channels, out_channels] = channels.map(|c| c as i64);
        let f = Transforms::for_tile(m);
        let (t, m) = (f.t(), f.m as i64);
        let positions = (t * t) as i64;
        let g = &mut self.g;

        // Shapes: batch [B] and size [H, W]; the tiles cover ceil(H/m)·m rows, so pad 1 on top (the
        // convolution's own padding) and up to m more at the bottom.
        let batch = g.op("Shape", &[x], vec![attr_int("start", 0), attr_int("end", 1)]);
        let size = g.op("Shape", &[x], vec![attr_int("start", 2)]);
        let tile = g.const_i64(&[m]);
        let remainder = g.op("Mod", &[&size, &tile], vec![]);
        let missing = g.op("Sub", &[&tile, &remainder], vec![]);
        let missing = g.op("Mod", &[&missing, &tile], vec![]);
        let one = g.const_i64(&[1]);
        let end_pads = g.op("Add", &[&missing, &one], vec![]);
        let start_pads = g.const_i64(&[0, 0, 1, 1, 0, 0]);
        let pads = g.op("Concat", &[&start_pads, &end_pads], vec![attr_int("axis", 0)]);
        let padded = g.op("Pad", &[x, &pads], vec![]);

        // Input transform: every channel of every picture as its own one-channel image.
        let single = g.const_i64(&[-1, 1, 0, 0]);
        let images = g.op("Reshape", &[&padded, &single], vec![]);
        let input_kernels = g.const_f32(&[t * t, 1, t, t], &Transforms::outer(f.b_t, t, t));
        let tiles = g.op(
            "Conv",
            &[&images, &input_kernels],
            vec![attr_ints("kernel_shape", &[t as i64, t as i64]), attr_ints("strides", &[m, m])],
        );
        let tile_grid = g.op("Shape", &[&tiles], vec![attr_int("start", 2)]);
        let per_channel = g.const_i64(&[in_channels, positions, -1]);
        let split_shape = g.op("Concat", &[&batch, &per_channel], vec![attr_int("axis", 0)]);
        let split = g.op("Reshape", &[&tiles, &split_shape], vec![]);
        let by_position = g.op("Transpose", &[&split], vec![attr_ints("perm", &[2, 1, 0, 3])]);
        let matrix_shape = g.const_i64(&[positions, in_channels, -1]);
        let transformed = g.op("Reshape", &[&by_position, &matrix_shape], vec![]);

        // Kernel transform G·w·Gᵀ as [positions, out, in]: one Gemm of the 3×3 kernels as rows against the
        // Kronecker product G⊗G (a batched MatMul of 3×3 matrices here made ONNX Runtime's fold at load take 34 s
        // and 12 GiB more for an SD1.5 UNet).
        let kernel_rows = g.const_i64(&[out_channels * in_channels, 9]);
        let kernel_rows = g.op("Reshape", &[weight, &kernel_rows], vec![]);
        let mut kronecker = g.const_f32(&[t * t, 9], &Transforms::outer(f.g, t, 3));
        if !kernels_at_load {
            // A factor of 1 that depends on the input keeps ONNX Runtime from folding the transform at load.
            let zero = g.const_i64(&[0]);
            let present = g.op("Greater", &[&batch, &zero], vec![]);
            let input_dependent_one = g.op("Cast", &[&present], vec![attr_int("to", 1)]);
            kronecker = g.op("Mul", &[&kronecker, &input_dependent_one], vec![]);
        }
        let flat = g.op("Gemm", &[&kronecker, &kernel_rows], vec![attr_int("transB", 1)]);
        let kernels_shape = g.const_i64(&[positions, out_channels, in_channels]);
        let kernels = g.op("Reshape", &[&flat, &kernels_shape], vec![]);

        // One matrix multiply per tile position, then the output transform for all of them at once.
        let products = g.op("MatMul", &[&kernels, &transformed], vec![]);
        let rows_shape = g.const_i64(&[positions, -1]);
        let rows = g.op("Reshape", &[&products, &rows_shape], vec![]);
        let output_transform = g.const_f32(&[f.m * f.m, t * t], &Transforms::outer(f.a_t, f.m, t));
        let outputs = g.op("MatMul", &[&output_transform, &rows], vec![]);

        // [m, m, out, B, tiles_h, tiles_w] → [B, out, tiles_h, m, tiles_w, m] → [B, out, H', W'], cropped.
        let block = g.const_i64(&[m, m, out_channels]);
        let block_shape = g.op("Concat", &[&block, &batch, &tile_grid], vec![attr_int("axis", 0)]);
        let blocks = g.op("Reshape", &[&outputs, &block_shape], vec![]);
        let interleaved = g.op("Transpose", &[&blocks], vec![attr_ints("perm", &[3, 2, 4, 0, 5, 1])]);
        let covered = g.op("Mul", &[&tile_grid, &tile], vec![]);
        let channels = g.const_i64(&[out_channels]);
        let picture_shape = g.op("Concat", &[&batch, &channels, &covered], vec![attr_int("axis", 0)]);
        let picture = g.op("Reshape", &[&interleaved, &picture_shape], vec![]);
        let (starts, axes) = (g.const_i64(&[0, 0]), g.const_i64(&[2, 3]));
        let cropped = g.op("Slice", &[&picture, &starts, &size, &axes], vec![]);
        let Some(bias) = bias else { return cropped };
        let bias_shape = g.const_i64(&[out_channels, 1, 1]);
        let bias = g.op("Reshape", &[bias, &bias_shape], vec![]);
        g.op("Add", &[&cropped, &bias], vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 1-D correlation of `d` (length t) with `w` (3) for m outputs against Aᵀ·((G·w) ⊙ (Bᵀ·d)).
    fn check_1d(f: &Transforms) {
        let t = f.t();
        let d: Vec<f64> = (0..t).map(|i| (i as f64 * 0.37 - 0.9).sin()).collect();
        let w = [0.3, -1.1, 0.7];
        let gw: Vec<f64> = (0..t).map(|r| (0..3).map(|c| f.g[r * 3 + c] * w[c]).sum()).collect();
        let bd: Vec<f64> = (0..t).map(|r| (0..t).map(|c| f.b_t[r * t + c] * d[c]).sum()).collect();
        for i in 0..f.m {
            let fast: f64 = (0..t).map(|k| f.a_t[i * t + k] * gw[k] * bd[k]).sum();
            let direct: f64 = (0..3).map(|k| w[k] * d[i + k]).sum();
            assert!((fast - direct).abs() < 1e-12, "F({}, 3) output {i}: {fast} vs {direct}", f.m);
        }
    }

    #[test]
    fn the_transforms_compute_a_correlation() {
        check_1d(&F2);
        check_1d(&F4);
    }

    #[test]
    fn tiles_follow_the_layer_width() {
        let rule = Winograd { min_channels: 128, max_channels: 1280, small_tiles_from: 1280, kernels_at_load: true };
        assert_eq!(rule.tile(4, 320), None);
        assert_eq!(rule.tile(320, 320), Some(4));
        assert_eq!(rule.tile(2560, 1280), Some(2));
        assert_eq!(rule.tile(1280, 640), Some(4));
        assert_eq!(rule.tile(128, 3), None);
        assert_eq!(Winograd { max_channels: 640, ..rule }.tile(2560, 1280), None);
    }
}
