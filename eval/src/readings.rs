//! The same POPE answers read by the two other harnesses' rules, beside the POPE authors' rule.
//!
//! - **lmms-eval** (`lmms_eval/tasks/pope/utils.py`, EvolvingLMMs-Lab/lmms-eval): an answer is
//!   lowercased and stripped and must equal `yes` or `no` ([`crate::parse::read_lmms_eval`]).
//!   Accuracy is the share of exact matches with the ground truth; precision is
//!   TP / (TP + FP) with TP = `yes` on a yes question, FP = `yes` on a no question; recall is
//!   TP / (TP + FN) where FN counts only answers that are exactly `no` on a yes question (an
//!   answer like "No." is in neither); F1 = 2·(P·R)/(P + R); and its yes-ratio is the share of
//!   *ground-truth* "yes" labels (`pope_aggregate_yes_ratio`), not of predictions, so it is
//!   always about 0.5 on POPE whatever the model answers.
//! - **VLMEvalKit** (`vlmeval/dataset/utils/yorn.py` `YOrN_Extraction` and `POPE_rating`,
//!   `vlmeval/dataset/image_yorn.py` `ImageYORNDataset.evaluate`, open-compass/VLMEvalKit),
//!   without its LLM judge: [`crate::parse::read_vlmevalkit`] gives Yes, No or Unknown;
//!   accuracy is the share where the extraction equals the answer (an Unknown is wrong);
//!   precision, recall and F1 take `extracted == "Yes"` as the positive prediction, so an
//!   Unknown on a yes question is a false negative. VLMEvalKit reports no yes-ratio; the one
//!   here is the share of answers extracted as Yes, and says so. VLMEvalKit prints percentages;
//!   these are fractions like every other number of the harness.
//!
//! All values come with seeded bootstrap intervals like the headline metrics.

use serde::{Deserialize, Serialize};

use crate::metrics::{interval, multinomial, ratio, stream, Bootstrap, Estimate};
use crate::parse::Reading;

/// A harness whose POPE reading is reproduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Harness {
    /// lmms-eval's exact match.
    LmmsEval,
    /// VLMEvalKit's yes/no word rule without the judge.
    VlmEvalKit,
}

impl Harness {
    /// Both, in table order.
    pub const ALL: [Harness; 2] = [Harness::LmmsEval, Harness::VlmEvalKit];

    /// The harness's name as tables print it.
    pub fn name(self) -> &'static str {
        match self {
            Harness::LmmsEval => "lmms-eval",
            Harness::VlmEvalKit => "VLMEvalKit",
        }
    }

    /// The rule, in one line.
    pub fn rule(self) -> &'static str {
        match self {
            Harness::LmmsEval => {
                "lmms-eval pope utils.py: answer.lower().strip() must equal yes/no; recall counts \
                 only exact `no` as a miss; yes-ratio of ground truth"
            }
            Harness::VlmEvalKit => {
                "VLMEvalKit YOrN_Extraction (no judge): lowercase, process_punctuation, words; \
                 yes xor no, else Unknown (wrong); yes-ratio of predictions (not reported by it)"
            }
        }
    }

    /// What its yes-ratio is the share of.
    pub fn yes_ratio_of(self) -> &'static str {
        match self {
            Harness::LmmsEval => "ground truth (lmms-eval)",
            Harness::VlmEvalKit => "predictions",
        }
    }

    /// Read one answer.
    pub fn read(self, answer: &str) -> Reading {
        match self {
            Harness::LmmsEval => crate::parse::read_lmms_eval(answer),
            Harness::VlmEvalKit => crate::parse::read_vlmevalkit(answer),
        }
    }

    /// Accuracy, precision, recall, F1 and yes-ratio of counts, by this harness's formulas.
    pub fn stats(self, c: &ReadingCounts) -> [f64; 5] {
        let n = c.n();
        let accuracy = ratio(c.tp + c.tn, n);
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = match self {
            Harness::LmmsEval => ratio(c.tp, c.tp + c.fn_),
            Harness::VlmEvalKit => ratio(c.tp, c.tp + c.fn_ + c.other_yes),
        };
        // Both write `2 * (precision * recall) / (precision + recall)`.
        let f1 = if precision + recall > 0.0 {
            2.0 * (precision * recall) / (precision + recall)
        } else {
            0.0
        };
        let yes_ratio = match self {
            Harness::LmmsEval => ratio(c.tp + c.fn_ + c.other_yes, n),
            Harness::VlmEvalKit => ratio(c.tp + c.fp, n),
        };
        [accuracy, precision, recall, f1, yes_ratio]
    }
}

