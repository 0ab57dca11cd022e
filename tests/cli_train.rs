//! `mmlab train --data DIR`: training from a dataset folder written by `mmlab data`, and the
//! errors a broken folder gets.

use std::path::Path;
use std::process::Command;

fn mmlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(args)
        .env("MMLAB_LOG", "error")
        .output()
        .expect("running mmlab")
}

fn write_shapes(dir: &Path) {
    let out = mmlab(&[
        "data",
        "shapes",
        "--out",
        dir.to_str().unwrap(),
        "--images",
        "4",
        "--train-images",
        "12",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn trains_from_a_dataset_folder() {
    let data = tempfile::tempdir().unwrap();
    write_shapes(data.path());
    let out_dir = tempfile::tempdir().unwrap();
    let model = out_dir.path().join("m");
    let out = mmlab(&[
        "train",
        "--model",
        "fuyu-tiny",
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train.jsonl",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(model.join("train.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect();
    assert!(!losses.is_empty(), "{log}");
    assert!(log.lines().last().unwrap().contains("\"step\":4"), "{log}");
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
    // The trained model answers.
    let img = std::fs::read_dir(data.path().join("images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = mmlab(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--max-tokens",
        "3",
        "Is there a circle in the image?",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_broken_dataset_folder_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    write_shapes(data.path());
    let train = |d: &Path| {
        let m = tempfile::tempdir().unwrap();
        let out = mmlab(&[
            "train",
            "--model",
            "fuyu-tiny",
            "--data",
            d.to_str().unwrap(),
            "--out",
            m.path().join("m").to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "64",
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A corrupt image that training needs (the first record's image; held-out records are
    // the last ones).
    let jsonl = data.path().join("train.jsonl");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let name = first["image"].as_str().unwrap().to_string();
    let img = data.path().join("images").join(&name);
    let good = std::fs::read(&img).unwrap();
    std::fs::write(&img, b"not a png").unwrap();
    let e = train(data.path());
    assert!(e.contains(&name), "{e}");
    std::fs::write(&img, good).unwrap();
    // Malformed JSONL.
    std::fs::write(&jsonl, format!("{text}{{ broken\n")).unwrap();
    let e = train(data.path());
    assert!(e.contains("train.jsonl"), "{e}");
    // No train.jsonl at all.
    std::fs::remove_file(&jsonl).unwrap();
    let e = train(data.path());
    assert!(e.contains("train.jsonl"), "{e}");
}

fn tiny_train(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--model",
        "fuyu-tiny",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
    ];
    args.extend_from_slice(extra);
    mmlab(&args)
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn train_refuses_a_non_empty_out_unless_resume_or_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("m");
    ok(&tiny_train(&m, &[]));
    let files = ["train.jsonl", "model.safetensors", "config.json"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(m.join(f)).unwrap())
        .collect();
    // Another run into it, with other settings, is refused and changes nothing.
    let e = failed(&tiny_train(&m, &["--seed", "9"]));
    assert!(
        e.contains("not empty") && e.contains("--overwrite") && e.contains("--resume"),
        "{e}"
    );
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(m.join(f)).unwrap(), b, "{f} changed");
    }
    // A directory that holds anything at all is refused too.
    let other = root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let e = failed(&tiny_train(&other, &[]));
    assert!(e.contains("notes.txt"), "{e}");
    // --overwrite replaces the run.
    ok(&tiny_train(&m, &["--seed", "9", "--overwrite"]));
    assert_ne!(
        std::fs::read(m.join("model.safetensors")).unwrap(),
        before[1]
    );
}

#[test]
fn resume_refuses_other_settings_naming_them_and_never_creates_out() {
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("m");
    ok(&tiny_train(&m, &["--stop-after", "2"]));
    let e = failed(&tiny_train(&m, &["--resume", "--lr", "0.001"]));
    assert!(e.contains("optim.lr: 0.003 -> 0.001"), "{e}");
    let e = failed(&tiny_train(&m, &["--resume", "--seed", "5"]));
    assert!(e.contains("seed: 0 -> 5"), "{e}");
    // The same settings resume.
    ok(&tiny_train(&m, &["--resume"]));
    assert!(m.join("model.safetensors").is_file());
    // Resuming a directory that does not exist creates nothing.
    let missing = root.path().join("missing");
    let e = failed(&tiny_train(&missing, &["--resume"]));
    assert!(e.contains("does not exist") && e.contains("missing"), "{e}");
    assert!(!missing.exists());
}

#[test]
fn an_unusable_out_fails_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // The data folder is missing too: the output is checked first, before the data is read.
    let out = mmlab(&[
        "train",
        "--model",
        "fuyu-tiny",
        "--data",
        root.path().join("no-data").to_str().unwrap(),
        "--out",
        file.join("m").to_str().unwrap(),
        "--steps",
        "2",
    ]);
    let e = failed(&out);
    assert!(e.contains("--out") && e.contains("a-file"), "{e}");
}

#[test]
fn pretrain_encoder_refuses_a_non_empty_out_unless_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("enc");
    let pre = |extra: &[&str]| {
        let mut args = vec![
            "pretrain-encoder",
            "--model",
            "llava-tiny",
            "--out",
            p.to_str().unwrap(),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--eval-pairs",
            "2",
        ];
        args.extend_from_slice(extra);
        mmlab(&args)
    };
    ok(&pre(&[]));
    let w = std::fs::read(p.join("encoder.safetensors")).unwrap();
    let e = failed(&pre(&["--seed", "3"]));
    assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(p.join("encoder.safetensors")).unwrap(), w);
    ok(&pre(&["--seed", "3", "--overwrite"]));
    assert_ne!(std::fs::read(p.join("encoder.safetensors")).unwrap(), w);
}
