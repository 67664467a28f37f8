//! A1111's `parse_prompt_attention`: `(x)`, `[x]`, `(x:w)`, escapes, `BREAK`, and merging of equal weights.

use super::pychar::{find_bounded_word, is_space};
use crate::{Error, Result};

const ROUND_MULTIPLIER: f64 = 1.1;
const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;
/// The fragment text A1111 emits for `BREAK`; it is only a chunk break while its weight is exactly −1.
pub const BREAK_TEXT: &str = "BREAK";
/// The weight A1111 gives the `BREAK` marker fragment.
pub const BREAK_WEIGHT: f64 = -1.0;

/// One piece of prompt text with its attention multiplier (A1111 keeps these as Python floats).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedText {
    /// The literal text, escapes resolved.
    pub text: String,
    /// The attention multiplier; `BREAK` markers carry −1.
    pub weight: f64,
}

impl WeightedText {
    fn new(text: impl Into<String>, weight: f64) -> Self {
        Self { text: text.into(), weight }
    }

    /// Whether this fragment is the `BREAK` marker A1111's tokenizer turns into a chunk break.
    pub fn is_break(&self) -> bool {
        self.text == BREAK_TEXT && self.weight == BREAK_WEIGHT
    }
}

/// The tokens of A1111's `re_attention`, in its order of preference.
enum Token<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\` or a lone `\`: the text after the backslash.
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:` then a number then `)`, spaces allowed around the number.
    WeightClose(&'a str),
    CloseRound,
    CloseSquare,
    Text,
    Colon,
}

fn next_token(s: &str) -> (Token<'_>, usize) {
    let mut chars = s.chars();
    let first = chars.next().expect("called on non-empty input");
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => (Token::Escaped(&s[1..1 + c.len_utf8()]), 2),
            _ => (Token::Escaped(""), 1),
        },
        '(' => (Token::OpenRound, 1),
        '[' => (Token::OpenSquare, 1),
        ':' => match weight_close(s) {
            Some((number, len)) => (Token::WeightClose(number), len),
            None => (Token::Colon, 1),
        },
        ')' => (Token::CloseRound, 1),
        ']' => (Token::CloseSquare, 1),
        _ => {
            let len = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Token::Text, len)
        }
    }
}

/// Matches `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`; returns the number text and the match length.
fn weight_close(s: &str) -> Option<(&str, usize)> {
    let after_colon = &s[1..];
    let num_start = 1 + (after_colon.len() - after_colon.trim_start_matches(is_space).len());
    let rest = &s[num_start..];
    let sign = usize::from(rest.starts_with(['+', '-']));
    let digits = rest[sign..].len() - rest[sign..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let num_end = num_start + sign + digits;
    let tail = &s[num_end..];
    let spaces = tail.len() - tail.trim_start_matches(is_space).len();
    tail[spaces..].starts_with(')').then(|| (&s[num_start..num_end], num_end + spaces + 1))
}

/// Python's `float()` on `[+-]?[.\d]+`; A1111 raises on `.` or `1.2.3`, so this is an error too.
fn parse_weight(number: &str) -> Result<f64> {
    let body = number.trim_start_matches(['+', '-']);
    if body.matches('.').count() > 1 || body == "." {
        return Err(Error::InvalidParameter {
            field: "prompt",
            problem: format!("attention weight `{number}` is not a number; write it like `(text:1.2)`"),
        });
    }
    let normalised = format!(
        "{}{}",
        &number[..number.len() - body.len()],
        if body.starts_with('.') { format!("0{body}") } else { body.to_owned() }
    );
    normalised.trim_end_matches('.').parse::<f64>().map_err(|_| Error::InvalidParameter {
        field: "prompt",
        problem: format!("attention weight `{number}` is not a number; write it like `(text:1.2)`"),
    })
}

/// Splits plain text at `\s*\bBREAK\b\s*`, as `re.split(re_break, text)` does.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut last = 0;
    for word in find_bounded_word(text, BREAK_TEXT) {
        if word.start < last {
            continue;
        }
        let head = &text[last..word.start];
        let start = last + head.trim_end_matches(is_space).len();
        let tail = &text[word.end..];
        let end = word.end + (tail.len() - tail.trim_start_matches(is_space).len());
        parts.push(&text[last..start]);
        last = end;
    }
    parts.push(&text[last..]);
    parts
}

