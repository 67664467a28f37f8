//! Sigma schedules against `tests/fixtures/sigmas/` (A1111 v1.10 / k-diffusion, see its README.md): the
//! model's discrete table, σ↔t probes, every schedule × step count, discard-penultimate, and snapshots.

use ndarray::Array1;
use sdrt_processing::{
    ModelFamily, ModelSchedule, Sampler, SamplerKind, SamplerParams, Schedule, ScheduleOptions, sigmas,
};
use sdrt_tests::{fixture, fixture_json};

const REL_TOL: f64 = 1e-6;

fn npy(relative: &str) -> Vec<f64> {
    let path = fixture(&format!("sigmas/{relative}"));
    let values: Array1<f32> = ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {relative}: {e}"));
    values.iter().map(|&v| f64::from(v)).collect()
}

fn npy_f64(relative: &str) -> Vec<f64> {
    let path = fixture(&format!("sigmas/{relative}"));
    let values: Array1<f64> = ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {relative}: {e}"));
    values.to_vec()
}

fn assert_close(found: &[f64], expected: &[f64], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: length {found:?} vs {expected:?}");
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        let tol = REL_TOL * e.abs().max(1e-12);
        assert!((f - e).abs() <= tol, "{what}[{i}]: {f} vs {e} (|Δ| = {:e})", (f - e).abs());
    }
}

#[test]
fn model_table_matches_a1111_buffers() {
    let model = ModelSchedule::scaled_linear();
    assert_close(model.alphas_cumprod(), &npy("model/alphas_cumprod_f32.npy"), "alphas_cumprod");
    assert_close(model.sigmas(), &npy("model/sigmas_f32.npy"), "sigmas");
    let ac64 = npy_f64("model/alphas_cumprod_f64.npy");
    assert!((model.alphas_cumprod()[999] - ac64[999]).abs() < 1e-9);
    let cases = fixture_json("sigmas/cases.json");
    // torch's vectorised float32 `** 0.5` differs from IEEE sqrt by 1 ulp on some entries.
    let ends = [cases["model"]["sigma_min"].as_f64().unwrap(), cases["model"]["sigma_max"].as_f64().unwrap()];
    assert_close(&[model.sigma_min(), model.sigma_max()], &ends, "sigma_min/max");
}

#[test]
fn sigma_to_t_and_back_match_k_diffusion() {
    let model = ModelSchedule::scaled_linear();
    let sigma_in = npy("model/sigma_to_t_in.npy");
    let t_out = npy("model/sigma_to_t_out.npy");
    for (s, t) in sigma_in.iter().zip(&t_out) {
        let found = model.sigma_to_t(*s);
        assert!((found - t).abs() <= 1e-4 + 1e-6 * t.abs(), "sigma_to_t({s}) = {found}, expected {t}");
    }
    let t_in = npy("model/t_to_sigma_in.npy");
    let sigma_out = npy("model/t_to_sigma_out.npy");
    for (t, s) in t_in.iter().zip(&sigma_out) {
        let found = model.t_to_sigma(*t);
        assert!((found - s).abs() <= REL_TOL * s, "t_to_sigma({t}) = {found}, expected {s}");
    }
}

/// The σ sequence a fixture case describes, computed through the public API.
fn computed(case: &serde_json::Value, model: &ModelSchedule) -> Vec<f64> {
    let label = case["schedule"].as_str().unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let schedule = Schedule::from_name(label).unwrap();
    let family = match case["model"].as_str() {
        Some("sdxl") => ModelFamily::Sdxl,
        _ => ModelFamily::Sd15,
    };
    let options = ScheduleOptions { family, ..Default::default() };
    if case["discard_penultimate"].as_bool().unwrap() {
        // "Automatic" in these cases is the model's own schedule, which DPM2's default would replace.
        let schedule = if schedule == Schedule::Automatic { Schedule::Uniform } else { schedule };
        let sampler = Sampler::new(SamplerKind::Dpm2, schedule, options, SamplerParams::default()).unwrap();
        return sampler.sigmas(steps, model).unwrap();
    }
    sigmas(schedule, steps, model, &options).unwrap()
}

#[test]
fn every_schedule_matches_its_reference() {
    let model = ModelSchedule::scaled_linear();
    let index = fixture_json("sigmas/cases.json");
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() >= 90, "expected the full case list, got {}", cases.len());
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let expected = npy(file);
        assert_eq!(expected.len() as u64, case["length"].as_u64().unwrap(), "{file}");
        assert_close(&computed(case, &model), &expected, file);
        seen.insert(case["schedule"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), Schedule::ALL.len(), "every schedule has fixtures: {seen:?}");
}

#[test]
fn automatic_means_what_a1111_says_per_sampler() {
    let index = fixture_json("sigmas/cases.json");
    let by_sampler = index["automatic_by_sampler"].as_object().unwrap();
    assert!(by_sampler.len() >= 15);
    for (sampler, schedule) in by_sampler {
        let kind = SamplerKind::from_name(sampler).unwrap();
        let expected = Schedule::from_name(schedule.as_str().unwrap()).unwrap();
        assert_eq!(kind.default_schedule(), expected, "{sampler}");
    }
    let discarding: Vec<String> = index["discard_penultimate"]["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    for kind in SamplerKind::ALL {
        assert_eq!(kind.discards_penultimate_sigma(), discarding.iter().any(|s| s == kind.label()), "{kind}");
    }
}

#[test]
fn unknown_and_bad_inputs_are_errors() {
    let err = Schedule::from_name("linear_quadratic").unwrap_err().to_string();
    assert!(err.contains("scheduler") && err.contains("Align Your Steps"), "{err}");
    let model = ModelSchedule::scaled_linear();
    let err = sigmas(Schedule::Karras, 0, &model, &ScheduleOptions::default()).unwrap_err().to_string();
    assert!(err.contains("steps"), "{err}");
    let bad = ScheduleOptions { sigma_max: Some(0.01), ..Default::default() };
    assert!(sigmas(Schedule::Exponential, 5, &model, &bad).unwrap_err().to_string().contains("sigma_max"));
}

fn rounded(values: Vec<f64>) -> Vec<String> {
    values.into_iter().map(|v| format!("{v:.6}")).collect()
}

#[test]
fn snapshot_common_tables() {
    let model = ModelSchedule::scaled_linear();
    let o = ScheduleOptions::default();
    insta::assert_yaml_snapshot!("karras_10", rounded(sigmas(Schedule::Karras, 10, &model, &o).unwrap()));
    insta::assert_yaml_snapshot!("automatic_10", rounded(sigmas(Schedule::Automatic, 10, &model, &o).unwrap()));
    insta::assert_yaml_snapshot!("exponential_7", rounded(sigmas(Schedule::Exponential, 7, &model, &o).unwrap()));
    insta::assert_yaml_snapshot!(
        "ays_sdxl_8",
        rounded(
            sigmas(Schedule::AlignYourSteps, 8, &model, &ScheduleOptions { family: ModelFamily::Sdxl, ..o }).unwrap()
        )
    );
}
