//! `mmlab ablate`: the file format is checked with clear errors, budgets are matched, the
//! report, results and plots are written, and a second run redoes nothing.

use mmlab::ablate::{run, summarize, train_step_flops, AblationSpec, StepShape};

const TINY: &str = r#"
name = "tiny"
seeds = [0]
train_flops = 4.0e9
batch_size = 8
[eval]
limit = 30
audio = false

[[arms]]
name = "native"
preset = "fuyu-tiny"
[[arms.stages]]
kind = "text"
share = 0.25
lr = 3e-3
[[arms.stages]]
share = 0.75
lr = 3e-3

[[arms]]
name = "llava"
preset = "llava-tiny"
[[arms.stages]]
kind = "pretrain"
loss = "clip"
share = 0.25
lr = 2e-3
[[arms.stages]]
share = 0.75
lr = 3e-3
freeze = ["encoder"]
"#;

fn spec_from(text: &str) -> anyhow::Result<AblationSpec> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.toml");
    std::fs::write(&p, text).unwrap();
    AblationSpec::load(&p)
}

#[test]
fn bad_ablation_files_get_clear_errors_naming_the_file() {
    let cases = [
        (TINY.replace("share = 0.75", "share = 0.5"), "sum to 1"),
        (
            TINY.replace("preset = \"llava-tiny\"", "preset = \"gpt-9\""),
            "unknown preset",
        ),
        (
            TINY.replace("freeze = [\"encoder\"]", "freeze = [\"vision\"]"),
            "cannot freeze \"vision\"",
        ),
        (
            TINY.replace("kind = \"pretrain\"", "kind = \"distill\""),
            "unknown kind",
        ),
        (
            TINY.replace("preset = \"llava-tiny\"", "preset = \"fuyu-tiny\""),
            "no vision encoder",
        ),
        (
            TINY.replace("seeds = [0]", "seeds = []"),
            "at least one seed",
        ),
        (
            TINY.replace("train_flops = 4.0e9", "train_flops = -1.0"),
            "positive",
        ),
        (
            TINY.replace("batch_size = 8", "batch_size = 8\ncolour = 3"),
            "unknown field",
        ),
        (
            "name = \"x\"\nseeds = [0".to_string(),
            "invalid ablation file",
        ),
        (
            format!("{TINY}[[arms.stages]]\nkind = \"text\"\nshare = 0.1\nlr = 1e-3\n").replace(
                "share = 0.75\nlr = 3e-3\nfreeze",
                "share = 0.65\nlr = 3e-3\nfreeze",
            ),
            "must come before the train stages",
        ),
    ];
    for (text, want) in cases {
        let e = format!("{:#}", spec_from(&text).unwrap_err());
        assert!(
            e.contains("a.toml") && e.contains(want),
            "wanted {want:?} in: {e}"
        );
    }
}

#[test]
fn intervals_and_flop_factors() {
    let s = summarize(&[0.5, 0.7]);
    assert!((s.mean - 0.6).abs() < 1e-12);
    // sd = 0.1414, se = 0.1, t(1) = 12.706.
    assert!((s.half_width - 1.2706).abs() < 1e-3, "{}", s.half_width);
    assert_eq!(summarize(&[0.4]).half_width, 0.0);
    let per = [
        ("encoder", 100usize),
        ("connector", 10),
        ("audio_adapter", 50),
        ("decoder", 1000),
    ]
    .into_iter()
    .collect();
    let shape = StepShape {
        patches: 2.0,
        tokens: 3.0,
        frames: 4.0,
    };
    let all = train_step_flops(&per, &shape, &[]);
    assert_eq!(
        all,
        6.0 * (100.0 * 2.0 + 10.0 * 2.0 + 50.0 * 4.0 + 1000.0 * 3.0)
    );
    // Alignment: encoder forward only, connector and audio embedding train, decoder backpropagates.
    let align = train_step_flops(&per, &shape, &["encoder".into(), "decoder".into()]);
    assert_eq!(align, 2.0 * 200.0 + 6.0 * 20.0 + 6.0 * 200.0 + 4.0 * 3000.0);
    // Only the decoder trains: everything before it runs forward only.
    let tune = train_step_flops(&per, &shape, &["encoder".into(), "connector".into()]);
    assert_eq!(tune, 2.0 * 200.0 + 2.0 * 20.0 + 2.0 * 200.0 + 6.0 * 3000.0);
}

