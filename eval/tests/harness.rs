//! End-to-end tests of the harness: responders, caching and resume, sharding, result files.

mod common;

use std::path::{Path, PathBuf};

use common::{write_dataset, Flaky};
use mmlab_eval::{
    compare, format_table, load_result, load_task, merge, read_samples, run_task, AnswerMode,
    Constant, EvalError, Metrics, MissingPolicy, Oracle, PredictionsFile, RandomResponder, Request,
    Responder, Response, RunOptions, TaskResult,
};

fn opts(root: &Path) -> RunOptions {
    RunOptions {
        results_dir: root.join("results"),
        cache_dir: root.join("cache"),
        ..RunOptions::default()
    }
}

fn pope(r: &TaskResult) -> &mmlab_eval::PopeReport {
    match &r.metrics {
        Metrics::Pope(p) => p,
        other => panic!("expected POPE metrics, got {other:?}"),
    }
}

fn count(r: &TaskResult) -> &mmlab_eval::CountReport {
    match &r.metrics {
        Metrics::Count(c) => c,
        other => panic!("expected count metrics, got {other:?}"),
    }
}

fn chair(r: &TaskResult) -> &mmlab_eval::ChairReport {
    match &r.metrics {
        Metrics::Chair(c) => c,
        other => panic!("expected CHAIR metrics, got {other:?}"),
    }
}

#[test]
fn oracle_scores_perfectly_on_every_task() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 40, 1);
    for name in [
        "pope",
        "pope-adversarial",
        "count",
        "chair",
        "audio-pope",
        "audio-count",
    ] {
        let splits = load_task(name, &data).unwrap();
        let mut oracle = Oracle::new(&splits);
        let r = run_task(name, &data, &mut oracle, &opts(tmp.path())).unwrap();
        match &r.metrics {
            Metrics::Pope(p) => {
                for s in &p.splits {
                    assert_eq!(s.accuracy.value, 1.0, "{name} {}", s.split);
                    assert_eq!(s.precision.value, 1.0);
                    assert_eq!(s.recall.value, 1.0);
                    assert_eq!(s.f1.value, 1.0);
                    assert_eq!(s.yes_ratio.value, 0.5);
                    assert_eq!(s.unclear, 0);
                    assert_eq!(s.n, 40);
                }
                let m = p.mean.as_ref().map(|m| m.accuracy.value).unwrap_or(1.0);
                assert_eq!(m, 1.0);
            }
            Metrics::Count(c) => {
                assert_eq!(c.accuracy.value, 1.0, "{name}");
                assert_eq!(c.mae.value, 0.0);
                assert_eq!(c.off_by_one.value, 1.0);
                assert!(c.per_count.iter().all(|p| p.accuracy == 1.0));
            }
            Metrics::Chair(c) => {
                assert_eq!(c.chair_i.unwrap().value, 0.0);
                assert_eq!(c.chair_s.unwrap().value, 0.0);
                assert_eq!(c.recall.value, 1.0);
                assert!(c.mentions > 0);
            }
            Metrics::Compositional(_) => unreachable!("not among the tasks run here"),
        }
        assert_eq!(r.counts.fresh + r.counts.from_cache, r.counts.questions);
        // `pope-adversarial` reuses the oracle's cached answers from the `pope` run.
        let cached = if name == "pope-adversarial" { 40 } else { 0 };
        assert_eq!(r.counts.from_cache, cached, "{name}");
    }
}

