//! The harness: select questions, ask the model in batches through the cache, score, and write
//! the result file and `samples.jsonl`; merge shard results.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic::write_parts_atomic;
pub use crate::atomic::{ensure_writable, temp_name, write_atomic};
use crate::cache::{sanitize, Key, ResponseCache};
use crate::chair::{check_caption, default_synonyms, ObjectMatcher, SynonymTable};
use crate::compositional::{
    compositional_report, parse_short_answer, CompositionalCounts, CompositionalReport,
    QuestionKind,
};
use crate::error::{EvalError, Result};
use crate::identity::{hash_data, sha256_hex, DataIdentity, Hashed};
use crate::metrics::{
    chair_report, count_report, pope_report, Bootstrap, ChairReport, Confusion, CountReport,
    PopeCounts, PopeReport,
};
use crate::parse::{parse_count, parse_yes_no, Reading};
use crate::readings::{harness_readings, Harness, ReadingCounts};
use crate::responder::{argmax, Request, Responder, Response};
use crate::tasks::{
    load_task_with, render_prompt, task, DataOptions, Label, LoadedSplit, MetricKind, ParserKind,
    TaskSpec,
};

/// The extension (after the result file's stem) of the lmms-eval style results file.
pub const LMMS_EVAL_SUFFIX: &str = "lmms-eval.json";

/// Version of the result-file layout.
pub const RESULT_FORMAT: u32 = 2;

/// How the model answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// The model generates free text, which the task's parser reads.
    #[default]
    Generate,
    /// The model scores the task's fixed candidates; the best-scored one is the answer.
    Score,
}

/// Callback told `(done, total)` as answers arrive.
pub type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

/// Settings of one run.
pub struct RunOptions {
    /// Use only the first N questions of each split.
    pub limit: Option<usize>,
    /// Run only shard `i` of `n` (0-based: question index mod n == i, within each split).
    pub shard: Option<(usize, usize)>,
    /// Result files go to `<results_dir>/<model>/`.
    pub results_dir: PathBuf,
    /// Where the response cache lives.
    pub cache_dir: PathBuf,
    /// Told `(done, total)` as answers arrive (cached answers count as done at once).
    pub progress: Option<Progress>,
    /// Generate text or score candidates.
    pub mode: AnswerMode,
    /// Replaces the task's prompt template (`{question}`, `{object}`).
    pub prompt_template: Option<String>,
    /// Folder the question files' `image` fields are relative to.
    pub images: Option<PathBuf>,
    /// Folder the question files' `audio` fields are relative to.
    pub audio: Option<PathBuf>,
    /// CHAIR synonym table (default: [`default_synonyms`]).
    pub synonyms: Option<SynonymTable>,
    /// Confidence-interval settings.
    pub bootstrap: Bootstrap,
    /// Read and write the response cache (on by default).
    pub use_cache: bool,
    /// Folder name for results (default: the responder's `name()`).
    pub model_name: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            limit: None,
            shard: None,
            results_dir: PathBuf::from("results"),
            cache_dir: PathBuf::from("results/.cache"),
            progress: None,
            mode: AnswerMode::Generate,
            prompt_template: None,
            images: None,
            audio: None,
            synonyms: None,
            bootstrap: Bootstrap::default(),
            use_cache: true,
            model_name: None,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("limit", &self.limit)
            .field("shard", &self.shard)
            .field("results_dir", &self.results_dir)
            .field("cache_dir", &self.cache_dir)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .field("mode", &self.mode)
            .field("prompt_template", &self.prompt_template)
            .field("images", &self.images)
            .field("audio", &self.audio)
            .field("synonyms", &self.synonyms.as_ref().map(|s| s.len()))
            .field("bootstrap", &self.bootstrap)
            .field("use_cache", &self.use_cache)
            .field("model_name", &self.model_name)
            .finish()
    }
}

/// Parse a shard written `i/n` (0-based `i`, `i < n`).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let err = || {
        EvalError::Option(format!(
            "shard `{s}`: expected i/n with 0 <= i < n, e.g. 0/4"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let i: usize = i.trim().parse().map_err(|_| err())?;
    let n: usize = n.trim().parse().map_err(|_| err())?;
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

/// One split as the run used it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// The split's task name.
    pub task: String,
    /// The short split name.
    pub split: String,
    /// The question file.
    pub source: String,
    /// Questions in the file.
    pub questions: usize,
    /// Questions after `--limit` (all shards together).
    pub selected: usize,
    /// Questions this run (shard) answered.
    pub run: usize,
}

/// The settings a result was produced with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The data path given.
    pub data: String,
    /// The splits, in task order.
    pub splits: Vec<SplitInfo>,
    /// `--limit`.
    pub limit: Option<usize>,
    /// `--shard i/n` (none for a full or merged run).
    pub shard: Option<(usize, usize)>,
    /// Generate or score candidates.
    pub mode: AnswerMode,
    /// The prompt template used.
    pub prompt_template: String,
    /// Confidence-interval settings.
    pub bootstrap: Bootstrap,
    /// The CHAIR synonym table used (CHAIR tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synonyms: Option<BTreeMap<String, Vec<String>>>,
    /// What the questions and media were, by content, and the scene tier they were drawn in
    /// (`None` only in result files written before it was recorded).
    #[serde(default)]
    pub data_identity: Option<DataIdentity>,
    /// The responder's settings besides its weights (decoding, input sizes).
    #[serde(default)]
    pub decoding: Value,
}

impl RunConfig {
    /// Whether `--limit` left every question of every split selected.
    pub fn selects_all(&self) -> bool {
        self.splits.iter().all(|s| s.selected == s.questions)
    }

    /// The scene tier as a table names it (`aligned 48x48 cell 12px`; `unknown` for results
    /// written before tiers were recorded).
    pub fn tier_label(&self) -> String {
        match &self.data_identity {
            Some(d) => d.tier_label(),
            None => "unknown (old result)".to_string(),
        }
    }
}

