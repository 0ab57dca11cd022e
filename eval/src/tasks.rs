//! The task registry and the question-file loader.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};
use crate::fxhash::{map_with_capacity, FxHashMap};

/// The kind of media file a task's questions carry: what the model is given besides the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// An image, from the question's `image` field (relative to `images/`).
    Image,
    /// An audio clip, from the question's `audio` field (relative to `audio/`).
    Audio,
}

/// How a raw answer is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParserKind {
    /// The POPE authors' yes/no rule ([`crate::parse::parse_yes_no`]).
    YesNo,
    /// First integer or number word ([`crate::parse::parse_count`]).
    Count,
    /// Object mentions in a caption ([`crate::chair::ObjectMatcher`]).
    Caption,
    /// Yes/no by the POPE authors' rule for yes/no labels, else the first colour word
    /// ([`crate::compositional::parse_short_answer`]).
    ShortAnswer,
}

/// Which metrics a task reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Accuracy, precision, recall, F1, yes-ratio per split and their mean.
    Pope,
    /// Exact accuracy, mean absolute error, off-by-one accuracy, accuracy per true count.
    Count,
    /// CHAIR_i, CHAIR_s and object recall.
    Chair,
    /// Accuracy on seen and on held-out colour–shape pairs, and the gap.
    Compositional,
}

/// One question file of a task.
#[derive(Clone, Copy, Debug)]
pub struct SplitSpec {
    /// The task name of this split alone, used as `Request::task` and in cache keys.
    pub task: &'static str,
    /// The short split name (`random`, `popular`, `adversarial`, or the task name).
    pub split: &'static str,
    /// File names that hold this split, in a dataset's `questions/` folder or a folder a user names.
    pub files: &'static [&'static str],
}

/// A registered evaluation task.
#[derive(Clone, Copy, Debug)]
pub struct TaskSpec {
    /// The name used on the command line.
    pub name: &'static str,
    /// One line describing the task.
    pub description: &'static str,
    /// Image or audio.
    pub media: MediaKind,
    /// The question files, one per split.
    pub splits: &'static [SplitSpec],
    /// The prompt the model sees; `{question}` is replaced by the question text and `{object}` by
    /// the counted object (counting tasks).
    pub prompt_template: &'static str,
    /// How answers are read.
    pub parser: ParserKind,
    /// Which metrics are reported.
    pub metric: MetricKind,
    /// The fixed answers scored in candidate mode (none for free-form captions).
    pub candidates: Option<&'static [&'static str]>,
}

const YES_NO: &[&str] = &["yes", "no"];
const COUNTS: &[&str] = &[
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20",
];

const POPE_RANDOM: SplitSpec = SplitSpec {
    task: "pope-random",
    split: "random",
    files: &[
        "pope-random.jsonl",
        "coco_pope_random.json",
        "coco_pope_random.jsonl",
    ],
};
const POPE_POPULAR: SplitSpec = SplitSpec {
    task: "pope-popular",
    split: "popular",
    files: &[
        "pope-popular.jsonl",
        "coco_pope_popular.json",
        "coco_pope_popular.jsonl",
    ],
};
const POPE_ADVERSARIAL: SplitSpec = SplitSpec {
    task: "pope-adversarial",
    split: "adversarial",
    files: &[
        "pope-adversarial.jsonl",
        "coco_pope_adversarial.json",
        "coco_pope_adversarial.jsonl",
    ],
};
const AUDIO_POPE_RANDOM: SplitSpec = SplitSpec {
    task: "audio-pope-random",
    split: "random",
    files: &["audio-pope-random.jsonl"],
};
const AUDIO_POPE_POPULAR: SplitSpec = SplitSpec {
    task: "audio-pope-popular",
    split: "popular",
    files: &["audio-pope-popular.jsonl"],
};
const AUDIO_POPE_ADVERSARIAL: SplitSpec = SplitSpec {
    task: "audio-pope-adversarial",
    split: "adversarial",
    files: &["audio-pope-adversarial.jsonl"],
};

