//! Unit tests of the conditioning stage with a fake tokenizer and a fake encoder.

use std::cell::RefCell;
use std::rc::Rc;

use ndarray::{Array2, Array3, ArrayView2, Axis, s};

use super::*;
use crate::{Error, Result, ScheduleSteps};

const BOS: u32 = 49406;
const EOS: u32 = 49407;
const COMMA: u32 = 267;

/// Whitespace-separated words; `,` is its own token; a word's id is 1000 + the sum of its bytes.
struct FakeTokenizer {
    pad: u32,
}

impl PromptTokenizer for FakeTokenizer {
    fn tokenize(&self, fragments: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(fragments.iter().map(|text| words(text)).collect())
    }
    fn bos_id(&self) -> u32 {
        BOS
    }
    fn eos_id(&self) -> u32 {
        EOS
    }
    fn pad_id(&self) -> u32 {
        self.pad
    }
    fn comma_id(&self) -> u32 {
        COMMA
    }
}

fn words(text: &str) -> Vec<u32> {
    text.replace(',', " , ")
        .split_whitespace()
        .map(|word| if word == "," { COMMA } else { 1000 + word.bytes().map(u32::from).sum::<u32>() })
        .collect()
}

/// Hidden state of a token: depends on the id, the position and the feature, never zero on average.
fn fake_value(id: i64, position: usize, feature: usize, salt: f32) -> f32 {
    ((id % 97) as f32) * 0.1 - 2.0 + position as f32 * 0.01 + feature as f32 * 0.3 + salt
}

/// Records every `input_ids` batch it is given.
struct FakeEncoder {
    width: usize,
    pooled: Option<usize>,
    salt: f32,
    calls: Rc<RefCell<Vec<Array2<i64>>>>,
}

impl TextEncoder for FakeEncoder {
    fn encode(&mut self, input_ids: ArrayView2<'_, i64>) -> Result<EncodedText> {
        self.calls.borrow_mut().push(input_ids.to_owned());
        let (n, positions) = input_ids.dim();
        let hidden = Array3::from_shape_fn((n, positions, self.width), |(b, p, d)| {
            fake_value(input_ids[[b, p]], p, d, self.salt)
        });
        let pooled = self
            .pooled
            .map(|width| Array2::from_shape_fn((n, width), |(b, d)| input_ids[[b, 1]] as f32 + d as f32 + self.salt));
        Ok(EncodedText { hidden, pooled })
    }
}

type Calls = Rc<RefCell<Vec<Array2<i64>>>>;

fn embedder<'a>(tokenizer: &'a FakeTokenizer, width: usize, pooled: Option<usize>, salt: f32) -> (Embedder<'a>, Calls) {
    let calls = Calls::default();
    let encoder = FakeEncoder { width, pooled, salt, calls: calls.clone() };
    (Embedder::new(tokenizer, Box::new(encoder)), calls)
}

const SD1: FakeTokenizer = FakeTokenizer { pad: EOS };
const OPEN_CLIP: FakeTokenizer = FakeTokenizer { pad: 0 };

fn sd1(emphasis: Emphasis) -> (Conditioner<'static>, Calls) {
    let (e, calls) = embedder(&SD1, 4, None, 0.0);
    (Conditioner::new(vec![e], emphasis, false), calls)
}

fn raw(ids: ArrayView2<'_, i64>, width: usize) -> Array3<f32> {
    Array3::from_shape_fn((ids.nrows(), ids.ncols(), width), |(b, p, d)| fake_value(ids[[b, p]], p, d, 0.0))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn mean(values: impl Iterator<Item = f32>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + f64::from(v), n + 1));
    sum / n as f64
}

#[test]
fn chunks_wrap_bos_eos_pad_and_carry_weights() {
    let t = tokenize_prompt(&SD1, "a (b:1.5) [c]", Emphasis::Original).unwrap();
    assert_eq!(t.token_count, 3);
    assert_eq!(t.chunks.len(), 1);
    let chunk = &t.chunks[0];
    assert_eq!(chunk.tokens.len(), 77);
    assert_eq!(&chunk.tokens[..5], &[BOS, words("a")[0], words("b")[0], words("c")[0], EOS]);
    assert!(chunk.tokens[4..].iter().all(|&t| t == EOS));
    assert_eq!(&chunk.multipliers[..5], &[1.0, 1.0, 1.5, (1.0 / 1.1) as f32, 1.0]);
    let open = tokenize_prompt(&OPEN_CLIP, "a b", Emphasis::Original).unwrap();
    assert_eq!(&open.chunks[0].tokens[..5], &[BOS, words("a")[0], words("b")[0], EOS, 0]);
    assert!(open.chunks[0].tokens[4..].iter().all(|&t| t == 0));
}

