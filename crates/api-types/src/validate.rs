//! Request validation: every problem names its field and says how to fix it.
//!
//! A1111 itself checks little (bad sizes fail deep inside torch); sdrt rejects what it cannot run up front.

use crate::error::{Error, FieldProblem, Result};
use crate::names::{self, SamplerChoice};
use crate::request::{GenerationRequest, Img2ImgRequest, Txt2ImgRequest};

/// Smallest image side sdrt accepts, in pixels (SD's UNet needs at least a few latent rows).
pub const MIN_SIDE: u32 = 64;

/// What one request may ask for at most. `sdrt serve` sets these from its `--max-*` flags; the defaults fit
/// any real use on one machine and refuse what would exhaust its memory or occupy it for hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest image side in pixels (`width`, `height`, the hires target, seed resize).
    pub max_side: u32,
    /// Most pixels in one image (`width × height`, and the hires target).
    pub max_pixels: u64,
    /// Most pixels in one batch (`width × height × batch_size`, hires target included).
    pub max_batch_pixels: u64,
    /// Most sampling steps (first pass and hires pass).
    pub max_steps: u32,
    /// Most images per batch.
    pub max_batch_size: u32,
    /// Most images in one request (`batch_size × n_iter`).
    pub max_images: u64,
    /// Longest prompt (and negative prompt), in characters.
    pub max_prompt_chars: usize,
    /// Deepest nesting of `(`, `[` and `{` in a prompt.
    pub max_prompt_nesting: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 4096 * 4096,
            max_batch_pixels: 64 * 512 * 512,
            max_steps: 1000,
            max_batch_size: 64,
            max_images: 10_000,
            max_prompt_chars: 65_536,
            max_prompt_nesting: 100,
        }
    }
}

/// Deepest nesting of unescaped `(`, `[` and `{` in `prompt` (closing brackets never make it negative).
fn prompt_nesting(prompt: &str) -> usize {
    let (mut depth, mut deepest, mut escaped) = (0usize, 0usize, false);
    for c in prompt.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Collects problems so one response can report all of them.
#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn push(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldProblem { field, message: message.into() });
    }

    fn check(&mut self, ok: bool, field: &'static str, message: impl FnOnce() -> String) {
        if !ok {
            self.push(field, message());
        }
    }

    fn finish<T>(self, value: T) -> Result<T> {
        if self.0.is_empty() { Ok(value) } else { Err(Error::Invalid(self.0)) }
    }
}

fn check_side(problems: &mut Problems, limits: &RequestLimits, field: &'static str, value: u32) {
    let (min, max) = (MIN_SIDE, limits.max_side);
    problems.check(value.is_multiple_of(8) && (min..=max).contains(&value), field, || {
        let nearest = ((value.clamp(min, max) + 4) / 8 * 8).clamp(min, max);
        format!("{value} is not a multiple of 8 in [{min}, {max}]; use e.g. {nearest}")
    });
}

fn check_unit_interval(problems: &mut Problems, field: &'static str, value: f64) {
    problems
        .check((0.0..=1.0).contains(&value), field, || format!("{value} is outside [0, 1]; use a value from 0 to 1"));
}

fn check_finite(problems: &mut Problems, field: &'static str, value: Option<f64>) {
    if let Some(value) = value {
        problems
            .check(value.is_finite(), field, || format!("{value} is not a finite number; send a number or omit it"));
    }
}

fn check_steps(problems: &mut Problems, limits: &RequestLimits, field: &'static str, steps: u32) {
    let max = limits.max_steps;
    problems.check((1..=max).contains(&steps), field, || {
        format!("{steps} is outside [1, {max}] (--max-steps); use at least 1 step (20–50 is typical)")
    });
}

fn check_seed(problems: &mut Problems, field: &'static str, value: i64) {
    problems.check(value >= -1, field, || format!("{value} is below -1; use -1 for a random seed or a seed >= 0"));
}

fn resolve(
    problems: &mut Problems,
    field: &'static str,
    sampler: &str,
    scheduler: Option<&str>,
) -> Option<SamplerChoice> {
    match names::resolve_sampler_and_scheduler(field, sampler, scheduler) {
        Ok(choice) => Some(choice),
        Err(Error::UnknownSampler { field, name, valid }) => {
            problems.push(field, format!("unknown sampler {name:?}; use one of: {valid}"));
            None
        }
        Err(Error::UnknownScheduler { field, name, valid }) => {
            problems.push(field, format!("unknown scheduler {name:?}; use one of: {valid}"));
            None
        }
        Err(other) => {
            problems.push(field, other.to_string());
            None
        }
    }
}

