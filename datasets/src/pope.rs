//! POPE question building, exactly as the POPE paper and its reference code define it,
//! plus balanced counting questions. Works on any list of annotated items
//! (our scenes and clips, COCO images, POPE's own ground-truth object files).

use std::collections::HashMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::rng::{purpose, stream_rng};
use crate::vocab::article;

/// POPE's question template for images; `{}` is replaced by the object name.
pub const IMAGE_TEMPLATE: &str = "Is there a {} in the image?";
/// The same template for audio clips.
pub const AUDIO_TEMPLATE: &str = "Is there a {} in the audio?";

/// The three POPE negative-sampling strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PopeSplit {
    /// Absent objects drawn uniformly.
    Random,
    /// The most frequent absent objects.
    Popular,
    /// The absent objects that co-occur most often with each ground-truth object.
    Adversarial,
}

impl PopeSplit {
    /// All three splits in POPE's order.
    pub const ALL: [PopeSplit; 3] = [
        PopeSplit::Random,
        PopeSplit::Popular,
        PopeSplit::Adversarial,
    ];

    /// The split name ("adversarial").
    pub fn name(self) -> &'static str {
        match self {
            PopeSplit::Random => "random",
            PopeSplit::Popular => "popular",
            PopeSplit::Adversarial => "adversarial",
        }
    }
}

/// A yes/no answer label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YesNo {
    /// "yes".
    Yes,
    /// "no".
    No,
}

impl YesNo {
    /// "yes" or "no".
    pub fn as_str(self) -> &'static str {
        match self {
            YesNo::Yes => "yes",
            YesNo::No => "no",
        }
    }
}

/// One POPE question, in POPE's own line format
/// (`{"question_id", "image", "text", "label"}`; audio files use `"audio"` for `image`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopeQuestion {
    /// 1-based id within its file.
    pub question_id: u64,
    /// File name of the image (or audio clip), relative to the media folder.
    #[serde(alias = "audio")]
    pub image: String,
    /// The question text.
    pub text: String,
    /// The ground-truth answer.
    pub label: YesNo,
}

impl PopeQuestion {
    /// The object asked about, parsed from "Is there a(n) {object} in the …?".
    pub fn object(&self) -> Option<&str> {
        let rest = self
            .text
            .strip_prefix("Is there an ")
            .or_else(|| self.text.strip_prefix("Is there a "))?;
        let end = rest.rfind(" in the ")?;
        Some(&rest[..end])
    }
}

/// An item with its ground-truth object list (distinct, in annotation order), as in POPE's input files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotatedItem {
    /// File name of the image or clip (`image` in POPE's files, whatever the medium).
    #[serde(rename = "image")]
    pub media: String,
    /// Distinct ground-truth object names, first occurrence first.
    pub objects: Vec<String>,
}

/// Settings of the POPE builder (POPE's `main.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PopeConfig {
    /// Images sampled (POPE: 500).
    pub images: usize,
    /// Ground-truth ("yes") objects and negatives ("no") per image (POPE: 3).
    pub per_image: usize,
    /// Question template with one `{}` (POPE: "Is there a {} in the image?").
    pub template: String,
    /// Seed of the image sample and of random negatives.
    pub seed: u64,
}

impl Default for PopeConfig {
    fn default() -> Self {
        PopeConfig {
            images: 500,
            per_image: 3,
            template: IMAGE_TEMPLATE.to_string(),
            seed: 0,
        }
    }
}

/// Object frequencies and co-occurrence counts over a set of items, as POPE computes them.
#[derive(Clone, Debug, Default)]
pub struct PopeStats {
    /// Object names in order of first appearance.
    pub names: Vec<String>,
    /// Number of items holding each object.
    pub frequency: HashMap<String, u64>,
    /// For each object, how many items hold it together with each other object.
    pub co_occurrence: HashMap<String, HashMap<String, u64>>,
}

