//! Readable tables: one result, and a comparison across models and tasks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};
use crate::harness::{load_result, Metrics, TaskResult};
use crate::identity::ResultKey;
use crate::metrics::{Estimate, PopeReport};

/// Lay out rows under a header, columns separated by two spaces, numbers right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..cols)
        .map(|c| {
            rows.iter().all(|r| {
                r.get(c).is_none_or(|v| {
                    v.chars()
                        .next()
                        .is_none_or(|ch| ch.is_ascii_digit() || ch == '-')
                })
            })
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c > 0 {
                s.push_str("  ");
            }
            let pad = width[c].saturating_sub(cell.chars().count());
            if numeric[c] && c > 0 {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if c + 1 < cols {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A value with its interval: `0.8500 [0.8370, 0.8630]`.
fn est(e: &Estimate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", e.value, e.low, e.high)
}

/// An estimate that may be undefined (CHAIR with no object mentions).
fn opt_est(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => est(e),
        None => "undefined (no object mentions)".to_string(),
    }
}

/// A value alone, four decimals.
fn val(e: &Estimate) -> String {
    format!("{:.4}", e.value)
}

/// The columns of a POPE table.
const POPE_HEADER: [&str; 8] = [
    "split",
    "accuracy",
    "precision",
    "recall",
    "F1",
    "yes-ratio",
    "unclear",
    "n",
];

/// One row of a POPE table: a split, or the mean over splits.
struct PopeRow<'a> {
    name: &'a str,
    /// Accuracy, precision, recall, F1, yes-ratio.
    metrics: [&'a Estimate; 5],
    unclear: u64,
    n: u64,
}

impl PopeRow<'_> {
    /// The row's cells in [`POPE_HEADER`] order: F1 with its interval, the other metrics as
    /// `cell` writes them.
    fn cells(&self, cell: fn(&Estimate) -> String) -> Vec<String> {
        let [a, p, r, f, y] = self.metrics;
        vec![
            self.name.to_string(),
            cell(a),
            cell(p),
            cell(r),
            est(f),
            cell(y),
            self.unclear.to_string(),
            self.n.to_string(),
        ]
    }
}

/// The rows of a POPE report: each split, then the mean when there is one.
fn pope_rows(p: &PopeReport) -> Vec<PopeRow<'_>> {
    let splits = p.splits.iter().map(|s| PopeRow {
        name: &s.split,
        metrics: [&s.accuracy, &s.precision, &s.recall, &s.f1, &s.yes_ratio],
        unclear: s.unclear,
        n: s.n,
    });
    let mean = p.mean.iter().map(|m| PopeRow {
        name: "mean",
        metrics: [&m.accuracy, &m.precision, &m.recall, &m.f1, &m.yes_ratio],
        unclear: m.unclear,
        n: m.n,
    });
    splits.chain(mean).collect()
}

/// Seen and held-out pairs: one row per split, then the gap.
fn compositional_table(c: &crate::compositional::CompositionalReport) -> String {
    let mut rows: Vec<Vec<String>> = c
        .splits
        .iter()
        .map(|s| {
            vec![
                s.split.clone(),
                est(&s.accuracy),
                est(&s.present_accuracy),
                est(&s.absent_accuracy),
                est(&s.colour_accuracy),
                s.unparsed.to_string(),
                s.n.to_string(),
            ]
        })
        .collect();
    if let Some(g) = &c.gap {
        rows.push(vec![
            "gap (seen - held-out)".to_string(),
            est(&g.accuracy),
            est(&g.present),
            est(&g.absent),
            est(&g.colour),
            String::new(),
            String::new(),
        ]);
    }
    table(
        &[
            "pairs",
            "accuracy",
            "is there (pair present)",
            "is there (pair absent)",
            "what colour is the <shape>",
            "unparsed",
            "n",
        ],
        &rows,
    )
}

/// The names of the three readings of a POPE answer, as tables print them.
pub const READING_NAMES: [&str; 3] = [
    "POPE authors (headline)",
    "lmms-eval exact match",
    "VLMEvalKit words, no judge",
];

/// The three readings of the same answers side by side (empty for results written before the
/// other harnesses' readings were computed).
pub fn readings_table(p: &PopeReport) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let named = p.splits.iter().map(|s| {
        (
            s.split.as_str(),
            s.n,
            [&s.accuracy, &s.f1, &s.yes_ratio],
            s.readings.as_ref(),
        )
    });
    let mean = p.mean.iter().map(|m| {
        (
            "mean",
            m.n,
            [&m.accuracy, &m.f1, &m.yes_ratio],
            m.readings.as_deref(),
        )
    });
    for (name, n, [a, f, y], r) in named.chain(mean) {
        let Some(r) = r else { return String::new() };
        rows.push(vec![
            name.to_string(),
            READING_NAMES[0].to_string(),
            val(a),
            est(f),
            val(y),
            "predictions".to_string(),
            "-".to_string(),
            n.to_string(),
        ]);
        for (k, h) in crate::readings::Harness::ALL.iter().enumerate() {
            let hr = r.get(*h);
            rows.push(vec![
                name.to_string(),
                READING_NAMES[k + 1].to_string(),
                val(&hr.accuracy),
                est(&hr.f1),
                val(&hr.yes_ratio),
                hr.yes_ratio_of.clone(),
                hr.unknown.to_string(),
                n.to_string(),
            ]);
        }
    }
    let mut out = String::from(
        "\nthe same answers read by each harness's rule (unknown: neither yes nor no to it, counted wrong)\n",
    );
    out.push_str(&table(
        &[
            "split",
            "reading",
            "accuracy",
            "F1",
            "yes-ratio",
            "yes-ratio of",
            "unknown",
            "n",
        ],
        &rows,
    ));
    out
}

