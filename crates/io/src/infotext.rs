//! A1111 infotext: the "parameters" text stored in images — writing it exactly as v1.10's `create_infotext`
//! does and parsing it as `parse_generation_parameters` does.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// One value in the parameters line. Its type decides how it prints (Python's `str()`).
#[derive(Debug, Clone, PartialEq)]
pub enum InfotextValue {
    /// Printed as is (JSON-quoted when it holds `,` `:` or a newline).
    Text(String),
    /// Printed in decimal.
    Int(i64),
    /// Printed like Python's `repr(float)`: `7.0`, `0.75`, `1e-05`.
    Float(f64),
    /// Printed `True` / `False`.
    Bool(bool),
}

impl InfotextValue {
    /// The value as Python's `str()` prints it.
    pub fn to_python_string(&self) -> String {
        match self {
            InfotextValue::Text(text) => text.clone(),
            InfotextValue::Int(value) => value.to_string(),
            InfotextValue::Float(value) => python_float(*value),
            InfotextValue::Bool(value) => if *value { "True" } else { "False" }.to_string(),
        }
    }
}

impl From<&str> for InfotextValue {
    fn from(text: &str) -> Self {
        InfotextValue::Text(text.to_string())
    }
}

impl From<String> for InfotextValue {
    fn from(text: String) -> Self {
        InfotextValue::Text(text)
    }
}

impl From<i64> for InfotextValue {
    fn from(value: i64) -> Self {
        InfotextValue::Int(value)
    }
}

impl From<f64> for InfotextValue {
    fn from(value: f64) -> Self {
        InfotextValue::Float(value)
    }
}

impl From<bool> for InfotextValue {
    fn from(value: bool) -> Self {
        InfotextValue::Bool(value)
    }
}

/// Formats a float as Python's `repr`: shortest round-trip digits, `.0` on integral values, and scientific
/// notation (`1e-05`, `1e+16`) below 1e-4 and from 1e16 on.
pub fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.into();
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if value != 0.0 && !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let plain = format!("{value}");
    if plain.contains('.') { plain } else { format!("{plain}.0") }
}

/// A1111's `Lora hashes` paste-back (its Lora extension's `infotext_pasted`): every `<lora:NAME:` of `prompt`
/// whose NAME the `Lora hashes` value lists is renamed to the local network with that short hash, as
/// `local_name(hash)` finds it; names without a hash or a local match stay.
pub fn rename_pasted_networks(prompt: &str, lora_hashes: &str, local_name: impl Fn(&str) -> Option<String>) -> String {
    static LORA_TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new("<lora:([^:]+):").expect("valid regex"));
    let hashes: std::collections::HashMap<String, String> = lora_hashes
        .split(',')
        .filter_map(|entry| entry.trim().split_once(':'))
        .map(|(name, hash)| (name.trim().replace(',', ""), hash.trim().to_owned()))
        .collect();
    LORA_TAG
        .replace_all(prompt, |caps: &regex::Captures<'_>| {
            let renamed = hashes.get(&caps[1]).and_then(|hash| local_name(hash));
            renamed.map_or_else(|| caps[0].to_owned(), |name| format!("<lora:{name}:"))
        })
        .into_owned()
}

/// A1111's `quote`: values containing `,` `:` or a newline become JSON strings (non-ASCII kept).
pub fn quote(text: &str) -> String {
    if !text.contains([',', '\n', ':']) {
        return text.to_string();
    }
    serde_json::to_string(text).unwrap_or_else(|_| text.to_string())
}

/// A1111's `unquote`: a `"…"` value is JSON-decoded; anything else (or bad JSON) is returned unchanged.
pub fn unquote(text: &str) -> String {
    if text.len() < 2 || !text.starts_with('"') || !text.ends_with('"') {
        return text.to_string();
    }
    serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string())
}

/// Hires-fix entries, written after the fixed keys in A1111's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HiresParams {
    /// "Hires checkpoint".
    pub checkpoint: Option<String>,
    /// "Hires sampler" (only when it differs from the first pass).
    pub sampler: Option<String>,
    /// "Hires prompt" (only when it differs).
    pub prompt: Option<String>,
    /// "Hires negative prompt" (only when it differs).
    pub negative_prompt: Option<String>,
    /// "Hires schedule type".
    pub schedule_type: Option<String>,
    /// "Hires upscale" (when no explicit resize is given).
    pub upscale: Option<InfotextValue>,
    /// "Hires resize" as (width, height).
    pub resize: Option<(u32, u32)>,
    /// "Hires steps" (only when non-zero).
    pub steps: Option<u32>,
    /// "Hires upscaler".
    pub upscaler: Option<String>,
}

