//! Every number the harness prints is the number it claims (issue 19): answers are cached by
//! media content, results carry their data identity and tier, predictions files are checked
//! against the questions, comparisons never mix runs, CHAIR is undefined without mentions, and
//! no output location fails after the work is done.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use mmlab_datasets::{write_shapes, ShapesDatasetConfig};
use mmlab_eval::{
    compare, compare_results, format_table, load_result, run_task, EvalError, Metrics,
    PredictionsFile, Request, Responder, Response, RunOptions, TaskResult,
};

fn opts(root: &Path) -> RunOptions {
    RunOptions {
        results_dir: root.join("results"),
        cache_dir: root.join("cache"),
        ..RunOptions::default()
    }
}

/// Answers "Yes" when the image file's first byte is `Y`, else "No": a model that looks at the
/// image (only the first byte: the rest holds the data set's path, which may contain a `Y`). Counts the questions it was asked.
struct LooksAtImage {
    asked: Rc<Cell<usize>>,
}

impl Responder for LooksAtImage {
    fn identity(&self) -> String {
        "looks@1".into()
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        self.asked.set(self.asked.get() + batch.len());
        batch
            .iter()
            .map(|r| {
                let p = r.image.as_ref().expect("an image task");
                let bytes = std::fs::read(p).map_err(|e| EvalError::io(p, e))?;
                Ok(Response::text(if bytes.first() == Some(&b'Y') {
                    "Yes"
                } else {
                    "No"
                }))
            })
            .collect()
    }
}

/// A POPE data set of `n` questions per split whose image `i` says `Y` or `N` by `present(i)`;
/// labels follow the images.
fn image_dataset(dir: &Path, n: usize, present: impl Fn(usize) -> bool) {
    std::fs::create_dir_all(dir.join("questions")).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    for i in 0..n {
        let b = if present(i) { "Y" } else { "N" };
        // Bytes unique to this image of this data set.
        let bytes = format!("{b}{i} {}", dir.display());
        std::fs::write(dir.join(format!("images/{i}.png")), bytes).unwrap();
    }
    for split in ["random", "popular", "adversarial"] {
        let lines: String = (0..n)
            .map(|i| {
                let label = if present(i) { "yes" } else { "no" };
                format!(
                    "{{\"question_id\": {i}, \"image\": \"{i}.png\", \"text\": \"Is there a ring in the image?\", \"label\": \"{label}\"}}\n"
                )
            })
            .collect();
        std::fs::write(dir.join(format!("questions/pope-{split}.jsonl")), lines).unwrap();
    }
}

fn f1(r: &TaskResult) -> f64 {
    match &r.metrics {
        Metrics::Pope(p) => p.splits[0].f1.value,
        other => panic!("{other:?}"),
    }
}

/// Case 1: same ids and prompts over other images must not be answered from the cache.
#[test]
fn cache_is_keyed_on_the_media_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    image_dataset(&a, 20, |i| i % 2 == 0);
    image_dataset(&b, 20, |i| i % 3 == 0);
    let asked = Rc::new(Cell::new(0));
    let mut m = LooksAtImage {
        asked: asked.clone(),
    };
    let ra = run_task("pope-random", &a, &mut m, &opts(tmp.path())).unwrap();
    assert_eq!(f1(&ra), 1.0);
    assert_eq!(asked.get(), 20);
    let rb = run_task("pope-random", &b, &mut m, &opts(tmp.path())).unwrap();
    // Every answer about b's images is b's, not a's from the cache.
    assert_eq!(rb.counts.from_cache, 0, "{}", format_table(&rb));
    assert_eq!(f1(&rb), 1.0);
    assert_eq!(asked.get(), 40);
    // The same data again is answered from the cache.
    let again = run_task("pope-random", &b, &mut m, &opts(tmp.path())).unwrap();
    assert_eq!(again.counts.from_cache, 20);
    assert_eq!(asked.get(), 40);
    // And a changed image is asked again.
    std::fs::write(b.join("images/1.png"), "Y1").unwrap();
    let changed = run_task("pope-random", &b, &mut m, &opts(tmp.path())).unwrap();
    assert_eq!(changed.counts.fresh, 1);
}

