//! `mmlab eval` from the command line: a grid of tasks and models in one call, other
//! harnesses' prediction files, the three POPE readings in the table, and `eval compare
//! --format`.

mod common;
use common::stdout_ok;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmlab(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(args)
        .current_dir(cwd)
        .env("MMLAB_LOG", "error")
        .env("MMLAB_HOME", cwd)
        .output()
        .expect("running mmlab")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Result files (not samples, not the lmms-eval layout) under a folder, recursively.
fn result_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                out.extend(result_files(&p));
            } else if name.ends_with(".json") && !name.ends_with(".lmms-eval.json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn several_tasks_and_models_run_the_grid_and_print_one_table() {
    let dir = tempfile::tempdir().unwrap();
    stdout_ok(&mmlab(
        dir.path(),
        &[
            "data",
            "shapes",
            "--out",
            "data",
            "--images",
            "4",
            "--train-images",
            "0",
            "--seed",
            "5",
        ],
    ));
    let out = stdout_ok(&mmlab(
        dir.path(),
        &[
            "eval",
            "pope-random,count,compositional",
            "--model",
            "fuyu-small,llava-small",
            "--data",
            "data",
            "--limit",
            "2",
        ],
    ));
    // One result per pair.
    let files = result_files(&dir.path().join("results"));
    assert_eq!(files.len(), 6, "{files:?}");
    for model in ["fuyu-small", "llava-small"] {
        for task in ["pope-random-", "count-", "compositional-"] {
            assert!(
                files.iter().any(|f| f.parent().unwrap().ends_with(model)
                    && f.file_name().unwrap().to_string_lossy().starts_with(task)),
                "no {task} result of {model}: {files:?}"
            );
        }
    }
    // One table: each section once, both models in it.
    assert_eq!(out.matches("POPE (F1").count(), 1, "{out}");
    assert_eq!(out.matches("Counting (").count(), 1, "{out}");
    assert_eq!(
        out.matches("Held-out colour-shape pairs").count(),
        1,
        "{out}"
    );
    for model in ["fuyu-small", "llava-small"] {
        assert_eq!(
            out.lines().filter(|l| l.starts_with(model)).count(),
            1 + 1 + 1,
            "one POPE, one counting and one compositional row of {model}:\n{out}"
        );
    }

    // The same results compared as Markdown, CSV and JSON.
    let md = stdout_ok(&mmlab(dir.path(), &["eval", "compare", "--format", "md"]));
    assert!(md.contains("| model | task | tier | run |"), "{md}");
    let csv = stdout_ok(&mmlab(dir.path(), &["eval", "compare", "--format", "csv"]));
    assert!(csv.starts_with("section,model,task,tier,run"), "{csv}");
    let json = stdout_ok(&mmlab(dir.path(), &["eval", "compare", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6);
    let bad = mmlab(dir.path(), &["eval", "compare", "--format", "yaml"]);
    assert!(!bad.status.success());

    // A task name that does not exist is refused before anything runs.
    let bad = mmlab(
        dir.path(),
        &[
            "eval",
            "pope,poppe",
            "--model",
            "fuyu-small",
            "--data",
            "data",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("poppe"), "{err}");
    assert_eq!(result_files(&dir.path().join("results")).len(), 6);
}

#[test]
fn other_harness_files_are_predictions_and_the_table_shows_three_readings() {
    let dir = tempfile::tempdir().unwrap();
    let questions = repo("docs/pope-coco/coco_pope_random.json");
    for fixture in [
        "eval/tests/fixtures/interop/pope_vlmevalkit.xlsx",
        "eval/tests/fixtures/interop/pope_vlmevalkit.tsv",
        "eval/tests/fixtures/interop/samples_pope_random.jsonl",
    ] {
        let out = stdout_ok(&mmlab(
            dir.path(),
            &[
                "eval",
                "pope-random",
                "--model",
                repo(fixture).to_str().unwrap(),
                "--data",
                questions.to_str().unwrap(),
                "--limit",
                "8",
            ],
        ));
        for needle in [
            "POPE authors (headline)",
            "lmms-eval exact match",
            "ground truth (lmms-eval)",
            "VLMEvalKit words, no judge",
        ] {
            assert!(out.contains(needle), "{fixture}: no {needle}:\n{out}");
        }
    }
    let lmms: Vec<PathBuf> = walk(&dir.path().join("results"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".lmms-eval.json"))
        .collect();
    assert_eq!(lmms.len(), 3, "{lmms:?}");
    let help = stdout_ok(&mmlab(dir.path(), &["eval", "--help"]));
    assert!(help.contains("lmms_eval/tasks/pope/utils.py"), "{help}");
    assert!(help.contains("YOrN_Extraction"), "{help}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