#[test]
fn emphasis_none_keeps_brackets_and_break_literal() {
    let none = tokenize_prompt(&SD1, "(a:2) BREAK b", Emphasis::None).unwrap();
    assert_eq!(none.chunks.len(), 1);
    assert_eq!(none.chunks[0].tokens[1..4], words("(a:2) BREAK b")[..]);
    assert!(none.chunks[0].multipliers.iter().all(|&m| m == 1.0));
    let ignore = tokenize_prompt(&SD1, "(a:2) BREAK b", Emphasis::Ignore).unwrap();
    assert_eq!(ignore.chunks.len(), 2);
    assert_eq!(ignore.chunks[0].multipliers[1], 2.0);
}

#[test]
fn break_closes_a_chunk_except_inside_brackets() {
    let t = tokenize_prompt(&SD1, "a BREAK b", Emphasis::Original).unwrap();
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.token_count, 76);
    assert_eq!(t.chunks[1].tokens[1], words("b")[0]);
    assert_eq!(tokenize_prompt(&SD1, "(a BREAK b)", Emphasis::Original).unwrap().chunks.len(), 1);
    assert_eq!(tokenize_prompt(&SD1, "BREAK", Emphasis::Original).unwrap().chunks.len(), 1);
}

#[test]
fn overflow_moves_the_text_after_a_near_comma() {
    // 70 words, a comma, 10 words: the comma is 5 tokens back when the chunk fills → text after it moves.
    let prompt = format!("{} , {}", ["w"; 70].join(" "), ["x"; 10].join(" "));
    let t = tokenize_prompt(&SD1, &prompt, Emphasis::Original).unwrap();
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.chunks[0].tokens[71], COMMA);
    assert_eq!(t.chunks[0].tokens[72], EOS);
    assert_eq!(&t.chunks[1].tokens[1..11], &vec![words("x")[0]; 10][..]);
    // 50 words then a comma then 40: the comma is 25 back, beyond the backtrack, so the chunk is cut at 75.
    let far = format!("{} , {}", ["w"; 50].join(" "), ["x"; 40].join(" "));
    let t = tokenize_prompt(&SD1, &far, Emphasis::Original).unwrap();
    assert_eq!(t.chunks[0].tokens[75], words("x")[0]);
    assert_eq!(t.token_count, 75 + 16);
}

#[test]
fn huge_prompts_chunk_without_panicking() {
    let prompt = vec!["(word:1.2), [thing]"; 5000].join(" ");
    let t = tokenize_prompt(&SD1, &prompt, Emphasis::Original).unwrap();
    assert!(t.chunks.len() >= 200, "{} chunks", t.chunks.len());
    assert!(t.chunks.iter().all(|c| c.tokens.len() == 77 && c.multipliers.len() == 77));
    let (mut conditioner, calls) = sd1(Emphasis::Original);
    let conds = conditioner.encode_texts(&[&prompt]).unwrap();
    assert_eq!(conds[0].hidden.nrows(), 77 * t.chunks.len());
    assert_eq!(calls.borrow().len(), t.chunks.len());
    assert!(conds[0].hidden.iter().all(|v| v.is_finite()));
}

#[test]
fn original_emphasis_restores_the_mean_over_the_whole_call() {
    let (mut conditioner, calls) = sd1(Emphasis::Original);
    let conds = conditioner.encode_texts(&["a (b:3) c", "d e"]).unwrap();
    let ids = calls.borrow()[0].clone();
    let before = raw(ids.view(), 4);
    let after_mean = mean(conds.iter().flat_map(|c| c.hidden.iter().copied()));
    let before_mean = mean(before.iter().copied());
    assert!((after_mean - before_mean).abs() < 1e-5, "{after_mean} vs {before_mean}");
    // Per text the mean is not restored: the rescale is shared by both texts.
    let text0_after = mean(conds[0].hidden.iter().copied());
    let text0_before = mean(before.index_axis(Axis(0), 0).iter().copied());
    assert!((text0_after - text0_before).abs() > 1e-3);
    // The second text has no weights, so it is just the raw output times the shared ratio.
    let ratio = conds[1].hidden[[5, 1]] / before[[1, 5, 1]];
    for (got, raw) in conds[1].hidden.iter().zip(before.index_axis(Axis(0), 1).iter()) {
        assert!((got - raw * ratio).abs() < 1e-5);
    }
    assert!((ratio - 1.0).abs() > 1e-4);
}

