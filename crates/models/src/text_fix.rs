//! The text clean-up that transformers' slow `CLIPTokenizer` runs before BPE when ftfy is installed (A1111's
//! case): `ftfy.fix_text` with its default configuration, re-implemented for the fixes prompts meet.
//!
//! [`fix_text`] follows ftfy 6.3's order, per line and repeated until the line stops changing: HTML entities
//! (unless the text so far contained `<`) → mojibake repair → C1 controls as Windows-1252 → Latin ligatures →
//! full-width/half-width forms → curly quotes → line breaks → ANSI terminal escapes → control characters →
//! NFC.
//!
//! Mojibake repair is deliberately narrower than ftfy's. A line is re-decoded only when all of these hold:
//! it contains one of the unambiguous mojibake pairs [`looks_like_mojibake`] lists (a subset of ftfy's
//! "badness" patterns, so ftfy would try to fix it too); the whole line encodes as Latin-1, or else as
//! Windows-1252 (with its five undefined bytes passed through, as ftfy's "sloppy" codec does); and those
//! bytes are valid UTF-8. That is ftfy's first and by far most common repair (`cafÃ©` → `café`,
//! `â€œ` → `“`), and when it applies we produce ftfy's output. Not reproduced (text is left as it is): the
//! other single-byte encodings (Windows-1250/1251/1253/1254/1257, ISO-8859-2, MacRoman, CP437), mojibake
//! mixed with correct text on one line (`decode_inconsistent_utf8`), spaces that replaced byte A0
//! (`restore_byte_a0`), `�` standing in for lost bytes, CESU-8 / Java "modified UTF-8", and lines that only
//! ftfy's rarer badness patterns flag. ftfy's one-million-character segment limit is not applied either.

use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// ftfy re-applies its fixes until the text is stable; real text settles in two or three passes.
const MAX_PASSES: usize = 16;

/// `ftfy.fix_text(text)` with the default configuration, within the limits the module docs list.
pub(crate) fn fix_text(text: &str) -> Cow<'_, str> {
    if is_clean_ascii(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut unescape_html = true;
    for line in text.split_inclusive('\n') {
        // ftfy turns entity decoding off for the rest of the text once a line looks like markup.
        unescape_html &= !line.contains('<');
        out.push_str(&fix_line(line, unescape_html));
    }
    Cow::Owned(out)
}

/// Printable ASCII plus tab, newline and form feed, without `&`: nothing in [`fix_text`] changes it.
fn is_clean_ascii(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'\t' | b'\n' | 0x0C | b' '..=b'~') && b != b'&')
}