#[test]
fn a_tiny_ablation_writes_its_report_and_a_second_run_redoes_nothing() {
    let spec = spec_from(TINY).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = run(&spec, out.path(), 2, &|_| {}).unwrap();
    assert_eq!(r.arms.len(), 2);
    for a in &r.arms {
        let spent = a.flops_spent;
        // Each arm spends the budget to within one step of each stage.
        let step_max: f64 = a.runs[0].stages.iter().map(|s| s.flops_per_step).sum();
        assert!(
            spent <= spec.train_flops + 1.0 && spent > spec.train_flops - step_max,
            "{} spent {spent}",
            a.name
        );
        for k in [
            "pope_random_f1",
            "pope_popular_f1",
            "pope_adversarial_f1",
            "count_accuracy",
        ] {
            let v = a.summary[k].mean;
            assert!((0.0..=1.0).contains(&v), "{}: {k} = {v}", a.name);
        }
    }
    assert_eq!(r.arms[1].runs[0].stages[0].kind, "pretrain");
    assert_eq!(r.arms[0].runs[0].stages[0].kind, "text");
    for f in [
        "results.json",
        "report.md",
        "bars.svg",
        "bars.png",
        "curve_presence.svg",
        "curve_count.png",
    ] {
        let p = out.path().join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 100,
            "{f} missing or empty"
        );
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("| native (`fuyu-tiny`)") && report.contains("Budgets actually spent"));
    let weights = out
        .path()
        .join("runs/llava-s0/stage1-train/model.safetensors");
    let before = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let again = run(&spec, out.path(), 1, &|_| {}).unwrap();
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        before,
        "finished stage was retrained"
    );
    assert_eq!(
        again.arms[0].summary["count_accuracy"],
        r.arms[0].summary["count_accuracy"]
    );
}

const ONE_ARM: &str = r#"
name = "one"
seeds = [0]
train_flops = 2.0e9
batch_size = 4
[eval]
limit = 8
audio = false

[[arms]]
name = "native"
preset = "fuyu-tiny"
[[arms.stages]]
kind = "text"
share = 0.25
lr = 3e-3
[[arms.stages]]
share = 0.75
lr = 3e-3
"#;

#[test]
fn a_changed_stage_and_every_later_one_is_retrained_and_results_say_what_trained_them() {
    use std::sync::Mutex;
    let out = tempfile::tempdir().unwrap();
    let log = Mutex::new(Vec::<String>::new());
    let say = |s: &str| log.lock().unwrap().push(s.to_string());
    let take = || std::mem::take(&mut *log.lock().unwrap()).join("\n");
    let run_dir = out.path().join("runs/native-s0");
    let w0 = run_dir.join("stage0-text/model.safetensors");
    let w1 = run_dir.join("stage1-train/model.safetensors");
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let results = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap()
    };
    let stage_lr = |r: &serde_json::Value, i: usize| {
        let s = &r["arms"][0]["runs"][0]["stages"][i]["settings"];
        (
            s["stage"]["lr"].as_f64().unwrap(),
            s["train"]["optim"]["lr"].as_f64().unwrap(),
        )
    };

    run(&spec_from(ONE_ARM).unwrap(), out.path(), 1, &say).unwrap();
    take();
    let (t0, b1) = (mtime(&w0), std::fs::read(&w1).unwrap());
    assert_eq!(stage_lr(&results(), 1), (3e-3, 3e-3));

    // The train stage's lr changes: it is retrained (the old one set aside), the text stage
    // before it is kept, the arm is re-evaluated, and results.json names the new lr.
    let changed = ONE_ARM.replace("share = 0.75\nlr = 3e-3", "share = 0.75\nlr = 1e-3");
    run(&spec_from(&changed).unwrap(), out.path(), 1, &say).unwrap();
    let said = take();
    assert!(
        said.contains(
            "arm native seed 0 stage 1: changed lr: 0.003 -> 0.001; retraining stages 1.."
        ),
        "{said}"
    );
    assert!(said.contains("re-evaluating"), "{said}");
    assert!(!said.contains("stage 0:"), "{said}");
    assert_eq!(mtime(&w0), t0, "the unchanged stage 0 was retrained");
    assert_ne!(std::fs::read(&w1).unwrap(), b1, "stage 1 was not retrained");
    assert_eq!(
        std::fs::read(run_dir.join("superseded/stage1-train.1/model.safetensors")).unwrap(),
        b1,
        "the old stage 1 was not kept aside"
    );
    assert_eq!(stage_lr(&results(), 1), (1e-3, 1e-3));
    assert_eq!(stage_lr(&results(), 0), (3e-3, 3e-3));

    // Unchanged: nothing is redone.
    let (t0, t1) = (mtime(&w0), mtime(&w1));
    run(&spec_from(&changed).unwrap(), out.path(), 1, &say).unwrap();
    let said = take();
    assert!(
        !said.contains("retraining") && !said.contains("re-evaluating"),
        "{said}"
    );
    assert_eq!((mtime(&w0), mtime(&w1)), (t0, t1));

    // A stage without stored settings (made by an older mmlab) is not trusted: it and every
    // later stage are retrained.
    std::fs::remove_file(run_dir.join("stage0-text/stage.json")).unwrap();
    run(&spec_from(&changed).unwrap(), out.path(), 1, &say).unwrap();
    let said = take();
    assert!(
        said.contains("arm native seed 0 stage 0: no stored settings"),
        "{said}"
    );
    assert!(
        said.contains("stage 1: an earlier stage is retrained"),
        "{said}"
    );
    assert!(said.contains("re-evaluating"), "{said}");
    assert!(run_dir.join("superseded/stage0-text.1").is_dir());
    assert!(run_dir.join("superseded/stage1-train.2").is_dir());
    assert!(run_dir.join("stage0-text/stage.json").is_file());
}

