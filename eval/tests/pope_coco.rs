//! Scoring a predictions file against the official POPE COCO question files.
//!
//! The expected numbers were produced by the POPE authors' `evaluate.py` logic (Python) on the
//! same answers; they are compared here to the last bit. The files are looked for in
//! `$MMLAB_POPE_COCO`, else `/work/shared/data/pope-coco`; without them the tests say so and pass.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mmlab_eval::{
    load_task, run_task, Metrics, PopeReport, PredictionsFile, RunOptions, TaskResult,
};

fn pope_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MMLAB_POPE_COCO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/pope-coco"));
    if dir.join("coco_pope_random.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: official POPE files not found in {}",
            dir.display()
        );
        None
    }
}

const SPLITS: [&str; 3] = ["random", "popular", "adversarial"];

/// The answer written for a question: mostly right, some flipped, some evasive, in varied styles.
fn answer(qid: u64, label_yes: bool, text: &str, k: u64) -> String {
    let object = text
        .replace("Is there a ", "")
        .replace("Is there an ", "")
        .replace(" in the image?", "");
    if qid.is_multiple_of(13) {
        return "I cannot tell.".to_string();
    }
    let flip = (qid + k) % 10 == 3 || (qid + 2 * k) % 7 == 5;
    let say_yes = label_yes != flip;
    let style = (qid % 3) as usize;
    if say_yes {
        [
            "Yes.".to_string(),
            format!("Yes, there is a {object} in the image."),
            "yes there is".to_string(),
        ][style]
            .clone()
    } else {
        [
            "No.".to_string(),
            "No, there is not.".to_string(),
            format!("There is no {object} here"),
        ][style]
            .clone()
    }
}

/// Write predictions for all three splits (tagged by split) from the official files.
fn write_predictions(dir: &Path, out: &Path, tagged: bool) {
    let mut s = String::new();
    for (k, split) in SPLITS.iter().enumerate() {
        let text = std::fs::read_to_string(dir.join(format!("coco_pope_{split}.json"))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let qid = v["question_id"].as_u64().unwrap();
            let label_yes = v["label"] == "yes";
            let a = answer(qid, label_yes, v["text"].as_str().unwrap(), k as u64);
            let mut rec = serde_json::json!({"question_id": qid, "answer": a});
            if tagged {
                rec["split"] = serde_json::Value::from(*split);
            }
            writeln!(s, "{rec}").unwrap();
        }
    }
    std::fs::write(out, s).unwrap();
}

fn pope(r: &TaskResult) -> &PopeReport {
    match &r.metrics {
        Metrics::Pope(p) => p,
        other => panic!("expected POPE metrics, got {other:?}"),
    }
}

/// (tp, fp, tn, fn, accuracy, precision, recall, f1, yes-ratio) from the official script.
type Expected = (u64, u64, u64, u64, f64, f64, f64, f64, f64);

const EXPECTED: [Expected; 3] = [
    (
        1065,
        312,
        1188,
        435,
        0.751,
        0.7734204793028322,
        0.71,
        0.7403545359749738,
        0.459,
    ),
    (
        1301,
        550,
        950,
        199,
        0.7503333333333333,
        0.7028633171258779,
        0.8673333333333333,
        0.7764846314532976,
        0.617,
    ),
    (
        1064,
        312,
        1188,
        436,
        0.7506666666666667,
        0.7732558139534884,
        0.7093333333333334,
        0.7399165507649513,
        0.45866666666666667,
    ),
];

fn check_split(s: &mmlab_eval::metrics::PopeSplit, e: &Expected) {
    let c = &s.confusion;
    assert_eq!(
        (c.tp, c.fp, c.tn, c.fn_),
        (e.0, e.1, e.2, e.3),
        "{}",
        s.split
    );
    assert_eq!(s.accuracy.value, e.4, "{}", s.split);
    assert_eq!(s.precision.value, e.5, "{}", s.split);
    assert_eq!(s.recall.value, e.6, "{}", s.split);
    assert_eq!(s.f1.value, e.7, "{}", s.split);
    assert_eq!(s.yes_ratio.value, e.8, "{}", s.split);
    // Every 13th id answered "I cannot tell.": 230 of 3000.
    assert_eq!(s.unclear, 230, "{}", s.split);
    assert_eq!(s.n, 3000);
    for m in [s.accuracy, s.precision, s.recall, s.f1, s.yes_ratio] {
        assert!(m.low <= m.value && m.value <= m.high, "{m:?}");
        assert!(m.high - m.low < 0.05, "{m:?}");
    }
}