/// Everything an infotext records, in A1111 v1.10's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Prompt (may span lines).
    pub prompt: String,
    /// Negative prompt; its line is omitted when empty.
    pub negative_prompt: String,
    /// "Steps".
    pub steps: u32,
    /// "Sampler".
    pub sampler: String,
    /// "Schedule type" label.
    pub schedule_type: Option<String>,
    /// "CFG scale" (an Int prints `7`, a Float `7.0`).
    pub cfg_scale: InfotextValue,
    /// "Image CFG scale".
    pub image_cfg_scale: Option<f64>,
    /// "Seed".
    pub seed: i64,
    /// "Face restoration".
    pub face_restoration: Option<String>,
    /// "Size" width.
    pub width: u32,
    /// "Size" height.
    pub height: u32,
    /// "Model hash".
    pub model_hash: Option<String>,
    /// "Model".
    pub model: Option<String>,
    /// "VAE hash".
    pub vae_hash: Option<String>,
    /// "VAE".
    pub vae: Option<String>,
    /// "Variation seed".
    pub variation_seed: Option<i64>,
    /// "Variation seed strength".
    pub variation_seed_strength: Option<f64>,
    /// "Seed resize from" (width, height).
    pub seed_resize_from: Option<(u32, u32)>,
    /// "Denoising strength".
    pub denoising_strength: Option<f64>,
    /// "Conditional mask weight".
    pub conditional_mask_weight: Option<f64>,
    /// "Clip skip" (written only when > 1).
    pub clip_skip: u32,
    /// "ENSD".
    pub ensd: Option<i64>,
    /// "Token merging ratio".
    pub token_merging_ratio: Option<f64>,
    /// "Init image hash".
    pub init_image_hash: Option<String>,
    /// "RNG" (written only when not "GPU").
    pub rng: String,
    /// "Tiling".
    pub tiling: bool,
    /// Hires-fix entries.
    pub hires: Option<HiresParams>,
    /// Other entries, in order (A1111's `extra_generation_params`: "Mask blur", "Discard penultimate sigma", …).
    pub extra: Vec<(String, InfotextValue)>,
    /// "Version".
    pub version: Option<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            sampler: "DPM++ 2M".into(),
            schedule_type: None,
            cfg_scale: InfotextValue::Float(7.0),
            image_cfg_scale: None,
            seed: 0,
            face_restoration: None,
            width: 512,
            height: 512,
            model_hash: None,
            model: None,
            vae_hash: None,
            vae: None,
            variation_seed: None,
            variation_seed_strength: None,
            seed_resize_from: None,
            denoising_strength: None,
            conditional_mask_weight: None,
            clip_skip: 1,
            ensd: None,
            token_merging_ratio: None,
            init_image_hash: None,
            rng: "GPU".into(),
            tiling: false,
            hires: None,
            extra: Vec::new(),
            version: None,
        }
    }
}

fn size(width: u32, height: u32) -> InfotextValue {
    InfotextValue::Text(format!("{width}x{height}"))
}