fn check_pixels(problems: &mut Problems, limits: &RequestLimits, field: &'static str, size: (u64, u64), batch: u64) {
    let pixels = size.0.saturating_mul(size.1);
    problems.check(pixels <= limits.max_pixels, field, || {
        format!(
            "{}x{} is {pixels} pixels, more than this server's {} per image (--max-pixels); ask for a smaller image",
            size.0, size.1, limits.max_pixels
        )
    });
    let batch_pixels = pixels.saturating_mul(batch);
    problems.check(pixels > limits.max_pixels || batch_pixels <= limits.max_batch_pixels, "batch_size", || {
        format!(
            "{batch} images of {}x{} are {batch_pixels} pixels, more than this server's {} per batch \
             (--max-batch-pixels); use a smaller batch_size and more n_iter",
            size.0, size.1, limits.max_batch_pixels
        )
    });
}

fn check_prompt(problems: &mut Problems, limits: &RequestLimits, field: &'static str, prompt: &str) {
    let chars = prompt.chars().count();
    problems.check(chars <= limits.max_prompt_chars, field, || {
        format!("{chars} characters is longer than this server's {} (--max-prompt-chars)", limits.max_prompt_chars)
    });
    let nesting = prompt_nesting(prompt);
    problems.check(nesting <= limits.max_prompt_nesting, field, || {
        format!(
            "brackets nested {nesting} deep, deeper than this server's {} (--max-prompt-nesting); \
             escape literal brackets as \\( \\[",
            limits.max_prompt_nesting
        )
    });
}

fn check_base(problems: &mut Problems, limits: &RequestLimits, base: &GenerationRequest) -> Option<SamplerChoice> {
    check_side(problems, limits, "width", base.width);
    check_side(problems, limits, "height", base.height);
    check_pixels(problems, limits, "width", (base.width.into(), base.height.into()), base.batch_size.into());
    check_steps(problems, limits, "steps", base.steps);
    problems.check(base.cfg_scale.is_finite() && base.cfg_scale >= 0.0, "cfg_scale", || {
        format!("{} must be a finite number >= 0; 7.0 is A1111's default", base.cfg_scale)
    });
    let max_batch = limits.max_batch_size;
    problems.check((1..=max_batch).contains(&base.batch_size), "batch_size", || {
        format!("{} is outside [1, {max_batch}] (--max-batch-size); use n_iter for more images", base.batch_size)
    });
    let images = u64::from(base.batch_size) * u64::from(base.n_iter);
    problems.check(base.n_iter >= 1 && images <= limits.max_images, "n_iter", || {
        format!(
            "{} batches of {} images is outside [1, {}] images per request (--max-images); \
             0 batches produce nothing, and more belong in several requests",
            base.n_iter, base.batch_size, limits.max_images
        )
    });
    check_prompt(problems, limits, "prompt", &base.prompt);
    check_prompt(problems, limits, "negative_prompt", &base.negative_prompt);
    for (field, value) in
        [("seed_resize_from_w", base.seed_resize_from_w), ("seed_resize_from_h", base.seed_resize_from_h)]
    {
        problems.check((-1..=i64::from(limits.max_side)).contains(&value), field, || {
            format!(
                "{value} is outside [-1, {}]; use -1 (or 0) for no seed resize, or a size in pixels",
                limits.max_side
            )
        });
    }
    check_seed(problems, "seed", base.seed);
    check_seed(problems, "subseed", base.subseed);
    check_unit_interval(problems, "subseed_strength", base.subseed_strength);
    for (field, value) in [
        ("eta", base.eta),
        ("s_min_uncond", base.s_min_uncond),
        ("s_churn", base.s_churn),
        ("s_tmax", base.s_tmax),
        ("s_tmin", base.s_tmin),
        ("s_noise", base.s_noise),
    ] {
        check_finite(problems, field, value);
    }
    let sampler_field =
        if base.sampler_name.as_deref().is_some_and(|s| !s.is_empty()) { "sampler_name" } else { "sampler_index" };
    resolve(problems, sampler_field, base.requested_sampler(), base.scheduler.as_deref())
}

/// What validation resolved, for the processing stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidatedSampling {
    /// First-pass sampler and scheduler.
    pub first_pass: SamplerChoice,
    /// Hires-pass sampler and scheduler (txt2img with `enable_hr`; equals `first_pass` when not overridden).
    pub hires_pass: Option<SamplerChoice>,
}