// ---------------------------------------------------------------------------------------------
// Scaling studies (`mmlab ablate` with a file that has `budgets`).

use mmlab::ablate::study::{self, Shard, StudySpec};

const TOY_STUDY: &str = r#"
name = "toy"
budgets = [5e8, 1e9]
widths = [32, 48]
tiers = ["small"]
batch_size = 8
val_batches = 1
evals_per_run = 2
[sweep]
lrs = [3e-3]
[eval]
limit = 20
audio = false
[[designs]]
name = "native"
design = "native"
[[designs]]
name = "llava"
design = "llava"
"#;

fn quiet(_: &str) {}

#[test]
fn bad_study_files_get_clear_errors() {
    for (text, want) in [
        (TOY_STUDY.replace("[5e8, 1e9]", "[1e9, 5e8]"), "ascending"),
        (TOY_STUDY.replace("[32, 48]", "[32, 40]"), "multiple of 16"),
        (
            TOY_STUDY.replace("tiers = [\"small\"]", "tiers = [\"tiny\"]"),
            "unknown tier",
        ),
        (
            TOY_STUDY.replace("design = \"llava\"", "design = \"gpt\""),
            "gpt",
        ),
        (
            TOY_STUDY.replace("batch_size = 8", "batch_size = 8\nval_seed = 0"),
            "val_seed",
        ),
        (
            TOY_STUDY.replace("name = \"llava\"", "name = \"native\""),
            "two designs",
        ),
        (
            TOY_STUDY.replace(
                "design = \"llava\"",
                "design = \"llava\"\nlr_from = \"clip\"",
            ),
            "lr_from \"clip\"",
        ),
    ] {
        let e = StudySpec::parse(&text).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
    }
    assert!(StudySpec::is_study(TOY_STUDY));
    assert!(!StudySpec::is_study(TINY));
    assert!("1/3".parse::<Shard>().is_ok());
    for bad in ["3/3", "1", "a/2", "0/0"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

/// Modification times of every finished run's result, by run.
fn result_times(
    out: &std::path::Path,
) -> std::collections::BTreeMap<String, std::time::SystemTime> {
    std::fs::read_dir(out.join("runs"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let m = std::fs::metadata(e.path().join(study::RESULT)).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.modified().unwrap(),
            ))
        })
        .collect()
}

