//! ONNX graphs built in Rust from checkpoint weights: CLIP text encoders, the UNet and the VAE, written as
//! ONNX protobuf with the weights as external data (in memory when loading, `model.onnx_data` when
//! converting).

mod builder;
mod clip;
mod half;
mod layers;
mod proto;
mod unet;
mod vae;
mod winograd;

pub(crate) use builder::BuiltGraph;
pub(crate) use clip::{
    ClipNaming, ClipSpec, Pooled, TOKEN_EMBEDDING_MASK, TOKEN_EMBEDDINGS, build as build_text_encoder,
};
pub(crate) use layers::Activation;
pub use layers::{AttentionKind, GraphOptions, GroupNormKind};
pub(crate) use unet::{Heads, UnetSpec, build as build_unet};
pub(crate) use vae::{build_decoder as build_vae_decoder, build_encoder as build_vae_encoder};
pub use winograd::Winograd;