#[test]
fn always_yes_gets_full_recall_and_yes_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 30, 2);
    let r = run_task(
        "pope",
        &data,
        &mut Constant("Yes".into()),
        &opts(tmp.path()),
    )
    .unwrap();
    let p = pope(&r);
    assert_eq!(p.splits.len(), 3);
    for s in &p.splits {
        assert_eq!(s.recall.value, 1.0);
        assert_eq!(s.yes_ratio.value, 1.0);
        // 15 of 30 labels are yes.
        assert_eq!(s.precision.value, 0.5);
        assert_eq!(s.accuracy.value, 0.5);
        assert_eq!(s.confusion.tp, 15);
        assert_eq!(s.confusion.fp, 15);
        // With no variation in answers, precision's interval is the label share's.
        assert_eq!((s.recall.low, s.recall.high), (1.0, 1.0));
        assert_eq!((s.yes_ratio.low, s.yes_ratio.high), (1.0, 1.0));
    }
    assert_eq!(p.mean.as_ref().unwrap().yes_ratio.value, 1.0);
}

#[test]
fn always_no_gets_zero_recall_without_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 20, 3);
    let r = run_task(
        "pope-random",
        &data,
        &mut Constant("No, there is not.".into()),
        &opts(tmp.path()),
    )
    .unwrap();
    let s = &pope(&r).splits[0];
    assert_eq!(s.recall.value, 0.0);
    assert_eq!(s.precision.value, 0.0);
    assert_eq!(s.f1.value, 0.0);
    assert_eq!(s.yes_ratio.value, 0.0);
    assert_eq!(s.accuracy.value, 0.5);
    // The result file is valid JSON that reads back to the same value.
    let back = load_result(Path::new(r.result_file.as_ref().unwrap())).unwrap();
    assert_eq!(back, r);
}

#[test]
fn random_responder_lands_near_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 2000, 4);
    let mut rnd = RandomResponder { seed: 11 };
    let r = run_task("pope", &data, &mut rnd, &opts(tmp.path())).unwrap();
    let p = pope(&r);
    for s in &p.splits {
        // Standard error of a 2000-question accuracy at chance is 0.011.
        assert!((s.accuracy.value - 0.5).abs() < 0.04, "{s:?}");
        assert!((s.yes_ratio.value - 0.5).abs() < 0.04, "{s:?}");
        assert!(s.accuracy.low < 0.5 + 0.04 && s.accuracy.high > 0.5 - 0.04);
    }
    let r = run_task("count", &data, &mut rnd, &opts(tmp.path())).unwrap();
    let c = count(&r);
    // Random counts in 0..=10 against truths in 0..=6: chance is 1/11.
    assert!((c.accuracy.value - 1.0 / 11.0).abs() < 0.03, "{c:?}");
    assert_eq!(c.unparsed, 0);
}

#[test]
fn killed_run_resumes_from_cache_and_gives_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 50, 5);
    // 150 questions in all.
    let reference = {
        let other = tempfile::tempdir().unwrap();
        let mut r = Flaky::new(RandomResponder { seed: 7 }, None);
        run_task("pope", &data, &mut r, &opts(other.path())).unwrap()
    };

    let o = opts(tmp.path());
    let mut first = Flaky::new(RandomResponder { seed: 7 }, Some(65));
    let err = run_task("pope", &data, &mut first, &o).unwrap_err();
    assert!(matches!(err, EvalError::Responder { .. }), "{err}");
    assert_eq!(first.calls.get(), 60);
    // Nothing was written to results by the failed run (the folder was made, empty, when its
    // writability was checked before the run).
    let written: Vec<_> = std::fs::read_dir(o.results_dir.join("random"))
        .map(|rd| rd.collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");

    let mut second = Flaky::new(RandomResponder { seed: 7 }, None);
    let resumed = run_task("pope", &data, &mut second, &o).unwrap();
    assert_eq!(
        second.calls.get(),
        90,
        "only the unanswered questions are asked"
    );
    assert_eq!(resumed.counts.from_cache, 60);
    assert_eq!(resumed.counts.fresh, 90);
    assert_eq!(resumed.metrics, reference.metrics);

    // A re-run with the same model costs nothing.
    let mut third = Flaky::new(RandomResponder { seed: 7 }, None);
    let again = run_task("pope", &data, &mut third, &o).unwrap();
    assert_eq!(third.calls.get(), 0);
    assert_eq!(again.metrics, reference.metrics);
    assert_ne!(again.result_file, resumed.result_file);

    // A different model does not see that cache.
    let mut fourth = Flaky::new(RandomResponder { seed: 8 }, None);
    run_task("pope", &data, &mut fourth, &o).unwrap();
    assert_eq!(fourth.calls.get(), 150);
}

