//! Classifier-free guidance as A1111's `CFGDenoiser`: per-image `AND` sub-prompts with weights, prompt
//! editing schedules (`ScheduledCond`), cond/uncond batching (and `pad_cond_uncond`), inpainting image
//! conditioning per row; and `Unguided` for a single conditioning.

use ndarray::{Axis, Zip};

use crate::denoiser::{Denoiser, DiscreteDenoiser, Tensor, UNetModel};
use crate::error::{Error, Result};

/// A conditioning that changes with the denoiser call counter (A1111 prompt editing): entries of
/// `(end_at_step, cond)`; the first entry whose `end_at_step ≥ step` applies.
#[derive(Debug, Clone)]
pub struct ScheduledCond<C> {
    entries: Vec<(usize, C)>,
}

impl<C> ScheduledCond<C> {
    /// One conditioning for every step.
    pub fn constant(cond: C) -> Self {
        Self { entries: vec![(usize::MAX, cond)] }
    }

    /// Entries of `(end_at_step, cond)` in ascending `end_at_step`; an empty list is an error.
    pub fn new(entries: Vec<(usize, C)>) -> Result<Self> {
        if entries.is_empty() {
            return Err(Error::InvalidParameter {
                field: "conditioning schedule",
                problem: "it has no entries; pass at least one (end_at_step, cond)".into(),
            });
        }
        Ok(Self { entries })
    }

    /// The conditioning at denoiser call `step`. Past the last entry A1111 falls back to the first one
    /// (its `reconstruct_cond_batch` starts from index 0); this mirrors that.
    pub fn at(&self, step: usize) -> &C {
        let entry = self.entries.iter().find(|(end, _)| step <= *end).unwrap_or(&self.entries[0]);
        &entry.1
    }
}

/// Classifier-free guidance over a [`DiscreteDenoiser`], as A1111's `CFGDenoiser`, for a batch of images:
/// x0ᵢ = uncondᵢ + Σₖ wᵢₖ·cfg·(condᵢₖ − uncondᵢ), where the wᵢₖ are image i's `AND` weights.
///
/// Every sub-prompt row and every uncond row go through the UNet in one call when their token lengths
/// agree; otherwise the cond rows and the uncond rows take a call each (A1111's default without
/// `pad_cond_uncond`).
pub struct CfgDenoiser<M: UNetModel> {
    inner: DiscreteDenoiser<M>,
    conds: Vec<Vec<(ScheduledCond<M::Cond>, f64)>>,
    unconds: Vec<ScheduledCond<M::Cond>>,
    cfg_scale: f64,
    multiplier: f64,
    step: usize,
    model_calls: usize,
    pad_cond_uncond: bool,
    last_uncond: Option<Tensor>,
    /// Per image, the inpainting model's image conditioning (`[B, 5, h, w]`), the same for cond and uncond.
    image: Option<Tensor>,
}

impl<M: UNetModel> CfgDenoiser<M> {
    /// Guidance for a batch: per image its sub-prompts (each with its AND weight) and its uncond.
    pub fn new(
        inner: DiscreteDenoiser<M>,
        conds: Vec<Vec<(ScheduledCond<M::Cond>, f64)>>,
        unconds: Vec<ScheduledCond<M::Cond>>,
        cfg_scale: f64,
    ) -> Result<Self> {
        if conds.is_empty() || conds.iter().any(Vec::is_empty) {
            return Err(Error::InvalidParameter {
                field: "prompt",
                problem: "guidance needs at least one positive conditioning per image".into(),
            });
        }
        if conds.len() != unconds.len() {
            return Err(Error::InvalidParameter {
                field: "negative_prompt",
                problem: format!(
                    "{} negative conditionings for {} images; pass one per image",
                    unconds.len(),
                    conds.len()
                ),
            });
        }
        if !cfg_scale.is_finite() {
            return Err(Error::InvalidParameter {
                field: "cfg_scale",
                problem: format!("{cfg_scale} is not a finite number"),
            });
        }
        Ok(Self {
            inner,
            conds,
            unconds,
            cfg_scale,
            multiplier: 1.0,
            step: 0,
            model_calls: 0,
            pad_cond_uncond: false,
            last_uncond: None,
            image: None,
        })
    }

