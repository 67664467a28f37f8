//! The layers every Stable Diffusion graph is made of, read from checkpoint weights and emitted as ONNX.
//!
//! Each layer checks the weights it reads against the width it is fed, so a checkpoint with a tensor of the
//! wrong shape fails with the tensor's name and the expected shape, not later inside ONNX Runtime.

use super::builder::{GraphBuilder, attr_float, attr_int, attr_ints, attr_string};
use super::proto::data_type;
use super::winograd::Winograd;
use crate::checkpoint::Weights;
use crate::error::Result;

/// How attention is written into the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// `com.microsoft.MultiHeadAttention` (ONNX Runtime's flash-attention path on CPU).
    MultiHead,
    /// MatMul → Softmax → MatMul with standard ops (any runtime).
    Plain,
}

/// How group normalisation is written into the graph.
///
/// Only `InstanceNorm` keeps A1111's results on nearly constant inputs (the VAE encoding a blank image for an
/// inpainting model without a mask): ONNX Runtime's `LayerNormalization` and `GroupNormalization` compute the
/// variance in one pass (E[x²] − E[x]²), which cancels catastrophically there — measured on
/// `inpaint_9ch_no_mask`: final latents 9.3e-6 (InstanceNorm), 1.6e-4 (LayerNorm), 1.2e-3 (native) × std
/// away from A1111.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupNormKind {
    /// Reshape to `[B, G, -1]`, `LayerNormalization`, then the per-channel affine.
    LayerNorm,
    /// Reshape to `[B, G, -1]`, `InstanceNormalization` (what exporters emit below opset 18); the default.
    InstanceNorm,
    /// ONNX `GroupNormalization` (opset 21).
    Native,
}

/// Switches for the graph rewrites, so each can be measured on its own (`sdrt bench --graph-option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphOptions {
    /// Attention implementation.
    pub attention: AttentionKind,
    /// Self-attention's q, k and v as one matrix multiply.
    pub fused_qkv: bool,
    /// Group norm implementation.
    pub group_norm: GroupNormKind,
    /// Linear layers as `com.microsoft.FusedMatMul` with `transB` on the stored weight, instead of MatMul on a
    /// Transpose the runtime folds (a transposed copy of every linear weight at load).
    pub transposed_matmul: bool,
    /// The UNet computes in fp16 downstream of `sample` and `encoder_hidden_states` (its inputs and output stay
    /// f32); the text encoder and VAE stay f32. For GPUs: CPUs have few fp16 kernels and run it slower.
    pub half_unet: bool,
    /// Upsamplers run their convolution at the input's size on kernels folded for each output position,
    /// instead of on the ×2 nearest-upsampled picture (see `Net::upsample_conv`).
    pub subpixel_upsample: bool,
    /// The UNet's 3×3 convolutions by Winograd's minimal filtering (see `winograd.rs`);
    /// `None`: direct convolutions only.
    pub winograd: Option<Winograd>,
    /// The VAE's, by its own rule: its widest layers run on its smallest pictures, its narrow ones on pictures
    /// so large that the tile transforms' memory traffic outweighs the multiplies saved.
    pub vae_winograd: Option<Winograd>,
}

/// The narrowest VAE convolution computed by Winograd's method. SD's decoder at 512×512 is 512 channels wide on
/// 64² and 128² pictures, 256 on 256², 128 on 512²; measured (`tools/bench/README.md`), from 256 decoded fastest
/// and from 128 slowest, slower than direct.
const VAE_WINOGRAD_MIN_CHANNELS: usize = 256;

impl Default for GraphOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKind::MultiHead,
            fused_qkv: true,
            group_norm: GroupNormKind::InstanceNorm,
            transposed_matmul: true,
            half_unet: false,
            subpixel_upsample: true,
            winograd: Some(Winograd {
                min_channels: 128,
                max_channels: 640,
                small_tiles_from: usize::MAX,
                kernels_at_load: false,
            }),
            vae_winograd: Some(Winograd {
                min_channels: VAE_WINOGRAD_MIN_CHANNELS,
                max_channels: usize::MAX,
                small_tiles_from: usize::MAX,
                kernels_at_load: false,
            }),
        }
    }
}

