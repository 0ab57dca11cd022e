//! Other harnesses' files: lmms-eval `samples_*.jsonl` and VLMEvalKit prediction sheets read as
//! predictions, and lmms-eval's `results.json` layout written for a POPE result.
//!
//! - lmms-eval (`lmms_eval/loggers/evaluation_tracker.py`, EvolvingLMMs-Lab/lmms-eval) writes
//!   one JSON line per document: `doc_id` (the row of its data set, not POPE's question id),
//!   `doc` (the data set row: `question_id`, `question`, `answer`, `category`, `image_source`;
//!   newer versions drop it), `target`, `resps` and `filtered_resps` (what `process_results`
//!   scored: `filtered_resps[0]`), and one entry per metric (`pope_accuracy`: `{question_id,
//!   score, prediction, ground_truth}`).
//! - VLMEvalKit writes `<model>_<dataset>.xlsx` (or `.tsv`): a header row, then one row per
//!   question with `index`, `question`, `answer` (`Yes`/`No`), `category` (the POPE split, or
//!   several joined by commas) and `prediction`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{EvalError, Result};

/// The formats a predictions file may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionFormat {
    /// mmlab's own: JSON lines with `question_id` and `answer` (or `text`, `prediction`).
    Jsonl,
    /// lmms-eval's `samples_<task>.jsonl`.
    LmmsEvalSamples,
    /// VLMEvalKit's prediction sheet as tab-separated text.
    VlmEvalKitTsv,
    /// VLMEvalKit's prediction sheet as an Excel workbook (first sheet).
    VlmEvalKitXlsx,
}

impl PredictionFormat {
    /// What a position in the file is called in errors.
    pub fn unit(self) -> &'static str {
        match self {
            PredictionFormat::Jsonl | PredictionFormat::LmmsEvalSamples => "line",
            PredictionFormat::VlmEvalKitTsv | PredictionFormat::VlmEvalKitXlsx => "row",
        }
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            PredictionFormat::Jsonl => "predictions (JSON lines)",
            PredictionFormat::LmmsEvalSamples => "lmms-eval samples",
            PredictionFormat::VlmEvalKitTsv => "VLMEvalKit sheet (.tsv)",
            PredictionFormat::VlmEvalKitXlsx => "VLMEvalKit sheet (.xlsx)",
        }
    }

    /// Whether answers that match no question are an error (the other harnesses' files hold
    /// every question of their benchmark, so a stray id means another question file) rather
    /// than a warning.
    pub fn strict(self) -> bool {
        self != PredictionFormat::Jsonl
    }
}

/// Tell the format from the file name and, for JSON lines, the first record.
pub fn detect(path: &Path, bytes: &[u8]) -> PredictionFormat {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("xlsx") => return PredictionFormat::VlmEvalKitXlsx,
        Some("tsv") => return PredictionFormat::VlmEvalKitTsv,
        _ => {}
    }
    let first = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.lines().find(|l| !l.trim().is_empty()))
        .and_then(|l| serde_json::from_str::<Map<String, Value>>(l).ok());
    match first {
        Some(o) if o.contains_key("doc_id") && !o.contains_key("question_id") => {
            PredictionFormat::LmmsEvalSamples
        }
        _ => PredictionFormat::Jsonl,
    }
}

/// One answer read from another harness's file.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The question id.
    pub qid: String,
    /// The split it answers, when the file says (`category`).
    pub tag: Option<String>,
    /// The raw answer.
    pub answer: String,
    /// The question text the file gives, to check against the question asked.
    pub question: Option<String>,
    /// The ground truth the file gives, to check against the question file's label.
    pub truth: Option<String>,
    /// 1-based line (JSON lines, TSV) or sheet row.
    pub line: usize,
}

fn data_err(path: &Path, message: String) -> EvalError {
    EvalError::Data {
        path: path.to_path_buf(),
        message,
    }
}

/// An id value (integer, integral float or non-empty string) as text.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| format!("{}", f as i64)),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// The first string of `filtered_resps` (or `resps`), which may nest lists.
fn first_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first().and_then(first_string),
        _ => None,
    }
}

