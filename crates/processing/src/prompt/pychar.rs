//! The character classes of Python's `re` that A1111's prompt regexes rely on (`\s`, `\w`, `\b`).

/// Python's `\s` for `str` patterns (`str.isspace`), which also counts the ASCII separators U+001C–U+001F.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` for `str` patterns: alphanumeric characters and `_`.
pub(crate) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte ranges of `word` in `text` that stand between `\b` word boundaries (`\bWORD\b`).
pub(crate) fn find_bounded_word(text: &str, word: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find(word) {
        let start = from + rel;
        let end = start + word.len();
        let before_ok = text[..start].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word(c));
        if before_ok && after_ok {
            found.push(start..end);
            from = end;
        } else {
            from = start + word.chars().next().map_or(1, char::len_utf8);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_word_needs_non_word_neighbours() {
        assert_eq!(find_bounded_word("a AND b", "AND"), vec![2..5]);
        assert!(find_bounded_word("BANDS", "AND").is_empty());
        assert!(find_bounded_word("_AND", "AND").is_empty());
        assert_eq!(find_bounded_word("(AND)", "AND"), vec![1..4]);
    }
}
