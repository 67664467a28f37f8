//! The sampler table: A1111 labels, aliases and per-sampler defaults (which schedule "Automatic"
//! means, second order, discard-penultimate-σ, ENSD, Brownian noise), and legacy-name splitting.

use crate::error::{Error, Result};
use crate::schedules::Schedule;

/// Every A1111 v1.10 sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `sample_dpmpp_2m`.
    DpmPp2M,
    /// `sample_dpmpp_sde`.
    DpmPpSde,
    /// `sample_dpmpp_2m_sde`, midpoint.
    DpmPp2MSde,
    /// `sample_dpmpp_2m_sde`, solver_type = heun.
    DpmPp2MSdeHeun,
    /// `sample_dpmpp_2s_ancestral`.
    DpmPp2SA,
    /// `sample_dpmpp_3m_sde`.
    DpmPp3MSde,
    /// `sample_euler_ancestral`.
    EulerA,
    /// `sample_euler`.
    Euler,
    /// `sample_lms`.
    Lms,
    /// `sample_heun`.
    Heun,
    /// `sample_dpm_2`.
    Dpm2,
    /// `sample_dpm_2_ancestral`.
    Dpm2A,
    /// `sample_dpm_fast`.
    DpmFast,
    /// `sample_dpm_adaptive`.
    DpmAdaptive,
    /// A1111's `restart_sampler`.
    Restart,
    /// A1111's timestep DDIM.
    Ddim,
    /// A1111's DDIM CFG++.
    DdimCfgPp,
    /// A1111's timestep PLMS.
    Plms,
    /// UniPC (bh1/bh2, multistep).
    UniPc,
    /// A1111's `sample_lcm` (use with [`crate::ModelSchedule::lcm`]).
    Lcm,
}

/// One row of the table.
struct Row {
    kind: SamplerKind,
    label: &'static str,
    aliases: &'static [&'static str],
    default_schedule: Schedule,
    second_order: bool,
    discard_penultimate: bool,
    uses_ensd: bool,
    brownian_noise: bool,
    s_noise: bool,
}

const fn row(
    kind: SamplerKind,
    label: &'static str,
    aliases: &'static [&'static str],
    default_schedule: Schedule,
) -> Row {
    Row {
        kind,
        label,
        aliases,
        default_schedule,
        second_order: false,
        discard_penultimate: false,
        uses_ensd: false,
        brownian_noise: false,
        s_noise: false,
    }
}

impl Row {
    const fn second_order(mut self) -> Self {
        self.second_order = true;
        self
    }
    const fn discard(mut self) -> Self {
        self.discard_penultimate = true;
        self
    }
    const fn ensd(mut self) -> Self {
        self.uses_ensd = true;
        self
    }
    const fn brownian(mut self) -> Self {
        self.brownian_noise = true;
        self
    }
    const fn s_noise(mut self) -> Self {
        self.s_noise = true;
        self
    }
}

use SamplerKind as K;
use Schedule::{Automatic, Exponential, Karras};

