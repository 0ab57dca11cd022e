//! Readable tables: one result, and a comparison across models and tasks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};
use crate::harness::{load_result, Metrics, TaskResult};
use crate::metrics::Estimate;

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

/// A value alone, four decimals.
fn val(e: &Estimate) -> String {
    format!("{:.4}", e.value)
}

/// The first line of a result table.
fn title(r: &TaskResult) -> String {
    let shard = match r.config.shard {
        Some((i, n)) => format!(" · shard {i}/{n}"),
        None => String::new(),
    };
    let limit = match r.config.limit {
        Some(l) => format!(" · limit {l}"),
        None => String::new(),
    };
    format!(
        "{} · model {} · {} questions ({} cached, {} fresh){limit}{shard} · {}% intervals from {} bootstrap resamples (seed {})\n",
        r.task,
        r.model,
        r.counts.questions,
        r.counts.from_cache,
        r.counts.fresh,
        (r.config.bootstrap.confidence * 100.0).round(),
        r.config.bootstrap.resamples,
        r.config.bootstrap.seed,
    )
}

/// A readable table of one result: per-split rows with 95% intervals, and the mean row.
pub fn format_table(r: &TaskResult) -> String {
    let mut out = title(r);
    match &r.metrics {
        Metrics::Pope(p) => {
            let mut rows: Vec<Vec<String>> = p
                .splits
                .iter()
                .map(|s| {
                    vec![
                        s.split.clone(),
                        est(&s.accuracy),
                        est(&s.precision),
                        est(&s.recall),
                        est(&s.f1),
                        est(&s.yes_ratio),
                        s.unclear.to_string(),
                        s.n.to_string(),
                    ]
                })
                .collect();
            if let Some(m) = &p.mean {
                rows.push(vec![
                    "mean".into(),
                    est(&m.accuracy),
                    est(&m.precision),
                    est(&m.recall),
                    est(&m.f1),
                    est(&m.yes_ratio),
                    m.unclear.to_string(),
                    m.n.to_string(),
                ]);
            }
            out.push_str(&table(
                &[
                    "split",
                    "accuracy",
                    "precision",
                    "recall",
                    "F1",
                    "yes-ratio",
                    "unclear",
                    "n",
                ],
                &rows,
            ));
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
        Metrics::Chair(c) => {
            out.push_str(&table(
                &["metric", "value [95% CI]"],
                &[
                    vec!["CHAIR_i".into(), est(&c.chair_i)],
                    vec!["CHAIR_s".into(), est(&c.chair_s)],
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
        if name.starts_with('.') {
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
/// keeping the newest per (model, task).
pub fn collect_results(paths: &[PathBuf]) -> Result<Vec<TaskResult>> {
    let mut explicit = Vec::new();
    let mut latest: BTreeMap<(String, String), TaskResult> = BTreeMap::new();
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            for f in files {
                let r = load_result(&f)?;
                if r.config.shard.is_some() {
                    continue;
                }
                let key = (r.model.clone(), r.task.clone());
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

/// [`compare`] on results already loaded.
pub fn compare_results(results: &[TaskResult]) -> String {
    let mut pope = Vec::new();
    let mut count = Vec::new();
    let mut chair = Vec::new();
    let shard = |r: &TaskResult| match r.config.shard {
        Some((i, n)) => format!("{} (shard {i}/{n})", r.task),
        None => r.task.clone(),
    };
    for r in results {
        match &r.metrics {
            Metrics::Pope(p) => {
                for s in &p.splits {
                    pope.push(vec![
                        r.model.clone(),
                        shard(r),
                        s.split.clone(),
                        val(&s.accuracy),
                        val(&s.precision),
                        val(&s.recall),
                        est(&s.f1),
                        val(&s.yes_ratio),
                        s.unclear.to_string(),
                        s.n.to_string(),
                    ]);
                }
                if let Some(m) = &p.mean {
                    pope.push(vec![
                        r.model.clone(),
                        shard(r),
                        "mean".into(),
                        val(&m.accuracy),
                        val(&m.precision),
                        val(&m.recall),
                        est(&m.f1),
                        val(&m.yes_ratio),
                        m.unclear.to_string(),
                        m.n.to_string(),
                    ]);
                }
            }
            Metrics::Count(c) => count.push(vec![
                r.model.clone(),
                shard(r),
                est(&c.accuracy),
                val(&c.mae),
                val(&c.off_by_one),
                c.unparsed.to_string(),
                c.n.to_string(),
            ]),
            Metrics::Chair(c) => chair.push(vec![
                r.model.clone(),
                shard(r),
                est(&c.chair_i),
                est(&c.chair_s),
                val(&c.recall),
                c.captions.to_string(),
            ]),
        }
    }
    let mut out = String::new();
    if !pope.is_empty() {
        out.push_str("POPE (F1 with 95% CI)\n");
        out.push_str(&table(
            &[
                "model",
                "task",
                "split",
                "accuracy",
                "precision",
                "recall",
                "F1",
                "yes-ratio",
                "unclear",
                "n",
            ],
            &pope,
        ));
    }
    if !count.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Counting (accuracy with 95% CI)\n");
        out.push_str(&table(
            &[
                "model",
                "task",
                "accuracy",
                "MAE",
                "off-by-one",
                "unparsed",
                "n",
            ],
            &count,
        ));
    }
    if !chair.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("CHAIR (lower is better)\n");
        out.push_str(&table(
            &["model", "task", "CHAIR_i", "CHAIR_s", "recall", "captions"],
            &chair,
        ));
    }
    out
}