/// Read lmms-eval's `samples_<task>.jsonl`.
pub fn read_lmms_eval_samples(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (line, raw) in crate::tasks::numbered_lines(text) {
        let field = |field: &str, message: String| EvalError::Field {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        };
        let o: Map<String, Value> = serde_json::from_str(raw).map_err(|e| EvalError::Json {
            path: path.to_path_buf(),
            line,
            source: e,
        })?;
        if !o.contains_key("doc_id") {
            return Err(field(
                "doc_id",
                "missing: not an lmms-eval samples line".to_string(),
            ));
        }
        let doc = o.get("doc").and_then(Value::as_object);
        // The question id: the document's, else the one its metrics record.
        let qid = doc
            .and_then(|d| d.get("question_id"))
            .or_else(|| {
                o.values()
                    .filter_map(Value::as_object)
                    .find_map(|m| m.get("question_id"))
            })
            .ok_or_else(|| {
                field(
                    "doc.question_id",
                    "missing (and no metric entry records a question_id); `doc_id` is lmms-eval's \
                     row number, not the question id, so it is not used"
                        .to_string(),
                )
            })?;
        let qid = id_text(qid).ok_or_else(|| {
            field(
                "doc.question_id",
                format!("expected an integer or string id, found {qid}"),
            )
        })?;
        let answer = o
            .get("filtered_resps")
            .and_then(first_string)
            .or_else(|| o.get("resps").and_then(first_string))
            .ok_or_else(|| {
                field(
                    "filtered_resps",
                    "missing or holds no string (also looked at `resps`)".to_string(),
                )
            })?;
        let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let tag = text_of(doc.and_then(|d| d.get("category")));
        let question = text_of(doc.and_then(|d| d.get("question")))
            .or_else(|| text_of(doc.and_then(|d| d.get("text"))))
            .or_else(|| text_of(o.get("input")));
        let truth = text_of(doc.and_then(|d| d.get("answer"))).or_else(|| text_of(o.get("target")));
        out.push(Record {
            qid,
            tag,
            answer,
            question,
            truth,
            line,
        });
    }
    Ok(out)
}

/// Split tab-separated text as pandas writes it (`to_csv(sep='\t')`, minimal quoting: a field
/// with a tab, quote or line break is quoted and its quotes doubled); each row with the 1-based
/// line it starts on.
fn tsv_rows(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut line, mut start) = (1usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            '\t' => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((start, std::mem::take(&mut row)));
                }
                row.clear();
                line += 1;
                start = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(data_err(
            path,
            format!("line {start}: a quoted field is not closed before the end of the file"),
        ));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((start, row));
    }
    Ok(rows)
}

/// Read a sheet's rows (header first) as records.
fn sheet_records(path: &Path, rows: Vec<(usize, Vec<String>)>) -> Result<Vec<Record>> {
    let mut it = rows.into_iter();
    let (header_line, header) = it
        .next()
        .ok_or_else(|| data_err(path, "the sheet is empty (no header row)".to_string()))?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            data_err(
                path,
                format!(
                    "row {header_line}: no `{name}` column; a VLMEvalKit prediction sheet has \
                     index, question, answer, category and prediction (found: {})",
                    header.join(", ")
                ),
            )
        })
    };
    let (index, prediction) = (need("index")?, need("prediction")?);
    let (question, answer, category) = (col("question"), col("answer"), col("category"));
    let mut out = Vec::new();
    for (line, cells) in it {
        let get = |k: Option<usize>| {
            k.and_then(|k| cells.get(k))
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty())
        };
        let qid = get(Some(index))
            .ok_or_else(|| data_err(path, format!("row {line}: the `index` cell is empty")))?;
        let qid = qid
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15 && qid.contains('.'))
            .map_or(qid.clone(), |f| format!("{}", f as i64));
        if cells.len() > header.len() {
            return Err(data_err(
                path,
                format!(
                    "row {line}: {} cells, but the header has {} columns",
                    cells.len(),
                    header.len()
                ),
            ));
        }
        let answer_text = get(Some(prediction)).unwrap_or_default();
        let tags: Vec<Option<String>> = match get(category) {
            Some(c) => c
                .split(',')
                .map(|t| Some(t.trim().to_string()))
                .filter(|t| t.as_ref().is_some_and(|t| !t.is_empty()))
                .collect(),
            None => vec![None],
        };
        // A question of several splits (`popular,random`) answers each of them, as VLMEvalKit's
        // `POPE_rating` explodes the category.
        for tag in tags {
            out.push(Record {
                qid: qid.clone(),
                tag,
                answer: answer_text.clone(),
                question: get(question),
                truth: get(answer),
                line,
            });
        }
    }
    Ok(out)
}

