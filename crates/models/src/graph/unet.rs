//! The LDM `UNetModel` (SD 1.x, SD 2.x, SDXL, 4- or 9-channel input) built from `model.diffusion_model.*`.
//!
//! The block structure is read from the keys, not from a table per family: `input_blocks.N` holds a ResBlock
//! (`.0.in_layers`), optionally followed by a SpatialTransformer (`.1.proj_in`), or a Downsample (`.0.op`);
//! `output_blocks.N` holds a ResBlock fed with the matching skip connection, then transformer and/or
//! Upsample (`.K.conv`). SD 1.x's conv `proj_in`/`proj_out` and SD 2.x/SDXL's linear ones are told apart by
//! their rank; SDXL's `label_emb` adds the pooled text embedding and the six `time_ids`.

use super::builder::{BuiltGraph, Dim, ElementType, attr_int};
use super::layers::{GraphOptions, Net};
use crate::checkpoint::Weights;
use crate::error::Result;

/// How many attention heads each transformer gets: a fixed count (SD 1.x: 8) or a fixed head width
/// (SD 2.x, SDXL: 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heads {
    Count(usize),
    Width(usize),
}

impl Heads {
    fn for_channels(self, channels: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Width(w) => (channels / w).max(1),
        }
    }
}

/// The UNet's architecture parameters that the weights do not show.
#[derive(Debug, Clone)]
pub(crate) struct UnetSpec {
    pub heads: Heads,
    pub norm_groups: usize,
    /// SDXL: the width each of the six `time_ids` is embedded with (256).
    pub time_id_width: Option<usize>,
}

const RES_NORM_EPS: f32 = 1e-5;
const TRANSFORMER_NORM_EPS: f32 = 1e-6;
const LAYER_NORM_EPS: f32 = 1e-5;

/// Builds the UNet with the optimum export's inputs (`sample`, `timestep` `[B]`, `encoder_hidden_states`,
/// SDXL's `text_embeds` and `time_ids`) and output (`out_sample`).
pub(crate) fn build(weights: Weights<'_>, spec: &UnetSpec, options: GraphOptions) -> Result<BuiltGraph> {
    let mut net = Net::new("unet", weights, options);
    let in_channels = conv_in_channels(&net)?;
    let sample = net.g.input(
        "sample",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Fixed(in_channels as i64), Dim::Named("height"), Dim::Named("width")],
    );
    let timestep = net.g.input("timestep", ElementType::F32, &[Dim::Named("batch")]);
    let context_width = context_width(&net)?;
    let context = net.g.input(
        "encoder_hidden_states",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(context_width as i64)],
    );

    let model_channels = net.w.shape("input_blocks.0.0.weight").map_or(0, |s| s[0]);
    let t_embedding = net.timestep_embedding(&timestep, model_channels);
    let (emb, emb_width) = net.linear(&t_embedding, "time_embed.0", model_channels)?;
    let emb = net.silu(&emb);
    let (mut emb, emb_width) = net.linear(&emb, "time_embed.2", emb_width)?;
    if net.w.has("label_emb.0.0.weight") {
        emb = add_label_embedding(&mut net, &emb, emb_width, spec)?;
    }
    let emb_activated = net.silu(&emb);
    let block = BlockInputs { emb: emb_activated, emb_width, context, context_width };

    let (mut h, mut channels) = net.conv(&sample, "input_blocks.0.0", in_channels, 1, [1; 4])?;
    let mut skips = vec![(h.clone(), channels)];
    let mut index = 1;
    while has_module(&net, &format!("input_blocks.{index}")) {
        (h, channels) = run_modules(&mut net, &format!("input_blocks.{index}"), &h, channels, &block, spec)?;
        skips.push((h.clone(), channels));
        index += 1;
    }
    (h, channels) = run_modules(&mut net, "middle_block", &h, channels, &block, spec)?;
    let mut index = 0;
    while has_module(&net, &format!("output_blocks.{index}")) {
        let Some((skip, skip_channels)) = skips.pop() else {
            return Err(net.w.error(
                &format!("output_blocks.{index}.0.in_layers.0.weight"),
                "there are more output blocks than input blocks to take skip connections from".to_owned(),
            ));
        };
        h = net.g.op("Concat", &[&h, &skip], vec![attr_int("axis", 1)]);
        channels += skip_channels;
        (h, channels) = run_modules(&mut net, &format!("output_blocks.{index}"), &h, channels, &block, spec)?;
        index += 1;
    }
    let normed = net.group_norm(&h, "out.0", channels, spec.norm_groups, RES_NORM_EPS)?;
    let activated = net.silu(&normed);
    let (out, out_channels) = net.conv(&activated, "out.2", channels, 1, [1; 4])?;
    net.g.output(
        &out,
        "out_sample",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Fixed(out_channels as i64), Dim::Named("height"), Dim::Named("width")],
    );
    let half = net.options.half_unet;
    let mut graph = net.g.finish(net.w.path());
    if half {
        super::half::compute_in_half(&mut graph.model, &["sample", "encoder_hidden_states"]);
    }
    Ok(graph)
}

