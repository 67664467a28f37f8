//! Text encoders as the conditioning stage sees them: token ids in, hidden states and pooled vectors out.

use ndarray::{Array2, Array3, ArrayView2};
use sdrt_models::TextLayer;

use super::chunks::PromptTokenizer;
use crate::{Error, Result};

/// What one encoder call returns.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// Hidden states `[n, 77, D]` of the layer the encoder was set up for.
    pub hidden: Array3<f32>,
    /// Pooled embedding `[n, P]` when this encoder provides the pooled conditioning (SDXL's second one).
    pub pooled: Option<Array2<f32>>,
}

/// A text encoder over batches of 77-token rows.
pub trait TextEncoder {
    /// Encodes `input_ids` `[n, 77]`.
    fn encode(&mut self, input_ids: ArrayView2<'_, i64>) -> Result<EncodedText>;
}

/// [`TextEncoder`] over an ONNX CLIP text encoder from `sdrt-models`, at a fixed layer (clip skip).
#[derive(Debug)]
pub struct ClipTextEncoder<'a> {
    encoder: &'a mut sdrt_models::TextEncoder,
    layer: TextLayer,
    pooled: bool,
}

impl<'a> ClipTextEncoder<'a> {
    /// Encodes at `layer` (SD1: `ClipSkip(n)`, SD2: `ClipSkip(n)`, SDXL: `Penultimate` for both encoders).
    ///
    /// The pooled output is passed on only when the export has the projected `text_embeds` (SDXL's second
    /// encoder); A1111 ignores `pooler_output` of SD1/SD2 and of SDXL's first encoder.
    pub fn new(encoder: &'a mut sdrt_models::TextEncoder, layer: TextLayer) -> Self {
        let pooled = encoder.model().outputs().iter().any(|output| output.name == "text_embeds");
        Self { encoder, layer, pooled }
    }

    /// Overrides whether the pooled output is passed on.
    pub fn with_pooled(mut self, pooled: bool) -> Self {
        self.pooled = pooled;
        self
    }
}

impl TextEncoder for ClipTextEncoder<'_> {
    fn encode(&mut self, input_ids: ArrayView2<'_, i64>) -> Result<EncodedText> {
        let encoding = self
            .encoder
            .encode(&input_ids.to_owned(), self.layer)
            .map_err(|source| Error::Model { stage: "conditioning::encode", source })?;
        Ok(EncodedText { hidden: encoding.hidden, pooled: if self.pooled { encoding.pooled } else { None } })
    }
}

/// One CLIP of a model: its tokenizer and encoder (SD1/SD2 have one, SDXL two).
pub struct Embedder<'a> {
    pub(crate) tokenizer: &'a dyn PromptTokenizer,
    pub(crate) encoder: Box<dyn TextEncoder + 'a>,
}

impl<'a> Embedder<'a> {
    /// Pairs a tokenizer with its encoder.
    pub fn new(tokenizer: &'a dyn PromptTokenizer, encoder: Box<dyn TextEncoder + 'a>) -> Self {
        Self { tokenizer, encoder }
    }
}

impl std::fmt::Debug for Embedder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("pad_id", &self.tokenizer.pad_id()).finish_non_exhaustive()
    }
}