/// The metrics of a task, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metrics {
    /// POPE tasks.
    Pope(PopeReport),
    /// Counting tasks.
    Count(CountReport),
    /// CHAIR.
    Chair(ChairReport),
    /// Seen vs held-out colour–shape pairs.
    Compositional(CompositionalReport),
}

/// How many answers came from where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Questions scored.
    pub questions: usize,
    /// Answers read from the cache.
    pub from_cache: usize,
    /// Answers the model produced in this run.
    pub fresh: usize,
    /// Questions without an answer.
    pub unanswered: usize,
    /// POPE: answers neither clearly yes nor no; counting: answers without a number.
    pub unclear: usize,
}

/// Where the time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Wall-clock seconds of the whole run (summed over shards for a merge).
    pub total_s: f64,
    /// Seconds spent inside the model (`Responder::respond`).
    pub model_s: f64,
    /// The harness's own seconds: loading, caching, parsing, metrics, writing.
    pub overhead_s: f64,
    /// Of the overhead: seconds spent hashing the question files and media.
    #[serde(default)]
    pub hash_s: f64,
}

/// Versions of everything that shapes the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// The `mmlab-eval` crate version.
    pub mmlab_eval: String,
    /// Result-file layout version.
    pub result_format: u32,
    /// The yes/no rule.
    pub pope_rule: String,
    /// The count rule.
    pub count_rule: String,
    /// The CHAIR rule.
    pub chair_rule: String,
    /// The other harnesses' POPE readings (empty in results written before they were computed).
    #[serde(default)]
    pub readings_rule: String,
    /// The compositional tasks' rule (empty in results written before those tasks).
    #[serde(default)]
    pub compositional_rule: String,
}

impl Default for Versions {
    fn default() -> Self {
        Versions {
            mmlab_eval: env!("CARGO_PKG_VERSION").to_string(),
            result_format: RESULT_FORMAT,
            pope_rule: "pope-evaluate.py: first sentence, commas removed, No/not/no => no".into(),
            count_rule: "first integer or number word zero..twenty; none/no => 0".into(),
            chair_rule: "longest synonym phrase, regular plurals, mentions with repeats".into(),
            readings_rule: "lmms-eval pope utils.py exact match (yes-ratio of ground truth); \
                            VLMEvalKit YOrN_Extraction + process_punctuation, no judge"
                .into(),
            compositional_rule: "yes/no by the POPE authors' rule, colours by the first colour \
                                 word; gap = seen - held-out"
                .into(),
        }
    }
}

/// Everything a run produced: written as the result file and printed with `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task name.
    pub task: String,
    /// The model's display name.
    pub model: String,
    /// The model's identity (name + weights hash).
    pub model_identity: String,
    /// When the run finished (UTC, RFC 3339).
    pub created: String,
    /// The settings.
    pub config: RunConfig,
    /// The metrics with intervals.
    pub metrics: Metrics,
    /// Answer counts.
    pub counts: Counts,
    /// Timing.
    pub timing: Timing,
    /// Versions.
    pub versions: Versions,
    /// Warnings about the inputs (e.g. answers that match no question).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The result file (set once written).
    #[serde(default)]
    pub result_file: Option<String>,
    /// The samples file, relative to the result file's folder.
    #[serde(default)]
    pub samples_file: Option<String>,
    /// POPE: the same result in lmms-eval's `results.json` layout, relative to the result
    /// file's folder (`<result>.lmms-eval.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmms_eval_results: Option<String>,
}

impl TaskResult {
    /// What this result measured: results with equal keys are runs of the same thing.
    pub fn key(&self) -> crate::identity::ResultKey {
        crate::identity::ResultKey {
            model: self.model.clone(),
            task: self.task.clone(),
            model_identity: self.model_identity.clone(),
            data: self
                .config
                .data_identity
                .as_ref()
                .map(|d| d.id.clone())
                .unwrap_or_default(),
            mode: format!("{:?}", self.config.mode).to_lowercase(),
            prompt: self.config.prompt_template.clone(),
            decoding: self.config.decoding.to_string(),
            limit: self.config.limit,
            shard: self.config.shard,
        }
    }

    /// Whether every question of the data was asked (no `--limit` below the split sizes, no
    /// shard).
    pub fn is_full(&self) -> bool {
        self.config.shard.is_none() && self.config.selects_all()
    }
}

/// One scored question, as written to `samples.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The split's task name.
    pub task: String,
    /// The short split name.
    pub split: String,
    /// Position in the split's question file.
    pub index: usize,
    /// The question id.
    pub question_id: String,
    /// The prompt the model saw.
    pub prompt: String,
    /// The model's raw answer.
    pub answer: String,
    /// Candidate scores (candidate mode).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::responder::score_serde"
    )]
    pub scores: Option<Vec<f32>>,
    /// The best-scored candidate (candidate mode): the text that was parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_answer: Option<String>,
    /// The model gave no answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unanswered: bool,
    /// The parsed answer: "yes"/"no", a count, or the mentioned categories (null if none).
    pub parsed: Value,
    /// POPE: whether the answer was clearly yes or no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<bool>,
    /// POPE: how lmms-eval's exact match reads the answer (`yes`, `no` or `other`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmms_eval: Option<Reading>,
    /// POPE: how VLMEvalKit's word rule reads it (`yes`, `no` or `other` for its "Unknown").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlmevalkit: Option<Reading>,
    /// CHAIR: the hallucinated mentions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hallucinated: Option<Vec<String>>,
    /// The ground truth.
    pub label: Value,
    /// Whether the answer is right (CHAIR: no hallucinated mention).
    pub correct: bool,
    /// The answer came from the cache.
    #[serde(default)]
    pub cached: bool,
}