/// How much of the data a run asked: `all`, `limit 100 (partial)`, `shard 0/4`.
pub fn run_scope(r: &TaskResult) -> String {
    let mut parts = Vec::new();
    if let Some(l) = r.config.limit {
        if r.config.selects_all() {
            parts.push(format!("limit {l} (all)"));
        } else {
            parts.push(format!("limit {l} (partial)"));
        }
    }
    if let Some((i, n)) = r.config.shard {
        parts.push(format!("shard {i}/{n}"));
    }
    if parts.is_empty() {
        "all".to_string()
    } else {
        parts.join(", ")
    }
}

/// The first lines of a result table: what was run, and on which data and tier.
fn title(r: &TaskResult) -> String {
    let shard = match r.config.shard {
        Some((i, n)) => format!(" · shard {i}/{n}"),
        None => String::new(),
    };
    let limit = match r.config.limit {
        Some(l) => format!(" · limit {l}"),
        None => String::new(),
    };
    let data = match &r.config.data_identity {
        Some(d) => {
            let generator = d
                .generator
                .as_ref()
                .map(|g| format!(" ({g})"))
                .unwrap_or_default();
            format!("data {}{generator}", d.id)
        }
        None => "data not identified (result written before data identities)".to_string(),
    };
    let mut out = format!(
        "{} · model {} · {} questions ({} cached, {} fresh){limit}{shard} · {}% intervals from {} bootstrap resamples (seed {})\n",
        r.task,
        r.model,
        r.counts.questions,
        r.counts.from_cache,
        r.counts.fresh,
        (r.config.bootstrap.confidence * 100.0).round(),
        r.config.bootstrap.resamples,
        r.config.bootstrap.seed,
    );
    out.push_str(&format!(
        "tier {} · {data} · {} mode\n",
        r.config.tier_label(),
        format!("{:?}", r.config.mode).to_lowercase()
    ));
    out
}