#[test]
fn official_files_load_with_their_own_names() {
    let Some(dir) = pope_dir() else { return };
    let splits = load_task("pope", &dir).unwrap();
    assert_eq!(splits.len(), 3);
    for (s, name) in splits.iter().zip(SPLITS) {
        assert_eq!(s.split, name);
        assert_eq!(s.questions.len(), 3000);
        let yes = s
            .questions
            .iter()
            .filter(|q| q.label == mmlab_eval::Label::YesNo(true))
            .count();
        assert_eq!(yes, 1500);
        assert_eq!(s.questions[0].question_id, "1");
        // No images/ folder next to the files: names resolve against the folder itself.
        assert_eq!(
            s.questions[0].image.as_deref(),
            Some(dir.join("COCO_val2014_000000310196.jpg").as_path())
        );
    }
}

#[test]
fn predictions_scored_like_the_official_script() {
    let Some(dir) = pope_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("external-model.jsonl");
    write_predictions(&dir, &preds, true);
    let o = RunOptions {
        results_dir: tmp.path().join("results"),
        cache_dir: tmp.path().join("cache"),
        ..RunOptions::default()
    };
    let mut pf = PredictionsFile::open(&preds).unwrap();
    assert_eq!(pf.len(), 9000);
    let r = run_task("pope", &dir, &mut pf, &o).unwrap();
    let p = pope(&r);
    for (s, e) in p.splits.iter().zip(&EXPECTED) {
        check_split(s, e);
    }
    let m = p.mean.as_ref().unwrap();
    assert_eq!(m.accuracy.value, 0.7506666666666666);
    assert_eq!(m.precision.value, 0.7498465367940662);
    assert_eq!(m.recall.value, 0.7622222222222222);
    assert_eq!(m.f1.value, 0.7522519060644076);
    assert_eq!(m.yes_ratio.value, 0.5115555555555557);
    assert_eq!(m.n, 9000);

    // One split given as a single file, under the split's own task or inferred from the name.
    for (k, split) in SPLITS.iter().enumerate() {
        let file = dir.join(format!("coco_pope_{split}.json"));
        let single = run_task(&format!("pope-{split}"), &file, &mut pf, &o).unwrap();
        check_split(&pope(&single).splits[0], &EXPECTED[k]);
        assert_eq!(
            single.counts.from_cache, 3000,
            "reuses the cache of the full run"
        );
        let inferred = run_task("pope", &file, &mut pf, &o).unwrap();
        assert_eq!(pope(&inferred).splits.len(), 1);
        assert_eq!(pope(&inferred).splits[0].split, *split);
        check_split(&pope(&inferred).splits[0], &EXPECTED[k]);
    }
}

#[test]
fn untagged_predictions_for_three_splits_are_refused() {
    let Some(dir) = pope_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("untagged.jsonl");
    write_predictions(&dir, &preds, false);
    let err = PredictionsFile::open(&preds).unwrap_err().to_string();
    assert!(
        err.contains("untagged.jsonl:3001: duplicate question id 1"),
        "{err}"
    );
}

/// The committed sample of the official random split (`docs/pope-coco`, 300 questions).
fn committed_random() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/pope-coco/coco_pope_random.json")
}

/// Answer styles, question id `q` gets style `(q - 1) % 13`, with each harness's reading
/// decided by hand from its rule (y = yes, n = no, o = neither / Unknown):
/// (answer, POPE authors, lmms-eval, VLMEvalKit).
const STYLES: [(&str, char, char, char); 13] = [
    ("Yes.", 'y', 'o', 'y'), // lmms-eval: "yes." is not "yes"
    ("yes", 'y', 'y', 'y'),
    ("No, there is not.", 'n', 'o', 'n'),
    ("There is a dog.", 'y', 'o', 'o'), // authors: no No/not/no word, so yes
    ("I cannot tell", 'y', 'o', 'o'),   // "cannot" is not "not"
    ("YES", 'y', 'y', 'y'),
    ("no.", 'n', 'o', 'n'),  // VLMEvalKit deletes the period
    ("", 'y', 'o', 'o'),     // authors: the empty answer is a yes
    (" No ", 'n', 'n', 'n'), // lmms-eval strips the spaces
    ("Yes, there is no doubt.", 'n', 'o', 'o'), // a `no` word beats the `yes`; both words
    ("No", 'n', 'n', 'n'),
    ("Yes: a snowboard", 'y', 'o', 'o'), // VLMEvalKit keeps ':', so the word is `yes:`
    ("Nope.", 'y', 'o', 'o'),
];