/// An answered question before parsing.
struct Answered {
    /// Position of the split in the run's split list.
    split: usize,
    index: usize,
    question_id: String,
    prompt: String,
    label: Label,
    answer: String,
    scores: Option<Vec<f32>>,
    scored_answer: Option<String>,
    unanswered: bool,
    cached: bool,
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// UTC time as (`20261129T084745Z`, `2026-11-29T08:47:45Z`).
fn timestamps(t: SystemTime) -> (String, String) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let (h, mi, se) = (s / 3600, (s % 3600) / 60, s % 60);
    (
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{se:02}Z"),
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}Z"),
    )
}

/// What scoring gives: the metrics, the samples and the number of unclear answers.
type Scored = (Metrics, Vec<Sample>, usize);

/// Parse and score answered questions.
fn score(
    spec: &TaskSpec,
    splits: &[SplitInfo],
    mut items: Vec<Answered>,
    matcher: Option<&ObjectMatcher>,
    boot: &Bootstrap,
) -> Result<Scored> {
    items.sort_by_key(|a| (a.split, a.index));
    if let Some(a) = items.iter().find(|a| a.split >= splits.len()) {
        return Err(EvalError::Merge(format!(
            "question {} belongs to no split of the task",
            a.question_id
        )));
    }
    match spec.parser {
        ParserKind::YesNo => score_yes_no(splits, items, boot),
        ParserKind::Count => score_counts(spec.name, splits, items, boot),
        ParserKind::ShortAnswer => score_short_answers(splits, items, boot),
        ParserKind::Caption => {
            let matcher = matcher
                .ok_or_else(|| EvalError::Option("CHAIR needs a synonym table".to_string()))?;
            score_captions(spec.name, splits, items, matcher, boot)
        }
    }
}

/// The sample of an answered question, parsed as `parsed`.
fn sample(splits: &[SplitInfo], a: Answered, parsed: Value, correct: bool) -> Sample {
    Sample {
        task: splits[a.split].task.clone(),
        split: splits[a.split].split.clone(),
        index: a.index,
        question_id: a.question_id,
        prompt: a.prompt,
        answer: a.answer,
        scores: a.scores,
        scored_answer: a.scored_answer,
        unanswered: a.unanswered,
        parsed,
        clear: None,
        lmms_eval: None,
        vlmevalkit: None,
        hallucinated: None,
        label: a.label.to_json(),
        correct,
        cached: a.cached,
    }
}

/// The error for a question whose label is not of the task's kind.
fn wrong_label(splits: &[SplitInfo], a: &Answered, what: &str) -> EvalError {
    EvalError::Merge(format!(
        "question {} of {} has {what}",
        a.question_id, splits[a.split].task
    ))
}

/// POPE: yes/no answers by the official rule, a confusion matrix per split.
fn score_yes_no(splits: &[SplitInfo], items: Vec<Answered>, boot: &Bootstrap) -> Result<Scored> {
    let mut samples = Vec::with_capacity(items.len());
    let mut unclear = 0usize;
    let mut per: Vec<PopeCounts> = splits
        .iter()
        .map(|s| PopeCounts {
            task: s.task.clone(),
            split: s.split.clone(),
            confusion: Confusion::default(),
            unclear: 0,
        })
        .collect();
    let mut other: Vec<[ReadingCounts; 2]> = vec![Default::default(); splits.len()];
    for a in items {
        let Label::YesNo(label) = a.label.clone() else {
            return Err(wrong_label(splits, &a, "a non-yes/no label"));
        };
        let slot = a.split;
        let text = if a.unanswered {
            ""
        } else {
            a.scored_answer.as_deref().unwrap_or(&a.answer)
        };
        // The other harnesses read the same text; no answer is neither yes nor no to them.
        let read: [Reading; 2] = Harness::ALL.map(|h| h.read(text));
        for (c, r) in other[slot].iter_mut().zip(read) {
            c.add(label, r);
        }
        let (pred, clear) = if a.unanswered {
            (None, false)
        } else {
            let p = parse_yes_no(text);
            (Some(p.yes), p.clear)
        };
        per[slot].confusion.add(label, pred);
        if !clear && !a.unanswered {
            per[slot].unclear += 1;
            unclear += 1;
        }
        let parsed = match pred {
            Some(true) => Value::from("yes"),
            Some(false) => Value::from("no"),
            None => Value::Null,
        };
        let mut s = sample(splits, a, parsed, pred == Some(label));
        s.clear = Some(clear);
        s.lmms_eval = Some(read[0]);
        s.vlmevalkit = Some(read[1]);
        samples.push(s);
    }
    let mut report = pope_report(&per, boot);
    let named: Vec<(String, [ReadingCounts; 2])> = splits
        .iter()
        .zip(other)
        .map(|(s, c)| (s.task.clone(), c))
        .collect();
    let (rows, mean) = harness_readings(&named, boot);
    for (s, r) in report.splits.iter_mut().zip(rows) {
        s.readings = Some(r);
    }
    if let Some(m) = report.mean.as_mut() {
        m.readings = mean.map(Box::new);
    }
    Ok((Metrics::Pope(report), samples, unclear))
}

/// Compositional: yes/no or a colour word against the label, per split and kind.
fn score_short_answers(
    splits: &[SplitInfo],
    items: Vec<Answered>,
    boot: &Bootstrap,
) -> Result<Scored> {
    let mut samples = Vec::with_capacity(items.len());
    let mut unclear = 0usize;
    let mut per: Vec<CompositionalCounts> = splits
        .iter()
        .map(|s| CompositionalCounts {
            task: s.task.clone(),
            split: s.split.clone(),
            present: Default::default(),
            absent: Default::default(),
            colour: Default::default(),
            unparsed: 0,
        })
        .collect();
    for a in items {
        let Label::Word(label) = a.label.clone() else {
            return Err(wrong_label(
                splits,
                &a,
                "a label that is not a short answer",
            ));
        };
        let pred = if a.unanswered {
            None
        } else {
            parse_short_answer(&label, a.scored_answer.as_deref().unwrap_or(&a.answer))
        };
        let correct = pred.as_deref() == Some(label.as_str());
        let slot = &mut per[a.split];
        let kind = match QuestionKind::of_label(&label) {
            QuestionKind::YesNo if label == "yes" => &mut slot.present,
            QuestionKind::YesNo => &mut slot.absent,
            QuestionKind::Colour => &mut slot.colour,
        };
        kind.n += 1;
        kind.correct += u64::from(correct);
        if pred.is_none() && !a.unanswered {
            slot.unparsed += 1;
            unclear += 1;
        }
        let parsed = pred.map_or(Value::Null, Value::from);
        samples.push(sample(splits, a, parsed, correct));
    }
    Ok((
        Metrics::Compositional(compositional_report(&per, boot)),
        samples,
        unclear,
    ))
}

