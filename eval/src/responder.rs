//! The model interface the harness calls, and the responders that live here: a predictions
//! file, an oracle, a constant answer and a seeded random answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::fxhash::FxHashMap;
use crate::interop::{PredictionFormat, Record};
use crate::tasks::{Label, LoadedSplit};

/// One question put to a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The split's task name (`pope-random`, `count`, …).
    pub task: String,
    /// The question id, unique within the task.
    pub question_id: String,
    /// The text the model sees.
    pub prompt: String,
    /// The image to show, for image tasks.
    pub image: Option<PathBuf>,
    /// The audio clip to play, for audio tasks.
    pub audio: Option<PathBuf>,
    /// When set, score these answers (e.g. log-likelihoods of "yes" and "no") instead of
    /// generating one.
    pub candidates: Option<Vec<String>>,
}

/// A model's reply to one [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The generated text (in candidate mode the harness uses the best-scored candidate instead).
    pub answer: String,
    /// One score per candidate, higher is better (e.g. log-likelihoods), when candidates were asked.
    #[serde(default, with = "score_serde")]
    pub scores: Option<Vec<f32>>,
    /// The model gave no answer at all (counted wrong, never as a "yes").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unanswered: bool,
}

impl Response {
    /// A generated answer.
    pub fn text(answer: impl Into<String>) -> Self {
        Response {
            answer: answer.into(),
            scores: None,
            unanswered: false,
        }
    }

    /// Candidate scores (and the answer text the model would give).
    pub fn scored(answer: impl Into<String>, scores: Vec<f32>) -> Self {
        Response {
            answer: answer.into(),
            scores: Some(scores),
            unanswered: false,
        }
    }

    /// No answer.
    pub fn unanswered() -> Self {
        Response {
            answer: String::new(),
            scores: None,
            unanswered: true,
        }
    }
}

/// JSON for scores that may be infinite or NaN (written as the strings "inf", "-inf", "NaN").
pub(crate) mod score_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Option<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
        let vals: Option<Vec<Value>> = v.as_ref().map(|v| {
            v.iter()
                .map(|&x| {
                    if x.is_finite() {
                        Value::from(x)
                    } else if x.is_nan() {
                        Value::from("NaN")
                    } else if x > 0.0 {
                        Value::from("inf")
                    } else {
                        Value::from("-inf")
                    }
                })
                .collect()
        });
        vals.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
        let vals: Option<Vec<Value>> = Option::deserialize(d)?;
        vals.map(|v| {
            v.into_iter()
                .map(|x| match &x {
                    Value::Number(n) => n
                        .as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| serde::de::Error::custom(format!("bad score {x}"))),
                    Value::String(s) if s == "NaN" => Ok(f32::NAN),
                    Value::String(s) if s == "inf" => Ok(f32::INFINITY),
                    Value::String(s) if s == "-inf" => Ok(f32::NEG_INFINITY),
                    _ => Err(serde::de::Error::custom(format!("bad score {x}"))),
                })
                .collect()
        })
        .transpose()
    }
}

/// Anything that answers questions: a model, a predictions file, a test double.
pub trait Responder {
    /// A stable string naming the model and its weights (name + weights hash); the cache key.
    fn identity(&self) -> String;

    /// Answer a batch of requests, one response per request, in order.
    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError>;

    /// How many requests to send per call.
    fn batch_size(&self) -> usize {
        16
    }

    /// A short display name, used for the results folder (defaults to the identity).
    fn name(&self) -> String {
        self.identity()
    }

    /// Whether the responder reads the media files (a model does; a predictions file does not):
    /// a missing image or clip is then an error before any question is asked.
    fn needs_media(&self) -> bool {
        true
    }

    /// Settings besides the weights that change the answers (decoding, input sizes), as JSON;
    /// recorded in every result and part of the cache key.
    fn settings(&self) -> Value {
        Value::Null
    }

    /// Check the task's questions before any is asked: an error stops the run before work
    /// starts; the strings returned are warnings, printed and kept in the result.
    fn check_questions(&mut self, _splits: &[LoadedSplit]) -> Result<Vec<String>, EvalError> {
        Ok(Vec::new())
    }
}

