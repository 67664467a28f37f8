//! A1111's composable prompts: `AND` splits a prompt into sub-prompts, each optionally ending in `:weight`.

use super::pychar::{find_bounded_word, is_space};

/// One `AND` sub-prompt and its weight in the guidance sum.
#[derive(Debug, Clone, PartialEq)]
pub struct SubPrompt {
    /// The sub-prompt text with the weight suffix and trailing whitespace removed.
    pub text: String,
    /// The weight (1.0 when none is written).
    pub weight: f64,
}

/// Splits at `\bAND\b` and reads each part with A1111's `re_weight`
/// (`^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$`).
pub fn split_and(prompt: &str) -> Vec<SubPrompt> {
    let mut parts = Vec::new();
    let mut last = 0;
    for word in find_bounded_word(prompt, "AND") {
        parts.push(&prompt[last..word.start]);
        last = word.end;
    }
    parts.push(&prompt[last..]);
    parts.into_iter().map(sub_prompt).collect()
}

/// A1111's `get_multicond_prompt_list` for a batch: distinct sub-prompt texts in first-seen order, and per
/// prompt its `(index into flat_texts, weight)` pairs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MulticondList {
    /// Each distinct sub-prompt text once, in the order first seen; these are what get encoded.
    pub flat_texts: Vec<String>,
    /// Per prompt of the batch, its sub-prompts as indexes into `flat_texts` with their weights.
    pub indexes: Vec<Vec<(usize, f64)>>,
}

/// Splits every prompt of a batch at `AND` and deduplicates the sub-prompt texts.
pub fn multicond_prompt_list<S: AsRef<str>>(prompts: &[S]) -> MulticondList {
    let mut list = MulticondList::default();
    for prompt in prompts {
        let entries = split_and(prompt.as_ref())
            .into_iter()
            .map(|sub| {
                let index = match list.flat_texts.iter().position(|t| *t == sub.text) {
                    Some(index) => index,
                    None => {
                        list.flat_texts.push(sub.text);
                        list.flat_texts.len() - 1
                    }
                };
                (index, sub.weight)
            })
            .collect();
        list.indexes.push(entries);
    }
    list
}

fn sub_prompt(part: &str) -> SubPrompt {
    let trimmed = part.trim_end_matches(is_space);
    if let Some((text, weight)) = weight_suffix(trimmed) {
        return SubPrompt { text: text.to_owned(), weight };
    }
    SubPrompt { text: trimmed.to_owned(), weight: 1.0 }
}

/// `text \s* : \s* [-+]? number` at the end of `s` (already right-trimmed); the lazy text group leaves the
/// whitespace before the colon to the suffix.
fn weight_suffix(s: &str) -> Option<(&str, f64)> {
    let number_start = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.').len();
    let number = &s[number_start..];
    if !is_weight_number(number) {
        return None;
    }
    let head = &s[..number_start];
    let (head, sign) = match head.strip_suffix(['-', '+']) {
        Some(rest) => (rest, &head[rest.len()..]),
        None => (head, ""),
    };
    let head = head.trim_end_matches(is_space).strip_suffix(':')?;
    let text = head.trim_end_matches(is_space);
    let value: f64 = format!("{sign}{}", normalise(number)).parse().ok()?;
    Some((text, value))
}

/// `\d+\.?|\d*\.\d+`.
fn is_weight_number(number: &str) -> bool {
    let dots = number.matches('.').count();
    dots <= 1 && number.len() > dots
}

fn normalise(number: &str) -> String {
    let leading = if number.starts_with('.') { "0" } else { "" };
    let trailing = if number.ends_with('.') { "0" } else { "" };
    format!("{leading}{number}{trailing}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(prompt: &str) -> Vec<(String, f64)> {
        split_and(prompt).into_iter().map(|s| (s.text, s.weight)).collect()
    }

    #[test]
    fn splits_and_reads_weights() {
        assert_eq!(split("a cat AND a dog :1.5"), vec![("a cat".into(), 1.0), (" a dog".into(), 1.5)]);
        assert_eq!(split("a:2 AND b: -0.5 "), vec![("a".into(), 2.0), (" b".into(), -0.5)]);
        assert_eq!(split("ANDROID"), vec![("ANDROID".into(), 1.0)]);
        assert_eq!(split("x:.5"), vec![("x".into(), 0.5)]);
        assert_eq!(split("x:1.2.3"), vec![("x:1.2.3".into(), 1.0)]);
    }
}
