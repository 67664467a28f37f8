//! A1111 v1.10's sampler and scheduler name tables and the lookups the API applies to request names.
//!
//! Pure data: the processing crate implements the samplers; this module only says which names exist, what
//! their aliases and defaults are, and how a legacy combined name ("DPM++ 2M Karras") splits.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which implementation family a sampler belongs to in A1111.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerFamily {
    /// k-diffusion samplers over sigmas (`sd_samplers_kdiffusion.py`).
    KDiffusion,
    /// Timestep samplers: DDIM, DDIM CFG++, PLMS, UniPC (`sd_samplers_timesteps.py`).
    Timesteps,
    /// Latent consistency sampler (`sd_samplers_lcm.py`).
    Lcm,
}

/// One sampler as A1111 registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerInfo {
    /// The label used in requests and infotexts ("DPM++ 2M").
    pub name: &'static str,
    /// The implementing function (k-diffusion `sample_*` name, or the timestep sampler's name).
    pub function: &'static str,
    /// Legacy aliases ("k_dpmpp_2m").
    pub aliases: &'static [&'static str],
    /// Scheduler API name that "Automatic" means for this sampler; `None` = the model's own discrete schedule.
    pub default_scheduler: Option<&'static str>,
    /// Sampling computes `steps + 1` sigmas and drops the penultimate one.
    pub discard_next_to_last_sigma: bool,
    /// Reseeds ancestral noise with seed + ENSD (eta noise seed delta).
    pub uses_ensd: bool,
    /// Two denoiser calls per step (prompt schedules are built over 2 × steps).
    pub second_order: bool,
    /// Noise comes from a Brownian tree seeded with the image seeds.
    pub brownian_noise: bool,
    /// `solver_type` passed to k-diffusion ("heun" for DPM++ 2M SDE Heun).
    pub solver_type: Option<&'static str>,
    /// Implementation family.
    pub family: SamplerFamily,
}

/// One scheduler (A1111 "Schedule type").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerInfo {
    /// API name ("karras").
    pub name: &'static str,
    /// Label shown in the UI and written to infotexts ("Karras").
    pub label: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// Default ρ, or −1 when the schedule has none.
    pub default_rho: f64,
    /// The schedule needs the model's own sigma table (timestep-based schedules).
    pub need_inner_model: bool,
}

const fn k(
    name: &'static str,
    function: &'static str,
    aliases: &'static [&'static str],
    default_scheduler: Option<&'static str>,
) -> SamplerInfo {
    SamplerInfo {
        name,
        function,
        aliases,
        default_scheduler,
        discard_next_to_last_sigma: false,
        uses_ensd: false,
        second_order: false,
        brownian_noise: false,
        solver_type: None,
        family: SamplerFamily::KDiffusion,
    }
}

const fn timesteps(name: &'static str, function: &'static str, aliases: &'static [&'static str]) -> SamplerInfo {
    SamplerInfo { family: SamplerFamily::Timesteps, ..k(name, function, aliases, None) }
}

/// Every sampler of A1111 v1.10, in its order (the first is the UI default).
pub static SAMPLERS: &[SamplerInfo] = &[
    k("DPM++ 2M", "sample_dpmpp_2m", &["k_dpmpp_2m"], Some("karras")),
    SamplerInfo {
        second_order: true,
        brownian_noise: true,
        ..k("DPM++ SDE", "sample_dpmpp_sde", &["k_dpmpp_sde"], Some("karras"))
    },
    SamplerInfo {
        brownian_noise: true,
        ..k("DPM++ 2M SDE", "sample_dpmpp_2m_sde", &["k_dpmpp_2m_sde"], Some("exponential"))
    },
    SamplerInfo {
        brownian_noise: true,
        solver_type: Some("heun"),
        ..k("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", &["k_dpmpp_2m_sde_heun"], Some("exponential"))
    },
    SamplerInfo {
        uses_ensd: true,
        second_order: true,
        ..k("DPM++ 2S a", "sample_dpmpp_2s_ancestral", &["k_dpmpp_2s_a"], Some("karras"))
    },
    SamplerInfo {
        discard_next_to_last_sigma: true,
        brownian_noise: true,
        ..k("DPM++ 3M SDE", "sample_dpmpp_3m_sde", &["k_dpmpp_3m_sde"], Some("exponential"))
    },
    SamplerInfo {
        uses_ensd: true,
        ..k("Euler a", "sample_euler_ancestral", &["k_euler_a", "k_euler_ancestral"], None)
    },
    k("Euler", "sample_euler", &["k_euler"], None),
    k("LMS", "sample_lms", &["k_lms"], None),
    SamplerInfo { second_order: true, ..k("Heun", "sample_heun", &["k_heun"], None) },
    SamplerInfo {
        discard_next_to_last_sigma: true,
        second_order: true,
        ..k("DPM2", "sample_dpm_2", &["k_dpm_2"], Some("karras"))
    },
    SamplerInfo {
        discard_next_to_last_sigma: true,
        uses_ensd: true,
        second_order: true,
        ..k("DPM2 a", "sample_dpm_2_ancestral", &["k_dpm_2_a"], Some("karras"))
    },
    SamplerInfo { uses_ensd: true, ..k("DPM fast", "sample_dpm_fast", &["k_dpm_fast"], None) },
    SamplerInfo { uses_ensd: true, ..k("DPM adaptive", "sample_dpm_adaptive", &["k_dpm_ad"], None) },
    SamplerInfo { second_order: true, ..k("Restart", "restart_sampler", &["restart"], Some("karras")) },
    timesteps("DDIM", "ddim", &["ddim"]),
    timesteps("DDIM CFG++", "ddim_cfgpp", &["ddim_cfgpp"]),
    timesteps("PLMS", "plms", &["plms"]),
    timesteps("UniPC", "unipc", &["unipc"]),
    SamplerInfo { family: SamplerFamily::Lcm, ..k("LCM", "sample_lcm", &["k_lcm"], None) },
];