/// Case 1: every result names its data by content.
#[test]
fn results_record_the_data_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Same questions and labels, other image files.
    image_dataset(&a, 10, |i| i % 2 == 0);
    image_dataset(&b, 10, |i| i % 2 == 0);
    let mut m = LooksAtImage {
        asked: Rc::default(),
    };
    let ra = run_task("pope", &a, &mut m, &opts(tmp.path())).unwrap();
    let rb = run_task("pope", &b, &mut m, &opts(tmp.path())).unwrap();
    let (da, db) = (
        ra.config.data_identity.clone().unwrap(),
        rb.config.data_identity.clone().unwrap(),
    );
    assert_eq!(da.splits.len(), 3);
    assert_eq!(da.splits[0].media_files, 10);
    let q = std::fs::read(a.join("questions/pope-random.jsonl")).unwrap();
    assert_eq!(
        da.splits[0].questions_sha256,
        mmlab_eval::identity::sha256_hex(&q)
    );
    // Same question files, other images: other data.
    assert_eq!(da.splits[0].questions_sha256, db.splits[0].questions_sha256);
    assert_ne!(da.splits[0].media_sha256, db.splits[0].media_sha256);
    assert_ne!(da.id, db.id);
    // Written to the result file.
    let back = load_result(Path::new(ra.result_file.as_ref().unwrap())).unwrap();
    assert_eq!(back.config.data_identity, Some(da));
}

/// Case 7: a result on a generated data set names its tier and image size in the file and the
/// table.
#[test]
fn results_name_the_scene_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    for (name, scene) in [
        ("aligned", mmlab_datasets::scene::SceneConfig::small()),
        ("free", mmlab_datasets::scene::SceneConfig::free_small()),
    ] {
        let dir = data.join(name);
        let cfg = ShapesDatasetConfig {
            seed: 5,
            scene,
            pope_images: 4,
            count_images: 4,
            compositional_images: 0,
            train_images: 0,
            ..ShapesDatasetConfig::default()
        };
        write_shapes(&dir, &cfg, &|_| {}).unwrap();
        let mut m = LooksAtImage {
            asked: Rc::default(),
        };
        let r = run_task("pope", &dir, &mut m, &opts(tmp.path())).unwrap();
        let scene = r
            .config
            .data_identity
            .as_ref()
            .unwrap()
            .scene
            .clone()
            .unwrap();
        assert_eq!(scene.tier, name);
        assert_eq!((scene.width, scene.height), (Some(48), Some(48)));
        let table = format_table(&r);
        assert!(table.contains(&format!("tier {name} 48x48")), "{table}");
        assert!(
            r.config
                .data_identity
                .as_ref()
                .unwrap()
                .manifest_sha256
                .is_some(),
            "the manifest is part of the identity"
        );
    }
    // A question file edited after the data set was written no longer matches its manifest.
    let q = data.join("aligned/questions/pope-random.jsonl");
    let mut text = std::fs::read_to_string(&q).unwrap();
    text = text.replacen("\"yes\"", "\"no\"", 1);
    std::fs::write(&q, text).unwrap();
    let mut m = LooksAtImage {
        asked: Rc::default(),
    };
    let err = run_task("pope", &data.join("aligned"), &mut m, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Case 2: a multi-split task refuses predictions that do not say their split.
#[test]
fn untagged_predictions_are_refused_for_a_multi_split_task() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    image_dataset(&data, 4, |i| i % 2 == 0);
    let p = tmp.path().join("answers.jsonl");
    let lines: String = (0..4)
        .map(|i| format!("{{\"question_id\": {i}, \"text\": \"Yes\"}}\n"))
        .collect();
    write(&p, &lines);
    let mut pf = PredictionsFile::open(&p).unwrap();
    let err = run_task("pope", &data, &mut pf, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("answers.jsonl"), "{err}");
    assert!(err.contains("split"), "{err}");
    // One split at a time is fine.
    let mut pf = PredictionsFile::open(&p).unwrap();
    run_task("pope-random", &data, &mut pf, &opts(tmp.path())).unwrap();
    // So is one file per split, each named after its split.
    let names = ["x_random.jsonl", "x_popular.jsonl", "x_adversarial.jsonl"];
    let files: Vec<_> = names.iter().map(|n| tmp.path().join(n)).collect();
    for f in &files {
        write(f, &lines);
    }
    let mut pf = PredictionsFile::open_many(&files).unwrap();
    let r = run_task("pope", &data, &mut pf, &opts(tmp.path())).unwrap();
    assert_eq!(r.counts.questions, 12);
    // A file whose name says no split cannot be one of several.
    let odd = tmp.path().join("answers2.jsonl");
    write(&odd, &lines);
    let err = PredictionsFile::open_many(&[files[0].clone(), odd])
        .unwrap_err()
        .to_string();
    assert!(err.contains("answers2.jsonl"), "{err}");
}