/// Questions by ground truth and by how a harness read the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingCounts {
    /// Label yes, read yes.
    pub tp: u64,
    /// Label no, read yes.
    pub fp: u64,
    /// Label no, read no.
    pub tn: u64,
    /// Label yes, read no.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Label yes, read neither.
    pub other_yes: u64,
    /// Label no, read neither.
    pub other_no: u64,
}

impl ReadingCounts {
    /// Count one question.
    pub fn add(&mut self, label_yes: bool, reading: Reading) {
        match (label_yes, reading) {
            (true, Reading::Yes) => self.tp += 1,
            (false, Reading::Yes) => self.fp += 1,
            (false, Reading::No) => self.tn += 1,
            (true, Reading::No) => self.fn_ += 1,
            (true, Reading::Other) => self.other_yes += 1,
            (false, Reading::Other) => self.other_no += 1,
        }
    }

    fn counts(&self) -> [u64; 6] {
        [
            self.tp,
            self.fp,
            self.tn,
            self.fn_,
            self.other_yes,
            self.other_no,
        ]
    }

    fn from_counts(c: &[u64]) -> Self {
        ReadingCounts {
            tp: c[0],
            fp: c[1],
            tn: c[2],
            fn_: c[3],
            other_yes: c[4],
            other_no: c[5],
        }
    }

    /// Number of questions.
    pub fn n(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// Answers read as neither yes nor no.
    pub fn other(&self) -> u64 {
        self.other_yes + self.other_no
    }

    /// The sum of two splits' counts.
    pub fn plus(&self, o: &ReadingCounts) -> ReadingCounts {
        let (a, b) = (self.counts(), o.counts());
        ReadingCounts::from_counts(&std::array::from_fn::<u64, 6, _>(|k| a[k] + b[k]))
    }
}

/// One harness's reading of one split (or the mean over splits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarnessReading {
    /// The counts (for a mean row: summed over the splits).
    pub counts: ReadingCounts,
    /// Answers read as neither yes nor no (lmms-eval: not exactly yes/no; VLMEvalKit: Unknown).
    pub unknown: u64,
    /// Share read right.
    pub accuracy: Estimate,
    /// By the harness's formula.
    pub precision: Estimate,
    /// By the harness's formula.
    pub recall: Estimate,
    /// By the harness's formula.
    pub f1: Estimate,
    /// The harness's yes-ratio; `yes_ratio_of` says of what.
    pub yes_ratio: Estimate,
    /// `ground truth (lmms-eval)` or `predictions`.
    pub yes_ratio_of: String,
}

/// The other harnesses' readings of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarnessReadings {
    /// lmms-eval's exact match.
    pub lmms_eval: HarnessReading,
    /// VLMEvalKit's word rule, no judge.
    pub vlmevalkit: HarnessReading,
}

impl HarnessReadings {
    /// The reading of one harness.
    pub fn get(&self, h: Harness) -> &HarnessReading {
        match h {
            Harness::LmmsEval => &self.lmms_eval,
            Harness::VlmEvalKit => &self.vlmevalkit,
        }
    }
}

/// Per split: the counts of each harness, in [`Harness::ALL`] order.
pub type SplitReadingCounts = (String, [ReadingCounts; 2]);

