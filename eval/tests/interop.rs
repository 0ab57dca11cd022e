//! Other harnesses' files as predictions (lmms-eval samples, VLMEvalKit sheets), the lmms-eval
//! `results.json` written beside a POPE result, and refusals that name the file and line or row.
//!
//! The fixtures (`tests/fixtures/interop`, see its README) answer the first eight questions of
//! the committed POPE COCO random split: ids 1-8, labels yes, no, yes, no, …, answers
//! `Yes` (right), `No.` (right), `yes, there is a person` (right), `Yes` (wrong), `no` (wrong),
//! `There is no couch.` (right), `I cannot tell`, `No` (right).

use std::path::{Path, PathBuf};

use mmlab_eval::{run_task, Metrics, PopeReport, PredictionsFile, RunOptions, TaskResult};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interop")
        .join(name)
}

fn questions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/pope-coco/coco_pope_random.json")
}

fn opts(root: &Path) -> RunOptions {
    RunOptions {
        results_dir: root.join("results"),
        cache_dir: root.join("cache"),
        limit: Some(8),
        ..RunOptions::default()
    }
}

fn pope(r: &TaskResult) -> &PopeReport {
    match &r.metrics {
        Metrics::Pope(p) => p,
        other => panic!("{other:?}"),
    }
}

fn run(file: &Path, root: &Path) -> TaskResult {
    let mut pf = PredictionsFile::open(file).unwrap();
    run_task("pope-random", &questions(), &mut pf, &opts(root)).unwrap()
}

/// (tp, fn, fp, tn) of the authors' rule; (tp, fn, other yes, fp, tn, other no) of lmms-eval's
/// and VLMEvalKit's, all by hand from the answers above.
fn check_by_hand(r: &TaskResult) {
    let s = &pope(r).splits[0];
    assert_eq!(s.n, 8);
    let c = &s.confusion;
    // Authors: 1, 3, 7 yes on yes ("I cannot tell" is a yes); 5 no on yes; 4 yes on no.
    assert_eq!((c.tp, c.fn_, c.fp, c.tn), (3, 1, 1, 3));
    let rd = s.readings.as_ref().unwrap();
    let l = &rd.lmms_eval.counts;
    // lmms-eval: only "Yes" (1, 4), "no" (5) and "No" (8) are exact; 2, 3, 6, 7 are neither.
    assert_eq!(
        (l.tp, l.fn_, l.other_yes, l.fp, l.tn, l.other_no),
        (1, 1, 2, 1, 1, 2)
    );
    let v = &rd.vlmevalkit.counts;
    // VLMEvalKit: "No." and "There is no couch." are no; only "I cannot tell" is Unknown.
    assert_eq!(
        (v.tp, v.fn_, v.other_yes, v.fp, v.tn, v.other_no),
        (2, 1, 1, 1, 3, 0)
    );
}

#[test]
fn lmms_eval_samples_are_read_as_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&fixture("samples_pope_random.jsonl"), tmp.path());
    check_by_hand(&r);
    // The adversarial line is another split's answer, not a stray.
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn lmms_eval_results_json_is_written_beside_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&fixture("samples_pope_random.jsonl"), tmp.path());
    let dir = Path::new(r.result_file.as_ref().unwrap()).parent().unwrap();
    let name = r.lmms_eval_results.as_ref().expect("written for POPE");
    assert!(name.ends_with(".lmms-eval.json"), "{name}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
    let t = &v["results"]["pope_random"];
    assert_eq!(t["alias"], "pope_random");
    // lmms-eval's numbers for these answers: accuracy 2/8 (answers 1 and 8), precision
    // 1/(1+1), recall 1/(1+1) (only the exact "no" of answer 5 is a miss), yes-ratio 4/8 of
    // the ground truth.
    assert_eq!(t["pope_accuracy,none"], 0.25);
    assert_eq!(t["pope_precision,none"], 0.5);
    assert_eq!(t["pope_recall,none"], 0.5);
    assert_eq!(t["pope_f1_score,none"], 0.5);
    assert_eq!(t["pope_yes_ratio,none"], 0.5);
    assert_eq!(t["pope_f1_score_stderr,none"], "N/A");
    for key in [
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "date",
    ] {
        assert!(v.get(key).is_some(), "no {key}: {v}");
    }
    assert_eq!(v["n-samples"]["pope_random"]["original"], 300);
    assert_eq!(v["n-samples"]["pope_random"]["effective"], 8);
    assert_eq!(v["higher_is_better"]["pope_random"]["pope_accuracy"], true);
    assert_eq!(v["config"]["limit"], 8);
    // `eval compare` over the folder reads mmlab's result and skips the lmms-eval file.
    let table = mmlab_eval::compare(&[tmp.path().join("results")]).unwrap();
    assert!(table.contains("samples_pope_random"), "{table}");
}

