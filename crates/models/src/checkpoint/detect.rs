//! Architecture detection from a checkpoint's keys and shapes plus its optional sibling `.yaml` (rules in the
//! module docs of `checkpoint`).

use yaml_rust2::{Yaml, YamlLoader};

use super::file::TensorFile;
use super::sibling_yaml;
use crate::checkpoint::CheckpointOptions;
use crate::error::{Error, Result};
use crate::folder::{ModelFamily, PredictionType};
use crate::graph::{Activation, ClipNaming, ClipSpec, Heads, Pooled, UnetSpec};

/// What a checkpoint file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Text encoder(s), UNet and VAE.
    Pipeline,
    /// Only a VAE (`*.vae.safetensors`).
    Vae,
}

/// Who decided the prediction type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredictionSource {
    Override,
    Yaml,
    /// Still to be decided by A1111's one-call UNet test once the UNet is built.
    UnetTest,
    FamilyDefault,
}

/// One text encoder: its key prefix and architecture.
#[derive(Debug, Clone)]
pub(crate) struct TextEncoderArch {
    pub prefix: String,
    pub spec: ClipSpec,
}

/// Everything needed to build a checkpoint's graphs.
#[derive(Debug, Clone)]
pub(crate) struct Architecture {
    pub kind: CheckpointKind,
    pub family: ModelFamily,
    pub inpainting: bool,
    pub prediction: PredictionType,
    pub prediction_source: PredictionSource,
    pub text_encoders: Vec<TextEncoderArch>,
    pub unet_prefix: String,
    pub unet: UnetSpec,
    pub vae_prefix: String,
    pub norm_groups: usize,
    pub detected_by: Vec<String>,
}

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const XL_TEXT_1: &str = "conditioner.embedders.0.transformer.";
const XL_TEXT_2: &str = "conditioner.embedders.1.model.";
const NETWORK_MARKERS: &[&str] = &["lora_up.", "lora_down.", "lora_A.", "lora_B.", "hada_w1", "lokr_w1"];