struct BlockInputs {
    /// SiLU of the time embedding, shared by every ResBlock.
    emb: String,
    emb_width: usize,
    context: String,
    context_width: usize,
}

fn conv_in_channels(net: &Net<'_>) -> Result<usize> {
    match net.w.shape("input_blocks.0.0.weight") {
        Some(shape) if shape.len() == 4 => Ok(shape[1]),
        Some(shape) => {
            Err(net.w.error("input_blocks.0.0.weight", format!("has shape {shape:?}; expected a conv [C, in, 3, 3]")))
        }
        None => Err(net.w.error("input_blocks.0.0.weight", "is missing (the UNet's first convolution)".to_owned())),
    }
}

/// The cross-attention context width, from the first transformer's `attn2.to_k`.
fn context_width(net: &Net<'_>) -> Result<usize> {
    net.w
        .names()
        .find(|k| k.ends_with("attn2.to_k.weight"))
        .and_then(|k| net.w.shape(k))
        .map(|shape| shape[1])
        .ok_or_else(|| net.w.error("…attn2.to_k.weight", "no cross-attention layer found in the UNet".to_owned()))
}

fn has_module(net: &Net<'_>, prefix: &str) -> bool {
    net.w.has(&format!("{prefix}.0.in_layers.0.weight")) || net.w.has(&format!("{prefix}.0.op.weight"))
}

/// Runs `prefix.0`, `prefix.1`, … in order, whatever each is.
fn run_modules(
    net: &mut Net<'_>,
    prefix: &str,
    x: &str,
    channels: usize,
    block: &BlockInputs,
    spec: &UnetSpec,
) -> Result<(String, usize)> {
    let (mut h, mut channels) = (x.to_owned(), channels);
    for k in 0.. {
        let module = format!("{prefix}.{k}");
        (h, channels) = if net.w.has(&format!("{module}.in_layers.0.weight")) {
            res_block(net, &module, &h, channels, block, spec)?
        } else if net.w.has(&format!("{module}.proj_in.weight")) {
            (spatial_transformer(net, &module, &h, channels, block, spec)?, channels)
        } else if net.w.has(&format!("{module}.op.weight")) {
            net.conv(&h, &format!("{module}.op"), channels, 2, [1; 4])?
        } else if net.w.has(&format!("{module}.conv.weight")) {
            net.upsample_conv(&h, &format!("{module}.conv"), channels)?
        } else {
            break;
        };
    }
    Ok((h, channels))
}

fn res_block(
    net: &mut Net<'_>,
    p: &str,
    x: &str,
    channels: usize,
    block: &BlockInputs,
    spec: &UnetSpec,
) -> Result<(String, usize)> {
    let h = net.group_norm(x, &format!("{p}.in_layers.0"), channels, spec.norm_groups, RES_NORM_EPS)?;
    let h = net.silu(&h);
    let (h, out_channels) = net.conv(&h, &format!("{p}.in_layers.2"), channels, 1, [1; 4])?;
    let (emb, _) = net.linear(&block.emb, &format!("{p}.emb_layers.1"), block.emb_width)?;
    let axes = net.g.const_i64(&[2, 3]);
    let emb = net.g.op("Unsqueeze", &[&emb, &axes], vec![]);
    let h = net.g.op("Add", &[&h, &emb], vec![]);
    let h = net.group_norm(&h, &format!("{p}.out_layers.0"), out_channels, spec.norm_groups, RES_NORM_EPS)?;
    let h = net.silu(&h);
    let (h, _) = net.conv(&h, &format!("{p}.out_layers.3"), out_channels, 1, [1; 4])?;
    let skip = if net.w.has(&format!("{p}.skip_connection.weight")) {
        net.conv(x, &format!("{p}.skip_connection"), channels, 1, [0; 4])?.0
    } else {
        x.to_owned()
    };
    Ok((net.g.op("Add", &[&skip, &h], vec![]), out_channels))
}

