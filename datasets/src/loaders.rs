//! Loaders for real benchmark files: POPE question files, POPE ground-truth object
//! lists, COCO instance annotations, counting QA files (CountBenchQA, PixMo-Count,
//! TallyQA shapes) and this crate's own JSON-lines files.
//! Every error names the file and the line (or record) at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DatasetError, Result};
use crate::pope::{AnnotatedItem, CountItem, PopeQuestion};

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, e))
}

/// serde_json's message without its own (record-relative) position.
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &s[..i], e.column()),
        None => s,
    }
}

/// Non-empty lines of a JSON-lines text with their 1-based line numbers.
fn json_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
}

/// Reads a JSON-lines file into records of type `T`; blank lines are skipped.
pub fn load_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = read_text(path)?;
    json_lines(&text)
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| DatasetError::parse(path, n, json_message(&e)))
        })
        .collect()
}

/// Reads an official POPE question file (JSON lines of `question_id`, `image`, `text`, `label`).
pub fn load_pope(path: &Path) -> Result<Vec<PopeQuestion>> {
    #[derive(Deserialize)]
    struct Raw {
        question_id: Value,
        #[serde(alias = "audio")]
        image: String,
        text: String,
        label: String,
    }
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in json_lines(&text) {
        let raw: Raw = serde_json::from_str(line)
            .map_err(|e| DatasetError::parse(path, n, json_message(&e)))?;
        let question_id = match &raw.question_id {
            Value::Number(x) => x.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            DatasetError::parse(
                path,
                n,
                format!(
                    "question_id {} is not a non-negative integer",
                    raw.question_id
                ),
            )
        })?;
        let label = match raw.label.trim().to_ascii_lowercase().as_str() {
            "yes" => crate::pope::YesNo::Yes,
            "no" => crate::pope::YesNo::No,
            other => {
                return Err(DatasetError::parse(
                    path,
                    n,
                    format!("label {other:?} is neither \"yes\" nor \"no\""),
                ))
            }
        };
        out.push(PopeQuestion {
            question_id,
            image: raw.image,
            text: raw.text,
            label,
        });
    }
    Ok(out)
}

/// A POPE question file together with the folder its images live in.
#[derive(Clone, Debug)]
pub struct PopeFile {
    /// The question file.
    pub path: PathBuf,
    /// The image folder.
    pub image_dir: PathBuf,
    /// The questions, in file order.
    pub questions: Vec<PopeQuestion>,
}

impl PopeFile {
    /// Full path of a question's image.
    pub fn image_path(&self, q: &PopeQuestion) -> PathBuf {
        self.image_dir.join(&q.image)
    }

    /// Distinct image names, first occurrence first.
    pub fn images(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.questions
            .iter()
            .filter(|q| seen.insert(q.image.as_str()))
            .map(|q| q.image.as_str())
            .collect()
    }
}

/// Reads a POPE file and checks that every image it names exists in `image_dir`.
pub fn load_pope_with_images(path: &Path, image_dir: &Path) -> Result<PopeFile> {
    let questions = load_pope(path)?;
    let text = read_text(path)?;
    let lines: Vec<usize> = json_lines(&text).map(|(n, _)| n).collect();
    let mut checked: HashMap<&str, bool> = HashMap::new();
    for (q, &n) in questions.iter().zip(lines.iter()) {
        let ok = *checked
            .entry(q.image.as_str())
            .or_insert_with(|| image_dir.join(&q.image).is_file());
        if !ok {
            return Err(DatasetError::parse(
                path,
                n,
                format!("image {:?} not found in {}", q.image, image_dir.display()),
            ));
        }
    }
    Ok(PopeFile {
        path: path.to_path_buf(),
        image_dir: image_dir.to_path_buf(),
        questions,
    })
}

/// Reads POPE's ground-truth object file (`{"image": ..., "objects": [...]}` per line).
pub fn load_object_lists(path: &Path) -> Result<Vec<AnnotatedItem>> {
    let mut items: Vec<AnnotatedItem> = load_jsonl(path)?;
    for it in &mut items {
        let mut seen = Vec::with_capacity(it.objects.len());
        for o in it.objects.drain(..) {
            if !seen.contains(&o) {
                seen.push(o);
            }
        }
        it.objects = seen;
    }
    Ok(items)
}