/// A readable table of one result: per-split rows with 95% intervals, and the mean row.
pub fn format_table(r: &TaskResult) -> String {
    let mut out = title(r);
    match &r.metrics {
        Metrics::Pope(p) => {
            let rows: Vec<Vec<String>> = pope_rows(p).iter().map(|r| r.cells(est)).collect();
            out.push_str(&table(&POPE_HEADER, &rows));
            out.push_str(&readings_table(p));
        }
        Metrics::Count(c) => {
            out.push_str(&table(
                &["metric", "value [95% CI]"],
                &[
                    vec!["accuracy".into(), est(&c.accuracy)],
                    vec!["mean abs error".into(), est(&c.mae)],
                    vec!["off-by-one acc".into(), est(&c.off_by_one)],
                    vec!["unparsed".into(), c.unparsed.to_string()],
                    vec!["n".into(), c.n.to_string()],
                ],
            ));
            out.push('\n');
            let rows: Vec<Vec<String>> = c
                .per_count
                .iter()
                .map(|p| {
                    vec![
                        p.count.to_string(),
                        format!("{:.4}", p.accuracy),
                        p.correct.to_string(),
                        p.n.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["true count", "accuracy", "correct", "n"], &rows));
        }
        Metrics::Compositional(c) => {
            out.push_str(&compositional_table(c));
        }
        Metrics::Chair(c) => {
            out.push_str(&table(
                &["metric", "value [95% CI]"],
                &[
                    vec!["CHAIR_i".into(), opt_est(&c.chair_i)],
                    vec!["CHAIR_s".into(), opt_est(&c.chair_s)],
                    vec!["object recall".into(), est(&c.recall)],
                    vec![
                        "hallucinated mentions".into(),
                        format!("{} / {}", c.hallucinated_mentions, c.mentions),
                    ],
                    vec![
                        "hallucinated captions".into(),
                        format!("{} / {}", c.hallucinated_captions, c.captions),
                    ],
                ],
            ));
        }
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if r.counts.unanswered > 0 {
        out.push_str(&format!(
            "{} questions had no answer (counted wrong)\n",
            r.counts.unanswered
        ));
    }
    out
}

impl fmt::Display for TaskResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_table(self))
    }
}

/// Every result file under a folder (not shard results, not hidden folders).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut entries: Vec<PathBuf> = Vec::new();
    for e in rd {
        entries.push(e.map_err(|e| EvalError::io(dir, e))?.path());
    }
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // Hidden folders, and the lmms-eval layout written beside POPE results.
        if name.starts_with('.') || name.ends_with(crate::harness::LMMS_EVAL_SUFFIX) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if name.ends_with(".json") {
            out.push(p);
        }
    }
    Ok(())
}

/// Load the results named: files as given; folders searched for complete (unsharded) results,
/// keeping the newest run of each distinct result identity (model weights, task, data, mode,
/// prompt, decoding, limit), so runs on other data or of part of the data are never taken for
/// one another.
pub fn collect_results(paths: &[PathBuf]) -> Result<Vec<TaskResult>> {
    let mut explicit = Vec::new();
    let mut latest: BTreeMap<ResultKey, TaskResult> = BTreeMap::new();
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            for f in files {
                let r = load_result(&f)?;
                if r.config.shard.is_some() {
                    continue;
                }
                let key = r.key();
                let newer = latest.get(&key).is_none_or(|old| {
                    (&r.created, &r.result_file) > (&old.created, &old.result_file)
                });
                if newer {
                    latest.insert(key, r);
                }
            }
        } else {
            explicit.push(load_result(p)?);
        }
    }
    explicit.extend(latest.into_values());
    Ok(explicit)
}

/// For each result, what sets it apart from the other results of the same model and task
/// (`data 1a2b3c4d`, `limit 100 (partial)`, `score mode`, …); empty when it is the only one.
pub fn distinguishing(results: &[TaskResult]) -> Vec<String> {
    let keys: Vec<ResultKey> = results.iter().map(TaskResult::key).collect();
    results
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (r, k))| {
            let mut differs: Vec<&'static str> = Vec::new();
            for (j, ok) in keys.iter().enumerate() {
                if i == j || ok.model != k.model || ok.task != k.task {
                    continue;
                }
                for d in k.differences(ok) {
                    if !differs.contains(&d) {
                        differs.push(d);
                    }
                }
            }
            let mut parts: Vec<String> = Vec::new();
            for d in differs {
                let part = match d {
                    "weights" => format!("weights {}", short_identity(&r.model_identity)),
                    "data" if k.data.is_empty() => "data ?".to_string(),
                    "data" => format!("data {}", &k.data[..k.data.len().min(8)]),
                    "mode" => format!("{:?} mode", r.config.mode).to_lowercase(),
                    "prompt" => format!("prompt {:?}", r.config.prompt_template),
                    "decoding" => format!("decoding {}", r.config.decoding),
                    _ => run_scope(r),
                };
                if !parts.contains(&part) {
                    parts.push(part);
                }
            }
            parts.join(", ")
        })
        .collect()
}

