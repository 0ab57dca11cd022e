//! Metrics as the original papers define them, with seeded 95% bootstrap intervals.
//!
//! A ratio whose denominator is zero (precision with no "yes" predictions, anything on an empty
//! split) is reported as 0, the `zero_division=0` convention of scikit-learn.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chair::CaptionCheck;

/// A metric value with its bootstrap confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The value on the full sample.
    pub value: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

impl Estimate {
    /// A value whose interval is the single point itself (no resampling).
    pub fn point(value: f64) -> Self {
        Estimate {
            value,
            low: value,
            high: value,
        }
    }
}

/// How confidence intervals are computed: percentile bootstrap over questions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples (0 turns intervals off: low = high = value).
    pub resamples: usize,
    /// Seed of the resampling; the same seed gives the same intervals.
    pub seed: u64,
    /// Coverage of the interval, e.g. 0.95.
    pub confidence: f64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 1000,
            seed: 0,
            confidence: 0.95,
        }
    }
}

/// `num / den`, or 0 when `den` is 0.
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// A random stream for one named group of samples, independent of the other groups.
pub(crate) fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut s = [0u8; 32];
    s.copy_from_slice(&d);
    ChaCha8Rng::from_seed(s)
}

/// Draw the category counts of `n = sum(weights)` items resampled with replacement.
///
/// Equivalent in distribution to drawing `n` indices uniformly and counting their categories,
/// done with one binomial draw per category (sequential conditional binomials).
pub(crate) fn multinomial<R: Rng>(rng: &mut R, weights: &[u64], out: &mut [u64]) {
    let total: u64 = weights.iter().sum();
    let mut n_left = total;
    let mut w_left = total;
    for (k, (&w, o)) in weights.iter().zip(out.iter_mut()).enumerate() {
        let c = if n_left == 0 || w == 0 {
            0
        } else if k + 1 == weights.len() || w >= w_left {
            n_left
        } else {
            let p = w as f64 / w_left as f64;
            match Binomial::new(n_left, p) {
                Ok(b) => b.sample(rng),
                Err(_) => 0,
            }
        };
        *o = c;
        n_left -= c;
        w_left -= w;
    }
}

/// Linear-interpolation quantile (numpy's default) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Turn a point value and its resampled values into an [`Estimate`].
pub(crate) fn interval(value: f64, mut draws: Vec<f64>, confidence: f64) -> Estimate {
    if draws.is_empty() {
        return Estimate::point(value);
    }
    draws.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Estimate {
        value,
        low: quantile(&draws, tail),
        high: quantile(&draws, 1.0 - tail),
    }
}

/// Bootstrap `K` statistics of a sample given as category counts.
fn bootstrap_atoms<const K: usize>(
    weights: &[u64],
    boot: &Bootstrap,
    name: &str,
    stat: impl Fn(&[u64]) -> [f64; K],
) -> [Estimate; K] {
    let point = stat(weights);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(boot.resamples); K];
    if weights.iter().sum::<u64>() > 0 {
        let mut rng = stream(boot.seed, name);
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..boot.resamples {
            multinomial(&mut rng, weights, &mut counts);
            for (d, v) in draws.iter_mut().zip(stat(&counts)) {
                d.push(v);
            }
        }
    }
    let mut it = draws.into_iter();
    std::array::from_fn(|k| interval(point[k], it.next().unwrap_or_default(), boot.confidence))
}

/// POPE confusion counts, yes = positive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Label yes, answered yes.
    pub tp: u64,
    /// Label no, answered yes.
    pub fp: u64,
    /// Label no, answered no.
    pub tn: u64,
    /// Label yes, answered no.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Label yes, no answer given (counted wrong, and as a missed positive).
    pub unanswered_yes: u64,
    /// Label no, no answer given (counted wrong).
    pub unanswered_no: u64,
}

impl Confusion {
    /// Count one question: its label and the answer (`None` = unanswered).
    pub fn add(&mut self, label_yes: bool, answer_yes: Option<bool>) {
        match (label_yes, answer_yes) {
            (true, Some(true)) => self.tp += 1,
            (false, Some(true)) => self.fp += 1,
            (false, Some(false)) => self.tn += 1,
            (true, Some(false)) => self.fn_ += 1,
            (true, None) => self.unanswered_yes += 1,
            (false, None) => self.unanswered_no += 1,
        }
    }

