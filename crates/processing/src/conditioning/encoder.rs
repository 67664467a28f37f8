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

/// Vectors that replace the token embeddings of one row from `position` on (textual inversion).
#[derive(Debug, Clone, Copy)]
pub struct TokenVectors<'a> {
    /// Row of the `[n, 77]` batch.
    pub row: usize,
    /// First position replaced (1 is the first after BOS).
    pub position: usize,
    /// `[vectors, width]`.
    pub vectors: ndarray::ArrayView2<'a, f32>,
}

/// A text encoder over batches of 77-token rows.
pub trait TextEncoder {
    /// Encodes `input_ids` `[n, 77]`.
    fn encode(&mut self, input_ids: ArrayView2<'_, i64>) -> Result<EncodedText>;

    /// Encodes with `replacements` in place of token embeddings; encoders that cannot replace them refuse.
    fn encode_with_embeddings(
        &mut self,
        input_ids: ArrayView2<'_, i64>,
        replacements: &[TokenVectors<'_>],
    ) -> Result<EncodedText> {
        if replacements.is_empty() {
            return self.encode(input_ids);
        }
        Err(Error::InvalidParameter {
            field: "embeddings",
            problem: "this text encoder cannot take textual-inversion embeddings".to_owned(),
        })
    }
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
        self.encode_with_embeddings(input_ids, &[])
    }

    fn encode_with_embeddings(
        &mut self,
        input_ids: ArrayView2<'_, i64>,
        replacements: &[TokenVectors<'_>],
    ) -> Result<EncodedText> {
        let rows: Vec<sdrt_models::TokenReplacement<'_>> = replacements
            .iter()
            .flat_map(|r| {
                r.vectors.outer_iter().enumerate().map(move |(i, vector)| sdrt_models::TokenReplacement {
                    row: r.row,
                    position: r.position + i,
                    vector: vector.to_slice().unwrap_or(&[]),
                })
            })
            .collect();
        let encoding = self
            .encoder
            .encode_with_embeddings(&input_ids.to_owned(), self.layer, &rows)
            .map_err(|source| Error::Model { stage: "conditioning::encode", source })?;
        Ok(EncodedText { hidden: encoding.hidden, pooled: if self.pooled { encoding.pooled } else { None } })
    }
}

/// One CLIP of a model: its tokenizer, encoder and textual-inversion embeddings (SD1/SD2 have one, SDXL two).
pub struct Embedder<'a> {
    pub(crate) tokenizer: &'a dyn PromptTokenizer,
    pub(crate) encoder: Box<dyn TextEncoder + 'a>,
    pub(crate) embeddings: Vec<super::TokenEmbedding>,
}

impl<'a> Embedder<'a> {
    /// Pairs a tokenizer with its encoder.
    pub fn new(tokenizer: &'a dyn PromptTokenizer, encoder: Box<dyn TextEncoder + 'a>) -> Self {
        Self { tokenizer, encoder, embeddings: Vec::new() }
    }

    /// The textual-inversion embeddings prompts may name, with this encoder's vectors.
    pub fn with_embeddings(mut self, embeddings: Vec<super::TokenEmbedding>) -> Self {
        self.embeddings = embeddings;
        self
    }
}

impl std::fmt::Debug for Embedder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("pad_id", &self.tokenizer.pad_id()).finish_non_exhaustive()
    }
}