impl PopeStats {
    /// Computes the statistics over `items`.
    pub fn compute(items: &[AnnotatedItem]) -> Self {
        let mut s = PopeStats::default();
        for it in items {
            for o in &it.objects {
                if !s.frequency.contains_key(o) {
                    s.names.push(o.clone());
                }
                *s.frequency.entry(o.clone()).or_insert(0) += 1;
                let row = s.co_occurrence.entry(o.clone()).or_default();
                for p in &it.objects {
                    if p != o {
                        *row.entry(p.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        s
    }

    /// Objects by frequency, most frequent first (ties: first appearance first, like Python's stable sort).
    pub fn by_frequency(&self) -> Vec<String> {
        let mut v = self.names.clone();
        v.sort_by_key(|n| std::cmp::Reverse(self.frequency.get(n).copied().unwrap_or(0)));
        v
    }

    /// Co-occurrence count of `a` with `b`.
    pub fn co(&self, a: &str, b: &str) -> u64 {
        self.co_occurrence
            .get(a)
            .and_then(|r| r.get(b))
            .copied()
            .unwrap_or(0)
    }

    /// Objects that co-occur with `a`, most often first (ties: first appearance first).
    pub fn by_co_occurrence(&self, a: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .names
            .iter()
            .filter(|n| self.co(a, n) > 0)
            .cloned()
            .collect();
        v.sort_by_key(|n| std::cmp::Reverse(self.co(a, n)));
        v
    }
}

/// The three POPE splits built over one image sample.
#[derive(Clone, Debug)]
pub struct PopeSet {
    /// The sampled items, in output order.
    pub items: Vec<AnnotatedItem>,
    /// Statistics over the sampled items.
    pub stats: PopeStats,
    /// Questions of each split, in [`PopeSplit::ALL`] order.
    pub splits: Vec<(PopeSplit, Vec<PopeQuestion>)>,
}

impl PopeSet {
    /// The questions of one split.
    pub fn split(&self, split: PopeSplit) -> &[PopeQuestion] {
        self.splits
            .iter()
            .find(|(s, _)| *s == split)
            .map(|(_, q)| q.as_slice())
            .unwrap_or(&[])
    }
}

/// Fills a POPE template with an object, choosing "a"/"an" as POPE does.
pub fn pope_text(template: &str, object: &str) -> String {
    let t = if article(object) == "an" {
        template.replacen("a {}", "an {}", 1)
    } else {
        template.to_string()
    };
    t.replacen("{}", object, 1)
}

/// Builds POPE: keeps items with at least `per_image` objects, samples `images` of them
/// (kept in input order), computes frequency and co-occurrence over the sample, then
/// for each item asks its first `per_image` objects ("yes"), each followed by one
/// negative ("no") chosen by the split's strategy, exactly as POPE's `utils.py` does.
pub fn build_pope(items: &[AnnotatedItem], cfg: &PopeConfig) -> Result<PopeSet> {
    if cfg.per_image == 0 {
        return Err(DatasetError::config("per_image", "must be at least 1"));
    }
    if !cfg.template.contains("{}") {
        return Err(DatasetError::config(
            "template",
            format!("{:?} has no {{}} placeholder", cfg.template),
        ));
    }
    let eligible: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].objects.len() >= cfg.per_image)
        .collect();
    if eligible.len() < cfg.images {
        return Err(DatasetError::Insufficient {
            what: "POPE".into(),
            message: format!(
                "needs {} items with at least {} objects, found {} (of {})",
                cfg.images,
                cfg.per_image,
                eligible.len(),
                items.len()
            ),
        });
    }
    let mut rng = stream_rng(cfg.seed, 0, purpose::POPE);
    let mut pick = eligible.clone();
    for i in 0..cfg.images {
        let j = rng.random_range(i..pick.len());
        pick.swap(i, j);
    }
    pick.truncate(cfg.images);
    pick.sort_unstable();
    let sample: Vec<AnnotatedItem> = pick.iter().map(|&i| items[i].clone()).collect();
    let stats = PopeStats::compute(&sample);
    let mut splits = Vec::with_capacity(3);
    for split in PopeSplit::ALL {
        let mut rng = stream_rng(cfg.seed, split as u64 + 1, purpose::POPE);
        splits.push((split, pope_split(&sample, &stats, cfg, split, &mut rng)?));
    }
    Ok(PopeSet {
        items: sample,
        stats,
        splits,
    })
}

fn pope_split<R: Rng>(
    items: &[AnnotatedItem],
    stats: &PopeStats,
    cfg: &PopeConfig,
    split: PopeSplit,
    rng: &mut R,
) -> Result<Vec<PopeQuestion>> {
    let popular = stats.by_frequency();
    let mut out = Vec::with_capacity(items.len() * cfg.per_image * 2);
    let mut id = 1u64;
    for item in items {
        let mut history: Vec<String> = Vec::with_capacity(cfg.per_image * 2);
        for pos in item.objects.iter().take(cfg.per_image) {
            history.push(pos.clone());
            out.push(PopeQuestion {
                question_id: id,
                image: item.media.clone(),
                text: pope_text(&cfg.template, pos),
                label: YesNo::Yes,
            });
            id += 1;
            let usable = |o: &str, history: &[String]| {
                !history.iter().any(|h| h == o) && !item.objects.iter().any(|x| x == o)
            };
            let chosen: Option<String> = match split {
                PopeSplit::Random => None,
                PopeSplit::Popular => popular.iter().find(|o| usable(o, &history)).cloned(),
                PopeSplit::Adversarial => stats
                    .by_co_occurrence(pos)
                    .into_iter()
                    .find(|o| usable(o, &history)),
            };
            let neg = match chosen {
                Some(o) => o,
                None => {
                    let pool: Vec<&String> =
                        stats.names.iter().filter(|o| usable(o, &history)).collect();
                    if pool.is_empty() {
                        return Err(DatasetError::Insufficient {
                            what: format!("POPE {}", split.name()),
                            message: format!(
                                "no absent object left to ask about for {}",
                                item.media
                            ),
                        });
                    }
                    pool[rng.random_range(0..pool.len())].clone()
                }
            };
            out.push(PopeQuestion {
                question_id: id,
                image: item.media.clone(),
                text: pope_text(&cfg.template, &neg),
                label: YesNo::No,
            });
            history.push(neg);
            id += 1;
        }
    }
    Ok(out)
}

/// An item with the count of every vocabulary object in it (zeros included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountItem {
    /// File name of the image or clip (`image` in POPE's files, whatever the medium).
    #[serde(rename = "image")]
    pub media: String,
    /// (object, count) for every object of the vocabulary.
    pub counts: Vec<(String, usize)>,
}

/// One counting question: `{"question_id", "image", "text", "label", "object"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountQuestion {
    /// 1-based id within its file.
    pub question_id: u64,
    /// File name of the image (or clip).
    #[serde(alias = "audio")]
    pub image: String,
    /// "How many {plural} are there in the image?"
    pub text: String,
    /// The count, as digits.
    pub label: String,
    /// The object counted (singular).
    pub object: String,
}

/// Builds one counting question per item with answers spread evenly over
/// `0..=max_count`: each item asks about a count from the least-used value it can offer.
/// `plural` maps an object to its plural; `medium` is "image" or "audio".
pub fn build_count_questions(
    items: &[CountItem],
    max_count: usize,
    seed: u64,
    plural: &dyn Fn(&str) -> String,
    medium: &str,
) -> Vec<CountQuestion> {
    let mut used = vec![0usize; max_count + 1];
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut rng = stream_rng(seed, i as u64, purpose::COUNT);
        let offered: Vec<usize> = (0..=max_count)
            .filter(|k| item.counts.iter().any(|(_, c)| c == k))
            .collect();
        let Some(&least) = offered.iter().map(|k| &used[*k]).min() else {
            continue;
        };
        let best: Vec<usize> = offered.into_iter().filter(|k| used[*k] == least).collect();
        let k = best[rng.random_range(0..best.len())];
        let objs: Vec<&String> = item
            .counts
            .iter()
            .filter(|(_, c)| *c == k)
            .map(|(o, _)| o)
            .collect();
        let obj = objs[rng.random_range(0..objs.len())];
        used[k] += 1;
        out.push(CountQuestion {
            question_id: out.len() as u64 + 1,
            image: item.media.clone(),
            text: format!("How many {} are there in the {medium}?", plural(obj)),
            label: k.to_string(),
            object: obj.clone(),
        });
    }
    out
}
