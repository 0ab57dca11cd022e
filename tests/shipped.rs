//! The shipped models travel with the binary: `--model fuyu-small` loads the compiled-in copy
//! from any directory, other names resolve under `--root` / `$MMLAB_HOME` / the working
//! directory, the TUI lists each shipped model once, and the README points only inside the
//! repository.

mod common;
use common::stdout_ok;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use mmlab::model::io::load_dir;
use mmlab::model::presets::{embedded, EMBEDDED};
use mmlab::model::resolve::{choose_root, load_embedded, locate_in, ModelSource, ResolveError};
use mmlab::tui::workspace::{Workspace, EMBEDDED_WEIGHTS};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the built `mmlab` in `cwd` with `$MMLAB_HOME` set to `home` (or unset).
fn mmlab(cwd: &Path, home: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmlab"));
    c.args(args).current_dir(cwd).env("MMLAB_LOG", "error");
    match home {
        Some(h) => c.env("MMLAB_HOME", h),
        None => c.env_remove("MMLAB_HOME"),
    };
    c.output().expect("running mmlab")
}

/// The `mmlab models` row of `name`, split on whitespace.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&name))
}

/// Copies a model directory's three files (what a user copying a checkpoint would bring).
fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

#[test]
fn every_shipped_model_is_compiled_in_byte_for_byte() {
    let names: Vec<&str> = EMBEDDED.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "fuyu-small",
            "llava-small",
            "qformer-small",
            "flamingo-small",
            "native-3e13",
            "llava-3e13",
            "native-free-1e13"
        ]
    );
    for m in &EMBEDDED {
        let dir = repo().join("models").join(m.name);
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            let on_disk = std::fs::read(dir.join(f)).unwrap();
            assert!(m.file(f) == Some(&on_disk[..]), "{}/{f} differs", m.name);
        }
        assert_eq!(m.file("train.jsonl"), None);
    }
}

#[test]
fn the_embedded_copy_has_the_identity_of_the_directory_on_disk() {
    let dir = repo().join("models/fuyu-small");
    let file_sha = sha256_hex(&std::fs::read(dir.join("model.safetensors")).unwrap());
    let from_disk = load_dir(&dir, &Device::Cpu).unwrap();
    let from_binary = load_embedded(embedded("fuyu-small").unwrap(), &Device::Cpu).unwrap();
    assert_eq!(from_disk.weights_sha256, file_sha);
    assert_eq!(from_binary.weights_sha256, file_sha);
    assert_eq!(from_binary.config, from_disk.config);
    assert_eq!(
        from_binary.tokenizer.vocab_size(),
        from_disk.tokenizer.vocab_size()
    );
    // What the eval cache and result files key on: `<name>@<sha prefix>`.
    use mmlab_eval::Responder;
    let id = |m| mmlab::model::responder::ModelResponder::new(m, "fuyu-small".into()).identity();
    assert_eq!(id(from_binary), id(from_disk));
}

#[test]
fn bare_names_resolve_to_the_compiled_in_copy_then_under_root_models() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Nothing on disk: the shipped models still resolve, untrained presets say where they looked.
    match locate_in("fuyu-small", r).unwrap() {
        ModelSource::Embedded(m) => assert_eq!(m.name, "fuyu-small"),
        other => panic!("expected the embedded copy, got {other:?}"),
    }
    match locate_in("fuyu-tiny", r) {
        Err(ResolveError::Untrained(name, looked)) => {
            assert_eq!(name, "fuyu-tiny");
            assert_eq!(looked, r.join("models/fuyu-tiny"));
        }
        other => panic!("expected Untrained, got {other:?}"),
    }
    assert!(matches!(
        locate_in("fuyu-8b", r),
        Err(ResolveError::Unknown(..))
    ));
    // A checkpoint copied to ROOT/models/NAME is found by NAME.
    copy_model(
        &repo().join("tests/fixtures/hf_fuyu/tiny"),
        &r.join("models/fuyu-8b"),
    );
    assert_eq!(
        locate_in("fuyu-8b", r).unwrap(),
        ModelSource::Dir(r.join("models/fuyu-8b"))
    );
    // A directory named like a shipped model is used only when given as a path.
    copy_model(
        &repo().join("models/llava-small"),
        &r.join("models/fuyu-small"),
    );
    assert!(matches!(
        locate_in("fuyu-small", r).unwrap(),
        ModelSource::Embedded(_)
    ));
    let as_path = r.join("models/fuyu-small");
    assert_eq!(
        locate_in(as_path.to_str().unwrap(), r).unwrap(),
        ModelSource::Dir(as_path)
    );
    // ... and a preset without shipped weights is found there by name.
    copy_model(
        &repo().join("models/fuyu-small"),
        &r.join("models/fuyu-tiny"),
    );
    assert_eq!(
        locate_in("fuyu-tiny", r).unwrap(),
        ModelSource::Dir(r.join("models/fuyu-tiny"))
    );
}