/// Counting: the first number of each answer against the true count.
fn score_counts(
    task: &str,
    splits: &[SplitInfo],
    items: Vec<Answered>,
    boot: &Bootstrap,
) -> Result<Scored> {
    let mut samples = Vec::with_capacity(items.len());
    let mut unclear = 0usize;
    let mut pairs = Vec::with_capacity(items.len());
    for a in items {
        let Label::Count(label) = a.label.clone() else {
            return Err(wrong_label(splits, &a, "a non-count label"));
        };
        let pred = if a.unanswered {
            None
        } else {
            parse_count(a.scored_answer.as_deref().unwrap_or(&a.answer))
        };
        if pred.is_none() && !a.unanswered {
            unclear += 1;
        }
        pairs.push((label, pred));
        let parsed = pred.map_or(Value::Null, Value::from);
        samples.push(sample(splits, a, parsed, pred == Some(label)));
    }
    Ok((
        Metrics::Count(count_report(task, &pairs, boot)),
        samples,
        unclear,
    ))
}

/// CHAIR: the objects each caption mentions against those in the image.
fn score_captions(
    task: &str,
    splits: &[SplitInfo],
    items: Vec<Answered>,
    matcher: &ObjectMatcher,
    boot: &Bootstrap,
) -> Result<Scored> {
    let mut samples = Vec::with_capacity(items.len());
    let mut checks = Vec::with_capacity(items.len());
    for a in items {
        let Label::Objects(objects) = &a.label else {
            return Err(wrong_label(splits, &a, "no object list"));
        };
        let text = if a.unanswered { "" } else { a.answer.as_str() };
        let c = check_caption(matcher, text, objects);
        // A caption that names nothing is not a correct description of a scene that
        // holds objects (only of an empty one).
        let describes = !c.mentions.is_empty() || objects.is_empty();
        let correct = c.hallucinated.is_empty() && !a.unanswered && describes;
        let mut s = sample(splits, a, Value::from(c.mentions.clone()), correct);
        s.hallucinated = Some(c.hallucinated.clone());
        samples.push(s);
        checks.push(c);
    }
    Ok((
        Metrics::Chair(chair_report(task, &checks, boot)),
        samples,
        0,
    ))
}

/// Serialise samples as JSON lines, in chunks (one per thread task) to be written in order.
fn samples_bytes(samples: &[Sample]) -> Result<Vec<Vec<u8>>> {
    samples
        .par_chunks(4096)
        .map(|chunk| {
            let mut buf = Vec::with_capacity(chunk.len() * 256);
            for s in chunk {
                serde_json::to_writer(&mut buf, s)
                    .map_err(|e| EvalError::Option(format!("cannot serialise a sample: {e}")))?;
                buf.push(b'\n');
            }
            Ok(buf)
        })
        .collect()
}

/// Pick unused file names `<dir>/<base>[-k].json` and `.samples.jsonl`.
fn result_paths(dir: &Path, base: &str) -> (PathBuf, PathBuf) {
    let mut k = 1;
    loop {
        let stem = if k == 1 {
            base.to_string()
        } else {
            format!("{base}-{k}")
        };
        let r = dir.join(format!("{stem}.json"));
        let s = dir.join(format!("{stem}.samples.jsonl"));
        if !r.exists() && !s.exists() {
            return (r, s);
        }
        k += 1;
    }
}

/// Write the samples and then the result file (both atomically); fills in the file names.
fn write_result(result: &mut TaskResult, samples: &[Sample], dir: &Path, base: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let (rpath, spath) = result_paths(dir, base);
    // The samples are written atomically but not waited for on disk: the result file, written
    // last and durably, is what marks a run as finished.
    let parts = samples_bytes(samples)?;
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    write_parts_atomic(&spath, &parts, false)?;
    result.result_file = Some(rpath.display().to_string());
    result.samples_file = spath.file_name().map(|n| n.to_string_lossy().to_string());
    // POPE: lmms-eval's results.json layout beside ours, with its reading of the answers.
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let lpath = rpath.with_extension(LMMS_EVAL_SUFFIX);
    result.lmms_eval_results = None;
    if let Some(v) = crate::interop::lmms_eval_results(result, unix) {
        let json = serde_json::to_vec_pretty(&v)
            .map_err(|e| EvalError::Option(format!("cannot serialise the result: {e}")))?;
        write_atomic(&lpath, &json)?;
        result.lmms_eval_results = lpath.file_name().map(|n| n.to_string_lossy().to_string());
    }
    let json = serde_json::to_vec_pretty(result)
        .map_err(|e| EvalError::Option(format!("cannot serialise the result: {e}")))?;
    write_atomic(&rpath, &json)
}

/// The questions one run asks, with what it takes to ask them.
struct Asking<'a> {
    /// The splits as loaded.
    loaded: &'a [LoadedSplit],
    /// Per split: (position in the question file, rendered prompt) of each question asked.
    chosen: Vec<Vec<(usize, String)>>,
    /// Per split and question of the file: the media's sha256.
    media: &'a [Vec<String>],
    /// The answers scored in score mode.
    candidates: Option<Vec<String>>,
    /// The responder's identity (for errors).
    identity: &'a str,
}

