//! Which checkpoint weight a LoRA module changes, as A1111 v1.10 decides it (`networks.py`): module keys in
//! kohya's diffusers-derived form are rewritten to A1111's compvis module names
//! (`convert_diffusers_name_to_compvis`), then looked up among the checkpoint's modules, with A1111's fallbacks
//! for keys already in compvis form (`lora_unet_input_blocks_…`, `lora_te1_text_model_…`).
//!
//! A1111's rewrite assumes real Stable Diffusion's two layers per UNet level (`1 + block·3 + index`); sdrt
//! applies it unchanged, so a LoRA lands on the layers A1111 would change.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::checkpoint::Checkpoint;
use crate::folder::ModelFamily;

/// The part of a model a weight belongs to (each gets its own multiplier and session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Component {
    /// Text encoder 0, or SDXL's second (1).
    TextEncoder(usize),
    Unet,
}

/// A1111's compvis module names of a checkpoint, each with the weight it owns.
pub(crate) struct Targets {
    by_name: HashMap<String, (Component, String)>,
    /// OpenCLIP attention modules (`…_attn`), each with its fused `in_proj_weight` key.
    attention: HashMap<String, (Component, String)>,
    sd2: bool,
}

/// Where a LoRA module lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A weight of its own (`…weight` key).
    Weight(Component, String),
    /// Rows of an OpenCLIP attention's fused `in_proj_weight`: q (0), k (1) or v (2).
    InProjection(Component, String, usize),
}

/// The compvis module-name prefix A1111 gives a text encoder's weights (`cond_stage_model.wrapped.…`, or
/// `{index}_` + the embedder's modules for SDXL).
fn text_encoder_name_prefix(key_prefix: &str) -> String {
    if let Some(rest) = key_prefix.strip_prefix("conditioner.embedders.") {
        let (index, rest) = rest.split_once('.').unwrap_or((rest, ""));
        return format!("{index}_{}", rest.replace('.', "_"));
    }
    key_prefix.strip_prefix("cond_stage_model.").unwrap_or(key_prefix).replace('.', "_")
}

impl Targets {
    pub(crate) fn of(checkpoint: &Checkpoint) -> Self {
        let arch = &checkpoint.arch;
        let mut scopes = vec![(arch.unet_prefix.clone(), "diffusion_model_".to_owned(), Component::Unet)];
        for (index, encoder) in arch.text_encoders.iter().enumerate() {
            scopes.push((
                encoder.prefix.clone(),
                text_encoder_name_prefix(&encoder.prefix),
                Component::TextEncoder(index),
            ));
        }
        let mut by_name = HashMap::new();
        let mut attention = HashMap::new();
        for key in checkpoint.file.names() {
            let (module, table) = match (key.strip_suffix(".in_proj_weight"), key.strip_suffix(".weight")) {
                (Some(module), _) => (module, &mut attention),
                (None, Some(module)) => (module, &mut by_name),
                (None, None) => continue,
            };
            for (key_prefix, name_prefix, component) in &scopes {
                if let Some(rest) = module.strip_prefix(key_prefix.as_str()) {
                    let name = format!("{name_prefix}{}", rest.replace('.', "_"));
                    table.insert(name, (*component, key.to_owned()));
                }
            }
        }
        Self { by_name, attention, sd2: arch.family == ModelFamily::Sd2 }
    }

    /// The key of the OpenCLIP attention whose `out_proj` is `weight_key`, if it is one.
    pub(crate) fn attention_of_out_projection(&self, weight_key: &str) -> Option<String> {
        let in_proj = weight_key.strip_suffix(".out_proj.weight")?.to_owned() + ".in_proj_weight";
        self.attention.values().any(|(_, key)| *key == in_proj).then_some(in_proj)
    }

    /// Where LoRA module `key` (the part before the first `.`) lands, in A1111's order: the converted name, then
    /// OpenCLIP's `…_{q,k,v}_proj` as rows of the attention's `in_proj_weight`, then compvis-named keys.
    pub(crate) fn resolve(&self, key: &str) -> Option<Target> {
        let converted = convert_diffusers_name_to_compvis(key, self.sd2);
        if let Some((component, weight)) = self.by_name.get(&converted) {
            return Some(Target::Weight(*component, weight.clone()));
        }
        if let Some(captures) = X_PROJ.captures(&converted)
            && let Some((component, in_proj)) = captures.get(1).and_then(|m| self.attention.get(m.as_str()))
        {
            let slot = match captures.get(2).map(|m| m.as_str()) {
                Some("q_proj") => 0,
                Some("k_proj") => 1,
                _ => 2,
            };
            return Some(Target::InProjection(*component, in_proj.clone(), slot));
        }
        self.resolve_compvis(key).map(|(component, weight)| Target::Weight(component, weight))
    }

