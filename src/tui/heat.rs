//! Drawing an image with its patch grid and an attention heat map: in terminal cells
//! (true-colour half blocks, two pixels per cell) and as a PNG for papers, with a colour bar
//! and a caption.

use anyhow::anyhow;
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

/// How much of a pixel's brightness the veil takes away at weight 0 (none at weight 1).
pub const VEIL: f32 = 0.75;

/// The colour of weight `w` in `[0, 1]`: a grey ramp, dark grey (64) at 0 to white at 1 —
/// what a white patch looks like under the veil at that weight.
///
/// Why it cannot be confused with a scene colour: the eight object colours
/// (`mmlab_datasets::vocab::Colour::ALL`: red, orange, yellow, green, cyan, blue, purple,
/// pink) all have a chroma of at least 128 (pink: 248 − 120), and this map has none (its
/// three channels are equal), so its colour bar, audio strip and grid figures are never read
/// as a hue. Over the image the map is drawn as a veil (see [`veil`]) that adds no hue: a
/// coloured pixel is only darkened, all three channels by one factor, so a red shape stays
/// red and a yellow one yellow wherever the token looks; the old red→yellow map painted
/// unattended shapes orange and attended ones yellow.
pub fn heat_colour(w: f32) -> [u8; 3] {
    let w = w.clamp(0.0, 1.0);
    let g = (255.0 * (1.0 - VEIL * (1.0 - w))).round() as u8;
    [g, g, g]
}

/// A pixel under the veil of weight `w` with strength `alpha`: darkened by `alpha · (1 − w)`,
/// all three channels by one factor, so its hue never changes. (On the scenes' black
/// background there is little left to darken: there the weights are read from the bar's
/// scale and, in a wide terminal, the per-patch figures.)
pub fn veil(c: [u8; 3], w: f32, alpha: f32) -> [u8; 3] {
    let k = 1.0 - (alpha * (1.0 - w.clamp(0.0, 1.0))).clamp(0.0, 1.0);
    c.map(|v| (v as f32 * k).round() as u8)
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
    /// How strongly the veil covers a patch of weight 0 (0..1; see [`veil`]).
    pub alpha: f32,
}