/// Per split and chosen question: the answer, and whether it came from the cache.
type Answers = Vec<Vec<Option<(Response, bool)>>>;

impl Asking<'_> {
    /// The media sha256 of chosen question `k` of split `si`.
    fn media_of(&self, si: usize, k: usize) -> &str {
        &self.media[si][self.chosen[si][k].0]
    }

    /// The request for chosen question `k` of split `si`.
    fn request(&self, si: usize, k: usize) -> Request {
        let (i, prompt) = &self.chosen[si][k];
        let q = &self.loaded[si].questions[*i];
        Request {
            task: self.loaded[si].task.clone(),
            question_id: q.question_id.clone(),
            prompt: prompt.clone(),
            image: q.image.clone(),
            audio: q.audio.clone(),
            candidates: self.candidates.clone(),
        }
    }
}

/// Refuse option values no run can use; returns the candidates to score in score mode.
fn check_options(spec: &TaskSpec, opts: &RunOptions) -> Result<Option<Vec<String>>> {
    if let Some((i, n)) = opts.shard {
        if n == 0 || i >= n {
            return Err(EvalError::Option(format!(
                "shard {i}/{n}: expected 0 <= i < n"
            )));
        }
    }
    if opts.limit == Some(0) {
        return Err(EvalError::Option("--limit must be at least 1".to_string()));
    }
    Ok(match opts.mode {
        AnswerMode::Generate => None,
        AnswerMode::Score => Some(
            spec.candidates
                .ok_or_else(|| {
                    EvalError::Option(format!(
                        "task `{}` has no fixed answers to score; use generate mode",
                        spec.name
                    ))
                })?
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    })
}

/// The identity answers are cached under: answers depend on the decoding settings as well as
/// the weights.
fn cache_identity(identity: &str, settings: &Value) -> String {
    if settings.is_null() {
        identity.to_string()
    } else {
        format!(
            "{identity}#{}",
            &sha256_hex(settings.to_string().as_bytes())[..12]
        )
    }
}

/// Select each split's questions (the first `--limit`, then this shard's) and render their
/// prompts.
fn select_questions(
    loaded: &[LoadedSplit],
    opts: &RunOptions,
    template: &str,
) -> (Vec<SplitInfo>, Vec<Vec<(usize, String)>>) {
    let mut infos = Vec::new();
    let mut selected = Vec::new();
    for s in loaded {
        let n_sel = opts.limit.unwrap_or(usize::MAX).min(s.questions.len());
        let chosen: Vec<(usize, String)> = s.questions[..n_sel]
            .iter()
            .enumerate()
            .filter(|(i, _)| opts.shard.is_none_or(|(k, n)| i % n == k))
            .map(|(i, q)| (i, render_prompt(template, q)))
            .collect();
        infos.push(SplitInfo {
            task: s.task.clone(),
            split: s.split.clone(),
            source: s.source.display().to_string(),
            questions: s.questions.len(),
            selected: n_sel,
            run: chosen.len(),
        });
        selected.push(chosen);
    }
    (infos, selected)
}

/// Refuse questions whose media files are not there, when the responder needs them.
fn check_media(hashed: &Hashed, responder: &dyn Responder) -> Result<()> {
    if let Some(missing) = hashed
        .first_absent
        .as_ref()
        .filter(|_| responder.needs_media())
    {
        let n: usize = hashed.identity.splits.iter().map(|s| s.media_absent).sum();
        return Err(EvalError::Data {
            path: missing.clone(),
            message: format!(
                "no such file: the questions name {n} media file(s) that are not there (this is \
                 the first); give the media folder with --images"
            ),
        });
    }
    Ok(())
}

/// Open each split's cache file (one thread per split), or none without the cache.
fn open_caches(
    infos: &[SplitInfo],
    opts: &RunOptions,
    identity: &str,
) -> Result<Vec<Option<ResponseCache>>> {
    infos
        .par_iter()
        .map(|info| {
            opts.use_cache
                .then(|| ResponseCache::open(&opts.cache_dir, identity, &info.task, opts.shard))
                .transpose()
        })
        .collect()
}

/// Look every chosen question up in the caches: the answers found, and the (split, position)
/// of each question still to ask, in order.
fn look_up(
    run: &Asking<'_>,
    caches: &mut [Option<ResponseCache>],
) -> (Answers, Vec<(usize, usize)>) {
    let mut answers = Vec::with_capacity(run.chosen.len());
    let mut pending = Vec::new();
    for (si, chosen) in run.chosen.iter().enumerate() {
        let questions = &run.loaded[si].questions;
        let mut got = Vec::with_capacity(chosen.len());
        for (k, (i, prompt)) in chosen.iter().enumerate() {
            let key = Key {
                question_id: &questions[*i].question_id,
                prompt,
                media: &run.media[si][*i],
                candidates: run.candidates.as_deref(),
            };
            match caches[si].as_mut().and_then(|c| c.take(&key)) {
                Some(resp) => got.push(Some((resp, true))),
                None => {
                    got.push(None);
                    pending.push((si, k));
                }
            }
        }
        answers.push(got);
    }
    (answers, pending)
}

/// Refuse a batch of responses of the wrong length, or scores of the wrong width.
fn check_responses(run: &Asking<'_>, batch: &[Request], out: &[Response]) -> Result<()> {
    if out.len() != batch.len() {
        return Err(EvalError::ResponseShape {
            identity: run.identity.to_string(),
            what: "responses".into(),
            expected: batch.len(),
            got: out.len(),
        });
    }
    if let Some(c) = &run.candidates {
        for r in out.iter().filter(|r| !r.unanswered) {
            let got = r.scores.as_ref().map_or(0, Vec::len);
            if got != c.len() {
                return Err(EvalError::ResponseShape {
                    identity: run.identity.to_string(),
                    what: "scores".into(),
                    expected: c.len(),
                    got,
                });
            }
        }
    }
    Ok(())
}

/// Append a batch's answers to each split's cache, in contiguous runs of one split.
fn cache_batch(
    run: &Asking<'_>,
    chunk: &[(usize, usize)],
    batch: &[Request],
    out: &[Response],
    caches: &mut [Option<ResponseCache>],
) -> Result<()> {
    let mut start = 0;
    while start < chunk.len() {
        let si = chunk[start].0;
        let mut end = start + 1;
        while end < chunk.len() && chunk[end].0 == si {
            end += 1;
        }
        if let Some(c) = caches[si].as_mut() {
            let m: Vec<&str> = chunk[start..end]
                .iter()
                .map(|&(si, k)| run.media_of(si, k))
                .collect();
            c.append(&batch[start..end], &m, &out[start..end])?;
        }
        start = end;
    }
    Ok(())
}

/// Cache the answers a responder got before part of its batch failed, so that a rerun asks only
/// the rest.
fn keep_answered(
    run: &Asking<'_>,
    chunk: &[(usize, usize)],
    batch: &[Request],
    answered: Vec<Option<Response>>,
    caches: &mut [Option<ResponseCache>],
) -> Result<()> {
    if answered.len() != batch.len() {
        return Err(EvalError::ResponseShape {
            identity: run.identity.to_string(),
            what: "partial answers".into(),
            expected: batch.len(),
            got: answered.len(),
        });
    }
    let mut kept_chunk = Vec::new();
    let mut kept_batch = Vec::new();
    let mut kept_out = Vec::new();
    for ((c, req), a) in chunk.iter().zip(batch).zip(answered) {
        if let Some(a) = a {
            kept_chunk.push(*c);
            kept_batch.push(req.clone());
            kept_out.push(a);
        }
    }
    check_responses(run, &kept_batch, &kept_out)?;
    cache_batch(run, &kept_chunk, &kept_batch, &kept_out, caches)
}

/// Ask the model the pending questions batch by batch, caching each batch as it arrives;
/// `report` is told the number answered so far. Returns the seconds spent in the model.
fn ask_pending(
    run: &Asking<'_>,
    responder: &mut dyn Responder,
    pending: &[(usize, usize)],
    caches: &mut [Option<ResponseCache>],
    answers: &mut Answers,
    mut done: usize,
    report: &dyn Fn(usize),
) -> Result<f64> {
    let mut model_s = 0.0;
    let bs = responder.batch_size().max(1);
    for chunk in pending.chunks(bs) {
        let batch: Vec<Request> = chunk.iter().map(|&(si, k)| run.request(si, k)).collect();
        let t = Instant::now();
        let out = match responder.respond(&batch) {
            Ok(out) => out,
            Err(EvalError::PartlyAnswered { answered, error }) => {
                keep_answered(run, chunk, &batch, answered, caches)?;
                return Err(*error);
            }
            Err(e) => return Err(e),
        };
        model_s += t.elapsed().as_secs_f64();
        check_responses(run, &batch, &out)?;
        cache_batch(run, chunk, &batch, &out, caches)?;
        for (&(si, k), r) in chunk.iter().zip(out) {
            answers[si][k] = Some((r, false));
        }
        done += chunk.len();
        report(done);
    }
    Ok(model_s)
}

/// Answer every chosen question: from the cache where it holds the answer, else from the
/// model. Returns the answers, how many came from the cache, and the seconds spent in the model.
fn answer_all(
    run: &Asking<'_>,
    infos: &[SplitInfo],
    responder: &mut dyn Responder,
    opts: &RunOptions,
    cache_identity: &str,
) -> Result<(Answers, usize, f64)> {
    let mut caches = open_caches(infos, opts, cache_identity)?;
    let (mut answers, pending) = look_up(run, &mut caches);
    let total: usize = run.chosen.iter().map(Vec::len).sum();
    let from_cache = total - pending.len();
    let report = |done: usize| {
        if let Some(p) = &opts.progress {
            p(done, total);
        }
    };
    report(from_cache);
    let model_s = ask_pending(
        run,
        responder,
        &pending,
        &mut caches,
        &mut answers,
        from_cache,
        &report,
    )?;
    Ok((answers, from_cache, model_s))
}

/// Pair every chosen question with its answer, for scoring.
fn answered(run: Asking<'_>, answers: Answers) -> Result<Vec<Answered>> {
    let mut items = Vec::new();
    for (si, ((s, chosen), got)) in run.loaded.iter().zip(run.chosen).zip(answers).enumerate() {
        for ((idx, prompt), resp) in chosen.into_iter().zip(got) {
            let q = &s.questions[idx];
            let (resp, cached) = resp.ok_or_else(|| {
                EvalError::responder(run.identity, format!("no answer for {}", q.question_id))
            })?;
            let scored_answer = match (&run.candidates, &resp.scores) {
                (Some(c), Some(sc)) if !resp.unanswered => argmax(sc).map(|i| c[i].clone()),
                _ => None,
            };
            items.push(Answered {
                split: si,
                index: idx,
                question_id: q.question_id.clone(),
                prompt,
                label: q.label.clone(),
                answer: resp.answer,
                scores: resp.scores,
                scored_answer,
                unanswered: resp.unanswered,
                cached,
            });
        }
    }
    Ok(items)
}

/// Run a task against a responder and write `results/<model>/<task>-<timestamp>.json` and its
/// samples file.
///
/// Answers already in the cache for this model identity are reused; new ones are appended to
/// the cache batch by batch, so a killed run resumes where it stopped.
pub fn run_task(
    task_name: &str,
    data: &Path,
    responder: &mut dyn Responder,
    opts: &RunOptions,
) -> Result<TaskResult> {
    let started = Instant::now();
    let spec = task(task_name)?;
    let candidates = check_options(spec, opts)?;
    let model = opts.model_name.clone().unwrap_or_else(|| responder.name());
    let dir = opts.results_dir.join(sanitize(&model, 80));
    // Every output location is checked before any question is asked.
    ensure_writable(&dir)?;
    if opts.use_cache {
        ensure_writable(&opts.cache_dir)?;
    }
    let data_opts = DataOptions {
        images: opts.images.clone(),
        audio: opts.audio.clone(),
    };
    let loaded = load_task_with(task_name, data, &data_opts)?;
    let warnings = responder.check_questions(&loaded)?;
    let template = opts
        .prompt_template
        .clone()
        .unwrap_or_else(|| spec.prompt_template.to_string());
    let synonyms = (spec.metric == MetricKind::Chair)
        .then(|| opts.synonyms.clone().unwrap_or_else(default_synonyms));
    let matcher = synonyms.as_ref().map(ObjectMatcher::new).transpose()?;
    let identity = responder.identity();
    let settings = responder.settings();
    let (infos, chosen) = select_questions(&loaded, opts, &template);

    // The questions' media by content: the cache key and the data identity.
    let limits: Vec<usize> = infos.iter().map(|i| i.selected).collect();
    let hashed = hash_data(data, &loaded, &limits)?;
    check_media(&hashed, responder)?;
    let run = Asking {
        loaded: &loaded,
        chosen,
        media: &hashed.media,
        candidates,
        identity: &identity,
    };
    let cache_id = cache_identity(&identity, &settings);
    let (answers, from_cache, model_s) = answer_all(&run, &infos, responder, opts, &cache_id)?;
    let total: usize = run.chosen.iter().map(Vec::len).sum();
    let items = answered(run, answers)?;
    let unanswered = items.iter().filter(|a| a.unanswered).count();
    let (metrics, samples, unclear) =
        score(spec, &infos, items, matcher.as_ref(), &opts.bootstrap)?;
    let (stamp, created) = timestamps(SystemTime::now());
    let mut result = TaskResult {
        task: spec.name.to_string(),
        model: model.clone(),
        model_identity: identity,
        created,
        config: RunConfig {
            data: data.display().to_string(),
            splits: infos,
            limit: opts.limit,
            shard: opts.shard,
            mode: opts.mode,
            prompt_template: template,
            bootstrap: opts.bootstrap,
            synonyms: synonyms.map(|s| s.into_iter().collect()),
            data_identity: Some(hashed.identity),
            decoding: settings,
        },
        metrics,
        counts: Counts {
            questions: total,
            from_cache,
            fresh: total - from_cache,
            unanswered,
            unclear,
        },
        timing: Timing::default(),
        versions: Versions::default(),
        warnings,
        result_file: None,
        samples_file: None,
        lmms_eval_results: None,
    };
    let base = match opts.shard {
        Some((i, n)) => format!("{}-{stamp}-shard{i}of{n}", spec.name),
        None => format!("{}-{stamp}", spec.name),
    };
    let total_s = started.elapsed().as_secs_f64();
    result.timing = Timing {
        total_s,
        model_s,
        overhead_s: (total_s - model_s).max(0.0),
        hash_s: hashed.seconds,
    };
    write_result(&mut result, &samples, &dir, &base)?;
    Ok(result)
}

/// Read a result file.
pub fn load_result(path: &Path) -> Result<TaskResult> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| EvalError::JsonDocument {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Read a samples file.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EvalError::Json {
                path: path.to_path_buf(),
                line: i + 1,
                source: e,
            })
        })
        .collect()
}