/// Index of the best score (the first among equals; NaN never wins).
pub fn argmax(scores: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if s.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Scores that put `answer` first among `candidates`: 0 for a match, -1 otherwise.
fn match_scores(candidates: &[String], answer: &str) -> Vec<f32> {
    candidates
        .iter()
        .map(|c| {
            if c.trim().eq_ignore_ascii_case(answer.trim()) {
                0.0
            } else {
                -1.0
            }
        })
        .collect()
}

/// Build a response to `req` with `answer` as the text and, when asked, candidate scores.
fn respond_with(req: &Request, answer: String) -> Response {
    match &req.candidates {
        Some(c) => {
            let scores = match_scores(c, &answer);
            Response::scored(answer, scores)
        }
        None => Response::text(answer),
    }
}

/// The answer an oracle gives for a label.
pub fn label_answer(label: &Label) -> String {
    match label {
        Label::YesNo(true) => "Yes".to_string(),
        Label::YesNo(false) => "No".to_string(),
        Label::Count(n) => n.to_string(),
        Label::Word(w) => w.clone(),
        Label::Objects(objs) if objs.is_empty() => "An empty image.".to_string(),
        Label::Objects(objs) => {
            let parts: Vec<String> = objs.iter().map(|o| format!("a {o}")).collect();
            format!("There is {}.", parts.join(" and "))
        }
    }
}

/// Answers every question correctly (from the labels it was built with).
#[derive(Clone, Debug)]
pub struct Oracle {
    answers: HashMap<(String, String), String>,
}

impl Oracle {
    /// An oracle for the questions of these splits.
    pub fn new(splits: &[LoadedSplit]) -> Self {
        let answers = splits
            .iter()
            .flat_map(|s| {
                s.questions.iter().map(move |q| {
                    (
                        (s.task.clone(), q.question_id.clone()),
                        label_answer(&q.label),
                    )
                })
            })
            .collect();
        Oracle { answers }
    }
}

impl Responder for Oracle {
    fn needs_media(&self) -> bool {
        false
    }

    fn identity(&self) -> String {
        "oracle".to_string()
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>> {
        batch
            .iter()
            .map(|r| {
                let a = self
                    .answers
                    .get(&(r.task.clone(), r.question_id.clone()))
                    .ok_or_else(|| {
                        EvalError::responder(
                            "oracle",
                            format!("no label for {} question {}", r.task, r.question_id),
                        )
                    })?;
                Ok(respond_with(r, a.clone()))
            })
            .collect()
    }

    fn batch_size(&self) -> usize {
        1024
    }
}

/// Gives the same answer to every question (e.g. always "Yes").
#[derive(Clone, Debug)]
pub struct Constant(pub String);

impl Responder for Constant {
    fn needs_media(&self) -> bool {
        false
    }

    fn identity(&self) -> String {
        format!("constant:{}", self.0)
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>> {
        Ok(batch
            .iter()
            .map(|r| respond_with(r, self.0.clone()))
            .collect())
    }

    fn batch_size(&self) -> usize {
        1024
    }
}

/// Answers at random, the same way for the same question and seed whatever the batching.
///
/// With candidates it picks one uniformly; otherwise a count in 0..=10 for counting tasks,
/// a caption of two random shapes for `chair`, and "Yes"/"No" with equal odds for the rest.
#[derive(Clone, Debug)]
pub struct RandomResponder {
    /// The seed of every choice.
    pub seed: u64,
}

const RANDOM_SHAPES: [&str; 8] = [
    "circle", "ring", "square", "triangle", "star", "heart", "arrow", "cross",
];

impl RandomResponder {
    fn rng(&self, r: &Request) -> ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(r.task.as_bytes());
        h.update([0]);
        h.update(r.question_id.as_bytes());
        let mut s = [0u8; 32];
        s.copy_from_slice(&h.finalize());
        ChaCha8Rng::from_seed(s)
    }
}

impl Responder for RandomResponder {
    fn needs_media(&self) -> bool {
        false
    }

    fn identity(&self) -> String {
        format!("random:{}", self.seed)
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>> {
        Ok(batch
            .iter()
            .map(|r| {
                let mut rng = self.rng(r);
                if let Some(c) = r.candidates.as_ref().filter(|c| !c.is_empty()) {
                    let pick = rng.random_range(0..c.len());
                    return respond_with(r, c[pick].clone());
                }
                let answer = if r.task.contains("count") {
                    rng.random_range(0..=10u32).to_string()
                } else if r.task.contains("chair") {
                    let a = RANDOM_SHAPES[rng.random_range(0..RANDOM_SHAPES.len())];
                    let b = RANDOM_SHAPES[rng.random_range(0..RANDOM_SHAPES.len())];
                    format!("A {a} and a {b}.")
                } else if rng.random_bool(0.5) {
                    "Yes".to_string()
                } else {
                    "No".to_string()
                };
                Response::text(answer)
            })
            .collect())
    }

    fn batch_size(&self) -> usize {
        1024
    }
}

/// What to do when a predictions file has no answer for a question.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Fail, naming the question id.
    #[default]
    Error,
    /// Count the question as unanswered (wrong, never a "yes").
    Unanswered,
}

/// The fields of a predictions line that are read (others are skipped unparsed).
#[derive(Deserialize)]
struct RawPrediction {
    question_id: Option<Value>,
    answer: Option<Value>,
    text: Option<Value>,
    prediction: Option<Value>,
    task: Option<Value>,
    split: Option<Value>,
    /// The question as the answering system saw it (LLaVA's answer files: `prompt`).
    prompt: Option<Value>,
    question: Option<Value>,
}

/// One parsed predictions line.
struct ParsedPrediction {
    qid: String,
    tag: Option<String>,
    answer: String,
    question: Option<String>,
}

/// Parse one predictions line into its question id and prediction.
fn parse_prediction(path: &Path, line: usize, raw: &str) -> Result<ParsedPrediction> {
    let field_err = |field: &str, message: &str| EvalError::Field {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message: message.to_string(),
    };
    let r: RawPrediction = serde_json::from_str(raw).map_err(|e| EvalError::Json {
        path: path.to_path_buf(),
        line,
        source: e,
    })?;
    let qid = crate::tasks::question_id(r.question_id.as_ref())
        .map_err(|m| field_err("question_id", &m))?;
    let (key, value) = [
        ("answer", r.answer),
        ("text", r.text),
        ("prediction", r.prediction),
    ]
    .into_iter()
    .find(|(_, v)| v.is_some())
    .ok_or_else(|| {
        field_err(
            "answer",
            "missing (also looked for `text` and `prediction`)",
        )
    })?;
    let answer = match value {
        Some(Value::String(a)) => a,
        _ => return Err(field_err(key, "expected a string")),
    };
    // The first of two names a field goes by that is present, which must hold a string.
    let either = |fields: [(&str, Option<Value>); 2], expected: &str| match fields
        .into_iter()
        .find(|(_, v)| v.is_some())
    {
        Some((_, Some(Value::String(s)))) => Ok(Some(s)),
        Some((k, _)) => Err(field_err(k, expected)),
        None => Ok(None),
    };
    let tag = either([("task", r.task), ("split", r.split)], "expected a string")?;
    let question = either(
        [("prompt", r.prompt), ("question", r.question)],
        "expected the question as a string",
    )?;
    Ok(ParsedPrediction {
        qid,
        tag,
        answer,
        question,
    })
}

/// A label as the other harnesses write their ground truth (`yes`, `3`, `red`), compared
/// without case; `None` for labels they have no single answer for (CHAIR).
fn truth_text(label: &Label) -> Option<String> {
    match label {
        Label::YesNo(true) => Some("yes".to_string()),
        Label::YesNo(false) => Some("no".to_string()),
        Label::Count(n) => Some(n.to_string()),
        Label::Word(w) => Some(w.clone()),
        Label::Objects(_) => None,
    }
}

/// Lower case with runs of white space made one space, for comparing question texts.
fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether a predictions line's question text is the question asked: equal after
/// normalising, or one holding the other (LLaVA adds an instruction after the question).
fn same_question(pred: &str, asked: &str) -> bool {
    let (p, a) = (normalise(pred), normalise(asked));
    !p.is_empty() && !a.is_empty() && (p.contains(&a) || a.contains(&p))
}

/// The split a predictions file answers, from its name (`..._random.jsonl`).
fn split_from_name(path: &Path) -> Option<&'static str> {
    let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
    let mut found = ["random", "popular", "adversarial"]
        .into_iter()
        .filter(|s| stem.contains(s));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

#[derive(Clone, Debug)]
struct Prediction {
    /// Index into the interned tags.
    tag: Option<u32>,
    answer: String,
    /// The question text the file gives with the answer, if any.
    question: Option<String>,
    /// The ground truth the file gives with the answer, if any (other harnesses' files).
    truth: Option<String>,
    /// Index into the files read.
    file: u32,
    /// The question id.
    qid: String,
    line: usize,
    /// The next prediction with the same question id.
    next: Option<u32>,
}

/// Answers produced by any external system: JSON lines keyed by question id.
///
/// Each line is `{"question_id": 1, "answer": "Yes, there is."}`; the answer may also be under
/// `"text"` or `"prediction"`, and an optional `"task"` or `"split"` key (`pope-random` or
/// `random`) tells apart splits that share ids. A `"prompt"` or `"question"` key (LLaVA's answer
/// files have `prompt`) is checked against the question asked. Several files can be read as one,
/// one per split, each named after its split (`answers_random.jsonl`).
#[derive(Clone, Debug)]
pub struct PredictionsFile {
    /// The files read (one, or one per split).
    paths: Vec<PathBuf>,
    identity: String,
    name: String,
    /// Question id → first of its predictions (the rest are chained through `next`).
    by_id: FxHashMap<String, u32>,
    preds: Vec<Prediction>,
    tags: Vec<String>,
    /// The format of each file read.
    formats: Vec<PredictionFormat>,
    missing: MissingPolicy,
}

impl PredictionsFile {
    /// Read a predictions file; every malformed line is an error naming the line.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_many(&[path.as_ref().to_path_buf()])
    }

    /// Read one predictions file per split as one; each file's name must say which split it
    /// answers (`random`, `popular` or `adversarial`), and its untagged lines are taken as that
    /// split's.
    pub fn open_many(paths: &[PathBuf]) -> Result<Self> {
        let first = paths
            .first()
            .ok_or_else(|| EvalError::Option("no predictions file given".to_string()))?;
        let mut file_tags: Vec<Option<&'static str>> = vec![None; paths.len()];
        if paths.len() > 1 {
            for (i, p) in paths.iter().enumerate() {
                let split = split_from_name(p).ok_or_else(|| EvalError::Data {
                    path: p.clone(),
                    message: "with one predictions file per split, each file's name must name \
                              its split (random, popular or adversarial)"
                        .to_string(),
                })?;
                if let Some(j) = file_tags.iter().position(|t| *t == Some(split)) {
                    return Err(EvalError::Data {
                        path: p.clone(),
                        message: format!(
                            "names the same split ({split}) as {}",
                            paths[j].display()
                        ),
                    });
                }
                file_tags[i] = Some(split);
            }
        }
        let mut by_id: FxHashMap<String, u32> = FxHashMap::default();
        let mut preds: Vec<Prediction> = Vec::new();
        let mut tags: Vec<String> = Vec::new();
        let mut formats: Vec<PredictionFormat> = Vec::with_capacity(paths.len());
        let mut digest = Sha256::new();
        for (fi, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
            digest.update(Sha256::digest(&bytes));
            let format = crate::interop::detect(path, &bytes);
            formats.push(format);
            let text = || {
                std::str::from_utf8(&bytes).map_err(|e| EvalError::Data {
                    path: path.clone(),
                    message: format!("not UTF-8 text: {e}"),
                })
            };
            let records: Vec<Record> = match format {
                PredictionFormat::Jsonl => crate::tasks::numbered_lines(text()?)
                    .into_iter()
                    .map(|(line, raw)| {
                        parse_prediction(path, line, raw).map(|p| Record {
                            qid: p.qid,
                            tag: p.tag,
                            answer: p.answer,
                            question: p.question,
                            truth: None,
                            line,
                        })
                    })
                    .collect::<Result<_>>()?,
                PredictionFormat::LmmsEvalSamples => {
                    crate::interop::read_lmms_eval_samples(path, text()?)?
                }
                PredictionFormat::VlmEvalKitTsv => {
                    crate::interop::read_vlmevalkit_tsv(path, text()?)?
                }
                PredictionFormat::VlmEvalKitXlsx => {
                    crate::interop::read_vlmevalkit_xlsx(path, &bytes)?
                }
            };
            by_id.reserve(records.len());
            preds.reserve(records.len());
            for p in records {
                let line = p.line;
                let tag = p.tag.or_else(|| file_tags[fi].map(str::to_string));
                let tag = tag.map(|t| match tags.iter().position(|x| *x == t) {
                    Some(i) => i as u32,
                    None => {
                        tags.push(t);
                        (tags.len() - 1) as u32
                    }
                });
                let idx = preds.len() as u32;
                match by_id.get(&p.qid) {
                    Some(&head) => {
                        let mut cur = head;
                        loop {
                            let q = &preds[cur as usize];
                            if q.tag == tag {
                                if q.file as usize != fi {
                                    return Err(EvalError::Data {
                                        path: path.clone(),
                                        message: format!(
                                            "{} {line}: question id {} is also answered in {} \
                                             {} {}",
                                            format.unit(),
                                            p.qid,
                                            paths[q.file as usize].display(),
                                            formats[q.file as usize].unit(),
                                            q.line
                                        ),
                                    });
                                }
                                return Err(EvalError::DuplicateId {
                                    path: path.clone(),
                                    line,
                                    first_line: q.line,
                                    question_id: p.qid,
                                });
                            }
                            match q.next {
                                Some(n) => cur = n,
                                None => break,
                            }
                        }
                        preds[cur as usize].next = Some(idx);
                    }
                    None => {
                        by_id.insert(p.qid.clone(), idx);
                    }
                }
                preds.push(Prediction {
                    qid: p.qid,
                    tag,
                    answer: p.answer,
                    question: p.question,
                    truth: p.truth,
                    file: fi as u32,
                    line,
                    next: None,
                });
            }
        }
        let digest = hex::encode(digest.finalize());
        let name = first
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("predictions")
            .to_string();
        Ok(PredictionsFile {
            identity: format!("predictions:{name}:{}", &digest[..16]),
            name,
            paths: paths.to_vec(),
            by_id,
            preds,
            tags,
            formats,
            missing: MissingPolicy::Error,
        })
    }

    /// Choose what a missing prediction means (default: an error).
    pub fn with_missing(mut self, policy: MissingPolicy) -> Self {
        self.missing = policy;
        self
    }

    /// Number of predictions in the file.
    pub fn len(&self) -> usize {
        self.preds.len()
    }

    /// Whether the file holds no predictions.
    pub fn is_empty(&self) -> bool {
        self.preds.is_empty()
    }

    /// The file a prediction came from.
    fn path_of(&self, p: &Prediction) -> &Path {
        &self.paths[p.file as usize]
    }

    /// Where a prediction is: `file:line` for JSON lines, `file row N` for sheets.
    fn location(&self, p: &Prediction) -> String {
        let f = self.formats[p.file as usize];
        match f.unit() {
            "line" => format!("{}:{}", self.path_of(p).display(), p.line),
            unit => format!("{} {unit} {}", self.path_of(p).display(), p.line),
        }
    }

    /// The format of each file read, in order.
    pub fn formats(&self) -> &[PredictionFormat] {
        &self.formats
    }

    /// Whether a prediction's tag names this split's task (`random` or `pope-random` for
    /// `pope-random`).
    fn tag_matches(&self, p: &Prediction, task: &str) -> bool {
        p.tag.is_some_and(|t| {
            let t = self.tags[t as usize].as_str();
            t == task || task.strip_suffix(t).is_some_and(|rest| rest.ends_with('-'))
        })
    }

    /// The prediction for one question of a split, if any.
    fn lookup(&self, task: &str, question_id: &str) -> Result<Option<&Prediction>> {
        Ok(self
            .lookup_index(task, question_id)?
            .map(|i| &self.preds[i]))
    }

    /// The index of the prediction for one question of a split, if any.
    fn lookup_index(&self, task: &str, question_id: &str) -> Result<Option<usize>> {
        let Some(&first) = self.by_id.get(question_id) else {
            return Ok(None);
        };
        let chain = || {
            std::iter::successors(Some(first as usize), |&i| {
                self.preds[i].next.map(|n| n as usize)
            })
        };
        let tag_matches = |p: &Prediction| self.tag_matches(p, task);
        let untagged = |p: &Prediction| p.tag.is_none();
        let pick = |f: &dyn Fn(&Prediction) -> bool| -> Result<Option<usize>> {
            let mut it = chain().filter(|&i| f(&self.preds[i]));
            let Some(found) = it.next() else {
                return Ok(None);
            };
            if it.next().is_none() {
                return Ok(Some(found));
            }
            Err(EvalError::AmbiguousPrediction {
                path: self.path_of(&self.preds[found]).to_path_buf(),
                task: task.to_string(),
                question_id: question_id.to_string(),
                lines: chain()
                    .filter(|&i| f(&self.preds[i]))
                    .map(|i| self.preds[i].line)
                    .collect(),
            })
        };
        match pick(&tag_matches)? {
            Some(p) => Ok(Some(p)),
            None => pick(&untagged),
        }
    }
}

impl Responder for PredictionsFile {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>> {
        batch
            .iter()
            .map(|r| match self.lookup(&r.task, &r.question_id)? {
                Some(p) => Ok(respond_with(r, p.answer.clone())),
                None => match self.missing {
                    MissingPolicy::Error => Err(EvalError::MissingPrediction {
                        path: self.paths[0].clone(),
                        task: r.task.clone(),
                        question_id: r.question_id.clone(),
                    }),
                    MissingPolicy::Unanswered => Ok(Response::unanswered()),
                },
            })
            .collect()
    }

    fn batch_size(&self) -> usize {
        4096
    }

    fn needs_media(&self) -> bool {
        false
    }

    /// Refuses a multi-split task unless every answer says its split; checks every answer that
    /// carries its question text against the question; warns of answers that match no question.
    fn check_questions(&mut self, splits: &[LoadedSplit]) -> Result<Vec<String>> {
        if splits.len() > 1 {
            if let Some(p) = self.preds.iter().find(|p| p.tag.is_none()) {
                return Err(EvalError::Data {
                    path: self.path_of(p).to_path_buf(),
                    message: format!(
                        "line {}: no `split` or `task` key, and the task has {} splits ({}) whose \
                         question ids may repeat; tag every line with its split, give one file \
                         per split (`--model a_random.jsonl,b_popular.jsonl,...`), or evaluate \
                         one split (`mmlab eval {} ...`)",
                        p.line,
                        splits.len(),
                        splits
                            .iter()
                            .map(|s| s.split.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        splits[0].task
                    ),
                });
            }
        }
        let mut used = vec![false; self.preds.len()];
        let mut mismatched: Vec<String> = Vec::new();
        let mut first_mismatch: Option<String> = None;
        for s in splits {
            for q in &s.questions {
                let Some(idx) = self.lookup_index(&s.task, &q.question_id)? else {
                    continue;
                };
                used[idx] = true;
                let p = &self.preds[idx];
                if let Some(truth) = &p.truth {
                    if let Some(want) = truth_text(&q.label) {
                        if !truth.trim().eq_ignore_ascii_case(&want) {
                            return Err(EvalError::Data {
                                path: self.path_of(p).to_path_buf(),
                                message: format!(
                                    "{}: question id {} of {} has ground truth {truth:?} there, \
                                     but {} line {} says {want:?}; the file answers another \
                                     question file",
                                    self.location(p),
                                    q.question_id,
                                    s.task,
                                    s.source.display(),
                                    q.line
                                ),
                            });
                        }
                    }
                }
                if let Some(text) = &p.question {
                    if !same_question(text, &q.text) {
                        mismatched.push(q.question_id.clone());
                        if first_mismatch.is_none() {
                            first_mismatch = Some(format!(
                                "{}: question id {} of {} answers {:?}, but {} asks {:?}",
                                self.location(p),
                                q.question_id,
                                s.task,
                                text,
                                s.source.display(),
                                q.text
                            ));
                        }
                    }
                }
            }
        }
        if let Some(first) = first_mismatch {
            return Err(EvalError::Data {
                path: self.paths[0].clone(),
                message: format!(
                    "{} answers are to other questions than the ones with their ids (first few: \
                     {}); these are answers to another question file. First: {first}",
                    mismatched.len(),
                    crate::identity::first_few(&mismatched, 5)
                ),
            });
        }
        // Answers tagged with a split this task does not ask are another task's, not strays.
        let other_split = |p: &Prediction| {
            p.tag.is_some() && !splits.iter().any(|s| self.tag_matches(p, &s.task))
        };
        if let Some(p) = self
            .preds
            .iter()
            .zip(&used)
            .find(|(p, u)| !**u && !other_split(p) && self.formats[p.file as usize].strict())
            .map(|(p, _)| p)
        {
            let n = self
                .preds
                .iter()
                .zip(&used)
                .filter(|(p, u)| !**u && !other_split(p))
                .count();
            return Err(EvalError::Data {
                path: self.path_of(p).to_path_buf(),
                message: format!(
                    "{}: question id {}{} matches no question of the task ({} of the file's \
                     answers match none; this is the first): the {} answers another question \
                     file than {}",
                    self.location(p),
                    p.qid,
                    p.tag
                        .map(|t| format!(" ({})", self.tags[t as usize]))
                        .unwrap_or_default(),
                    n,
                    self.formats[p.file as usize].name(),
                    splits
                        .iter()
                        .map(|s| s.source.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let strays: Vec<String> = self
            .preds
            .iter()
            .zip(&used)
            .filter(|(p, u)| !**u && !other_split(p))
            .map(|(p, _)| format!("{}:{}", p.qid, p.line))
            .collect();
        let mut warnings = Vec::new();
        if !strays.is_empty() {
            warnings.push(format!(
                "{} answers in {} match no question of the task and were not scored (id:line, \
                 first few: {})",
                strays.len(),
                self.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::identity::first_few(&strays, 5)
            ));
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(task: &str, id: &str) -> Request {
        Request {
            task: task.into(),
            question_id: id.into(),
            prompt: "Is there a ring in the image?".into(),
            image: None,
            audio: None,
            candidates: None,
        }
    }

    #[test]
    fn argmax_prefers_first_and_skips_nan() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -3.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN]), None);
    }

    #[test]
    fn predictions_file_keys_tags_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preds.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"question_id\": 1, \"answer\": \"Yes\", \"split\": \"random\"}\n",
                "{\"question_id\": 1, \"text\": \"No\", \"task\": \"pope-popular\"}\n",
                "\n",
                "{\"question_id\": \"x7\", \"prediction\": \"3 rings\"}\n",
            ),
        )
        .unwrap();
        let mut f = PredictionsFile::open(&p).unwrap();
        assert_eq!(f.len(), 3);
        let out = f
            .respond(&[
                req("pope-random", "1"),
                req("pope-popular", "1"),
                req("count", "x7"),
            ])
            .unwrap();
        let answers: Vec<&str> = out.iter().map(|r| r.answer.as_str()).collect();
        assert_eq!(answers, ["Yes", "No", "3 rings"]);
        let err = f.respond(&[req("pope-adversarial", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("no prediction for question id 1"),
            "{err}"
        );
        let mut lenient = f.clone().with_missing(MissingPolicy::Unanswered);
        let out = lenient.respond(&[req("count", "404")]).unwrap();
        assert!(out[0].unanswered);
    }

    #[test]
    fn predictions_file_rejects_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("{\"question_id\": 1}\n", ":1: field `answer`"),
            ("{\"question_id\": 1, \"answer\": 5}\n", "field `answer`"),
            ("{\"answer\": \"yes\"}\n", "field `question_id`"),
            ("{\"question_id\": 1, \"answer\": \"y\"}\n{oops\n", ":2:"),
            (
                "{\"question_id\": 1, \"answer\": \"y\"}\n{\"question_id\": 1, \"answer\": \"n\"}\n",
                "duplicate question id 1",
            ),
        ];
        for (i, (content, needle)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("bad{i}.jsonl"));
            std::fs::write(&p, content).unwrap();
            let err = PredictionsFile::open(&p).unwrap_err().to_string();
            assert!(err.contains(needle), "case {i}: {err}");
            assert!(err.contains(&format!("bad{i}.jsonl")), "case {i}: {err}");
        }
    }

    #[test]
    fn ambiguous_untagged_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(
            &p,
            "{\"question_id\": 1, \"answer\": \"Yes\", \"split\": \"random\"}\n{\"question_id\": 1, \"answer\": \"No\", \"task\": \"pope-random\"}\n",
        )
        .unwrap();
        let mut f = PredictionsFile::open(&p).unwrap();
        let err = f.respond(&[req("pope-random", "1")]).unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err}");
    }

    #[test]
    fn random_responder_is_order_independent() {
        let mut r = RandomResponder { seed: 3 };
        let reqs: Vec<Request> = (0..50)
            .map(|i| req("pope-random", &i.to_string()))
            .collect();
        let all = r.respond(&reqs).unwrap();
        let mut rev: Vec<Request> = reqs.clone();
        rev.reverse();
        let mut back = r.respond(&rev).unwrap();
        back.reverse();
        assert_eq!(all, back);
        let mut other = RandomResponder { seed: 4 };
        assert_ne!(all, other.respond(&reqs).unwrap());
    }

    #[test]
    fn constant_scores_its_own_answer_first() {
        let mut c = Constant("Yes".into());
        let mut r = req("pope-random", "1");
        r.candidates = Some(vec!["yes".into(), "no".into()]);
        let out = c.respond(&[r]).unwrap();
        assert_eq!(argmax(out[0].scores.as_ref().unwrap()), Some(0));
    }
}