    /// Build from the six counts in the order tp, fp, tn, fn, unanswered yes, unanswered no.
    fn from_counts(c: &[u64]) -> Self {
        Confusion {
            tp: c[0],
            fp: c[1],
            tn: c[2],
            fn_: c[3],
            unanswered_yes: c[4],
            unanswered_no: c[5],
        }
    }

    /// The six counts in the order of [`Confusion::from_counts`].
    fn counts(&self) -> [u64; 6] {
        [
            self.tp,
            self.fp,
            self.tn,
            self.fn_,
            self.unanswered_yes,
            self.unanswered_no,
        ]
    }

    /// Number of questions.
    pub fn n(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// (TP + TN) / n.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.n())
    }

    /// TP / (TP + FP).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (all questions labelled yes).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_ + self.unanswered_yes)
    }

    /// 2PR / (P + R), computed from the float precision and recall as POPE's script does.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Fraction of questions answered "yes" (from the predictions, not the labels).
    pub fn yes_ratio(&self) -> f64 {
        ratio(self.tp + self.fp, self.n())
    }

    /// Accuracy, precision, recall, F1, yes-ratio.
    fn stats(&self) -> [f64; 5] {
        [
            self.accuracy(),
            self.precision(),
            self.recall(),
            self.f1(),
            self.yes_ratio(),
        ]
    }
}

/// POPE metrics of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopeSplit {
    /// The split's task name (`pope-random`).
    pub task: String,
    /// The short split name (`random`).
    pub split: String,
    /// Number of questions.
    pub n: u64,
    /// The confusion counts.
    pub confusion: Confusion,
    /// Answers that were neither clearly yes nor no (read by the official rule all the same).
    pub unclear: u64,
    /// (TP + TN) / n.
    pub accuracy: Estimate,
    /// TP / (TP + FP).
    pub precision: Estimate,
    /// TP / positives.
    pub recall: Estimate,
    /// Harmonic mean of precision and recall.
    pub f1: Estimate,
    /// Fraction answered yes.
    pub yes_ratio: Estimate,
    /// The same answers read by lmms-eval's and VLMEvalKit's rules (absent in results written
    /// before they were computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings: Option<crate::readings::HarnessReadings>,
}

/// The unweighted mean of POPE metrics over splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopeMean {
    /// Number of splits averaged.
    pub splits: usize,
    /// Questions over all splits.
    pub n: u64,
    /// Unclear answers over all splits.
    pub unclear: u64,
    /// Mean accuracy.
    pub accuracy: Estimate,
    /// Mean precision.
    pub precision: Estimate,
    /// Mean recall.
    pub recall: Estimate,
    /// Mean F1.
    pub f1: Estimate,
    /// Mean yes-ratio.
    pub yes_ratio: Estimate,
    /// The other harnesses' readings, averaged over splits like the rest of the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings: Option<Box<crate::readings::HarnessReadings>>,
}

/// POPE metrics for a task: one row per split and, with several splits, their mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopeReport {
    /// Per split, in registry order.
    pub splits: Vec<PopeSplit>,
    /// Mean over splits (present when there are two or more).
    pub mean: Option<PopeMean>,
}

/// One split's input to [`pope_report`].
#[derive(Clone, Debug)]
pub struct PopeCounts {
    /// The split's task name.
    pub task: String,
    /// The short split name.
    pub split: String,
    /// Confusion counts.
    pub confusion: Confusion,
    /// Unclear answers.
    pub unclear: u64,
}