/// A1111 v1.10's order (`sd_samplers_kdiffusion`, `sd_samplers_timesteps`, `sd_samplers_lcm`); `s_noise`
/// marks the functions A1111's `sampler_extra_params` passes `s_noise` to.
const TABLE: [Row; 20] = [
    row(K::DpmPp2M, "DPM++ 2M", &["k_dpmpp_2m"], Karras),
    row(K::DpmPpSde, "DPM++ SDE", &["k_dpmpp_sde"], Karras).second_order().brownian().s_noise(),
    row(K::DpmPp2MSde, "DPM++ 2M SDE", &["k_dpmpp_2m_sde"], Exponential).brownian().s_noise(),
    row(K::DpmPp2MSdeHeun, "DPM++ 2M SDE Heun", &["k_dpmpp_2m_sde_heun"], Exponential).brownian().s_noise(),
    row(K::DpmPp2SA, "DPM++ 2S a", &["k_dpmpp_2s_a"], Karras).second_order().ensd().s_noise(),
    row(K::DpmPp3MSde, "DPM++ 3M SDE", &["k_dpmpp_3m_sde"], Exponential).discard().brownian().s_noise(),
    row(K::EulerA, "Euler a", &["k_euler_a", "k_euler_ancestral"], Automatic).ensd(),
    row(K::Euler, "Euler", &["k_euler"], Automatic).s_noise(),
    row(K::Lms, "LMS", &["k_lms"], Automatic),
    row(K::Heun, "Heun", &["k_heun"], Automatic).second_order().s_noise(),
    row(K::Dpm2, "DPM2", &["k_dpm_2"], Karras).discard().second_order().s_noise(),
    row(K::Dpm2A, "DPM2 a", &["k_dpm_2_a"], Karras).discard().ensd().second_order().s_noise(),
    row(K::DpmFast, "DPM fast", &["k_dpm_fast"], Automatic).ensd().s_noise(),
    row(K::DpmAdaptive, "DPM adaptive", &["k_dpm_ad"], Automatic).ensd(),
    row(K::Restart, "Restart", &["restart"], Karras).second_order(),
    row(K::Ddim, "DDIM", &["ddim"], Automatic),
    row(K::DdimCfgPp, "DDIM CFG++", &["ddim_cfgpp"], Automatic),
    row(K::Plms, "PLMS", &["plms"], Automatic),
    row(K::UniPc, "UniPC", &["unipc"], Automatic),
    row(K::Lcm, "LCM", &["k_lcm"], Automatic),
];

impl SamplerKind {
    /// Every sampler, in A1111's order.
    pub const ALL: [SamplerKind; 20] = {
        let mut all = [K::Euler; 20];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].kind;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static Row {
        TABLE.iter().find(|r| r.kind == self).expect("every SamplerKind has a table row")
    }