#[test]
fn a_toy_study_runs_end_to_end_resumes_shards_and_merges() {
    let spec = StudySpec::parse(TOY_STUDY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("toy");
    let r = study::run_study(&spec, &out, 2, None, &quiet).unwrap();
    // 1 sweep run per design + 2 budgets x 2 widths x 2 designs.
    assert_eq!((r.finished, r.asked), (2 + 8, 2 + 8));
    let text = study::report::write_report(&spec, &out, &quiet).unwrap();
    for want in [
        "8 of 8 grid runs",
        "## Compute to reach a target",
        "## Fitted exponents",
        "## What the encoders' features carry",
        "| native |",
        "small-llava-d48-1e9",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    for f in [
        "report.md",
        "analysis.json",
        "frontier.svg",
        "frontier.png",
        "isoflop.svg",
        "isoflop.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let a: study::report::Analysis =
        serde_json::from_str(&std::fs::read_to_string(out.join("analysis.json")).unwrap()).unwrap();
    assert_eq!(a.designs.len(), 2);
    for d in &a.designs {
        assert_eq!(d.frontier.len(), 2, "{d:?}");
        assert!(d.alpha_pure.is_some() && d.beta.is_some(), "{d:?}");
    }
    // Held-out loss at equal compute: llava over native at both budgets (every size finished),
    // each on its frontier, with an interval around the measured ratio.
    let budgets: Vec<f64> = a.loss_ratios.iter().map(|r| r.budget).collect();
    assert_eq!(budgets, [5e8, 1e9]);
    for r in &a.loss_ratios {
        assert_eq!(r.design, "llava");
        assert_eq!(r.ratio.value, r.loss / r.native_loss);
        assert!(
            r.ratio.low <= r.ratio.value && r.ratio.value <= r.ratio.high,
            "{r:?}"
        );
    }
    assert!(text.contains("held-out loss at equal compute"), "{text}");
    // A budget with a size missing is shown but not fitted: its frontier is not known yet.
    let all = study::finished_runs(&spec, &out).unwrap();
    let some: Vec<&study::RunResult> = all
        .iter()
        .filter(|(id, _)| id.as_str() != "small-llava-d48-1e9")
        .map(|(_, r)| r)
        .collect();
    let part = study::report::analyse(&spec, &some, 20, 1);
    let llava = part.designs.iter().find(|d| d.design == "llava").unwrap();
    assert_eq!(llava.frontier.len(), 2, "still shown");
    assert!(llava.alpha_pure.is_none(), "one complete budget: no fit");
    assert_eq!(llava.iso.len(), 1);
    let budgets: Vec<f64> = part.loss_ratios.iter().map(|r| r.budget).collect();
    assert_eq!(budgets, [5e8]);
    // Every bolted run carries the probe of its encoder; the native ones none.
    let runs = study::finished_runs(&spec, &out).unwrap();
    assert_eq!(runs.len(), 10);
    for (id, r) in &runs {
        assert_eq!(r.probe.is_some(), id.contains("llava"), "{id}");
        assert!(r.val.image_loss.is_finite() && !r.curve.is_empty(), "{id}");
        assert!(
            (r.flops - r.settings.key.budget).abs() <= r.flops_per_step,
            "{id}"
        );
    }

    // The grid run that is the sweep's own run (chosen rate, sweep budget and width) is not
    // trained twice: it carries the sweep run's numbers.
    let sweep = &runs["sweep-native-d32-5e8-lr0.003"];
    let grid = &runs["small-native-d32-5e8"];
    assert_eq!(grid.val, sweep.val);
    assert_eq!(grid.train_seconds, sweep.train_seconds);
    assert_eq!(grid.settings.key.phase, study::Phase::Grid);

    // A second run redoes nothing.
    let before = result_times(&out);
    study::run_study(&spec, &out, 2, None, &quiet).unwrap();
    assert_eq!(result_times(&out), before);

    // A result file that cannot be read is said so and measured again, to the same numbers.
    let broken = out.join("runs/small-llava-d48-1e9").join(study::RESULT);
    std::fs::write(&broken, "{ not json").unwrap();
    let said = std::sync::Mutex::new(Vec::new());
    let say = |s: &str| said.lock().unwrap().push(s.to_string());
    study::run_study(&spec, &out, 2, None, &say).unwrap();
    let said = said.into_inner().unwrap();
    assert!(
        said.iter()
            .any(|s| s.contains("small-llava-d48-1e9") && s.contains("cannot be read")),
        "{said:?}"
    );
    let again = study::read_result(&out.join("runs/small-llava-d48-1e9")).unwrap();
    assert_eq!(again.val, runs["small-llava-d48-1e9"].val);

    // A changed setting redoes exactly the runs it touches, keeping the old ones aside.
    let changed = StudySpec::parse(&TOY_STUDY.replace("limit = 20", "limit = 10")).unwrap();
    let said = std::sync::Mutex::new(Vec::new());
    let say = |s: &str| said.lock().unwrap().push(s.to_string());
    study::run_study(&changed, &out, 2, None, &say).unwrap();
    let said = said.into_inner().unwrap();
    assert!(
        said.iter()
            .any(|s| s.contains("changed") && s.contains("eval.limit")),
        "{said:?}"
    );
    assert!(out.join("runs/superseded").is_dir());

    // Two shards into two folders, merged, give the same finished runs as one process.
    let a_dir = dir.path().join("shard0");
    let b_dir = dir.path().join("shard1");
    let merged = dir.path().join("merged");
    study::run_study(&spec, &a_dir, 1, Some("0/2".parse().unwrap()), &quiet).unwrap();
    let r1 = study::run_study(&spec, &b_dir, 1, Some("1/2".parse().unwrap()), &quiet).unwrap();
    // Shard 1 ran its sweep run, but the other design's sweep lives in shard 0: its grid runs
    // wait until the sweep is merged.
    assert!(!r1.waiting.is_empty());
    study::merge(&merged, &[a_dir.clone(), b_dir.clone()]).unwrap();
    for s in [&a_dir, &b_dir] {
        study::merge(s, std::slice::from_ref(&merged)).unwrap();
    }
    study::run_study(&spec, &a_dir, 1, Some("0/2".parse().unwrap()), &quiet).unwrap();
    study::run_study(&spec, &b_dir, 1, Some("1/2".parse().unwrap()), &quiet).unwrap();
    study::merge(&merged, &[a_dir, b_dir]).unwrap();
    let m = study::finished_runs(&spec, &merged).unwrap();
    let whole: Vec<&String> = runs.keys().collect();
    assert_eq!(m.keys().collect::<Vec<_>>(), whole);
    // A shard whose run finished with other settings is refused, naming it.
    let odd = dir.path().join("odd");
    let run = "small-native-d32-1e9";
    std::fs::create_dir_all(odd.join("runs").join(run)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(merged.join("runs").join(run).join(study::RESULT)).unwrap(),
    )
    .unwrap();
    v["settings"]["eval"]["limit"] = 5.into();
    std::fs::write(
        odd.join("runs").join(run).join(study::RESULT),
        v.to_string(),
    )
    .unwrap();
    let e = study::merge(&merged, std::slice::from_ref(&odd)).unwrap_err();
    assert!(
        format!("{e:#}").contains(run) && format!("{e:#}").contains("other settings"),
        "{e:#}"
    );

    // Same settings and seeds: the same numbers, whichever process trained them.
    for (id, r) in &m {
        assert_eq!(r.val.image_loss, runs[id].val.image_loss, "{id}");
    }
}

#[test]
fn only_runs_the_runs_its_patterns_match() {
    let spec = StudySpec::parse(TOY_STUDY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("toy");
    let only = |p: &str| study::Slice {
        shard: None,
        only: Some(p.parse().unwrap()),
    };
    // The native sweep run and native's grid; llava's runs are left for later.
    let r = study::run_study(&spec, &out, 2, only("*native*"), &quiet).unwrap();
    assert_eq!((r.finished, r.asked), (1 + 4, 1 + 4));
    let done: Vec<String> = study::finished_runs(&spec, &out)
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(done.len(), 5, "{done:?}");
    assert!(done.iter().all(|id| id.contains("native")), "{done:?}");
    // A pattern for the grid alone: llava's sweep is not finished, so its grid runs wait.
    let r = study::run_study(&spec, &out, 2, only("small-llava-*"), &quiet).unwrap();
    assert_eq!(r.waiting, vec!["llava".to_string()]);
    // A pattern that matches nothing is refused, showing what ids look like.
    let e = study::run_study(&spec, &out, 2, only("free-*"), &quiet).unwrap_err();
    assert!(
        format!("{e:#}").contains("matches none")
            && format!("{e:#}").contains("small-native-d32-5e8"),
        "{e:#}"
    );
    assert!("".parse::<study::RunFilter>().is_err());
    assert!("[".parse::<study::RunFilter>().is_err());
}

#[test]
fn ship_puts_each_designs_frontier_model_under_models_and_refuses_one_that_does_not_repeat_its_run()
{
    use study::ship::{ship, ship_name, ShipOptions};
    assert_eq!(ship_name("llava", "small", 3e13), "llava-3e13");
    assert_eq!(ship_name("native", "free-small", 3e13), "native-free-3e13");
    let spec = StudySpec::parse(TOY_STUDY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("toy");
    let models = dir.path().join("models");
    let opts = ShipOptions {
        tier: "small".into(),
        budget: None,
        designs: None,
        models: models.clone(),
        jobs: 2,
        overwrite: false,
    };
    // Nothing finished yet: the frontier is not known, nothing ships.
    let e = ship(&spec, &out, &opts, &quiet).unwrap_err();
    assert!(format!("{e:#}").contains("not finished"), "{e:#}");
    study::run_study(&spec, &out, 2, None, &quiet).unwrap();
    let runs = study::finished_runs(&spec, &out).unwrap();

    let shipped = ship(&spec, &out, &opts, &quiet).unwrap();
    assert_eq!(shipped.len(), 2);
    for s in &shipped {
        // The frontier: the lowest held-out loss of the top budget's sizes.
        let best = ["d32", "d48"]
            .iter()
            .map(|w| &runs[&format!("small-{}-{w}-1e9", s.design)])
            .min_by(|a, b| a.val.image_loss.total_cmp(&b.val.image_loss))
            .unwrap();
        assert_eq!(s.run.settings.key.id(), best.settings.key.id());
        assert_eq!(s.name, format!("{}-1e9", s.design));
        assert!(!s.retrained, "the toy's weights are in its folder");
        let d = models.join(&s.name);
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "train.jsonl",
            "study-run.json",
            "eval-metrics.json",
            "README.md",
            "COMMAND",
        ] {
            assert!(d.join(f).is_file(), "{}/{f}", s.name);
        }
        // The TUI reads its shipped numbers; they are the committed run's.
        let m = mmlab::tui::workspace::read_shipped(&s.name, &d.join("eval-metrics.json")).unwrap();
        assert_eq!(m.tier, "aligned 48x48 cell 12px");
        assert_eq!(
            m.values["count:acc"], best.test["count_accuracy"].value,
            "{}",
            s.name
        );
        let readme = std::fs::read_to_string(d.join("README.md")).unwrap();
        assert!(readme.contains(&best.settings.key.id()) && readme.contains("1.0e9"));
        mmlab::model::load_dir(&d, &candle_core::Device::Cpu).unwrap();
    }

    // A fresh checkout has no weights: the run is trained again, bit for bit.
    let native = shipped.iter().find(|s| s.design == "native").unwrap();
    let id = native.run.settings.key.id();
    let first = std::fs::read(models.join("native-1e9/model.safetensors")).unwrap();
    std::fs::remove_file(out.join("runs").join(&id).join("model.safetensors")).unwrap();
    let only_native = ShipOptions {
        designs: Some(vec!["native".into()]),
        ..opts.clone()
    };
    let again = ship(&spec, &out, &only_native, &quiet).unwrap();
    assert!(again[0].retrained);
    assert_eq!(
        std::fs::read(models.join("native-1e9/model.safetensors")).unwrap(),
        first
    );
    assert!(out
        .join("ship")
        .join(&id)
        .join("model.safetensors")
        .is_file());

    // A folder holding other weights under that name is kept unless --overwrite.
    let theirs = models.join("native-1e9/model.safetensors");
    std::fs::write(&theirs, b"someone else's model").unwrap();
    let e = ship(&spec, &out, &only_native, &quiet).unwrap_err();
    assert!(format!("{e:#}").contains("--overwrite"), "{e:#}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"someone else's model");
    let forced = ShipOptions {
        overwrite: true,
        ..only_native.clone()
    };
    ship(&spec, &out, &forced, &quiet).unwrap();
    assert_eq!(std::fs::read(&theirs).unwrap(), first);

    // Weights that do not give the committed held-out loss are refused, and what was shipped
    // before stays.
    let result = out.join("runs").join(&id).join(study::RESULT);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    let loss = v["val"]["image_loss"].as_f64().unwrap();
    v["val"]["image_loss"] = (loss - 0.5).into();
    std::fs::write(&result, v.to_string()).unwrap();
    let e = ship(&spec, &out, &only_native, &quiet).unwrap_err();
    assert!(
        format!("{e:#}").contains("not that run's") && format!("{e:#}").contains(&id),
        "{e:#}"
    );
    assert_eq!(
        std::fs::read(models.join("native-1e9/model.safetensors")).unwrap(),
        first
    );

    // Options outside the study are refused, naming what it has.
    for (o, want) in [
        (
            ShipOptions {
                tier: "free-small".into(),
                ..opts.clone()
            },
            "not one of the study's",
        ),
        (
            ShipOptions {
                budget: Some(3e9),
                ..opts.clone()
            },
            "not one of the study's (5e8, 1e9)",
        ),
        (
            ShipOptions {
                designs: Some(vec!["gpt".into()]),
                ..opts.clone()
            },
            "no design \"gpt\"",
        ),
    ] {
        let e = ship(&spec, &out, &o, &quiet).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
    }
}