fn fix_line(line: &str, unescape_html: bool) -> String {
    let mut current = line.to_owned();
    for _ in 0..MAX_PASSES {
        let next = fix_line_once(&current, unescape_html);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn fix_line_once(line: &str, unescape_html: bool) -> String {
    let text = if unescape_html { unescape_entities(line) } else { line.to_owned() };
    let text = fix_mojibake(text);
    let text: String = text.chars().map(c1_control_as_windows_1252).collect();
    let text = expand_latin_ligatures(&text);
    let text = normalize_width(&text);
    let text: String = text.chars().map(uncurl_quote).collect();
    let text = unify_line_breaks(&text);
    let text = remove_terminal_escapes(&text);
    let text: String = text.chars().filter(|c| !is_unwanted_control(*c)).collect();
    nfc(text)
}

// ---- HTML entities -------------------------------------------------------------------------------------

/// ftfy's entity rule: only `&name;` / `&#n;` / `&#xh;` with the semicolon (so `this&not that` stays), names
/// from the HTML5 list, plus all-caps spellings of lowercase entity names (`&EACUTE;` → `É`).
fn unescape_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        match entity_at(candidate) {
            Some(len) => {
                let entity = &candidate[..len];
                match decode_entity(entity) {
                    Some(decoded) => out.push_str(&decoded),
                    None => out.push_str(entity),
                }
                rest = &candidate[len..];
            }
            None => {
                out.push('&');
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length of `&#?[0-9A-Za-z]{1,24};` at the start of `text`, if it is there.
fn entity_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let body_start = if bytes.get(1) == Some(&b'#') { 2 } else { 1 };
    let body_len = bytes[body_start..].iter().take(25).take_while(|b| b.is_ascii_alphanumeric()).count();
    ((1..=24).contains(&body_len) && bytes.get(body_start + body_len) == Some(&b';'))
        .then_some(body_start + body_len + 1)
}

fn decode_entity(entity: &str) -> Option<String> {
    if let Some(number) = entity.strip_prefix("&#") {
        return decode_character_reference(&number[..number.len() - 1]);
    }
    if let Some(value) = htmlize::ENTITIES.get(entity.as_bytes()) {
        return Some(String::from_utf8_lossy(value).into_owned());
    }
    decode_uppercased_entity(entity)
}

/// `&NTILDE;` → `Ñ`: the uppercase spelling of a lowercase entity name, unless Python's `html.unescape`
/// would already read a legacy entity (`&LT`, `&AMP`, …) at its start, which makes it ambiguous.
fn decode_uppercased_entity(entity: &str) -> Option<String> {
    let name = &entity[1..entity.len() - 1];
    let lower = name.to_ascii_lowercase();
    if lower == name || name.to_ascii_uppercase() != name {
        return None;
    }
    let value = htmlize::ENTITIES.get(format!("&{lower};").as_bytes())?;
    let legacy_prefix =
        (2..=name.len()).any(|end| htmlize::ENTITIES.contains_key(format!("&{}", &name[..end]).as_bytes()));
    (!legacy_prefix).then(|| String::from_utf8_lossy(value).to_uppercase())
}

/// `&#39;` / `&#x263A;` as Python's `html.unescape` decodes them; `None` when it would not consume the whole
/// reference (`&#12ab;`), which ftfy then leaves alone.
fn decode_character_reference(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (body, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // At most 24 digits: anything past u128 is out of Unicode's range either way.
    let number = u128::from_str_radix(digits, radix).unwrap_or(u128::MAX);
    Some(match number {
        0 => "\u{FFFD}".to_owned(),
        0x0D => "\r".to_owned(),
        0x80..=0x9F => windows_1252_char(number as u8).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_owned(),
        n if n > 0x10FFFF => "\u{FFFD}".to_owned(),
        n if is_invalid_html_codepoint(n as u32) => String::new(),
        n => char::from_u32(n as u32).map(String::from).unwrap_or_default(),
    })
}

/// Code points Python's `html.unescape` drops: C0/C1 controls other than whitespace, and noncharacters.
fn is_invalid_html_codepoint(n: u32) -> bool {
    matches!(n, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF) || n & 0xFFFE == 0xFFFE
}

// ---- Mojibake ------------------------------------------------------------------------------------------

/// The conservative re-decoding described in the module docs.
fn fix_mojibake(text: String) -> String {
    let mut current = text;
    for _ in 0..MAX_PASSES {
        if current.is_ascii() || !looks_like_mojibake(&current) {
            break;
        }
        let Some(fixed) = redecode_as_utf8(&current) else { break };
        if fixed == current {
            break;
        }
        current = fixed;
    }
    current
}

/// Character pairs that are almost only ever UTF-8 read as Windows-1252 / Latin-1. Each is also one of
/// ftfy's "badness" patterns, so everything repaired here ftfy repairs the same way.
fn looks_like_mojibake(text: &str) -> bool {
    let mut previous = None;
    for c in text.chars() {
        if matches!(c, '\u{80}'..='\u{9F}') {
            return true;
        }
        if let Some(p) = previous
            && is_mojibake_pair(p, c)
        {
            return true;
        }
        previous = Some(c);
    }
    false
}

fn is_mojibake_pair(first: char, second: char) -> bool {
    let accented_letter = matches!(first, 'À'..='Ñ' | 'à'..='ñ');
    // Symbols that are almost never written next to an accented letter on purpose.
    let rare_symbol = matches!(
        second,
        '¦' | '¤' | '¨' | '¬' | '¯' | '¸' | 'ƒ' | 'ˆ' | 'ˇ' | '˘' | '˛' | '˜' | '†' | '‡' | '‰' | 'ª' | 'º'
    );
    // `Â`/`Ã` + a Windows-1252 symbol: the two-character shape of UTF-8 for U+0080–U+00FF.
    let a_hat_pair = matches!(first, 'Â' | 'Ã')
        && matches!(
            second,
            '€' | 'œ'
                | 'Š'
                | 'š'
                | 'Ÿ'
                | 'ž'
                | '\u{A0}'
                | '\u{AD}'
                | '®'
                | '©'
                | '°'
                | '·'
                | '»'
                | '–'
                | '—'
                | '´'
                | '‘'
                | '“'
                | '”'
                | '„'
                | '•'
                | '¡'
                | '«'
                | '¿'
                | '‚'
                | '‹'
                | '›'
        );
    // A capital accented letter + a number sign or legal symbol (`Â±`, `Ã·`, `Â§`).
    let capital_before_number_sign = matches!(first, 'À'..='Ñ')
        && matches!(second, '±' | '²' | '³' | '¹' | '¼' | '½' | '¾' | '×' | '÷' | 'µ' | '¶' | '§');
    // `â€`: the first two bytes of UTF-8 for U+2000–U+203F (curly quotes, dashes, ellipsis).
    let a_circumflex_euro = matches!(first, 'à'..='ñ') && second == '€';
    (accented_letter && rare_symbol) || a_hat_pair || capital_before_number_sign || a_circumflex_euro
}

/// The whole text encoded as Latin-1 (tried first, as ftfy does) or sloppy Windows-1252, then decoded as
/// strict UTF-8.
fn redecode_as_utf8(text: &str) -> Option<String> {
    [encode_latin_1, encode_sloppy_windows_1252]
        .iter()
        .find_map(|encode| encode(text).and_then(|bytes| String::from_utf8(bytes).ok()))
}

fn encode_latin_1(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn encode_sloppy_windows_1252(text: &str) -> Option<Vec<u8>> {
    text.chars().map(windows_1252_byte).collect()
}

/// The Windows-1252 byte for `c`; the five bytes Windows-1252 leaves undefined map to the C1 characters of
/// the same value, as in ftfy's "sloppy" codec and in web browsers.
fn windows_1252_byte(c: char) -> Option<u8> {
    match u32::from(c) {
        n @ (0..=0x7F | 0xA0..=0xFF | 0x81 | 0x8D | 0x8F | 0x90 | 0x9D) => Some(n as u8),
        _ => (0x80..=0x9F).find(|byte| windows_1252_char(*byte) == c),
    }
}

/// The character Windows-1252 byte `byte` (0x80–0x9F) stands for; undefined bytes pass through.
fn windows_1252_char(byte: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
    ];
    match byte {
        0x80..=0x9F => HIGH[usize::from(byte - 0x80)],
        _ => char::from(byte),
    }
}

/// C1 control characters are almost always Windows-1252 bytes decoded as Latin-1 (what browsers assume).
fn c1_control_as_windows_1252(c: char) -> char {
    match u32::from(c) {
        n @ 0x80..=0x9F => windows_1252_char(n as u8),
        _ => c,
    }
}

// ---- Character-level fixes -----------------------------------------------------------------------------

/// Latin typographic ligatures and legacy digraphs split into their letters; `æ`/`œ` stay (they are spelling).
fn expand_latin_ligatures(text: &str) -> Cow<'_, str> {
    let expansion = |c: char| -> Option<&'static str> {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "\u{2BC}n",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "D\u{17D}",
            'ǅ' => "D\u{17E}",
            'ǆ' => "d\u{17E}",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "\u{17F}t",
            'ﬆ' => "st",
            _ => return None,
        })
    };
    if !text.chars().any(|c| expansion(c).is_some()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match expansion(c) {
            Some(letters) => out.push_str(letters),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Full-width ASCII and half-width katakana/Hangul (U+FF01–U+FFEF) replaced by their NFKC forms, and the
/// ideographic space U+3000 by a plain space. Nothing outside those ranges is compatibility-normalised.
fn normalize_width(text: &str) -> Cow<'_, str> {
    let is_width_form = |c: char| matches!(c, '\u{3000}' | '\u{FF01}'..='\u{FFEF}');
    if !text.chars().any(is_width_form) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            c if is_width_form(c) => out.extend(std::iter::once(c).nfkc()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2BC}' | '\u{2018}'..='\u{201B}' => '\'',
        '\u{201C}'..='\u{201F}' => '"',
        c => c,
    }
}

/// CRLF, CR, U+2028, U+2029 and NEL all become `\n`.
fn unify_line_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n"))
}

