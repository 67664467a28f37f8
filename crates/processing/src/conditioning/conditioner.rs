//! A1111's `forward` over one or two CLIPs and its `get_learned_conditioning` schedules, with a cache.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{Array1, Array2, Array3, Axis, concatenate};

use super::chunks::{CHUNK_TOKENS, PromptChunk, TokenizedPrompt, tokenize_prompt_with_embeddings};
use super::encoder::{Embedder, TokenVectors};
use crate::prompt::{ScheduleSteps, multicond_prompt_list, prompt_schedules};
use crate::{Emphasis, Error, Result};

const POSITIONS: usize = CHUNK_TOKENS + 2;

/// The conditioning of one text: what the UNet's cross-attention (and SDXL's `text_embeds`) receive.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    /// `[chunks × 77, D]`; SDXL concatenates its encoders on the feature axis (768 + 1280).
    pub hidden: Array2<f32>,
    /// The pooled vector `[P]` of the first chunk (SDXL), else `None`.
    pub pooled: Option<Array1<f32>>,
}

/// A1111's list of `ScheduledPromptConditioning`: `(end_at_step, cond)` in ascending `end_at_step`; an entry
/// applies while the denoiser call counter is ≤ its `end_at_step`.
pub type PromptSchedule = Vec<(usize, Arc<Cond>)>;

/// Identifies a cached schedule: the same prompt over the same steps, zeroed or not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ScheduleKey {
    prompt: String,
    base: usize,
    hires: Option<usize>,
    old_scheduling: bool,
    zeroed: bool,
}

/// Turns prompts into conditioning with a model's CLIP(s), caching each prompt's schedule.
#[derive(Debug)]
pub struct Conditioner<'a> {
    embedders: Vec<Embedder<'a>>,
    emphasis: Emphasis,
    zero_empty_negative: bool,
    cache: HashMap<ScheduleKey, PromptSchedule>,
    encoder_calls: usize,
}

/// One embedder's output for every text of a call.
struct EmbedderOutput {
    /// Per text `[chunks × 77, D]`.
    hidden: Vec<Array2<f32>>,
    /// Per text `[P]`, from the first chunk.
    pooled: Option<Vec<Array1<f32>>>,
}

impl<'a> Conditioner<'a> {
    /// `embedders` in the model's order (SDXL: CLIP-L then OpenCLIP bigG); `zero_empty_negative` gives an
    /// empty negative prompt all-zero conditioning (SDXL).
    pub fn new(embedders: Vec<Embedder<'a>>, emphasis: Emphasis, zero_empty_negative: bool) -> Self {
        Self { embedders, emphasis, zero_empty_negative, cache: HashMap::new(), encoder_calls: 0 }
    }

    /// The emphasis mode every text is encoded with.
    pub fn emphasis(&self) -> Emphasis {
        self.emphasis
    }

    /// How many encoder calls this conditioner has made (one per embedder per chunk index per text batch).
    pub fn encoder_calls(&self) -> usize {
        self.encoder_calls
    }