    /// Image conditioning for inpainting UNets: one row per image (`[B, 5, h, w]`: mask, masked-image
    /// latents), given to every cond and uncond row of that image (A1111's `image_cond_in`).
    pub fn with_image_conditioning(mut self, image: Tensor) -> Result<Self> {
        if image.ndim() != 4 || image.shape()[0] != self.conds.len() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "image conditioning",
                found: image.shape().to_vec(),
                expected: format!("[{}, channels, height, width]: one row per image", self.conds.len()),
            });
        }
        self.image = Some(image);
        Ok(self)
    }

    /// A1111's `pad_cond_uncond` option: when cond and uncond differ in length, pad the shorter side with
    /// empty-prompt chunks so both go through one UNet call (changes the result slightly; off by default).
    pub fn with_pad_cond_uncond(mut self, pad: bool) -> Self {
        self.pad_cond_uncond = pad;
        self
    }

    /// The wrapped model denoiser.
    pub fn inner(&self) -> &DiscreteDenoiser<M> {
        &self.inner
    }

    /// How many times the sampler has asked (A1111's `CFGDenoiser.step`, the prompt-schedule counter).
    pub fn calls(&self) -> usize {
        self.step
    }

    /// How many UNet forward calls were made.
    pub fn model_calls(&self) -> usize {
        self.model_calls
    }

    fn check_batch(&self, x: &Tensor) -> Result<()> {
        if x.ndim() == 0 || x.shape()[0] != self.conds.len() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "latent",
                found: x.shape().to_vec(),
                expected: format!("a batch of {} images (one per conditioning)", self.conds.len()),
            });
        }
        Ok(())
    }
}

/// Every cond and uncond row padded to the longer side's length, or `None` when the model cannot pad.
#[allow(clippy::type_complexity, reason = "a pair of owned row lists mirroring the borrowed ones")]
fn pad_rows<M: UNetModel>(
    model: &M,
    cond_rows: &[&M::Cond],
    uncond_rows: &[&M::Cond],
    cond_len: usize,
    uncond_len: usize,
) -> Option<(Vec<M::Cond>, Vec<M::Cond>)> {
    let target = cond_len.max(uncond_len);
    let pad = |rows: &[&M::Cond], stacked: usize| -> Option<Vec<M::Cond>> {
        rows.iter().map(|row| model.pad_with_empty(row, stacked, target)).collect()
    };
    Some((pad(cond_rows, cond_len)?, pad(uncond_rows, uncond_len)?))
}

/// Rows of `x` picked by image index (`rows[j]` is the image of output row `j`).
fn gather_rows(x: &Tensor, rows: &[usize]) -> Tensor {
    x.select(Axis(0), rows)
}

