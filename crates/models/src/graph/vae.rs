//! The KL-f8 autoencoder's encoder (image → `latent_parameters`, mean and log-variance, `quant_conv`
//! included) and decoder (`latent_sample` → image, `post_quant_conv` included), built from LDM keys
//! (`encoder.down.N.block.M`, `decoder.up.N.block.M`, `mid.attn_1`).

use super::builder::{BuiltGraph, Dim, ElementType};
use super::layers::{GraphOptions, Net};
use crate::checkpoint::Weights;
use crate::error::Result;

const NORM_EPS: f32 = 1e-6;

/// The VAE's graph options: its own Winograd rule (`GraphOptions::vae_winograd`) in place of the UNet's.
fn vae_options(options: GraphOptions) -> GraphOptions {
    GraphOptions { winograd: options.vae_winograd, ..options }
}

/// Builds the encoder: `sample` `[B, 3, H, W]` → `latent_parameters` `[B, 2·z, H/8, W/8]`.
pub(crate) fn build_encoder(weights: Weights<'_>, norm_groups: usize, options: GraphOptions) -> Result<BuiltGraph> {
    let mut net = Net::new("vae_encoder", weights, vae_options(options));
    let image_channels = net.shape("encoder.conv_in.weight", &[None, None, Some(3), Some(3)])?[1];
    let x = net.g.input(
        "sample",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Fixed(image_channels as i64), Dim::Named("height"), Dim::Named("width")],
    );
    let (mut h, mut channels) = net.conv(&x, "encoder.conv_in", image_channels, 1, [1; 4])?;
    let mut level = 0;
    while net.w.has(&format!("encoder.down.{level}.block.0.conv1.weight")) {
        let mut block = 0;
        while net.w.has(&format!("encoder.down.{level}.block.{block}.conv1.weight")) {
            (h, channels) =
                resnet(&mut net, &format!("encoder.down.{level}.block.{block}"), &h, channels, norm_groups)?;
            block += 1;
        }
        let downsample = format!("encoder.down.{level}.downsample.conv");
        if net.w.has(&format!("{downsample}.weight")) {
            // LDM pads right and bottom only, then convolves with stride 2.
            (h, channels) = net.conv(&h, &downsample, channels, 2, [0, 0, 1, 1])?;
        }
        level += 1;
    }
    (h, channels) = middle(&mut net, "encoder.mid", &h, channels, norm_groups)?;
    let h = net.group_norm(&h, "encoder.norm_out", channels, norm_groups, NORM_EPS)?;
    let h = net.silu(&h);
    let (h, moments) = net.conv(&h, "encoder.conv_out", channels, 1, [1; 4])?;
    let (h, moments) = net.conv(&h, "quant_conv", moments, 1, [0; 4])?;
    net.g.output(
        &h,
        "latent_parameters",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Fixed(moments as i64), Dim::Named("latent_height"), Dim::Named("latent_width")],
    );
    Ok(net.g.finish(net.w.path()))
}

/// Builds the decoder: `latent_sample` `[B, z, h, w]` → `sample` `[B, 3, 8h, 8w]`.
pub(crate) fn build_decoder(weights: Weights<'_>, norm_groups: usize, options: GraphOptions) -> Result<BuiltGraph> {
    let mut net = Net::new("vae_decoder", weights, vae_options(options));
    let latent_channels = net.shape("post_quant_conv.weight", &[None, None, Some(1), Some(1)])?[1];
    let z = net.g.input(
        "latent_sample",
        ElementType::F32,
        &[
            Dim::Named("batch"),
            Dim::Fixed(latent_channels as i64),
            Dim::Named("latent_height"),
            Dim::Named("latent_width"),
        ],
    );
    let (h, channels) = net.conv(&z, "post_quant_conv", latent_channels, 1, [0; 4])?;
    let (h, channels) = net.conv(&h, "decoder.conv_in", channels, 1, [1; 4])?;
    let (mut h, mut channels) = middle(&mut net, "decoder.mid", &h, channels, norm_groups)?;
    let levels = (0..).take_while(|l| net.w.has(&format!("decoder.up.{l}.block.0.conv1.weight"))).count();
    for level in (0..levels).rev() {
        let mut block = 0;
        while net.w.has(&format!("decoder.up.{level}.block.{block}.conv1.weight")) {
            (h, channels) = resnet(&mut net, &format!("decoder.up.{level}.block.{block}"), &h, channels, norm_groups)?;
            block += 1;
        }
        let upsample = format!("decoder.up.{level}.upsample.conv");
        if net.w.has(&format!("{upsample}.weight")) {
            (h, channels) = net.upsample_conv(&h, &upsample, channels)?;
        }
    }
    let h = net.group_norm(&h, "decoder.norm_out", channels, norm_groups, NORM_EPS)?;
    let h = net.silu(&h);
    let (image, image_channels) = net.conv(&h, "decoder.conv_out", channels, 1, [1; 4])?;
    net.g.output(
        &image,
        "sample",
        ElementType::F32,
        &[Dim::Named("batch"), Dim::Fixed(image_channels as i64), Dim::Named("height"), Dim::Named("width")],
    );
    Ok(net.g.finish(net.w.path()))
}