#[test]
fn root_is_the_flag_then_mmlab_home_then_the_working_directory() {
    let (flag, home) = (PathBuf::from("/flag"), PathBuf::from("/home"));
    assert_eq!(
        choose_root(Some(flag.clone()), Some(home.clone().into())),
        flag
    );
    assert_eq!(choose_root(None, Some(home.clone().into())), home);
    assert_eq!(choose_root(None, Some("".into())), PathBuf::from("."));
    assert_eq!(choose_root(None, None), PathBuf::from("."));
}

#[test]
fn models_from_an_empty_directory_come_from_the_binary() {
    let empty = tempfile::tempdir().unwrap();
    let table = stdout_ok(&mmlab(empty.path(), Some(empty.path()), &["models"]));
    for m in &EMBEDDED {
        let r = row(&table, m.name).unwrap_or_else(|| panic!("no row {}:\n{table}", m.name));
        assert_eq!(r.last(), Some(&"embedded"), "{table}");
    }
    let tiny = row(&table, "fuyu-tiny").unwrap();
    assert_eq!(tiny[tiny.len() - 4..].join(" "), "tests (not trained here)");
}

#[test]
fn models_look_under_the_root_flag_then_mmlab_home_then_the_working_directory() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    copy_model(
        &repo().join("tests/fixtures/hf_fuyu/tiny"),
        &a.path().join("models/fuyu-8b"),
    );
    let where_8b =
        |out: Output| row(&stdout_ok(&out), "fuyu-8b").map(|r| r.last().unwrap().to_string());
    let a_dir = a.path().join("models/fuyu-8b").display().to_string();
    // $MMLAB_HOME from anywhere.
    assert_eq!(
        where_8b(mmlab(b.path(), Some(a.path()), &["models"])),
        Some(a_dir.clone())
    );
    // --root wins over $MMLAB_HOME.
    let b_root = b.path().to_str().unwrap();
    assert_eq!(
        where_8b(mmlab(
            a.path(),
            Some(a.path()),
            &["--root", b_root, "models"]
        )),
        None
    );
    let a_root = a.path().to_str().unwrap();
    assert_eq!(
        where_8b(mmlab(
            b.path(),
            Some(b.path()),
            &["models", "--root", a_root]
        )),
        Some(a_dir)
    );
    // Without either, the working directory.
    assert_eq!(
        where_8b(mmlab(a.path(), None, &["models"])),
        Some("./models/fuyu-8b".to_string())
    );
    assert_eq!(where_8b(mmlab(b.path(), None, &["models"])), None);
}