impl GraphOptions {
    /// These options without ONNX Runtime's contrib operators (for providers that compile standard ONNX only).
    pub fn standard_ops_only(self) -> Self {
        Self { attention: AttentionKind::Plain, transposed_matmul: false, ..self }
    }
}

/// A graph under construction together with the weights it reads.
pub(crate) struct Net<'w> {
    pub g: GraphBuilder,
    pub w: Weights<'w>,
    pub options: GraphOptions,
}

/// Activation functions used by the families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// OpenAI CLIP's x·σ(1.702x).
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

/// The ONNX element type of a stored float dtype.
fn onnx_float_type(dtype: safetensors::Dtype) -> Option<i32> {
    match dtype {
        safetensors::Dtype::F32 => Some(data_type::FLOAT),
        safetensors::Dtype::F16 => Some(data_type::FLOAT16),
        safetensors::Dtype::BF16 => Some(data_type::BFLOAT16),
        safetensors::Dtype::F64 => Some(data_type::DOUBLE),
        _ => None,
    }
}

impl<'w> Net<'w> {
    pub(crate) fn new(name: &str, w: Weights<'w>, options: GraphOptions) -> Self {
        Self { g: GraphBuilder::new(name), w, options }
    }

    /// The shape of weight `key`, checked against `expected` (`None` = any size) and for a float dtype.
    pub(crate) fn shape(&self, key: &str, expected: &[Option<usize>]) -> Result<Vec<usize>> {
        let entry = self.w.entry(key).ok_or_else(|| self.w.error(key, "is missing".to_owned()))?;
        if onnx_float_type(entry.dtype).is_none() {
            return Err(self
                .w
                .error(key, format!("has dtype {:?}; expected a float tensor (F32, F16, BF16)", entry.dtype)));
        }
        let shape = entry.shape.clone();
        let fits = shape.len() == expected.len() && shape.iter().zip(expected).all(|(s, e)| e.is_none_or(|e| *s == e));
        if !fits {
            let wanted: Vec<String> = expected.iter().map(|e| e.map_or("_".to_owned(), |e| e.to_string())).collect();
            return Err(self.w.error(key, format!("has shape {shape:?}; expected [{}]", wanted.join(", "))));
        }
        Ok(shape)
    }

    /// Weight `key` as an f32 graph value: the stored initializer, cast to f32 when stored narrower, plus any
    /// LoRA ΔW terms (constants ONNX Runtime folds into the weight when it builds the session).
    pub(crate) fn param(&mut self, key: &str, expected: &[Option<usize>]) -> Result<String> {
        let shape = self.shape(key, expected)?;
        let entry = self.w.entry(key).ok_or_else(|| self.w.error(key, "is missing".to_owned()))?;
        let data_type = onnx_float_type(entry.dtype).unwrap_or(data_type::FLOAT);
        let (start, length) = (entry.start, entry.end - entry.start);
        let stored = self.g.stored(&self.w.full_key(key), &shape, data_type, start, length);
        let mut weight =
            if data_type == data_type::FLOAT { stored } else { self.g.op("Cast", &[&stored], vec![attr_int("to", 1)]) };
        for delta in self.w.deltas(key) {
            let change = self.delta(delta, &shape);
            weight = self.g.op("Add", &[&weight, &change], vec![]);
        }
        Ok(weight)
    }