impl Txt2ImgRequest {
    /// Checks every field sdrt needs against `limits`; on success returns the resolved sampler choices.
    pub fn validate(&self, limits: &RequestLimits) -> Result<ValidatedSampling> {
        let mut problems = Problems::default();
        let first = check_base(&mut problems, limits, &self.base);
        check_unit_interval(&mut problems, "denoising_strength", self.denoising_strength);
        let mut hires = None;
        if self.enable_hr {
            problems.check(self.hr_scale.is_finite() && self.hr_scale >= 1.0, "hr_scale", || {
                format!("{} must be >= 1 (2.0 doubles the size)", self.hr_scale)
            });
            for (field, value) in [("hr_resize_x", self.hr_resize_x), ("hr_resize_y", self.hr_resize_y)] {
                if value != 0 {
                    check_side(&mut problems, limits, field, value);
                }
            }
            if self.hr_second_pass_steps != 0 {
                check_steps(&mut problems, limits, "hr_second_pass_steps", self.hr_second_pass_steps);
            }
            let field = if self.hr_resize_x == 0 && self.hr_resize_y == 0 { "hr_scale" } else { "hr_resize_x" };
            check_pixels(&mut problems, limits, field, self.hires_size(), self.base.batch_size.into());
            check_prompt(&mut problems, limits, "hr_prompt", &self.hr_prompt);
            check_prompt(&mut problems, limits, "hr_negative_prompt", &self.hr_negative_prompt);
            let sampler = self.hr_sampler_name.as_deref().filter(|s| !s.is_empty() && *s != "Use same sampler");
            let scheduler = self.hr_scheduler.as_deref().filter(|s| !s.is_empty() && *s != "Use same scheduler");
            hires = match (sampler, scheduler, first) {
                (None, None, first) => first,
                (None, Some(scheduler), _) => {
                    resolve(&mut problems, "hr_sampler_name", self.base.requested_sampler(), Some(scheduler))
                }
                (Some(sampler), scheduler, _) => {
                    resolve(&mut problems, "hr_sampler_name", sampler, scheduler.or(self.base.scheduler.as_deref()))
                }
            };
        }
        let first_pass = first
            .unwrap_or_else(|| SamplerChoice { sampler: &names::SAMPLERS[0], scheduler: names::automatic_scheduler() });
        problems.finish(ValidatedSampling { first_pass, hires_pass: hires })
    }
}