#[test]
fn resume_tolerates_a_truncated_cache_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 20, 6);
    let o = opts(tmp.path());
    let mut first = Flaky::new(Constant("Yes".into()), Some(15));
    run_task("count", &data, &mut first, &o).unwrap_err();
    // Simulate a kill in the middle of writing the next line.
    let file = walk_files(&o.cache_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("count.jsonl"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"{\"question_id\":\"count-19\",\"pro");
    std::fs::write(&file, bytes).unwrap();
    let mut second = Flaky::new(Constant("Yes".into()), None);
    let r = run_task("count", &data, &mut second, &o).unwrap();
    assert_eq!(second.calls.get(), 10);
    assert_eq!(r.counts.questions, 20);
    // The cache file holds a header and 20 whole lines afterwards.
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 21);
    assert!(text.ends_with('\n'));
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn shards_merge_to_the_unsharded_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 41, 7);
    let o = opts(tmp.path());
    let full = run_task("pope", &data, &mut RandomResponder { seed: 3 }, &o).unwrap();
    let mut shard_paths = Vec::new();
    let mut calls = 0;
    for i in 0..3 {
        let so = RunOptions {
            shard: Some((i, 3)),
            cache_dir: tmp.path().join(format!("cache-{i}")),
            ..opts(tmp.path())
        };
        let mut r = Flaky::new(RandomResponder { seed: 3 }, None);
        let res = run_task("pope", &data, &mut r, &so).unwrap();
        calls += r.calls.get();
        assert_eq!(res.config.shard, Some((i, 3)));
        shard_paths.push(PathBuf::from(res.result_file.unwrap()));
    }
    assert_eq!(calls, 123);
    let merged = merge(&shard_paths).unwrap();
    assert_eq!(merged.metrics, full.metrics);
    assert_eq!(merged.counts.questions, 123);
    assert_eq!(merged.config.shard, None);
    // The merged samples are the full run's samples, in the same order.
    let dir = Path::new(merged.result_file.as_ref().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let ms = read_samples(&dir.join(merged.samples_file.as_ref().unwrap())).unwrap();
    let fs = read_samples(&dir.join(full.samples_file.as_ref().unwrap())).unwrap();
    let key = |s: &mmlab_eval::Sample| {
        (
            s.task.clone(),
            s.question_id.clone(),
            s.answer.clone(),
            s.correct,
        )
    };
    assert_eq!(
        ms.iter().map(key).collect::<Vec<_>>(),
        fs.iter().map(key).collect::<Vec<_>>()
    );

    // Missing and repeated shards are refused.
    let err = merge(&shard_paths[..2]).unwrap_err().to_string();
    assert!(err.contains("shard 2/3 is missing"), "{err}");
    let twice = vec![
        shard_paths[0].clone(),
        shard_paths[0].clone(),
        shard_paths[1].clone(),
    ];
    let err = merge(&twice).unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
    let odd = run_task(
        "pope",
        &data,
        &mut RandomResponder { seed: 3 },
        &RunOptions {
            shard: Some((2, 3)),
            limit: Some(30),
            ..opts(tmp.path())
        },
    )
    .unwrap();
    let mixed = vec![
        shard_paths[0].clone(),
        shard_paths[1].clone(),
        PathBuf::from(odd.result_file.unwrap()),
    ];
    let err = merge(&mixed).unwrap_err().to_string();
    assert!(err.contains("different settings"), "{err}");
    let err = merge(&[PathBuf::from(full.result_file.unwrap())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a shard result"), "{err}");
}

#[test]
fn sharded_runs_share_the_cache_with_a_later_full_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 10, 8);
    let o = opts(tmp.path());
    for i in 0..2 {
        let so = RunOptions {
            shard: Some((i, 2)),
            ..opts(tmp.path())
        };
        run_task("count", &data, &mut Constant("2".into()), &so).unwrap();
    }
    let mut r = Flaky::new(Constant("2".into()), None);
    let full = run_task("count", &data, &mut r, &o).unwrap();
    assert_eq!(r.calls.get(), 0);
    assert_eq!(full.counts.from_cache, 10);
}