#[test]
fn eval_runs_the_shipped_model_from_an_empty_directory() {
    let empty = tempfile::tempdir().unwrap();
    let data = empty.path().join("data");
    // A small question set keeps the test fast; the model is what this test is about.
    stdout_ok(&mmlab(
        empty.path(),
        Some(empty.path()),
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
    let out = mmlab(
        empty.path(),
        Some(empty.path()),
        &[
            "eval",
            "pope",
            "--model",
            "fuyu-small",
            "--data",
            data.to_str().unwrap(),
            "--limit",
            "4",
            "--json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
    let sha = sha256_hex(embedded("fuyu-small").unwrap().weights);
    let text = json.to_string();
    assert!(
        text.contains(&sha[..16]),
        "result does not name the weights: {text}"
    );
}

#[test]
fn the_tui_lists_each_shipped_model_once() {
    // A workspace with its own copy of fuyu-small under models/: one row, from that directory.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("models/fuyu-small");
    copy_model(&repo().join("models/fuyu-small"), &dir);
    let ws = Workspace::scan(root.path());
    let rows: Vec<_> = ws
        .models
        .iter()
        .filter(|m| m.name == "fuyu-small")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].weights.as_deref(), Some(dir.as_path()));
    assert!(
        !rows[0].curve.is_empty(),
        "the directory's training logs are read"
    );
    // An empty workspace: one row per shipped model, from the binary.
    let empty = tempfile::tempdir().unwrap();
    let ws = Workspace::scan(empty.path());
    for m in &EMBEDDED {
        let rows: Vec<_> = ws.models.iter().filter(|e| e.name == m.name).collect();
        assert_eq!(rows.len(), 1, "{}: {rows:#?}", m.name);
        assert_eq!(
            rows[0].weights.as_deref(),
            Some(Path::new(EMBEDDED_WEIGHTS))
        );
        assert_eq!(rows[0].spec, m.name);
    }
    let names: Vec<&str> = ws.models.iter().map(|m| m.name.as_str()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

#[test]
fn ablate_help_explains_the_flop_estimate_reports_point_to() {
    let report =
        std::fs::read_to_string(repo().join("ablations/results/native-vs-projector/report.md"))
            .unwrap();
    assert!(report.contains("see `mmlab ablate --help`"));
    let help = stdout_ok(&mmlab(&repo(), None, &["ablate", "--help"]));
    assert!(help.contains("6·N·tokens"), "{help}");
    assert!(help.contains("2·N·tokens for frozen inputs"), "{help}");
}

#[test]
fn the_readme_points_only_inside_the_repository() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(!readme.contains("../"), "a path outside the repository");
    assert!(!readme.contains("/work/"), "a path on one machine");
    // Every backticked repository path the README names exists.
    let tops = [
        "docs/",
        "benches/",
        "tests/",
        "src/",
        "kernels/",
        "ablations/",
        "third_party/",
        "eval/",
        "datasets/",
        "models/",
    ];
    let mut checked = 0;
    for (i, part) in readme.split('`').enumerate() {
        let path = part.trim_end_matches('/');
        let is_path = i % 2 == 1
            && tops.iter().any(|t| part.starts_with(t))
            && !part.contains([' ', '*', '<', '{', '|'])
            && !part.contains("::")
            && part != "models/fuyu-8b";
        if is_path {
            assert!(
                repo().join(path).exists(),
                "README names `{part}`, which is not here"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} paths found");
    // The POPE sample it scores is here, with where it came from.
    let sample = repo().join("docs/pope-coco");
    assert!(std::fs::read_to_string(sample.join("README.md"))
        .unwrap()
        .contains("AoiDragon/POPE"));
    assert!(sample.join("LICENSE").is_file());
}

#[test]
fn the_pope_sample_scores_a_predictions_file() {
    let tmp = tempfile::tempdir().unwrap();
    let questions = repo().join("docs/pope-coco/coco_pope_random.json");
    let answers: String = (1..=300)
        .map(|i| format!("{{\"question_id\": {i}, \"answer\": \"Yes, there is.\"}}\n"))
        .collect();
    std::fs::write(tmp.path().join("answers.jsonl"), answers).unwrap();
    let out = mmlab(
        tmp.path(),
        Some(tmp.path()),
        &[
            "eval",
            "pope-random",
            "--model",
            "answers.jsonl",
            "--data",
            questions.to_str().unwrap(),
            "--json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
    let split = find(&json, "yes_ratio").expect("POPE metrics in the result");
    // All "yes" on 150 yes / 150 no: accuracy 0.5, recall 1, yes-ratio 1.
    assert_eq!(split["n"], 300, "{split}");
    assert_eq!(split["accuracy"]["value"], 0.5, "{split}");
    assert_eq!(split["recall"]["value"], 1.0, "{split}");
    assert_eq!(split["yes_ratio"]["value"], 1.0, "{split}");
}

/// The first JSON object (depth first) that has `key`.
fn find<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) if m.contains_key(key) => Some(v),
        serde_json::Value::Object(m) => m.values().find_map(|x| find(x, key)),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}