impl Overlay<'_> {
    /// The colour of source pixel `(x, y)`: the image under the veil of its patch's weight.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let Rgb(mut c) = *self.pixels.get_pixel(x, y);
        if self.patch > 0 {
            let cols = (self.pixels.width() as usize).div_ceil(self.patch);
            let (pc, pr) = (x as usize / self.patch, y as usize / self.patch);
            if let Some(w) = self.heat.and_then(|h| h.get(pr * cols + pc)) {
                c = veil(c, *w, self.alpha);
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

/// A one-row colour bar with its scale: `0%`, the map from weight 0 to 1, and the largest
/// weight (the one drawn as 1) in percent.
pub struct ColourBar {
    /// The largest raw weight (a share of the token's attention, 0..1), drawn at the bar's end.
    pub max: f32,
}

impl ColourBar {
    /// The labels at the bar's two ends.
    pub fn labels(&self) -> (String, String) {
        ("0%".into(), format!("{:.1}%", self.max * 100.0))
    }
}

impl Widget for ColourBar {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let (lo, hi) = self.labels();
        let (lo, hi) = (format!(" {lo} "), format!(" {hi}"));
        let bar_w = area
            .width
            .saturating_sub((lo.chars().count() + hi.chars().count()) as u16);
        if area.height == 0 || bar_w < 2 {
            return;
        }
        buf.set_string(area.x, area.y, &lo, ratatui::style::Style::new());
        let x0 = area.x + lo.chars().count() as u16;
        for i in 0..bar_w {
            let c = heat_colour(i as f32 / (bar_w - 1) as f32);
            if let Some(cell) = buf.cell_mut((x0 + i, area.y)) {
                cell.set_symbol("█").set_fg(Color::Rgb(c[0], c[1], c[2]));
            }
        }
        buf.set_string(x0 + bar_w, area.y, &hi, ratatui::style::Style::new());
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the figure's text: {e:?}")
}

/// Where the parts of a figure made by [`figure_png`] lie, in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FigureLayout {
    /// The overlay's top-left corner and size `(x, y, w, h)`.
    pub image: (u32, u32, u32, u32),
    /// The colour bar's inside (without its frame) `(x, y, w, h)`; weight 0 at its left; 0 wide
    /// and high when the overlay has no heat map.
    pub bar: (u32, u32, u32, u32),
    /// The font size of the labels and caption.
    pub font: u32,
}

/// The overlay as a figure for papers: the image at least `min_side` pixels on its longer
/// side, under it a colour bar from weight 0 to `max` (the largest raw weight, labelled in
/// percent, `scale` naming whose attention it is) and the caption's lines, in the bundled DejaVu Sans at about 1/26 of the width
/// (18 px at 480: about 9 pt when the figure is printed one column, 3.3 in, wide). An overlay
/// without a heat map gets the caption and no bar.
pub fn figure_png(
    o: &Overlay,
    min_side: u32,
    max: f32,
    scale: &str,
    caption: &[String],
) -> anyhow::Result<(RgbImage, FigureLayout)> {
    let img = overlay_png(o, min_side);
    let (iw, ih) = (img.width(), img.height());
    let w = iw.max(360);
    let font = (w / 26).max(14);
    let m = font / 2 + 2;
    let line = font * 13 / 10;
    // Without a heat map (a design with image slots, not patches) there is no scale to show.
    let has_bar = o.heat.is_some();
    let bar = if has_bar {
        (m + 1, ih + m + 1, w - 2 * m - 2, font)
    } else {
        (m + 1, ih, 0, 0)
    };
    let caption_top = if has_bar {
        bar.1 + bar.3 + 1 + m / 2 + line + m / 2
    } else {
        ih + m
    };
    let h = caption_top + line * caption.len() as u32 + m;
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let x_img = (w - iw) / 2;
    image::imageops::replace(&mut canvas, &img, x_img as i64, 0);
    // The bar, framed in black.
    for y in (bar.1 - 1..bar.1 + bar.3 + 1).filter(|_| has_bar) {
        for x in bar.0 - 1..bar.0 + bar.2 + 1 {
            let inside = (bar.0..bar.0 + bar.2).contains(&x) && (bar.1..bar.1 + bar.3).contains(&y);
            let c = if inside {
                heat_colour((x - bar.0) as f32 / (bar.2 - 1).max(1) as f32)
            } else {
                [0, 0, 0]
            };
            canvas.put_pixel(x, y, Rgb(c));
        }
    }
    // The bundled DejaVu Sans, registered as "sans-serif".
    crate::ablate::plot::register_font();
    let mut raw = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut raw, (w, h)).into_drawing_area();
        let style = TextStyle::from(("sans-serif", font).into_font()).color(&BLACK);
        let ty = (bar.1 + bar.3 + 1 + m / 2) as i32;
        if has_bar {
            let (lo, hi) = ColourBar { max }.labels();
            root.draw_text(&lo, &style, (bar.0 as i32, ty))
                .map_err(plot_err)?;
            let right = style.pos(Pos::new(HPos::Right, VPos::Top));
            root.draw_text(&hi, &right, ((bar.0 + bar.2) as i32, ty))
                .map_err(plot_err)?;
            let mid = scale;
            let (mw, _) = root.estimate_text_size(mid, &style).map_err(plot_err)?;
            let (lw, _) = root.estimate_text_size(&lo, &style).map_err(plot_err)?;
            let (hw, _) = root.estimate_text_size(&hi, &style).map_err(plot_err)?;
            if lw + hw + mw + 2 * font < bar.2 {
                let centre = style.pos(Pos::new(HPos::Center, VPos::Top));
                root.draw_text(mid, &centre, ((bar.0 + bar.2 / 2) as i32, ty))
                    .map_err(plot_err)?;
            }
        }
        for (i, text) in caption.iter().enumerate() {
            // Shorten a line that does not fit, ending it with an ellipsis.
            let mut t = text.clone();
            while root.estimate_text_size(&t, &style).map_err(plot_err)?.0 > w - 2 * m
                && t.chars().count() > 1
            {
                let n = t.chars().count();
                t = format!(
                    "{}…",
                    t.chars().take(n.saturating_sub(2)).collect::<String>()
                );
            }
            let y = (caption_top + line * i as u32) as i32;
            root.draw_text(&t, &style, (m as i32, y))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    let canvas = RgbImage::from_raw(w, h, raw).ok_or_else(|| anyhow!("figure buffer size"))?;
    Ok((
        canvas,
        FigureLayout {
            image: (x_img, 0, iw, ih),
            bar,
            font,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmlab_datasets::vocab::Colour;

    fn chroma(c: [u8; 3]) -> u8 {
        c.iter().max().unwrap() - c.iter().min().unwrap()
    }

    #[test]
    fn the_map_has_no_hue_and_the_veil_keeps_each_scene_colours_hue() {
        for c in Colour::ALL {
            assert!(chroma(c.rgb()) >= 128, "{c:?} {:?}", c.rgb());
        }
        let mut last = 0;
        for i in 0..=100 {
            let m = heat_colour(i as f32 / 100.0);
            assert_eq!(chroma(m), 0, "weight {i}%: {m:?}");
            assert!(m[0] >= last, "the map brightens with the weight");
            last = m[0];
        }
        assert_eq!((heat_colour(0.0)[0], heat_colour(1.0)[0]), (64, 255));
        // Under the veil a scene colour keeps its channel ratios: it is darker, never another
        // hue; its nearest scene colour (by direction in RGB) is still itself.
        let dir = |c: [u8; 3]| {
            let n = c.iter().map(|&v| (v as f32).powi(2)).sum::<f32>().sqrt();
            c.map(|v| v as f32 / n)
        };
        for c in Colour::ALL {
            for w in [0.0, 0.3, 0.7, 1.0] {
                let v = veil(c.rgb(), w, VEIL);
                let dv = dir(v);
                let nearest = Colour::ALL
                    .into_iter()
                    .max_by(|a, b| {
                        let cos = |x: Colour| (0..3).map(|i| dir(x.rgb())[i] * dv[i]).sum::<f32>();
                        cos(*a).total_cmp(&cos(*b))
                    })
                    .unwrap();
                assert_eq!(nearest, c, "{c:?} under the veil at {w}: {v:?}");
            }
            assert_eq!(veil(c.rgb(), 1.0, VEIL), c.rgb(), "weight 1 is not veiled");
        }
    }

    #[test]
    fn the_figure_has_a_colour_bar_and_a_caption_under_the_image() {
        let pixels = RgbImage::from_fn(48, 32, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 200]));
        let heat: Vec<f32> = (0..12).map(|i| i as f32 / 11.0).collect();
        let o = Overlay {
            pixels: &pixels,
            patch: 12,
            heat: Some(&heat),
            alpha: VEIL,
        };
        let caption = vec![
            "model · layer 1 of 2 · head: mean of 2".to_string(),
            "token 20 \"<boa>\"".to_string(),
            "prompt: Is there a red circle? ".repeat(10),
        ];
        let (png, l) =
            figure_png(&o, 480, 0.123, "share of the token's attention", &caption).expect("figure");
        let plain = overlay_png(&o, 480);
        assert_eq!((l.image.2, l.image.3), plain.dimensions());
        let (x0, y0, w, h) = l.bar;
        assert!(y0 > l.image.3, "the bar is under the image");
        assert!(w >= png.width() * 3 / 4, "the bar spans the figure");
        assert!(
            png.height() >= l.image.3 + h + 3 * l.font * 4 / 3,
            "room for the scale and three caption lines: {} vs image {}",
            png.height(),
            l.image.3
        );
        // The image is the overlay, unchanged.
        for (x, y, p) in plain.enumerate_pixels() {
            assert_eq!(png.get_pixel(l.image.0 + x, y), p);
        }
        // The bar runs through the map from weight 0 to 1, left to right, on every row.
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let t = (x - x0) as f32 / (w - 1) as f32;
                assert_eq!(png.get_pixel(x, y).0, heat_colour(t), "bar pixel {x},{y}");
            }
        }
        // Text: dark pixels in the band of the scale's labels and of each caption line.
        let dark_rows = (y0 + h + 1..png.height())
            .filter(|&y| (0..png.width()).any(|x| png.get_pixel(x, y).0[0] < 100))
            .count() as u32;
        assert!(
            dark_rows >= 4 * l.font / 2,
            "four lines of text ({dark_rows} rows with ink)"
        );
        // The long prompt line is shortened to fit: no ink at the right margin.
        let right = png.width() - 2;
        assert!((y0 + h + 1..png.height()).all(|y| png.get_pixel(right, y).0 == [255; 3]));
        // No heat map (image slots, not patches): no bar, the caption right under the image.
        let bare = Overlay { heat: None, ..o };
        let (png2, l2) = figure_png(&bare, 480, 0.0, "", &caption).expect("figure");
        assert_eq!((l2.bar.2, l2.bar.3), (0, 0));
        assert!(png2.height() < png.height());
        let framed = |p: &RgbImage| {
            (l.image.3..p.height()).any(|y| {
                (0..p.width())
                    .filter(|&x| p.get_pixel(x, y).0 == [0; 3])
                    .count()
                    > 200
            })
        };
        assert!(
            framed(&png) && !framed(&png2),
            "a bar frame only with a heat map"
        );
    }
}
