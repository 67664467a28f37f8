//! The CLIP text encoder: token ids in, hidden states (with A1111's clip skip) and pooled embeddings out.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayD, Ix2, Ix3};

use crate::error::{Error, Result};
use crate::onnx_proto::{LayerNorm, final_layer_norm};
use crate::options::SessionConfig;
use crate::session::{Input, OnnxModel};

/// Which hidden state becomes the conditioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayer {
    /// `last_hidden_state` (after the final layer norm).
    Last,
    /// A1111's "Clip skip" / `CLIP_stop_at_last_layers` N ≥ 1 (SD 1.x): the hidden state N − 1 layers before
    /// the last, passed through the final layer norm. 1 is the same as [`TextLayer::Last`].
    ClipSkip(u32),
    /// The penultimate layer's hidden state without the final norm (what SDXL conditions on).
    Penultimate,
}

/// What one encoder call returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoding {
    /// Hidden states `[B, S, D]` of the requested layer.
    pub hidden: Array3<f32>,
    /// Pooled embedding `[B, P]`: `text_embeds` (projected, SDXL's second encoder) or `pooler_output`.
    pub pooled: Option<Array2<f32>>,
}

/// One token position whose embedding a vector replaces (textual inversion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenReplacement<'a> {
    /// Row of the batch.
    pub row: usize,
    /// Token position in the row (0 is BOS).
    pub position: usize,
    /// The embedding, as wide as the encoder.
    pub vector: &'a [f32],
}

/// A loaded CLIP text encoder.
#[derive(Debug)]
pub struct TextEncoder {
    model: OnnxModel,
    /// `hidden_states.N` output names, index N.
    hidden_states: Vec<String>,
    pooled_output: Option<String>,
    layer_norm_eps: f32,
    final_norm: Option<LayerNorm>,
}

impl TextEncoder {
    /// Loads the encoder at `path`; `component` names it in errors, `layer_norm_eps` is the config's.
    pub fn load(component: &str, path: &Path, config: &SessionConfig, layer_norm_eps: f32) -> Result<Self> {
        let model = OnnxModel::load_with(component, path, config)?;
        Self::from_model(model, layer_norm_eps)
    }

    /// A built encoder whose final LayerNorm is known from the checkpoint (clip skip needs it).
    pub(crate) fn from_built(model: OnnxModel, final_norm: LayerNorm) -> Result<Self> {
        let mut encoder = Self::from_model(model, final_norm.epsilon)?;
        encoder.final_norm = Some(final_norm);
        Ok(encoder)
    }

    fn from_model(model: OnnxModel, layer_norm_eps: f32) -> Result<Self> {
        let component = model.component().to_owned();
        let ids = model.input("input_ids").ok_or_else(|| Error::Tensor {
            component: component.clone(),
            tensor: "input_ids".to_owned(),
            problem: format!(
                "missing: the model's inputs are {:?}",
                model.inputs().iter().map(|t| t.name.clone()).collect::<Vec<_>>()
            ),
        })?;
        if ids.rank() != 2 || !["i64", "i32"].contains(&ids.dtype.as_str()) {
            return Err(Error::Tensor {
                component,
                tensor: ids.name.clone(),
                problem: format!("expected int64/int32 [batch, 77], found {ids}"),
            });
        }
        if model.output("last_hidden_state").is_none() {
            return Err(Error::Tensor {
                component,
                tensor: "last_hidden_state".to_owned(),
                problem: "missing from the model's outputs".to_owned(),
            });
        }
        let mut indexed: Vec<(usize, String)> = model
            .output_names()
            .filter_map(|name| {
                name.strip_prefix("hidden_states.").and_then(|n| n.parse().ok()).map(|n| (n, name.to_owned()))
            })
            .collect();
        indexed.sort();
        let contiguous = indexed.iter().enumerate().all(|(i, (n, _))| i == *n);
        let hidden_states = if contiguous { indexed.into_iter().map(|(_, name)| name).collect() } else { Vec::new() };
        let pooled_output =
            ["text_embeds", "pooler_output"].into_iter().find(|name| model.output(name).is_some()).map(str::to_owned);
        Ok(Self { model, hidden_states, pooled_output, layer_norm_eps, final_norm: None })
    }