    /// Forgets every cached schedule.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// A1111's `forward` for one call: every text tokenized, per chunk index one encoder call over all texts
    /// (texts with fewer chunks get empty chunks), emphasis per call over the whole `[texts, 77, D]` tensor,
    /// chunks concatenated along the sequence axis, embedders along the feature axis; the pooled vector is
    /// the last embedder's, from chunk 0.
    pub fn encode_texts(&mut self, texts: &[&str]) -> Result<Vec<Cond>> {
        let _span = tracing::info_span!("processing::conditioning", texts = texts.len()).entered();
        if self.embedders.is_empty() {
            return Err(Error::InvalidParameter {
                field: "conditioning embedders",
                problem: "none given; pass the model's tokenizer and text encoder".to_owned(),
            });
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut outputs = Vec::with_capacity(self.embedders.len());
        for index in 0..self.embedders.len() {
            outputs.push(self.encode_with(index, texts)?);
        }
        join_embedders(outputs, texts.len())
    }

    /// A1111's `get_learned_conditioning`: per prompt its schedule, the schedule's texts encoded together.
    /// With `negative` and `zero_empty_negative`, a prompt whose texts are all empty gets zeros of the
    /// encoded shape (A1111's `force_zero_embeddings`, decided per prompt as A1111 does).
    pub fn learned_conditioning(
        &mut self,
        prompts: &[String],
        steps: ScheduleSteps,
        negative: bool,
    ) -> Result<Vec<PromptSchedule>> {
        prompts.iter().map(|prompt| self.prompt_schedule(prompt, steps, negative)).collect()
    }

    /// A1111's `get_multicond_learned_conditioning`: per prompt, its `AND` sub-prompts as (schedule, weight).
    pub fn multicond(&mut self, prompts: &[String], steps: ScheduleSteps) -> Result<Vec<Vec<(PromptSchedule, f64)>>> {
        let list = multicond_prompt_list(prompts);
        let schedules = self.learned_conditioning(&list.flat_texts, steps, false)?;
        Ok(list
            .indexes
            .iter()
            .map(|entries| entries.iter().map(|&(index, weight)| (schedules[index].clone(), weight)).collect())
            .collect())
    }

    fn prompt_schedule(&mut self, prompt: &str, steps: ScheduleSteps, negative: bool) -> Result<PromptSchedule> {
        let schedule = prompt_schedules(prompt, steps)?;
        let zeroed = negative && self.zero_empty_negative && schedule.iter().all(|(_, text)| text.is_empty());
        let key = ScheduleKey {
            prompt: prompt.to_owned(),
            base: steps.base,
            hires: steps.hires,
            old_scheduling: steps.old_scheduling,
            zeroed,
        };
        if let Some(cached) = self.cache.get(&key) {
            return Ok(cached.clone());
        }
        let texts: Vec<&str> = schedule.iter().map(|(_, text)| text.as_str()).collect();
        let mut conds = self.encode_texts(&texts)?;
        if zeroed {
            conds.iter_mut().for_each(zero);
        }
        let entries = schedule
            .iter()
            .zip(conds)
            .map(|((end, _), cond)| Ok((end_step(*end)?, Arc::new(cond))))
            .collect::<Result<PromptSchedule>>()?;
        self.cache.insert(key, entries.clone());
        Ok(entries)
    }

    /// One embedder over every text: A1111's `process_texts` + one `process_tokens` per chunk index.
    fn encode_with(&mut self, index: usize, texts: &[&str]) -> Result<EmbedderOutput> {
        let emphasis = self.emphasis;
        let embedder = &mut self.embedders[index];
        let tokenized: Vec<TokenizedPrompt> = texts
            .iter()
            .map(|text| tokenize_prompt_with_embeddings(embedder.tokenizer, text, emphasis, &embedder.embeddings))
            .collect::<Result<_>>()?;
        let chunk_count = tokenized.iter().map(|t| t.chunks.len()).max().unwrap_or(1);
        let empty = PromptChunk::empty(embedder.tokenizer);
        let mut per_chunk: Vec<Array3<f32>> = Vec::with_capacity(chunk_count);
        let mut pooled = None;
        for chunk_index in 0..chunk_count {
            let chunks: Vec<&PromptChunk> =
                tokenized.iter().map(|t| t.chunks.get(chunk_index).unwrap_or(&empty)).collect();
            let ids = Array2::from_shape_fn((texts.len(), POSITIONS), |(row, pos)| i64::from(chunks[row].tokens[pos]));
            let multipliers =
                Array2::from_shape_fn((texts.len(), POSITIONS), |(row, pos)| chunks[row].multipliers[pos]);
            let replacements: Vec<TokenVectors<'_>> = chunks
                .iter()
                .enumerate()
                .flat_map(|(row, chunk)| chunk.fixes.iter().map(move |&(offset, index)| (row, offset, index)))
                .map(|(row, offset, index)| TokenVectors {
                    row,
                    position: offset + 1,
                    vectors: embedder.embeddings[index].vectors.view(),
                })
                .collect();
            let encoded = embedder.encoder.encode_with_embeddings(ids.view(), &replacements)?;
            self.encoder_calls += 1;
            let mut hidden = checked_hidden(encoded.hidden, texts.len(), per_chunk.first())?;
            if chunk_index == 0 {
                pooled = encoded.pooled.map(|p| checked_pooled(p, texts.len())).transpose()?;
            }
            emphasis.apply(&mut hidden, multipliers.view());
            per_chunk.push(hidden);
        }
        let hidden = (0..texts.len())
            .map(|row| {
                let parts: Vec<_> = per_chunk.iter().map(|z| z.index_axis(Axis(0), row)).collect();
                concatenate(Axis(0), &parts).map_err(|e| shape_error("hidden", vec![parts.len()], e.to_string()))
            })
            .collect::<Result<_>>()?;
        let pooled = pooled.map(|p: Array2<f32>| p.outer_iter().map(|row| row.to_owned()).collect());
        Ok(EmbedderOutput { hidden, pooled })
    }
}

/// Concatenates the embedders' hidden states on the feature axis; the pooled vector is the last one's.
fn join_embedders(outputs: Vec<EmbedderOutput>, texts: usize) -> Result<Vec<Cond>> {
    let pooled = outputs.last().and_then(|o| o.pooled.clone());
    (0..texts)
        .map(|row| {
            let parts: Vec<_> = outputs.iter().map(|o| o.hidden[row].view()).collect();
            let hidden = concatenate(Axis(1), &parts).map_err(|_| {
                shape_error(
                    "hidden",
                    parts.iter().map(|p| p.nrows()).collect(),
                    "the same number of chunk rows from every text encoder (their tokenizers chunked the prompt differently)"
                        .to_owned(),
                )
            })?;
            Ok(Cond { hidden, pooled: pooled.as_ref().map(|p| p[row].clone()) })
        })
        .collect()
}

fn checked_hidden(hidden: Array3<f32>, texts: usize, first: Option<&Array3<f32>>) -> Result<Array3<f32>> {
    let (n, positions, width) = hidden.dim();
    let expected_width = first.map_or(width, |z| z.dim().2);
    if n != texts || positions != POSITIONS || width != expected_width || width == 0 {
        return Err(shape_error(
            "hidden",
            vec![n, positions, width],
            format!("[{texts}, {POSITIONS}, D > 0], D fixed"),
        ));
    }
    Ok(hidden)
}

fn checked_pooled(pooled: Array2<f32>, texts: usize) -> Result<Array2<f32>> {
    if pooled.nrows() != texts {
        return Err(shape_error("pooled", pooled.shape().to_vec(), format!("[{texts}, P]")));
    }
    Ok(pooled)
}

fn shape_error(tensor: &'static str, found: Vec<usize>, expected: String) -> Error {
    Error::Shape { stage: "conditioning::encode", tensor, found, expected }
}

fn zero(cond: &mut Cond) {
    cond.hidden.fill(0.0);
    if let Some(pooled) = &mut cond.pooled {
        pooled.fill(0.0);
    }
}

fn end_step(end: i64) -> Result<usize> {
    usize::try_from(end).map_err(|_| Error::InvalidParameter {
        field: "prompt",
        problem: format!("a prompt-editing step ends at {end}; steps must be ≥ 0"),
    })
}