const ATTRIBUTE_SEEN: SplitSpec = SplitSpec {
    task: "attribute",
    split: "seen",
    files: &["attribute.jsonl"],
};
const COMPOSITIONAL_HELD_OUT: SplitSpec = SplitSpec {
    task: "compositional-held-out",
    split: "held-out",
    files: &["compositional.jsonl"],
};

const fn pope_task(
    name: &'static str,
    description: &'static str,
    media: MediaKind,
    splits: &'static [SplitSpec],
) -> TaskSpec {
    TaskSpec {
        name,
        description,
        media,
        splits,
        prompt_template: "{question}",
        parser: ParserKind::YesNo,
        metric: MetricKind::Pope,
        candidates: Some(YES_NO),
    }
}

static TASKS: &[TaskSpec] = &[
    pope_task(
        "pope",
        "POPE object hallucination, all three splits (random, popular, adversarial)",
        MediaKind::Image,
        &[POPE_RANDOM, POPE_POPULAR, POPE_ADVERSARIAL],
    ),
    pope_task(
        "pope-random",
        "POPE, random negatives",
        MediaKind::Image,
        &[POPE_RANDOM],
    ),
    pope_task(
        "pope-popular",
        "POPE, negatives among the most frequent objects",
        MediaKind::Image,
        &[POPE_POPULAR],
    ),
    pope_task(
        "pope-adversarial",
        "POPE, negatives that co-occur with present objects",
        MediaKind::Image,
        &[POPE_ADVERSARIAL],
    ),
    TaskSpec {
        name: "count",
        description: "How many objects of a kind are in the image",
        media: MediaKind::Image,
        splits: &[SplitSpec {
            task: "count",
            split: "count",
            files: &["count.jsonl"],
        }],
        prompt_template: "{question}",
        parser: ParserKind::Count,
        metric: MetricKind::Count,
        candidates: Some(COUNTS),
    },
    TaskSpec {
        name: "chair",
        description: "CHAIR caption hallucination (CHAIR_i, CHAIR_s)",
        media: MediaKind::Image,
        splits: &[SplitSpec {
            task: "chair",
            split: "chair",
            files: &["chair.jsonl"],
        }],
        prompt_template: "{question}",
        parser: ParserKind::Caption,
        metric: MetricKind::Chair,
        candidates: None,
    },
    TaskSpec {
        name: "compositional",
        description: "Colour-shape pairs seen in training (attribute.jsonl) vs held out \
                      (compositional.jsonl): accuracy of each and the gap",
        media: MediaKind::Image,
        splits: &[ATTRIBUTE_SEEN, COMPOSITIONAL_HELD_OUT],
        prompt_template: "{question}",
        parser: ParserKind::ShortAnswer,
        metric: MetricKind::Compositional,
        candidates: None,
    },
    TaskSpec {
        name: "compositional-held-out",
        description: "Questions about colour-shape pairs never seen in training",
        media: MediaKind::Image,
        splits: &[COMPOSITIONAL_HELD_OUT],
        prompt_template: "{question}",
        parser: ParserKind::ShortAnswer,
        metric: MetricKind::Compositional,
        candidates: None,
    },
    TaskSpec {
        name: "attribute",
        description: "The same questions about colour-shape pairs seen in training (the control)",
        media: MediaKind::Image,
        splits: &[ATTRIBUTE_SEEN],
        prompt_template: "{question}",
        parser: ParserKind::ShortAnswer,
        metric: MetricKind::Compositional,
        candidates: None,
    },
    pope_task(
        "audio-pope",
        "POPE for sounds, all three splits (random, popular, adversarial)",
        MediaKind::Audio,
        &[
            AUDIO_POPE_RANDOM,
            AUDIO_POPE_POPULAR,
            AUDIO_POPE_ADVERSARIAL,
        ],
    ),
    pope_task(
        "audio-pope-random",
        "POPE for sounds, random negatives",
        MediaKind::Audio,
        &[AUDIO_POPE_RANDOM],
    ),
    pope_task(
        "audio-pope-popular",
        "POPE for sounds, frequent negatives",
        MediaKind::Audio,
        &[AUDIO_POPE_POPULAR],
    ),
    pope_task(
        "audio-pope-adversarial",
        "POPE for sounds, co-occurring negatives",
        MediaKind::Audio,
        &[AUDIO_POPE_ADVERSARIAL],
    ),
    TaskSpec {
        name: "audio-count",
        description: "How many sounds of a kind are in the clip",
        media: MediaKind::Audio,
        splits: &[SplitSpec {
            task: "audio-count",
            split: "audio-count",
            files: &["audio-count.jsonl"],
        }],
        prompt_template: "{question}",
        parser: ParserKind::Count,
        metric: MetricKind::Count,
        candidates: Some(COUNTS),
    },
];

