//! A1111's prompt editing and alternation (`get_learned_conditioning_prompt_schedules`): a hand-written
//! parser for its Lark grammar (`[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b]`, emphasis, stray
//! brackets at the top level) and the per-step texts it yields.

use super::pychar::is_space;
use crate::{Error, Result};

/// The step counts a schedule is built for (A1111's `base_steps`, `hires_steps`, `use_old_scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSteps {
    /// Sampling steps of the (first) pass.
    pub base: usize,
    /// Steps of the hires pass when the schedule is for it: integers then count after `base`, fractions
    /// after 1.0.
    pub hires: Option<usize>,
    /// A1111's "old prompt editing timelines" option: `when < 1` is a fraction, otherwise a step.
    pub old_scheduling: bool,
}

impl ScheduleSteps {
    /// A first-pass schedule over `steps` with the current timeline rules.
    pub fn new(steps: usize) -> Self {
        Self { base: steps, hires: None, old_scheduling: false }
    }
}

/// One parsed piece of a prompt.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Copied verbatim into every step's text (plain text, emphasis brackets, stray brackets).
    Text(String),
    /// `[before:after:when]`; `when` is the raw NUMBER token until steps are known.
    Scheduled { before: Vec<Node>, after: Vec<Node>, when: String },
    /// `[a|b|...]`: one option per step, cycling.
    Alternate(Vec<Vec<Node>>),
}

/// The Lark grammar failed: A1111 then uses the whole prompt for every step.
struct Unparsable;

/// Characters that end a nested `prompt` (they belong to the enclosing construct).
fn ends_prompt(c: char) -> bool {
    matches!(c, ':' | '|' | ']' | ')')
}

