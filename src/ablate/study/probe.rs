//! What a vision encoder's per-patch features carry: a linear probe (ridge regression onto
//! one-hot labels, the arg-max read as the class) for the shape and the colour of the object
//! whose centre lies in the patch, and for the patch's own position, trained on one set of
//! held-out scenes and scored on another.

use std::collections::BTreeMap;

use anyhow::Context;
use candle_core::{Device, Tensor};
use mmlab_datasets::{generate_scene, render, Colour, SceneConfig, Shape};
use serde::{Deserialize, Serialize};

use crate::fusion::{patchify, ImageConfig, ImageSpan};
use crate::model::Model;

/// Scenes the probe is fitted on.
pub const FIT_SCENES: u64 = 300;
/// Scenes it is scored on.
pub const TEST_SCENES: u64 = 200;
/// Stream id of the probe's scenes (mixed into the validation seed).
const PURPOSE_PROBE: u64 = 0x9_0BE;

/// One property's probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeScore {
    /// Accuracy on the scored patches.
    pub accuracy: f64,
    /// Accuracy of always answering the fit set's most common class.
    pub majority: f64,
    /// Scored patches.
    pub n: usize,
}

/// The probe of one encoder: `shape` and `colour` on patches holding an object's centre (the
/// empty patches left out, so chance is about one over the classes), `position` (which of the
/// grid's patches it is) on every patch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeResult {
    /// Scene tier of the probe's scenes.
    pub tier: String,
    /// Per property.
    pub scores: BTreeMap<String, ProbeScore>,
}

/// One patch's features and labels.
struct Rows {
    feats: Vec<Vec<f32>>,
    shape: Vec<Option<usize>>,
    colour: Vec<Option<usize>>,
    position: Vec<usize>,
}

fn features(
    model: &Model,
    image: &ImageConfig,
    scenes: &SceneConfig,
    seed: u64,
    from: u64,
    n: u64,
) -> anyhow::Result<Rows> {
    let bolted = model
        .bolted()
        .context("the probe reads a bolted-on model's vision encoder")?;
    let mut data = Vec::new();
    let mut spans = Vec::new();
    let mut rows = Rows {
        feats: Vec::new(),
        shape: Vec::new(),
        colour: Vec::new(),
        position: Vec::new(),
    };
    let patch = image.patch as f32;
    let mut patch_dim = 0;
    for i in from..from + n {
        let scene = generate_scene(scenes, seed, i);
        let grid = patchify(&render(&scene), image);
        patch_dim = grid.patch_dim;
        spans.push(ImageSpan {
            patch_start: data.len() / grid.patch_dim.max(1),
            rows: grid.rows,
            cols: grid.cols,
            slot_start: 0,
            n_slots: 0,
        });
        for r in 0..grid.rows {
            for c in 0..grid.cols {
                // The object whose centre lies in this patch (the last drawn, when several).
                let o = scene.objects.iter().rev().find(|o| {
                    (o.centre[0] / patch).floor() as usize == c
                        && (o.centre[1] / patch).floor() as usize == r
                });
                rows.shape.push(o.map(|o| shape_index(o.category)));
                rows.colour.push(o.map(|o| colour_index(o.colour)));
                rows.position.push(r * grid.cols + c);
            }
        }
        data.extend_from_slice(&grid.data);
    }
    let n_rows = data.len() / patch_dim.max(1);
    let patches = Tensor::from_vec(data, (n_rows, patch_dim), &Device::Cpu)?;
    let enc = bolted.vision_encoder().forward(&patches, &spans)?;
    let feats = enc.feats.to_vec3::<f32>()?;
    for (s, f) in spans.iter().zip(feats) {
        rows.feats.extend(f.into_iter().take(s.rows * s.cols));
    }
    Ok(rows)
}

