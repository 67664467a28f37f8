//! A1111's prompt conditioning: 75-token chunks with emphasis multipliers (`tokenize_line`), CLIP encoding
//! per chunk index with emphasis and clip skip (`forward` / `process_tokens`), SDXL's two encoders, and the
//! per-prompt schedules of `get_learned_conditioning` / `get_multicond_learned_conditioning`.

mod chunks;
mod conditioner;
mod emphasis;
mod encoder;

pub use chunks::{
    CHUNK_TOKENS, COMMA_PADDING_BACKTRACK, PromptChunk, PromptTokenizer, TextualInversion, TokenEmbedding,
    TokenizedPrompt, tokenize_prompt, tokenize_prompt_with_embeddings,
};
pub use conditioner::{Cond, Conditioner, PromptSchedule};
pub use emphasis::Emphasis;
pub use encoder::{ClipTextEncoder, Embedder, EncodedText, TextEncoder, TokenVectors};

#[cfg(test)]
mod tests;