#[test]
fn limit_takes_the_first_questions_of_each_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 30, 9);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let o = RunOptions {
        limit: Some(7),
        progress: Some(Box::new(move |done, total| {
            log.lock().unwrap().push((done, total))
        })),
        ..opts(tmp.path())
    };
    let splits = load_task("pope", &data).unwrap();
    let r = run_task("pope", &data, &mut Oracle::new(&splits), &o).unwrap();
    assert_eq!(r.counts.questions, 21);
    // Told once before asking (nothing cached) and once per batch (the oracle takes all 21).
    assert_eq!(*seen.lock().unwrap(), vec![(0, 21), (21, 21)]);
    for s in &pope(&r).splits {
        assert_eq!(s.n, 7);
        // Labels alternate yes/no from yes: 4 yes in the first 7.
        assert_eq!(s.confusion.tp, 4);
    }
    assert_eq!(r.config.splits[0].selected, 7);
    assert_eq!(r.config.splits[0].questions, 30);
    let zero = RunOptions {
        limit: Some(0),
        ..opts(tmp.path())
    };
    assert!(run_task("pope", &data, &mut Constant("Yes".into()), &zero).is_err());
}

/// Scores candidates by a fixed preference, and checks what it is asked.
struct Scorer;

impl Responder for Scorer {
    fn identity(&self) -> String {
        "scorer".into()
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        Ok(batch
            .iter()
            .map(|r| {
                let c = r
                    .candidates
                    .as_ref()
                    .expect("candidate mode sends candidates");
                // Prefer "no" for even ids, "yes" for odd (ids start at 1; labels yes at odd ids).
                let id: usize = r.question_id.parse().unwrap();
                let want = if id % 2 == 1 { "yes" } else { "no" };
                let scores = c
                    .iter()
                    .map(|x| if x == want { -0.1 } else { -2.3 })
                    .collect();
                Response::scored("", scores)
            })
            .collect())
    }
}

#[test]
fn candidate_mode_takes_the_best_scored_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 12, 10);
    let o = RunOptions {
        mode: AnswerMode::Score,
        ..opts(tmp.path())
    };
    let r = run_task("pope-popular", &data, &mut Scorer, &o).unwrap();
    let s = &pope(&r).splits[0];
    assert_eq!(s.accuracy.value, 1.0);
    let samples = read_samples(
        &Path::new(r.result_file.as_ref().unwrap())
            .parent()
            .unwrap()
            .join(r.samples_file.as_ref().unwrap()),
    )
    .unwrap();
    assert_eq!(samples[0].scored_answer.as_deref(), Some("yes"));
    assert_eq!(samples[0].scores.as_deref(), Some(&[-0.1f32, -2.3][..]));

    // Wrong number of scores is an error naming the model.
    let yes = run_task(
        "pope-popular",
        &data,
        &mut Constant("Yes".into()),
        &RunOptions {
            mode: AnswerMode::Score,
            ..opts(tmp.path())
        },
    )
    .unwrap();
    assert_eq!(pope(&yes).splits[0].yes_ratio.value, 1.0);
    // CHAIR has no candidates.
    let err = run_task("chair", &data, &mut Scorer, &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no fixed answers"), "{err}");
}

struct BadShape;

impl Responder for BadShape {
    fn identity(&self) -> String {
        "bad".into()
    }
    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        Ok(batch
            .iter()
            .skip(1)
            .map(|_| Response::text("Yes"))
            .collect())
    }
}