/// The samples file of a result, resolved next to the result file.
pub fn samples_path(result_path: &Path, result: &TaskResult) -> Result<PathBuf> {
    let name = result
        .samples_file
        .as_ref()
        .ok_or_else(|| EvalError::Data {
            path: result_path.to_path_buf(),
            message: "the result names no samples file".to_string(),
        })?;
    Ok(result_path.parent().unwrap_or(Path::new(".")).join(name))
}

/// Merge the results of all shards of one run into one result, written next to the first shard.
pub fn merge(shard_result_paths: &[PathBuf]) -> Result<TaskResult> {
    let dir = shard_result_paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| EvalError::Merge("no shard results given".to_string()))?;
    merge_into(shard_result_paths, &dir)
}

/// The settings shards must share: shards may run on different machines, so data paths may
/// differ; the questions may not.
fn shared_settings(c: &RunConfig) -> RunConfig {
    let mut c = c.clone();
    c.shard = None;
    c.data = String::new();
    for s in &mut c.splits {
        s.run = 0;
        s.source = String::new();
    }
    c
}

/// Refuse a shard that is not of the same run as the first one.
fn check_same_run(p: &Path, r: &TaskResult, first_path: &Path, first: &TaskResult) -> Result<()> {
    if r.task != first.task || r.model_identity != first.model_identity {
        return Err(EvalError::Merge(format!(
            "{} is task {} of model {}, but {} is task {} of model {}",
            p.display(),
            r.task,
            r.model_identity,
            first_path.display(),
            first.task,
            first.model_identity
        )));
    }
    if shared_settings(&r.config) != shared_settings(&first.config) {
        return Err(EvalError::Merge(format!(
            "{} was run with different settings (splits, limit, mode, prompt, bootstrap or \
             synonyms) than {}",
            p.display(),
            first_path.display()
        )));
    }
    if r.versions != first.versions {
        return Err(EvalError::Merge(format!(
            "{} was scored by mmlab-eval {} ({}), {} by {} ({})",
            p.display(),
            r.versions.mmlab_eval,
            r.versions.pope_rule,
            first_path.display(),
            first.versions.mmlab_eval,
            first.versions.pope_rule
        )));
    }
    Ok(())
}

