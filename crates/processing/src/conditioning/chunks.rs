//! A1111's `tokenize_line`: a prompt becomes 77-token chunks (BOS + 75 + EOS) with a weight per token.

use crate::prompt::{WeightedText, parse_attention};
use crate::{Emphasis, Error, Result};

/// Prompt tokens per chunk, BOS and EOS not counted.
pub const CHUNK_TOKENS: usize = 75;
/// A1111's `comma_padding_backtrack` default: when a chunk overflows and its last comma is at most this many
/// tokens back, the tokens after the comma move to the next chunk.
pub const COMMA_PADDING_BACKTRACK: usize = 20;

/// Tokenization as the conditioning stage needs it; implemented for [`sdrt_models::ClipTokenizer`].
pub trait PromptTokenizer {
    /// Token ids of each fragment, without BOS/EOS.
    fn tokenize(&self, fragments: &[&str]) -> Result<Vec<Vec<u32>>>;
    /// `<|startoftext|>`.
    fn bos_id(&self) -> u32;
    /// `<|endoftext|>`.
    fn eos_id(&self) -> u32;
    /// The id every position after the first EOS gets (EOS itself for SD1, `!` = 0 for OpenCLIP).
    fn pad_id(&self) -> u32;
    /// The id of `,` as a word.
    fn comma_id(&self) -> u32;
}

impl PromptTokenizer for sdrt_models::ClipTokenizer {
    fn tokenize(&self, fragments: &[&str]) -> Result<Vec<Vec<u32>>> {
        sdrt_models::ClipTokenizer::tokenize(self, fragments)
            .map_err(|source| Error::Model { stage: "conditioning::tokenize", source })
    }

    fn bos_id(&self) -> u32 {
        sdrt_models::ClipTokenizer::bos_id(self)
    }

    fn eos_id(&self) -> u32 {
        sdrt_models::ClipTokenizer::eos_id(self)
    }

    fn pad_id(&self) -> u32 {
        sdrt_models::ClipTokenizer::pad_id(self)
    }

    fn comma_id(&self) -> u32 {
        sdrt_models::ClipTokenizer::comma_id(self)
    }
}

/// A textual-inversion embedding as one text encoder sees it: the token ids its name tokenizes to (how A1111
/// finds it in a prompt) and the vectors that replace them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEmbedding {
    /// The name as written in prompts (the file stem).
    pub name: String,
    /// Its name's token ids, without BOS/EOS.
    pub ids: Vec<u32>,
    /// `[vectors, width]`: one row per token position it fills.
    pub vectors: std::sync::Arc<ndarray::Array2<f32>>,
}

/// A textual-inversion embedding of a model: its name and, per text encoder (SDXL: CLIP-L then CLIP-G), the
/// vectors `[vectors, width]` that replace its name's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TextualInversion {
    /// The name prompts use (the file stem).
    pub name: String,
    /// One matrix per text encoder of the model.
    pub vectors: Vec<std::sync::Arc<ndarray::Array2<f32>>>,
}

/// One CLIP input of 77 positions and the emphasis weight of each (1 for BOS, EOS and padding).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    /// BOS, up to 75 prompt tokens, EOS, then padding; 77 ids.
    pub tokens: Vec<u32>,
    /// One weight per position.
    pub multipliers: Vec<f32>,
    /// A1111's `PromptChunkFix`es: (offset after BOS, index of the embedding) whose vectors replace the token
    /// embeddings from `offset + 1` on.
    pub fixes: Vec<(usize, usize)>,
}

impl PromptChunk {
    /// A1111's `empty_chunk` (BOS then EOS everywhere) with the tokenizer's padding rule applied.
    pub fn empty(tokenizer: &dyn PromptTokenizer) -> Self {
        let mut tokens = vec![tokenizer.eos_id(); CHUNK_TOKENS + 2];
        tokens[0] = tokenizer.bos_id();
        pad_after_first_eos(&mut tokens, tokenizer);
        Self { tokens, multipliers: vec![1.0; CHUNK_TOKENS + 2], fixes: Vec::new() }
    }
}

/// A prompt as chunks, with A1111's displayed token count.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    /// At least one chunk.
    pub chunks: Vec<PromptChunk>,
    /// A1111's token count (75 per closed chunk, the used tokens of the last one).
    pub token_count: usize,
}

/// A1111's `tokenize_line` followed by `process_tokens`' padding rule: weighted fragments (unless
/// `emphasis` is [`Emphasis::None`]), 75 tokens per chunk with comma backtracking, `BREAK` closing a chunk,
/// padding with EOS, BOS/EOS around each chunk, and every position after the first EOS set to the pad id.
pub fn tokenize_prompt(tokenizer: &dyn PromptTokenizer, text: &str, emphasis: Emphasis) -> Result<TokenizedPrompt> {
    tokenize_prompt_with_embeddings(tokenizer, text, emphasis, &[])
}