fn shape_index(s: Shape) -> usize {
    Shape::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn colour_index(c: Colour) -> usize {
    Colour::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

/// Probes the vision encoder of `model` (reading images as `image` says) on scenes of `tier`
/// drawn from a stream of `seed`.
pub fn probe(
    model: &Model,
    image: &ImageConfig,
    tier: &str,
    seed: u64,
) -> anyhow::Result<ProbeResult> {
    let mut scenes =
        SceneConfig::preset(tier).with_context(|| format!("unknown scene tier {tier:?}"))?;
    scenes.width = image.max_width as u32;
    scenes.height = image.max_height as u32;
    let seed = seed ^ PURPOSE_PROBE;
    let fit = features(model, image, &scenes, seed, 0, FIT_SCENES)?;
    let test = features(model, image, &scenes, seed, FIT_SCENES, TEST_SCENES)?;
    let mut scores = BTreeMap::new();
    let pick = |r: &Rows, y: &[Option<usize>]| -> (Vec<Vec<f32>>, Vec<usize>) {
        r.feats
            .iter()
            .zip(y)
            .filter_map(|(f, y)| y.map(|y| (f.clone(), y)))
            .unzip()
    };
    for (name, classes, fy, ty) in [
        ("shape", Shape::ALL.len(), &fit.shape, &test.shape),
        ("colour", Colour::ALL.len(), &fit.colour, &test.colour),
    ] {
        let (fx, fy) = pick(&fit, fy);
        let (tx, ty) = pick(&test, ty);
        scores.insert(name.to_string(), score(&fx, &fy, &tx, &ty, classes));
    }
    let cells = fit.position.iter().max().map(|m| m + 1).unwrap_or(1);
    scores.insert(
        "position".to_string(),
        score(
            &fit.feats,
            &fit.position,
            &test.feats,
            &test.position,
            cells,
        ),
    );
    Ok(ProbeResult {
        tier: tier.to_string(),
        scores,
    })
}

/// Fits the ridge probe on (fx, fy) and scores it on (tx, ty).
fn score(
    fx: &[Vec<f32>],
    fy: &[usize],
    tx: &[Vec<f32>],
    ty: &[usize],
    classes: usize,
) -> ProbeScore {
    let mut counts = vec![0usize; classes];
    for &y in fy {
        counts[y] += 1;
    }
    let major = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let n = ty.len();
    let majority = ty.iter().filter(|&&y| y == major).count() as f64 / n.max(1) as f64;
    let w = ridge(fx, fy, classes, 1e-2);
    let right = tx
        .iter()
        .zip(ty)
        .filter(|(x, y)| predict(&w, x) == **y)
        .count();
    ProbeScore {
        accuracy: right as f64 / n.max(1) as f64,
        majority,
        n,
    }
}

/// Standardisation and weights of a ridge probe: `(mean, scale, w)`, `w` is `(d + 1) × classes`.
pub struct Ridge {
    mean: Vec<f64>,
    scale: Vec<f64>,
    w: Vec<Vec<f64>>,
}

/// Ridge regression of one-hot `y` on standardised `x` plus a bias, penalty `lambda · n`.
pub fn ridge(x: &[Vec<f32>], y: &[usize], classes: usize, lambda: f64) -> Ridge {
    let n = x.len();
    let d = x.first().map(|r| r.len()).unwrap_or(0);
    let mut mean = vec![0.0; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64 / n.max(1) as f64;
        }
    }
    let mut scale = vec![0.0; d];
    for r in x {
        for ((s, v), m) in scale.iter_mut().zip(r).zip(&mean) {
            *s += (*v as f64 - m).powi(2) / n.max(1) as f64;
        }
    }
    for s in &mut scale {
        *s = if *s > 1e-12 { 1.0 / s.sqrt() } else { 0.0 };
    }
    let k = d + 1;
    let z = |r: &[f32]| -> Vec<f64> {
        let mut v: Vec<f64> = r
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((x, m), s)| (*x as f64 - m) * s)
            .collect();
        v.push(1.0);
        v
    };
    // Normal equations (ZᵀZ + λnI) W = ZᵀY, the bias unpenalised.
    let mut a = vec![vec![0.0; k]; k];
    let mut b = vec![vec![0.0; classes]; k];
    for (r, &yi) in x.iter().zip(y) {
        let v = z(r);
        for i in 0..k {
            for j in 0..k {
                a[i][j] += v[i] * v[j];
            }
            b[i][yi] += v[i];
        }
    }
    for (i, row) in a.iter_mut().enumerate().take(d) {
        row[i] += lambda * n as f64;
    }
    let w = solve(a, b);
    Ridge { mean, scale, w }
}

/// The class a ridge probe gives `x`.
pub fn predict(r: &Ridge, x: &[f32]) -> usize {
    let classes = r.w.first().map(|w| w.len()).unwrap_or(0);
    let mut out = vec![0.0; classes];
    for (i, v) in x.iter().enumerate() {
        let zv = (*v as f64 - r.mean[i]) * r.scale[i];
        for (o, w) in out.iter_mut().zip(&r.w[i]) {
            *o += zv * w;
        }
    }
    if let Some(bias) = r.w.last() {
        for (o, w) in out.iter_mut().zip(bias) {
            *o += w;
        }
    }
    out.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Solves `a · w = b` (a symmetric positive semi-definite, regularised) by Gaussian
/// elimination with partial pivoting; a singular direction gets weight 0.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let k = a.len();
    for col in 0..k {
        let piv = (col..k)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, piv);
        b.swap(col, piv);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            continue;
        }
        let (pivot_a, pivot_b) = (a[col].clone(), b[col].clone());
        for (r, (ar, br)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            let f = ar[col] / p;
            if r == col || f == 0.0 {
                continue;
            }
            for (x, y) in ar.iter_mut().zip(&pivot_a).skip(col) {
                *x -= f * y;
            }
            for (x, y) in br.iter_mut().zip(&pivot_b) {
                *x -= f * y;
            }
        }
    }
    (0..k)
        .map(|i| {
            let p = a[i][i];
            b[i].iter()
                .map(|v| if p.abs() < 1e-12 { 0.0 } else { v / p })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_probe_reads_a_linearly_coded_class_and_not_noise() {
        // Features: class c in one-hot at c (plus noise) in 8 dims; a noise-only control.
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let mut x = Vec::new();
        let mut noise = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let c = i % 4;
            let mut f: Vec<f32> = (0..8).map(|_| next() * 0.3).collect();
            f[c] += 1.0;
            x.push(f);
            noise.push((0..8).map(|_| next()).collect::<Vec<f32>>());
            y.push(c);
        }
        let s = score(&x[..300], &y[..300], &x[300..], &y[300..], 4);
        assert!(s.accuracy > 0.95, "{s:?}");
        assert!((s.majority - 0.25).abs() < 0.05, "{s:?}");
        let s = score(&noise[..300], &y[..300], &noise[300..], &y[300..], 4);
        assert!(s.accuracy < 0.45, "noise carries no class: {s:?}");
    }
}
