//! CLIP text encoders: OpenAI CLIP ViT-L (transformers key names) and OpenCLIP ViT-H / ViT-bigG (fused
//! `in_proj`, `text_projection`), with the outputs of an optimum export: `last_hidden_state`,
//! `hidden_states.0..N` (clip skip), and `pooler_output` or `text_embeds`.

use super::builder::{BuiltGraph, Dim, ElementType, attr_int};
use super::layers::{Activation, GraphOptions, Net};
use crate::checkpoint::Weights;
use crate::error::Result;
use crate::onnx_proto::LayerNorm;

/// Which naming scheme a text encoder's weights use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClipNaming {
    /// transformers' `CLIPTextModel` (`text_model.encoder.layers.N.self_attn.q_proj`), OpenAI CLIP ViT-L.
    Transformers,
    /// OpenCLIP (`transformer.resblocks.N.attn.in_proj_weight`), ViT-H (SD 2.x) and ViT-bigG (SDXL).
    OpenClip,
}

/// What the built encoder returns as its pooled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooled {
    /// `pooler_output`: the final-normed hidden state at the first end-of-text token.
    Hidden,
    /// `text_embeds`: the same, projected by `text_projection` (SDXL's second encoder).
    Projected,
}

/// A text encoder's architecture as read from its weights (and, for heads, the rules in `checkpoint::detect`).
#[derive(Debug, Clone)]
pub(crate) struct ClipSpec {
    pub naming: ClipNaming,
    pub width: usize,
    pub heads: usize,
    /// Layers built into the graph (SD 2.x drops OpenCLIP's last, which it never uses).
    pub layers: usize,
    pub activation: Activation,
    pub pooled: Pooled,
}

/// CLIP's causal mask uses the most negative float (transformers' `finfo.min`), not −∞.
const MASKED: f32 = f32::MIN;
const LAYER_NORM_EPS: f32 = 1e-5;

/// Inputs that replace token embeddings (textual inversion): `[batch, sequence, width]` vectors, and a
/// `[batch, sequence, 1]` mask that is 1 where they replace the token table's row (A1111's `EmbeddingsWithFixes`:
/// after the lookup, before the position embeddings).
pub(crate) const TOKEN_EMBEDDINGS: &str = "token_embeddings";
pub(crate) const TOKEN_EMBEDDING_MASK: &str = "token_embedding_mask";