/// Check that the shards are every shard of one run, each once; returns the run's settings
/// (with the first shard's data path and question files).
fn check_shards(shards: &[(PathBuf, TaskResult)]) -> Result<RunConfig> {
    let (first_path, first) = shards
        .first()
        .ok_or_else(|| EvalError::Merge("no shard results given".to_string()))?;
    let n = match first.config.shard {
        Some((_, n)) => n,
        None => {
            return Err(EvalError::Merge(format!(
                "{} is not a shard result",
                first_path.display()
            )))
        }
    };
    let mut want = shared_settings(&first.config);
    want.data = first.config.data.clone();
    for (w, s) in want.splits.iter_mut().zip(&first.config.splits) {
        w.source = s.source.clone();
    }
    let mut seen: Vec<Option<&Path>> = vec![None; n];
    for (p, r) in shards {
        let (i, rn) = r
            .config
            .shard
            .ok_or_else(|| EvalError::Merge(format!("{} is not a shard result", p.display())))?;
        if rn != n || i >= n {
            return Err(EvalError::Merge(format!(
                "{} is shard {i}/{rn}, but {} is one of {n}",
                p.display(),
                first_path.display()
            )));
        }
        check_same_run(p, r, first_path, first)?;
        if let Some(prev) = seen[i] {
            return Err(EvalError::Merge(format!(
                "shard {i}/{n} given twice: {} and {}",
                prev.display(),
                p.display()
            )));
        }
        seen[i] = Some(p);
    }
    if let Some(missing) = seen.iter().position(Option::is_none) {
        return Err(EvalError::Merge(format!("shard {missing}/{n} is missing")));
    }
    Ok(want)
}