/// ANSI colour/cursor sequences `ESC [ digits-and-semicolons letter`.
fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains("\u{1B}[") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\u{1B}[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let params = after.bytes().take_while(|b| b.is_ascii_digit() || *b == b';').count();
        match after.as_bytes().get(params) {
            Some(b) if b.is_ascii_alphabetic() => rest = &after[params + 1..],
            _ => {
                out.push_str("\u{1B}[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Controls that are never meant in text: C0 except tab/newline/form feed/CR, DEL, deprecated Arabic format
/// controls, the byte-order mark, interlinear annotations and the object replacement character. Joiners,
/// bidi marks, C1 controls (handled above) and tag characters stay.
fn is_unwanted_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}' | '\u{B}' | '\u{E}'..='\u{1F}' | '\u{7F}' | '\u{206A}'..='\u{206F}' | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFC}'
    )
}

fn nfc(text: String) -> String {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => text,
        _ => text.nfc().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every expected value below is what ftfy 6.3.1's `fix_text` returns (tools/fixtures/.venv).
    fn check(input: &str, expected: &str) {
        assert_eq!(fix_text(input), expected, "fix_text({input:?})");
    }

    #[test]
    fn plain_ascii_is_borrowed_unchanged() {
        let text = "a photo of an astronaut, (masterpiece:1.2) [blurry] <lora:x:0.5>\tBREAK\n";
        assert!(matches!(fix_text(text), Cow::Borrowed(_)));
        assert!(matches!(fix_text(""), Cow::Borrowed(_)));
    }

    #[test]
    fn text_that_needs_no_fix_is_unchanged() {
        for text in [
            "café crème brûlée naïve façade",
            "œuvre æsthetic Æon ŒIL",
            "日本語のテキスト 中文提示词 한국어 문장",
            "русский текст ελληνικά עברית العربية",
            "a cat 🐱 wearing a top hat 🎩 👍🏽 👨\u{200d}👩\u{200d}👧 🇯🇵 1️⃣",
            "Straße İstanbul ΣΊΣΥΦΟΣ",
            "©®™ ° ± × ÷ µ ¶ § ½ ¼ ²³",
            "zero\u{200b}width and no\u{a0}break space",
            "a < b > c &amp; d",
            "this&not that, AT&T; &unknownname; &#12ab;",
            "Ã¥ is ambiguous enough that ftfy keeps it",
        ] {
            check(text, text);
        }
    }

    #[test]
    fn html_entities_follow_ftfy() {
        check("tom &amp; jerry", "tom & jerry");
        check("fish &amp;amp; chips", "fish & chips");
        check(
            "&lt;lora:detail:0.8&gt; &quot;quoted&quot; &#39;single&#39; &#x263A;",
            "<lora:detail:0.8> \"quoted\" 'single' ☺",
        );
        check("P&EACUTE;REZ &SZLIG; &NTILDE; &nTILDE;", "PÉREZ SS Ñ &nTILDE;");
        check("&LTRI; &amp", "&LTRI; &amp");
        check("&#0; &#128; &#x80; &#1; &#xD800; &#99999999;", "\u{FFFD} € €  \u{FFFD} \u{FFFD}");
    }

    #[test]
    fn markup_turns_entity_decoding_off_from_its_line_on() {
        check("a &amp; b\n<i>&amp;</i>\nc &amp; d", "a & b\n<i>&amp;</i>\nc &amp; d");
    }

    #[test]
    fn utf8_read_as_windows_1252_is_repaired() {
        check("cafÃ© mojibake â€œquotesâ€\u{9d}", "café mojibake \"quotes\"");
        check("naÃ¯ve", "naïve");
        check("Ã©", "é");
        check("Â±5", "±5");
        check("â€™", "'");
        check("doubly ÃƒÂ© encoded", "doubly é encoded");
    }

    #[test]
    fn c1_controls_become_windows_1252() {
        check("a\u{80}b \u{96} c\u{81}", "a€b – c\u{81}");
    }

    #[test]
    fn latin_ligatures_are_split() {
        check("ﬁne ﬂower ﬀ ﬃ ﬄ ligatures", "fine flower ff ffi ffl ligatures");
        check("ĳs ǅ ŉ", "ijs Dž 'n");
    }

    #[test]
    fn width_forms_become_normal_width() {
        check("ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ １２３ ！？", "ABC full width 123 !?");
        check("（masterpiece：1.2），ｂｅｓｔ\u{3000}ｑｕａｌｉｔｙ", "(masterpiece:1.2),best quality");
        check("ｳﾀｰﾝ", "ウターン");
        // Only the width forms: other compatibility characters are not NFKC-normalised.
        check("½ ² ℌ", "½ ² ℌ");
    }

    #[test]
    fn curly_quotes_are_straightened() {
        check(
            "‘curly single’ “curly double” — em dash … ellipsis",
            "'curly single' \"curly double\" — em dash … ellipsis",
        );
    }

    #[test]
    fn line_breaks_escapes_and_controls_are_cleaned() {
        check("line one\r\nline two\rthree\u{2028}four", "line one\nline two\nthree\nfour");
        check("\u{1b}[36;44mblue\u{1b}[0m \u{feff}bom\u{0}\u{7}", "blue bom");
    }

    #[test]
    fn text_is_nfc_normalised() {
        check("cafe\u{301}", "café");
    }
}