/// Case 2: answers that carry their question (LLaVA's `prompt`) are checked against the
/// question with the same id; a file for another split with the same ids is refused.
#[test]
fn predictions_are_checked_against_their_questions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let q = |split: &str, objects: [&str; 2]| {
        let lines: String = objects
            .iter()
            .enumerate()
            .map(|(i, o)| {
                format!(
                    "{{\"question_id\": {i}, \"image\": \"{i}.jpg\", \"text\": \"Is there a {o} in the image?\", \"label\": \"yes\"}}\n"
                )
            })
            .collect();
        write(&data.join(format!("coco_pope_{split}.json")), &lines);
    };
    q("random", ["dog", "cat"]);
    q("popular", ["person", "car"]);
    let p = tmp.path().join("llava_random.jsonl");
    write(
        &p,
        concat!(
            "{\"question_id\": 0, \"prompt\": \"Is there a dog in the image?\\nAnswer the question using a single word or phrase.\", \"text\": \"Yes\"}\n",
            "{\"question_id\": 1, \"prompt\": \"Is there a cat in the image?\\nAnswer the question using a single word or phrase.\", \"text\": \"No\"}\n",
        ),
    );
    let mut pf = PredictionsFile::open(&p).unwrap();
    let r = run_task(
        "pope-random",
        &data.join("coco_pope_random.json"),
        &mut pf,
        &opts(tmp.path()),
    )
    .unwrap();
    assert_eq!(r.counts.questions, 2);
    let mut pf = PredictionsFile::open(&p).unwrap();
    let err = run_task(
        "pope-popular",
        &data.join("coco_pope_popular.json"),
        &mut pf,
        &opts(tmp.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2 answers are to other questions"), "{err}");
    assert!(err.contains("Is there a person"), "{err}");
}

/// Case 2: answers whose ids match no question are reported, with a count and the first few.
#[test]
fn predictions_matching_no_question_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    image_dataset(&data, 3, |_| true);
    let p = tmp.path().join("answers.jsonl");
    let mut lines: String = (0..3)
        .map(|i| format!("{{\"question_id\": {i}, \"answer\": \"Yes\"}}\n"))
        .collect();
    for i in 100..107 {
        lines.push_str(&format!("{{\"question_id\": {i}, \"answer\": \"No\"}}\n"));
    }
    write(&p, &lines);
    let mut pf = PredictionsFile::open(&p).unwrap();
    let r = run_task("pope-random", &data, &mut pf, &opts(tmp.path())).unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].starts_with("7 answers"), "{}", r.warnings[0]);
    assert!(r.warnings[0].contains("100:4"), "{}", r.warnings[0]);
    assert!(format_table(&r).contains("warning: 7 answers"));
}