/// [`tokenize_prompt`] that also finds `embeddings` by their names' tokens, A1111's
/// `find_embedding_at_position` (the longest name starting with the token wins, within one emphasis
/// fragment): each fills as many positions as it has vectors, moving whole to the next chunk when it does not
/// fit, and is recorded as a fix of its chunk.
pub fn tokenize_prompt_with_embeddings(
    tokenizer: &dyn PromptTokenizer,
    text: &str,
    emphasis: Emphasis,
    embeddings: &[TokenEmbedding],
) -> Result<TokenizedPrompt> {
    let fragments = if emphasis.parses_attention() {
        parse_attention(text)?
    } else {
        vec![WeightedText { text: text.to_owned(), weight: 1.0 }]
    };
    let texts: Vec<&str> = fragments.iter().map(|f| f.text.as_str()).collect();
    let ids = tokenizer.tokenize(&texts)?;
    if ids.len() != fragments.len() {
        return Err(Error::InvalidParameter {
            field: "tokenizer",
            problem: format!("returned {} token lists for {} prompt fragments", ids.len(), fragments.len()),
        });
    }
    let mut builder = ChunkBuilder::new(tokenizer);
    for (fragment, ids) in fragments.iter().zip(&ids) {
        if fragment.is_break() {
            builder.close_chunk(false);
            continue;
        }
        let mut position = 0;
        while position < ids.len() {
            match find_embedding(embeddings, &ids[position..]) {
                Some(index) => {
                    builder.push_embedding(ids[position], index, embeddings[index].vectors.nrows(), fragment.weight);
                    position += embeddings[index].ids.len();
                }
                None => {
                    builder.push(ids[position], fragment.weight);
                    position += 1;
                }
            }
        }
    }
    Ok(builder.finish())
}

/// The embedding whose name's ids start `ids`, the longest first (A1111's `ids_lookup` order).
fn find_embedding(embeddings: &[TokenEmbedding], ids: &[u32]) -> Option<usize> {
    embeddings
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.ids.is_empty() && ids.starts_with(&e.ids))
        .max_by_key(|(index, e)| (e.ids.len(), std::cmp::Reverse(*index)))
        .map(|(index, _)| index)
}

/// The state of `tokenize_line`'s loop.
struct ChunkBuilder<'t> {
    tokenizer: &'t dyn PromptTokenizer,
    chunks: Vec<PromptChunk>,
    tokens: Vec<u32>,
    weights: Vec<f64>,
    fixes: Vec<(usize, usize)>,
    last_comma: Option<usize>,
    token_count: usize,
}

impl<'t> ChunkBuilder<'t> {
    fn new(tokenizer: &'t dyn PromptTokenizer) -> Self {
        Self {
            tokenizer,
            chunks: Vec::new(),
            tokens: Vec::with_capacity(CHUNK_TOKENS),
            weights: Vec::with_capacity(CHUNK_TOKENS),
            fixes: Vec::new(),
            last_comma: None,
            token_count: 0,
        }
    }

    fn push(&mut self, id: u32, weight: f64) {
        self.make_room(id);
        self.tokens.push(id);
        self.weights.push(weight);
    }

    /// An embedding at a token whose id is `first_id`: placeholder ids 0, one per vector, moved whole to the
    /// next chunk when they do not fit in this one.
    fn push_embedding(&mut self, first_id: u32, index: usize, vectors: usize, weight: f64) {
        self.make_room(first_id);
        if self.tokens.len() + vectors > CHUNK_TOKENS {
            self.close_chunk(false);
        }
        self.fixes.push((self.tokens.len(), index));
        self.tokens.extend(std::iter::repeat_n(0, vectors));
        self.weights.extend(std::iter::repeat_n(weight, vectors));
    }

    /// The comma backtrack and full-chunk rules that run before every token; moved tokens leave their fixes
    /// behind, as A1111's do.
    fn make_room(&mut self, id: u32) {
        if id == self.tokenizer.comma_id() {
            self.last_comma = Some(self.tokens.len());
        } else if let Some(comma) = self
            .last_comma
            .filter(|&comma| self.tokens.len() == CHUNK_TOKENS && self.tokens.len() - comma <= COMMA_PADDING_BACKTRACK)
        {
            let moved_tokens = self.tokens.split_off(comma + 1);
            let moved_weights = self.weights.split_off(comma + 1);
            self.close_chunk(false);
            self.tokens = moved_tokens;
            self.weights = moved_weights;
        }
        // A comma arriving on a full chunk also lands here: it opens the next chunk, and the comma
        // position is forgotten, as in A1111.
        if self.tokens.len() == CHUNK_TOKENS {
            self.close_chunk(false);
        }
    }

    /// A1111's `next_chunk`: the last chunk counts its used tokens, every other one a full 75.
    fn close_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last { self.tokens.len() } else { CHUNK_TOKENS };
        let (eos, bos) = (self.tokenizer.eos_id(), self.tokenizer.bos_id());
        let mut tokens = Vec::with_capacity(CHUNK_TOKENS + 2);
        tokens.push(bos);
        tokens.append(&mut self.tokens);
        tokens.resize(CHUNK_TOKENS + 1, eos);
        tokens.push(eos);
        pad_after_first_eos(&mut tokens, self.tokenizer);
        let mut multipliers = Vec::with_capacity(CHUNK_TOKENS + 2);
        multipliers.push(1.0);
        multipliers.extend(self.weights.drain(..).map(|w| w as f32));
        multipliers.resize(CHUNK_TOKENS + 2, 1.0);
        let fixes = std::mem::take(&mut self.fixes);
        self.chunks.push(PromptChunk { tokens, multipliers, fixes });
        self.last_comma = None;
    }

    fn finish(mut self) -> TokenizedPrompt {
        if !self.tokens.is_empty() || self.chunks.is_empty() {
            self.close_chunk(true);
        }
        TokenizedPrompt { chunks: self.chunks, token_count: self.token_count }
    }
}

/// `process_tokens` for tokenizers whose pad differs from EOS (OpenCLIP): everything after the first EOS.
fn pad_after_first_eos(tokens: &mut [u32], tokenizer: &dyn PromptTokenizer) {
    let (eos, pad) = (tokenizer.eos_id(), tokenizer.pad_id());
    if eos == pad {
        return;
    }
    if let Some(first) = tokens.iter().position(|&t| t == eos) {
        tokens[first + 1..].fill(pad);
    }
}
