//! The study's fits: a power law of held-out loss in compute on the compute-optimal frontier
//! (`L = E + A·C^−α`, and the pure `L = A·C^−α` that Shukor et al. quote), the IsoFLOP minima
//! and `N_opt ∝ C^β`, and the compute needed to reach an accuracy target. Intervals come from
//! the caller's bootstrap; these functions fit one set of points.

/// `L = E + A·C^−α`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerLaw {
    /// The floor the loss tends to.
    pub e: f64,
    /// Scale.
    pub a: f64,
    /// Exponent (loss falls as `C^−α`).
    pub alpha: f64,
}

impl PowerLaw {
    /// The law's value at `c`.
    pub fn at(&self, c: f64) -> f64 {
        self.e + self.a * c.powf(-self.alpha)
    }
}

/// Least squares of `y = k + s·x`: `(k, s)`; `None` with fewer than two distinct x.
pub fn line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 1e-300 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let s = sxy / sxx;
    Some((my - s * mx, s))
}

/// The pure power law `L = A·C^−α` through `(C, L)` points (a line in log–log space).
pub fn pure_power_law(points: &[(f64, f64)]) -> Option<PowerLaw> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(c, l)| *c > 0.0 && *l > 0.0)
        .map(|(c, l)| (c.ln(), l.ln()))
        .collect();
    let (k, s) = line(&logs)?;
    Some(PowerLaw {
        e: 0.0,
        a: k.exp(),
        alpha: -s,
    })
}

/// `L = E + A·C^−α` through `(C, L)` points: for each floor `E` on a grid below the lowest
/// loss, `ln(L − E)` is fitted as a line in `ln C`; the `E` with the least squared error in `L`
/// wins. Needs three points (two give the pure law).
pub fn power_law(points: &[(f64, f64)]) -> Option<PowerLaw> {
    if points.len() < 3 {
        return pure_power_law(points);
    }
    let min_l = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    if !(min_l.is_finite() && min_l > 0.0) {
        return None;
    }
    let mut best: Option<(f64, PowerLaw)> = None;
    const GRID: usize = 400;
    for i in 0..GRID {
        let e = min_l * i as f64 / GRID as f64;
        let logs: Vec<(f64, f64)> = points.iter().map(|(c, l)| (c.ln(), (l - e).ln())).collect();
        let Some((k, s)) = line(&logs) else { continue };
        let law = PowerLaw {
            e,
            a: k.exp(),
            alpha: -s,
        };
        let sse: f64 = points.iter().map(|(c, l)| (l - law.at(*c)).powi(2)).sum();
        if best.as_ref().is_none_or(|(b, _)| sse < *b) {
            best = Some((sse, law));
        }
    }
    best.map(|b| b.1)
}

/// Where an IsoFLOP curve (held-out loss against parameters at one budget) has its minimum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IsoMin {
    /// Parameters at the minimum.
    pub n_opt: f64,
    /// The loss there.
    pub loss: f64,
    /// True when the minimum is inside the sizes tried (a parabola in `ln N` with its vertex
    /// between the smallest and largest); false: the best size tried, at an edge.
    pub interior: bool,
}

/// The IsoFLOP minimum of `(N, L)` points: the vertex of a least-squares parabola in `ln N`
/// when it opens upwards and lies within the sizes tried, else the best size tried.
pub fn iso_minimum(points: &[(f64, f64)]) -> Option<IsoMin> {
    let best = points
        .iter()
        .filter(|p| p.1.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let edge = IsoMin {
        n_opt: best.0,
        loss: best.1,
        interior: false,
    };
    if points.len() < 3 {
        return Some(edge);
    }
    let xs: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    // Normal equations of y = c0 + c1·x + c2·x² (x centred for conditioning).
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let mut ata = [[0.0f64; 3]; 3];
    let mut aty = [0.0f64; 3];
    for (x, p) in xs.iter().zip(points) {
        let u = x - m;
        let row = [1.0, u, u * u];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
            aty[i] += row[i] * p.1;
        }
    }
    let Some(c) = solve3(ata, aty) else {
        return Some(edge);
    };
    if c[2] <= 0.0 {
        return Some(edge);
    }
    let u = -c[1] / (2.0 * c[2]);
    let x = u + m;
    if x <= lo || x >= hi {
        return Some(edge);
    }
    Some(IsoMin {
        n_opt: x.exp(),
        loss: c[0] + c[1] * u + c[2] * u * u,
        interior: true,
    })
}

fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    if d.abs() < 1e-12 {
        return None;
    }
    let mut out = [0.0; 3];
    for (k, o) in out.iter_mut().enumerate() {
        let mut m = a;
        for (i, row) in m.iter_mut().enumerate() {
            row[k] = b[i];
        }
        *o = det(m) / d;
    }
    Some(out)
}

/// The compute needed to reach `target`, read off `(C, accuracy)` points (any order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ToTarget {
    /// Reached already at the lowest budget (`C ≤` this).
    AtMost(f64),
    /// Reached between two budgets: interpolated linearly in `ln C`.
    At(f64),
    /// Not reached within the budgets (`C >` this).
    Beyond(f64),
}

impl ToTarget {
    /// The compute, where it is a number (`At`); the bound otherwise.
    pub fn value(self) -> f64 {
        match self {
            ToTarget::AtMost(c) | ToTarget::At(c) | ToTarget::Beyond(c) => c,
        }
    }
}

/// The compute at which the running best of `points` first reaches `target`.
pub fn compute_to_target(points: &[(f64, f64)], target: f64) -> Option<ToTarget> {
    let mut p: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 > 0.0).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = p.first()?;
    if first.1 >= target {
        return Some(ToTarget::AtMost(first.0));
    }
    let mut best = first.1;
    for w in p.windows(2) {
        let (c0, c1) = (w[0].0, w[1].0);
        let a0 = best;
        let a1 = w[1].1.max(best);
        if a1 >= target {
            let t = (target - a0) / (a1 - a0);
            return Some(ToTarget::At((c0.ln() + t * (c1.ln() - c0.ln())).exp()));
        }
        best = a1;
    }
    Some(ToTarget::Beyond(p.last()?.0))
}

/// The 2.5% and 97.5% percentiles of `xs` (NaNs left out); `None` when empty.
pub fn interval(xs: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let i = p * (v.len() - 1) as f64;
        let (lo, hi) = (i.floor() as usize, i.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (i - lo as f64)
    };
    Some((q(0.025), q(0.975)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_law_recovers_a_known_law() {
        let law = PowerLaw {
            e: 0.05,
            a: 40.0,
            alpha: 0.12,
        };
        let pts: Vec<(f64, f64)> = [1e12, 3e12, 1e13, 3e13, 1e14]
            .iter()
            .map(|&c| (c, law.at(c)))
            .collect();
        let f = power_law(&pts).unwrap();
        assert!((f.alpha - 0.12).abs() < 0.01, "{f:?}");
        assert!((f.e - 0.05).abs() < 0.01, "{f:?}");
        let p = pure_power_law(&[(1e12, 2.0), (1e14, 2.0 * 100f64.powf(-0.05))]).unwrap();
        assert!((p.alpha - 0.05).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn iso_minimum_finds_the_vertex_or_the_edge() {
        // L = 1 + (ln N − ln 2e5)²: minimum at 2e5.
        let f = |n: f64| 1.0 + (n.ln() - 2e5f64.ln()).powi(2);
        let pts: Vec<(f64, f64)> = [5e4, 1.5e5, 6e5].iter().map(|&n| (n, f(n))).collect();
        let m = iso_minimum(&pts).unwrap();
        assert!(m.interior && (m.n_opt / 2e5 - 1.0).abs() < 1e-6, "{m:?}");
        // Falling all the way: the largest size, flagged as an edge.
        let m = iso_minimum(&[(1e4, 3.0), (1e5, 2.0), (1e6, 1.5)]).unwrap();
        assert!(!m.interior && m.n_opt == 1e6, "{m:?}");
    }

    #[test]
    fn compute_to_target_interpolates_and_censors() {
        let pts = [(1e12, 0.5), (1e13, 0.7), (1e14, 0.9)];
        match compute_to_target(&pts, 0.8).unwrap() {
            ToTarget::At(c) => assert!((c.log10() - 13.5).abs() < 1e-9, "{c}"),
            t => panic!("{t:?}"),
        }
        assert_eq!(compute_to_target(&pts, 0.95), Some(ToTarget::Beyond(1e14)));
        assert_eq!(compute_to_target(&pts, 0.4), Some(ToTarget::AtMost(1e12)));
        // A dip after the target was reached does not move it.
        let dip = [(1e12, 0.5), (1e13, 0.85), (1e14, 0.6)];
        assert!(matches!(compute_to_target(&dip, 0.8), Some(ToTarget::At(c)) if c < 1e13));
    }
}