const fn schedule(name: &'static str, label: &'static str, default_rho: f64, need_inner_model: bool) -> SchedulerInfo {
    SchedulerInfo { name, label, aliases: &[], default_rho, need_inner_model }
}

/// Every scheduler of A1111 v1.10, in its order (the first, Automatic, means "the sampler's default").
pub static SCHEDULERS: &[SchedulerInfo] = &[
    schedule("automatic", "Automatic", -1.0, false),
    schedule("uniform", "Uniform", -1.0, true),
    schedule("karras", "Karras", 7.0, false),
    schedule("exponential", "Exponential", -1.0, false),
    schedule("polyexponential", "Polyexponential", 1.0, false),
    SchedulerInfo { aliases: &["SGMUniform"], ..schedule("sgm_uniform", "SGM Uniform", -1.0, true) },
    schedule("kl_optimal", "KL Optimal", -1.0, false),
    schedule("align_your_steps", "Align Your Steps", -1.0, false),
    schedule("simple", "Simple", -1.0, true),
    schedule("normal", "Normal", -1.0, true),
    schedule("ddim", "DDIM", -1.0, true),
    schedule("beta", "Beta", -1.0, true),
];

/// The sampler A1111's API uses when a request names none (`sampler_index` defaults to "Euler").
pub const API_DEFAULT_SAMPLER: &str = "Euler";

/// The scheduler meaning "the sampler's default".
pub fn automatic_scheduler() -> &'static SchedulerInfo {
    &SCHEDULERS[0]
}

/// A sampler by exact name, then by case-insensitive name or alias (A1111's `samplers_map` spelling rules).
pub fn find_sampler(name: &str) -> Option<&'static SamplerInfo> {
    SAMPLERS.iter().find(|s| s.name == name).or_else(|| {
        SAMPLERS.iter().find(|s| {
            s.name.eq_ignore_ascii_case(name) || s.aliases.iter().any(|alias| alias.eq_ignore_ascii_case(name))
        })
    })
}

/// A scheduler by API name, label or alias (A1111's `schedulers_map`), case-insensitively as a fallback.
pub fn find_scheduler(name: &str) -> Option<&'static SchedulerInfo> {
    let exact = |s: &&SchedulerInfo| s.name == name || s.label == name || s.aliases.contains(&name);
    SCHEDULERS.iter().find(exact).or_else(|| {
        SCHEDULERS.iter().find(|s| {
            s.name.eq_ignore_ascii_case(name)
                || s.label.eq_ignore_ascii_case(name)
                || s.aliases.iter().any(|alias| alias.eq_ignore_ascii_case(name))
        })
    })
}

/// Comma-separated sampler names, for error messages.
pub fn sampler_names() -> String {
    SAMPLERS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// Comma-separated scheduler names and labels, for error messages.
pub fn scheduler_names() -> String {
    SCHEDULERS.iter().map(|s| format!("{} ({})", s.label, s.name)).collect::<Vec<_>>().join(", ")
}

/// A resolved sampler + scheduler pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerChoice {
    /// The sampler.
    pub sampler: &'static SamplerInfo,
    /// The scheduler as A1111 records it: Automatic when it equals the sampler's default.
    pub scheduler: &'static SchedulerInfo,
}