pub(crate) fn detect(file: &TensorFile, options: CheckpointOptions) -> Result<Architecture> {
    let has = |key: &str| file.entry(key).is_some();
    let is_network_key = |k: &str| NETWORK_MARKERS.iter().any(|m| k.contains(m)) || k.ends_with(".diff");
    if let Some(key) = file.names().find(|k| is_network_key(k)) {
        return Err(file.file_error(format!(
            "is a LoRA/LyCORIS network (it has `{key}`), not a checkpoint: put it in the Lora folder and use \
             <lora:NAME:1> in the prompt"
        )));
    }
    let yaml = read_yaml(file.path())?;
    let mut detected_by = Vec::new();
    let groups = yaml_int(&yaml, &["sdrt", "norm_groups"]).unwrap_or(32);
    if !has(&format!("{UNET}input_blocks.0.0.weight")) {
        return vae_only(file, groups);
    }
    let (family, text_prefixes) =
        if has(&format!("{XL_TEXT_2}ln_final.weight")) && has(&format!("{UNET}label_emb.0.0.weight")) {
            detected_by.push(format!("{XL_TEXT_2}ln_final and label_emb → SDXL"));
            (ModelFamily::Sdxl, vec![(XL_TEXT_1, ClipNaming::Transformers), (XL_TEXT_2, ClipNaming::OpenClip)])
        } else if has(&format!("{SD2_TEXT}ln_final.weight")) {
            detected_by.push(format!("{SD2_TEXT}ln_final (OpenCLIP ViT-H) → SD 2.x"));
            (ModelFamily::Sd2, vec![(SD2_TEXT, ClipNaming::OpenClip)])
        } else if has(&format!("{SD1_TEXT}text_model.final_layer_norm.weight")) {
            detected_by.push(format!("{SD1_TEXT}text_model (OpenAI CLIP ViT-L) → SD 1.x"));
            (ModelFamily::Sd1, vec![(SD1_TEXT, ClipNaming::Transformers)])
        } else {
            return Err(file.file_error(format!(
                "has a UNet ({UNET}…) but no text encoder sdrt knows (looked for {XL_TEXT_2}ln_final.weight, \
             {SD2_TEXT}ln_final.weight, {SD1_TEXT}text_model.final_layer_norm.weight); SDXL refiners and \
             other architectures are not supported"
            )));
        };
    let in_channels = file.entry(&format!("{UNET}input_blocks.0.0.weight")).map_or(0, |e| e.shape[1]);
    let inpainting = in_channels == 9;
    if inpainting {
        detected_by.push("input_blocks.0.0 takes 9 channels → inpainting".to_owned());
    } else if in_channels != 4 {
        return Err(file.tensor_error(
            &format!("{UNET}input_blocks.0.0.weight"),
            format!("takes {in_channels} channels; expected 4 (or 9 for inpainting)"),
        ));
    }
    if !has(&format!("{VAE}decoder.conv_in.weight")) {
        return Err(file.tensor_error(
            &format!("{VAE}decoder.conv_in.weight"),
            "is missing: the checkpoint has no VAE (first_stage_model.*)".to_owned(),
        ));
    }

    let text_heads = yaml_ints(&yaml, &["sdrt", "text_encoder_heads"]);
    let mut text_encoders = Vec::new();
    for (index, (prefix, naming)) in text_prefixes.into_iter().enumerate() {
        let spec = text_encoder_spec(file, prefix, naming, family, text_heads.get(index).copied())?;
        detected_by.push(format!("{prefix}: width {}, {} layers used, {} heads", spec.width, spec.layers, spec.heads));
        text_encoders.push(TextEncoderArch { prefix: prefix.to_owned(), spec });
    }

    let unet_params = if family == ModelFamily::Sdxl {
        yaml_path(&yaml, &["model", "params", "network_config", "params"])
    } else {
        yaml_path(&yaml, &["model", "params", "unet_config", "params"])
    };
    let positive = |key: &str| unet_params.and_then(|p| p[key].as_i64()).filter(|v| *v > 0).map(|v| v as usize);
    let heads = match (positive("num_heads"), positive("num_head_channels")) {
        (Some(n), _) => Heads::Count(n),
        (None, Some(w)) => Heads::Width(w),
        (None, None) if family == ModelFamily::Sd1 => Heads::Count(8),
        (None, None) => Heads::Width(64),
    };
    let time_id_width = (family == ModelFamily::Sdxl).then(|| sdxl_time_id_width(&yaml).unwrap_or(256));
    let unet = UnetSpec { heads, norm_groups: groups, time_id_width };
    detected_by.push(format!("UNet attention heads: {heads:?}{}", if unet_params.is_some() { " (yaml)" } else { "" }));

    let yaml_prediction = yaml_path(&yaml, &["model", "params", "parameterization"]).and_then(Yaml::as_str);
    let (prediction, prediction_source) = match (options.prediction, yaml_prediction) {
        (Some(p), _) => (p, PredictionSource::Override),
        (None, Some("v")) => (PredictionType::VPrediction, PredictionSource::Yaml),
        (None, Some(_)) => (PredictionType::Epsilon, PredictionSource::Yaml),
        (None, None) if family == ModelFamily::Sd2 => (PredictionType::Epsilon, PredictionSource::UnetTest),
        (None, None) => (PredictionType::Epsilon, PredictionSource::FamilyDefault),
    };
    Ok(Architecture {
        kind: super::CheckpointKind::Pipeline,
        family,
        inpainting,
        prediction,
        prediction_source,
        text_encoders,
        unet_prefix: UNET.to_owned(),
        unet,
        vae_prefix: VAE.to_owned(),
        norm_groups: groups,
        detected_by,
    })
}

fn vae_only(file: &TensorFile, groups: usize) -> Result<Architecture> {
    let prefix = [VAE, ""].into_iter().find(|p| file.entry(&format!("{p}decoder.conv_in.weight")).is_some());
    let Some(prefix) = prefix else {
        let sample: Vec<&str> = file.names().take(5).collect();
        return Err(file.file_error(format!(
            "is not a Stable Diffusion checkpoint sdrt knows: no {UNET}input_blocks.0.0.weight (UNet) and no \
             decoder.conv_in.weight (VAE); its first keys are {sample:?}"
        )));
    };
    Ok(Architecture {
        kind: CheckpointKind::Vae,
        family: ModelFamily::Sd1,
        inpainting: false,
        prediction: PredictionType::Epsilon,
        prediction_source: PredictionSource::FamilyDefault,
        text_encoders: Vec::new(),
        unet_prefix: UNET.to_owned(),
        unet: UnetSpec { heads: Heads::Count(8), norm_groups: groups, time_id_width: None },
        vae_prefix: prefix.to_owned(),
        norm_groups: groups,
        detected_by: vec![format!("only VAE weights ({prefix}decoder.*) → standalone VAE")],
    })
}