/// Constructs nested deeper than this make the prompt unparsable (A1111's Python parser hits its recursion
/// limit long before); without a bound, a prompt of 10 000 `(` would overflow this parser's stack.
const MAX_NESTING: usize = 200;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// `start: (prompt | /[][():]/+)*` — brackets and colons that form no construct are kept as text.
    fn parse_start(&mut self) -> Result<Vec<Node>, Unparsable> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '[' | '(' => {
                    let checkpoint = self.pos;
                    match self.parse_construct() {
                        Ok(mut construct) => nodes.append(&mut construct),
                        Err(Unparsable) => {
                            self.pos = checkpoint + 1;
                            nodes.push(Node::Text(c.to_string()));
                        }
                    }
                }
                ']' | ')' | ':' => {
                    self.pos += 1;
                    nodes.push(Node::Text(c.to_string()));
                }
                '|' => return Err(Unparsable),
                _ => nodes.push(self.parse_plain()?),
            }
        }
        Ok(nodes)
    }

    /// `prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*`, stopping before `: | ] )`.
    fn parse_prompt(&mut self) -> Result<Vec<Node>, Unparsable> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            if ends_prompt(c) {
                break;
            }
            if c == '[' || c == '(' {
                nodes.append(&mut self.parse_construct()?);
            } else {
                nodes.push(self.parse_plain()?);
            }
        }
        Ok(nodes)
    }

    /// `plain: /([^\\\[\]():|]|\\.)+/` — a backslash escapes any character but a newline.
    fn parse_plain(&mut self) -> Result<Node, Unparsable> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == '\\' {
                match self.chars.get(self.pos + 1) {
                    Some(&next) if next != '\n' => self.pos += 2,
                    _ => break,
                }
            } else if matches!(c, '[' | ']' | '(' | ')' | ':' | '|') {
                break;
            } else {
                self.pos += 1;
            }
        }
        if self.pos == start {
            return Err(Unparsable);
        }
        Ok(Node::Text(self.chars[start..self.pos].iter().collect()))
    }

    fn expect(&mut self, c: char) -> Result<(), Unparsable> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Unparsable)
        }
    }

    /// A construct opening at `[` or `(`: emphasis, a scheduled edit or an alternation.
    fn parse_construct(&mut self) -> Result<Vec<Node>, Unparsable> {
        if self.depth >= MAX_NESTING {
            return Err(Unparsable);
        }
        self.depth += 1;
        let construct = match self.peek() {
            Some('(') => self.parse_round(),
            _ => self.parse_square(),
        };
        self.depth -= 1;
        construct
    }

    /// `"(" prompt ")" | "(" prompt ":" prompt ")"`, kept verbatim.
    fn parse_round(&mut self) -> Result<Vec<Node>, Unparsable> {
        self.expect('(')?;
        let mut nodes = vec![Node::Text("(".into())];
        nodes.append(&mut self.parse_prompt()?);
        if self.peek() == Some(':') {
            self.pos += 1;
            nodes.push(Node::Text(":".into()));
            nodes.append(&mut self.parse_prompt()?);
        }
        self.expect(')')?;
        nodes.push(Node::Text(")".into()));
        Ok(nodes)
    }

    /// `"[" prompt "]"`, `"[" [prompt ":"] prompt ":" [WS] NUMBER [WS] "]"` or `"[" prompt ("|" [prompt])+ "]"`.
    fn parse_square(&mut self) -> Result<Vec<Node>, Unparsable> {
        self.expect('[')?;
        let first = self.parse_prompt()?;
        match self.peek() {
            Some(']') => {
                self.pos += 1;
                let mut nodes = vec![Node::Text("[".into())];
                nodes.extend(first);
                nodes.push(Node::Text("]".into()));
                Ok(nodes)
            }
            Some('|') => {
                let mut options = vec![first];
                while self.peek() == Some('|') {
                    self.pos += 1;
                    options.push(self.parse_prompt()?);
                }
                self.expect(']')?;
                Ok(vec![Node::Alternate(options)])
            }
            Some(':') => {
                self.pos += 1;
                let checkpoint = self.pos;
                if let Some(when) = self.parse_when() {
                    return Ok(vec![Node::Scheduled { before: Vec::new(), after: first, when }]);
                }
                self.pos = checkpoint;
                let second = self.parse_prompt()?;
                self.expect(':')?;
                let when = self.parse_when().ok_or(Unparsable)?;
                Ok(vec![Node::Scheduled { before: first, after: second, when }])
            }
            _ => Err(Unparsable),
        }
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"`; returns the NUMBER text.
    fn parse_when(&mut self) -> Option<String> {
        self.skip_space();
        let number = self.scan_number()?;
        self.skip_space();
        (self.peek() == Some(']')).then(|| {
            self.pos += 1;
            number
        })
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Lark's `SIGNED_NUMBER` regex (FLOAT tried before INT, each part greedy).
    fn scan_number(&mut self) -> Option<String> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.pos += 1;
        }
        let int_digits = self.digits();
        let mut has_dot = false;
        if self.peek() == Some('.') {
            let dot = self.pos;
            self.pos += 1;
            let fraction_digits = self.digits();
            if int_digits == 0 && fraction_digits == 0 {
                self.pos = dot;
            } else {
                has_dot = true;
            }
        }
        if int_digits == 0 && !has_dot {
            self.pos = start;
            return None;
        }
        let before_exponent = self.pos;
        if matches!(self.peek(), Some('e' | 'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                self.pos = before_exponent;
            }
        }
        Some(self.chars[start..self.pos].iter().collect())
    }
}

fn parse(prompt: &str) -> Result<Vec<Node>, Unparsable> {
    Parser { chars: prompt.chars().collect(), pos: 0, depth: 0 }.parse_start()
}

/// Python's `float()` of a Lark NUMBER token.
fn number_value(token: &str) -> f64 {
    let (sign, body) = match token.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, token.trim_start_matches('+')),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    let mantissa = if mantissa.starts_with('.') { format!("0{mantissa}") } else { mantissa.to_owned() };
    let mantissa = if mantissa.ends_with('.') { format!("{mantissa}0") } else { mantissa };
    sign * format!("{mantissa}{exponent}").parse::<f64>().unwrap_or(f64::NAN)
}