    /// ΔW · scale shaped as the weight (A1111's `finalize_updown` reshape), zero-padded on the input channels for
    /// an inpainting `conv_in`.
    fn delta(&mut self, delta: &crate::lora::Delta, weight_shape: &[usize]) -> String {
        use crate::lora::Factors;
        let change = match &delta.factors {
            Factors::LowRank(_) | Factors::Tucker(_) | Factors::Hadamard(..) => self.factors(&delta.factors),
            Factors::Kronecker(w1, w2) => self.kronecker(w1, w2),
            Factors::Full { shape, values } => self.g.const_f32(shape, values),
        };
        if delta.padding.is_empty() {
            let shaped = self.reshape(&change, weight_shape);
            let scale = self.g.const_f32(&[], &[delta.scale]);
            return self.g.op("Mul", &[&shaped, &scale], vec![]);
        }
        let own_shape = delta.shape();
        let shaped = self.reshape(&change, &own_shape);
        // ONNX Pad: every axis's leading zeros, then every axis's trailing zeros.
        let mut pads = vec![0_i64; 2 * own_shape.len()];
        for (axis, (before, after)) in delta.padding.iter().enumerate().take(own_shape.len()) {
            pads[axis] = *before as i64;
            pads[own_shape.len() + axis] = *after as i64;
        }
        let pads = self.g.const_i64(&pads);
        let padded = self.g.op("Pad", &[&shaped, &pads], vec![]);
        let shaped = self.reshape(&padded, weight_shape);
        let scale = self.g.const_f32(&[], &[delta.scale]);
        self.g.op("Mul", &[&shaped, &scale], vec![])
    }

    fn reshape(&mut self, value: &str, shape: &[usize]) -> String {
        let shape = self.g.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        self.g.op("Reshape", &[value, &shape], vec![])
    }

    /// `up @ down` of a LoRA product, `[outputs, inputs]`.
    fn product(&mut self, product: &crate::lora::Product) -> String {
        let up = self.g.const_f32(&[product.outputs, product.rank], &product.up);
        let down = self.g.const_f32(&[product.rank, product.inputs], &product.down);
        self.g.op("MatMul", &[&up, &down], vec![])
    }

    /// A low-rank, CP-decomposed or Hadamard ΔW (LoHa's halves both in the first half's shape, as A1111's
    /// `rebuild_conventional(…, output_shape)` gives them).
    fn factors(&mut self, factors: &crate::lora::Factors) -> String {
        use crate::lora::Factors;
        match factors {
            Factors::LowRank(product) => self.product(product),
            Factors::Tucker(tucker) => self.tucker(tucker),
            Factors::Hadamard(first, second) => {
                let shape = crate::lora::Delta::new_for_shape((**first).clone()).shape();
                let (first, second) = (self.factors(first), self.factors(second));
                let (first, second) = (self.reshape(&first, &shape), self.reshape(&second, &shape));
                self.g.op("Mul", &[&first, &second], vec![])
            }
            Factors::Kronecker(w1, w2) => self.kronecker(w1, w2),
            Factors::Full { shape, values } => self.g.const_f32(shape, values),
        }
    }

    /// A1111's `rebuild_cp_decomposition` (`einsum('n m k l, i n, m j -> i j k l', mid, up, down)`) as two
    /// MatMuls: `up @ mid` over n, then that against `down` over m; `[outputs, inputs, kh, kw]`.
    fn tucker(&mut self, tucker: &crate::lora::Tucker) -> String {
        let (product, mid_shape, mid) = (&tucker.product, &tucker.mid_shape, &tucker.mid);
        let (outputs, rank, inputs) = (product.outputs, product.rank, product.inputs);
        let kernel: usize = mid_shape[2..].iter().product();
        let up = self.g.const_f32(&[outputs, rank], &product.up);
        let mid = self.g.const_f32(&[rank, rank * kernel], mid);
        let down = self.g.const_f32(&[rank, inputs], &product.down);
        let up_mid = self.g.op("MatMul", &[&up, &mid], vec![]);
        let up_mid = self.reshape(&up_mid, &[outputs, rank, kernel]);
        let up_mid = self.g.op("Transpose", &[&up_mid], vec![attr_ints("perm", &[0, 2, 1])]);
        let joined = self.g.op("MatMul", &[&up_mid, &down], vec![]);
        let joined = self.g.op("Transpose", &[&joined], vec![attr_ints("perm", &[0, 2, 1])]);
        self.reshape(&joined, &[&[outputs, inputs][..], &mid_shape[2..]].concat())
    }