impl GenerationParams {
    /// The parameters line's entries in A1111's order; `None` values are dropped when rendering.
    pub fn entries(&self) -> Vec<(String, Option<InfotextValue>)> {
        let text = |v: &Option<String>| v.clone().map(InfotextValue::Text);
        let float = |v: Option<f64>| v.map(InfotextValue::Float);
        let mut entries: Vec<(&str, Option<InfotextValue>)> = vec![
            ("Steps", Some(InfotextValue::Int(self.steps.into()))),
            ("Sampler", Some(self.sampler.clone().into())),
            ("Schedule type", text(&self.schedule_type)),
            ("CFG scale", Some(self.cfg_scale.clone())),
            ("Image CFG scale", float(self.image_cfg_scale)),
            ("Seed", Some(self.seed.into())),
            ("Face restoration", text(&self.face_restoration)),
            ("Size", Some(size(self.width, self.height))),
            ("Model hash", text(&self.model_hash)),
            ("Model", text(&self.model)),
            ("VAE hash", text(&self.vae_hash)),
            ("VAE", text(&self.vae)),
            ("Variation seed", self.variation_seed.map(InfotextValue::Int)),
            ("Variation seed strength", float(self.variation_seed_strength)),
            ("Seed resize from", self.seed_resize_from.map(|(w, h)| size(w, h))),
            ("Denoising strength", float(self.denoising_strength)),
            ("Conditional mask weight", float(self.conditional_mask_weight)),
            ("Clip skip", (self.clip_skip > 1).then(|| InfotextValue::Int(self.clip_skip.into()))),
            ("ENSD", self.ensd.map(InfotextValue::Int)),
            ("Token merging ratio", float(self.token_merging_ratio)),
            ("Init image hash", text(&self.init_image_hash)),
            ("RNG", (self.rng != "GPU").then(|| self.rng.clone().into())),
            ("Tiling", self.tiling.then(|| "True".into())),
        ];
        if let Some(hires) = &self.hires {
            entries.extend([
                ("Hires checkpoint", text(&hires.checkpoint)),
                ("Hires sampler", text(&hires.sampler)),
                ("Hires prompt", text(&hires.prompt)),
                ("Hires negative prompt", text(&hires.negative_prompt)),
                ("Hires schedule type", text(&hires.schedule_type)),
                ("Hires upscale", hires.upscale.clone()),
                ("Hires resize", hires.resize.map(|(w, h)| size(w, h))),
                ("Hires steps", hires.steps.map(|s| InfotextValue::Int(s.into()))),
                ("Hires upscaler", text(&hires.upscaler)),
            ]);
        }
        let mut owned: Vec<(String, Option<InfotextValue>)> =
            entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (key, value) in &self.extra {
            // A later entry with an existing key replaces the value in place, as a Python dict update does.
            match owned.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = Some(value.clone()),
                None => owned.push((key.clone(), Some(value.clone()))),
            }
        }
        owned.push(("Version".into(), text(&self.version)));
        owned
    }

    /// The infotext exactly as A1111 writes it.
    pub fn to_infotext(&self) -> String {
        let parameters = self
            .entries()
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v.to_python_string())))
            .map(|(key, value)| if key == value { key } else { format!("{key}: {}", quote(&value)) })
            .collect::<Vec<_>>()
            .join(", ");
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        format!("{}{negative}\n{parameters}", self.prompt).trim().to_string()
    }

    /// Reads an infotext back into typed fields; keys sdrt has no field for land in `extra` as text.
    pub fn from_infotext(text: &str) -> Self {
        let parsed = ParsedInfotext::parse(text);
        let mut params = GenerationParams {
            prompt: parsed.prompt.clone(),
            negative_prompt: parsed.negative_prompt.clone(),
            ..GenerationParams::default()
        };
        let mut hires = HiresParams::default();
        let mut has_hires = false;
        for (key, value) in &parsed.params {
            if !params.apply(key, value) {
                if hires.apply(key, value) {
                    has_hires = true;
                } else {
                    params.extra.push((key.clone(), InfotextValue::Text(value.clone())));
                }
            }
        }
        params.hires = has_hires.then_some(hires);
        params
    }

    /// Sets the field that `key` names; false when `key` is not a fixed key.
    fn apply(&mut self, key: &str, value: &str) -> bool {
        let float = || value.parse::<f64>().ok();
        match key {
            "Steps" => self.steps = value.parse().unwrap_or(self.steps),
            "Sampler" => self.sampler = value.to_string(),
            "Schedule type" => self.schedule_type = Some(value.to_string()),
            "CFG scale" => self.cfg_scale = number_value(value),
            "Image CFG scale" => self.image_cfg_scale = float(),
            "Seed" => self.seed = value.parse().unwrap_or(self.seed),
            "Face restoration" => self.face_restoration = Some(value.to_string()),
            "Size" => match parse_size(value) {
                Some((w, h)) => (self.width, self.height) = (w, h),
                None => return false,
            },
            "Model hash" => self.model_hash = Some(value.to_string()),
            "Model" => self.model = Some(value.to_string()),
            "VAE hash" => self.vae_hash = Some(value.to_string()),
            "VAE" => self.vae = Some(value.to_string()),
            "Variation seed" => self.variation_seed = value.parse().ok(),
            "Variation seed strength" => self.variation_seed_strength = float(),
            "Seed resize from" => self.seed_resize_from = parse_size(value),
            "Denoising strength" => self.denoising_strength = float(),
            "Conditional mask weight" => self.conditional_mask_weight = float(),
            "Clip skip" => self.clip_skip = value.parse().unwrap_or(1),
            "ENSD" => self.ensd = value.parse().ok(),
            "Token merging ratio" => self.token_merging_ratio = float(),
            "Init image hash" => self.init_image_hash = Some(value.to_string()),
            "RNG" => self.rng = value.to_string(),
            "Tiling" => self.tiling = value == "True",
            "Version" => self.version = Some(value.to_string()),
            _ => return false,
        }
        true
    }
}