impl SamplerChoice {
    /// The schedule actually used: the explicit one, or for Automatic the sampler's default
    /// (`None` = the model's own discrete schedule).
    pub fn effective_scheduler(&self) -> Option<&'static SchedulerInfo> {
        if self.scheduler.name != "automatic" {
            return Some(self.scheduler);
        }
        self.sampler.default_scheduler.and_then(find_scheduler)
    }
}

/// Resolves a request's sampler and scheduler as A1111 v1.10's `get_sampler_and_scheduler` does: a trailing
/// scheduler label/name/alias in the sampler name ("DPM++ 2M Karras") is split off and wins over `scheduler`,
/// and a scheduler equal to the sampler's default becomes Automatic.
///
/// Unlike A1111, which silently falls back to its first sampler / Automatic, unknown names are errors that
/// list the valid names. `field` names the request field for that error.
pub fn resolve_sampler_and_scheduler(
    field: &'static str,
    sampler_name: &str,
    scheduler_name: Option<&str>,
) -> Result<SamplerChoice> {
    let mut scheduler = match scheduler_name.filter(|s| !s.is_empty()) {
        Some(name) => find_scheduler(name).ok_or_else(|| Error::UnknownScheduler {
            field: scheduler_field_for(field),
            name: name.to_string(),
            valid: scheduler_names(),
        })?,
        None => automatic_scheduler(),
    };
    let mut name = sampler_name;
    for candidate in SCHEDULERS {
        let spellings = [candidate.label, candidate.name].into_iter().chain(candidate.aliases.iter().copied());
        for spelling in spellings {
            if let Some(stripped) = name.strip_suffix(spelling).and_then(|rest| rest.strip_suffix(' ')) {
                scheduler = candidate;
                name = stripped;
                break;
            }
        }
    }
    let sampler = find_sampler(name).ok_or_else(|| Error::UnknownSampler {
        field,
        name: sampler_name.to_string(),
        valid: sampler_names(),
    })?;
    if sampler.default_scheduler == Some(scheduler.name) {
        scheduler = automatic_scheduler();
    }
    Ok(SamplerChoice { sampler, scheduler })
}

fn scheduler_field_for(sampler_field: &'static str) -> &'static str {
    if sampler_field.starts_with("hr_") { "hr_scheduler" } else { "scheduler" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_combined_name_splits_into_sampler_and_scheduler() {
        let choice = resolve_sampler_and_scheduler("sampler_name", "DPM++ 2M SDE Karras", None).unwrap();
        assert_eq!(choice.sampler.name, "DPM++ 2M SDE");
        assert_eq!(choice.scheduler.label, "Karras");
    }

    #[test]
    fn default_schedule_becomes_automatic_but_stays_effective() {
        let choice = resolve_sampler_and_scheduler("sampler_name", "DPM++ 2M Karras", None).unwrap();
        assert_eq!(choice.sampler.name, "DPM++ 2M");
        assert_eq!(choice.scheduler.label, "Automatic");
        assert_eq!(choice.effective_scheduler().map(|s| s.label), Some("Karras"));
        let euler = resolve_sampler_and_scheduler("sampler_name", "Euler", Some("automatic")).unwrap();
        assert_eq!(euler.effective_scheduler(), None);
    }

    #[test]
    fn aliases_and_scheduler_labels_are_accepted() {
        assert_eq!(find_sampler("k_dpmpp_2m").map(|s| s.name), Some("DPM++ 2M"));
        assert_eq!(find_sampler("euler A").map(|s| s.name), Some("Euler a"));
        assert_eq!(find_scheduler("SGMUniform").map(|s| s.name), Some("sgm_uniform"));
        assert_eq!(find_scheduler("Align Your Steps").map(|s| s.name), Some("align_your_steps"));
        let choice = resolve_sampler_and_scheduler("sampler_name", "Euler a", Some("Exponential")).unwrap();
        assert_eq!(choice.scheduler.name, "exponential");
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = resolve_sampler_and_scheduler("sampler_name", "Euler b", None).unwrap_err().to_string();
        assert!(err.contains("sampler_name") && err.contains("DPM++ 2M SDE Heun"), "{err}");
        let err = resolve_sampler_and_scheduler("hr_sampler_name", "Euler", Some("cosine")).unwrap_err().to_string();
        assert!(err.contains("hr_scheduler") && err.contains("KL Optimal (kl_optimal)"), "{err}");
    }

    #[test]
    fn tables_have_a1111_sizes_and_unique_names() {
        assert_eq!(SAMPLERS.len(), 20);
        assert_eq!(SCHEDULERS.len(), 12);
        for (i, s) in SAMPLERS.iter().enumerate() {
            assert!(SAMPLERS[..i].iter().all(|o| o.name != s.name), "{}", s.name);
            if let Some(default) = s.default_scheduler {
                assert!(find_scheduler(default).is_some(), "{default}");
            }
        }
    }
}