/// Case 3: a partial run and a full run of the same model and task are both shown, each
/// saying what it is; the newest run does not hide the other.
#[test]
fn compare_never_mixes_partial_and_full_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    image_dataset(&data, 30, |i| i % 2 == 0);
    let mut m = LooksAtImage {
        asked: Rc::default(),
    };
    let full = run_task("pope-random", &data, &mut m, &opts(tmp.path())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let part = run_task(
        "pope-random",
        &data,
        &mut m,
        &RunOptions {
            limit: Some(10),
            ..opts(tmp.path())
        },
    )
    .unwrap();
    let table = compare(&[tmp.path().join("results")]).unwrap();
    assert!(table.contains("limit 10 (partial)"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("looks@1")).collect();
    assert_eq!(rows.len(), 2, "both runs shown:\n{table}");
    assert!(rows.iter().any(|l| l.contains(" all")), "{table}");
    let keys = [full.key(), part.key()];
    assert_ne!(keys[0], keys[1]);
    assert_eq!(keys[0].differences(&keys[1]), vec!["data", "limit"]);
    // Runs on other data are told apart too.
    let other = tmp.path().join("o");
    image_dataset(&other, 30, |i| i % 3 == 0);
    let r2 = run_task("pope-random", &other, &mut m, &opts(tmp.path())).unwrap();
    let t = compare_results(&[full.clone(), r2]);
    assert!(t.contains("data "), "{t}");
}

/// Case 4: captions that mention nothing leave CHAIR undefined, and are not "correct".
#[test]
fn chair_is_undefined_without_mentions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir_all(data.join("questions")).unwrap();
    write(
        &data.join("questions/chair.jsonl"),
        concat!(
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Describe the image.\", \"objects\": [\"ring\"]}\n",
            "{\"question_id\": 2, \"image\": \"b.png\", \"text\": \"Describe the image.\", \"objects\": [\"frame\"]}\n",
        ),
    );
    let preds = tmp.path().join("captions.jsonl");
    write(
        &preds,
        "{\"question_id\": 1, \"answer\": \"\"}\n{\"question_id\": 2, \"answer\": \"Nothing.\"}\n",
    );
    let mut pf = PredictionsFile::open(&preds).unwrap();
    let r = run_task("chair", &data, &mut pf, &opts(tmp.path())).unwrap();
    let Metrics::Chair(c) = &r.metrics else {
        panic!()
    };
    assert_eq!(c.mentions, 0);
    assert_eq!(c.chair_i, None);
    assert_eq!(c.chair_s, None);
    assert!(format_table(&r).contains("undefined (no object mentions)"));
    let samples = mmlab_eval::read_samples(
        &mmlab_eval::harness::samples_path(Path::new(r.result_file.as_ref().unwrap()), &r).unwrap(),
    )
    .unwrap();
    assert!(samples.iter().all(|s| !s.correct));
    // The data set's category name for the hollow square ("frame") is the table's.
    assert!(r.config.synonyms.as_ref().unwrap().contains_key("frame"));
}

/// An unwritable results folder fails before any question is asked.
#[test]
fn unwritable_results_fail_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    image_dataset(&data, 5, |_| true);
    // A file where the results folder should be: no process (root included) can write there.
    let blocker = tmp.path().join("blocker");
    write(&blocker, "");
    let asked = Rc::new(Cell::new(0));
    let mut m = LooksAtImage {
        asked: asked.clone(),
    };
    for o in [
        RunOptions {
            results_dir: blocker.join("results"),
            ..opts(tmp.path())
        },
        RunOptions {
            cache_dir: blocker.join("cache"),
            ..opts(tmp.path())
        },
    ] {
        let err = run_task("pope", &data, &mut m, &o).unwrap_err().to_string();
        assert!(err.contains("blocker"), "{err}");
    }
    assert_eq!(
        asked.get(),
        0,
        "no question asked before the outputs were checked"
    );
}

/// A model that reads the images fails at once, naming the file, when one is missing.
#[test]
fn missing_media_fail_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    image_dataset(&data, 5, |_| true);
    std::fs::remove_file(data.join("images/3.png")).unwrap();
    let asked = Rc::new(Cell::new(0));
    let mut m = LooksAtImage {
        asked: asked.clone(),
    };
    let err = run_task("pope", &data, &mut m, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3.png"), "{err}");
    assert_eq!(asked.get(), 0);
}

/// Concurrent writers of one file never rename each other's temporary files away.
#[test]
fn concurrent_atomic_writes_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("manifest.json");
    std::thread::scope(|s| {
        for t in 0..8 {
            let target = &target;
            s.spawn(move || {
                for i in 0..50 {
                    let body = format!("{t}-{i}");
                    mmlab_eval::harness::write_atomic(target, body.as_bytes()).unwrap();
                    mmlab_datasets::writer::write_atomic(target, body.as_bytes()).unwrap();
                }
            });
        }
    });
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary files left behind");
}