#[test]
fn wrong_number_of_responses_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 4, 11);
    let err = run_task("pope-random", &data, &mut BadShape, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("returned 3 responses for 4 requests"), "{err}");
}

#[test]
fn predictions_file_missing_answers_error_or_count_as_unanswered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 10, 12);
    let preds = tmp.path().join("preds.jsonl");
    // Answers for ids 1..=9 only; labels yes at odd ids.
    let lines: Vec<String> = (1..=9)
        .map(|i| {
            let a = if i % 2 == 1 { "Yes." } else { "No." };
            format!(r#"{{"question_id": {i}, "answer": "{a}"}}"#)
        })
        .collect();
    std::fs::write(&preds, lines.join("\n")).unwrap();
    let mut pf = PredictionsFile::open(&preds).unwrap();
    let err = run_task("pope-random", &data, &mut pf, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prediction for question id 10"), "{err}");
    assert!(err.contains("preds.jsonl"), "{err}");

    let mut pf = PredictionsFile::open(&preds)
        .unwrap()
        .with_missing(MissingPolicy::Unanswered);
    let r = run_task(
        "pope-random",
        &data,
        &mut pf,
        &RunOptions {
            cache_dir: tmp.path().join("c2"),
            ..opts(tmp.path())
        },
    )
    .unwrap();
    let s = &pope(&r).splits[0];
    assert_eq!(r.counts.unanswered, 1);
    assert_eq!(s.accuracy.value, 0.9);
    assert_eq!(s.confusion.unanswered_no, 1);
    assert_eq!(s.yes_ratio.value, 0.5);
    assert_eq!(s.recall.value, 1.0);
    assert_eq!(r.model, "preds");
    assert!(r.result_file.as_ref().unwrap().contains("/preds/"));
}

#[test]
fn samples_file_records_every_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 6, 13);
    let preds = tmp.path().join("p.jsonl");
    std::fs::write(
        &preds,
        (0..6)
            .map(|i| {
                format!(
                    r#"{{"question_id": "count-{i}", "text": "{}"}}"#,
                    [
                        "3",
                        "three apples",
                        "There are 12.",
                        "none",
                        "I cannot tell",
                        "2"
                    ][i]
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let mut pf = PredictionsFile::open(&preds).unwrap();
    let r = run_task("count", &data, &mut pf, &opts(tmp.path())).unwrap();
    let samples = read_samples(
        &Path::new(r.result_file.as_ref().unwrap())
            .parent()
            .unwrap()
            .join(r.samples_file.as_ref().unwrap()),
    )
    .unwrap();
    assert_eq!(samples.len(), 6);
    let parsed: Vec<serde_json::Value> = samples.iter().map(|s| s.parsed.clone()).collect();
    assert_eq!(
        parsed,
        vec![
            serde_json::json!(3),
            serde_json::json!(3),
            serde_json::json!(12),
            serde_json::json!(0),
            serde_json::Value::Null,
            serde_json::json!(2),
        ]
    );
    for s in &samples {
        assert_eq!(s.correct, s.parsed == s.label, "{s:?}");
        assert!(s.prompt.starts_with("How many"));
    }
    assert_eq!(count(&r).unparsed, 1);
    assert_eq!(r.counts.unclear, 1);
}

#[test]
fn chair_scores_captions_against_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("questions")).unwrap();
    std::fs::write(
        data.join("questions/chair.jsonl"),
        concat!(
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Describe the image.\", \"objects\": [\"ring\", \"star\"]}\n",
            "{\"question_id\": 2, \"image\": \"b.png\", \"text\": \"Describe the image.\", \"objects\": [\"hollow square\"]}\n",
            "{\"question_id\": 3, \"image\": \"c.png\", \"text\": \"Describe the image.\", \"objects\": [\"heart\"]}\n",
        ),
    )
    .unwrap();
    let preds = tmp.path().join("captions.jsonl");
    std::fs::write(
        &preds,
        concat!(
            "{\"question_id\": 1, \"answer\": \"A hoop and two stars next to a moon.\"}\n",
            "{\"question_id\": 2, \"answer\": \"A square outline.\"}\n",
            "{\"question_id\": 3, \"answer\": \"A red triangle and a blue square.\"}\n",
        ),
    )
    .unwrap();
    let mut pf = PredictionsFile::open(&preds).unwrap();
    let r = run_task("chair", &data, &mut pf, &opts(tmp.path())).unwrap();
    let c = chair(&r);
    // Mentions: ring, star, crescent | hollow square | triangle, square.
    assert_eq!(c.mentions, 6);
    assert_eq!(c.hallucinated_mentions, 3);
    assert_eq!(c.hallucinated_captions, 2);
    assert_eq!(c.chair_i.unwrap().value, 3.0 / 6.0);
    assert_eq!(c.chair_s.unwrap().value, 2.0 / 3.0);
    assert_eq!(c.recall.value, 3.0 / 4.0);
    assert!(r.config.synonyms.as_ref().unwrap().contains_key("ring"));
}

#[test]
fn audio_tasks_send_audio_paths() {
    struct Check;
    impl Responder for Check {
        fn identity(&self) -> String {
            "check".into()
        }
        fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
            for r in batch {
                assert!(r.image.is_none());
                let a = r.audio.as_ref().unwrap();
                assert!(a.to_string_lossy().contains("/audio/"), "{a:?}");
                assert!(r.prompt.ends_with("in the audio?"), "{}", r.prompt);
            }
            Ok(batch.iter().map(|_| Response::text("No")).collect())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 5, 14);
    let r = run_task("audio-pope", &data, &mut Check, &opts(tmp.path())).unwrap();
    assert_eq!(pope(&r).splits.len(), 3);
    assert_eq!(pope(&r).splits[0].task, "audio-pope-random");
}

#[test]
fn bad_question_files_name_the_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Is there a ring?\", \"label\": \"maybe\"}\n",
            ":1: field `label`",
        ),
        (
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Is there a ring?\", \"label\": \"yes\"}\n{\"question_id\": 2, \"text\": \"Is there a ring?\", \"label\": \"no\"}\n",
            ":2: field `image`",
        ),
        (
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Q\", \"label\": \"yes\"}\n{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Q\", \"label\": \"no\"}\n",
            "duplicate question id 1",
        ),
        ("not json\n", ":1: invalid JSON"),
        ("\n\n", "holds no questions"),
        (
            "{\"question_id\": [1], \"image\": \"a.png\", \"text\": \"Q\", \"label\": \"yes\"}\n",
            "field `question_id`",
        ),
    ];
    for (i, (content, needle)) in cases.iter().enumerate() {
        let f = tmp.path().join(format!("case{i}.jsonl"));
        std::fs::write(&f, content).unwrap();
        let err = load_task("pope-random", &f).unwrap_err().to_string();
        assert!(err.contains(needle), "case {i}: {err}");
        assert!(err.contains(&format!("case{i}.jsonl")), "case {i}: {err}");
    }
    let err = load_task("pope", tmp.path()).unwrap_err().to_string();
    assert!(err.contains("pope-random.jsonl"), "{err}");
    let err = load_task("nope", tmp.path()).unwrap_err().to_string();
    assert!(err.contains("unknown task `nope`"), "{err}");
    let err = load_task("pope", &tmp.path().join("case0.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not say which one"), "{err}");
}