impl<M: UNetModel> Denoiser for CfgDenoiser<M> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.check_batch(x)?;
        let step = self.step;
        let batch = self.conds.len();
        let cond_images: Vec<usize> =
            self.conds.iter().enumerate().flat_map(|(i, subs)| std::iter::repeat_n(i, subs.len())).collect();
        let cond_rows: Vec<&M::Cond> = self.conds.iter().flatten().map(|(c, _)| c.at(step)).collect();
        let uncond_rows: Vec<&M::Cond> = self.unconds.iter().map(|u| u.at(step)).collect();
        let model = self.inner.model_mut();
        let cond_len = cond_rows.iter().map(|c| model.sequence_len(c)).max().unwrap_or(0);
        let uncond_len = uncond_rows.iter().map(|c| model.sequence_len(c)).max().unwrap_or(0);
        let image_rows: Vec<usize> = (0..batch).collect();
        let padded = if cond_len != uncond_len && self.pad_cond_uncond {
            pad_rows(model, &cond_rows, &uncond_rows, cond_len, uncond_len)
        } else {
            None
        };
        let (cond_rows, uncond_rows): (Vec<&M::Cond>, Vec<&M::Cond>) = match &padded {
            Some((conds, unconds)) => (conds.iter().collect(), unconds.iter().collect()),
            None => (cond_rows, uncond_rows),
        };
        let (cond_out, uncond_out) = if cond_len == uncond_len || padded.is_some() {
            let all_images: Vec<usize> = cond_images.iter().chain(&image_rows).copied().collect();
            let all_conds: Vec<&M::Cond> = cond_rows.iter().chain(&uncond_rows).copied().collect();
            let image = self.image.as_ref().map(|i| gather_rows(i, &all_images));
            let out = self.inner.denoise_with_image(&gather_rows(x, &all_images), sigma, &all_conds, image.as_ref())?;
            self.model_calls += 1;
            let n = cond_rows.len();
            (out.slice_axis(Axis(0), (..n).into()).to_owned(), out.slice_axis(Axis(0), (n..).into()).to_owned())
        } else {
            let cond_image = self.image.as_ref().map(|i| gather_rows(i, &cond_images));
            let cond_out =
                self.inner.denoise_with_image(&gather_rows(x, &cond_images), sigma, &cond_rows, cond_image.as_ref())?;
            let uncond_out = self.inner.denoise_with_image(x, sigma, &uncond_rows, self.image.as_ref())?;
            self.model_calls += 2;
            (cond_out, uncond_out)
        };
        let mut guided = uncond_out.clone();
        let scale = self.cfg_scale * self.multiplier;
        let weights = self.conds.iter().flatten().map(|(_, w)| *w);
        for ((row, image), weight) in cond_out.axis_iter(Axis(0)).zip(&cond_images).zip(weights) {
            let w = weight * scale;
            Zip::from(guided.index_axis_mut(Axis(0), *image))
                .and(&row)
                .and(uncond_out.index_axis(Axis(0), *image))
                .for_each(|g, &c, &u| *g = (f64::from(*g) + (f64::from(c) - f64::from(u)) * w) as f32);
        }
        self.last_uncond = Some(uncond_out);
        self.step += 1;
        Ok(guided)
    }

    fn last_uncond(&self) -> Option<&Tensor> {
        self.last_uncond.as_ref()
    }

    fn set_guidance_multiplier(&mut self, multiplier: f64) -> bool {
        self.multiplier = multiplier;
        true
    }
}

/// A [`DiscreteDenoiser`] with one fixed conditioning for every row and no guidance.
pub struct Unguided<M: UNetModel> {
    inner: DiscreteDenoiser<M>,
    cond: M::Cond,
}

impl<M: UNetModel> Unguided<M> {
    /// Denoises with `cond` only.
    pub fn new(inner: DiscreteDenoiser<M>, cond: M::Cond) -> Self {
        Self { inner, cond }
    }
}

