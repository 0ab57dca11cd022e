//! Bad input that used to get through: absurd sizes in a model's `config.json`, sampling
//! options, errors that named the wrong model or repeated their cause.

use std::path::{Path, PathBuf};
use std::process::Command;

use mmlab::model::io::{load_dir, read_config};
use mmlab::model::responder::ModelResponder;
use mmlab_eval::{Request, Responder};

fn mmlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(args)
        .env("MMLAB_LOG", "error")
        .output()
        .expect("running mmlab")
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

/// A copy of the shipped fuyu-small directory with `edit` applied to its config.
fn edited_model(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = shipped("fuyu-small");
    let out = dir.join("edited");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

/// How often `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// The way `main` prints an error: anyhow's `{:#}`, every cause once.
fn cli_text(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

#[test]
fn a_d_ff_whose_parameter_count_wraps_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 3 * d_ff wraps to 2 in usize: the old check saw a tiny model.
    let m = edited_model(dir.path(), |c| {
        c["model"]["d_ff"] = serde_json::json!(6148914691236517206u64)
    });
    let e = read_config(&m).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    assert!(e.contains("d_ff"), "{e}");
    let out = mmlab(&["models", m.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 for an invalid directory");
    assert!(stderr.contains("d_ff"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("152236"));
}

#[test]
fn sizes_that_overflow_or_allocate_absurdly_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
        ("d_model", serde_json::json!(1u64 << 62), "d_model"),
        ("n_layers", serde_json::json!(u64::MAX), "n_layers"),
        // Rotary tables of 2^20 positions x 2^16 rotated dims would be 512 GiB.
        ("max_seq_len", serde_json::json!(1u64 << 20), "max_seq_len"),
        ("patch_dim", serde_json::json!(1u64 << 40), "patch_dim"),
    ];
    for (field, value, needle) in cases {
        let m = edited_model(dir.path(), |c| {
            c["model"][field] = value;
            if field == "max_seq_len" {
                c["model"]["d_model"] = serde_json::json!(1 << 17);
                c["model"]["n_heads"] = serde_json::json!(1);
                c["model"]["n_kv_heads"] = serde_json::json!(1);
                c["model"]["partial_rotary_factor"] = serde_json::json!(1.0);
            }
        });
        let e = read_config(&m).unwrap_err().to_string();
        assert!(e.contains(needle), "{field}: {e}");
        assert!(e.contains("config.json"), "{field}: {e}");
    }
    // The shipped model itself is fine, and `mmlab models` lists it with exit 0.
    let out = mmlab(&["models", shipped("fuyu-small").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn models_exits_non_zero_for_a_missing_directory_naming_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let out = mmlab(&["models", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-model"), "{stderr}");
    assert_eq!(count(&stderr, "No such file or directory"), 1, "{stderr}");
}

#[test]
fn ask_refuses_bad_sampling_options_naming_the_option() {
    for (flag, value) in [
        ("--temperature", "NaN"),
        ("--temperature", "inf"),
        ("--temperature", "-1"),
        ("--temperature", "warm"),
        ("--max-tokens", "0"),
        ("--max-tokens", "99999999"),
    ] {
        let arg = format!("{flag}={value}");
        let out = mmlab(&["ask", "--model", "fuyu-small", &arg, "Is there a circle?"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{arg} accepted");
        assert!(stderr.contains(flag), "{arg}: {stderr}");
    }
    // `--temperature -1` (a separate word) is read as the value, then refused.
    let out = mmlab(&["ask", "--model", "fuyu-small", "--temperature", "-1", "q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("finite number >= 0"), "{stderr}");
}

fn request(image: &Path) -> Request {
    serde_json::from_value(serde_json::json!({
        "task": "ask",
        "question_id": "0",
        "prompt": "Is there a circle?",
        "image": image,
        "audio": null,
        "candidates": null,
    }))
    .unwrap()
}

#[test]
fn responder_errors_name_the_model_asked_for_and_each_cause_once() {
    let loaded = load_dir(&shipped("fuyu-small"), &candle_core::Device::Cpu).unwrap();
    let mut r = ModelResponder::new(loaded, "my-fuyu".into());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    for prefix_cache in [true, false] {
        r.prefix_cache = prefix_cache;
        let e = r.respond(&[request(&missing)]).unwrap_err();
        let msg = cli_text(e);
        assert!(msg.contains("model `my-fuyu` failed"), "{msg}");
        assert!(!msg.contains("mmlab model"), "{msg}");
        assert!(msg.contains("missing.png"), "{msg}");
        assert_eq!(count(&msg, "No such file or directory"), 1, "{msg}");
    }
}

#[test]
fn io_errors_print_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let texts = [
        cli_text(mmlab_eval::tasks::load_task("count", &missing).unwrap_err()),
        cli_text(mmlab_eval::PredictionsFile::open(&missing).unwrap_err()),
        cli_text(mmlab_datasets::load_train(&missing).unwrap_err()),
        cli_text(read_config(&missing).unwrap_err()),
        cli_text(mmlab::fusion::image::load_image(&missing).unwrap_err()),
        cli_text(mmlab::train::TrainError::from(
            mmlab::fusion::audio::load_audio(&missing).unwrap_err(),
        )),
    ];
    for t in texts {
        assert!(t.contains("absent"), "{t}");
        assert_eq!(count(&t, "No such file or directory"), 1, "{t}");
    }
    // A JSON error keeps its detail (line and column) once.
    let bad = dir.path().join("count.jsonl");
    std::fs::write(&bad, "{\"question_id\": 1,\n").unwrap();
    let t = cli_text(mmlab_eval::tasks::load_task("count", &bad).unwrap_err());
    assert!(t.contains("count.jsonl:1: invalid JSON"), "{t}");
    assert_eq!(count(&t, "EOF while parsing"), 1, "{t}");
}

/// Issue 19, case 2: a predictions file is never scored against the default synthetic set.
#[test]
fn a_predictions_file_needs_data() {
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("answers.jsonl");
    std::fs::write(&preds, "{\"question_id\": 1, \"answer\": \"Yes\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(["eval", "pope-random", "--model", preds.to_str().unwrap()])
        .current_dir(dir.path())
        .env("MMLAB_LOG", "error")
        .output()
        .expect("running mmlab");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--data"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "no default test set written"
    );
}