#[test]
fn no_norm_multiplies_and_ignore_and_none_leave_the_output() {
    let (mut no_norm, calls) = sd1(Emphasis::NoNorm);
    let cond = &no_norm.encode_texts(&["a (b:3) c"]).unwrap()[0];
    let before = raw(calls.borrow()[0].view(), 4);
    assert_eq!(cond.hidden.row(2), before.slice(s![0, 2, ..]).mapv(|v| v * 3.0));
    assert_eq!(cond.hidden.row(1), before.slice(s![0, 1, ..]));
    for emphasis in [Emphasis::Ignore, Emphasis::None] {
        let (mut plain, calls) = sd1(emphasis);
        let cond = &plain.encode_texts(&["a (b:3) c"]).unwrap()[0];
        assert_eq!(cond.hidden, raw(calls.borrow()[0].view(), 4).index_axis(Axis(0), 0), "{emphasis}");
    }
}

#[test]
fn shorter_texts_get_empty_chunks_in_the_same_call() {
    let (e, calls) = embedder(&OPEN_CLIP, 2, None, 0.0);
    let mut conditioner = Conditioner::new(vec![e], Emphasis::Original, false);
    let long = ["w"; 80].join(" ");
    let conds = conditioner.encode_texts(&["short", &long]).unwrap();
    assert_eq!(conds.iter().map(|c| c.hidden.dim()).collect::<Vec<_>>(), vec![(154, 2), (154, 2)]);
    let calls = calls.borrow();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].dim(), (2, 77));
    let empty: Vec<i64> = calls[1].row(0).to_vec();
    assert_eq!(&empty[..3], &[i64::from(BOS), i64::from(EOS), 0]);
    assert!(empty[2..].iter().all(|&t| t == 0));
}

#[test]
fn schedule_texts_are_encoded_together_and_cached_by_prompt() {
    let (mut conditioner, calls) = sd1(Emphasis::Original);
    let prompts = strings(&["a [b:c:2] d", "a [b:c:2] d", "x"]);
    let schedules = conditioner.learned_conditioning(&prompts, ScheduleSteps::new(10), false).unwrap();
    assert_eq!(schedules[0].iter().map(|(end, _)| *end).collect::<Vec<_>>(), vec![2, 10]);
    assert_eq!(calls.borrow()[0].nrows(), 2, "both schedule texts in one encoder call");
    assert_eq!(conditioner.encoder_calls(), 2, "the repeated prompt is encoded once");
    assert!(std::sync::Arc::ptr_eq(&schedules[0][0].1, &schedules[1][0].1));
    assert_ne!(schedules[0][0].1.hidden, schedules[0][1].1.hidden);
    let again = conditioner.learned_conditioning(&strings(&["x"]), ScheduleSteps::new(10), true).unwrap();
    assert_eq!(conditioner.encoder_calls(), 2, "cond and uncond share the cache");
    assert_eq!(again[0][0].1, schedules[2][0].1);
    conditioner.learned_conditioning(&strings(&["x"]), ScheduleSteps::new(20), false).unwrap();
    assert_eq!(conditioner.encoder_calls(), 3, "other step counts are other schedules");
}

#[test]
fn multicond_keeps_and_weights_and_shares_sub_prompts() {
    let (mut conditioner, _) = sd1(Emphasis::Original);
    let prompts = strings(&["a cat AND a dog :0.5", "a dog AND [x:y:3]:-1"]);
    let batch = conditioner.multicond(&prompts, ScheduleSteps::new(10)).unwrap();
    let weights: Vec<Vec<f64>> = batch.iter().map(|subs| subs.iter().map(|(_, w)| *w).collect()).collect();
    assert_eq!(weights, vec![vec![1.0, 0.5], vec![1.0, -1.0]]);
    assert_eq!(batch[1][1].0.len(), 2);
    // " a dog" and "a dog " differ as texts, but both sub-prompts encode and the first prompt's two differ.
    assert_ne!(batch[0][0].0[0].1.hidden, batch[0][1].0[0].1.hidden);
    assert_eq!(conditioner.encoder_calls(), 4);
}

