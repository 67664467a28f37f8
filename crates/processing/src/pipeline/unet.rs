//! The ONNX UNet behind the `UNetModel` trait: stacks per-row conditionings into the batched inputs the
//! export takes (cross-attention, SDXL pooled `text_embeds` and `time_ids`).

use std::sync::Arc;

use ndarray::{Array2, Array3, Axis, s};
use sdrt_models::{Unet, UnetInput};

use super::LATENT_CHANNELS;
use crate::conditioning::Cond;
use crate::denoiser::{Tensor, UNetModel};
use crate::error::{Error, Result};

const STAGE: &str = "processing::unet";

/// `sdrt-models`' UNet with the per-job inputs that do not depend on the prompt.
pub(crate) struct OnnxUnet<'m> {
    unet: &'m mut Unet,
    /// SDXL `time_ids` row: original size, crop top-left, target size.
    time_ids: Option<[f32; 6]>,
    /// The empty prompt's encoding, for A1111's `pad_cond_uncond`.
    empty: Option<Arc<Cond>>,
    /// Stacked conditioning of the most recent calls: the same rows come back every step, so they are
    /// stacked once (two entries: cond and uncond alternate when they need separate calls).
    stacked: Vec<StackedConds>,
    /// Calls at or below this timestep are the pass's last: the UNet hands its activations' memory back after
    /// them (`Unet::release_memory_after_next_run`), so the decode that follows does not sit beside it.
    last_timestep: Option<f32>,
}

/// The batched conditioning inputs for one list of rows.
struct StackedConds {
    rows: Vec<Arc<Cond>>,
    hidden: Array3<f32>,
    pooled: Option<Array2<f32>>,
    time_ids: Option<Array2<f32>>,
}

const STACK_CACHE_ENTRIES: usize = 2;

impl<'m> OnnxUnet<'m> {
    pub(crate) fn new(unet: &'m mut Unet, time_ids: Option<[f32; 6]>, empty: Option<Arc<Cond>>) -> Self {
        Self { unet, time_ids, empty, stacked: Vec::with_capacity(STACK_CACHE_ENTRIES), last_timestep: None }
    }

    /// Releases the UNet's working memory after calls at or below `timestep` (the pass's last model call, as
    /// `Sampler::last_sigma` finds it); `None` keeps it.
    pub(crate) fn releasing_memory_at(mut self, timestep: Option<f32>) -> Self {
        self.last_timestep = timestep;
        self
    }

    /// Where the stacked inputs for `conds` are in the cache, built on first sight of these rows (compared by
    /// identity).
    fn stacked_index(&mut self, conds: &[&Arc<Cond>]) -> Result<usize> {
        let same_rows = |entry: &StackedConds| {
            entry.rows.len() == conds.len() && entry.rows.iter().zip(conds).all(|(a, b)| Arc::ptr_eq(a, b))
        };
        if let Some(index) = self.stacked.iter().position(same_rows) {
            return Ok(index);
        }
        let sdxl = self.unet.takes_sdxl_conditioning();
        let entry = StackedConds {
            rows: conds.iter().map(|c| Arc::clone(c)).collect(),
            hidden: stack_hidden(conds)?,
            pooled: if sdxl { stack_pooled(conds)? } else { None },
            time_ids: match (sdxl, self.time_ids) {
                (true, Some(ids)) => Some(Array2::from_shape_fn((conds.len(), 6), |(_, j)| ids[j])),
                _ => None,
            },
        };
        if self.stacked.len() == STACK_CACHE_ENTRIES {
            self.stacked.remove(0);
        }
        self.stacked.push(entry);
        Ok(self.stacked.len() - 1)
    }
}

/// `cond` with its last token vector repeated to `stacked_len`, then `empty` chunks appended up to
/// `target_len` (A1111 stacks, then `pad_cond`s). `None` when the lengths do not work out in whole chunks.
pub(crate) fn pad_with_empty_chunks(cond: &Cond, empty: &Cond, stacked_len: usize, target_len: usize) -> Option<Cond> {
    let chunk = empty.hidden.nrows();
    let (rows, dim) = cond.hidden.dim();
    if chunk == 0 || rows == 0 || dim != empty.hidden.ncols() || stacked_len < rows || target_len < stacked_len {
        return None;
    }
    if !(target_len - stacked_len).is_multiple_of(chunk) {
        return None;
    }
    let mut hidden = Array2::<f32>::zeros((target_len, dim));
    hidden.slice_mut(s![..rows, ..]).assign(&cond.hidden);
    let last = cond.hidden.row(rows - 1);
    for mut row in hidden.slice_mut(s![rows..stacked_len, ..]).axis_iter_mut(Axis(0)) {
        row.assign(&last);
    }
    for start in (stacked_len..target_len).step_by(chunk) {
        hidden.slice_mut(s![start..start + chunk, ..]).assign(&empty.hidden);
    }
    Some(Cond { hidden, pooled: cond.pooled.clone() })
}

/// SDXL's micro-conditioning for an image of `width`×`height` without cropping, as A1111 sends it:
/// (original height, original width, crop top, crop left, target height, target width).
pub(crate) fn sdxl_time_ids(width: usize, height: usize) -> [f32; 6] {
    let (w, h) = (width as f32, height as f32);
    [h, w, 0.0, 0.0, h, w]
}