    /// torch's `kron(w1, w2)` for LoKr: `w1 [m, n]` against `w2 [p, q]` or `[p, q, kh, kw]` (then `w1` counts as
    /// `[m, n, 1, 1]`), as broadcasting `[m, 1, n, 1, …] * [1, p, 1, q, …]` reshaped to `[m·p, n·q, …]`.
    fn kronecker(&mut self, w1: &crate::lora::Matrix, w2: &crate::lora::Matrix) -> String {
        let (a, b) = (w1.shape(), w2.shape());
        let kernel = b.get(2..).unwrap_or(&[]).to_vec();
        let first = self.matrix(w1);
        let second = self.matrix(w2);
        let mut first_shape = vec![a[0], 1, a[1], 1];
        first_shape.extend(kernel.iter().map(|_| 1));
        let mut second_shape = vec![1, b[0], 1, b[1]];
        second_shape.extend_from_slice(&kernel);
        let first = self.reshape(&first, &first_shape);
        let second = self.reshape(&second, &second_shape);
        let product = self.g.op("Mul", &[&first, &second], vec![]);
        let mut shape = vec![a[0] * b[0], a[1] * b[1]];
        shape.extend_from_slice(&kernel);
        self.reshape(&product, &shape)
    }

    fn matrix(&mut self, matrix: &crate::lora::Matrix) -> String {
        match matrix {
            crate::lora::Matrix::Dense { shape, values } => self.g.const_f32(shape, values),
            crate::lora::Matrix::Product(product) => self.product(product),
            crate::lora::Matrix::Tucker(tucker) => self.tucker(tucker),
        }
    }

    /// A per-channel vector `[C]` reshaped to `[C, 1, 1]` for NCHW broadcasting.
    fn channel_param(&mut self, key: &str, channels: usize) -> Result<String> {
        let vector = self.param(key, &[Some(channels)])?;
        let shape = self.g.const_i64(&[channels as i64, 1, 1]);
        Ok(self.g.op("Reshape", &[&vector, &shape], vec![]))
    }

    /// `torch.nn.Linear` `{key}.weight` `[out, in]` (+ `{key}.bias`) on the last axis; returns (value, out).
    pub(crate) fn linear(&mut self, x: &str, key: &str, in_features: usize) -> Result<(String, usize)> {
        self.linear_fused(x, &[key], in_features)
    }

    /// Linears of equal width sharing input `x` (q/k/v): one MatMul split into parts when `fused_qkv` is on,
    /// else one MatMul each.
    pub(crate) fn projections(&mut self, x: &str, keys: &[&str], in_features: usize) -> Result<Vec<String>> {
        if self.options.fused_qkv && keys.len() > 1 {
            let (joined, total) = self.linear_fused(x, keys, in_features)?;
            let part = (total / keys.len()) as i64;
            return Ok(self.split_last(&joined, &vec![part; keys.len()]));
        }
        keys.iter().map(|key| self.linear(x, key, in_features).map(|(y, _)| y)).collect()
    }

    /// Several linears with the same input as one MatMul whose output is their outputs side by side.
    pub(crate) fn linear_fused(&mut self, x: &str, keys: &[&str], in_features: usize) -> Result<(String, usize)> {
        self.linear_impl(x, keys, in_features, false)
    }