/// One image of a COCO instances file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    /// Image id.
    pub id: u64,
    /// File name relative to the image folder.
    pub file_name: String,
    /// Width in pixels.
    #[serde(default)]
    pub width: u32,
    /// Height in pixels.
    #[serde(default)]
    pub height: u32,
}

/// One instance annotation of a COCO instances file (segmentation is skipped).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Annotation id.
    #[serde(default)]
    pub id: u64,
    /// The image it belongs to.
    pub image_id: u64,
    /// Its category.
    pub category_id: u64,
    /// Box `[x, y, width, height]`.
    #[serde(default)]
    pub bbox: Vec<f64>,
    /// Area in pixels.
    #[serde(default)]
    pub area: f64,
    /// 1 for crowd regions.
    #[serde(default)]
    pub iscrowd: u8,
}

/// One category of a COCO instances file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: u64,
    /// Category name ("traffic light").
    pub name: String,
    /// Parent category name.
    #[serde(default)]
    pub supercategory: String,
}

/// A COCO instances file (`images`, `annotations`, `categories`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CocoInstances {
    /// The images.
    pub images: Vec<CocoImage>,
    /// The instance annotations.
    pub annotations: Vec<CocoAnnotation>,
    /// The categories.
    pub categories: Vec<CocoCategory>,
}

impl CocoInstances {
    /// Distinct category names of each image, in annotation order (POPE's input form).
    /// Images without annotations get an empty list.
    pub fn object_lists(&self) -> Vec<AnnotatedItem> {
        let names: HashMap<u64, &str> = self
            .categories
            .iter()
            .map(|c| (c.id, c.name.as_str()))
            .collect();
        let mut per_image: HashMap<u64, Vec<String>> = HashMap::new();
        for a in &self.annotations {
            if let Some(n) = names.get(&a.category_id) {
                let list = per_image.entry(a.image_id).or_default();
                if !list.iter().any(|x| x == n) {
                    list.push((*n).to_string());
                }
            }
        }
        self.images
            .iter()
            .map(|im| AnnotatedItem {
                media: im.file_name.clone(),
                objects: per_image.remove(&im.id).unwrap_or_default(),
            })
            .collect()
    }