fn spatial_transformer(
    net: &mut Net<'_>,
    p: &str,
    x: &str,
    channels: usize,
    block: &BlockInputs,
    spec: &UnetSpec,
) -> Result<String> {
    let normed = net.group_norm(x, &format!("{p}.norm"), channels, spec.norm_groups, TRANSFORMER_NORM_EPS)?;
    let conv_projection = net.w.shape(&format!("{p}.proj_in.weight")).is_some_and(|s| s.len() == 4);
    let (mut rows, inner) = if conv_projection {
        let (projected, inner) = net.conv(&normed, &format!("{p}.proj_in"), channels, 1, [0; 4])?;
        (net.pixels_to_rows(&projected, inner), inner)
    } else {
        let rows = net.pixels_to_rows(&normed, channels);
        net.linear(&rows, &format!("{p}.proj_in"), channels)?
    };
    if inner != channels {
        return Err(net.w.error(
            &format!("{p}.proj_in.weight"),
            format!("projects {channels} channels to {inner}; sdrt expects the same width (as every SD model has)"),
        ));
    }
    let heads = spec.heads.for_channels(inner);
    for k in 0.. {
        let prefix = format!("{p}.transformer_blocks.{k}");
        if !net.w.has(&format!("{prefix}.norm1.weight")) {
            break;
        }
        rows = transformer_block(net, &prefix, &rows, inner, heads, block)?;
    }
    let out = if conv_projection {
        let spatial = net.rows_to_pixels(&rows, x);
        net.conv(&spatial, &format!("{p}.proj_out"), inner, 1, [0; 4])?.0
    } else {
        let (projected, _) = net.linear(&rows, &format!("{p}.proj_out"), inner)?;
        net.rows_to_pixels(&projected, x)
    };
    Ok(net.g.op("Add", &[&out, x], vec![]))
}

fn transformer_block(
    net: &mut Net<'_>,
    p: &str,
    x: &str,
    width: usize,
    heads: usize,
    block: &BlockInputs,
) -> Result<String> {
    let normed = net.layer_norm(x, &format!("{p}.norm1"), width, LAYER_NORM_EPS)?;
    let self_keys = [format!("{p}.attn1.to_q"), format!("{p}.attn1.to_k"), format!("{p}.attn1.to_v")];
    let self_keys: Vec<&str> = self_keys.iter().map(String::as_str).collect();
    let qkv = net.projections(&normed, &self_keys, width)?;
    let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
    let attended = net.attention(q, k, v, heads, None);
    let (attended, _) = net.linear(&attended, &format!("{p}.attn1.to_out.0"), width)?;
    let x = net.g.op("Add", &[x, &attended], vec![]);

    let normed = net.layer_norm(&x, &format!("{p}.norm2"), width, LAYER_NORM_EPS)?;
    let (q, _) = net.linear(&normed, &format!("{p}.attn2.to_q"), width)?;
    let (kv, total) = net.linear_fused(
        &block.context,
        &[&format!("{p}.attn2.to_k"), &format!("{p}.attn2.to_v")],
        block.context_width,
    )?;
    let kv = net.split_last(&kv, &[(total / 2) as i64; 2]);
    let attended = net.attention(&q, &kv[0], &kv[1], heads, None);
    let (attended, _) = net.linear(&attended, &format!("{p}.attn2.to_out.0"), width)?;
    let x = net.g.op("Add", &[&x, &attended], vec![]);

    let normed = net.layer_norm(&x, &format!("{p}.norm3"), width, LAYER_NORM_EPS)?;
    let (projected, doubled) = net.linear(&normed, &format!("{p}.ff.net.0.proj"), width)?;
    let halves = net.split_last(&projected, &[(doubled / 2) as i64; 2]);
    let gate = net.activation(&halves[1], super::layers::Activation::Gelu);
    let gated = net.g.op("Mul", &[&halves[0], &gate], vec![]);
    let (out, _) = net.linear(&gated, &format!("{p}.ff.net.2"), doubled / 2)?;
    Ok(net.g.op("Add", &[&x, &out], vec![]))
}

/// SDXL: `emb += label_emb(concat(text_embeds, flatten(timestep_embedding(time_ids))))`.
fn add_label_embedding(net: &mut Net<'_>, emb: &str, emb_width: usize, spec: &UnetSpec) -> Result<String> {
    let input_width = net.shape("label_emb.0.0.weight", &[Some(emb_width), None])?[1];
    let time_id_width = spec.time_id_width.unwrap_or(256);
    let pooled_width = input_width.checked_sub(6 * time_id_width).filter(|w| *w > 0).ok_or_else(|| {
        net.w.error(
            "label_emb.0.0.weight",
            format!("input width {input_width} is too small for six time_ids of width {time_id_width}"),
        )
    })?;
    let text_embeds =
        net.g.input("text_embeds", ElementType::F32, &[Dim::Named("batch"), Dim::Fixed(pooled_width as i64)]);
    let time_ids = net.g.input("time_ids", ElementType::F32, &[Dim::Named("batch"), Dim::Fixed(6)]);
    let flat_ids = net.g.const_i64(&[-1]);
    let flat = net.g.op("Reshape", &[&time_ids, &flat_ids], vec![]);
    let embedded = net.timestep_embedding(&flat, time_id_width);
    let per_row = net.g.const_i64(&[-1, (6 * time_id_width) as i64]);
    let embedded = net.g.op("Reshape", &[&embedded, &per_row], vec![]);
    let label = net.g.op("Concat", &[&text_embeds, &embedded], vec![attr_int("axis", 1)]);
    let (label, width) = net.linear(&label, "label_emb.0.0", input_width)?;
    let label = net.silu(&label);
    let (label, _) = net.linear(&label, "label_emb.0.2", width)?;
    Ok(net.g.op("Add", &[emb, &label], vec![]))
}