/// The readings of every split and, with several splits, their unweighted mean (as the
/// headline's mean row); intervals resample each split as [`crate::metrics::pope_report`] does,
/// on streams of their own.
pub fn harness_readings(
    splits: &[SplitReadingCounts],
    boot: &Bootstrap,
) -> (Vec<HarnessReadings>, Option<HarnessReadings>) {
    let b = boot.resamples;
    // [split][harness] -> five metrics' draws
    let mut draws: Vec<[[Vec<f64>; 5]; 2]> = Vec::with_capacity(splits.len());
    for (task, counts) in splits {
        let per: [[Vec<f64>; 5]; 2] = std::array::from_fn(|h| {
            let harness = Harness::ALL[h];
            let c = &counts[h];
            let mut d: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(b));
            if c.n() > 0 {
                let mut rng = stream(boot.seed, &format!("{task}/{}", harness.name()));
                let weights = c.counts();
                let mut out = [0u64; 6];
                for _ in 0..b {
                    multinomial(&mut rng, &weights, &mut out);
                    for (dk, v) in d
                        .iter_mut()
                        .zip(harness.stats(&ReadingCounts::from_counts(&out)))
                    {
                        dk.push(v);
                    }
                }
            } else {
                for dk in d.iter_mut() {
                    dk.resize(b, 0.0);
                }
            }
            d
        });
        draws.push(per);
    }
    let reading = |h: usize, c: ReadingCounts, point: [f64; 5], d: [Vec<f64>; 5]| {
        let harness = Harness::ALL[h];
        let [a, p, r, f, y] = d;
        HarnessReading {
            counts: c,
            unknown: c.other(),
            accuracy: interval(point[0], a, boot.confidence),
            precision: interval(point[1], p, boot.confidence),
            recall: interval(point[2], r, boot.confidence),
            f1: interval(point[3], f, boot.confidence),
            yes_ratio: interval(point[4], y, boot.confidence),
            yes_ratio_of: harness.yes_ratio_of().to_string(),
        }
    };
    let mut mean = None;
    if splits.len() > 1 {
        let k = splits.len() as f64;
        let rows: [HarnessReading; 2] = std::array::from_fn(|h| {
            let harness = Harness::ALL[h];
            let sum = splits
                .iter()
                .fold(ReadingCounts::default(), |acc, (_, c)| acc.plus(&c[h]));
            let point: [f64; 5] = std::array::from_fn(|m| {
                splits
                    .iter()
                    .map(|(_, c)| harness.stats(&c[h])[m])
                    .sum::<f64>()
                    / k
            });
            let d: [Vec<f64>; 5] = std::array::from_fn(|m| {
                (0..b)
                    .map(|i| draws.iter().map(|s| s[h][m][i]).sum::<f64>() / k)
                    .collect()
            });
            reading(h, sum, point, d)
        });
        let [l, v] = rows;
        mean = Some(HarnessReadings {
            lmms_eval: l,
            vlmevalkit: v,
        });
    }
    let per_split = splits
        .iter()
        .zip(draws)
        .map(|((_, c), d)| {
            let [dl, dv] = d;
            HarnessReadings {
                lmms_eval: reading(0, c[0], Harness::LmmsEval.stats(&c[0]), dl),
                vlmevalkit: reading(1, c[1], Harness::VlmEvalKit.stats(&c[1]), dv),
            }
        })
        .collect();
    (per_split, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_by_hand() {
        // 10 yes questions: 5 read yes, 2 read no, 3 neither; 10 no questions: 1 yes, 6 no,
        // 3 neither.
        let c = ReadingCounts {
            tp: 5,
            fn_: 2,
            other_yes: 3,
            fp: 1,
            tn: 6,
            other_no: 3,
        };
        let [a, p, r, f, y] = Harness::LmmsEval.stats(&c);
        assert_eq!(a, 11.0 / 20.0);
        assert_eq!(p, 5.0 / 6.0);
        assert_eq!(r, 5.0 / 7.0);
        assert_eq!(
            f,
            2.0 * ((5.0 / 6.0) * (5.0 / 7.0)) / (5.0 / 6.0 + 5.0 / 7.0)
        );
        assert_eq!(y, 0.5);
        let [a, p, r, _, y] = Harness::VlmEvalKit.stats(&c);
        assert_eq!(a, 11.0 / 20.0);
        assert_eq!(p, 5.0 / 6.0);
        assert_eq!(r, 5.0 / 10.0);
        assert_eq!(y, 6.0 / 20.0);
    }
}