    /// A1111's fallbacks for keys already in compvis form.
    fn resolve_compvis(&self, key: &str) -> Option<(Component, String)> {
        let fallbacks: Vec<String> = if key.contains("lora_unet") {
            vec![key.replace("lora_unet", "diffusion_model")]
        } else if key.contains("lora_te1_text_model") {
            vec![
                key.replace("lora_te1_text_model", "0_transformer_text_model"),
                key.replace("lora_te1_text_model", "transformer_text_model"),
            ]
        } else {
            Vec::new()
        };
        fallbacks.iter().find_map(|name| self.by_name.get(name).cloned())
    }
}

/// A1111's `re_x_proj`: an OpenCLIP attention's q, k or v projection.
static X_PROJ: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(.*)_([qkv]_proj)$").expect("a valid pattern"));

static RULES: LazyLock<Vec<(Regex, Rule)>> = LazyLock::new(|| {
    [
        (r"^lora_unet_conv_in(.*)", Rule::ConvIn),
        (r"^lora_unet_conv_out(.*)", Rule::ConvOut),
        (r"^lora_unet_time_embedding_linear_(\d+)(.*)", Rule::TimeEmbedding),
        (r"^lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", Rule::Down),
        (r"^lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", Rule::Mid),
        (r"^lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", Rule::Up),
        (r"^lora_unet_down_blocks_(\d+)_downsamplers_0_conv", Rule::Downsampler),
        (r"^lora_unet_up_blocks_(\d+)_upsamplers_0_conv", Rule::Upsampler),
        (r"^lora_te_text_model_encoder_layers_(\d+)_(.+)", Rule::TextEncoder),
        (r"^lora_te2_text_model_encoder_layers_(\d+)_(.+)", Rule::TextEncoder2),
    ]
    .into_iter()
    .filter_map(|(pattern, rule)| Regex::new(pattern).ok().map(|regex| (regex, rule)))
    .collect()
});

#[derive(Debug, Clone, Copy)]
enum Rule {
    ConvIn,
    ConvOut,
    TimeEmbedding,
    Down,
    Mid,
    Up,
    Downsampler,
    Upsampler,
    TextEncoder,
    TextEncoder2,
}

/// A1111's resnet suffix table (`suffix_conversion`), applied to the whole suffix only.
fn resnet_suffix(kind: &str, suffix: &str) -> String {
    let converted = match suffix {
        "conv1" => "in_layers_2",
        "conv2" => "out_layers_3",
        "norm1" => "in_layers_0",
        "norm2" => "out_layers_0",
        "time_emb_proj" => "emb_layers_1",
        "conv_shortcut" => "skip_connection",
        other => other,
    };
    if kind == "resnets" { converted.to_owned() } else { suffix.to_owned() }
}

/// OpenCLIP's names for CLIP's layer parts (SD 2.x and SDXL's second encoder).
fn openclip_part(part: &str) -> String {
    if part.contains("mlp_fc1") {
        part.replace("mlp_fc1", "mlp_c_fc")
    } else if part.contains("mlp_fc2") {
        part.replace("mlp_fc2", "mlp_c_proj")
    } else {
        part.replace("self_attn", "attn")
    }
}

