//! A1111's extra-network tags (`modules/extra_networks.py`): `<kind:arg:arg…>` anywhere in a prompt (the regex
//! `<(\w+):([^>]+)>`), removed from the text before anything else reads it, and the LoRA multipliers read from
//! their arguments (`extensions-builtin/Lora/extra_networks_lora.py`).

use super::pychar::is_word;

/// One tag: A1111's `ExtraNetworkParams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraNetworkCall {
    /// The part before the first `:` (`lora`, `lyco`, `hypernet`, …).
    pub kind: String,
    /// Every `:`-separated argument.
    pub items: Vec<String>,
    /// Arguments without a single `=` (the network's name first).
    pub positional: Vec<String>,
    /// `key=value` arguments, in order (a later key replaces an earlier one).
    pub named: Vec<(String, String)>,
}

impl ExtraNetworkCall {
    fn new(kind: &str, args: &str) -> Self {
        let items: Vec<String> = args.split(':').map(str::to_owned).collect();
        let (mut positional, mut named) = (Vec::new(), Vec::<(String, String)>::new());
        for item in &items {
            // Python's `item.split('=', 2)`: exactly two parts make a named argument; `a=b=c` stays positional.
            let parts: Vec<&str> = item.splitn(3, '=').collect();
            match parts.as_slice() {
                [key, value] => {
                    named.retain(|(k, _)| k != key);
                    named.push(((*key).to_owned(), (*value).to_owned()));
                }
                _ => positional.push(item.clone()),
            }
        }
        Self { kind: kind.to_owned(), items, positional, named }
    }

