//! A1111 prompt syntax against the oracle fixture tests/fixtures/prompts/ (A1111 v1.10's Lark grammar and
//! regexes): schedules (incl. hires and old timelines), attention, AND splits, and the batch multicond list.

use sdrt_processing::{ScheduleSteps, multicond_prompt_list, parse_attention, prompt_schedules, split_and};
use sdrt_tests::fixture_json;
use serde_json::Value;

fn expected_schedule(value: &Value) -> Vec<(i64, String)> {
    value
        .as_array()
        .expect("schedule array")
        .iter()
        .map(|e| (e[0].as_i64().expect("end step"), e[1].as_str().expect("text").to_owned()))
        .collect()
}

fn cases() -> Vec<Value> {
    fixture_json("prompts/cases.json")["cases"].as_array().expect("cases").clone()
}

#[test]
fn schedules_match_a1111_for_every_prompt_and_step_count() {
    let cases = cases();
    assert!(cases.len() >= 40, "fixture has {} prompts", cases.len());
    for case in &cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        for (steps, expected) in case["schedules"].as_object().expect("schedules") {
            let steps: usize = steps.parse().expect("step count key");
            let got = prompt_schedules(prompt, ScheduleSteps::new(steps)).expect("schedules");
            assert_eq!(got, expected_schedule(expected), "{} {prompt:?} at {steps} steps", case["id"]);
        }
    }
}

#[test]
fn hires_and_old_timelines_match_a1111() {
    for case in &cases() {
        let prompt = case["prompt"].as_str().expect("prompt");
        for hires in case["hires_schedules"].as_array().expect("hires") {
            let steps = ScheduleSteps {
                base: hires["base_steps"].as_u64().expect("base") as usize,
                hires: Some(hires["hires_steps"].as_u64().expect("hires") as usize),
                old_scheduling: false,
            };
            let got = prompt_schedules(prompt, steps).expect("schedules");
            assert_eq!(got, expected_schedule(&hires["schedule"]), "{} {prompt:?} {steps:?}", case["id"]);
        }
        let old = ScheduleSteps { base: 20, hires: None, old_scheduling: true };
        let got = prompt_schedules(prompt, old).expect("schedules");
        assert_eq!(got, expected_schedule(&case["old_scheduling_20"]), "{} {prompt:?} old timeline", case["id"]);
    }
}

fn assert_attention(text: &str, expected: &Value, context: &str) {
    match parse_attention(text) {
        Ok(fragments) => {
            let expected =
                expected.as_array().unwrap_or_else(|| panic!("{context}: A1111 raises, sdrt gave {fragments:?}"));
            assert_eq!(fragments.len(), expected.len(), "{context}: {fragments:?} vs {expected:?}");
            for (got, want) in fragments.iter().zip(expected) {
                assert_eq!(got.text, want[0].as_str().expect("text"), "{context}");
                let weight = want[1].as_f64().expect("weight");
                assert!((got.weight - weight).abs() <= 1e-12, "{context}: {} vs {weight}", got.weight);
            }
        }
        Err(e) => assert!(expected.get("error").is_some(), "{context}: sdrt errs ({e}) where A1111 parses"),
    }
}

#[test]
fn attention_matches_a1111_including_its_errors() {
    let mut errors = 0;
    for case in &cases() {
        let prompt = case["prompt"].as_str().expect("prompt");
        errors += usize::from(case["attention"].get("error").is_some());
        assert_attention(prompt, &case["attention"], &format!("{} {prompt:?}", case["id"]));
    }
    assert!(errors >= 1, "the fixture covers a prompt A1111 rejects");
}

#[test]
fn and_split_and_the_full_positive_pipeline_match_a1111() {
    for case in &cases() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let got = split_and(prompt);
        let expected = case["and_split"].as_array().expect("and_split");
        assert_eq!(got.len(), expected.len(), "{} {prompt:?}", case["id"]);
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g.text, e["text"].as_str().expect("text"), "{} {prompt:?}", case["id"]);
            assert_eq!(g.weight, e["weight"].as_f64().expect("weight"), "{} {prompt:?}", case["id"]);
        }
        for (sub, expected) in got.iter().zip(case["pipeline_20"].as_array().expect("pipeline")) {
            let schedule = prompt_schedules(&sub.text, ScheduleSteps::new(20)).expect("schedules");
            let expected_entries = expected["schedule_20"].as_array().expect("schedule_20");
            assert_eq!(schedule.len(), expected_entries.len(), "{} {:?}", case["id"], sub.text);
            for ((end, text), entry) in schedule.iter().zip(expected_entries) {
                assert_eq!(*end, entry["end_step"].as_i64().expect("end"), "{}", case["id"]);
                assert_eq!(text, entry["text"].as_str().expect("text"), "{}", case["id"]);
                assert_attention(text, &entry["attention"], &format!("{} pipeline {text:?}", case["id"]));
            }
        }
    }
}

#[test]
fn batch_multicond_list_deduplicates_like_a1111() {
    let fixture = fixture_json("prompts/cases.json");
    let batch = &fixture["batch_multicond"];
    let prompts: Vec<&str> =
        batch["prompts"].as_array().expect("prompts").iter().map(|p| p.as_str().expect("prompt")).collect();
    let list = multicond_prompt_list(&prompts);
    let flat: Vec<&str> =
        batch["flat_texts"].as_array().expect("flat").iter().map(|t| t.as_str().expect("text")).collect();
    assert_eq!(list.flat_texts, flat);
    let indexes: Vec<Vec<(usize, f64)>> = batch["indexes"]
        .as_array()
        .expect("indexes")
        .iter()
        .map(|p| {
            p.as_array()
                .expect("per prompt")
                .iter()
                .map(|e| (e[0].as_u64().expect("index") as usize, e[1].as_f64().expect("weight")))
                .collect()
        })
        .collect();
    assert_eq!(list.indexes, indexes);
}
