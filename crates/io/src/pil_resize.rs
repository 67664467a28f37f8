//! PIL's `Image.resize` for 8-bit RGB, bit for bit: LANCZOS (and the other convolution filters) as Pillow's
//! `Resample.c` computes them (double-precision taps, 22-bit fixed-point coefficients, horizontal pass then
//! vertical, each rounded to 8 bits), and NEAREST as its affine transform picks pixels. A1111 resizes init
//! images and hires-fix images with these, so matching them keeps pixels equal, not just close.

use image::RgbImage;

/// A PIL resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.NEAREST`.
    Nearest,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (a = −0.5, support 2).
    Bicubic,
    /// `Image.LANCZOS` (Lanczos-3).
    Lanczos,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            Self::Nearest => 0.0,
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Nearest => 0.0,
            Self::Bilinear => (1.0 - x.abs()).max(0.0),
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// `image.resize((width, height), resample=filter)` as Pillow computes it.
pub fn pil_resize(image: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        return RgbImage::new(width, height);
    }
    if filter == PilFilter::Nearest {
        return nearest(image, width, height);
    }
    let horizontal = if image.width() != width {
        let taps = fixed_point_taps(image.width(), width, filter);
        resample(width, image.height(), |out, x, y, c| taps[x as usize].apply(|i| image.get_pixel(i, y)[c], out))
    } else {
        image.clone()
    };
    if horizontal.height() == height {
        return horizontal;
    }
    let taps = fixed_point_taps(horizontal.height(), height, filter);
    resample(width, height, |out, x, y, c| taps[y as usize].apply(|i| horizontal.get_pixel(x, i)[c], out))
}

fn resample(width: u32, height: u32, value: impl Fn(&mut u8, u32, u32, usize)) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        for c in 0..3 {
            value(&mut pixel[c], x, y, c);
        }
    }
    out
}

/// The fixed-point taps of one output index: the first source index and one coefficient per source.
struct Taps {
    first: u32,
    coefficients: Vec<i32>,
}

impl Taps {
    fn apply(&self, source: impl Fn(u32) -> u8, out: &mut u8) {
        let mut sum: i64 = 1 << (PRECISION_BITS - 1);
        for (k, &coefficient) in self.coefficients.iter().enumerate() {
            sum += i64::from(source(self.first + k as u32)) * i64::from(coefficient);
        }
        *out = clip8(sum);
    }
}

fn clip8(sum: i64) -> u8 {
    if sum >= 1 << (PRECISION_BITS + 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `input` → `output` samples.
fn fixed_point_taps(input: u32, output: u32, filter: PilFilter) -> Vec<Taps> {
    let scale = f64::from(input as f32) / f64::from(output);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..output)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            let inv = 1.0 / filterscale;
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(input));
            let weights: Vec<f64> = (first..end).map(|x| filter.weight((x as f64 - center + 0.5) * inv)).collect();
            let total: f64 = weights.iter().sum();
            let coefficients = weights
                .iter()
                .map(|&w| {
                    let w = if total == 0.0 { w } else { w / total };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 }
                })
                .collect();
            Taps { first: first as u32, coefficients }
        })
        .collect()
}

/// Pillow's NEAREST resize: an affine transform whose source coordinates advance by repeated addition from
/// the first pixel centre, truncated to integers.
fn nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let positions = |input: u32, output: u32| -> Vec<u32> {
        let step = f64::from(input) / f64::from(output);
        let mut at = step * 0.5;
        (0..output)
            .map(|_| {
                let index = (at as u32).min(input - 1);
                at += step;
                index
            })
            .collect()
    };
    let (xs, ys) = (positions(image.width(), width), positions(image.height(), height));
    RgbImage::from_fn(width, height, |x, y| *image.get_pixel(xs[x as usize], ys[y as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant_under_every_filter() {
        let image = RgbImage::from_pixel(5, 3, image::Rgb([10, 200, 77]));
        for filter in [PilFilter::Nearest, PilFilter::Bilinear, PilFilter::Bicubic, PilFilter::Lanczos] {
            let out = pil_resize(&image, 11, 7, filter);
            assert!(out.pixels().all(|p| *p == image::Rgb([10, 200, 77])), "{filter:?}");
        }
    }

    #[test]
    fn nearest_doubling_repeats_pixels() {
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 100, 0, 0]));
        let out = pil_resize(&image, 4, 1, PilFilter::Nearest);
        let reds: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(reds, [0, 0, 100, 100]);
    }

    #[test]
    fn same_size_is_a_copy() {
        let image = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 9]));
        assert_eq!(pil_resize(&image, 3, 2, PilFilter::Lanczos), image);
    }
}
