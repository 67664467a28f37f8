//! Image grids as A1111 v1.10's `image_grid`: rows = round(√n) unless given, cells the size of the largest
//! image, images pasted at their cell's top-left corner on a white background.

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// A1111's `grid_background_color` default.
pub const GRID_BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// Rows and columns for `count` images; `rows` of `None` or 0 means round(√count).
pub fn grid_shape(count: usize, rows: Option<u32>) -> (u32, u32) {
    let rows = match rows {
        Some(rows) if rows > 0 => rows as usize,
        _ => ((count as f64).sqrt().round() as usize).max(1),
    };
    let cols = count.div_ceil(rows).max(1);
    (rows as u32, cols as u32)
}

/// Lays `images` out row by row in a grid.
pub fn image_grid(images: &[RgbImage], rows: Option<u32>) -> Result<RgbImage> {
    let _span = tracing::info_span!("io::grid", count = images.len()).entered();
    if images.is_empty() {
        return Err(Error::Invalid { field: "images", message: "a grid needs at least one image".into() });
    }
    let (rows, cols) = grid_shape(images.len(), rows);
    let cell_w = images.iter().map(RgbImage::width).max().unwrap_or(0);
    let cell_h = images.iter().map(RgbImage::height).max().unwrap_or(0);
    let mut grid = RgbImage::from_pixel(cols * cell_w, rows * cell_h, GRID_BACKGROUND);
    for (index, image) in images.iter().enumerate() {
        let index = index as u32;
        let (x, y) = ((index % cols) * cell_w, (index / cols) * cell_h);
        image::imageops::replace(&mut grid, image, i64::from(x), i64::from(y));
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_follows_rounded_square_root() {
        assert_eq!(grid_shape(1, None), (1, 1));
        assert_eq!(grid_shape(3, None), (2, 2));
        assert_eq!(grid_shape(5, None), (2, 3));
        assert_eq!(grid_shape(7, None), (3, 3));
        assert_eq!(grid_shape(6, Some(1)), (1, 6));
    }

    #[test]
    fn cells_take_the_largest_size_and_gaps_are_white() {
        let red = RgbImage::from_pixel(4, 2, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(2, 3, Rgb([0, 0, 255]));
        let grid = image_grid(&[red, blue.clone(), blue], None).unwrap();
        assert_eq!(grid.dimensions(), (8, 6));
        assert_eq!(grid.get_pixel(3, 1), &Rgb([255, 0, 0]));
        assert_eq!(grid.get_pixel(3, 2), &GRID_BACKGROUND);
        assert_eq!(grid.get_pixel(4, 2), &Rgb([0, 0, 255]));
        assert_eq!(grid.get_pixel(6, 0), &GRID_BACKGROUND);
        assert_eq!(grid.get_pixel(1, 5), &Rgb([0, 0, 255]));
        assert_eq!(grid.get_pixel(5, 5), &GRID_BACKGROUND);
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(image_grid(&[], None).is_err());
    }
}
