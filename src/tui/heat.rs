//! Drawing an image with its patch grid and an attention heat map: in terminal cells
//! (true-colour half blocks, two pixels per cell) and as a PNG for papers.

use image::{Rgb, RgbImage};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

/// The heat colour of a weight in `[0, 1]`: dark blue → red → yellow.
pub fn heat_colour(w: f32) -> [u8; 3] {
    let w = w.clamp(0.0, 1.0);
    let stops: [(f32, [f32; 3]); 4] = [
        (0.0, [20.0, 20.0, 90.0]),
        (0.4, [180.0, 30.0, 60.0]),
        (0.75, [250.0, 120.0, 20.0]),
        (1.0, [255.0, 240.0, 80.0]),
    ];
    for pair in stops.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if w <= b {
            let t = (w - a) / (b - a);
            return [0, 1, 2].map(|i| (ca[i] + t * (cb[i] - ca[i])).round() as u8);
        }
    }
    [255, 240, 80]
}

/// Weights scaled so the largest is 1 (all zero stays zero).
pub fn normalised(weights: &[f32]) -> Vec<f32> {
    let max = weights.iter().copied().fold(0f32, f32::max);
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0; weights.len()];
    }
    weights.iter().map(|w| w / max).collect()
}

/// An image, its patch grid and an optional per-patch heat map.
pub struct Overlay<'a> {
    /// The pixels.
    pub pixels: &'a RgbImage,
    /// Patch side in pixels (0: no grid).
    pub patch: usize,
    /// Normalised weight per patch (`rows x cols`, row-major), if any.
    pub heat: Option<&'a [f32]>,
    /// How strongly the heat colour covers the image (0..1).
    pub alpha: f32,
}

impl Overlay<'_> {
    /// The colour of source pixel `(x, y)`: image, heat blended in, grid lines darkened.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let Rgb(mut c) = *self.pixels.get_pixel(x, y);
        if self.patch > 0 {
            let cols = (self.pixels.width() as usize).div_ceil(self.patch);
            let (pc, pr) = (x as usize / self.patch, y as usize / self.patch);
            if let Some(w) = self.heat.and_then(|h| h.get(pr * cols + pc)) {
                let hc = heat_colour(*w);
                let a = self.alpha * w.clamp(0.0, 1.0);
                c = [0, 1, 2].map(|i| (c[i] as f32 * (1.0 - a) + hc[i] as f32 * a).round() as u8);
            }
        }
        c
    }

    /// The image scaled to `w x h` pixels (nearest neighbour) with grid lines.
    pub fn render_rgb(&self, w: u32, h: u32) -> RgbImage {
        let (iw, ih) = (self.pixels.width(), self.pixels.height());
        let (sx, sy) = (iw as f32 / w as f32, ih as f32 / h as f32);
        RgbImage::from_fn(w, h, |x, y| {
            let (ix, iy) = (
                ((x as f32 * sx) as u32).min(iw - 1),
                ((y as f32 * sy) as u32).min(ih - 1),
            );
            let mut c = self.pixel(ix, iy);
            if self.patch > 0 && self.on_grid_cell(x, y, sx, sy) {
                c = c.map(|v| (v as f32 * 0.45) as u8 + 40);
            }
            Rgb(c)
        })
    }

    /// Grid lines are one output pixel wide: only the first output pixel of a boundary draws it.
    fn on_grid_cell(&self, x: u32, y: u32, sx: f32, sy: f32) -> bool {
        let p = self.patch as f32;
        let first = |v: u32, s: f32| {
            let src = v as f32 * s;
            let prev = (v as f32 - 1.0).max(0.0) * s;
            v > 0 && (src / p).floor() != (prev / p).floor()
        };
        first(x, sx) || first(y, sy)
    }

    /// The size in cells that fits `area` and keeps the aspect ratio (a cell is two pixels high).
    pub fn fit(&self, area: Rect) -> (u16, u16) {
        let (iw, ih) = (self.pixels.width() as f32, self.pixels.height() as f32);
        let (aw, ah) = (area.width as f32, area.height as f32 * 2.0);
        let s = (aw / iw).min(ah / ih);
        (
            ((iw * s).floor() as u16).clamp(1, area.width.max(1)),
            (((ih * s) / 2.0).floor() as u16).clamp(1, area.height.max(1)),
        )
    }
}

impl Widget for Overlay<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 || area.height == 0 || self.pixels.width() == 0 {
            return;
        }
        let (cw, ch) = self.fit(area);
        let img = self.render_rgb(cw as u32, ch as u32 * 2);
        for cy in 0..ch {
            for cx in 0..cw {
                let top = img.get_pixel(cx as u32, cy as u32 * 2).0;
                let bot = img.get_pixel(cx as u32, cy as u32 * 2 + 1).0;
                if let Some(cell) = buf.cell_mut((area.x + cx, area.y + cy)) {
                    cell.set_symbol("▀")
                        .set_fg(Color::Rgb(top[0], top[1], top[2]))
                        .set_bg(Color::Rgb(bot[0], bot[1], bot[2]));
                }
            }
        }
    }
}

/// A one-row strip of weights (audio slots, or image slots of a resampling connector).
pub struct Strip<'a> {
    /// Normalised weights.
    pub weights: &'a [f32],
}

impl Widget for Strip<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let n = self.weights.len();
        if n == 0 || area.width == 0 || area.height == 0 {
            return;
        }
        for cx in 0..area.width {
            let i = (cx as usize * n / area.width as usize).min(n - 1);
            let c = heat_colour(self.weights[i]);
            if let Some(cell) = buf.cell_mut((area.x + cx, area.y)) {
                cell.set_symbol("█").set_fg(Color::Rgb(c[0], c[1], c[2]));
            }
        }
    }
}

/// The overlay as a PNG-ready image at least `min_side` pixels on its longer side.
pub fn overlay_png(o: &Overlay, min_side: u32) -> RgbImage {
    let (w, h) = (o.pixels.width().max(1), o.pixels.height().max(1));
    let s = (min_side as f32 / w.max(h) as f32).ceil().max(1.0) as u32;
    o.render_rgb(w * s, h * s)
}