/// All registered tasks, in display order.
pub fn tasks() -> &'static [TaskSpec] {
    TASKS
}

/// Look a task up by name.
pub fn task(name: &str) -> Result<&'static TaskSpec> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| EvalError::UnknownTask {
            name: name.to_string(),
            known: TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
        })
}

/// The ground truth of one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Label {
    /// POPE: is the object present (`true` = "yes").
    YesNo(bool),
    /// Counting: the true count.
    Count(u32),
    /// CHAIR: the objects truly present.
    Objects(Vec<String>),
    /// A short answer (compositional tasks): `yes`, `no` or a colour word, lower case.
    Word(String),
}

impl Label {
    /// The label as it is written in `samples.jsonl`.
    pub fn to_json(&self) -> Value {
        match self {
            Label::YesNo(true) => Value::from("yes"),
            Label::YesNo(false) => Value::from("no"),
            Label::Count(n) => Value::from(*n),
            Label::Objects(o) => Value::from(o.clone()),
            Label::Word(w) => Value::from(w.clone()),
        }
    }

    /// Read a label of the given kind from a JSON value (a question-file field or a sample).
    pub fn from_json(kind: MetricKind, v: &Value) -> std::result::Result<Label, String> {
        match kind {
            MetricKind::Pope => match v.as_str().map(|s| s.trim().to_ascii_lowercase()) {
                Some(s) if s == "yes" => Ok(Label::YesNo(true)),
                Some(s) if s == "no" => Ok(Label::YesNo(false)),
                _ => Err(format!("expected \"yes\" or \"no\", found {v}")),
            },
            MetricKind::Count => {
                let n = match v {
                    Value::String(s) => s.trim().parse::<u32>().ok(),
                    Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                    _ => None,
                };
                n.map(Label::Count)
                    .ok_or_else(|| format!("expected a non-negative integer count, found {v}"))
            }
            MetricKind::Compositional => match v.as_str().map(|s| s.trim().to_lowercase()) {
                Some(s) if !s.is_empty() => Ok(Label::Word(s)),
                _ => Err(format!(
                    "expected a short answer (\"yes\", \"no\" or a colour), found {v}"
                )),
            },
            MetricKind::Chair => match v.as_array() {
                Some(items) => items
                    .iter()
                    .map(|o| {
                        o.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("expected object names (strings), found {o}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Label::Objects),
                None => Err(format!("expected a list of object names, found {v}")),
            },
        }
    }
}

/// One question of a split, with its media resolved to a path.
#[derive(Clone, Debug)]
pub struct Question {
    /// The question id as a string (integers are written in decimal).
    pub question_id: String,
    /// Position among the split's questions (0-based), the order results are reported in.
    pub index: usize,
    /// 1-based line in the question file.
    pub line: usize,
    /// The question text.
    pub text: String,
    /// The counted object, when the file names one.
    pub object: Option<String>,
    /// The image to show, for image tasks.
    pub image: Option<PathBuf>,
    /// The audio clip to play, for audio tasks.
    pub audio: Option<PathBuf>,
    /// The ground truth.
    pub label: Label,
}

/// The questions of one split, read from one file.
#[derive(Clone, Debug)]
pub struct LoadedSplit {
    /// The split's task name (`pope-random`), used as `Request::task`.
    pub task: String,
    /// The short split name (`random`).
    pub split: String,
    /// The file the questions came from.
    pub source: PathBuf,
    /// The questions, in file order.
    pub questions: Vec<Question>,
}

/// Where media files live when the defaults (`images/`, `audio/` next to the questions) do not fit.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// Folder the `image` fields are relative to.
    pub images: Option<PathBuf>,
    /// Folder the `audio` fields are relative to.
    pub audio: Option<PathBuf>,
}

/// Load every split of a task from a dataset folder, a folder of question files, or one file.
pub fn load_task(name: &str, data: &Path) -> Result<Vec<LoadedSplit>> {
    load_task_with(name, data, &DataOptions::default())
}

/// [`load_task`] with explicit media folders.
///
/// `data` may be a dataset folder (with `questions/`), a folder holding the question files
/// (our names or the official `coco_pope_<split>.json`), or a single question file. A single
/// file given to a multi-split task (`pope`) is loaded as the split its name identifies.
/// Media paths are resolved against `opts`, else `<root>/images` (or `<root>/audio`) when that
/// folder exists, else `<root>`, where `<root>` is the dataset folder or the file's folder.
pub fn load_task_with(name: &str, data: &Path, opts: &DataOptions) -> Result<Vec<LoadedSplit>> {
    let spec = task(name)?;
    let meta = std::fs::metadata(data).map_err(|e| EvalError::io(data, e))?;
    let mut found: Vec<(&SplitSpec, PathBuf)> = Vec::new();
    let root: PathBuf;
    if meta.is_file() {
        root = data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let split =
            if spec.splits.len() == 1 {
                &spec.splits[0]
            } else {
                split_for_file(spec, data).ok_or_else(|| EvalError::Data {
                    path: data.to_path_buf(),
                    message: format!(
                    "task `{}` has {} splits and the file name does not say which one this is; \
                     name a folder holding all of them, or use one of: {}",
                    spec.name,
                    spec.splits.len(),
                    spec.splits.iter().map(|s| s.task).collect::<Vec<_>>().join(", ")
                ),
                })?
            };
        found.push((split, data.to_path_buf()));
    } else {
        let qdir = data.join("questions");
        let (qdir, r) = if qdir.is_dir() {
            (qdir, data.to_path_buf())
        } else {
            (data.to_path_buf(), data.to_path_buf())
        };
        root = r;
        for split in spec.splits {
            let path = split
                .files
                .iter()
                .map(|f| qdir.join(f))
                .find(|p| p.is_file())
                .ok_or_else(|| EvalError::Data {
                    path: qdir.clone(),
                    message: format!(
                        "no question file for {}; looked for {}",
                        split.task,
                        split.files.join(", ")
                    ),
                })?;
            found.push((split, path));
        }
    }
    let media = match spec.media {
        MediaKind::Image => opts.images.clone(),
        MediaKind::Audio => opts.audio.clone(),
    }
    .unwrap_or_else(|| {
        let sub = root.join(match spec.media {
            MediaKind::Image => "images",
            MediaKind::Audio => "audio",
        });
        if sub.is_dir() {
            sub
        } else {
            root.clone()
        }
    });
    // One thread per split file.
    found
        .into_par_iter()
        .map(|(split, path)| read_question_file(spec, split, &path, &media))
        .collect()
}

/// Which split a single file belongs to, from its name.
fn split_for_file(spec: &TaskSpec, path: &Path) -> Option<&'static SplitSpec> {
    let name = path.file_name()?.to_str()?;
    if let Some(s) = spec.splits.iter().find(|s| s.files.contains(&name)) {
        return Some(s);
    }
    let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
    let mut matches = spec.splits.iter().filter(|s| stem.contains(s.split));
    let first = matches.next()?;
    if matches.next().is_some() {
        None
    } else {
        Some(first)
    }
}

/// The question id of a record: an integer or a string.
pub(crate) fn question_id(v: Option<&Value>) -> std::result::Result<String, String> {
    match v {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(format!("expected an integer or string id, found {other}")),
        None => Err("missing".to_string()),
    }
}

/// The fields of a question line that the loader reads (others are skipped unparsed).
#[derive(Deserialize)]
struct RawQuestion {
    question_id: Option<Value>,
    text: Option<Value>,
    question: Option<Value>,
    image: Option<Value>,
    audio: Option<Value>,
    label: Option<Value>,
    objects: Option<Value>,
    object: Option<Value>,
}

/// Non-blank lines of a text with their 1-based numbers.
pub(crate) fn numbered_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Parse one question line (everything but the duplicate-id check).
fn parse_question(
    spec: &TaskSpec,
    path: &Path,
    media: &Path,
    line: usize,
    raw: &str,
) -> Result<Question> {
    let field_err = |field: &str, message: String| EvalError::Field {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let r: RawQuestion = serde_json::from_str(raw).map_err(|e| EvalError::Json {
        path: path.to_path_buf(),
        line,
        source: e,
    })?;
    let qid = question_id(r.question_id.as_ref()).map_err(|m| field_err("question_id", m))?;
    let qtext = match r.text.or(r.question) {
        Some(Value::String(t)) => t,
        _ => {
            return Err(field_err(
                "text",
                "expected the question as a string".to_string(),
            ))
        }
    };
    let (media_field, media_value) = match spec.media {
        MediaKind::Image => ("image", r.image),
        MediaKind::Audio => ("audio", r.audio),
    };
    let media_path = match media_value {
        Some(Value::String(m)) if !m.is_empty() => media.join(m),
        _ => {
            return Err(field_err(
                media_field,
                format!("expected a file name relative to {}", media.display()),
            ))
        }
    };
    let (label_field, label_value) = match spec.metric {
        MetricKind::Chair => ("objects", r.objects),
        _ => ("label", r.label),
    };
    let label_value = label_value.ok_or_else(|| field_err(label_field, "missing".to_string()))?;
    let label =
        Label::from_json(spec.metric, &label_value).map_err(|m| field_err(label_field, m))?;
    let object = match r.object {
        Some(Value::String(o)) => Some(o),
        _ => None,
    };
    let (image, audio) = match spec.media {
        MediaKind::Image => (Some(media_path), None),
        MediaKind::Audio => (None, Some(media_path)),
    };
    Ok(Question {
        question_id: qid,
        index: 0,
        line,
        text: qtext,
        object,
        image,
        audio,
        label,
    })
}

/// Read one question file of a split.
fn read_question_file(
    spec: &TaskSpec,
    split: &SplitSpec,
    path: &Path,
    media: &Path,
) -> Result<LoadedSplit> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let lines = numbered_lines(&text);
    let mut questions = Vec::with_capacity(lines.len());
    let mut seen: FxHashMap<&str, usize> = map_with_capacity(lines.len());
    for &(line, raw) in &lines {
        let mut q = parse_question(spec, path, media, line, raw)?;
        q.index = questions.len();
        questions.push(q);
    }
    for q in &questions {
        if let Some(&first_line) = seen.get(q.question_id.as_str()) {
            return Err(EvalError::DuplicateId {
                path: path.to_path_buf(),
                line: q.line,
                first_line,
                question_id: q.question_id.clone(),
            });
        }
        seen.insert(&q.question_id, q.line);
    }
    if questions.is_empty() {
        return Err(EvalError::Data {
            path: path.to_path_buf(),
            message: "the question file holds no questions".to_string(),
        });
    }
    Ok(LoadedSplit {
        task: split.task.to_string(),
        split: split.split.to_string(),
        source: path.to_path_buf(),
        questions,
    })
}

/// Fill a prompt template with a question.
pub fn render_prompt(template: &str, q: &Question) -> String {
    let mut p = template.replace("{question}", &q.text);
    if p.contains("{object}") {
        p = p.replace("{object}", q.object.as_deref().unwrap_or(""));
    }
    p
}