/// Builds the encoder (with the [`TOKEN_EMBEDDINGS`] inputs when `embedding_inputs`); also returns its final
/// LayerNorm, which clip skip applies to earlier hidden states.
pub(crate) fn build(
    weights: Weights<'_>,
    spec: &ClipSpec,
    options: GraphOptions,
    embedding_inputs: bool,
) -> Result<(BuiltGraph, LayerNorm)> {
    let mut net = Net::new("text_encoder", weights, options);
    let names = KeyNames::new(spec.naming);
    let ids = net.g.input("input_ids", ElementType::I64, &[Dim::Named("batch"), Dim::Named("sequence")]);
    let width = spec.width;

    let vocab_shape = net.shape(names.token_embedding, &[None, Some(width)])?;
    let token_table = net.param(names.token_embedding, &[Some(vocab_shape[0]), Some(width)])?;
    let mut tokens = net.g.op("Gather", &[&token_table, &ids], vec![attr_int("axis", 0)]);
    if embedding_inputs {
        let batch_seq = |last: i64| [Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(last)];
        let vectors = net.g.input(TOKEN_EMBEDDINGS, ElementType::F32, &batch_seq(width as i64));
        let mask = net.g.input(TOKEN_EMBEDDING_MASK, ElementType::F32, &batch_seq(1));
        // tokens · (1 − mask) + vectors · mask: exact for a 0/1 mask.
        let one = net.g.const_f32(&[], &[1.0]);
        let keep = net.g.op("Sub", &[&one, &mask], vec![]);
        let kept = net.g.op("Mul", &[&tokens, &keep], vec![]);
        let replaced = net.g.op("Mul", &[&vectors, &mask], vec![]);
        tokens = net.g.op("Add", &[&kept, &replaced], vec![]);
    }
    let position_shape = net.shape(names.position_embedding, &[None, Some(width)])?;
    let positions = net.param(names.position_embedding, &[Some(position_shape[0]), Some(width)])?;
    let ids_shape = net.g.op("Shape", &[&ids], vec![]);
    let (one, two, zero) = (net.g.const_i64(&[1]), net.g.const_i64(&[2]), net.g.const_i64(&[0]));
    let length = net.g.op("Slice", &[&ids_shape, &one, &two], vec![]);
    let positions = net.g.op("Slice", &[&positions, &zero, &length, &zero], vec![]);
    let mut x = net.g.op("Add", &[&tokens, &positions], vec![]);

    let mask = causal_mask(&mut net, position_shape[0], &length);
    let mut hidden_states = vec![x.clone()];
    for layer in 0..spec.layers {
        x = encoder_layer(&mut net, &x, &names.layer(layer), spec, &mask)?;
        hidden_states.push(x.clone());
    }
    let final_norm = read_final_norm(&net, names.final_norm, width)?;
    let last = net.layer_norm(&x, names.final_norm, width, LAYER_NORM_EPS)?;

    let pooled = pool_at_first_eos(&mut net, &last, &ids);
    let batch_seq_width = [Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(width as i64)];
    net.g.output(&last, "last_hidden_state", ElementType::F32, &batch_seq_width);
    match spec.pooled {
        Pooled::Hidden => {
            net.g.output(&pooled, "pooler_output", ElementType::F32, &[Dim::Named("batch"), Dim::Fixed(width as i64)])
        }
        Pooled::Projected => {
            let shape = net.shape(names.text_projection, &[Some(width), None])?;
            let projection = net.param(names.text_projection, &[Some(width), Some(shape[1])])?;
            let embeds = net.g.op("MatMul", &[&pooled, &projection], vec![]);
            net.g.output(&embeds, "text_embeds", ElementType::F32, &[Dim::Named("batch"), Dim::Fixed(shape[1] as i64)]);
        }
    }
    for (i, state) in hidden_states.iter().enumerate() {
        net.g.output(state, &format!("hidden_states.{i}"), ElementType::F32, &batch_seq_width);
    }
    Ok((net.g.finish(net.w.path()), final_norm))
}

fn encoder_layer(net: &mut Net<'_>, x: &str, keys: &LayerKeys, spec: &ClipSpec, mask: &str) -> Result<String> {
    let width = spec.width;
    let normed = net.layer_norm(x, &keys.norm_1, width, LAYER_NORM_EPS)?;
    let qkv = match spec.naming {
        ClipNaming::Transformers => net.projections(&normed, &[&keys.q, &keys.k, &keys.v], width)?,
        ClipNaming::OpenClip => {
            // OpenCLIP stores q, k, v stacked in one [3·width, width] matrix: already one multiply.
            let (qkv, _) = net.linear_fused(&normed, &[keys.in_proj.as_str()], width)?;
            net.split_last(&qkv, &[width as i64; 3])
        }
    };
    let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
    let attended = net.attention(q, k, v, spec.heads, Some(mask));
    let (attended, _) = net.linear(&attended, &keys.out, width)?;
    let x = net.g.op("Add", &[x, &attended], vec![]);
    let normed = net.layer_norm(&x, &keys.norm_2, width, LAYER_NORM_EPS)?;
    let (hidden, inner) = net.linear(&normed, &keys.fc_1, width)?;
    let hidden = net.activation(&hidden, spec.activation);
    let (hidden, _) = net.linear(&hidden, &keys.fc_2, inner)?;
    Ok(net.g.op("Add", &[&x, &hidden], vec![]))
}

