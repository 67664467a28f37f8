//! A1111's emphasis modes (`modules/sd_emphasis.py`): how `(word:1.2)` weights change the encoder output.

use std::str::FromStr;

use ndarray::{Array3, ArrayView2, Axis, Zip};

use crate::{Error, Result};

/// How attention weights from the prompt act on the text encoder's hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emphasis {
    /// Multiply each token's hidden state by its weight, then restore the mean of the whole encoder call.
    #[default]
    Original,
    /// Multiply each token's hidden state by its weight; no mean restoration.
    NoNorm,
    /// The prompt is parsed (brackets disappear), but the weights are not applied.
    Ignore,
    /// The prompt is not parsed for attention: brackets stay literal text and every weight is 1.
    None,
}

impl Emphasis {
    /// Every mode, in A1111's option order.
    pub const ALL: [Emphasis; 4] = [Emphasis::None, Emphasis::Ignore, Emphasis::Original, Emphasis::NoNorm];

    /// A1111's option label (`opts.emphasis`, the infotext `Emphasis` value).
    pub fn label(self) -> &'static str {
        match self {
            Emphasis::Original => "Original",
            Emphasis::NoNorm => "No norm",
            Emphasis::Ignore => "Ignore",
            Emphasis::None => "None",
        }
    }

    /// Whether the prompt goes through `parse_prompt_attention` before tokenizing.
    pub(crate) fn parses_attention(self) -> bool {
        self != Emphasis::None
    }

    /// Applies the weights to `z` `[n, 77, D]` with `multipliers` `[n, 77]`; for `Original` the mean is taken
    /// over the whole tensor, i.e. over every text of the encoder call, as A1111 does.
    pub(crate) fn apply(self, z: &mut Array3<f32>, multipliers: ArrayView2<'_, f32>) {
        match self {
            Emphasis::None | Emphasis::Ignore => {}
            Emphasis::NoNorm => multiply_tokens(z, multipliers),
            Emphasis::Original => {
                let before = mean_f32(z);
                multiply_tokens(z, multipliers);
                let after = mean_f32(z);
                let ratio = before / after;
                // A zero mean after weighting would make A1111's rescale produce inf/NaN; keep the weighted
                // values instead of poisoning the whole conditioning.
                if ratio.is_finite() {
                    z.mapv_inplace(|v| v * ratio);
                }
            }
        }
    }
}

impl std::fmt::Display for Emphasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Emphasis {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Emphasis::ALL.into_iter().find(|mode| mode.label() == s).ok_or_else(|| Error::InvalidParameter {
            field: "emphasis",
            problem: format!(
                "unknown mode {s:?}; use one of {}",
                Emphasis::ALL.map(|mode| format!("{:?}", mode.label())).join(", ")
            ),
        })
    }
}

fn multiply_tokens(z: &mut Array3<f32>, multipliers: ArrayView2<'_, f32>) {
    Zip::from(z.lanes_mut(Axis(2))).and(multipliers).for_each(|mut token, &weight| token *= weight);
}

/// The mean in f64 rounded to f32 (torch accumulates float32 means pairwise; f64 keeps us within an ulp).
fn mean_f32(z: &Array3<f32>) -> f32 {
    let sum: f64 = z.iter().map(|&v| f64::from(v)).sum();
    (sum / z.len().max(1) as f64) as f32
}
