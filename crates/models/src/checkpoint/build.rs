//! From a detected checkpoint to what the rest of sdrt uses: a [`ModelFolder`] description, built sessions
//! for each component, and `sdrt convert`'s optimum-layout folder.

use std::path::Path;
use std::sync::Arc;

use super::{Checkpoint, CheckpointKind, PredictionSource, TensorFile, Weights};
use crate::error::{Error, Result};
use crate::folder::{ModelFamily, ModelFolder, PredictionType, SchedulerConfig, TokenizerFiles};
use crate::graph::{self, BuiltGraph, GraphOptions};
use crate::lora::WeightDeltas;
use crate::onnx_proto::LayerNorm;
use crate::options::SessionConfig;
use crate::session::OnnxModel;
use crate::text_encoder::TextEncoder;
use crate::unet::Unet;
use crate::vae::{VaeDecoder, VaeEncoder};

/// A1111's LDM training schedule, which every SD checkpoint shares.
fn ldm_scheduler(prediction: PredictionType) -> SchedulerConfig {
    SchedulerConfig {
        class_name: "LDM (checkpoint)".to_owned(),
        beta_schedule: "scaled_linear".to_owned(),
        beta_start: 0.00085,
        beta_end: 0.012,
        num_train_timesteps: 1000,
        steps_offset: 1,
        prediction_type: prediction,
        timestep_spacing: "leading".to_owned(),
    }
}

/// The model description of a checkpoint holding a whole pipeline, loadable through it.
pub(crate) fn model_folder(checkpoint: Arc<Checkpoint>) -> Result<ModelFolder> {
    Ok(ModelFolder { checkpoint: Some(checkpoint.clone()), ..describe(&checkpoint)? })
}

/// The model description of a checkpoint holding a whole pipeline.
fn describe(checkpoint: &Checkpoint) -> Result<ModelFolder> {
    let arch = &checkpoint.arch;
    let path = checkpoint.path().to_owned();
    if arch.kind == CheckpointKind::Vae {
        return Err(checkpoint
            .file
            .file_error("is a standalone VAE, not a model: select it as the VAE (--vae) of a checkpoint".to_owned()));
    }
    let tokenizer = |pad: &str| TokenizerFiles { dir: path.clone(), pad_token: pad.to_owned(), bundled: true };
    let (tokenizer_1, tokenizer_2) = match arch.family {
        ModelFamily::Sd1 => (tokenizer("<|endoftext|>"), None),
        ModelFamily::Sd2 => (tokenizer("!"), None),
        ModelFamily::Sdxl => (tokenizer("<|endoftext|>"), Some(tokenizer("!"))),
    };
    let mut detected_by = arch.detected_by.clone();
    detected_by.push(match arch.prediction_source {
        PredictionSource::Override => format!("prediction {} (--prediction)", arch.prediction),
        PredictionSource::Yaml => format!("prediction {} ({})", arch.prediction, super::sibling_yaml(&path).display()),
        PredictionSource::UnetTest => "prediction decided at load by A1111's SD 2.x UNet test".to_owned(),
        PredictionSource::FamilyDefault => format!("prediction {} (family default)", arch.prediction),
    });
    Ok(ModelFolder {
        root: path.clone(),
        family: arch.family,
        inpainting: arch.inpainting,
        scheduler: ldm_scheduler(arch.prediction),
        vae_scaling_factor: if arch.family == ModelFamily::Sdxl { 0.13025 } else { 0.18215 },
        text_encoder: Some(path.clone()),
        text_encoder_2: (arch.family == ModelFamily::Sdxl).then(|| path.clone()),
        unet: path.clone(),
        vae_encoder: Some(path.clone()),
        vae_decoder: path.clone(),
        tokenizer: Some(tokenizer_1),
        tokenizer_2,
        text_encoder_layer_norm_eps: [1e-5; 2],
        detected_by,
        checkpoint: None,
    })
}

impl Checkpoint {
    /// The graph of text encoder `index` (0, or 1 for SDXL's second) and its final LayerNorm, with `deltas`
    /// (LoRA ΔW terms) added to the weights they name.
    pub(crate) fn text_encoder_graph(
        &self,
        index: usize,
        options: GraphOptions,
        deltas: Option<&WeightDeltas>,
        embedding_inputs: bool,
    ) -> Result<(BuiltGraph, LayerNorm)> {
        let arch = self
            .arch
            .text_encoders
            .get(index)
            .ok_or_else(|| self.file.file_error(format!("has no text encoder {}", index + 1)))?;
        let weights = Weights::new(&self.file, &arch.prefix).with_deltas(deltas);
        graph::build_text_encoder(weights, &arch.spec, options, embedding_inputs)
    }

    pub(crate) fn unet_graph(&self, options: GraphOptions, deltas: Option<&WeightDeltas>) -> Result<BuiltGraph> {
        let weights = Weights::new(&self.file, &self.arch.unet_prefix).with_deltas(deltas);
        graph::build_unet(weights, &self.arch.unet, options)
    }

    pub(crate) fn vae_encoder_graph(&self, options: GraphOptions) -> Result<BuiltGraph> {
        graph::build_vae_encoder(Weights::new(&self.file, &self.arch.vae_prefix), self.arch.norm_groups, options)
    }

    pub(crate) fn vae_decoder_graph(&self, options: GraphOptions) -> Result<BuiltGraph> {
        graph::build_vae_decoder(Weights::new(&self.file, &self.arch.vae_prefix), self.arch.norm_groups, options)
    }