#[test]
fn vlmevalkit_sheets_tsv_and_xlsx_read_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = run(&fixture("pope_vlmevalkit.tsv"), &tmp.path().join("a"));
    check_by_hand(&tsv);
    let xlsx = run(&fixture("pope_vlmevalkit.xlsx"), &tmp.path().join("b"));
    check_by_hand(&xlsx);
    assert_eq!(
        pope(&tsv).splits[0].readings,
        pope(&xlsx).splits[0].readings
    );
}

/// The error from opening and running a predictions file with this content.
fn refusal(tmp: &Path, name: &str, content: &[u8]) -> String {
    let p = tmp.join(name);
    std::fs::write(&p, content).unwrap();
    let res = PredictionsFile::open(&p).and_then(|mut pf| {
        run_task(
            "pope-random",
            &questions(),
            &mut pf,
            &opts(&tmp.join("out")),
        )
    });
    let err = res.expect_err("must be refused").to_string();
    assert!(err.contains(name), "the error names the file: {err}");
    err
}

#[test]
fn bad_files_are_refused_naming_the_file_and_line_or_row() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let tsv = std::fs::read_to_string(fixture("pope_vlmevalkit.tsv")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no_prediction.tsv",
            tsv.replace("prediction", "pred"),
            "no `prediction` column",
        ),
        (
            "stray.tsv",
            tsv.replace("\n3\tIs there a person", "\n999\tIs there a person"),
            "row 4: question id 999 (random) matches no question",
        ),
        (
            "truth.tsv",
            tsv.replacen("Yes\trandom\tYes", "No\trandom\tYes", 1),
            "row 2: question id 1 of pope-random has ground truth \"No\"",
        ),
        (
            "question.tsv",
            tsv.replace("a car in", "a bus in"),
            "row 3: question id 2 of pope-random answers \"Is there a bus in the image?\"",
        ),
        (
            "empty_index.tsv",
            tsv.replace("\n5\t", "\n\t"),
            "row 6: the `index` cell is empty",
        ),
        (
            "wide.tsv",
            tsv.replace("\tNo.\n", "\tNo.\textra\n"),
            "row 3: 6 cells, but the header has 5 columns",
        ),
    ];
    for (name, content, needle) in &cases {
        let err = refusal(t, name, content.as_bytes());
        assert!(err.contains(needle), "{name}: {err}");
    }
    let samples = std::fs::read_to_string(fixture("samples_pope_random.jsonl")).unwrap();
    let first = samples.lines().next().unwrap();
    let no_id = first.replace("\"question_id\": \"1\", ", "").replace(
        "\"pope_accuracy\": {\"question_id\": \"1\", ",
        "\"pope_accuracy\": {",
    );
    let lmms: Vec<(&str, String, &str)> = vec![
        (
            "samples_no_id.jsonl",
            format!("{no_id}\n"),
            ":1: field `doc.question_id`",
        ),
        (
            "samples_bad_json.jsonl",
            format!("{first}\n{{\"doc_id\": 1,\n"),
            ":2:",
        ),
        (
            "samples_no_answer.jsonl",
            first
                .replace("\"filtered_resps\": [\"Yes\"]", "\"filtered_resps\": []")
                .replace("\"resps\": [[\"Yes\"]], ", ""),
            ":1: field `filtered_resps`",
        ),
        (
            "samples_stray.jsonl",
            samples.replace("\"question_id\": \"6\"", "\"question_id\": \"6000\""),
            "samples_stray.jsonl:6: question id 6000 (random) matches no question",
        ),
    ];
    for (name, content, needle) in &lmms {
        let err = refusal(t, name, content.as_bytes());
        assert!(err.contains(needle), "{name}: {err}");
    }
    let err = refusal(t, "garbage.xlsx", b"not a zip");
    assert!(err.contains("not a readable .xlsx workbook"), "{err}");
}

#[test]
fn lmms_eval_samples_without_doc_take_the_metric_entry_id() {
    // Newer lmms-eval versions drop `doc` from the samples; the metric entries keep the id.
    let tmp = tempfile::tempdir().unwrap();
    let samples = std::fs::read_to_string(fixture("samples_pope_random.jsonl")).unwrap();
    let mut out = String::new();
    for line in samples.lines().take(8) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let doc = v.as_object_mut().unwrap().remove("doc").unwrap();
        v["pope_accuracy"]["question_id"] = doc["question_id"].clone();
        out.push_str(&format!("{v}\n"));
    }
    let p = tmp.path().join("samples_pope_random.jsonl");
    std::fs::write(&p, out).unwrap();
    check_by_hand(&run(&p, tmp.path()));
}
