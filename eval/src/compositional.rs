//! Held-out colour–shape pairs: accuracy on pairs seen in training against pairs never seen, and
//! the gap, with bootstrap intervals.
//!
//! A shapes data set writes two question files of the same three kinds: `attribute.jsonl` on
//! the POPE images, whose pairs training shows (the control), and `compositional.jsonl` on
//! images that each hold a held-out pair (`held_out` in `manifest.json`). The kinds are
//! "Is there a {colour} {shape} in the image?" (yes or no; the no questions name a pair that is
//! not there) and "What colour is the {shape}?" (a colour word). A model that learned colour and
//! shape as separate attributes answers both files alike; one that memorised pairs drops on the
//! held-out file. The gap is seen minus held-out accuracy.
//!
//! The "no" questions are not built alike: the seen control keeps a shape that is in the image
//! and changes its colour (only the colour says no), while the held-out file names an absent
//! held-out pair (its shape is often absent too). So the report splits presence questions into
//! present pairs (label yes) and absent pairs (label no); the present-pair gap compares like
//! with like.

use serde::{Deserialize, Serialize};

use crate::metrics::{interval, multinomial, ratio, stream, Bootstrap, Estimate};
use crate::parse::parse_yes_no;

/// The kind of a compositional question, from its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuestionKind {
    /// Is there a {colour} {shape}: yes or no.
    YesNo,
    /// What colour is the {shape}: a colour word.
    Colour,
}

impl QuestionKind {
    /// The kind a label implies: `yes`/`no` labels are presence questions, others colours.
    pub fn of_label(label: &str) -> QuestionKind {
        match label {
            "yes" | "no" => QuestionKind::YesNo,
            _ => QuestionKind::Colour,
        }
    }
}

/// The first colour word of an answer (lower-cased whole words; `grey`/`gray` are not colours of
/// the data set), or `None`.
pub fn parse_colour(text: &str) -> Option<&'static str> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .find_map(|w| {
            mmlab_datasets::vocab::Colour::ALL
                .iter()
                .map(|c| c.name())
                .find(|n| n.eq_ignore_ascii_case(w))
        })
}

/// Read an answer for a question with this label: `"yes"`/`"no"` by the POPE authors' rule for
/// presence questions, the first colour word for colour questions (`None`: no colour named).
pub fn parse_short_answer(label: &str, text: &str) -> Option<String> {
    match QuestionKind::of_label(label) {
        QuestionKind::YesNo => Some(if parse_yes_no(text).yes { "yes" } else { "no" }.to_string()),
        QuestionKind::Colour => parse_colour(text).map(str::to_string),
    }
}

/// Right and total answers of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Questions.
    pub n: u64,
    /// Answered right.
    pub correct: u64,
}

/// One split's input to [`compositional_report`]: per kind, right and wrong answers.
#[derive(Clone, Debug)]
pub struct CompositionalCounts {
    /// The split's task name (`attribute`, `compositional-held-out`).
    pub task: String,
    /// The short split name (`seen`, `held-out`).
    pub split: String,
    /// Presence questions whose pair is in the image (label yes).
    pub present: KindCounts,
    /// Presence questions whose pair is not (label no).
    pub absent: KindCounts,
    /// Colour questions.
    pub colour: KindCounts,
    /// Answers that named no colour (colour questions) — counted wrong.
    pub unparsed: u64,
}

/// Accuracy of one split, overall and per kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompositionalSplit {
    /// The split's task name.
    pub task: String,
    /// `seen` or `held-out`.
    pub split: String,
    /// Questions.
    pub n: u64,
    /// Answered right.
    pub correct: u64,
    /// Colour answers that named no colour.
    pub unparsed: u64,
    /// Presence questions: counts.
    pub yes_no: KindCounts,
    /// Presence questions whose pair is in the image: counts.
    pub present: KindCounts,
    /// Presence questions whose pair is not: counts.
    pub absent: KindCounts,
    /// Colour questions: counts.
    pub colour: KindCounts,
    /// All questions.
    pub accuracy: Estimate,
    /// Presence questions ("Is there a {colour} {shape}?").
    pub yes_no_accuracy: Estimate,
    /// Presence questions whose pair is in the image (answered yes).
    pub present_accuracy: Estimate,
    /// Presence questions whose pair is not (answered no); see the module note on how the two
    /// files build these differently.
    pub absent_accuracy: Estimate,
    /// Colour questions ("What colour is the {shape}?").
    pub colour_accuracy: Estimate,
}

/// Seen minus held-out accuracy, overall and per kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompositionalGap {
    /// All questions.
    pub accuracy: Estimate,
    /// Presence questions.
    pub yes_no: Estimate,
    /// Presence questions whose pair is in the image.
    pub present: Estimate,
    /// Presence questions whose pair is not.
    pub absent: Estimate,
    /// Colour questions.
    pub colour: Estimate,
}

/// Compositional metrics: one row per split and, with both splits, the gap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompositionalReport {
    /// Per split, in task order (seen first).
    pub splits: Vec<CompositionalSplit>,
    /// Seen minus held-out (present when the task has both splits).
    pub gap: Option<CompositionalGap>,
}

