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
