//! Every component of a model folder loaded into sessions, checked against the detected family.

use crate::error::{Error, Result};
use crate::folder::{ModelFamily, ModelFolder};
use crate::options::{ExecutionProvider, SessionConfig};
use crate::text_encoder::TextEncoder;
use crate::tokenizer::ClipTokenizer;
use crate::unet::Unet;
use crate::vae::{VaeDecoder, VaeEncoder};

/// A loaded Stable Diffusion model: tokenizers, encoders, UNet and VAE.
#[derive(Debug)]
pub struct LoadedModel {
    /// The folder and what was detected in it.
    pub folder: ModelFolder,
    /// `tokenizer/`.
    pub tokenizer: Option<ClipTokenizer>,
    /// `tokenizer_2/` (SDXL).
    pub tokenizer_2: Option<ClipTokenizer>,
    /// `text_encoder/`.
    pub text_encoder: Option<TextEncoder>,
    /// `text_encoder_2/` (SDXL).
    pub text_encoder_2: Option<TextEncoder>,
    /// `unet/`.
    pub unet: Unet,
    /// `vae_encoder/` (img2img, inpainting).
    pub vae_encoder: Option<VaeEncoder>,
    /// `vae_decoder/`.
    pub vae_decoder: VaeDecoder,
    /// The execution provider every session runs on.
    pub provider: ExecutionProvider,
}

impl LoadedModel {
    /// Loads every component of `folder` with `config`, then checks the sessions agree with the detected family
    /// (an SDXL folder whose UNet lacks `text_embeds`, or the reverse, is an error).
    pub fn load(folder: ModelFolder, config: &SessionConfig) -> Result<Self> {
        let _span = tracing::info_span!("models::load_model", model = %folder.name()).entered();
        let [eps_1, eps_2] = folder.text_encoder_layer_norm_eps;
        let text_encoder = match &folder.text_encoder {
            Some(path) => Some(TextEncoder::load("text_encoder", path, config, eps_1)?),
            None => None,
        };
        let text_encoder_2 = match &folder.text_encoder_2 {
            Some(path) => Some(TextEncoder::load("text_encoder_2", path, config, eps_2)?),
            None => None,
        };
        let unet = Unet::load(&folder.unet, config)?;
        let vae_encoder = match &folder.vae_encoder {
            Some(path) => Some(VaeEncoder::load(path, config)?),
            None => None,
        };
        let vae_decoder = VaeDecoder::load(&folder.vae_decoder, config)?;
        let tokenizer = folder.tokenizer.as_ref().map(ClipTokenizer::load).transpose()?;
        let tokenizer_2 = folder.tokenizer_2.as_ref().map(ClipTokenizer::load).transpose()?;
        let mut folder = folder;
        check_unet_family(&mut folder, &unet)?;
        Ok(Self {
            folder,
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae_encoder,
            vae_decoder,
            provider: config.provider,
        })
    }
}

fn check_unet_family(folder: &mut ModelFolder, unet: &Unet) -> Result<()> {
    let is_xl = folder.family == ModelFamily::Sdxl;
    if is_xl != unet.takes_sdxl_conditioning() {
        return Err(Error::Family {
            folder: folder.root.clone(),
            problem: if is_xl {
                "the configs say SDXL, but unet/model.onnx does not take text_embeds and time_ids".to_owned()
            } else {
                format!("the configs say {}, but unet/model.onnx takes SDXL's text_embeds and time_ids", folder.family)
            },
        });
    }
    match (folder.inpainting, unet.in_channels()) {
        (false, Some(9)) => {
            folder.inpainting = true;
            folder.detected_by.push("unet session input sample has 9 channels → inpainting".to_owned());
        }
        (true, Some(channels)) if channels != 9 => {
            return Err(Error::Family {
                folder: folder.root.clone(),
                problem: format!(
                    "unet/config.json says in_channels 9 (inpainting) but the model's sample input has {channels}"
                ),
            });
        }
        _ => {}
    }
    Ok(())
}
