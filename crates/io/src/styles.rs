//! A1111's saved prompt styles: `styles.csv` (`name,prompt,negative_prompt`), read as A1111's `csv.DictReader`
//! with `skipinitialspace` reads it, and applied to prompts in A1111's order (`modules/styles.py`).

use std::path::Path;

use crate::error::{Error, Result};

/// One saved style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptStyle {
    /// The name requests select it by.
    pub name: String,
    /// Added to the prompt (at `{prompt}` when the style has it, else after a comma).
    pub prompt: String,
    /// Added to the negative prompt the same way.
    pub negative_prompt: String,
}

/// The styles of one `styles.csv`, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StyleDatabase {
    styles: Vec<PromptStyle>,
}

impl StyleDatabase {
    /// Reads `path`; a missing file is an empty database, as in A1111.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|e| Error::Invalid {
                    field: "styles file",
                    message: format!("{} is not UTF-8 ({e}); save it as UTF-8", path.display()),
                })?;
                Ok(Self::parse(&text))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { action: "reading", path: path.to_path_buf(), source }),
        }
    }

    /// Parses CSV text: a header row naming `name`, `prompt` (or the old `text`) and `negative_prompt`. A later
    /// row with the same name replaces the earlier one, as A1111's dictionary does.
    pub fn parse(text: &str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rows = csv_rows(text).into_iter();
        let Some(header) = rows.next() else { return Self::default() };
        let column = |name: &str| header.iter().position(|h| h == name);
        let (name, negative) = (column("name"), column("negative_prompt"));
        let prompt = column("prompt").or_else(|| column("text"));
        let mut database = Self::default();
        for row in rows {
            let cell = |index: Option<usize>| index.and_then(|i| row.get(i)).cloned().unwrap_or_default();
            let style = PromptStyle { name: cell(name), prompt: cell(prompt), negative_prompt: cell(negative) };
            match database.styles.iter_mut().find(|s| s.name == style.name) {
                Some(existing) => *existing = style,
                None => database.styles.push(style),
            }
        }
        database
    }

    /// Every style, in file order.
    pub fn styles(&self) -> &[PromptStyle] {
        &self.styles
    }

    /// The style named `name`.
    pub fn get(&self, name: &str) -> Option<&PromptStyle> {
        self.styles.iter().find(|s| s.name == name)
    }

    /// `prompt` with the named styles' prompts merged in, in order; an unknown name counts as an empty style
    /// (which still trims the prompt, as A1111's `merge_prompts` does).
    pub fn apply(&self, prompt: &str, names: &[String]) -> String {
        names.iter().fold(prompt.to_owned(), |p, name| merge_prompts(self.get(name).map_or("", |s| &s.prompt), &p))
    }

    /// The negative-prompt counterpart of [`StyleDatabase::apply`].
    pub fn apply_negative(&self, prompt: &str, names: &[String]) -> String {
        names
            .iter()
            .fold(prompt.to_owned(), |p, name| merge_prompts(self.get(name).map_or("", |s| &s.negative_prompt), &p))
    }
}

/// A1111's `merge_prompts`: the style's `{prompt}` replaced by the prompt, or both joined by ", " (each trimmed,
/// empty ones left out).
pub fn merge_prompts(style_prompt: &str, prompt: &str) -> String {
    if style_prompt.contains("{prompt}") {
        return style_prompt.replace("{prompt}", prompt);
    }
    [prompt.trim(), style_prompt.trim()].into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>().join(", ")
}

/// Python's `csv` reader in the excel dialect with `skipinitialspace=True`: `"` quotes (doubled inside), spaces
/// after a comma skipped, line breaks inside quotes kept, blank lines skipped.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut at_field_start, mut row_started) = (false, true, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ' ' if at_field_start => {}
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
                row_started = true;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
                row_started = true;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if row_started || !field.is_empty() {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (at_field_start, row_started) = (true, false);
            }
            _ => {
                field.push(c);
                at_field_start = false;
                row_started = true;
            }
        }
    }
    if row_started || !field.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are what A1111's `StyleDatabase` (csv.DictReader with skipinitialspace, merge_prompts)
    // gives for the same file and calls, run in Python 3.
    const FILE: &str = "\u{feff}name,prompt,negative_prompt\nCinematic,\"cinematic still of {prompt}, film grain\",\
                        \"cartoon, {prompt}\"\nSharp, sharp focus ,blurry\n\n\"Quoted, name\",\"a \"\"quoted\"\" word\",\n\
                        Empty,,\n";

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_file_reads_as_pythons_csv_reads_it() {
        let database = StyleDatabase::parse(FILE);
        let got: Vec<(&str, &str, &str)> = database
            .styles()
            .iter()
            .map(|s| (s.name.as_str(), s.prompt.as_str(), s.negative_prompt.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Cinematic", "cinematic still of {prompt}, film grain", "cartoon, {prompt}"),
                ("Sharp", "sharp focus ", "blurry"),
                ("Quoted, name", "a \"quoted\" word", ""),
                ("Empty", "", ""),
            ]
        );
    }

    #[test]
    fn styles_apply_in_order_as_a1111_applies_them() {
        let database = StyleDatabase::parse(FILE);
        for (prompt, styles, positive, negative) in [
            (" a cat ", &["Sharp"][..], "a cat, sharp focus", "low quality, blurry"),
            (
                "a cat",
                &["Cinematic", "Sharp"],
                "cinematic still of a cat, film grain, sharp focus",
                "cartoon, low quality, blurry",
            ),
            (
                "a cat",
                &["Sharp", "Cinematic"],
                "cinematic still of a cat, sharp focus, film grain",
                "cartoon, low quality, blurry",
            ),
            (" a cat ", &["Nope"], "a cat", "low quality"),
            ("", &["Sharp"], "sharp focus", "low quality, blurry"),
            ("a dog", &["Quoted, name"], "a dog, a \"quoted\" word", "low quality"),
            (" x ", &["Empty"], "x", "low quality"),
        ] {
            assert_eq!(database.apply(prompt, &names(styles)), positive, "{prompt:?} {styles:?}");
            assert_eq!(database.apply_negative("low quality", &names(styles)), negative, "{styles:?}");
        }
        assert_eq!(database.apply(" untouched ", &[]), " untouched ");
    }

    #[test]
    fn old_text_column_crlf_and_a_missing_file() {
        let database = StyleDatabase::parse("name,text\r\nOld,\"two\r\nlines\"\r\n");
        assert_eq!(database.get("Old").map(|s| s.prompt.as_str()), Some("two\r\nlines"));
        let missing = StyleDatabase::load(Path::new("/nonexistent/styles.csv")).unwrap();
        assert!(missing.styles().is_empty());
    }
}