#[test]
fn three_readings_match_each_harness_rule_by_hand() {
    let questions = committed_random();
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("styles.jsonl");
    let mut s = String::new();
    for line in std::fs::read_to_string(&questions).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let q = v["question_id"].as_u64().unwrap();
        let a = STYLES[((q - 1) % 13) as usize].0;
        writeln!(s, "{}", serde_json::json!({"question_id": q, "answer": a})).unwrap();
    }
    std::fs::write(&preds, s).unwrap();
    let o = RunOptions {
        results_dir: tmp.path().join("results"),
        cache_dir: tmp.path().join("cache"),
        ..RunOptions::default()
    };
    let mut pf = PredictionsFile::open(&preds).unwrap();
    let r = run_task("pope-random", &questions, &mut pf, &o).unwrap();
    let split = &pope(&r).splits[0];
    assert_eq!(split.n, 300);

    // The labels alternate (odd ids yes), so over the 300 ids style k gets 12 yes and 12 no
    // questions for k = 0, 11 yes and 12 no for odd k, 12 yes and 11 no for even k >= 2.
    // Counting each style's questions into (label, reading) by the table above gives, for the
    // POPE authors: TP 91 (styles 0,1,3,4,5,7,11,12 on yes), FN 59, FP 94, TN 56.
    let c = &split.confusion;
    assert_eq!((c.tp, c.fn_, c.fp, c.tn), (91, 59, 94, 56));
    assert_eq!(split.accuracy.value, 147.0 / 300.0);
    assert_eq!(split.yes_ratio.value, 185.0 / 300.0);

    let readings = split
        .readings
        .as_ref()
        .expect("POPE results carry the readings");
    // lmms-eval: only "yes" (style 1) and "YES" (5) read yes, " No " (8) and "No" (10) read no:
    // TP 11 + 11, FP 12 + 12, TN 11 + 11, FN 12 + 12; the other 208 answers are neither.
    let l = &readings.lmms_eval;
    let lc = &l.counts;
    assert_eq!(
        (lc.tp, lc.fn_, lc.other_yes, lc.fp, lc.tn, lc.other_no),
        (22, 24, 104, 24, 22, 104)
    );
    assert_eq!(l.unknown, 208);
    assert_eq!(l.accuracy.value, 44.0 / 300.0);
    assert_eq!(l.precision.value, 22.0 / 46.0);
    // Recall counts only exact "no" answers as misses: 22 / (22 + 24).
    assert_eq!(l.recall.value, 22.0 / 46.0);
    let (p, rc) = (22.0 / 46.0, 22.0 / 46.0);
    assert_eq!(l.f1.value, 2.0 * (p * rc) / (p + rc));
    // Its yes-ratio is the ground truth's: 150 of 300, whatever was answered.
    assert_eq!(l.yes_ratio.value, 0.5);
    assert_eq!(l.yes_ratio_of, "ground truth (lmms-eval)");

    // VLMEvalKit: yes for styles 0, 1, 5; no for 2, 6, 8, 10; Unknown for the other six.
    let v = &readings.vlmevalkit;
    let vc = &v.counts;
    assert_eq!(
        (vc.tp, vc.fn_, vc.other_yes, vc.fp, vc.tn, vc.other_no),
        (34, 48, 68, 36, 44, 70)
    );
    assert_eq!(v.unknown, 138);
    assert_eq!(v.accuracy.value, 78.0 / 300.0);
    assert_eq!(v.precision.value, 34.0 / 70.0);
    // An Unknown on a yes question is a miss: recall over all 150 yes questions.
    assert_eq!(v.recall.value, 34.0 / 150.0);
    let (p, rc) = (34.0 / 70.0, 34.0 / 150.0);
    assert_eq!(v.f1.value, 2.0 * (p * rc) / (p + rc));
    assert_eq!(v.yes_ratio.value, 70.0 / 300.0);
    assert_eq!(v.yes_ratio_of, "predictions");

    // Every sample records each reading, as the table above says.
    let samples = mmlab_eval::read_samples(
        &Path::new(r.result_file.as_ref().unwrap())
            .parent()
            .unwrap()
            .join(r.samples_file.as_ref().unwrap()),
    )
    .unwrap();
    let code = |r: Option<mmlab_eval::Reading>| match r.unwrap() {
        mmlab_eval::Reading::Yes => 'y',
        mmlab_eval::Reading::No => 'n',
        mmlab_eval::Reading::Other => 'o',
    };
    for smp in &samples {
        let q: usize = smp.question_id.parse().unwrap();
        let (answer, authors, lmms, vlm) = STYLES[(q - 1) % 13];
        assert_eq!(smp.answer, answer);
        assert_eq!(smp.parsed, if authors == 'y' { "yes" } else { "no" }, "{q}");
        assert_eq!(code(smp.lmms_eval), lmms, "{q} {answer:?}");
        assert_eq!(code(smp.vlmevalkit), vlm, "{q} {answer:?}");
    }

    // The table shows all three, naming what lmms-eval's yes-ratio is of.
    let table = mmlab_eval::format_table(&r);
    assert!(table.contains("lmms-eval exact match"), "{table}");
    assert!(table.contains("ground truth (lmms-eval)"), "{table}");
    assert!(table.contains("VLMEvalKit words, no judge"), "{table}");
}