/// `[1, 1, S, S]`: 0 on and below the diagonal, the most negative float above, cut to the input length.
fn causal_mask(net: &mut Net<'_>, max_length: usize, length: &str) -> String {
    let mut values = vec![0.0f32; max_length * max_length];
    for row in 0..max_length {
        for column in row + 1..max_length {
            values[row * max_length + column] = MASKED;
        }
    }
    let full = net.g.const_f32(&[1, 1, max_length, max_length], &values);
    let ends = net.g.op("Concat", &[length, length], vec![attr_int("axis", 0)]);
    let starts = net.g.const_i64(&[0, 0]);
    let axes = net.g.const_i64(&[2, 3]);
    net.g.op("Slice", &[&full, &starts, &ends, &axes], vec![])
}

/// The hidden state at each row's first maximal token id: the end-of-text token, the highest id in CLIP's
/// vocabulary (transformers' and OpenCLIP's `argmax` pooling).
fn pool_at_first_eos(net: &mut Net<'_>, hidden: &str, ids: &str) -> String {
    // ArgMax on float ids: token ids are below 2^24, exact in f32.
    let ids = net.g.op("Cast", &[ids], vec![attr_int("to", 1)]);
    let position = net.g.op("ArgMax", &[&ids], vec![attr_int("axis", 1), attr_int("keepdims", 1)]);
    net.g.op("GatherND", &[hidden, &position], vec![attr_int("batch_dims", 1)])
}

fn read_final_norm(net: &Net<'_>, key: &str, width: usize) -> Result<LayerNorm> {
    net.shape(&format!("{key}.weight"), &[Some(width)])?;
    net.shape(&format!("{key}.bias"), &[Some(width)])?;
    let (_, weight) = net.w.f32(&format!("{key}.weight"))?;
    let (_, bias) = net.w.f32(&format!("{key}.bias"))?;
    Ok(LayerNorm { weight, bias, epsilon: LAYER_NORM_EPS })
}

struct KeyNames {
    naming: ClipNaming,
    token_embedding: &'static str,
    position_embedding: &'static str,
    final_norm: &'static str,
    text_projection: &'static str,
}

struct LayerKeys {
    norm_1: String,
    norm_2: String,
    q: String,
    k: String,
    v: String,
    in_proj: String,
    out: String,
    fc_1: String,
    fc_2: String,
}

impl KeyNames {
    fn new(naming: ClipNaming) -> Self {
        match naming {
            ClipNaming::Transformers => Self {
                naming,
                token_embedding: "text_model.embeddings.token_embedding.weight",
                position_embedding: "text_model.embeddings.position_embedding.weight",
                final_norm: "text_model.final_layer_norm",
                text_projection: "text_projection.weight",
            },
            ClipNaming::OpenClip => Self {
                naming,
                token_embedding: "token_embedding.weight",
                position_embedding: "positional_embedding",
                final_norm: "ln_final",
                text_projection: "text_projection",
            },
        }
    }

    fn layer(&self, i: usize) -> LayerKeys {
        match self.naming {
            ClipNaming::Transformers => {
                let p = format!("text_model.encoder.layers.{i}");
                LayerKeys {
                    norm_1: format!("{p}.layer_norm1"),
                    norm_2: format!("{p}.layer_norm2"),
                    q: format!("{p}.self_attn.q_proj"),
                    k: format!("{p}.self_attn.k_proj"),
                    v: format!("{p}.self_attn.v_proj"),
                    in_proj: String::new(),
                    out: format!("{p}.self_attn.out_proj"),
                    fc_1: format!("{p}.mlp.fc1"),
                    fc_2: format!("{p}.mlp.fc2"),
                }
            }
            ClipNaming::OpenClip => {
                let p = format!("transformer.resblocks.{i}");
                LayerKeys {
                    norm_1: format!("{p}.ln_1"),
                    norm_2: format!("{p}.ln_2"),
                    q: String::new(),
                    k: String::new(),
                    v: String::new(),
                    in_proj: format!("{p}.attn.in_proj"),
                    out: format!("{p}.attn.out_proj"),
                    fc_1: format!("{p}.mlp.c_fc"),
                    fc_2: format!("{p}.mlp.c_proj"),
                }
            }
        }
    }
}
