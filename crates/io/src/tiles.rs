//! A1111's tiled upscaling (`images.split_grid` / `combine_grid`, `upscaler_utils.upscale_with_model`): the
//! image cut into overlapping tiles, each upscaled on its own, and the results joined with linear ramps over
//! the overlaps.

use image::{GrayImage, Luma, RgbImage};

/// One tile: its left edge, width and pixels.
type Tile = (i64, u32, RgbImage);

/// Tiles of one image: rows of `(y, height, [tile])`.
struct Grid {
    rows: Vec<(i64, u32, Vec<Tile>)>,
    tile_w: u32,
    tile_h: u32,
    image_w: u32,
    image_h: u32,
    overlap: u32,
}

/// `image.crop(box)`, with black outside the image as Pillow fills it.
fn crop(image: &RgbImage, x: i64, y: i64, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |i, j| {
        let (sx, sy) = (x + i64::from(i), y + i64::from(j));
        if sx < 0 || sy < 0 || sx >= i64::from(image.width()) || sy >= i64::from(image.height()) {
            image::Rgb([0, 0, 0])
        } else {
            *image.get_pixel(sx as u32, sy as u32)
        }
    })
}

fn split_grid(image: &RgbImage, tile: u32, overlap: u32) -> Grid {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let (t, o) = (i64::from(tile), i64::from(overlap));
    let count = |side: i64| ((side - o) as f64 / (t - o) as f64).ceil().max(1.0) as i64;
    let (cols, rows) = (count(w), count(h));
    let step = |side: i64, n: i64| if n > 1 { (side - t) as f64 / (n - 1) as f64 } else { 0.0 };
    let (dx, dy) = (step(w, cols), step(h, rows));
    let place = |i: i64, d: f64, side: i64| {
        let at = (i as f64 * d) as i64;
        if at + t >= side { side - t } else { at }
    };
    let rows = (0..rows)
        .map(|row| {
            let y = place(row, dy, h);
            let tiles = (0..cols).map(|col| {
                let x = place(col, dx, w);
                (x, tile, crop(image, x, y, tile, tile))
            });
            (y, tile, tiles.collect())
        })
        .collect();
    Grid { rows, tile_w: tile, tile_h: tile, image_w: image.width(), image_h: image.height(), overlap }
}

/// Pillow's `paste(source, (x, y), mask)` with an L mask: dst = (dst·(255−m) + src·m)/255, rounded.
fn paste(destination: &mut RgbImage, source: &RgbImage, x: i64, y: i64, mask: Option<&GrayImage>) {
    for (i, j, pixel) in source.enumerate_pixels() {
        let (dx, dy) = (x + i64::from(i), y + i64::from(j));
        if dx < 0 || dy < 0 || dx >= i64::from(destination.width()) || dy >= i64::from(destination.height()) {
            continue;
        }
        let out = destination.get_pixel_mut(dx as u32, dy as u32);
        match mask {
            None => *out = *pixel,
            Some(mask) => {
                let m = u32::from(mask.get_pixel(i, j)[0]);
                for c in 0..3 {
                    let t = u32::from(out[c]) * (255 - m) + u32::from(pixel[c]) * m + 128;
                    out[c] = (((t >> 8) + t) >> 8) as u8;
                }
            }
        }
    }
}

fn combine_grid(grid: &Grid) -> RgbImage {
    let overlap = grid.overlap;
    // r·255/overlap in float32, truncated to u8.
    let ramp = |r: u32| Luma([(r as f32 * 255.0 / overlap as f32) as u8]);
    let mask_w = GrayImage::from_fn(overlap, grid.tile_h, |x, _| ramp(x));
    let mask_h = GrayImage::from_fn(grid.image_w, overlap, |_, y| ramp(y));
    let mut combined = RgbImage::new(grid.image_w, grid.image_h);
    for (y, h, tiles) in &grid.rows {
        let mut row = RgbImage::new(grid.image_w, *h);
        for (x, w, tile) in tiles {
            if *x == 0 {
                paste(&mut row, tile, 0, 0, None);
                continue;
            }
            paste(&mut row, &crop(tile, 0, 0, overlap, *h), *x, 0, Some(&mask_w));
            paste(&mut row, &crop(tile, i64::from(overlap), 0, w - overlap, *h), x + i64::from(overlap), 0, None);
        }
        if *y == 0 {
            paste(&mut combined, &row, 0, 0, None);
            continue;
        }
        paste(&mut combined, &crop(&row, 0, 0, row.width(), overlap), 0, *y, Some(&mask_h));
        let rest = crop(&row, 0, i64::from(overlap), row.width(), h - overlap);
        paste(&mut combined, &rest, 0, y + i64::from(overlap), None);
    }
    combined
}

/// A1111's `upscale_with_model`: `upscale` applied to `tile`×`tile` pieces overlapping by `overlap` pixels
/// (the whole image at once when `tile` is 0), the pieces joined back at the model's scale.
pub fn upscale_tiled<E>(
    image: &RgbImage,
    tile: u32,
    overlap: u32,
    mut upscale: impl FnMut(&RgbImage) -> Result<RgbImage, E>,
) -> Result<RgbImage, E> {
    if tile == 0 || tile <= overlap {
        return upscale(image);
    }
    let grid = split_grid(image, tile, overlap);
    let mut scale = 1u32;
    let mut rows = Vec::with_capacity(grid.rows.len());
    for (y, h, tiles) in &grid.rows {
        let mut upscaled = Vec::with_capacity(tiles.len());
        for (x, w, piece) in tiles {
            let out = upscale(piece)?;
            scale = (out.width() / piece.width()).max(1);
            upscaled.push((x * i64::from(scale), w * scale, out));
        }
        rows.push((y * i64::from(scale), h * scale, upscaled));
    }
    Ok(combine_grid(&Grid {
        rows,
        tile_w: grid.tile_w * scale,
        tile_h: grid.tile_h * scale,
        image_w: grid.image_w * scale,
        image_h: grid.image_h * scale,
        overlap: grid.overlap * scale,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_and_the_last_one_ends_at_the_edge() {
        let image = RgbImage::from_fn(64, 40, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let grid = split_grid(&image, 32, 8);
        let xs: Vec<i64> = grid.rows[0].2.iter().map(|(x, _, _)| *x).collect();
        assert_eq!(xs, [0, 16, 32]);
        let ys: Vec<i64> = grid.rows.iter().map(|(y, _, _)| *y).collect();
        assert_eq!(ys, [0, 8]);
    }

    #[test]
    fn an_identity_upscaler_gives_back_the_image() {
        let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 77]));
        let out = upscale_tiled(&image, 32, 8, |tile| Ok::<_, ()>(tile.clone())).unwrap();
        assert_eq!(out, image, "blending equal overlaps changes nothing");
    }
}