    pub(crate) fn load_text_encoder(
        &self,
        index: usize,
        config: &SessionConfig,
        deltas: Option<&WeightDeltas>,
    ) -> Result<TextEncoder> {
        let component = if index == 0 { "text_encoder" } else { "text_encoder_2" };
        let (graph, norm) = self.text_encoder_graph(index, config.graph_options(), deltas, true)?;
        TextEncoder::from_built(OnnxModel::from_graph(component, self.path(), graph, config)?, norm)
    }

    pub(crate) fn load_unet(&self, config: &SessionConfig, deltas: Option<&WeightDeltas>) -> Result<Unet> {
        let graph = self.unet_graph(config.graph_options(), deltas)?;
        Unet::from_model(OnnxModel::from_graph("unet", self.path(), graph, config)?)
    }

    pub(crate) fn load_vae_encoder(&self, config: &SessionConfig) -> Result<VaeEncoder> {
        let graph = self.vae_encoder_graph(config.graph_options())?;
        VaeEncoder::from_model(OnnxModel::from_graph("vae_encoder", self.path(), graph, config)?)
    }

    pub(crate) fn load_vae_decoder(&self, config: &SessionConfig) -> Result<VaeDecoder> {
        let graph = self.vae_decoder_graph(config.graph_options())?;
        VaeDecoder::from_model(OnnxModel::from_graph("vae_decoder", self.path(), graph, config)?)
    }

    /// Whether the prediction type still has to be decided by [`Unet`]'s A1111 test.
    pub(crate) fn needs_prediction_test(&self) -> bool {
        self.arch.prediction_source == PredictionSource::UnetTest
    }

    /// Writes the checkpoint as an optimum-layout ONNX folder (`model_index.json`, `scheduler/`,
    /// `tokenizer/`, one `model.onnx` + `model.onnx_data` per component) into `out`.
    pub fn convert(&self, out: &Path, options: GraphOptions) -> Result<()> {
        let _span = tracing::info_span!("models::convert", out = %out.display()).entered();
        let mut folder = describe(self)?;
        if self.needs_prediction_test() {
            let v = self.load_unet(&SessionConfig::default(), None)?.a1111_v_prediction_test()?;
            folder.scheduler.prediction_type = if v { PredictionType::VPrediction } else { PredictionType::Epsilon };
        }
        let xl = folder.family == ModelFamily::Sdxl;
        let write = |component: &str, graph: BuiltGraph| write_component(out, component, &graph, &self.file);
        // Converted folders keep optimum's inputs, for other ONNX tools.
        let (text, _) = self.text_encoder_graph(0, options, None, false)?;
        write("text_encoder", text)?;
        if xl {
            write("text_encoder_2", self.text_encoder_graph(1, options, None, false)?.0)?;
        }
        write("unet", self.unet_graph(options, None)?)?;
        write("vae_encoder", self.vae_encoder_graph(options)?)?;
        write("vae_decoder", self.vae_decoder_graph(options)?)?;
        write_configs(out, &folder)
    }
}

fn write_component(out: &Path, component: &str, graph: &BuiltGraph, file: &TensorFile) -> Result<()> {
    let dir = out.join(component);
    graph
        .write_folder(&dir, |start, end, writer| file.copy_range(start, end, writer))
        .map_err(|e| Error::File { path: dir.clone(), reason: format!("writing the converted model: {e}") })
}

fn write_configs(out: &Path, folder: &ModelFolder) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| Error::File { path: path.to_owned(), reason: e.to_string() };
    let write_json = |relative: &str, value: serde_json::Value| -> Result<()> {
        let path = out.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))
    };
    let xl = folder.family == ModelFamily::Sdxl;
    let onnx = serde_json::json!(["diffusers", "OnnxRuntimeModel"]);
    let mut index = serde_json::json!({
        "_class_name": if xl { "ORTStableDiffusionXLPipeline" } else { "ORTStableDiffusionPipeline" },
        "scheduler": ["diffusers", if xl { "EulerDiscreteScheduler" } else { "PNDMScheduler" }],
        "text_encoder": onnx, "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": onnx, "vae_decoder": onnx, "vae_encoder": onnx,
    });
    if xl {
        index["text_encoder_2"] = onnx.clone();
        index["tokenizer_2"] = serde_json::json!(["transformers", "CLIPTokenizer"]);
    }
    write_json("model_index.json", index)?;
    let s = &folder.scheduler;
    write_json(
        "scheduler/scheduler_config.json",
        serde_json::json!({
            "_class_name": if xl { "EulerDiscreteScheduler" } else { "PNDMScheduler" },
            "beta_schedule": s.beta_schedule, "beta_start": s.beta_start, "beta_end": s.beta_end,
            "num_train_timesteps": s.num_train_timesteps, "steps_offset": s.steps_offset,
            "prediction_type": s.prediction_type.to_string(), "timestep_spacing": s.timestep_spacing,
            "skip_prk_steps": true, "set_alpha_to_one": false,
        }),
    )?;
    write_json(
        "vae_decoder/config.json",
        serde_json::json!({"_class_name": "AutoencoderKL", "scaling_factor": folder.vae_scaling_factor}),
    )?;
    write_json(
        "vae_encoder/config.json",
        serde_json::json!({"_class_name": "AutoencoderKL", "scaling_factor": folder.vae_scaling_factor}),
    )?;
    if folder.inpainting {
        write_json("unet/config.json", serde_json::json!({"_class_name": "UNet2DConditionModel", "in_channels": 9}))?;
    }
    let tokenizers: Vec<(&str, &TokenizerFiles)> =
        [("tokenizer", &folder.tokenizer), ("tokenizer_2", &folder.tokenizer_2)]
            .into_iter()
            .filter_map(|(name, t)| t.as_ref().map(|t| (name, t)))
            .collect();
    for (name, tokenizer) in tokenizers {
        crate::tokenizer::write_bundled(&out.join(name), &tokenizer.pad_token)?;
    }
    Ok(())
}