fn middle(net: &mut Net<'_>, p: &str, x: &str, channels: usize, groups: usize) -> Result<(String, usize)> {
    let (h, channels) = resnet(net, &format!("{p}.block_1"), x, channels, groups)?;
    let h = attention_block(net, &format!("{p}.attn_1"), &h, channels, groups)?;
    resnet(net, &format!("{p}.block_2"), &h, channels, groups)
}

fn resnet(net: &mut Net<'_>, p: &str, x: &str, channels: usize, groups: usize) -> Result<(String, usize)> {
    let h = net.group_norm(x, &format!("{p}.norm1"), channels, groups, NORM_EPS)?;
    let h = net.silu(&h);
    let (h, out_channels) = net.conv(&h, &format!("{p}.conv1"), channels, 1, [1; 4])?;
    let h = net.group_norm(&h, &format!("{p}.norm2"), out_channels, groups, NORM_EPS)?;
    let h = net.silu(&h);
    let (h, _) = net.conv(&h, &format!("{p}.conv2"), out_channels, 1, [1; 4])?;
    let skip = if net.w.has(&format!("{p}.nin_shortcut.weight")) {
        net.conv(x, &format!("{p}.nin_shortcut"), channels, 1, [0; 4])?.0
    } else if net.w.has(&format!("{p}.conv_shortcut.weight")) {
        net.conv(x, &format!("{p}.conv_shortcut"), channels, 1, [1; 4])?.0
    } else {
        x.to_owned()
    };
    Ok((net.g.op("Add", &[&skip, &h], vec![]), out_channels))
}

/// Single-head self-attention over all pixels, q/k/v/proj_out stored as 1×1 convolutions (or linears).
fn attention_block(net: &mut Net<'_>, p: &str, x: &str, channels: usize, groups: usize) -> Result<String> {
    let normed = net.group_norm(x, &format!("{p}.norm"), channels, groups, NORM_EPS)?;
    let rows = net.pixels_to_rows(&normed, channels);
    let (q, k, v) = if net.options.fused_qkv {
        let keys = [format!("{p}.q"), format!("{p}.k"), format!("{p}.v")];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let qkv = net.pointwise_as_linear(&rows, &keys, channels)?;
        let parts = net.split_last(&qkv, &[channels as i64; 3]);
        (parts[0].clone(), parts[1].clone(), parts[2].clone())
    } else {
        let q = net.pointwise_as_linear(&rows, &[&format!("{p}.q")], channels)?;
        let k = net.pointwise_as_linear(&rows, &[&format!("{p}.k")], channels)?;
        let v = net.pointwise_as_linear(&rows, &[&format!("{p}.v")], channels)?;
        (q, k, v)
    };
    // One 512-wide head over every pixel: ONNX Runtime's MultiHeadAttention is slower than plain MatMul/Softmax
    // at that head size (measured: VAE decode 26.4 s vs 20.7 s at 512×512, tools/bench/README.md).
    let attended = net.plain_attention(&q, &k, &v, 1, None);
    let projected = net.pointwise_as_linear(&attended, &[&format!("{p}.proj_out")], channels)?;
    let spatial = net.rows_to_pixels(&projected, x);
    Ok(net.g.op("Add", &[x, &spatial], vec![]))
}