impl HiresParams {
    fn apply(&mut self, key: &str, value: &str) -> bool {
        let text = Some(value.to_string());
        match key {
            "Hires checkpoint" => self.checkpoint = text,
            "Hires sampler" => self.sampler = text,
            "Hires prompt" => self.prompt = text,
            "Hires negative prompt" => self.negative_prompt = text,
            "Hires schedule type" => self.schedule_type = text,
            "Hires upscale" => self.upscale = Some(number_value(value)),
            "Hires resize" => self.resize = parse_size(value),
            "Hires steps" => self.steps = value.parse().ok(),
            "Hires upscaler" => self.upscaler = text,
            _ => return false,
        }
        true
    }
}

/// An Int when the text is an integer, a Float when it is a float, else Text; so values print back unchanged.
fn number_value(text: &str) -> InfotextValue {
    if let Ok(int) = text.parse::<i64>() {
        return InfotextValue::Int(int);
    }
    match text.parse::<f64>() {
        Ok(float) if python_float(float) == text => InfotextValue::Float(float),
        _ => InfotextValue::Text(text.to_string()),
    }
}

fn parse_size(text: &str) -> Option<(u32, u32)> {
    let caps = IMAGE_SIZE.captures(text)?;
    Some((caps[1].parse().ok()?, caps[2].parse().ok()?))
}

/// A1111's `re_param`: `key: value` pairs, values either JSON-quoted or up to the next comma.
static PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).expect("static regex compiles")
});
static IMAGE_SIZE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\d+)x(\d+)$").expect("static regex compiles"));

/// An infotext split as A1111's `parse_generation_parameters` splits it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedInfotext {
    /// Prompt lines, joined with `\n`.
    pub prompt: String,
    /// Negative prompt lines, joined with `\n`.
    pub negative_prompt: String,
    /// `key: value` pairs of the parameters line, values unquoted, in order.
    pub params: Vec<(String, String)>,
}