fn text_encoder_spec(
    file: &TensorFile,
    prefix: &str,
    naming: ClipNaming,
    family: ModelFamily,
    heads: Option<i64>,
) -> Result<ClipSpec> {
    let (embedding_key, layer_key): (String, fn(usize) -> String) = match naming {
        ClipNaming::Transformers => (format!("{prefix}text_model.embeddings.token_embedding.weight"), |i| {
            format!("text_model.encoder.layers.{i}.layer_norm1.weight")
        }),
        ClipNaming::OpenClip => {
            (format!("{prefix}token_embedding.weight"), |i| format!("transformer.resblocks.{i}.ln_1.weight"))
        }
    };
    let width = match file.entry(&embedding_key) {
        Some(entry) if entry.shape.len() == 2 => entry.shape[1],
        Some(entry) => {
            return Err(
                file.tensor_error(&embedding_key, format!("has shape {:?}; expected [vocab, width]", entry.shape))
            );
        }
        None => {
            return Err(file.tensor_error(&embedding_key, "is missing (the text encoder's token embedding)".to_owned()));
        }
    };
    let stored_layers = (0..).take_while(|i| file.entry(&format!("{prefix}{}", layer_key(*i))).is_some()).count();
    // SD 2.x conditions on the penultimate layer through ln_final; its last layer is never run.
    let layers = if family == ModelFamily::Sd2 { stored_layers.saturating_sub(1) } else { stored_layers };
    if layers == 0 {
        return Err(
            file.tensor_error(&format!("{prefix}{}", layer_key(0)), "is missing: no transformer layers".to_owned())
        );
    }
    let heads = match heads {
        Some(h) if h > 0 => h as usize,
        _ => (width / 64).max(1),
    };
    Ok(ClipSpec {
        naming,
        width,
        heads,
        layers,
        activation: if naming == ClipNaming::Transformers { Activation::QuickGelu } else { Activation::Gelu },
        pooled: if family == ModelFamily::Sdxl && naming == ClipNaming::OpenClip {
            Pooled::Projected
        } else {
            Pooled::Hidden
        },
    })
}

/// SGM's `conditioner.params.emb_models[*].params.outdim` of the size/crop embedders.
fn sdxl_time_id_width(yaml: &Option<Yaml>) -> Option<usize> {
    let models = yaml_path(yaml, &["model", "params", "conditioner_config", "params", "emb_models"])?.as_vec()?;
    models.iter().find_map(|m| m["params"]["outdim"].as_i64()).filter(|v| *v > 0).map(|v| v as usize)
}

/// The image side a checkpoint was trained at, when its sibling `.yaml` says so: LDM configs give the latent
/// side as `model.params.image_size` (64 for SD 1.x and SD 2.x base, 96 for SD 2.x 768-v); pixels are 8× that.
/// A missing or unreadable `.yaml` says nothing (A1111's 512 applies).
pub fn native_image_size(checkpoint: &std::path::Path) -> Option<u32> {
    let yaml = read_yaml(checkpoint).ok()?;
    let latent_side = yaml_int(&yaml, &["model", "params", "image_size"])?;
    u32::try_from(latent_side).ok()?.checked_mul(8)
}

fn read_yaml(checkpoint: &std::path::Path) -> Result<Option<Yaml>> {
    let path = sibling_yaml(checkpoint);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let mut docs = YamlLoader::load_from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        field: "(yaml)".to_owned(),
        problem: e.to_string(),
    })?;
    Ok(if docs.is_empty() { None } else { Some(docs.remove(0)) })
}

fn yaml_path<'y>(yaml: &'y Option<Yaml>, keys: &[&str]) -> Option<&'y Yaml> {
    let mut node = yaml.as_ref()?;
    for key in keys {
        node = &node[*key];
        if node.is_badvalue() {
            return None;
        }
    }
    Some(node)
}

fn yaml_int(yaml: &Option<Yaml>, keys: &[&str]) -> Option<usize> {
    yaml_path(yaml, keys)?.as_i64().filter(|v| *v > 0).map(|v| v as usize)
}

fn yaml_ints(yaml: &Option<Yaml>, keys: &[&str]) -> Vec<i64> {
    yaml_path(yaml, keys)
        .and_then(Yaml::as_vec)
        .map(|v| v.iter().filter_map(Yaml::as_i64).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::native_image_size;

    #[test]
    fn the_native_size_is_the_yaml_latent_side_times_eight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint = dir.path().join("model.safetensors");
        assert_eq!(native_image_size(&checkpoint), None, "no yaml says nothing");
        let yaml = dir.path().join("model.yaml");
        std::fs::write(&yaml, "model:\n  params:\n    parameterization: v\n    image_size: 96\n").expect("write");
        assert_eq!(native_image_size(&checkpoint), Some(768));
        std::fs::write(&yaml, "model:\n  params:\n    unet_config:\n      params:\n        image_size: 32\n")
            .expect("write");
        assert_eq!(native_image_size(&checkpoint), None, "the UNet's own image_size is LDM's unused legacy field");
        std::fs::write(&yaml, "model: [unclosed").expect("write");
        assert_eq!(native_image_size(&checkpoint), None);
    }
}