    /// The number of transformer layers, when the export has `hidden_states.N` outputs.
    pub fn layer_count(&self) -> Option<usize> {
        self.hidden_states.len().checked_sub(1)
    }

    /// Whether the export can do clip skip (it has `hidden_states.N` outputs).
    pub fn supports_clip_skip(&self) -> bool {
        self.layer_count().is_some()
    }

    /// The underlying model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// Encodes `input_ids` `[B, S]` and returns the hidden states of `layer` and the pooled embedding.
    pub fn encode(&mut self, input_ids: &Array2<i64>, layer: TextLayer) -> Result<TextEncoding> {
        self.encode_with_embeddings(input_ids, layer, &[])
    }

    /// Whether token embeddings can be replaced (textual inversion): encoders built from checkpoints can.
    pub fn supports_embeddings(&self) -> bool {
        self.model.input(crate::graph::TOKEN_EMBEDDINGS).is_some()
    }

    /// The width of a token embedding.
    pub fn embedding_width(&self) -> Option<usize> {
        let output = self.model.output("last_hidden_state")?;
        output.shape.last().and_then(|&w| usize::try_from(w).ok())
    }

    /// [`TextEncoder::encode`] with `replacements` put in place of the token table's rows (A1111's
    /// `EmbeddingsWithFixes`: after the lookup, before the position embeddings).
    pub fn encode_with_embeddings(
        &mut self,
        input_ids: &Array2<i64>,
        layer: TextLayer,
        replacements: &[TokenReplacement<'_>],
    ) -> Result<TextEncoding> {
        let _span = tracing::info_span!("models::text_encoder", component = self.model.component()).entered();
        let (hidden_name, needs_norm) = self.hidden_output(layer)?;
        let mut wanted = vec![hidden_name.clone()];
        wanted.extend(self.pooled_output.clone());
        let replaced = self.replacement_inputs(input_ids, replacements)?;
        let mut inputs = vec![("input_ids".to_owned(), Input::I64(input_ids.view().into_dyn()))];
        if let Some((vectors, mask)) = &replaced {
            inputs.push((crate::graph::TOKEN_EMBEDDINGS.to_owned(), Input::F32(vectors.view().into_dyn())));
            inputs.push((crate::graph::TOKEN_EMBEDDING_MASK.to_owned(), Input::F32(mask.view().into_dyn())));
        }
        let mut outputs = self.model.run(inputs, &wanted)?.into_iter();
        let mut hidden = self.to_rank::<Ix3>(&hidden_name, outputs.next())?;
        if needs_norm {
            let not_contiguous = self.tensor_error(&hidden_name, "is not contiguous".to_owned());
            let norm = self.final_norm()?;
            norm.apply(hidden.as_slice_mut().ok_or(not_contiguous)?);
        }
        let pooled = match &self.pooled_output {
            Some(name) => Some(self.to_rank::<Ix2>(name, outputs.next())?),
            None => None,
        };
        Ok(TextEncoding { hidden, pooled })
    }

    /// The replacement inputs of an encoder that has them (zeros where nothing is replaced).
    fn replacement_inputs(
        &self,
        input_ids: &Array2<i64>,
        replacements: &[TokenReplacement<'_>],
    ) -> Result<Option<(Array3<f32>, Array3<f32>)>> {
        if !self.supports_embeddings() {
            return match replacements {
                [] => Ok(None),
                _ => Err(self.tensor_error(
                    crate::graph::TOKEN_EMBEDDINGS,
                    "missing: textual-inversion embeddings need a model loaded from a .safetensors checkpoint"
                        .to_owned(),
                )),
            };
        }
        let (batch, sequence) = input_ids.dim();
        let width = self.embedding_width().unwrap_or(0);
        let mut vectors = Array3::<f32>::zeros((batch, sequence, width));
        let mut mask = Array3::<f32>::zeros((batch, sequence, 1));
        for replacement in replacements {
            let TokenReplacement { row, position, vector } = *replacement;
            if row >= batch || position >= sequence || vector.len() != width {
                return Err(self.tensor_error(
                    crate::graph::TOKEN_EMBEDDINGS,
                    format!(
                        "a {}-wide vector for row {row}, position {position} does not fit [{batch}, {sequence}, {width}]",
                        vector.len()
                    ),
                ));
            }
            vectors.slice_mut(ndarray::s![row, position, ..]).assign(&ndarray::ArrayView1::from(vector));
            mask[[row, position, 0]] = 1.0;
        }
        Ok(Some((vectors, mask)))
    }

    fn hidden_output(&self, layer: TextLayer) -> Result<(String, bool)> {
        let skip = match layer {
            TextLayer::Last | TextLayer::ClipSkip(0 | 1) => return Ok(("last_hidden_state".to_owned(), false)),
            TextLayer::ClipSkip(n) => n as usize,
            TextLayer::Penultimate => 2,
        };
        let Some(layers) = self.layer_count() else {
            return Err(self.tensor_error(
                "hidden_states.N",
                format!(
                    "missing: this export has no hidden_states.N outputs, so it cannot do {} (re-export with output_hidden_states=True)",
                    match layer {
                        TextLayer::Penultimate => "SDXL's penultimate-layer conditioning".to_owned(),
                        _ => format!("clip skip {skip}"),
                    }
                ),
            ));
        };
        if skip > layers + 1 {
            return Err(self.tensor_error(
                "hidden_states.N",
                format!("clip skip {skip} is more than this {layers}-layer encoder has; use 1..={}", layers + 1),
            ));
        }
        let needs_norm = !matches!(layer, TextLayer::Penultimate);
        Ok((self.hidden_states[layers + 1 - skip].clone(), needs_norm))
    }

    fn final_norm(&mut self) -> Result<&LayerNorm> {
        if self.final_norm.is_none() {
            let path = self.model.path().to_owned();
            let norm =
                final_layer_norm(&path, "last_hidden_state", self.layer_norm_eps)?.ok_or_else(|| Error::OnnxFile {
                    path: path.clone(),
                    reason:
                        "no LayerNorm found before last_hidden_state, so clip skip cannot apply the final layer norm"
                            .to_owned(),
                })?;
            let width = self.model.output("last_hidden_state").and_then(|t| t.shape.last().copied()).unwrap_or(-1);
            if width > 0 && norm.weight.len() != width as usize {
                return Err(self.tensor_error(
                    "last_hidden_state",
                    format!("final LayerNorm has {} weights but the hidden size is {width}", norm.weight.len()),
                ));
            }
            self.final_norm = Some(norm);
        }
        self.final_norm
            .as_ref()
            .ok_or_else(|| self.tensor_error("last_hidden_state", "final layer norm unavailable".to_owned()))
    }

    fn to_rank<D: ndarray::Dimension>(&self, name: &str, array: Option<ArrayD<f32>>) -> Result<ndarray::Array<f32, D>> {
        let array = array.ok_or_else(|| self.tensor_error(name, "was not returned".to_owned()))?;
        let shape = array.shape().to_vec();
        array.into_dimensionality::<D>().map_err(|_| {
            self.tensor_error(name, format!("expected rank {}, found shape {shape:?}", D::NDIM.unwrap_or(0)))
        })
    }

    fn tensor_error(&self, tensor: &str, problem: String) -> Error {
        Error::Tensor { component: self.model.component().to_owned(), tensor: tensor.to_owned(), problem }
    }
}