#[test]
fn two_embedders_concatenate_features_and_pool_from_the_last() {
    let (first, _) = embedder(&SD1, 3, Some(2), 0.0);
    let (second, _) = embedder(&OPEN_CLIP, 5, Some(4), 7.0);
    let mut conditioner = Conditioner::new(vec![first, second], Emphasis::Original, true);
    let cond = &conditioner.encode_texts(&["a b"]).unwrap()[0];
    assert_eq!(cond.hidden.dim(), (77, 8));
    let pooled = cond.pooled.as_ref().expect("pooled");
    assert_eq!(pooled.len(), 4);
    assert_eq!(pooled[0], words("a")[0] as f32 + 7.0);
    assert_eq!(cond.hidden[[1, 3]], fake_value(i64::from(words("a")[0]), 1, 0, 7.0));
    let negative = conditioner.learned_conditioning(&strings(&[""]), ScheduleSteps::new(10), true).unwrap();
    let zero = &negative[0][0].1;
    assert_eq!(zero.hidden.dim(), (77, 8));
    assert!(zero.hidden.iter().all(|&v| v == 0.0));
    assert!(zero.pooled.as_ref().expect("pooled").iter().all(|&v| v == 0.0));
    let positive = conditioner.learned_conditioning(&strings(&[""]), ScheduleSteps::new(10), false).unwrap();
    assert!(positive[0][0].1.hidden.iter().any(|&v| v != 0.0), "an empty positive prompt is encoded");
}

#[test]
fn emphasis_labels_round_trip() {
    for mode in Emphasis::ALL {
        assert_eq!(mode.label().parse::<Emphasis>().unwrap(), mode);
    }
    assert_eq!("No norm".parse::<Emphasis>().unwrap(), Emphasis::NoNorm);
    let err = "Loud".parse::<Emphasis>().unwrap_err().to_string();
    assert!(err.contains("emphasis") && err.contains("No norm"), "{err}");
}

struct BadEncoder;

impl TextEncoder for BadEncoder {
    fn encode(&mut self, input_ids: ArrayView2<'_, i64>) -> Result<EncodedText> {
        Ok(EncodedText { hidden: Array3::zeros((input_ids.nrows(), 76, 4)), pooled: None })
    }
}

#[test]
fn bad_encoder_shapes_and_missing_embedders_are_errors() {
    let mut conditioner = Conditioner::new(vec![Embedder::new(&SD1, Box::new(BadEncoder))], Emphasis::Original, false);
    assert!(matches!(conditioner.encode_texts(&["a"]), Err(Error::Shape { tensor: "hidden", .. })));
    let mut empty = Conditioner::new(Vec::new(), Emphasis::Original, false);
    assert!(matches!(empty.encode_texts(&["a"]), Err(Error::InvalidParameter { .. })));
}

fn embedding(name: &str, vectors: usize) -> TokenEmbedding {
    TokenEmbedding {
        name: name.to_owned(),
        ids: words(name),
        vectors: std::sync::Arc::new(Array2::from_elem((vectors, 4), 0.5)),
    }
}

// A1111's `tokenize_line` with `find_embedding_at_position`: placeholders 0, one per vector, a fix at the
// offset after BOS, the longest name first, and an embedding that does not fit moving whole to the next chunk.
#[test]
fn embeddings_fill_their_vectors_positions_and_move_whole() {
    let sd1 = FakeTokenizer { pad: EOS };
    let embeddings = [embedding("cat", 1), embedding("cat style", 3)];
    let t = tokenize_prompt_with_embeddings(&sd1, "a cat style b (cat:1.5)", Emphasis::Original, &embeddings).unwrap();
    let chunk = &t.chunks[0];
    assert_eq!(&chunk.tokens[..8], &[BOS, words("a")[0], 0, 0, 0, words("b")[0], 0, EOS]);
    assert_eq!(chunk.fixes, [(1, 1), (5, 0)]);
    assert_eq!(&chunk.multipliers[..7], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5]);
    assert_eq!(t.token_count, 6);

    let filler = vec!["w"; 73].join(" ");
    let t =
        tokenize_prompt_with_embeddings(&sd1, &format!("{filler} cat style"), Emphasis::Original, &embeddings).unwrap();
    assert_eq!(t.chunks.len(), 2);
    assert!(t.chunks[0].fixes.is_empty());
    assert_eq!(t.chunks[0].tokens[74], EOS, "the first chunk is padded");
    assert_eq!(t.chunks[1].fixes, [(0, 1)]);
    assert_eq!(&t.chunks[1].tokens[..5], &[BOS, 0, 0, 0, EOS]);
}