/// The weights-hash part of a model identity (`name@1a2b3c…` → `1a2b3c4d`).
fn short_identity(id: &str) -> String {
    let h = id.rsplit(['@', ':']).next().unwrap_or(id);
    h.chars().take(8).collect()
}

/// A table across models and tasks, from result files or folders of them.
pub fn compare(result_paths: &[PathBuf]) -> Result<String> {
    let results = collect_results(result_paths)?;
    if results.is_empty() {
        return Err(EvalError::Data {
            path: result_paths.first().cloned().unwrap_or_default(),
            message: "no result files found".to_string(),
        });
    }
    Ok(compare_results(&results))
}

/// [`compare`] in the given format.
pub fn compare_as(result_paths: &[PathBuf], format: CompareFormat) -> Result<String> {
    let results = collect_results(result_paths)?;
    if results.is_empty() {
        return Err(EvalError::Data {
            path: result_paths.first().cloned().unwrap_or_default(),
            message: "no result files found".to_string(),
        });
    }
    Ok(compare_results_as(&results, format))
}

/// A comparison row: model, the task/tier/run cells, then the metric cells.
fn row(model: &str, task: Vec<String>, metrics: Vec<String>) -> Vec<String> {
    let mut r = vec![model.to_string()];
    r.extend(task);
    r.extend(metrics);
    r
}

/// [`compare`] on results already loaded.
pub fn compare_results(results: &[TaskResult]) -> String {
    compare_results_as(results, CompareFormat::Text)
}

/// How `eval compare` writes its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareFormat {
    /// Aligned columns (the default).
    Text,
    /// Markdown pipe tables, one per section under a `###` heading.
    Markdown,
    /// CSV: one block per section (a header row starting with `section`), blocks separated by
    /// a blank line.
    Csv,
    /// JSON: one object per result (model, task, tier, run, result file and the full metrics).
    Json,
}

impl std::str::FromStr for CompareFormat {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(CompareFormat::Text),
            "md" | "markdown" => Ok(CompareFormat::Markdown),
            "csv" => Ok(CompareFormat::Csv),
            "json" => Ok(CompareFormat::Json),
            _ => Err(EvalError::Option(format!(
                "format `{s}`: expected text, md, csv or json"
            ))),
        }
    }
}

/// One titled table of a comparison.
struct Section {
    title: &'static str,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A Markdown cell: pipes escaped, line breaks as spaces.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// [`compare_results`] in the given format.
pub fn compare_results_as(results: &[TaskResult], format: CompareFormat) -> String {
    if format == CompareFormat::Json {
        let apart = distinguishing(results);
        let rows: Vec<serde_json::Value> = results
            .iter()
            .zip(&apart)
            .map(|(r, a)| {
                serde_json::json!({
                    "model": r.model,
                    "task": r.task,
                    "tier": r.config.tier_label(),
                    "run": run_scope(r),
                    "differs": a,
                    "mode": format!("{:?}", r.config.mode).to_lowercase(),
                    "model_identity": r.model_identity,
                    "created": r.created,
                    "result_file": r.result_file,
                    "metrics": r.metrics,
                })
            })
            .collect();
        return serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n";
    }
    let sections = compare_sections(results);
    let mut out = String::new();
    for sec in &sections {
        let header: Vec<&str> = sec.header.iter().map(String::as_str).collect();
        match format {
            CompareFormat::Text | CompareFormat::Json => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(sec.title);
                out.push('\n');
                out.push_str(&table(&header, &sec.rows));
            }
            CompareFormat::Markdown => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("### {}\n\n", sec.title));
                let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
                out.push_str(&line(header.iter().map(|h| md_cell(h)).collect()));
                out.push_str(&line(header.iter().map(|_| "---".to_string()).collect()));
                for r in &sec.rows {
                    out.push_str(&line(r.iter().map(|c| md_cell(c)).collect()));
                }
            }
            CompareFormat::Csv => {
                if !out.is_empty() {
                    out.push('\n');
                }
                let line = |cells: Vec<String>| format!("{}\n", cells.join(","));
                out.push_str(&line(
                    std::iter::once("section".to_string())
                        .chain(header.iter().map(|h| csv_field(h)))
                        .collect(),
                ));
                for r in &sec.rows {
                    out.push_str(&line(
                        std::iter::once(csv_field(sec.title))
                            .chain(r.iter().map(|c| csv_field(c)))
                            .collect(),
                    ));
                }
            }
        }
    }
    out
}

