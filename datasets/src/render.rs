//! Anti-aliased rendering of scenes with `tiny-skia`.

use image::RgbImage;
use tiny_skia::{
    Color, FillRule, GradientStop, LinearGradient, Mask, Paint, Path, PathBuilder, Pixmap, Point,
    Rect, SpreadMode, Transform,
};

use crate::scene::{Background, BackgroundStyle, Scene, SceneObject, NOISE_AMPLITUDE};
use crate::vocab::Shape;

/// Builds the outline of `shape` inside the square box centred at (cx, cy) with side `extent`.
pub(crate) fn shape_path(shape: Shape, cx: f32, cy: f32, extent: f32) -> Option<(Path, FillRule)> {
    let r = extent / 2.0;
    let p = |x: f32, y: f32| (cx + x * r, cy + y * r);
    let mut pb = PathBuilder::new();
    let polygon = |pb: &mut PathBuilder, pts: &[(f32, f32)]| {
        for (i, &(x, y)) in pts.iter().enumerate() {
            let (px, py) = p(x, y);
            if i == 0 {
                pb.move_to(px, py);
            } else {
                pb.line_to(px, py);
            }
        }
        pb.close();
    };
    let mut rule = FillRule::Winding;
    match shape {
        Shape::Circle => pb.push_circle(cx, cy, r),
        Shape::Ring => {
            pb.push_circle(cx, cy, r);
            pb.push_circle(cx, cy, r * 0.5);
            rule = FillRule::EvenOdd;
        }
        Shape::Square => polygon(
            &mut pb,
            &[(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
        ),
        Shape::Frame => {
            polygon(
                &mut pb,
                &[(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
            );
            polygon(
                &mut pb,
                &[(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
            );
            rule = FillRule::EvenOdd;
        }
        Shape::Triangle => polygon(&mut pb, &[(0.0, -1.0), (1.0, 0.9), (-1.0, 0.9)]),
        Shape::Diamond => polygon(&mut pb, &[(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]),
        Shape::Plus => polygon(&mut pb, &plus_points(1.0, 0.32, 0.0)),
        Shape::Cross => polygon(&mut pb, &plus_points(1.1, 0.3, std::f32::consts::FRAC_PI_4)),
        Shape::Star => {
            let pts: Vec<(f32, f32)> = (0..10)
                .map(|i| {
                    let rad = if i % 2 == 0 { 1.0 } else { 0.45 };
                    let a = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 5.0;
                    (rad * a.cos(), rad * a.sin() + 0.1)
                })
                .collect();
            polygon(&mut pb, &pts)
        }
        Shape::Hexagon => {
            let pts: Vec<(f32, f32)> = (0..6)
                .map(|i| {
                    let a = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 3.0;
                    (a.cos(), a.sin())
                })
                .collect();
            polygon(&mut pb, &pts)
        }
        Shape::Heart => {
            let (x0, y0) = p(0.0, 1.0);
            pb.move_to(x0, y0);
            let (a, b, c) = (p(-1.25, 0.25), p(-1.05, -1.15), p(0.0, -0.45));
            pb.cubic_to(a.0, a.1, b.0, b.1, c.0, c.1);
            let (a, b, c) = (p(1.05, -1.15), p(1.25, 0.25), p(0.0, 1.0));
            pb.cubic_to(a.0, a.1, b.0, b.1, c.0, c.1);
            pb.close();
        }
        Shape::Crescent => polygon(&mut pb, &crescent_points()),
        Shape::Bar => polygon(
            &mut pb,
            &[(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)],
        ),
        Shape::Arrow => polygon(
            &mut pb,
            &[
                (-1.0, -0.28),
                (0.1, -0.28),
                (0.1, -0.75),
                (1.0, 0.0),
                (0.1, 0.75),
                (0.1, 0.28),
                (-1.0, 0.28),
            ],
        ),
    }
    pb.finish().map(|path| (path, rule))
}

fn plus_points(len: f32, half: f32, angle: f32) -> Vec<(f32, f32)> {
    let base = [
        (-half, -len),
        (half, -len),
        (half, -half),
        (len, -half),
        (len, half),
        (half, half),
        (half, len),
        (-half, len),
        (-half, half),
        (-len, half),
        (-len, -half),
        (-half, -half),
    ];
    let (s, c) = angle.sin_cos();
    base.iter()
        .map(|&(x, y)| (x * c - y * s, x * s + y * c))
        .collect()
}

/// The crescent: the unit disc minus a disc of radius 0.85 centred at (0.5, 0).
fn crescent_points() -> Vec<(f32, f32)> {
    let (d, r) = (0.5f32, 0.85f32);
    let ix = (d * d + 1.0 - r * r) / (2.0 * d);
    let iy = (1.0 - ix * ix).max(0.0).sqrt();
    let outer_a = iy.atan2(ix); // upper intersection angle on the unit circle
    let inner_a = iy.atan2(ix - d); // same point seen from the inner centre
    let steps = 16;
    let mut pts = Vec::with_capacity(2 * steps + 2);
    // Outer arc: from the upper intersection, anticlockwise round the left, to the lower one.
    for i in 0..=steps {
        let a = outer_a + (std::f32::consts::TAU - 2.0 * outer_a) * i as f32 / steps as f32;
        pts.push((a.cos(), -a.sin()));
    }
    // Inner arc back: from the lower intersection round the inner circle's left side.
    for i in 0..=steps {
        let a = -inner_a - (std::f32::consts::TAU - 2.0 * inner_a) * i as f32 / steps as f32;
        pts.push((d + r * a.cos(), -r * a.sin()));
    }
    pts
}

/// Coverage (0–255) of `obj` over the w×h pixel window whose top-left is (x0, y0).
pub(crate) fn coverage_mask(
    obj: &SceneObject,
    x0: f32,
    y0: f32,
    w: u32,
    h: u32,
) -> Option<Vec<u8>> {
    let (path, rule) = shape_path(obj.category, obj.centre[0], obj.centre[1], obj.extent)?;
    let mut mask = Mask::new(w, h)?;
    mask.fill_path(&path, rule, true, Transform::from_translate(-x0, -y0));
    Some(mask.data().to_vec())
}

fn paint_background(pixmap: &mut Pixmap, bg: &Background) {
    let [r, g, b] = bg.from;
    pixmap.fill(Color::from_rgba8(r, g, b, 255));
    match bg.style {
        BackgroundStyle::Plain => {}
        BackgroundStyle::Gradient => {
            let (w, h) = (pixmap.width() as f32, pixmap.height() as f32);
            let end = if bg.vertical {
                Point::from_xy(0.0, h)
            } else {
                Point::from_xy(w, 0.0)
            };
            let [r2, g2, b2] = bg.to;
            if let Some(shader) = LinearGradient::new(
                Point::from_xy(0.0, 0.0),
                end,
                vec![
                    GradientStop::new(0.0, Color::from_rgba8(r, g, b, 255)),
                    GradientStop::new(1.0, Color::from_rgba8(r2, g2, b2, 255)),
                ],
                SpreadMode::Pad,
                Transform::identity(),
            ) {
                let paint = Paint {
                    shader,
                    ..Paint::default()
                };
                if let Some(rect) = Rect::from_xywh(0.0, 0.0, w, h) {
                    pixmap.fill_rect(rect, &paint, Transform::identity(), None);
                }
            }
        }
        BackgroundStyle::Noise => {
            let amp = i32::from(NOISE_AMPLITUDE);
            let mut state = bg.noise_seed;
            for px in pixmap.data_mut().chunks_exact_mut(4) {
                state = crate::rng::splitmix64(state);
                let d = (state % (2 * amp as u64 + 1)) as i32 - amp;
                for c in px.iter_mut().take(3) {
                    *c = (i32::from(*c) + d).clamp(0, 255) as u8;
                }
            }
        }
    }
}

/// Paints `scene` into a new RGBA pixmap (opaque).
pub fn render_pixmap(scene: &Scene) -> Option<Pixmap> {
    let mut pixmap = Pixmap::new(scene.width.max(1), scene.height.max(1))?;
    paint_background(&mut pixmap, &scene.background);
    let mut paint = Paint {
        anti_alias: true,
        ..Paint::default()
    };
    for o in &scene.objects {
        let [r, g, b] = o.colour.rgb();
        paint.set_color_rgba8(r, g, b, 255);
        if let Some((path, rule)) = shape_path(o.category, o.centre[0], o.centre[1], o.extent) {
            pixmap.fill_path(&path, &paint, rule, Transform::identity(), None);
        }
    }
    Some(pixmap)
}

/// Renders `scene` to an RGB image (anti-aliased, deterministic).
pub fn render(scene: &Scene) -> RgbImage {
    let (w, h) = (scene.width.max(1), scene.height.max(1));
    let mut out = RgbImage::new(w, h);
    if let Some(pixmap) = render_pixmap(scene) {
        for (dst, src) in out
            .as_mut()
            .chunks_exact_mut(3)
            .zip(pixmap.data().chunks_exact(4))
        {
            dst.copy_from_slice(&src[..3]);
        }
    }
    out
}