    /// Count of every category in each image (zeros included), for counting questions.
    pub fn count_items(&self) -> Vec<CountItem> {
        let mut counts: HashMap<(u64, u64), usize> = HashMap::new();
        for a in &self.annotations {
            *counts.entry((a.image_id, a.category_id)).or_insert(0) += 1;
        }
        self.images
            .iter()
            .map(|im| CountItem {
                media: im.file_name.clone(),
                counts: self
                    .categories
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            counts.get(&(im.id, c.id)).copied().unwrap_or(0),
                        )
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Reads a COCO instances JSON file and checks that every annotation points at a
/// known image and category.
pub fn load_coco(path: &Path) -> Result<CocoInstances> {
    #[derive(Deserialize)]
    struct Raw {
        images: Vec<CocoImage>,
        annotations: Vec<CocoAnnotation>,
        categories: Vec<CocoCategory>,
        #[serde(flatten)]
        _rest: HashMap<String, IgnoredAny>,
    }
    let text = read_text(path)?;
    let raw: Raw = serde_json::from_str(&text).map_err(|e| {
        DatasetError::parse(
            path,
            e.line(),
            format!("COCO instances file: {}", json_message(&e)),
        )
    })?;
    let images: std::collections::HashSet<u64> = raw.images.iter().map(|i| i.id).collect();
    let cats: std::collections::HashSet<u64> = raw.categories.iter().map(|c| c.id).collect();
    for (i, a) in raw.annotations.iter().enumerate() {
        if !images.contains(&a.image_id) {
            return Err(DatasetError::Invalid {
                path: path.to_path_buf(),
                location: format!("annotations[{i}] (id {})", a.id),
                message: format!("image_id {} is not in `images`", a.image_id),
            });
        }
        if !cats.contains(&a.category_id) {
            return Err(DatasetError::Invalid {
                path: path.to_path_buf(),
                location: format!("annotations[{i}] (id {})", a.id),
                message: format!("category_id {} is not in `categories`", a.category_id),
            });
        }
    }
    Ok(CocoInstances {
        images: raw.images,
        annotations: raw.annotations,
        categories: raw.categories,
    })
}

/// One counting question read from a CountBenchQA-, PixMo-Count-, TallyQA-shaped or mmlab file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRecord {
    /// 1-based line of the record in its file.
    pub line: usize,
    /// Image path or URL.
    pub image: String,
    /// The question, when the file has one.
    pub question: Option<String>,
    /// The object counted, when the file names it (PixMo-Count `label`, mmlab `object`).
    pub object: Option<String>,
    /// The true count.
    pub count: u32,
}

impl CountRecord {
    /// The question text: the file's own, or "How many {object} are there in the image?".
    pub fn question_text(&self) -> Option<String> {
        self.question.clone().or_else(|| {
            self.object
                .as_ref()
                .map(|o| format!("How many {o} are there in the image?"))
        })
    }
}

fn count_from(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|x| u32::try_from(x).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn count_record(v: &Value, line: usize) -> std::result::Result<CountRecord, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind_of(v)))?;
    let s = |k: &str| obj.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let image = s("image")
        .or_else(|| s("image_url"))
        .or_else(|| s("image_path"))
        .or_else(|| s("file_name"))
        .ok_or(
            "missing image field (one of \"image\", \"image_url\", \"image_path\", \"file_name\")",
        )?;
    let question = s("question").or_else(|| s("text"));
    let text_label = s("label").filter(|l| l.trim().parse::<u32>().is_err());
    let object = s("object").or(text_label);
    let (key, value) = ["number", "count", "answer", "label"]
        .iter()
        .find_map(|k| obj.get(*k).filter(|v| count_from(v).is_some()).map(|v| (*k, v)))
        .or_else(|| {
            ["number", "count", "answer"]
                .iter()
                .find_map(|k| obj.get(*k).map(|v| (*k, v)))
        })
        .ok_or("missing count field (one of \"number\", \"count\", \"answer\", or a numeric \"label\")")?;
    let count = count_from(value)
        .ok_or_else(|| format!("field {key:?} = {value} is not a non-negative integer count"))?;
    Ok(CountRecord {
        line,
        image,
        question,
        object,
        count,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Byte offsets of the top-level elements of a JSON array text (string-aware scan).
fn array_elements(text: &str) -> Option<Vec<(usize, usize)>> {
    let bytes = text.as_bytes();
    let start = text.find('[')?;
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escape = false;
    let mut elem_start: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate().skip(start + 1) {
        if in_str {
            if escape {
                escape = false;
            } else if b == b'\\' {
                escape = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                elem_start.get_or_insert(i);
            }
            b'{' | b'[' => {
                depth += 1;
                elem_start.get_or_insert(i);
            }
            b'}' | b']' if depth > 0 => depth -= 1,
            b']' => {
                if let Some(s) = elem_start.take() {
                    out.push((s, i));
                }
                return Some(out);
            }
            b',' if depth == 0 => {
                if let Some(s) = elem_start.take() {
                    out.push((s, i));
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                elem_start.get_or_insert(i);
            }
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Reads counting questions from JSON lines or a JSON array. Accepts
/// CountBenchQA-like `{"image", "question", "number"}`, PixMo-Count-like
/// `{"image_url"|"image", "label": "dog", "count"}`, TallyQA-like
/// `{"image", "question", "answer"}` and mmlab's own `count.jsonl`.
pub fn load_count_qa(path: &Path) -> Result<Vec<CountRecord>> {
    let text = read_text(path)?;
    if text.trim_start().starts_with('[') {
        // A JSON array: check syntax first (serde's line numbers are file lines here).
        let values: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            DatasetError::parse(path, e.line(), format!("JSON array: {}", json_message(&e)))
        })?;
        let spans = array_elements(&text).unwrap_or_default();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let line = spans.get(i).map(|(s, _)| line_of(&text, *s)).unwrap_or(0);
                count_record(v, line).map_err(|m| {
                    DatasetError::parse(path, line, format!("record {} of the array: {m}", i + 1))
                })
            })
            .collect()
    } else {
        json_lines(&text)
            .map(|(n, line)| {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| DatasetError::parse(path, n, json_message(&e)))?;
                count_record(&v, n).map_err(|m| DatasetError::parse(path, n, m))
            })
            .collect()
    }
}

/// One line of a dataset's `train.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Image file relative to `images/`, when the question needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Audio file relative to `audio/`, when the question needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// Question kind.
    pub kind: crate::questions::QaKind,
    /// Question text.
    pub question: String,
    /// Expected answer.
    pub answer: String,
}

/// Reads a dataset's `train.jsonl`.
pub fn load_train(path: &Path) -> Result<Vec<TrainRecord>> {
    load_jsonl(path)
}