#[test]
fn tables_and_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data, 24, 15);
    let o = RunOptions {
        bootstrap: mmlab_eval::Bootstrap {
            resamples: 200,
            seed: 1,
            confidence: 0.95,
        },
        ..opts(tmp.path())
    };
    let yes = run_task("pope", &data, &mut Constant("Yes".into()), &o).unwrap();
    let rnd = run_task("pope", &data, &mut RandomResponder { seed: 2 }, &o).unwrap();
    let cnt = run_task("count", &data, &mut RandomResponder { seed: 2 }, &o).unwrap();
    let ch = run_task("chair", &data, &mut RandomResponder { seed: 2 }, &o).unwrap();
    insta::assert_snapshot!("pope_always_yes", format_table(&yes));
    insta::assert_snapshot!("pope_random", rnd.to_string());
    insta::assert_snapshot!("count_random", format_table(&cnt));
    insta::assert_snapshot!("chair_random", format_table(&ch));
    let table = compare(std::slice::from_ref(&o.results_dir)).unwrap();
    insta::assert_snapshot!("compare", table);

    // The same comparison as Markdown, CSV and JSON.
    let dirs = std::slice::from_ref(&o.results_dir);
    let md = mmlab_eval::compare_as(dirs, mmlab_eval::CompareFormat::Markdown).unwrap();
    insta::assert_snapshot!("compare_md", md);
    let csv = mmlab_eval::compare_as(dirs, mmlab_eval::CompareFormat::Csv).unwrap();
    let blocks: Vec<&str> = csv.split("\n\n").collect();
    // POPE (2 results x 4 rows), counting (1), CHAIR (1): a header and its rows each.
    assert_eq!(blocks.len(), 3, "{csv}");
    assert_eq!(blocks[0].trim_end().lines().count(), 1 + 8, "{csv}");
    assert!(
        blocks[0].starts_with("section,model,task,tier,run,split,accuracy"),
        "{csv}"
    );
    let header_cols = blocks[0].lines().next().unwrap().split(',').count();
    for b in &blocks {
        let mut lines = b.trim_end().lines();
        let n = lines.next().unwrap().split(',').count();
        for l in lines {
            // Fields with commas (intervals like "0.5 [0.4, 0.6]") are quoted.
            let mut fields = 0;
            let mut quoted = false;
            for c in l.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields += 1,
                    _ => {}
                }
            }
            assert_eq!(fields + 1, n, "{l}");
        }
    }
    assert_eq!(header_cols, 4 + 1 + 8 + 2);
    let json = mmlab_eval::compare_as(dirs, mmlab_eval::CompareFormat::Json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let tasks: Vec<&str> = rows.iter().map(|r| r["task"].as_str().unwrap()).collect();
    assert_eq!(tasks.iter().filter(|t| **t == "pope").count(), 2);
    assert!(rows.iter().any(|r| r["metrics"]["kind"] == "count"));
    assert!("yaml".parse::<mmlab_eval::CompareFormat>().is_err());
}