/// Read a VLMEvalKit sheet saved as `.tsv`.
pub fn read_vlmevalkit_tsv(path: &Path, text: &str) -> Result<Vec<Record>> {
    sheet_records(path, tsv_rows(path, text)?)
}

/// A cell as text (integral floats without `.0`, as the id columns are written).
fn cell_text(c: &calamine::Data) -> String {
    use calamine::Data;
    match c {
        Data::Int(i) => i.to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::Float(f) => f.to_string(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Data::DateTime(d) => d.as_f64().to_string(),
        Data::Error(e) => format!("#{e}"),
        Data::Empty => String::new(),
    }
}

/// Read a VLMEvalKit sheet saved as `.xlsx` (its first worksheet); rows are numbered as Excel
/// shows them.
pub fn read_vlmevalkit_xlsx(path: &Path, bytes: &[u8]) -> Result<Vec<Record>> {
    use calamine::Reader;
    let bad = |e: String| data_err(path, format!("not a readable .xlsx workbook: {e}"));
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook_from_rs(std::io::Cursor::new(bytes))
        .map_err(|e: calamine::XlsxError| bad(e.to_string()))?;
    let range = wb
        .worksheet_range_at(0)
        .ok_or_else(|| bad("it holds no worksheet".to_string()))?
        .map_err(|e| bad(e.to_string()))?;
    let first_row = range.start().map_or(0, |(r, _)| r as usize);
    let rows: Vec<(usize, Vec<String>)> = range
        .rows()
        .enumerate()
        .map(|(i, r)| {
            (
                first_row + i + 1,
                r.iter().map(cell_text).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, r)| r.iter().any(|c| !c.is_empty()))
        .map(|(n, mut r)| {
            while r.last().is_some_and(String::is_empty) {
                r.pop();
            }
            (n, r)
        })
        .collect();
    sheet_records(path, rows)
}

/// lmms-eval's name of a POPE split's task (`pope_random`, `pope_pop`, `pope_adv`; audio
/// splits get `audio_pope_<split>`, which lmms-eval does not have).
fn lmms_eval_task(split_task: &str, split: &str) -> String {
    let short = match split {
        "popular" => "pop",
        "adversarial" => "adv",
        other => other,
    };
    if split_task.starts_with("audio-") {
        format!("audio_pope_{short}")
    } else {
        format!("pope_{short}")
    }
}

/// The metrics lmms-eval's POPE tasks report, in its order, with its aggregation functions.
const LMMS_EVAL_METRICS: [(&str, &str); 5] = [
    ("pope_accuracy", "pope_aggregate_accuracy"),
    ("pope_precision", "pope_aggregate_precision"),
    ("pope_recall", "pope_aggregate_recall"),
    ("pope_f1_score", "pope_aggregate_f1_score"),
    ("pope_yes_ratio", "pope_aggregate_yes_ratio"),
];

/// A POPE result in lmms-eval's `results.json` layout (`results`, `group_subtasks`, `configs`,
/// `versions`, `n-shot`, `higher_is_better`, `n-samples`, `config`, `date`, …), with the values
/// of lmms-eval's exact-match reading of the same answers, so lmms-eval users read the numbers
/// their harness would print; `None` for other tasks or results without the reading.
///
/// One entry per split under lmms-eval's task names, plus `pope` (lmms-eval's task over all
/// three splits' questions pooled) when the run has all three. Stderrs are `"N/A"`, as
/// lmms-eval writes for its POPE aggregations. `produced_by` says that mmlab wrote it.
pub fn lmms_eval_results(r: &crate::harness::TaskResult, unix_time: f64) -> Option<Value> {
    use crate::readings::{Harness, ReadingCounts};
    let crate::harness::Metrics::Pope(p) = &r.metrics else {
        return None;
    };
    let mut results = Map::new();
    let mut configs = Map::new();
    let mut versions = Map::new();
    let mut n_shot = Map::new();
    let mut higher = Map::new();
    let mut n_samples = Map::new();
    let mut pooled = ReadingCounts::default();
    let mut pooled_n = (0usize, 0u64);
    let entry = |name: &str, c: &ReadingCounts| {
        let mut m = Map::new();
        m.insert("alias".into(), Value::from(name));
        for ((metric, _), v) in LMMS_EVAL_METRICS.iter().zip(Harness::LmmsEval.stats(c)) {
            m.insert(format!("{metric},none"), Value::from(v));
            m.insert(format!("{metric}_stderr,none"), Value::from("N/A"));
        }
        Value::Object(m)
    };
    let mut add_meta = |name: &str, split: &str, source: &str, original: usize, effective: u64| {
        let metric_list: Vec<Value> = LMMS_EVAL_METRICS
            .iter()
            .map(|(m, agg)| {
                serde_json::json!({"metric": m, "aggregation": agg, "higher_is_better": true})
            })
            .collect();
        configs.insert(
            name.to_string(),
            serde_json::json!({
                "task": name,
                "dataset_path": source,
                "test_split": split,
                "output_type": "generate_until",
                "doc_to_target": "answer",
                "process_results": "pope_process_results (answer.lower().strip() == ground truth)",
                "metric_list": metric_list,
                "metadata": [{"version": 0.0}],
            }),
        );
        versions.insert(name.to_string(), Value::from(0.0));
        n_shot.insert(name.to_string(), Value::from(0));
        higher.insert(
            name.to_string(),
            Value::Object(
                LMMS_EVAL_METRICS
                    .iter()
                    .map(|(m, _)| (m.to_string(), Value::Bool(true)))
                    .collect(),
            ),
        );
        n_samples.insert(
            name.to_string(),
            serde_json::json!({"original": original, "effective": effective}),
        );
    };
    for (s, info) in p.splits.iter().zip(&r.config.splits) {
        let reading = s.readings.as_ref()?;
        let c = reading.lmms_eval.counts;
        let name = lmms_eval_task(&s.task, &s.split);
        results.insert(name.clone(), entry(&name, &c));
        add_meta(&name, &s.split, &info.source, info.questions, s.n);
        pooled = pooled.plus(&c);
        pooled_n = (pooled_n.0 + info.questions, pooled_n.1 + s.n);
    }
    if r.task == "pope" && p.splits.len() == 3 {
        results.insert("pope".into(), entry("pope", &pooled));
        add_meta("pope", "all", &r.config.data, pooled_n.0, pooled_n.1);
    }
    Some(serde_json::json!({
        "results": results,
        "group_subtasks": {},
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "config": {
            "model": r.model,
            "model_args": r.model_identity,
            "batch_size": Value::Null,
            "limit": r.config.limit,
            "bootstrap_iters": 0,
            "gen_kwargs": r.config.decoding,
        },
        "git_hash": Value::Null,
        "date": unix_time,
        "total_evaluation_time_seconds": format!("{}", r.timing.total_s),
        "produced_by": format!(
            "mmlab-eval {}: lmms-eval's POPE rule (lmms_eval/tasks/pope/utils.py) applied to \
             mmlab's answers; not a run of lmms-eval",
            env!("CARGO_PKG_VERSION")
        ),
        "mmlab_result": r.result_file,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_with_quotes_and_line_breaks() {
        let p = Path::new("x.tsv");
        let rows = tsv_rows(p, "a\tb\n1\t\"say \"\"yes\"\"\tand\nno\"\n\n2\tplain\n").unwrap();
        assert_eq!(
            rows,
            vec![
                (1, vec!["a".to_string(), "b".to_string()]),
                (2, vec!["1".to_string(), "say \"yes\"\tand\nno".to_string()]),
                (5, vec!["2".to_string(), "plain".to_string()]),
            ]
        );
        let err = tsv_rows(p, "a\tb\n1\t\"open\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("x.tsv"), "{err}");
    }

    #[test]
    fn format_from_name_and_content() {
        assert_eq!(
            detect(Path::new("m_POPE.xlsx"), b""),
            PredictionFormat::VlmEvalKitXlsx
        );
        assert_eq!(
            detect(Path::new("m_POPE.TSV"), b""),
            PredictionFormat::VlmEvalKitTsv
        );
        assert_eq!(
            detect(
                Path::new("s.jsonl"),
                b"\n{\"doc_id\": 0, \"filtered_resps\": [\"Yes\"]}\n"
            ),
            PredictionFormat::LmmsEvalSamples
        );
        assert_eq!(
            detect(
                Path::new("s.jsonl"),
                b"{\"question_id\": 1, \"answer\": \"Yes\"}\n"
            ),
            PredictionFormat::Jsonl
        );
    }
}