/// Stacks conditionings of possibly different token lengths into `[N, S_max, D]`, padding each shorter one
/// by repeating its last token vector (A1111's `reconstruct_multicond_batch`).
pub(crate) fn stack_hidden(conds: &[&Arc<Cond>]) -> Result<Array3<f32>> {
    let len = conds.iter().map(|c| c.hidden.nrows()).max().unwrap_or(0);
    let dim = conds.first().map_or(0, |c| c.hidden.ncols());
    let mut out = Array3::<f32>::zeros((conds.len(), len, dim));
    for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
        let hidden = &cond.hidden;
        if hidden.ncols() != dim || hidden.nrows() == 0 {
            return Err(Error::Shape {
                stage: STAGE,
                tensor: "encoder_hidden_states",
                found: hidden.shape().to_vec(),
                expected: format!("[tokens ≥ 1, {dim}] like the batch's other conditionings"),
            });
        }
        row.slice_mut(s![..hidden.nrows(), ..]).assign(hidden);
        let last = hidden.row(hidden.nrows() - 1);
        for mut pad in row.slice_mut(s![hidden.nrows().., ..]).axis_iter_mut(Axis(0)) {
            pad.assign(&last);
        }
    }
    Ok(out)
}

fn stack_pooled(conds: &[&Arc<Cond>]) -> Result<Option<Array2<f32>>> {
    let Some(first) = conds.first().and_then(|c| c.pooled.as_ref()) else { return Ok(None) };
    let mut out = Array2::<f32>::zeros((conds.len(), first.len()));
    for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
        match &cond.pooled {
            Some(pooled) if pooled.len() == first.len() => row.assign(pooled),
            other => {
                return Err(Error::Shape {
                    stage: STAGE,
                    tensor: "text_embeds",
                    found: other.as_ref().map_or_else(Vec::new, |p| vec![p.len()]),
                    expected: format!("[{}] like the batch's other pooled embeddings", first.len()),
                });
            }
        }
    }
    Ok(Some(out))
}

impl UNetModel for OnnxUnet<'_> {
    type Cond = Arc<Cond>;

    fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&Arc<Cond>]) -> Result<Tensor> {
        let all = super::nchw(x_in, STAGE, "sample", "[batch, channels, height/8, width/8]")?;
        // Channels past the latent ones are an inpainting model's image conditioning (`c_concat`).
        let sample = all.slice(s![.., ..LATENT_CHANNELS.min(all.shape()[1]), .., ..]);
        let image = (all.shape()[1] > LATENT_CHANNELS).then(|| all.slice(s![.., LATENT_CHANNELS.., .., ..]));
        let rows = sample.shape()[0];
        if conds.len() != rows {
            return Err(Error::Shape {
                stage: STAGE,
                tensor: "encoder_hidden_states",
                found: vec![conds.len()],
                expected: format!("one conditioning per latent row ({rows})"),
            });
        }
        let index = self.stacked_index(conds)?;
        let stacked = &self.stacked[index];
        let timesteps = ndarray::Array1::from_elem(rows, timestep);
        let input = UnetInput {
            sample,
            timesteps: timesteps.view(),
            encoder_hidden_states: stacked.hidden.view(),
            inpaint_conditioning: image,
            text_embeds: stacked.pooled.as_ref().map(|p| p.view()),
            time_ids: stacked.time_ids.as_ref().map(|t| t.view()),
            timestep_cond: None,
        };
        if self.last_timestep.is_some_and(|last| timestep <= last) {
            self.unet.release_memory_after_next_run();
        }
        let out = self.unet.predict(&input).map_err(|source| Error::Model { stage: STAGE, source })?;
        Ok(out.into_dyn())
    }

    fn sequence_len(&self, cond: &Arc<Cond>) -> usize {
        cond.hidden.nrows()
    }

    fn pad_with_empty(&self, cond: &Arc<Cond>, stacked_len: usize, target_len: usize) -> Option<Arc<Cond>> {
        let empty = self.empty.as_ref()?;
        pad_with_empty_chunks(cond, empty, stacked_len, target_len).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(rows: &[f32]) -> Arc<Cond> {
        let hidden = Array2::from_shape_fn((rows.len(), 2), |(i, j)| rows[i] + j as f32 * 0.5);
        Arc::new(Cond { hidden, pooled: None })
    }

    #[test]
    fn shorter_conditionings_repeat_their_last_vector() {
        let (a, b) = (cond(&[1.0, 2.0, 3.0]), cond(&[7.0]));
        let stacked = stack_hidden(&[&a, &b]).unwrap();
        assert_eq!(stacked.shape(), &[2, 3, 2]);
        assert_eq!(stacked[[0, 2, 1]], 3.5);
        assert_eq!(stacked[[1, 0, 0]], 7.0);
        assert_eq!(stacked[[1, 2, 0]], 7.0, "padding repeats the last token vector");
    }

    #[test]
    fn mismatched_widths_are_an_error() {
        let a = cond(&[1.0]);
        let b = Arc::new(Cond { hidden: Array2::zeros((1, 3)), pooled: None });
        let err = stack_hidden(&[&a, &b]).unwrap_err();
        assert!(err.to_string().contains("encoder_hidden_states"), "{err}");
    }

    #[test]
    fn padding_repeats_to_the_stack_then_appends_empty_chunks() {
        let cond = cond(&[1.0, 2.0]);
        let empty = Cond { hidden: Array2::from_elem((2, 2), 9.0), pooled: None };
        let padded = pad_with_empty_chunks(&cond, &empty, 3, 7).unwrap();
        assert_eq!(padded.hidden.nrows(), 7);
        assert_eq!(padded.hidden[[2, 0]], 2.0, "repeated last vector up to the stacked length");
        assert_eq!(padded.hidden[[3, 0]], 9.0);
        assert_eq!(padded.hidden[[6, 1]], 9.0, "two empty chunks fill the rest");
        assert!(pad_with_empty_chunks(&cond, &empty, 3, 6).is_none(), "only whole chunks");
    }

    #[test]
    fn sdxl_time_ids_are_height_first() {
        assert_eq!(sdxl_time_ids(96, 64), [64.0, 96.0, 0.0, 0.0, 64.0, 96.0]);
    }
}