/// Compute POPE metrics with bootstrap intervals.
///
/// Each split is resampled independently (its stream seeded by the bootstrap seed and the
/// split's task name, so a split gets the same interval alone or within `pope`); the mean's
/// interval comes from averaging the same resampled splits.
pub fn pope_report(splits: &[PopeCounts], boot: &Bootstrap) -> PopeReport {
    let b = boot.resamples;
    let mut split_draws: Vec<[Vec<f64>; 5]> = Vec::with_capacity(splits.len());
    for s in splits {
        let weights = s.confusion.counts();
        let mut draws: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(b));
        if s.confusion.n() > 0 {
            let mut rng = stream(boot.seed, &s.task);
            let mut counts = [0u64; 6];
            for _ in 0..b {
                multinomial(&mut rng, &weights, &mut counts);
                let st = Confusion::from_counts(&counts).stats();
                for (d, v) in draws.iter_mut().zip(st) {
                    d.push(v);
                }
            }
        } else {
            for d in draws.iter_mut() {
                d.resize(b, 0.0);
            }
        }
        split_draws.push(draws);
    }
    // Each resample's mean over splits, summed in split order like the point value.
    let mean_draws: [Vec<f64>; 5] = std::array::from_fn(|k| {
        (0..b)
            .map(|i| split_draws.iter().map(|d| d[k][i]).sum::<f64>() / splits.len() as f64)
            .collect()
    });
    let rows: Vec<PopeSplit> = splits
        .iter()
        .zip(split_draws)
        .map(|(s, draws)| {
            let st = s.confusion.stats();
            let [a, p, r, f, y] = draws;
            PopeSplit {
                task: s.task.clone(),
                split: s.split.clone(),
                n: s.confusion.n(),
                confusion: s.confusion,
                unclear: s.unclear,
                accuracy: interval(st[0], a, boot.confidence),
                precision: interval(st[1], p, boot.confidence),
                recall: interval(st[2], r, boot.confidence),
                f1: interval(st[3], f, boot.confidence),
                yes_ratio: interval(st[4], y, boot.confidence),
                readings: None,
            }
        })
        .collect();
    let mean = (rows.len() > 1).then(|| {
        let m = |f: fn(&PopeSplit) -> f64| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
        let [a, p, r, f, y] = mean_draws;
        PopeMean {
            splits: rows.len(),
            n: rows.iter().map(|r| r.n).sum(),
            unclear: rows.iter().map(|r| r.unclear).sum(),
            accuracy: interval(m(|r| r.accuracy.value), a, boot.confidence),
            precision: interval(m(|r| r.precision.value), p, boot.confidence),
            recall: interval(m(|r| r.recall.value), r, boot.confidence),
            f1: interval(m(|r| r.f1.value), f, boot.confidence),
            yes_ratio: interval(m(|r| r.yes_ratio.value), y, boot.confidence),
            readings: None,
        }
    });
    PopeReport { splits: rows, mean }
}

/// Accuracy for questions of one true count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerCount {
    /// The true count.
    pub count: u32,
    /// Questions with that count.
    pub n: u64,
    /// Of which answered exactly.
    pub correct: u64,
    /// correct / n.
    pub accuracy: f64,
}

/// Counting metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountReport {
    /// The task name.
    pub task: String,
    /// Number of questions.
    pub n: u64,
    /// Answers with no readable number (wrong for accuracy, left out of the error mean).
    pub unparsed: u64,
    /// Exact-match accuracy.
    pub accuracy: Estimate,
    /// Mean absolute error over parsed answers.
    pub mae: Estimate,
    /// Fraction answered within one of the truth.
    pub off_by_one: Estimate,
    /// Accuracy per true count, ascending.
    pub per_count: Vec<PerCount>,
}