impl ParsedInfotext {
    /// Splits `text`: the last line is parameters only when it holds at least 3 `key: value` matches.
    pub fn parse(text: &str) -> Self {
        let trimmed = text.trim();
        let mut lines: Vec<&str> = trimmed.split('\n').collect();
        let last = lines.pop().unwrap_or_default();
        let parameters_line = if PARAM.captures_iter(last).count() >= 3 {
            last
        } else {
            lines.push(last);
            ""
        };
        let mut parsed = ParsedInfotext::default();
        let mut in_negative = false;
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                line = rest.trim();
            }
            let target = if in_negative { &mut parsed.negative_prompt } else { &mut parsed.prompt };
            if !target.is_empty() {
                target.push('\n');
            }
            target.push_str(line);
        }
        for caps in PARAM.captures_iter(parameters_line) {
            parsed.params.push((caps[1].to_string(), unquote(&caps[2])));
        }
        parsed
    }

    /// The value of `key`, if present (the last one wins, as in A1111's dict).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A1111's result dict: `Prompt`, `Negative prompt`, every pair (sizes split into `Key-1`/`Key-2`), and the
    /// defaults it adds for missing keys (`Clip skip` 1, `RNG` GPU, `Schedule type` Automatic, …).
    pub fn to_a1111_parameters(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("Prompt".into(), self.prompt.clone().into());
        map.insert("Negative prompt".into(), self.negative_prompt.clone().into());
        for (key, value) in &self.params {
            match IMAGE_SIZE.captures(value) {
                Some(caps) => {
                    map.insert(format!("{key}-1"), caps[1].into());
                    map.insert(format!("{key}-2"), caps[2].into());
                }
                None => {
                    map.insert(key.clone(), value.clone().into());
                }
            }
        }
        let defaults: [(&str, Value); 16] = [
            ("Clip skip", "1".into()),
            ("Hires resize-1", 0.into()),
            ("Hires resize-2", 0.into()),
            ("Hires sampler", "Use same sampler".into()),
            ("Hires checkpoint", "Use same checkpoint".into()),
            ("Hires prompt", "".into()),
            ("Hires negative prompt", "".into()),
            ("Mask mode", "Inpaint masked".into()),
            ("Masked content", "original".into()),
            ("Inpaint area", "Whole picture".into()),
            ("Masked area padding", 32.into()),
            ("RNG", "GPU".into()),
            ("Schedule type", "Automatic".into()),
            ("Schedule max sigma", 0.into()),
            ("Schedule min sigma", 0.into()),
            ("Schedule rho", 0.into()),
        ];
        for (key, value) in defaults {
            map.entry(key).or_insert(value);
        }
        for (key, value) in [("VAE Encoder", "Full"), ("VAE Decoder", "Full"), ("FP8 weight", "Disable")] {
            map.entry(key).or_insert(value.into());
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (7.0, "7.0"),
            (0.75, "0.75"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789.0, "123456789.0"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (0.0, "0.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float(value), expected, "{value}");
        }
    }

    #[test]
    fn quoting_matches_a1111() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a, b"), r#""a, b""#);
        assert_eq!(quote("x: \"y\"\n"), r#""x: \"y\"\n""#);
        assert_eq!(quote("日本, 語"), "\"日本, 語\"");
        assert_eq!(unquote(r#""a, \"b\"""#), "a, \"b\"");
        assert_eq!(unquote(r#""broken"#), r#""broken"#);
    }

    #[test]
    fn reference_infotext_renders_exactly() {
        let params = GenerationParams {
            prompt: "a cat".into(),
            steps: 20,
            schedule_type: Some("Karras".into()),
            seed: 1234,
            model_hash: Some("6ce0161689".into()),
            model: Some("v1-5-pruned-emaonly".into()),
            version: Some("v1.10.1".into()),
            ..GenerationParams::default()
        };
        assert_eq!(
            params.to_infotext(),
            "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x512, \
             Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
        );
    }

    #[test]
    fn short_last_line_stays_in_the_prompt() {
        let parsed = ParsedInfotext::parse("a photo\nNegative prompt: blurry\nSteps: 20, Sampler: Euler");
        assert_eq!(parsed.prompt, "a photo");
        assert_eq!(parsed.negative_prompt, "blurry\nSteps: 20, Sampler: Euler");
        assert!(parsed.params.is_empty());
        let map = parsed.to_a1111_parameters();
        assert_eq!(map["Clip skip"], "1");
        assert_eq!(map["RNG"], "GPU");
        assert_eq!(map["Schedule type"], "Automatic");
    }

    #[test]
    fn extra_key_equal_to_a_fixed_key_replaces_in_place() {
        let params = GenerationParams {
            denoising_strength: None,
            extra: vec![("Denoising strength".into(), 0.7.into()), ("Hires upscale".into(), 2.0.into())],
            ..GenerationParams::default()
        };
        let text = params.to_infotext();
        assert!(text.contains("Size: 512x512, Denoising strength: 0.7, Hires upscale: 2.0"), "{text}");
    }
}

#[cfg(test)]
mod paste_tests {
    use super::rename_pasted_networks;

    #[test]
    fn pasted_lora_names_follow_their_hashes_to_local_files() {
        let local = |hash: &str| (hash == "98234163483c").then(|| "my-locon".to_owned());
        let prompt = "a cat <lora:their-locon:0.5>, <lora:other:1> <lora:their-locon>";
        let renamed = rename_pasted_networks(prompt, "their-locon: 98234163483c, other: 000000000000", local);
        // A1111's pattern needs the `:` after the name, so a bare tag stays, as does a hash with no local file.
        assert_eq!(renamed, "a cat <lora:my-locon:0.5>, <lora:other:1> <lora:their-locon>");
        assert_eq!(rename_pasted_networks(prompt, "", local), prompt);
    }
}