    fn linear_impl(
        &mut self,
        x: &str,
        keys: &[&str],
        in_features: usize,
        pointwise_conv: bool,
    ) -> Result<(String, usize)> {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        let mut out = 0;
        for key in keys {
            // OpenCLIP's fused projection is `in_proj_weight`/`in_proj_bias`, not a submodule.
            let separator = if key.ends_with(".in_proj") { "_" } else { "." };
            let weight_key = format!("{key}{separator}weight");
            let is_conv = pointwise_conv && self.w.entry(&weight_key).is_some_and(|e| e.shape.len() == 4);
            let expected: &[Option<usize>] =
                if is_conv { &[None, Some(in_features), Some(1), Some(1)] } else { &[None, Some(in_features)] };
            let rows = self.shape(&weight_key, expected)?[0];
            let mut weight = self.param(&weight_key, expected)?;
            if is_conv {
                let matrix = self.g.const_i64(&[rows as i64, in_features as i64]);
                weight = self.g.op("Reshape", &[&weight, &matrix], vec![]);
            }
            weights.push(weight);
            let bias_key = format!("{key}{separator}bias");
            let bias = if self.w.has(&bias_key) { Some(self.param(&bias_key, &[Some(rows)])?) } else { None };
            biases.push((bias, rows));
            out += rows;
        }
        let weight = self.concat_rows(&weights);
        let mut y = if self.options.transposed_matmul {
            // x·Wᵀ straight from the stored [out, in] layout: no transposed copy is made at load.
            self.g.microsoft_op("FusedMatMul", &[x, &weight], vec![attr_int("transB", 1)])
        } else {
            let transposed = self.g.op("Transpose", &[&weight], vec![attr_ints("perm", &[1, 0])]);
            self.g.op("MatMul", &[x, &transposed], vec![])
        };
        if biases.iter().any(|b| b.0.is_some()) {
            let parts: Vec<String> = biases
                .iter()
                .map(|(bias, rows)| bias.clone().unwrap_or_else(|| self.g.const_f32(&[*rows], &vec![0.0; *rows])))
                .collect();
            let bias = self.concat_rows(&parts);
            y = self.g.op("Add", &[&y, &bias], vec![]);
        }
        Ok((y, out))
    }

    /// `parts` stacked on axis 0 (one part passes through).
    fn concat_rows(&mut self, parts: &[String]) -> String {
        if parts.len() == 1 {
            return parts[0].clone();
        }
        let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.g.op("Concat", &inputs, vec![attr_int("axis", 0)])
    }

    /// `torch.nn.Conv2d` `{key}.weight` `[out, in, k, k]` (+ bias); `pads` are top, left, bottom, right.
    pub(crate) fn conv(
        &mut self,
        x: &str,
        key: &str,
        in_channels: usize,
        stride: i64,
        pads: [i64; 4],
    ) -> Result<(String, usize)> {
        let (shape, weights) = self.conv_weights(key, &[None, Some(in_channels), None, None])?;
        let inputs: Vec<&str> = std::iter::once(x).chain(weights.iter().map(String::as_str)).collect();
        let kernel = [shape[2] as i64, shape[3] as i64];
        let winograd = self.options.winograd.filter(|_| kernel == [3, 3] && stride == 1 && pads == [1; 4]);
        if let Some(rule) = winograd
            && let Some(m) = rule.tile(in_channels, shape[0])
        {
            let bias = weights.get(1).map(String::as_str);
            let y = self.winograd_conv(x, &weights[0], bias, [in_channels, shape[0]], m, rule.kernels_at_load);
            return Ok((y, shape[0]));
        }
        let y = self.g.op(
            "Conv",
            &inputs,
            vec![attr_ints("kernel_shape", &kernel), attr_ints("strides", &[stride, stride]), attr_ints("pads", &pads)],
        );
        Ok((y, shape[0]))
    }

    /// A convolution's `{key}.weight` (checked against `expected`) and `{key}.bias` when it has one, with the
    /// weight's shape.
    fn conv_weights(&mut self, key: &str, expected: &[Option<usize>]) -> Result<(Vec<usize>, Vec<String>)> {
        let weight_key = format!("{key}.weight");
        let shape = self.shape(&weight_key, expected)?;
        let mut weights = vec![self.param(&weight_key, expected)?];
        let bias_key = format!("{key}.bias");
        if self.w.has(&bias_key) {
            weights.push(self.param(&bias_key, &[Some(shape[0])])?);
        }
        Ok((shape, weights))
    }