    /// A1111's label ("DPM++ 2M").
    pub fn label(self) -> &'static str {
        self.row().label
    }

    /// A1111's aliases ("k_dpmpp_2m").
    pub fn aliases(self) -> &'static [&'static str] {
        self.row().aliases
    }

    /// The schedule "Automatic" means for this sampler (`Automatic` = the model's discrete schedule).
    pub fn default_schedule(self) -> Schedule {
        self.row().default_schedule
    }

    /// Resolves `Automatic` to this sampler's default.
    pub fn resolve_schedule(self, schedule: Schedule) -> Schedule {
        if schedule == Schedule::Automatic { self.default_schedule() } else { schedule }
    }

    /// Two model calls per step (A1111 builds prompt schedules over 2×steps for these).
    pub fn is_second_order(self) -> bool {
        self.row().second_order
    }

    /// Computes steps+1 σ and drops the penultimate (DPM2, DPM2 a, DPM++ 3M SDE).
    pub fn discards_penultimate_sigma(self) -> bool {
        self.row().discard_penultimate
    }

    /// Uses the eta noise seed delta (ENSD) for its ancestral noise.
    pub fn uses_ensd(self) -> bool {
        self.row().uses_ensd
    }

    /// Draws its noise from a Brownian tree in A1111 (the SDE samplers).
    pub fn uses_brownian_noise(self) -> bool {
        self.row().brownian_noise
    }

    /// Whether A1111 passes `s_noise` to this sampler (others use 1).
    pub fn honours_s_noise(self) -> bool {
        self.row().s_noise
    }

    /// Samples over discrete timesteps rather than σ (DDIM, DDIM CFG++, PLMS, UniPC).
    pub fn is_timestep_sampler(self) -> bool {
        matches!(self, K::Ddim | K::DdimCfgPp | K::Plms | K::UniPc)
    }

    /// Looks a sampler up by label or alias (case-insensitive); unknown names are an error listing the
    /// valid ones.
    pub fn from_name(name: &str) -> Result<Self> {
        let wanted = name.trim();
        TABLE
            .iter()
            .find(|r| r.label.eq_ignore_ascii_case(wanted) || r.aliases.iter().any(|a| a.eq_ignore_ascii_case(wanted)))
            .map(|r| r.kind)
            .ok_or_else(|| unknown_sampler(name))
    }

    /// Like [`SamplerKind::from_name`], also splitting legacy combined names ("DPM++ 2M Karras",
    /// "Euler a SGMUniform") into sampler and schedule, as A1111's `get_sampler_and_scheduler`.
    pub fn parse_with_schedule(name: &str) -> Result<(Self, Option<Schedule>)> {
        if let Ok(kind) = Self::from_name(name) {
            return Ok((kind, None));
        }
        let trimmed = name.trim();
        for schedule in Schedule::ALL {
            for spelling in schedule.spellings() {
                let Some(head) = trimmed.strip_suffix(spelling).and_then(|h| h.strip_suffix(' ')) else { continue };
                if let Ok(kind) = Self::from_name(head) {
                    return Ok((kind, Some(schedule)));
                }
            }
        }
        Err(unknown_sampler(name))
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

fn unknown_sampler(name: &str) -> Error {
    Error::InvalidParameter {
        field: "sampler_name",
        problem: format!(
            "unknown sampler `{name}`; valid: {} (a schedule may follow, e.g. \"DPM++ 2M Karras\")",
            TABLE.iter().map(|r| r.label).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_aliases_resolve() {
        for kind in SamplerKind::ALL {
            assert_eq!(SamplerKind::from_name(kind.label()).unwrap(), kind);
            for alias in kind.aliases() {
                assert_eq!(SamplerKind::from_name(alias).unwrap(), kind);
            }
        }
        assert_eq!(SamplerKind::from_name("euler A").unwrap(), SamplerKind::EulerA);
    }

    #[test]
    fn automatic_defaults_follow_a1111() {
        use SamplerKind as K;
        for k in [K::DpmPp2M, K::DpmPpSde, K::DpmPp2SA, K::Dpm2, K::Dpm2A, K::Restart] {
            assert_eq!(k.resolve_schedule(Schedule::Automatic), Schedule::Karras, "{k}");
        }
        for k in [K::DpmPp2MSde, K::DpmPp2MSdeHeun, K::DpmPp3MSde] {
            assert_eq!(k.resolve_schedule(Schedule::Automatic), Schedule::Exponential, "{k}");
        }
        assert_eq!(K::Euler.resolve_schedule(Schedule::Automatic), Schedule::Automatic);
        assert_eq!(K::DpmPp2M.resolve_schedule(Schedule::Beta), Schedule::Beta);
        let discards: Vec<_> = SamplerKind::ALL.into_iter().filter(|k| k.discards_penultimate_sigma()).collect();
        assert_eq!(discards, vec![K::DpmPp3MSde, K::Dpm2, K::Dpm2A]);
    }

    #[test]
    fn legacy_names_split() {
        use SamplerKind as K;
        assert_eq!(SamplerKind::parse_with_schedule("DPM++ 2M Karras").unwrap(), (K::DpmPp2M, Some(Schedule::Karras)));
        assert_eq!(
            SamplerKind::parse_with_schedule("DPM++ 2M SDE Exponential").unwrap(),
            (K::DpmPp2MSde, Some(Schedule::Exponential))
        );
        assert_eq!(
            SamplerKind::parse_with_schedule("Euler a SGMUniform").unwrap(),
            (K::EulerA, Some(Schedule::SgmUniform))
        );
        assert_eq!(SamplerKind::parse_with_schedule("DPM++ 2M SDE Heun").unwrap(), (K::DpmPp2MSdeHeun, None));
        assert_eq!(SamplerKind::parse_with_schedule("LMS Karras").unwrap(), (K::Lms, Some(Schedule::Karras)));
    }

    #[test]
    fn unknown_sampler_lists_valid_ones() {
        let err = SamplerKind::parse_with_schedule("Euler b").unwrap_err().to_string();
        assert!(err.contains("Euler b") && err.contains("DPM++ 2M SDE Heun") && err.contains("UniPC"), "{err}");
        assert!(SamplerKind::parse_with_schedule("DPM++ 2M Cosine").is_err());
    }
}