    /// The value of named argument `key`.
    pub fn named(&self, key: &str) -> Option<&str> {
        self.named.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `prompt` without its tags, and the tags in the order they appear (A1111's `parse_prompt`).
pub fn parse_extra_networks(prompt: &str) -> (String, Vec<ExtraNetworkCall>) {
    let mut text = String::with_capacity(prompt.len());
    let mut calls = Vec::new();
    let mut rest = prompt;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        let tag = &rest[open..];
        match match_tag(tag) {
            Some((length, kind, args)) => {
                calls.push(ExtraNetworkCall::new(kind, args));
                rest = &tag[length..];
            }
            None => {
                text.push('<');
                rest = &tag[1..];
            }
        }
    }
    text.push_str(rest);
    (text, calls)
}

/// A1111's `parse_prompts`: every prompt loses its tags, but only the first prompt's tags are activated.
pub fn parse_extra_network_prompts<S: AsRef<str>>(prompts: &[S]) -> (Vec<String>, Vec<ExtraNetworkCall>) {
    let mut first = None;
    let texts = prompts
        .iter()
        .map(|prompt| {
            let (text, calls) = parse_extra_networks(prompt.as_ref());
            first.get_or_insert(calls);
            text
        })
        .collect();
    (texts, first.unwrap_or_default())
}

/// `<(\w+):([^>]+)>` at the start of `text`: (matched length, kind, arguments).
fn match_tag(text: &str) -> Option<(usize, &str, &str)> {
    let body = text.strip_prefix('<')?;
    let kind_len: usize = body.chars().take_while(|&c| is_word(c)).map(char::len_utf8).sum();
    if kind_len == 0 {
        return None;
    }
    let args_and_rest = body[kind_len..].strip_prefix(':')?;
    let close = args_and_rest.find('>')?;
    if close == 0 {
        return None;
    }
    let length = 1 + kind_len + 1 + close + 1;
    Some((length, &body[..kind_len], &args_and_rest[..close]))
}

/// A `<lora:…>` (or `<lyco:…>`) tag's network and multipliers, as A1111's Lora extension reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraCall {
    /// The network's name (its file stem or alias).
    pub name: String,
    /// Multiplier for the text encoder(s): the second argument or `te=`; 1 by default.
    pub te_multiplier: f64,
    /// Multiplier for the UNet: the third argument or `unet=`; the text encoder's by default.
    pub unet_multiplier: f64,
    /// DyLoRA rank limit: the fourth argument or `dyn=`.
    pub dyn_dim: Option<usize>,
}

/// Why a `<lora:…>` tag cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("<{tag}>: {problem}")]
pub struct LoraCallError {
    /// The tag as written, without the angle brackets.
    pub tag: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl LoraCall {
    /// Reads a `lora`/`lyco` tag; `None` for other kinds.
    pub fn from_call(call: &ExtraNetworkCall) -> Option<Result<Self, LoraCallError>> {
        matches!(call.kind.as_str(), "lora" | "lyco").then(|| Self::read(call))
    }

    fn read(call: &ExtraNetworkCall) -> Result<Self, LoraCallError> {
        let error = |problem: String| LoraCallError { tag: format!("{}:{}", call.kind, call.items.join(":")), problem };
        let number = |text: &str, what: &str| {
            text.trim().parse::<f64>().map_err(|_| error(format!("{what} {text:?} is not a number")))
        };
        let name = call.positional.first().cloned().ok_or_else(|| error("no network name".to_owned()))?;
        let mut te_multiplier = call.positional.get(1).map_or(Ok(1.0), |v| number(v, "multiplier"))?;
        if let Some(te) = call.named("te") {
            te_multiplier = number(te, "te")?;
        }
        let mut unet_multiplier = call.positional.get(2).map_or(Ok(te_multiplier), |v| number(v, "unet multiplier"))?;
        if let Some(unet) = call.named("unet") {
            unet_multiplier = number(unet, "unet")?;
        }
        let dyn_text = call.named("dyn").or(call.positional.get(3).map(String::as_str));
        let dyn_dim = dyn_text
            .map(|text| text.trim().parse::<usize>().map_err(|_| error(format!("dyn {text:?} is not a whole number"))))
            .transpose()?;
        Ok(Self { name, te_multiplier, unet_multiplier, dyn_dim })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(prompt: &str) -> (String, Vec<(String, Vec<String>)>) {
        let (text, calls) = parse_extra_networks(prompt);
        (text, calls.into_iter().map(|c| (c.kind, c.items)).collect())
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    // Expected values are Python's `re.sub(r"<(\w+):([^>]+)>", …)` on the same text.
    #[test]
    fn tags_are_cut_out_as_a1111s_regex_cuts_them() {
        assert_eq!(
            tags("a <lora:fox:0.8> fox, <hypernet:x:1>AND b"),
            (
                "a  fox, AND b".to_owned(),
                vec![("lora".into(), strings(&["fox", "0.8"])), ("hypernet".into(), strings(&["x", "1"]))]
            )
        );
        assert_eq!(tags("<a:<b:c>d>"), ("d>".to_owned(), vec![("a".into(), strings(&["<b", "c"]))]));
        assert_eq!(tags("<:x> <a:> <a b:c> 1<2"), ("<:x> <a:> <a b:c> 1<2".to_owned(), vec![]));
        assert_eq!(
            tags("[<lora:x:1>:b:3] <lyco:é_1:2:3>"),
            (
                "[:b:3] ".to_owned(),
                vec![("lora".into(), strings(&["x", "1"])), ("lyco".into(), strings(&["é_1", "2", "3"])),]
            )
        );
    }

    #[test]
    fn only_the_first_prompt_activates_networks() {
        let (texts, calls) = parse_extra_network_prompts(&["x <lora:a:1>", "y <lora:b:1>"]);
        assert_eq!(texts, ["x ", "y "]);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].positional[0], "a");
    }

    #[test]
    fn multipliers_follow_a1111s_positional_and_named_rules() {
        let lora = |prompt: &str| LoraCall::from_call(&parse_extra_networks(prompt).1[0]).unwrap();
        let read = |prompt: &str| {
            let call = lora(prompt).unwrap();
            (call.name, call.te_multiplier, call.unet_multiplier, call.dyn_dim)
        };
        assert_eq!(read("<lora:fox>"), ("fox".into(), 1.0, 1.0, None));
        assert_eq!(read("<lora:fox:0.5>"), ("fox".into(), 0.5, 0.5, None));
        assert_eq!(read("<lora:fox:0.5:0.25:8>"), ("fox".into(), 0.5, 0.25, Some(8)));
        assert_eq!(read("<lora:fox:unet=0.3:te=0.7>"), ("fox".into(), 0.7, 0.3, None));
        assert_eq!(read("<lyco:fox:1:dyn=4>"), ("fox".into(), 1.0, 1.0, Some(4)));
        let positional = lora("<lora:fox:a=b=c>").unwrap_err();
        assert!(positional.problem.contains("\"a=b=c\""), "a=b=c is positional (Python's split('=', 2))");
        let err = lora("<lora:fox:lots>").unwrap_err();
        assert_eq!(err.to_string(), "<lora:fox:lots>: multiplier \"lots\" is not a number");
        assert!(LoraCall::from_call(&parse_extra_networks("<hypernet:x>").1[0]).is_none());
    }
}