/// Resolves every `when` to a step, as A1111's `CollectSteps` visitor does; returns the sorted distinct steps.
struct Timeline {
    steps: i64,
    int_offset: f64,
    float_offset: f64,
    old_scheduling: bool,
}

impl Timeline {
    fn new(steps: ScheduleSteps) -> Self {
        match steps.hires {
            Some(hires) if !steps.old_scheduling => {
                Self { steps: to_i64(hires), int_offset: steps.base as f64, float_offset: 1.0, old_scheduling: false }
            }
            _ => Self {
                steps: to_i64(steps.base),
                int_offset: 0.0,
                float_offset: 0.0,
                old_scheduling: steps.old_scheduling,
            },
        }
    }

    /// `min(steps, int(v))`; Python's `int()` raises on an infinite `v`, which A1111 does not catch.
    fn when_step(&self, token: &str) -> Result<i64> {
        let raw = number_value(token);
        let v = if self.old_scheduling {
            if raw < 1.0 { raw * self.steps as f64 } else { raw }
        } else if token.contains('.') {
            (raw - self.float_offset) * self.steps as f64
        } else {
            raw - self.int_offset
        };
        if !v.is_finite() {
            return Err(Error::InvalidParameter {
                field: "prompt",
                problem: format!("prompt editing step `{token}` is too large; use a step number or a fraction"),
            });
        }
        let truncated = v.trunc();
        Ok(if truncated >= self.steps as f64 { self.steps } else { truncated as i64 })
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A parsed prompt with every `when` resolved to a step.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Text(String),
    Scheduled { before: Vec<Resolved>, after: Vec<Resolved>, when: i64 },
    Alternate(Vec<Vec<Resolved>>),
}

fn resolve(nodes: Vec<Node>, timeline: &Timeline, steps: &mut Vec<i64>) -> Result<Vec<Resolved>> {
    nodes
        .into_iter()
        .map(|node| {
            Ok(match node {
                Node::Text(text) => Resolved::Text(text),
                Node::Scheduled { before, after, when } => {
                    let when = timeline.when_step(&when)?;
                    if when >= 1 {
                        steps.push(when);
                    }
                    Resolved::Scheduled {
                        before: resolve(before, timeline, steps)?,
                        after: resolve(after, timeline, steps)?,
                        when,
                    }
                }
                Node::Alternate(options) => {
                    steps.extend(1..=timeline.steps);
                    Resolved::Alternate(
                        options.into_iter().map(|o| resolve(o, timeline, steps)).collect::<Result<_>>()?,
                    )
                }
            })
        })
        .collect()
}

fn text_at(nodes: &[Resolved], step: i64, out: &mut String) {
    for node in nodes {
        match node {
            Resolved::Text(text) => out.push_str(text),
            Resolved::Scheduled { before, after, when } => {
                text_at(if step <= *when { before } else { after }, step, out)
            }
            Resolved::Alternate(options) => {
                let index = (step - 1).rem_euclid(options.len() as i64) as usize;
                text_at(&options[index], step, out);
            }
        }
    }
}

/// A1111's `get_learned_conditioning_prompt_schedules` for one prompt: `(end_step, text)` pairs; a text
/// applies while the sampler's step counter is ≤ its `end_step`. A prompt the grammar rejects (a stray
/// `|`, a trailing backslash) is used whole for every step, as in A1111.
pub fn prompt_schedules(prompt: &str, steps: ScheduleSteps) -> Result<Vec<(i64, String)>> {
    let timeline = Timeline::new(steps);
    let Ok(nodes) = parse(prompt) else {
        return Ok(vec![(timeline.steps, prompt.to_owned())]);
    };
    let mut ends = vec![timeline.steps];
    let resolved = resolve(nodes, &timeline, &mut ends)?;
    ends.sort_unstable();
    ends.dedup();
    Ok(ends
        .into_iter()
        .map(|end| {
            let mut text = String::new();
            text_at(&resolved, end, &mut text);
            (end, text)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prompt: &str) -> Vec<(i64, String)> {
        prompt_schedules(prompt, ScheduleSteps::new(10)).unwrap()
    }

    fn pairs(items: &[(i64, &str)]) -> Vec<(i64, String)> {
        items.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
    }

    #[test]
    fn a1111_docstring_examples() {
        assert_eq!(g("test"), pairs(&[(10, "test")]));
        assert_eq!(g("a [b:3]"), pairs(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [b: 3]"), pairs(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [[[b]]:2]"), pairs(&[(2, "a "), (10, "a [[b]]")]));
        assert_eq!(g("[(a:2):3]"), pairs(&[(3, ""), (10, "(a:2)")]));
        assert_eq!(g("a [b : c : 1] d"), pairs(&[(1, "a b  d"), (10, "a  c  d")]));
        assert_eq!(g("a[b:[c:d:2]:1]e"), pairs(&[(1, "abe"), (2, "ace"), (10, "ade")]));
        assert_eq!(g("a [unbalanced"), pairs(&[(10, "a [unbalanced")]));
        assert_eq!(g("a [b:.5] c"), pairs(&[(5, "a  c"), (10, "a b c")]));
        // A1111 v1.10's Lark grammar rejects this one (its docstring still shows an older grammar's answer).
        assert_eq!(g("a [{b|d{:.5] c"), pairs(&[(10, "a [{b|d{:.5] c")]));
        assert_eq!(g("((a][:b:c [d:3]"), pairs(&[(3, "((a][:b:c "), (10, "((a][:b:c d")]));
        let alternating: Vec<(i64, String)> =
            (1..=10).map(|s| (s, if s % 2 == 1 { "a" } else { "(b:1.1)" }.to_owned())).collect();
        assert_eq!(g("[a|(b:1.1)]"), alternating);
        let female: Vec<(i64, String)> =
            (1..=10).map(|s| (s, if s % 2 == 1 { "female" } else { "male" }.to_owned())).collect();
        assert_eq!(g("[fe|]male"), female);
        let four: Vec<(i64, String)> =
            (1..=10).map(|s| (s, if s % 4 == 1 { "female" } else { "male" }.to_owned())).collect();
        assert_eq!(g("[fe|||]male"), four);
    }

    #[test]
    fn deep_nesting_is_text_not_a_stack_overflow() {
        let deep = format!("{}x{}", "(".repeat(10_000), ")".repeat(10_000));
        let schedule = prompt_schedules(&deep, ScheduleSteps::new(10)).unwrap();
        assert_eq!(schedule.len(), 1);
        assert_eq!(schedule[0].1.len(), deep.len(), "an unparsable prompt is used whole, as A1111 does");
        let deep_edit = format!("{}a{}", "[b:".repeat(5_000), ":3]".repeat(5_000));
        assert!(prompt_schedules(&deep_edit, ScheduleSteps::new(10)).is_ok());
    }

    #[test]
    fn hires_timeline_offsets() {
        let hires = ScheduleSteps { base: 10, hires: Some(10), old_scheduling: false };
        assert_eq!(prompt_schedules("a [b:.5] c", hires).unwrap(), pairs(&[(10, "a b c")]));
        assert_eq!(prompt_schedules("a [b:1.5] c", hires).unwrap(), pairs(&[(5, "a  c"), (10, "a b c")]));
    }

    #[test]
    fn grammar_failures_fall_back_to_the_whole_prompt() {
        assert_eq!(g("a|b"), pairs(&[(10, "a|b")]));
        assert_eq!(g("trailing \\"), pairs(&[(10, "trailing \\")]));
        assert!(prompt_schedules("[a:b:1e999]", ScheduleSteps::new(10)).is_err());
    }
}