/// Accuracy overall, of presence questions, of present and absent pairs, and of colour
/// questions, from the six atoms (present right, present wrong, absent right, absent wrong,
/// colour right, colour wrong).
fn stats(w: &[u64]) -> [f64; 5] {
    [
        ratio(w[0] + w[2] + w[4], w.iter().sum()),
        ratio(w[0] + w[2], w[0] + w[1] + w[2] + w[3]),
        ratio(w[0], w[0] + w[1]),
        ratio(w[2], w[2] + w[3]),
        ratio(w[4], w[4] + w[5]),
    ]
}

/// Compute the report; each split is resampled on its own stream (seeded by the bootstrap seed
/// and its task name), and the gap's interval comes from the differences of the same resamples.
pub fn compositional_report(
    splits: &[CompositionalCounts],
    boot: &Bootstrap,
) -> CompositionalReport {
    let b = boot.resamples;
    let mut rows = Vec::with_capacity(splits.len());
    let mut all_draws: Vec<[Vec<f64>; 5]> = Vec::with_capacity(splits.len());
    for s in splits {
        let w = [
            s.present.correct,
            s.present.n - s.present.correct,
            s.absent.correct,
            s.absent.n - s.absent.correct,
            s.colour.correct,
            s.colour.n - s.colour.correct,
        ];
        let mut draws: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(b));
        if w.iter().sum::<u64>() > 0 {
            let mut rng = stream(boot.seed, &s.task);
            let mut out = [0u64; 6];
            for _ in 0..b {
                multinomial(&mut rng, &w, &mut out);
                for (d, v) in draws.iter_mut().zip(stats(&out)) {
                    d.push(v);
                }
            }
        } else {
            for d in draws.iter_mut() {
                d.resize(b, 0.0);
            }
        }
        let point = stats(&w);
        let [a, y, pr, ab, c] = draws.clone();
        let yes_no = KindCounts {
            n: s.present.n + s.absent.n,
            correct: s.present.correct + s.absent.correct,
        };
        rows.push(CompositionalSplit {
            task: s.task.clone(),
            split: s.split.clone(),
            n: yes_no.n + s.colour.n,
            correct: yes_no.correct + s.colour.correct,
            unparsed: s.unparsed,
            yes_no,
            present: s.present,
            absent: s.absent,
            colour: s.colour,
            accuracy: interval(point[0], a, boot.confidence),
            yes_no_accuracy: interval(point[1], y, boot.confidence),
            present_accuracy: interval(point[2], pr, boot.confidence),
            absent_accuracy: interval(point[3], ab, boot.confidence),
            colour_accuracy: interval(point[4], c, boot.confidence),
        });
        all_draws.push(draws);
    }
    let gap = (rows.len() == 2).then(|| {
        let diff = |k: usize, value: f64| {
            let d: Vec<f64> = all_draws[0][k]
                .iter()
                .zip(&all_draws[1][k])
                .map(|(s, h)| s - h)
                .collect();
            interval(value, d, boot.confidence)
        };
        CompositionalGap {
            accuracy: diff(0, rows[0].accuracy.value - rows[1].accuracy.value),
            yes_no: diff(
                1,
                rows[0].yes_no_accuracy.value - rows[1].yes_no_accuracy.value,
            ),
            present: diff(
                2,
                rows[0].present_accuracy.value - rows[1].present_accuracy.value,
            ),
            absent: diff(
                3,
                rows[0].absent_accuracy.value - rows[1].absent_accuracy.value,
            ),
            colour: diff(
                4,
                rows[0].colour_accuracy.value - rows[1].colour_accuracy.value,
            ),
        }
    });
    CompositionalReport { splits: rows, gap }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_answers_by_kind() {
        assert_eq!(parse_short_answer("yes", "Yes."), Some("yes".into()));
        assert_eq!(
            parse_short_answer("no", "No, there is not"),
            Some("no".into())
        );
        assert_eq!(parse_short_answer("red", "It is red."), Some("red".into()));
        assert_eq!(parse_short_answer("red", "Orange"), Some("orange".into()));
        assert_eq!(parse_short_answer("red", "reddish"), None);
        assert_eq!(parse_short_answer("blue", "I cannot tell"), None);
    }

    #[test]
    fn gap_by_hand() {
        let c = |task: &str, yn: (u64, u64), col: (u64, u64)| CompositionalCounts {
            task: task.into(),
            split: task.into(),
            present: KindCounts {
                n: yn.0 / 2,
                correct: yn.1 / 2,
            },
            absent: KindCounts {
                n: yn.0 / 2,
                correct: yn.1 / 2,
            },
            colour: KindCounts {
                n: col.0,
                correct: col.1,
            },
            unparsed: 0,
        };
        let r = compositional_report(
            &[
                c("seen", (200, 180), (100, 90)),
                c("held", (100, 60), (50, 20)),
            ],
            &Bootstrap::default(),
        );
        assert_eq!(r.splits[0].accuracy.value, 270.0 / 300.0);
        assert_eq!(r.splits[1].accuracy.value, 80.0 / 150.0);
        let g = r.gap.unwrap();
        assert_eq!(g.accuracy.value, 270.0 / 300.0 - 80.0 / 150.0);
        assert_eq!(g.yes_no.value, 0.9 - 0.6);
        assert_eq!(g.present.value, 0.9 - 0.6);
        assert_eq!(g.colour.value, 0.9 - 0.4);
        assert!(g.accuracy.low < g.accuracy.value && g.accuracy.value < g.accuracy.high);
        assert!(g.accuracy.low > 0.2, "{:?}", g.accuracy);
    }
}