#[test]
fn compositional_accuracy_on_seen_and_held_out_pairs_and_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("questions")).unwrap();
    let q = |id: u32, img: &str, text: &str, label: &str| {
        format!(
            "{{\"question_id\": {id}, \"image\": \"{img}\", \"text\": \"{text}\", \"label\": \"{label}\"}}\n"
        )
    };
    let seen = [
        q(1, "0.png", "Is there a red circle in the image?", "yes"),
        q(2, "0.png", "What colour is the circle?", "red"),
        q(3, "0.png", "Is there an orange star in the image?", "no"),
        q(4, "1.png", "Is there a blue heart in the image?", "yes"),
        q(5, "1.png", "What colour is the heart?", "blue"),
        q(6, "1.png", "Is there a pink ring in the image?", "no"),
    ]
    .concat();
    let held = [
        q(1, "7.png", "Is there a red ring in the image?", "yes"),
        q(2, "7.png", "What colour is the ring?", "red"),
        q(3, "7.png", "Is there a purple plus in the image?", "no"),
        q(4, "8.png", "Is there a yellow square in the image?", "yes"),
        q(5, "8.png", "What colour is the square?", "blue"),
        q(6, "8.png", "Is there a green star in the image?", "no"),
        q(7, "9.png", "What colour is the diamond?", "pink"),
    ]
    .concat();
    std::fs::write(data.join("questions/attribute.jsonl"), seen).unwrap();
    std::fs::write(data.join("questions/compositional.jsonl"), held).unwrap();
    // Seen: all six right. Held-out: yes/no 2 of 4 (ids 1, 3 right; 4, 6 wrong), colour 1 of 3
    // (red right, "cyan" for blue wrong, no colour named for pink: unparsed, wrong).
    let a = |task: &str, id: u32, answer: &str| {
        format!("{{\"question_id\": {id}, \"task\": \"{task}\", \"answer\": \"{answer}\"}}\n")
    };
    let preds = [
        a("attribute", 1, "Yes."),
        a("attribute", 2, "Red."),
        a("attribute", 3, "No"),
        a("attribute", 4, "yes"),
        a("attribute", 5, "It is blue."),
        a("attribute", 6, "No, there is not."),
        a("compositional-held-out", 1, "Yes"),
        a("compositional-held-out", 2, "It is red."),
        a("compositional-held-out", 3, "No"),
        a("compositional-held-out", 4, "No"),
        a("compositional-held-out", 5, "cyan"),
        a("compositional-held-out", 6, "Yes"),
        a("compositional-held-out", 7, "I cannot tell"),
    ]
    .concat();
    let pf_path = tmp.path().join("preds.jsonl");
    std::fs::write(&pf_path, preds).unwrap();
    let mut pf = mmlab_eval::PredictionsFile::open(&pf_path).unwrap();
    let r = run_task("compositional", &data, &mut pf, &opts(tmp.path())).unwrap();
    let Metrics::Compositional(c) = &r.metrics else {
        panic!("{:?}", r.metrics)
    };
    let (s, h) = (&c.splits[0], &c.splits[1]);
    assert_eq!((s.split.as_str(), h.split.as_str()), ("seen", "held-out"));
    assert_eq!((s.n, s.correct, h.n, h.correct), (6, 6, 7, 3));
    assert_eq!(s.accuracy.value, 1.0);
    assert_eq!(h.accuracy.value, 3.0 / 7.0);
    assert_eq!(h.yes_no_accuracy.value, 0.5);
    // Present pairs: ids 1 (right) and 4 (wrong); absent: 3 (right) and 6 (wrong).
    assert_eq!(h.present_accuracy.value, 0.5);
    assert_eq!(h.absent_accuracy.value, 0.5);
    assert_eq!((h.present.n, h.present.correct), (2, 1));
    assert_eq!((s.absent.n, s.absent.correct), (2, 2));
    assert_eq!(h.colour_accuracy.value, 1.0 / 3.0);
    assert_eq!(h.unparsed, 1);
    let g = c.gap.as_ref().unwrap();
    assert_eq!(g.accuracy.value, 1.0 - 3.0 / 7.0);
    assert_eq!(g.yes_no.value, 0.5);
    assert_eq!(g.present.value, 0.5);
    assert_eq!(g.absent.value, 0.5);
    assert_eq!(g.colour.value, 1.0 - 1.0 / 3.0);
    assert!(g.accuracy.low <= g.accuracy.value && g.accuracy.value <= g.accuracy.high);
    let table = format_table(&r);
    assert!(table.contains("gap (seen - held-out)"), "{table}");
    // Each split alone is its own task; the held-out one reuses the cached answers.
    let alone = run_task("compositional-held-out", &data, &mut pf, &opts(tmp.path())).unwrap();
    let Metrics::Compositional(c1) = &alone.metrics else {
        panic!()
    };
    assert_eq!(c1.splits.len(), 1);
    assert!(c1.gap.is_none());
    assert_eq!(c1.splits[0].accuracy.value, 3.0 / 7.0);
    let seen_only = run_task("attribute", &data, &mut pf, &opts(tmp.path())).unwrap();
    assert_eq!(seen_only.counts.from_cache, 6);
}
