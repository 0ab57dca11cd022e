//! Training runs: a resumed run matches an uninterrupted one; bad model directories get clear errors.

mod common;

use candle_core::Device;
use mmlab::fusion::TextTokenizer;
use mmlab::model::io::load_dir;
use mmlab::model::presets::preset;
use mmlab::train::data::SyntheticData;
use mmlab::train::{train, LogLine, RunControl, TrainConfig};

fn config(steps: u64) -> TrainConfig {
    common::tiny_train_config(steps)
}

fn losses(dir: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<LogLine>(l).unwrap())
        .filter_map(|l| l.loss.map(|x| (l.step, x)))
        .collect()
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let cfg = config(10);
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(
        &cfg,
        TextTokenizer::builtin().unwrap(),
        a.path(),
        &RunControl {
            resume: false,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap();
    let half = train(
        &cfg,
        TextTokenizer::builtin().unwrap(),
        b.path(),
        &RunControl {
            resume: false,
            progress: &quiet,
            stop_after: Some(4),
        },
    )
    .unwrap();
    assert_eq!(half.state.step, 4);
    assert!(
        !b.path().join("model.safetensors").exists(),
        "an interrupted run must not write the final model"
    );
    train(
        &cfg,
        TextTokenizer::builtin().unwrap(),
        b.path(),
        &RunControl {
            resume: true,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap();
    assert_eq!(losses(a.path()).len(), 10);
    assert_eq!(
        losses(a.path()),
        losses(b.path()),
        "loss curves differ after resume"
    );
    let wa = std::fs::read(a.path().join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ after resume");
    // The finished directory loads as a model.
    let m = load_dir(a.path(), &Device::Cpu).unwrap();
    assert_eq!(m.config.preset.as_deref(), Some("fuyu-tiny"));
    // Resuming with other settings is refused.
    let mut other = cfg.clone();
    other.optim.lr *= 2.0;
    let err = train(
        &other,
        TextTokenizer::builtin().unwrap(),
        a.path(),
        &RunControl {
            resume: true,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap_err();
    // ... naming the setting and both values.
    let err = err.to_string();
    assert!(
        err.contains("different settings") && err.contains("optim.lr: 0.003 -> 0.006"),
        "{err}"
    );
}

fn trained_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    train(
        &config(1),
        TextTokenizer::builtin().unwrap(),
        d.path(),
        &RunControl {
            resume: false,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap();
    d
}

#[test]
fn truncated_or_hostile_weights_are_clear_errors() {
    let d = trained_dir();
    let w = d.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_dir(d.path(), &Device::Cpu)
        .err()
        .expect("truncated weights must fail")
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // A header that claims an enormous length.
    let mut hostile = (u64::MAX / 2).to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{}");
    std::fs::write(&w, &hostile).unwrap();
    let e = load_dir(d.path(), &Device::Cpu)
        .err()
        .expect("hostile header must fail")
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn bad_configs_are_clear_errors() {
    let d = trained_dir();
    let c = d.path().join("config.json");
    std::fs::write(&c, "{ not json").unwrap();
    let e = load_dir(d.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    let mut cfg = preset("fuyu-tiny").unwrap().config;
    cfg.model.n_heads = 3; // 32 is not divisible by 3
    std::fs::write(&c, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_dir(d.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("n_heads"), "{e}");
    let mut cfg = preset("fuyu-tiny").unwrap().config;
    cfg.model.d_model = 64; // weights are 32 wide
    std::fs::write(&c, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_dir(d.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn warm_start_begins_from_the_given_weights() {
    let a = trained_dir();
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    // With a zero learning rate the warm-started run must save exactly the weights it began from.
    let mut cfg = config(2);
    cfg.optim.lr = 0.0;
    cfg.init_from = Some(a.path().to_path_buf());
    let b = tempfile::tempdir().unwrap();
    let ctl = RunControl {
        resume: false,
        progress: &quiet,
        stop_after: None,
    };
    train(&cfg, TextTokenizer::builtin().unwrap(), b.path(), &ctl).unwrap();
    let wa =
        candle_core::safetensors::load(a.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let wb =
        candle_core::safetensors::load(b.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (k, ta) in &wa {
        let (x, y) = (
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            wb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y, "{k} changed");
    }
    // A fresh initialisation differs from it.
    cfg.init_from = None;
    let c = tempfile::tempdir().unwrap();
    train(&cfg, TextTokenizer::builtin().unwrap(), c.path(), &ctl).unwrap();
    let wc =
        candle_core::safetensors::load(c.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(wa
        .iter()
        .any(|(k, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            != wc[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()));
    // A directory of another shape is refused with its path named.
    let mut other = config(1);
    other.model.model.d_model = 64;
    other.model.model.d_ff = 128;
    other.init_from = Some(a.path().to_path_buf());
    let d = tempfile::tempdir().unwrap();
    let e = train(&other, TextTokenizer::builtin().unwrap(), d.path(), &ctl)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json") && e.contains("differ"), "{e}");
}

#[test]
fn text_only_samples_describe_the_scene_in_words_and_have_no_patches() {
    use mmlab::train::data::{Factory, Source};
    let tok = std::sync::Arc::new(TextTokenizer::builtin().unwrap());
    let cfg = config(1);
    let mut d = SyntheticData::small();
    d.text_only = true;
    let f = Factory::new(
        Source::Synthetic(d.clone()),
        3,
        8,
        cfg.model.builder(tok.clone()),
    );
    for step in [0, d.audio_every - 1] {
        let batch = f.batch(step).unwrap();
        assert!(!batch.is_empty());
        for e in batch {
            assert_eq!(e.seq.n_patches() + e.seq.n_frames(), 0);
            let text = tok.decode(&e.seq.tokens).unwrap();
            let want = if step == 0 { "Scene:" } else { "Sounds:" };
            assert!(text.contains(want), "{text}");
            assert!(e.seq.target_mask.iter().any(|&t| t));
        }
    }
}

fn log_lines(dir: &std::path::Path) -> Vec<LogLine> {
    std::fs::read_to_string(dir.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<LogLine>(l).unwrap())
        .map(|mut l| {
            // Wall-clock fields are the only ones allowed to differ.
            l.seconds = 0.0;
            l.tokens_per_s = l.tokens_per_s.map(|_| 0.0);
            l
        })
        .collect()
}

#[test]
fn the_log_after_a_resume_equals_the_uninterrupted_log() {
    // Losses are averaged over 5 steps and the run stops at step 7, inside a window.
    let mut cfg = config(12);
    cfg.log_every = 5;
    cfg.eval_every = 4;
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    let run = |dir: &std::path::Path, resume: bool, stop_after: Option<u64>| {
        train(
            &cfg,
            TextTokenizer::builtin().unwrap(),
            dir,
            &RunControl {
                resume,
                progress: &quiet,
                stop_after,
            },
        )
        .unwrap()
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    run(a.path(), false, None);
    assert_eq!(run(b.path(), false, Some(7)).state.step, 7);
    run(b.path(), true, None);
    let (la, lb) = (log_lines(a.path()), log_lines(b.path()));
    // Loss lines at 5, 10, 12; eval lines at 4, 8, 12.
    assert_eq!(la.iter().filter(|l| l.loss.is_some()).count(), 3, "{la:?}");
    assert_eq!(la.iter().filter(|l| l.eval.is_some()).count(), 3, "{la:?}");
    assert_eq!(la, lb, "the log differs after a resume");
}

#[test]
fn resuming_a_missing_directory_is_an_error_and_creates_nothing() {
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("never-trained");
    let e = train(
        &config(2),
        TextTokenizer::builtin().unwrap(),
        &missing,
        &RunControl {
            resume: true,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("does not exist") && e.contains("never-trained"),
        "{e}"
    );
    assert!(!missing.exists(), "resuming created {}", missing.display());
}

#[test]
fn the_log_counts_training_flops_by_component_and_freezing() {
    // Freezing the decoder (gradients still flow through it to the patch embedding) changes its
    // factor from 6 to 4: the totals differ by exactly 2 · N_decoder · tokens.
    let run = |freeze: Vec<String>| {
        let mut cfg = config(3);
        cfg.freeze = freeze;
        let dir = tempfile::tempdir().unwrap();
        common::train_quietly(&cfg, dir.path());
        let lines = log_lines(dir.path());
        let (vm_model, vm) = mmlab::train::init_model(&cfg.model, 0, &Device::Cpu).unwrap();
        drop(vm_model);
        let (per, _) = mmlab::train::flops::component_params_of(&vm);
        (lines, per)
    };
    let (all, per) = run(Vec::new());
    let (frozen, _) = run(vec!["decoder".into()]);
    let last = |l: &[LogLine]| {
        let x = l.last().unwrap();
        (x.flops.expect("flops logged"), x.tokens)
    };
    let ((fa, ta), (ff, tf)) = (last(&all), last(&frozen));
    assert_eq!(ta, tf, "same data, same tokens");
    let n_dec = per["decoder"] as f64;
    assert!(fa >= 6.0 * n_dec * ta as f64, "{fa} < 6 N_dec tokens");
    assert!(
        ((fa - ff) - 2.0 * n_dec * ta as f64).abs() <= 1e-9 * fa,
        "all {fa}, decoder frozen {ff}, N_dec {n_dec}, tokens {ta}"
    );
    // Every line carries the running total; it grows from one loss line (every step) to the next.
    assert!(all.iter().all(|l| l.flops.is_some()), "{all:?}");
    let f: Vec<f64> = all
        .iter()
        .filter(|l| l.loss.is_some())
        .filter_map(|l| l.flops)
        .collect();
    assert_eq!(f.len(), 3);
    assert!(f.windows(2).all(|w| w[1] > w[0]), "{f:?}");
}