/// The answered questions of every shard, read back from their samples files; each question
/// once, and every selected question of every split.
fn shard_answers(
    shards: &[(PathBuf, TaskResult)],
    want: &RunConfig,
    kind: MetricKind,
) -> Result<Vec<Answered>> {
    let mut items = Vec::new();
    let mut keys: HashMap<(String, String), PathBuf> = HashMap::new();
    for (p, r) in shards {
        let sp = samples_path(p, r)?;
        for s in read_samples(&sp)? {
            if let Some(prev) = keys.insert((s.task.clone(), s.question_id.clone()), sp.clone()) {
                return Err(EvalError::Merge(format!(
                    "question {} of {} appears in both {} and {}",
                    s.question_id,
                    s.task,
                    prev.display(),
                    sp.display()
                )));
            }
            items.push(answered_sample(&sp, want, kind, s)?);
        }
    }
    for (si, info) in want.splits.iter().enumerate() {
        let got = items.iter().filter(|a| a.split == si).count();
        if got != info.selected {
            return Err(EvalError::Merge(format!(
                "split {} has {got} answered questions across the shards, expected {}",
                info.task, info.selected
            )));
        }
    }
    Ok(items)
}

/// A sample of the samples file `sp`, as an answered question of the run `want`.
fn answered_sample(sp: &Path, want: &RunConfig, kind: MetricKind, s: Sample) -> Result<Answered> {
    let label = Label::from_json(kind, &s.label).map_err(|m| {
        EvalError::Merge(format!(
            "{}: question {}: label: {m}",
            sp.display(),
            s.question_id
        ))
    })?;
    let split = want
        .splits
        .iter()
        .position(|i| i.task == s.task)
        .ok_or_else(|| {
            EvalError::Merge(format!(
                "{}: question {} is of split {}, which the task does not have",
                sp.display(),
                s.question_id,
                s.task
            ))
        })?;
    Ok(Answered {
        split,
        index: s.index,
        question_id: s.question_id,
        prompt: s.prompt,
        label,
        answer: s.answer,
        scores: s.scores,
        scored_answer: s.scored_answer,
        unanswered: s.unanswered,
        cached: s.cached,
    })
}

/// [`merge`], writing the merged result into `out_dir`.
pub fn merge_into(shard_result_paths: &[PathBuf], out_dir: &Path) -> Result<TaskResult> {
    let started = Instant::now();
    let mut shards = Vec::new();
    for p in shard_result_paths {
        shards.push((p.clone(), load_result(p)?));
    }
    let want = check_shards(&shards)?;
    let first = &shards[0].1;
    let spec = task(&first.task)?;
    let items = shard_answers(&shards, &want, spec.metric)?;
    let matcher = want
        .synonyms
        .as_ref()
        .map(|s| ObjectMatcher::new(&s.clone().into_iter().collect()))
        .transpose()?;
    let unanswered = items.iter().filter(|a| a.unanswered).count();
    let total = items.len();
    let (metrics, samples, unclear) =
        score(spec, &want.splits, items, matcher.as_ref(), &want.bootstrap)?;
    let mut config = want.clone();
    for s in &mut config.splits {
        s.run = s.selected;
    }
    let (stamp, created) = timestamps(SystemTime::now());
    let model_s: f64 = shards.iter().map(|(_, r)| r.timing.model_s).sum();
    let shard_total: f64 = shards.iter().map(|(_, r)| r.timing.total_s).sum();
    let total_s = shard_total + started.elapsed().as_secs_f64();
    let mut result = TaskResult {
        task: first.task.clone(),
        model: first.model.clone(),
        model_identity: first.model_identity.clone(),
        created,
        config,
        metrics,
        counts: Counts {
            questions: total,
            from_cache: shards.iter().map(|(_, r)| r.counts.from_cache).sum(),
            fresh: shards.iter().map(|(_, r)| r.counts.fresh).sum(),
            unanswered,
            unclear,
        },
        timing: Timing {
            total_s,
            model_s,
            overhead_s: (total_s - model_s).max(0.0),
            hash_s: shards.iter().map(|(_, r)| r.timing.hash_s).sum(),
        },
        versions: Versions::default(),
        warnings: first.warnings.clone(),
        result_file: None,
        samples_file: None,
        lmms_eval_results: None,
    };
    write_result(
        &mut result,
        &samples,
        out_dir,
        &format!("{}-{stamp}", first.task),
    )?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_942_065);
        assert_eq!(timestamps(t).1, "2026-11-29T08:47:45Z");
        assert_eq!(timestamps(t).0, "20261129T084745Z");
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(parse_shard("0/4").unwrap(), (0, 4));
        assert_eq!(parse_shard(" 3 / 4 ").unwrap(), (3, 4));
        for bad in ["4/4", "1/0", "x/2", "1", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