impl Img2ImgRequest {
    /// Checks every field sdrt needs against `limits`; on success returns the resolved sampler choice.
    pub fn validate(&self, limits: &RequestLimits) -> Result<ValidatedSampling> {
        let mut problems = Problems::default();
        let first = check_base(&mut problems, limits, &self.base);
        check_unit_interval(&mut problems, "denoising_strength", self.denoising_strength);
        problems.check(!self.init_images.is_empty(), "init_images", || {
            "no init image; send at least one base64 image".to_string()
        });
        problems.check(self.resize_mode <= 3, "resize_mode", || {
            format!("{} is not a mode; use 0 (resize), 1 (crop), 2 (fill) or 3 (latent upscale)", self.resize_mode)
        });
        problems.check(self.inpainting_fill <= 3, "inpainting_fill", || {
            format!(
                "{} is not a fill; use 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)",
                self.inpainting_fill
            )
        });
        problems.check(self.inpainting_mask_invert <= 1, "inpainting_mask_invert", || {
            format!("{} must be 0 (inpaint masked) or 1 (inpaint not masked)", self.inpainting_mask_invert)
        });
        let (blur_x, blur_y) = self.effective_mask_blur();
        let blur_field = if self.mask_blur.is_some() { "mask_blur" } else { "mask_blur_x" };
        problems.check(blur_x >= 0 && blur_y >= 0, blur_field, || "mask blur must be >= 0 pixels".to_string());
        check_finite(&mut problems, "image_cfg_scale", self.image_cfg_scale);
        check_finite(&mut problems, "initial_noise_multiplier", self.initial_noise_multiplier);
        let first_pass = first
            .unwrap_or_else(|| SamplerChoice { sampler: &names::SAMPLERS[0], scheduler: names::automatic_scheduler() });
        problems.finish(ValidatedSampling { first_pass, hires_pass: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt2img(json: &str) -> Txt2ImgRequest {
        Txt2ImgRequest::from_json(json).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_resolve_to_euler() {
        let sampling = Txt2ImgRequest::default().validate(&RequestLimits::default()).unwrap();
        assert_eq!(sampling.first_pass.sampler.name, "Euler");
        assert_eq!(sampling.hires_pass, None);
    }

    #[test]
    fn every_bad_field_is_reported_with_a_fix() {
        let err = txt2img(
            r#"{"width": 500, "height": 8, "steps": 0, "cfg_scale": -1, "batch_size": 0, "denoising_strength": 1.5, "sampler_name": "Eulr"}"#,
        )
        .validate(&RequestLimits::default())
        .unwrap_err();
        assert_eq!(
            err.fields(),
            ["width", "height", "steps", "cfg_scale", "batch_size", "sampler_name", "denoising_strength"]
        );
        let text = err.to_string();
        assert!(text.contains("width: 500 is not a multiple of 8 in [64, 8192]; use e.g. 504"), "{text}");
        assert!(text.contains("use one of: DPM++ 2M,"), "{text}");
    }

    #[test]
    fn hires_sampler_inherits_and_overrides() {
        let sampling = txt2img(r#"{"enable_hr": true, "sampler_name": "DPM++ 2M", "scheduler": "karras"}"#)
            .validate(&RequestLimits::default())
            .unwrap();
        assert_eq!(sampling.hires_pass, Some(sampling.first_pass));
        let sampling = txt2img(r#"{"enable_hr": true, "hr_sampler_name": "Euler a"}"#)
            .validate(&RequestLimits::default())
            .unwrap();
        assert_eq!(sampling.hires_pass.unwrap().sampler.name, "Euler a");
        let err = txt2img(r#"{"enable_hr": true, "hr_scale": 0.5, "hr_scheduler": "nope"}"#)
            .validate(&RequestLimits::default())
            .unwrap_err();
        assert_eq!(err.fields(), ["hr_scale", "hr_scheduler"]);
    }

    #[test]
    fn sizes_that_would_exhaust_memory_are_refused_up_front() {
        let err = txt2img(r#"{"n_iter": 4294967295, "seed_resize_from_w": 1099511627776, "seed_resize_from_h": 64}"#)
            .validate(&RequestLimits::default())
            .unwrap_err();
        assert_eq!(err.fields(), ["n_iter", "seed_resize_from_w"]);
        assert!(
            txt2img(r#"{"seed_resize_from_w": 0, "seed_resize_from_h": -1}"#)
                .validate(&RequestLimits::default())
                .is_ok()
        );
    }

    #[test]
    fn nesting_counts_unescaped_brackets_only() {
        assert_eq!(prompt_nesting("a (b [c {d}]) (e)"), 3);
        assert_eq!(prompt_nesting(r"\(\(\( x ))) (y"), 1);
        assert_eq!(prompt_nesting(&"(".repeat(10_000)), 10_000);
        let err = txt2img(&format!(r#"{{"prompt": "{}"}}"#, "(".repeat(10_000))).validate(&RequestLimits::default());
        assert_eq!(err.unwrap_err().fields(), ["prompt"]);
    }

    #[test]
    fn hires_size_follows_a1111s_target_resolution() {
        let size = |json: &str| txt2img(json).hires_size();
        assert_eq!(size(r#"{"width": 512, "height": 384, "hr_scale": 1.5}"#), (768, 576));
        assert_eq!(size(r#"{"width": 512, "height": 384, "hr_resize_x": 1024}"#), (1024, 768));
        assert_eq!(size(r#"{"width": 512, "height": 384, "hr_resize_y": 768}"#), (1024, 768));
        // Both sides: the image covers the box (the excess is truncated later).
        assert_eq!(size(r#"{"width": 512, "height": 384, "hr_resize_x": 1024, "hr_resize_y": 1024}"#), (1365, 1024));
        let absurd = txt2img(r#"{"enable_hr": true, "hr_scale": 1e300}"#).validate(&RequestLimits::default());
        assert_eq!(absurd.unwrap_err().fields(), ["hr_scale"]);
    }

    #[test]
    fn img2img_needs_an_init_image() {
        let err = Img2ImgRequest::default().validate(&RequestLimits::default()).unwrap_err();
        assert_eq!(err.fields(), ["init_images"]);
        let ok = Img2ImgRequest::from_json(r#"{"init_images": ["AAAA"], "sampler_name": "k_euler_a"}"#).unwrap();
        assert_eq!(ok.validate(&RequestLimits::default()).unwrap().first_pass.sampler.name, "Euler a");
    }
}