    /// A 1×1 convolution stored either as `[out, in, 1, 1]` or as a linear `[out, in]`, applied to `[B, S, in]`
    /// rows (the VAE's attention projections).
    pub(crate) fn pointwise_as_linear(&mut self, x: &str, keys: &[&str], channels: usize) -> Result<String> {
        let (y, out) = self.linear_impl(x, keys, channels, true)?;
        if out != channels * keys.len() {
            return Err(self.w.error(&format!("{}.weight", keys[0]), format!("expected {channels} output channels")));
        }
        Ok(y)
    }

    /// `torch.nn.GroupNorm(groups, channels, eps)` with `{key}.weight`/`{key}.bias` on NCHW input.
    pub(crate) fn group_norm(
        &mut self,
        x: &str,
        key: &str,
        channels: usize,
        groups: usize,
        eps: f32,
    ) -> Result<String> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(self.w.error(
                &format!("{key}.weight"),
                format!("{channels} channels cannot be split into {groups} groups (set sdrt.norm_groups in the .yaml)"),
            ));
        }
        if self.options.group_norm == GroupNormKind::Native {
            let gamma = self.param(&format!("{key}.weight"), &[Some(channels)])?;
            let beta = self.param(&format!("{key}.bias"), &[Some(channels)])?;
            return Ok(self.g.op(
                "GroupNormalization",
                &[x, &gamma, &beta],
                vec![attr_int("num_groups", groups as i64), attr_float("epsilon", eps)],
            ));
        }
        let gamma = self.channel_param(&format!("{key}.weight"), channels)?;
        let beta = self.channel_param(&format!("{key}.bias"), channels)?;
        let grouped_shape = self.g.const_i64(&[0, groups as i64, -1]);
        let grouped = self.g.op("Reshape", &[x, &grouped_shape], vec![]);
        let normalised = match self.options.group_norm {
            GroupNormKind::LayerNorm => {
                let one = self.g.const_f32(&[1], &[1.0]);
                let zero = self.g.const_f32(&[1], &[0.0]);
                self.g.op(
                    "LayerNormalization",
                    &[&grouped, &one, &zero],
                    vec![attr_int("axis", -1), attr_float("epsilon", eps)],
                )
            }
            GroupNormKind::InstanceNorm | GroupNormKind::Native => {
                let one = self.g.const_f32(&[groups], &vec![1.0; groups]);
                let zero = self.g.const_f32(&[groups], &vec![0.0; groups]);
                self.g.op("InstanceNormalization", &[&grouped, &one, &zero], vec![attr_float("epsilon", eps)])
            }
        };
        let shape = self.g.op("Shape", &[x], vec![]);
        let restored = self.g.op("Reshape", &[&normalised, &shape], vec![]);
        let scaled = self.g.op("Mul", &[&restored, &gamma], vec![]);
        Ok(self.g.op("Add", &[&scaled, &beta], vec![]))
    }

    /// `torch.nn.LayerNorm(width, eps)` over the last axis.
    pub(crate) fn layer_norm(&mut self, x: &str, key: &str, width: usize, eps: f32) -> Result<String> {
        let gamma = self.param(&format!("{key}.weight"), &[Some(width)])?;
        let beta = self.param(&format!("{key}.bias"), &[Some(width)])?;
        Ok(self.g.op("LayerNormalization", &[x, &gamma, &beta], vec![attr_int("axis", -1), attr_float("epsilon", eps)]))
    }

    pub(crate) fn silu(&mut self, x: &str) -> String {
        let sigmoid = self.g.op("Sigmoid", &[x], vec![]);
        self.g.op("Mul", &[x, &sigmoid], vec![])
    }

    pub(crate) fn activation(&mut self, x: &str, activation: Activation) -> String {
        match activation {
            Activation::Gelu => self.g.op("Gelu", &[x], vec![attr_string("approximate", "none")]),
            Activation::QuickGelu => {
                let k = self.g.const_f32(&[], &[1.702]);
                let scaled = self.g.op("Mul", &[x, &k], vec![]);
                let sigmoid = self.g.op("Sigmoid", &[&scaled], vec![]);
                self.g.op("Mul", &[x, &sigmoid], vec![])
            }
        }
    }

    /// Scaled dot-product attention of `q` `[B, S, H·d]` over `k`, `v` `[B, L, H·d]` with `heads` heads;
    /// `bias` is an additive `[1, 1, S, L]` mask (CLIP's causal mask).
    pub(crate) fn attention(&mut self, q: &str, k: &str, v: &str, heads: usize, bias: Option<&str>) -> String {
        match self.options.attention {
            AttentionKind::MultiHead => {
                let inputs: Vec<&str> = match bias {
                    Some(bias) => vec![q, k, v, "", "", bias],
                    None => vec![q, k, v],
                };
                self.g.microsoft_op("MultiHeadAttention", &inputs, vec![attr_int("num_heads", heads as i64)])
            }
            AttentionKind::Plain => self.plain_attention(q, k, v, heads, bias),
        }
    }

    pub(crate) fn plain_attention(&mut self, q: &str, k: &str, v: &str, heads: usize, bias: Option<&str>) -> String {
        let split_shape = self.g.const_i64(&[0, 0, heads as i64, -1]);
        let heads_first = |net: &mut Self, x: &str, perm: &[i64]| {
            let split = net.g.op("Reshape", &[x, &split_shape], vec![]);
            net.g.op("Transpose", &[&split], vec![attr_ints("perm", perm)])
        };
        let q = heads_first(self, q, &[0, 2, 1, 3]);
        let k = heads_first(self, k, &[0, 2, 3, 1]);
        let v = heads_first(self, v, &[0, 2, 1, 3]);
        // 1/sqrt(d) from the runtime head width, so the same graph works for every head size.
        let q_shape = self.g.op("Shape", &[&q], vec![]);
        let last = self.g.const_i64(&[3]);
        let end = self.g.const_i64(&[4]);
        let width = self.g.op("Slice", &[&q_shape, &last, &end], vec![]);
        let width = self.g.op("Cast", &[&width], vec![attr_int("to", 1)]);
        let scale = self.g.op("Sqrt", &[&width], vec![]);
        let scale = self.g.op("Reciprocal", &[&scale], vec![]);
        let scores = self.g.op("MatMul", &[&q, &k], vec![]);
        let mut scores = self.g.op("Mul", &[&scores, &scale], vec![]);
        if let Some(bias) = bias {
            scores = self.g.op("Add", &[&scores, bias], vec![]);
        }
        let probabilities = self.g.op("Softmax", &[&scores], vec![attr_int("axis", -1)]);
        let context = self.g.op("MatMul", &[&probabilities, &v], vec![]);
        let context = self.g.op("Transpose", &[&context], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let merged_shape = self.g.const_i64(&[0, 0, -1]);
        self.g.op("Reshape", &[&context, &merged_shape], vec![])
    }

    /// `[B, C, H, W]` → `[B, H·W, C]`.
    pub(crate) fn pixels_to_rows(&mut self, x: &str, channels: usize) -> String {
        let shape = self.g.const_i64(&[0, channels as i64, -1]);
        let flat = self.g.op("Reshape", &[x, &shape], vec![]);
        self.g.op("Transpose", &[&flat], vec![attr_ints("perm", &[0, 2, 1])])
    }

    /// `[B, H·W, C]` → the NCHW shape of `like`.
    pub(crate) fn rows_to_pixels(&mut self, x: &str, like: &str) -> String {
        let transposed = self.g.op("Transpose", &[x], vec![attr_ints("perm", &[0, 2, 1])]);
        let shape = self.g.op("Shape", &[like], vec![]);
        self.g.op("Reshape", &[&transposed, &shape], vec![])
    }

    /// An upsampler: nearest-neighbour ×2 then the 3×3 convolution `key` (padding 1), as both UNets and the
    /// VAE decoder have it.
    ///
    /// With [`GraphOptions::subpixel_upsample`] the upsampled picture is never made: each output pixel of a
    /// 2×2 block sees only 2×2 distinct input pixels, so the 3×3 kernel folds (rows and columns that land on
    /// the same input pixel summed) into four 2×2 kernels, one per position in the block, run at the input's
    /// size and interleaved by `DepthToSpace`. 16 instead of 36 multiply-adds per input pixel and channel pair;
    /// the folding is a constant subgraph ONNX Runtime evaluates once, at load.
    pub(crate) fn upsample_conv(&mut self, x: &str, key: &str, in_channels: usize) -> Result<(String, usize)> {
        if !self.options.subpixel_upsample {
            let upsampled = self.upsample_nearest(x);
            return self.conv(&upsampled, key, in_channels, 1, [1; 4]);
        }
        let (shape, weights) = self.conv_weights(key, &[None, Some(in_channels), Some(3), Some(3)])?;
        let (weight, bias) = (&weights[0], weights.get(1));
        // Row r of `fold` says which kernel rows reach input row r of a block's window: rows 0–1 serve output
        // row 0 of the block (input rows i−1, i), rows 2–3 output row 1 (input rows i, i+1).
        const FOLD: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let fold = self.g.const_f32(&[4, 3], FOLD.as_flattened());
        let transposed: Vec<f32> = (0..3).flat_map(|c| FOLD.map(|row| row[c])).collect();
        let fold_t = self.g.const_f32(&[3, 4], &transposed);
        let columns = self.g.op("MatMul", &[weight, &fold_t], vec![]);
        let folded = self.g.op("MatMul", &[&fold, &columns], vec![]);
        let axes = self.g.const_i64(&[2, 3]);
        let mut phases = Vec::with_capacity(4);
        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let starts = self.g.const_i64(&[2 * a, 2 * b]);
            let ends = self.g.const_i64(&[2 * a + 2, 2 * b + 2]);
            let kernel = self.g.op("Slice", &[&folded, &starts, &ends, &axes], vec![]);
            let mut inputs = vec![x, kernel.as_str()];
            inputs.extend(bias.map(String::as_str));
            let pads = [1 - a, 1 - b, a, b];
            phases.push(self.g.op(
                "Conv",
                &inputs,
                vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[1, 1]), attr_ints("pads", &pads)],
            ));
        }
        let phases: Vec<&str> = phases.iter().map(String::as_str).collect();
        let stacked = self.g.op("Concat", &phases, vec![attr_int("axis", 1)]);
        let y = self.g.op("DepthToSpace", &[&stacked], vec![attr_int("blocksize", 2), attr_string("mode", "DCR")]);
        Ok((y, shape[0]))
    }

    /// Nearest-neighbour ×2 upsampling (torch's `F.interpolate(scale_factor=2, mode="nearest")`).
    fn upsample_nearest(&mut self, x: &str) -> String {
        let scales = self.g.const_f32(&[4], &[1.0, 1.0, 2.0, 2.0]);
        self.g.op(
            "Resize",
            &[x, "", &scales],
            vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
        )
    }

    /// Splits the last axis into `parts` equal pieces.
    pub(crate) fn split_last(&mut self, x: &str, sizes: &[i64]) -> Vec<String> {
        let split = self.g.const_i64(sizes);
        self.g.op_n("Split", &[x, &split], sizes.len(), vec![attr_int("axis", -1)])
    }

    /// Sinusoidal embedding of `t` `[B]` with `width` channels, cos half first (`flip_sin_to_cos`, shift 0).
    pub(crate) fn timestep_embedding(&mut self, t: &str, width: usize) -> String {
        let half = width / 2;
        let ln_max_period = -(10000f64.ln() as f32);
        let freqs: Vec<f32> = (0..half).map(|i| (ln_max_period * i as f32 / half as f32).exp()).collect();
        let freqs = self.g.const_f32(&[1, half], &freqs);
        let axis = self.g.const_i64(&[1]);
        let column = self.g.op("Unsqueeze", &[t, &axis], vec![]);
        let args = self.g.op("Mul", &[&column, &freqs], vec![]);
        let cos = self.g.op("Cos", &[&args], vec![]);
        let sin = self.g.op("Sin", &[&args], vec![]);
        self.g.op("Concat", &[&cos, &sin], vec![attr_int("axis", -1)])
    }
}
