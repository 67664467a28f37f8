//! Reads a picture of the demo model's shapes world back: shape colour, background colour, position and
//! count, by the rules of `tools/demo/shapes.py` (`measure`), which the training log uses too.

use sdrt_processing::RgbImage;

/// The palette the demo model was trained on (`shapes.py` `COLOURS`).
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 50]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 30]),
    ("orange", [245, 130, 20]),
    ("purple", [140, 50, 190]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// What a picture shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The palette name most shape pixels are nearest to ("none" when nothing stands out).
    pub shape_colour: &'static str,
    /// Palette name nearest to the background.
    pub background: &'static str,
    /// "left", "right", "top", "bottom" or "centre", from the shapes' centroid.
    pub position: &'static str,
    /// Blobs of at least 1 % of the picture.
    pub count: usize,
    /// Mean colour of the shape pixels.
    pub shape_rgb: [f64; 3],
}

/// Pixels farther than this from the background colour (RGB distance) belong to a shape.
const SHAPE_DISTANCE: f64 = 80.0;

/// Palette name nearest to `rgb`.
pub fn nearest_colour(rgb: [f64; 3]) -> &'static str {
    let distance = |c: [u8; 3]| (0..3).map(|i| (f64::from(c[i]) - rgb[i]).powi(2)).sum::<f64>();
    COLOURS.iter().min_by(|a, b| distance(a.1).total_cmp(&distance(b.1))).map(|c| c.0).unwrap_or("none")
}

/// Background: the per-channel median of a 4-pixel frame; shape: pixels farther than 80 from it, its colour
/// the palette entry most of them are nearest to (soft outlines blend into the background, so the mean
/// drifts); position: the shape pixels' centroid; count: 4-connected blobs of at least 1 % of the picture.
pub fn measure(image: &RgbImage) -> Reading {
    let (w, h) = (image.width as usize, image.height as usize);
    let pixel = |x: usize, y: usize| -> [f64; 3] {
        let i = 3 * (y * w + x);
        [0, 1, 2].map(|c| f64::from(image.pixels[i + c]))
    };
    let frame: Vec<[f64; 3]> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| x < 4 || y < 4 || x + 4 >= w || y + 4 >= h)
        .map(|(x, y)| pixel(x, y))
        .collect();
    let background = [0, 1, 2].map(|c| median(frame.iter().map(|p| p[c]).collect()));
    let mask: Vec<bool> = (0..h * w)
        .map(|i| {
            let p = pixel(i % w, i / w);
            (0..3).map(|c| (p[c] - background[c]).powi(2)).sum::<f64>().sqrt() > SHAPE_DISTANCE
        })
        .collect();
    let on: Vec<usize> = (0..h * w).filter(|&i| mask[i]).collect();
    if on.is_empty() {
        return Reading {
            shape_colour: "none",
            background: nearest_colour(background),
            position: "none",
            count: 0,
            shape_rgb: background,
        };
    }
    let n = on.len() as f64;
    let mut shape_rgb = [0.0; 3];
    for &i in &on {
        let p = pixel(i % w, i / w);
        (0..3).for_each(|c| shape_rgb[c] += p[c] / n);
    }
    let shape_colour = dominant_colour(on.iter().map(|&i| pixel(i % w, i / w)));
    let cx = on.iter().map(|&i| (i % w) as f64).sum::<f64>() / n / w as f64;
    let cy = on.iter().map(|&i| (i / w) as f64).sum::<f64>() / n / h as f64;
    Reading {
        shape_colour,
        background: nearest_colour(background),
        position: position(cx, cy),
        count: blobs(&mask, w, h, h * w / 100),
        shape_rgb,
    }
}

/// The palette name most of `pixels` are nearest to; ties go to the earlier palette entry.
fn dominant_colour(pixels: impl Iterator<Item = [f64; 3]>) -> &'static str {
    let mut votes = [0usize; COLOURS.len()];
    for rgb in pixels {
        let name = nearest_colour(rgb);
        votes[COLOURS.iter().position(|c| c.0 == name).unwrap_or(0)] += 1;
    }
    let most = votes.iter().copied().max().unwrap_or(0);
    COLOURS[votes.iter().position(|&v| v == most).unwrap_or(0)].0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

fn position(cx: f64, cy: f64) -> &'static str {
    let (dx, dy) = (cx - 0.5, cy - 0.5);
    if dx.abs() < 0.12 && dy.abs() < 0.12 {
        "centre"
    } else if dx.abs() >= dy.abs() {
        if dx < 0.0 { "left" } else { "right" }
    } else if dy < 0.0 {
        "top"
    } else {
        "bottom"
    }
}

fn blobs(mask: &[bool], w: usize, h: usize, min_area: usize) -> usize {
    let mut seen = vec![false; mask.len()];
    let mut count = 0;
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let (mut stack, mut area) = (vec![start], 0);
        while let Some(i) = stack.pop() {
            area += 1;
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x + 1 < w).then(|| i + 1),
                (x > 0).then(|| i - 1),
                (y + 1 < h).then(|| i + w),
                (y > 0).then(|| i - w),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        count += usize::from(area >= min_area);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(size: u32, background: [u8; 3], discs: &[(f64, f64, f64, [u8; 3])]) -> RgbImage {
        let mut pixels = Vec::new();
        for y in 0..size {
            for x in 0..size {
                let inside = discs.iter().find(|d| (f64::from(x) - d.0).hypot(f64::from(y) - d.1) < d.2);
                pixels.extend(inside.map_or(background, |d| d.3));
            }
        }
        RgbImage { width: size, height: size, pixels }
    }

    #[test]
    fn a_drawn_scene_reads_back() {
        let one = measure(&picture(64, [30, 60, 220], &[(16.0, 32.0, 9.0, [220, 30, 30])]));
        assert_eq!((one.shape_colour, one.background, one.position, one.count), ("red", "blue", "left", 1));
        let two = picture(64, [245, 245, 245], &[(16.0, 16.0, 7.0, [20, 20, 20]), (46.0, 46.0, 7.0, [20, 20, 20])]);
        let two = measure(&two);
        assert_eq!((two.shape_colour, two.background, two.position, two.count), ("black", "white", "centre", 2));
        let empty = measure(&picture(64, [240, 220, 30], &[]));
        assert_eq!((empty.background, empty.count), ("yellow", 0));
    }

    #[test]
    fn the_shape_colour_is_the_one_most_pixels_have_not_their_mean() {
        let (red, yellow) = ([220.0, 30.0, 30.0], [240.0, 220.0, 30.0]);
        let pixels = [red, red, red, yellow, yellow];
        let mean = [0, 1, 2].map(|c| pixels.iter().map(|p| p[c]).sum::<f64>() / 5.0);
        assert_eq!(nearest_colour(mean), "orange", "the mean of red and yellow pixels is orange");
        assert_eq!(dominant_colour(pixels.into_iter()), "red");
    }
}