/// A1111's `parse_prompt_attention`: weighted fragments in order, equal neighbours merged.
///
/// Unclosed brackets apply their multiplier to the end of the text. Errors only where A1111 raises: a
/// `(text:weight)` whose weight is not a number, such as `(a:1.2.3)`.
pub fn parse_attention(text: &str) -> Result<Vec<WeightedText>> {
    let mut res: Vec<WeightedText> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<WeightedText>, from: usize, by: f64| {
        for fragment in &mut res[from..] {
            fragment.weight *= by;
        }
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (token, len) = next_token(rest);
        match token {
            Token::Escaped(literal) => res.push(WeightedText::new(literal, 1.0)),
            Token::OpenRound => round.push(res.len()),
            Token::OpenSquare => square.push(res.len()),
            Token::WeightClose(number) if !round.is_empty() => {
                let weight = parse_weight(number)?;
                let from = round.pop().expect("checked non-empty");
                multiply(&mut res, from, weight);
            }
            Token::CloseRound if !round.is_empty() => {
                let from = round.pop().expect("checked non-empty");
                multiply(&mut res, from, ROUND_MULTIPLIER);
            }
            Token::CloseSquare if !square.is_empty() => {
                let from = square.pop().expect("checked non-empty");
                multiply(&mut res, from, SQUARE_MULTIPLIER);
            }
            _ => push_plain(&mut res, &rest[..len]),
        }
        rest = &rest[len..];
    }
    for from in round {
        multiply(&mut res, from, ROUND_MULTIPLIER);
    }
    for from in square {
        multiply(&mut res, from, SQUARE_MULTIPLIER);
    }
    if res.is_empty() {
        res.push(WeightedText::new("", 1.0));
    }
    Ok(merge_equal_neighbours(res))
}

fn push_plain(res: &mut Vec<WeightedText>, text: &str) {
    for (i, part) in split_break(text).into_iter().enumerate() {
        if i > 0 {
            res.push(WeightedText::new(BREAK_TEXT, BREAK_WEIGHT));
        }
        res.push(WeightedText::new(part, 1.0));
    }
}

fn merge_equal_neighbours(fragments: Vec<WeightedText>) -> Vec<WeightedText> {
    let mut merged: Vec<WeightedText> = Vec::with_capacity(fragments.len());
    for fragment in fragments {
        match merged.last_mut() {
            Some(last) if last.weight == fragment.weight => last.text.push_str(&fragment.text),
            _ => merged.push(fragment),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, f64)> {
        parse_attention(text).unwrap().into_iter().map(|f| (f.text, f.weight)).collect()
    }

    #[test]
    fn a1111_docstring_examples() {
        assert_eq!(pairs("normal text"), vec![("normal text".into(), 1.0)]);
        assert_eq!(
            pairs("an (important) word"),
            vec![("an ".into(), 1.0), ("important".into(), 1.1), (" word".into(), 1.0)]
        );
        assert_eq!(pairs("(unbalanced"), vec![("unbalanced".into(), 1.1)]);
        assert_eq!(pairs(r"\(literal\]"), vec![("(literal]".into(), 1.0)]);
        assert_eq!(pairs("(unnecessary)(parens)"), vec![("unnecessaryparens".into(), 1.1)]);
    }

    #[test]
    fn break_becomes_a_marker_and_bad_weights_error() {
        assert_eq!(pairs("a BREAK b"), vec![("a".into(), 1.0), ("BREAK".into(), -1.0), ("b".into(), 1.0)]);
        assert!(parse_attention("(a:1.2.3)").is_err());
        assert_eq!(pairs("(a: 2 )"), vec![("a".into(), 2.0)]);
    }
}