/// Compute counting metrics from (true count, parsed answer) pairs.
pub fn count_report(task: &str, items: &[(u32, Option<u32>)], boot: &Bootstrap) -> CountReport {
    let mut atoms: BTreeMap<(u32, Option<u32>), u64> = BTreeMap::new();
    for &it in items {
        *atoms.entry(it).or_default() += 1;
    }
    let keys: Vec<(u32, Option<u32>)> = atoms.keys().copied().collect();
    let weights: Vec<u64> = atoms.values().copied().collect();
    let stat = |w: &[u64]| {
        let (mut n, mut correct, mut parsed, mut abs, mut near) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (&(t, p), &c) in keys.iter().zip(w) {
            n += c;
            if let Some(p) = p {
                let d = u64::from(t.abs_diff(p));
                parsed += c;
                abs += d * c;
                correct += if d == 0 { c } else { 0 };
                near += if d <= 1 { c } else { 0 };
            }
        }
        [ratio(correct, n), ratio(abs, parsed), ratio(near, n)]
    };
    let [accuracy, mae, off_by_one] = bootstrap_atoms(&weights, boot, task, stat);
    let mut per: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (&(t, p), &c) in &atoms {
        let e = per.entry(t).or_default();
        e.0 += c;
        if p == Some(t) {
            e.1 += c;
        }
    }
    CountReport {
        task: task.to_string(),
        n: items.len() as u64,
        unparsed: items.iter().filter(|(_, p)| p.is_none()).count() as u64,
        accuracy,
        mae,
        off_by_one,
        per_count: per
            .into_iter()
            .map(|(count, (n, correct))| PerCount {
                count,
                n,
                correct,
                accuracy: ratio(correct, n),
            })
            .collect(),
    }
}

/// CHAIR metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChairReport {
    /// The task name.
    pub task: String,
    /// Number of captions.
    pub captions: u64,
    /// Object mentions over all captions, repeats included.
    pub mentions: u64,
    /// Mentions of objects not in the image.
    pub hallucinated_mentions: u64,
    /// Captions with at least one hallucinated mention.
    pub hallucinated_captions: u64,
    /// Hallucinated mentions / all mentions; `None` (undefined) when the captions mention no
    /// object at all, where a ratio would call a model that describes nothing perfect.
    pub chair_i: Option<Estimate>,
    /// Captions with a hallucination / all captions; `None` when no caption mentions an object.
    pub chair_s: Option<Estimate>,
    /// Ground-truth objects mentioned / all ground-truth objects.
    pub recall: Estimate,
}

