//! Helpers shared by the test crates: attention kernels against the CPU op
//! (`tests/kernels.rs`, `tests/cuda.rs`, `tests/cuda_emulated.rs`), and the CLI's output
//! (`tests/shipped.rs`, `tests/eval_cli.rs`, `tests/serve.rs`), and a tiny training run
//! (`tests/train.rs`, `tests/tui.rs`, `tests/bolted.rs`).
#![allow(dead_code)] // each test crate uses its own subset

use candle_core::{Device, Tensor, Var};
use mmlab::kernels::{self, AttnMask};

/// Deterministic values in [-2, 2) without a RNG dependency.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest |x| of `t` (any shape, f32).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest |a - b| (same shapes).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// The mask of a kernel test case: `mask` when given (it carries its own causal rule), else
/// every key real, causal or not, with the `tk - tq` first keys a KV cache.
pub fn case_mask(
    b: usize,
    tq: usize,
    tk: usize,
    causal: bool,
    mask: Option<&AttnMask>,
) -> AttnMask {
    match mask {
        Some(m) => {
            assert!(!causal, "a mask carries its own causal rule");
            m.clone()
        }
        None if causal => AttnMask::causal(b, tq, tk - tq, &vec![1; b * tk]).unwrap(),
        None => AttnMask::bidirectional(b, tq, tk - tq, &vec![1; b * tk]).unwrap(),
    }
}

/// The CPU attention's output and the gradients of `sum(output * r)` with respect to q, k, v.
pub struct Reference {
    pub y: Tensor,
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// [`Reference`] of `mmlab::kernels::attention` on the CPU.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    r: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Reference {
    let (qc, kc, vc) = (
        Var::from_tensor(q).unwrap(),
        Var::from_tensor(k).unwrap(),
        Var::from_tensor(v).unwrap(),
    );
    let y =
        kernels::attention(qc.as_tensor(), kc.as_tensor(), vc.as_tensor(), mask, scale).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |x: &Var| g.get(x.as_tensor()).expect("cpu gradient").clone();
    Reference {
        dq: grad(&qc),
        dk: grad(&kc),
        dv: grad(&vc),
        y,
    }
}

/// The stdout of a command that must have succeeded; on failure, the exit status, stdout and
/// stderr.
pub fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `steps`-step `fuyu-tiny` run on the small aligned scenes, logging every step.
pub fn tiny_train_config(steps: u64) -> mmlab::train::TrainConfig {
    train_config_for("fuyu-tiny", steps)
}

/// Trains `cfg` into `dir` from scratch with the builtin tokenizer, printing nothing.
pub fn train_quietly(
    cfg: &mmlab::train::TrainConfig,
    dir: &std::path::Path,
) -> mmlab::train::TrainSummary {
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    mmlab::train::train(
        cfg,
        mmlab::fusion::TextTokenizer::builtin().unwrap(),
        dir,
        &mmlab::train::RunControl {
            resume: false,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap()
}

/// [`tiny_train_config`] for any preset (its vocabulary grown to the builtin tokenizer's).
pub fn train_config_for(preset: &str, steps: u64) -> mmlab::train::TrainConfig {
    let tok = mmlab::fusion::TextTokenizer::builtin().unwrap();
    let mut model = mmlab::model::presets::preset(preset).unwrap().config;
    model.model.vocab_size = model.model.vocab_size.max(tok.vocab_size());
    mmlab::train::TrainConfig {
        model,
        data: Some(mmlab::train::data::SyntheticData::small()),
        data_dir: None,
        steps,
        batch_size: 8,
        warmup: 2,
        min_lr_ratio: 0.1,
        optim: mmlab::train::optim::AdamWConfig::default(),
        grad_clip: 1.0,
        seed: 4,
        log_every: 1,
        eval_every: 0,
        ckpt_every: 0,
        eval_batches: 1,
        eval_seed: None,
        init_from: None,
        init_parts: Vec::new(),
        init_encoder: None,
        init_audio_encoder: None,
        freeze: Vec::new(),
    }
}
