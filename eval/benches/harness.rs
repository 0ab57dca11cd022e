//! The harness's own overhead on a 90,000-answer predictions file: reading the predictions,
//! caching, parsing, metrics with 1000 bootstrap resamples, and writing the result files.
//!
//! `CARGO_TARGET_DIR=target-eval cargo bench -p mmlab-eval --bench harness`

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use mmlab_eval::{run_task, PredictionsFile, RunOptions};

const PER_SPLIT: usize = 30_000;
const SHAPES: [&str; 6] = ["circle", "ring", "square", "triangle", "star", "heart"];
const ANSWERS: [&str; 6] = [
    "Yes.",
    "No, there is not.",
    "yes there is a ring",
    "There is no star",
    "I cannot tell",
    "Yes, there is a heart in the image.",
];

/// A dataset folder with three 30,000-question POPE splits and a predictions file for all.
fn write_fixture(root: &Path) {
    let q = root.join("data/questions");
    std::fs::create_dir_all(&q).unwrap();
    let mut preds = String::new();
    for split in ["random", "popular", "adversarial"] {
        let mut s = String::new();
        for i in 0..PER_SPLIT {
            let label = if i % 2 == 0 { "yes" } else { "no" };
            writeln!(
                s,
                r#"{{"question_id": {i}, "image": "{:06}.png", "text": "Is there a {} in the image?", "label": "{label}"}}"#,
                i / 6,
                SHAPES[i % 6]
            )
            .unwrap();
            writeln!(
                preds,
                r#"{{"question_id": {i}, "split": "{split}", "answer": "{}"}}"#,
                ANSWERS[(i * 7 + split.len()) % 6]
            )
            .unwrap();
        }
        std::fs::write(q.join(format!("pope-{split}.jsonl")), s).unwrap();
    }
    std::fs::write(root.join("preds.jsonl"), preds).unwrap();
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path());
    let data = tmp.path().join("data");
    let preds = tmp.path().join("preds.jsonl");
    let fresh = AtomicUsize::new(0);
    let mut g = c.benchmark_group("pope-90k-predictions");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(12));
    g.bench_function(
        "cold cache (open, ask, cache, parse, metrics, write)",
        |b| {
            b.iter(|| {
                let n = fresh.fetch_add(1, Ordering::Relaxed);
                let opts = RunOptions {
                    results_dir: tmp.path().join("results"),
                    cache_dir: tmp.path().join(format!("cache-{n}")),
                    ..RunOptions::default()
                };
                let mut pf = PredictionsFile::open(&preds).unwrap();
                black_box(run_task("pope", &data, &mut pf, &opts).unwrap())
            })
        },
    );
    let warm = RunOptions {
        results_dir: tmp.path().join("results"),
        cache_dir: tmp.path().join("cache-warm"),
        ..RunOptions::default()
    };
    let mut pf = PredictionsFile::open(&preds).unwrap();
    run_task("pope", &data, &mut pf, &warm).unwrap();
    g.bench_function("warm cache (all answers from the cache)", |b| {
        b.iter(|| {
            let mut pf = PredictionsFile::open(&preds).unwrap();
            black_box(run_task("pope", &data, &mut pf, &warm).unwrap())
        })
    });
    g.bench_function("no cache", |b| {
        b.iter(|| {
            let opts = RunOptions {
                results_dir: tmp.path().join("results"),
                use_cache: false,
                ..RunOptions::default()
            };
            let mut pf = PredictionsFile::open(&preds).unwrap();
            black_box(run_task("pope", &data, &mut pf, &opts).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
