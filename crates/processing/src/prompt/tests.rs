//! Snapshot tests over a table of prompts (schedules, attention, AND) and a property test that arbitrary
//! input never panics.

use proptest::prelude::*;

use super::{ScheduleSteps, parse_attention, prompt_schedules, split_and};

/// The prompts the snapshot covers, REFERENCE §4's documented cases first.
const CASES: &[&str] = &[
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "a [b:c:1] d",
    "a [b : c : 1] d",
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
    "[cat|dog|bird] in a field",
    "[fe|]male",
    "a [[b|c]:d:3] e",
    "[a:[b|c]:0.5]",
    r"\(literal\) \[x\] \\ and (weighted:1.4)",
    "(unclosed [brackets run to the end",
    "a cat BREAK a dog",
    "(a BREAK b)",
    "a photo AND a painting:0.7 AND sketch : 1.5",
    "[a:b:-1] [c:d:0] [e:f:25] [g:h:1e1]",
    "stray ] ) : brackets",
    "bad | pipe",
    "",
];

fn render(prompt: &str) -> String {
    let schedule = prompt_schedules(prompt, ScheduleSteps::new(10));
    let attention = parse_attention(prompt).map(|f| f.into_iter().map(|f| (f.text, f.weight)).collect::<Vec<_>>());
    let and: Vec<(String, f64)> = split_and(prompt).into_iter().map(|s| (s.text, s.weight)).collect();
    format!("prompt: {prompt:?}\nschedule@10: {schedule:?}\nattention: {attention:?}\nand: {and:?}\n")
}

#[test]
fn prompt_table_snapshot() {
    let rendered: String = CASES.iter().map(|p| render(p)).collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!(rendered);
}

#[test]
fn reference_cases_are_exact() {
    let attention: Vec<(String, f64)> =
        parse_attention(CASES[0]).unwrap().into_iter().map(|f| (f.text, f.weight)).collect();
    let expected = [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ];
    assert_eq!(attention, expected.map(|(t, w)| (t.to_owned(), w)).to_vec());
    let steps = ScheduleSteps::new(10);
    assert_eq!(prompt_schedules(CASES[1], steps).unwrap(), vec![(1, "a b d".to_owned()), (10, "a c d".to_owned())]);
    assert_eq!(prompt_schedules(CASES[2], steps).unwrap(), vec![(1, "a b  d".to_owned()), (10, "a  c  d".to_owned())]);
}

proptest! {
    #[test]
    fn arbitrary_prompts_never_panic(prompt in "\\PC{0,64}|[\\[\\]():|\\\\ a-c0-9.AND BREAK\n]{0,48}", steps in 0usize..60) {
        if let Ok(schedule) = prompt_schedules(&prompt, ScheduleSteps::new(steps)) {
            prop_assert_eq!(schedule.last().map(|(end, _)| *end), Some(steps as i64));
        }
        let _ = parse_attention(&prompt);
        prop_assert!(!split_and(&prompt).is_empty());
    }
}
