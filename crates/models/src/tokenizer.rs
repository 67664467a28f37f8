//! The CLIP BPE tokenizer as A1111 uses it: transformers' slow `CLIPTokenizer` (with ftfy) reproduced on
//! the `tokenizers` crate.
//!
//! Pipeline, as the slow tokenizer runs it: the text is cut at the literal special tokens
//! (`<|startoftext|>`, `<|endoftext|>`); each piece gets ftfy's `fix_text` ([`crate::text_fix`]: HTML
//! entities, mojibake, ligatures, full-width forms, curly quotes, control characters, NFC), whitespace runs
//! collapsed to one space and trimmed, and Python-style lowercasing; then CLIP's regex split (contractions,
//! letter runs, single digits, other non-space runs) and byte-level BPE with `</w>` word ends. Ids are
//! returned per text fragment without BOS/EOS, because A1111 tokenizes every weighted fragment of a prompt
//! separately and builds 77-token chunks itself.
//!
//! Known differences from the slow tokenizer: only the mojibake that [`crate::text_fix`] documents is
//! repaired.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::text_fix::fix_text;

use crate::error::{Error, Result};
use crate::folder::TokenizerFiles;

/// `<|startoftext|>`.
pub const BOS_TOKEN_ID: u32 = 49406;
/// `<|endoftext|>`.
pub const EOS_TOKEN_ID: u32 = 49407;
/// Positions per CLIP sequence (75 tokens + BOS + EOS).
pub const CLIP_SEQUENCE_LENGTH: usize = 77;

const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer loaded from a `tokenizer/` folder.
pub struct ClipTokenizer {
    dir: PathBuf,
    inner: Tokenizer,
    pad_id: u32,
    comma_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").field("dir", &self.dir).field("pad_id", &self.pad_id).finish()
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer described by `files` (from [`ModelFolder`](crate::ModelFolder)).
    pub fn load(files: &TokenizerFiles) -> Result<Self> {
        if files.bundled {
            return Self::bundled(&files.pad_token);
        }
        Self::from_dir(&files.dir, &files.pad_token)
    }

    /// Loads `tokenizer.json` when present, else `vocab.json` + `merges.txt`, with padding token `pad_token`.
    pub fn from_dir(dir: &Path, pad_token: &str) -> Result<Self> {
        let _span = tracing::info_span!("models::load_tokenizer", dir = %dir.display()).entered();
        let error = |reason: String| Error::Tokenizer { path: dir.to_owned(), reason };
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| error(format!("tokenizer.json: {e}")))?
        } else {
            bpe_tokenizer(dir).map_err(error)?
        };
        Self::from_bpe(dir, inner, pad_token)
    }

    /// OpenAI CLIP's vocabulary and merges as built into sdrt (the files every SD tokenizer folder holds).
    pub fn bundled(pad_token: &str) -> Result<Self> {
        let dir = Path::new(BUNDLED_NAME);
        let error = |reason: String| Error::Tokenizer { path: dir.to_owned(), reason };
        let vocab: std::collections::HashMap<String, u32> =
            serde_json::from_slice(BUNDLED_VOCAB).map_err(|e| error(format!("vocab.json: {e}")))?;
        let merges = std::str::from_utf8(BUNDLED_MERGES)
            .map_err(|e| error(format!("merges.txt: {e}")))?
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
            .unk_token("<|endoftext|>".to_owned())
            .end_of_word_suffix("</w>".to_owned())
            .build()
            .map_err(|e| error(e.to_string()))?;
        Self::from_bpe(dir, Tokenizer::new(model), pad_token)
    }

    fn from_bpe(dir: &Path, mut inner: Tokenizer, pad_token: &str) -> Result<Self> {
        let error = |reason: String| Error::Tokenizer { path: dir.to_owned(), reason };
        // Normalisation is ours whatever the file says (`clean_like_slow_clip`): A1111's slow tokenizer defines it.
        inner.with_normalizer(None::<NormalizerWrapper>);
        inner.with_pre_tokenizer(Some(clip_pre_tokenizer().map_err(error)?));
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        inner.add_special_tokens(&[AddedToken::from("<|startoftext|>", true), AddedToken::from("<|endoftext|>", true)]);
        let id = |token: &str, what: &str| {
            inner.token_to_id(token).ok_or_else(|| error(format!("{what} `{token}` is not in the vocabulary")))
        };
        if id("<|startoftext|>", "BOS token")? != BOS_TOKEN_ID || id("<|endoftext|>", "EOS token")? != EOS_TOKEN_ID {
            return Err(error(format!("not a CLIP vocabulary: BOS/EOS are not {BOS_TOKEN_ID}/{EOS_TOKEN_ID}")));
        }
        let pad_id = id(pad_token, "pad_token from tokenizer_config.json")?;
        let comma_id = id(",</w>", "comma")?;
        Ok(Self { dir: dir.to_owned(), inner, pad_id, comma_id })
    }

    /// Token ids of each fragment, without BOS/EOS.
    pub fn tokenize(&self, fragments: &[&str]) -> Result<Vec<Vec<u32>>> {
        fragments.iter().map(|text| self.tokenize_one(text)).collect()
    }

    fn tokenize_one(&self, text: &str) -> Result<Vec<u32>> {
        let cleaned = clean_like_slow_clip(text);
        let encoding = self.inner.encode(cleaned.as_str(), false).map_err(|e| Error::Tokenizer {
            path: self.dir.clone(),
            reason: format!("could not tokenize {text:?}: {e}"),
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// BOS + the first 75 ids of `text` + EOS, padded with the pad token to 77 (what a plain CLIP call gets).
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![BOS_TOKEN_ID];
        ids.extend(self.tokenize_one(text)?.into_iter().take(CLIP_SEQUENCE_LENGTH - 2));
        ids.push(EOS_TOKEN_ID);
        ids.resize(CLIP_SEQUENCE_LENGTH, self.pad_id);
        Ok(ids)
    }

    /// The padding id (49407 for OpenAI CLIP, 0 = `!` for OpenCLIP / SD 2.x / SDXL's second tokenizer).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `,` as a word (`,</w>`), used by A1111 to break chunks at commas.
    pub fn comma_id(&self) -> u32 {
        self.comma_id
    }

    /// `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        BOS_TOKEN_ID
    }

    /// `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        EOS_TOKEN_ID
    }
}