/// The comparison's sections, each with rows.
fn compare_sections(results: &[TaskResult]) -> Vec<Section> {
    let mut pope = Vec::new();
    let mut count = Vec::new();
    let mut chair = Vec::new();
    let mut comp = Vec::new();
    let apart = distinguishing(results);
    // The task, the tier and how much of the data the run asked: a partial run never reads as
    // the full one, and runs on other data or settings say how they differ.
    let shard = |i: usize| {
        let r = &results[i];
        let mut run = vec![run_scope(r)];
        if r.config.mode == crate::harness::AnswerMode::Score {
            run.push("score mode".to_string());
        }
        for part in apart[i].split(", ").filter(|p| !p.is_empty()) {
            let part = part.to_string();
            if !run.contains(&part) && !part.starts_with("limit") && !part.starts_with("shard") {
                run.push(part);
            }
        }
        vec![r.task.clone(), r.config.tier_label(), run.join(", ")]
    };
    for (i, r) in results.iter().enumerate() {
        match &r.metrics {
            Metrics::Pope(p) => {
                let readings = p
                    .splits
                    .iter()
                    .map(|s| s.readings.as_ref())
                    .chain(p.mean.iter().map(|m| m.readings.as_deref()));
                for (pr, rd) in pope_rows(p).iter().zip(readings) {
                    let mut cells = pr.cells(val);
                    for h in crate::readings::Harness::ALL {
                        cells.push(rd.map_or("-".to_string(), |r| val(&r.get(h).f1)));
                    }
                    pope.push(row(&r.model, shard(i), cells));
                }
            }
            Metrics::Count(c) => count.push(row(
                &r.model,
                shard(i),
                vec![
                    est(&c.accuracy),
                    val(&c.mae),
                    val(&c.off_by_one),
                    c.unparsed.to_string(),
                    c.n.to_string(),
                ],
            )),
            Metrics::Compositional(c) => {
                let acc = |split: &str| {
                    c.splits
                        .iter()
                        .find(|s| s.split == split)
                        .map_or("-".to_string(), |s| est(&s.accuracy))
                };
                comp.push(row(
                    &r.model,
                    shard(i),
                    vec![
                        acc("seen"),
                        acc("held-out"),
                        c.gap.as_ref().map_or("-".to_string(), |g| est(&g.accuracy)),
                        c.splits.iter().map(|s| s.n).sum::<u64>().to_string(),
                    ],
                ))
            }
            Metrics::Chair(c) => chair.push(row(
                &r.model,
                shard(i),
                vec![
                    opt_est(&c.chair_i),
                    opt_est(&c.chair_s),
                    val(&c.recall),
                    c.captions.to_string(),
                ],
            )),
        }
    }
    let mut out = Vec::new();
    let run = ["model", "task", "tier", "run"];
    section(
        &mut out,
        "POPE (F1 with 95% CI; the same answers' F1 by lmms-eval's and VLMEvalKit's rules)",
        &[&run[..], &POPE_HEADER, &["F1 lmms-eval", "F1 VLMEvalKit"]].concat(),
        &pope,
    );
    section(
        &mut out,
        "Counting (accuracy with 95% CI)",
        &[
            &run[..],
            &["accuracy", "MAE", "off-by-one", "unparsed", "n"],
        ]
        .concat(),
        &count,
    );
    section(
        &mut out,
        "CHAIR (lower is better)",
        &[&run[..], &["CHAIR_i", "CHAIR_s", "recall", "captions"]].concat(),
        &chair,
    );
    section(
        &mut out,
        "Held-out colour-shape pairs (accuracy with 95% CI; gap = seen - held-out)",
        &[&run[..], &["seen", "held-out", "gap", "n"]].concat(),
        &comp,
    );
    out
}

/// Add a titled table of `rows` to `out`; nothing without rows.
fn section(out: &mut Vec<Section>, title: &'static str, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        return;
    }
    out.push(Section {
        title,
        header: header.iter().map(|h| h.to_string()).collect(),
        rows: rows.to_vec(),
    });
}