/// A1111's `convert_diffusers_name_to_compvis`: the first rule that matches rewrites the key; others pass.
pub(crate) fn convert_diffusers_name_to_compvis(key: &str, sd2: bool) -> String {
    for (regex, rule) in RULES.iter() {
        let Some(captures) = regex.captures(key) else { continue };
        let text = |i: usize| captures.get(i).map_or("", |m| m.as_str());
        let number = |i: usize| text(i).parse::<usize>().unwrap_or(0);
        let side = |kind: &str| if kind == "attentions" { 1 } else { 0 };
        return match rule {
            Rule::ConvIn => format!("diffusion_model_input_blocks_0_0{}", text(1)),
            Rule::ConvOut => format!("diffusion_model_out_2{}", text(1)),
            Rule::TimeEmbedding => {
                format!("diffusion_model_time_embed_{}{}", (number(1) * 2).saturating_sub(2), text(2))
            }
            Rule::Down => format!(
                "diffusion_model_input_blocks_{}_{}_{}",
                1 + number(1) * 3 + number(3),
                side(text(2)),
                resnet_suffix(text(2), text(4))
            ),
            Rule::Mid => {
                let block = if text(1) == "attentions" { 1 } else { number(2) * 2 };
                format!("diffusion_model_middle_block_{block}_{}", resnet_suffix(text(1), text(3)))
            }
            Rule::Up => format!(
                "diffusion_model_output_blocks_{}_{}_{}",
                number(1) * 3 + number(3),
                side(text(2)),
                resnet_suffix(text(2), text(4))
            ),
            Rule::Downsampler => format!("diffusion_model_input_blocks_{}_0_op", 3 + number(1) * 3),
            Rule::Upsampler => format!(
                "diffusion_model_output_blocks_{}_{}_conv",
                2 + number(1) * 3,
                if number(1) > 0 { 2 } else { 1 }
            ),
            Rule::TextEncoder if sd2 => {
                format!("model_transformer_resblocks_{}_{}", text(1), openclip_part(text(2)))
            }
            Rule::TextEncoder => format!("transformer_text_model_encoder_layers_{}_{}", text(1), text(2)),
            Rule::TextEncoder2 => format!("1_model_transformer_resblocks_{}_{}", text(1), openclip_part(text(2))),
        };
    }
    key.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected names are A1111 v1.10's `convert_diffusers_name_to_compvis` run in Python on the same keys.
    #[test]
    fn kohya_names_convert_as_a1111_converts_them() {
        for (key, sd2, expected) in [
            (
                "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
                false,
                "diffusion_model_input_blocks_5_1_transformer_blocks_0_attn2_to_k",
            ),
            ("lora_unet_down_blocks_2_resnets_0_conv1", false, "diffusion_model_input_blocks_7_0_in_layers_2"),
            ("lora_unet_down_blocks_0_resnets_1_time_emb_proj", false, "diffusion_model_input_blocks_2_0_emb_layers_1"),
            ("lora_unet_mid_block_attentions_0_proj_in", false, "diffusion_model_middle_block_1_proj_in"),
            ("lora_unet_mid_block_resnets_1_conv2", false, "diffusion_model_middle_block_2_out_layers_3"),
            (
                "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2",
                false,
                "diffusion_model_output_blocks_11_1_transformer_blocks_0_ff_net_2",
            ),
            (
                "lora_unet_up_blocks_1_resnets_2_conv_shortcut",
                false,
                "diffusion_model_output_blocks_5_0_skip_connection",
            ),
            ("lora_unet_down_blocks_2_downsamplers_0_conv", false, "diffusion_model_input_blocks_9_0_op"),
            ("lora_unet_up_blocks_0_upsamplers_0_conv", false, "diffusion_model_output_blocks_2_1_conv"),
            ("lora_unet_up_blocks_2_upsamplers_0_conv", false, "diffusion_model_output_blocks_8_2_conv"),
            ("lora_unet_conv_in", false, "diffusion_model_input_blocks_0_0"),
            ("lora_unet_time_embedding_linear_2", false, "diffusion_model_time_embed_2"),
            (
                "lora_te_text_model_encoder_layers_11_self_attn_out_proj",
                false,
                "transformer_text_model_encoder_layers_11_self_attn_out_proj",
            ),
            ("lora_te_text_model_encoder_layers_3_mlp_fc1", true, "model_transformer_resblocks_3_mlp_c_fc"),
            ("lora_te_text_model_encoder_layers_3_self_attn_q_proj", true, "model_transformer_resblocks_3_attn_q_proj"),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc2", false, "1_model_transformer_resblocks_0_mlp_c_proj"),
            ("lora_unet_input_blocks_4_1_proj_in", false, "lora_unet_input_blocks_4_1_proj_in"),
        ] {
            assert_eq!(convert_diffusers_name_to_compvis(key, sd2), expected, "{key}");
        }
    }

    #[test]
    fn text_encoder_prefixes_follow_a1111s_module_names() {
        assert_eq!(text_encoder_name_prefix("cond_stage_model.transformer."), "transformer_");
        assert_eq!(text_encoder_name_prefix("cond_stage_model.model."), "model_");
        assert_eq!(text_encoder_name_prefix("conditioner.embedders.0.transformer."), "0_transformer_");
        assert_eq!(text_encoder_name_prefix("conditioner.embedders.1.model."), "1_model_");
    }
}