impl<M: UNetModel> Denoiser for Unguided<M> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let rows = vec![&self.cond; x.shape().first().copied().unwrap_or(1)];
        self.inner.denoise_with(x, sigma, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::Prediction;
    use crate::denoiser::test_models::{Linear, latent};
    use crate::model_schedule::ModelSchedule;
    use ndarray::IxDyn;

    #[test]
    fn cfg_combines_and_weights_and_keeps_uncond() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let inner = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let conds = vec![vec![(ScheduledCond::constant(1.0), 1.0), (ScheduledCond::constant(2.0), 0.5)]];
        let mut cfg = CfgDenoiser::new(inner, conds, vec![ScheduledCond::constant(0.0)], 7.0).unwrap();
        let sigma = 1.0;
        let x = latent(0.0);
        let out = cfg.denoise(&x, sigma).unwrap();
        let t = ModelSchedule::scaled_linear().sigma_to_t(sigma) / 1000.0;
        let (u, c1, c2) = (-sigma * t, -sigma * (t + 1.0), -sigma * (t + 2.0));
        let expected = u + 7.0 * (c1 - u) + 0.5 * 7.0 * (c2 - u);
        assert!((f64::from(out[[0, 0, 0, 0]]) - expected).abs() < 1e-4);
        assert!((f64::from(cfg.last_uncond().unwrap()[[0, 0, 0, 0]]) - u).abs() < 1e-6);
        assert_eq!(cfg.calls(), 1);
        assert_eq!(cfg.model_calls(), 1, "equal token lengths share one UNet call");
    }

    #[test]
    fn cfg_batches_per_image_and_splits_calls_when_lengths_differ() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let inner = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let conds = vec![vec![(ScheduledCond::constant(1.0), 1.0)], vec![(ScheduledCond::constant(3.0), 1.0)]];
        let unconds = vec![ScheduledCond::constant(-1.0), ScheduledCond::constant(-2.0)];
        let mut cfg = CfgDenoiser::new(inner, conds, unconds, 2.0).unwrap();
        let x = Tensor::zeros(IxDyn(&[2, 4, 2, 2]));
        let out = cfg.denoise(&x, 1.0).unwrap();
        assert_eq!(cfg.model_calls(), 2, "uncond of another token length takes its own call");
        let t = ModelSchedule::scaled_linear().sigma_to_t(1.0) / 1000.0;
        for (image, (c, u)) in [(1.0, -1.0), (3.0, -2.0)].into_iter().enumerate() {
            let (dc, du) = (-(t + c), -(t + u));
            let expected = du + 2.0 * (dc - du);
            assert!((f64::from(out[[image, 0, 0, 0]]) - expected).abs() < 1e-4, "image {image}");
        }
        let wrong = Tensor::zeros(IxDyn(&[3, 4, 2, 2]));
        assert!(cfg.denoise(&wrong, 1.0).is_err(), "a batch that does not match the conditionings is an error");
    }

    /// A fake whose conds are (value, token length) and which pads by appending "empty" length.
    struct Padding;

    impl UNetModel for Padding {
        type Cond = (f32, usize);
        fn predict(&mut self, x_in: &Tensor, _t: f32, conds: &[&(f32, usize)]) -> Result<Tensor> {
            let len = conds[0].1;
            assert!(conds.iter().all(|c| c.1 == len), "one call gets rows of one length");
            let mut out = x_in.clone();
            for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
                row += cond.0 + cond.1 as f32 * 0.001;
            }
            Ok(out)
        }
        fn sequence_len(&self, cond: &(f32, usize)) -> usize {
            cond.1
        }
        fn pad_with_empty(&self, cond: &(f32, usize), _stacked: usize, target: usize) -> Option<(f32, usize)> {
            Some((cond.0, target))
        }
    }

    #[test]
    fn pad_cond_uncond_shares_one_call_and_is_off_by_default() {
        let run = |pad: bool| {
            let inner = DiscreteDenoiser::new(Padding, ModelSchedule::scaled_linear(), Prediction::Epsilon);
            let conds = vec![vec![(ScheduledCond::constant((1.0, 154)), 1.0)]];
            let mut cfg = CfgDenoiser::new(inner, conds, vec![ScheduledCond::constant((0.0, 77))], 7.0)
                .unwrap()
                .with_pad_cond_uncond(pad);
            let out = cfg.denoise(&latent(0.0), 1.0).unwrap();
            (cfg.model_calls(), out[[0, 0, 0, 0]])
        };
        let (separate, unpadded) = run(false);
        let (shared, padded) = run(true);
        assert_eq!((separate, shared), (2, 1));
        assert_ne!(unpadded, padded, "the padded uncond sees the longer conditioning");
    }

    #[test]
    fn scheduled_cond_follows_a1111_lookup() {
        let s = ScheduledCond::new(vec![(1, "a"), (10, "b")]).unwrap();
        assert_eq!(*s.at(0), "a");
        assert_eq!(*s.at(1), "a");
        assert_eq!(*s.at(2), "b");
        assert_eq!(*s.at(10), "b");
        assert_eq!(*s.at(11), "a", "past the end A1111 uses the first entry");
        assert!(ScheduledCond::<u8>::new(Vec::new()).is_err());
    }
}