/// Compute CHAIR metrics from checked captions.
pub fn chair_report(task: &str, items: &[CaptionCheck], boot: &Bootstrap) -> ChairReport {
    let mut atoms: BTreeMap<(u64, u64, u64, u64), u64> = BTreeMap::new();
    for c in items {
        let key = (
            c.mentions.len() as u64,
            c.hallucinated.len() as u64,
            c.truth as u64,
            c.covered as u64,
        );
        *atoms.entry(key).or_default() += 1;
    }
    let keys: Vec<(u64, u64, u64, u64)> = atoms.keys().copied().collect();
    let weights: Vec<u64> = atoms.values().copied().collect();
    let stat = |w: &[u64]| {
        let (mut caps, mut m, mut h, mut hc, mut g, mut cov) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for (&(km, kh, kg, kc), &c) in keys.iter().zip(w) {
            caps += c;
            m += km * c;
            h += kh * c;
            hc += if kh > 0 { c } else { 0 };
            g += kg * c;
            cov += kc * c;
        }
        [ratio(h, m), ratio(hc, caps), ratio(cov, g)]
    };
    let [chair_i, chair_s, recall] = bootstrap_atoms(&weights, boot, task, stat);
    let mentions: u64 = items.iter().map(|c| c.mentions.len() as u64).sum();
    let (chair_i, chair_s) = if mentions == 0 {
        (None, None)
    } else {
        (Some(chair_i), Some(chair_s))
    };
    ChairReport {
        task: task.to_string(),
        captions: items.len() as u64,
        mentions: items.iter().map(|c| c.mentions.len() as u64).sum(),
        hallucinated_mentions: items.iter().map(|c| c.hallucinated.len() as u64).sum(),
        hallucinated_captions: items.iter().filter(|c| !c.hallucinated.is_empty()).count() as u64,
        chair_i,
        chair_s,
        recall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn conf(tp: u64, fp: u64, tn: u64, fn_: u64) -> Confusion {
        Confusion {
            tp,
            fp,
            tn,
            fn_,
            ..Default::default()
        }
    }

    #[test]
    fn hand_computed_confusion() {
        // 40 TP, 10 FP, 35 TN, 15 FN.
        let c = conf(40, 10, 35, 15);
        close(c.accuracy(), 75.0 / 100.0);
        close(c.precision(), 40.0 / 50.0);
        close(c.recall(), 40.0 / 55.0);
        let (p, r) = (0.8, 40.0 / 55.0);
        close(c.f1(), 2.0 * p * r / (p + r));
        close(c.f1(), 80.0 / 105.0);
        close(c.yes_ratio(), 50.0 / 100.0);
    }

    #[test]
    fn all_yes_answers() {
        // 30 positives, 20 negatives, always "yes".
        let c = conf(30, 20, 0, 0);
        close(c.recall(), 1.0);
        close(c.yes_ratio(), 1.0);
        close(c.precision(), 0.6);
        close(c.accuracy(), 0.6);
        close(c.f1(), 0.75);
    }

    #[test]
    fn no_positives_and_all_no() {
        // Labels all "no", answers all "no": precision and recall have zero denominators.
        let c = conf(0, 0, 25, 0);
        close(c.accuracy(), 1.0);
        close(c.precision(), 0.0);
        close(c.recall(), 0.0);
        close(c.f1(), 0.0);
        close(c.yes_ratio(), 0.0);
        // No positives but some false alarms.
        let c = conf(0, 5, 20, 0);
        close(c.precision(), 0.0);
        close(c.recall(), 0.0);
        close(c.yes_ratio(), 0.2);
        close(c.accuracy(), 0.8);
    }

    #[test]
    fn empty_input_is_all_zero_without_nan() {
        let c = Confusion::default();
        for v in c.stats() {
            assert_eq!(v, 0.0);
        }
        let r = pope_report(
            &[PopeCounts {
                task: "pope-random".into(),
                split: "random".into(),
                confusion: c,
                unclear: 0,
            }],
            &Bootstrap::default(),
        );
        assert_eq!(r.splits[0].accuracy, Estimate::point(0.0));
        let cr = count_report("count", &[], &Bootstrap::default());
        assert_eq!(cr.accuracy, Estimate::point(0.0));
        assert_eq!(cr.n, 0);
        let ch = chair_report("chair", &[], &Bootstrap::default());
        assert_eq!(ch.chair_i, None, "no mentions: CHAIR is undefined, not 0");
        assert_eq!(ch.chair_s, None);
    }

    #[test]
    fn unanswered_questions_are_wrong_and_never_yes() {
        let mut c = conf(10, 0, 10, 0);
        c.add(true, None);
        c.add(false, None);
        close(c.accuracy(), 20.0 / 22.0);
        close(c.recall(), 10.0 / 11.0);
        close(c.precision(), 1.0);
        close(c.yes_ratio(), 10.0 / 22.0);
    }

    #[test]
    fn multinomial_preserves_total_and_is_seeded() {
        let w = [40, 10, 35, 15, 0, 3];
        let mut a = [0u64; 6];
        let mut b = [0u64; 6];
        let mut r1 = stream(7, "x");
        let mut r2 = stream(7, "x");
        for _ in 0..200 {
            multinomial(&mut r1, &w, &mut a);
            multinomial(&mut r2, &w, &mut b);
            assert_eq!(a, b);
            assert_eq!(a.iter().sum::<u64>(), 103);
            assert_eq!(a[4], 0);
        }
    }

    #[test]
    fn multinomial_matches_expected_frequencies() {
        let w = [50, 30, 20];
        let mut rng = stream(1, "freq");
        let mut sums = [0u64; 3];
        let mut out = [0u64; 3];
        let reps = 4000;
        for _ in 0..reps {
            multinomial(&mut rng, &w, &mut out);
            for k in 0..3 {
                sums[k] += out[k];
            }
        }
        for k in 0..3 {
            let mean = sums[k] as f64 / reps as f64;
            // Standard error of the mean count is about sqrt(100 p (1-p) / reps) < 0.08.
            assert!((mean - w[k] as f64).abs() < 0.4, "category {k}: {mean}");
        }
    }

    #[test]
    fn bootstrap_interval_brackets_value_and_shrinks_with_n() {
        let boot = Bootstrap::default();
        let small = pope_report(
            &[PopeCounts {
                task: "t".into(),
                split: "t".into(),
                confusion: conf(40, 10, 35, 15),
                unclear: 0,
            }],
            &boot,
        );
        let big = pope_report(
            &[PopeCounts {
                task: "t".into(),
                split: "t".into(),
                confusion: conf(4000, 1000, 3500, 1500),
                unclear: 0,
            }],
            &boot,
        );
        let (s, b) = (small.splits[0].accuracy, big.splits[0].accuracy);
        assert!(s.low < s.value && s.value < s.high, "{s:?}");
        assert!(b.low < b.value && b.value < b.high, "{b:?}");
        assert!(b.high - b.low < (s.high - s.low) / 5.0);
        // Normal approximation: half-width ≈ 1.96 sqrt(p(1-p)/n) = 0.0849 for n = 100.
        assert!(((s.high - s.low) / 2.0 - 0.0849).abs() < 0.012, "{s:?}");
        // Same seed, same bytes.
        let again = pope_report(
            &[PopeCounts {
                task: "t".into(),
                split: "t".into(),
                confusion: conf(40, 10, 35, 15),
                unclear: 0,
            }],
            &boot,
        );
        assert_eq!(small, again);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        close(quantile(&v, 0.0), 1.0);
        close(quantile(&v, 1.0), 4.0);
        close(quantile(&v, 0.5), 2.5);
        close(quantile(&v, 0.025), 1.075);
    }

    #[test]
    fn pope_mean_is_unweighted_mean_of_splits() {
        let r = pope_report(
            &[
                PopeCounts {
                    task: "a".into(),
                    split: "a".into(),
                    confusion: conf(40, 10, 35, 15),
                    unclear: 1,
                },
                PopeCounts {
                    task: "b".into(),
                    split: "b".into(),
                    confusion: conf(5, 0, 5, 0),
                    unclear: 2,
                },
            ],
            &Bootstrap::default(),
        );
        let m = r.mean.unwrap();
        close(m.accuracy.value, (0.75 + 1.0) / 2.0);
        close(m.yes_ratio.value, (0.5 + 0.5) / 2.0);
        assert_eq!(m.n, 110);
        assert_eq!(m.unclear, 3);
        assert!(m.accuracy.low <= m.accuracy.value && m.accuracy.value <= m.accuracy.high);
    }

    #[test]
    fn count_metrics_hand_computed() {
        // truth, answer: exact, exact, off by one, off by three, unparsed.
        let items = [
            (3, Some(3)),
            (0, Some(0)),
            (2, Some(3)),
            (5, Some(2)),
            (4, None),
        ];
        let r = count_report("count", &items, &Bootstrap::default());
        close(r.accuracy.value, 2.0 / 5.0);
        close(r.mae.value, (0.0 + 0.0 + 1.0 + 3.0) / 4.0);
        close(r.off_by_one.value, 3.0 / 5.0);
        assert_eq!(r.unparsed, 1);
        let per: Vec<(u32, u64, u64)> = r
            .per_count
            .iter()
            .map(|p| (p.count, p.n, p.correct))
            .collect();
        assert_eq!(
            per,
            vec![(0, 1, 1), (2, 1, 0), (3, 1, 1), (4, 1, 0), (5, 1, 0)]
        );
    }

    #[test]
    fn chair_metrics_hand_computed() {
        let cap = |m: &[&str], h: &[&str], truth: usize, covered: usize| CaptionCheck {
            mentions: m.iter().map(|s| s.to_string()).collect(),
            hallucinated: h.iter().map(|s| s.to_string()).collect(),
            truth,
            covered,
        };
        let items = [
            cap(&["star", "ring", "star"], &["ring"], 2, 1),
            cap(&["heart"], &[], 1, 1),
            cap(&[], &[], 3, 0),
            cap(&["bar", "arrow"], &["bar", "arrow"], 1, 0),
        ];
        let r = chair_report("chair", &items, &Bootstrap::default());
        assert_eq!(r.mentions, 6);
        assert_eq!(r.hallucinated_mentions, 3);
        assert_eq!(r.hallucinated_captions, 2);
        close(r.chair_i.unwrap().value, 3.0 / 6.0);
        close(r.chair_s.unwrap().value, 2.0 / 4.0);
        close(r.recall.value, 2.0 / 7.0);
    }
}