const SPECIAL_TOKENS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];

/// The slow tokenizer's text preparation: split at special tokens, then per piece `fix_text`, whitespace
/// runs to one space, trim, lowercase. The special tokens are put back untouched for the added-token split.
fn clean_like_slow_clip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, token)) =
        SPECIAL_TOKENS.iter().filter_map(|token| rest.find(token).map(|start| (start, *token))).min()
    {
        push_cleaned_piece(&mut out, &rest[..start]);
        out.push_str(token);
        rest = &rest[start + token.len()..];
    }
    push_cleaned_piece(&mut out, rest);
    out
}

fn push_cleaned_piece(out: &mut String, piece: &str) {
    let fixed = fix_text(piece);
    let collapsed = fixed.split_whitespace().collect::<Vec<_>>().join(" ");
    // Rust's `to_lowercase` knows word-final sigma like Python's `lower()`.
    out.push_str(&collapsed.to_lowercase());
}

/// Writes the bundled vocabulary as a transformers tokenizer folder with `pad_token`.
pub(crate) fn write_bundled(dir: &Path, pad_token: &str) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| Error::File { path: path.to_owned(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let config = serde_json::json!({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_SEQUENCE_LENGTH, "pad_token": pad_token,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    });
    for (name, bytes) in [
        ("vocab.json", BUNDLED_VOCAB.to_vec()),
        ("merges.txt", BUNDLED_MERGES.to_vec()),
        ("tokenizer_config.json", serde_json::to_vec_pretty(&config).unwrap_or_default()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

const BUNDLED_NAME: &str = "<sdrt's bundled CLIP tokenizer>";
static BUNDLED_VOCAB: &[u8] = include_bytes!("../assets/clip/vocab.json");
static BUNDLED_MERGES: &[u8] = include_bytes!("../assets/clip/merges.txt");

fn bpe_tokenizer(dir: &Path) -> std::result::Result<Tokenizer, String> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let model = BPE::from_file(&path("vocab.json"), &path("merges.txt"))
        .unk_token("<|endoftext|>".to_owned())
        .end_of_word_suffix("</w>".to_owned())
        .build()
        .map_err(|e| format!("vocab.json / merges.txt: {e}"))?;
    Ok(Tokenizer::new(model))
}

fn clip_pre_tokenizer() -> std::result::Result<PreTokenizerWrapper, String> {
    let split = Split::new(SplitPattern::Regex(CLIP_SPLIT_PATTERN.to_owned()), SplitDelimiterBehavior::Removed, true)
        .map_err(|e| e.to_string())?;
    Ok(PreTokenizerWrapper::Sequence(PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_fixed_collapsed_and_lowercased() {
        assert_eq!(clean_like_slow_clip("  Fish &amp;\t\u{3000}ＣＨＩＰＳ \n"), "fish & chips");
        assert_eq!(clean_like_slow_clip("ΣΊΣΥΦΟΣ"), "σίσυφος");
    }

    #[test]
    fn special_tokens_cut_the_text_before_fixing() {
        // ftfy sees `<` only in the special token, so the entity after it is still decoded (as in transformers).
        assert_eq!(clean_like_slow_clip("A <|endoftext|> B &amp; C"), "a<|endoftext|>b & c");
        assert_eq!(clean_like_slow_clip("<|startoftext|><|endoftext|>"), "<|startoftext|><|endoftext|>");
    }
}
