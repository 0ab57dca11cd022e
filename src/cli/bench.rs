//! `mmlab bench train`: time training steps of a preset on fixed batches, and write those
//! batches and initial weights so the PyTorch reference can train the same model on the same
//! data (`benches/reference/train_side_by_side.py`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::fusion::TextTokenizer;
use crate::fusion::{collate, Batch, MultimodalSequence, PadSide};
use crate::model::io::tensors_to_bytes;
use crate::model::presets::{parameter_count, sized};
use crate::model::Design;
use crate::model::ModelConfig;
use crate::train::data::SyntheticData;
use crate::train::data::{Factory, Source};
use crate::train::optim::AdamW;
use crate::train::recipe::{preset_config, RecipeOverrides};
use crate::train::step::{collate_shards, gradients, shard_count, StepGrads};
use crate::train::tokenizer::data_tokenizer;
use crate::train::TrainConfig;
use crate::train::{init_model, named_vars};

/// Arguments of `mmlab bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// What to time.
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// Benchmarks.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// Training steps (forward, backward, clipping, AdamW) on pre-made batches of the recipe.
    Train(TrainBenchArgs),
}

/// Arguments of `mmlab bench train`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainBenchArgs {
    /// Preset, or `fuyu-d<W>`: the scaling study's native model of width W (2 layers, heads
    /// of 16, MLP 4·W; `ablations/scaling.toml`), with the study's batch of 64 on aligned scenes.
    #[arg(long, default_value = "fuyu-small")]
    pub model: String,
    /// Timed steps.
    #[arg(long, default_value_t = 40)]
    pub steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Sequences per step (default: the recipe's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (constant in the benchmark).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of initialisation and data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the batches, initial weights and settings here (safetensors) for the reference.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Cut each batch into this many shards of examples, one per thread (default: as
    /// `mmlab train` does, one per thread; 1 splits each op across threads instead).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `mmlab bench train` measured.
#[derive(Debug, Serialize)]
pub struct TrainBenchReport {
    /// Preset.
    pub model: String,
    /// Parameters.
    pub parameters: usize,
    /// candle worker threads.
    pub threads: usize,
    /// Shards each batch was cut into (one thread each; 1: each op split across threads).
    pub shards: usize,
    /// Timed steps.
    pub steps: u64,
    /// Real (non-padding) tokens in the timed steps.
    pub tokens: u64,
    /// Padded positions computed in the timed steps.
    pub positions: u64,
    /// Wall seconds of the timed steps.
    pub seconds: f64,
    /// Real tokens per second.
    pub tokens_per_s: f64,
    /// Seconds in forward + loss, backward, and gradient norm + AdamW.
    pub forward_s: f64,
    /// See `forward_s`.
    pub backward_s: f64,
    /// See `forward_s`.
    pub optimiser_s: f64,
    /// Model FLOPs of the timed steps (forward + backward = 3x forward matmul FLOPs).
    pub model_flops: f64,
    /// Achieved model FLOP/s.
    pub model_flops_per_s: f64,
    /// Measured single-matmul peak of this machine with candle (FLOP/s), same threads.
    pub matmul_peak_flops_per_s: f64,
    /// Model FLOP utilisation: `model_flops_per_s / matmul_peak_flops_per_s`.
    pub mfu: f64,
    /// Losses of every step (warm-up included), for comparison with the reference.
    pub losses: Vec<f32>,
    /// Peak resident memory of this process, bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Forward matmul FLOPs of one batch: every linear layer on every position, attention scores
/// and values over the padded length, and the LM head on the `targets` rows only.
pub fn forward_flops(c: &ModelConfig, batch: &Batch, targets: usize) -> f64 {
    let n = (batch.batch * batch.seq_len) as f64;
    let d = c.d_model as f64;
    let hd = (c.d_model / c.n_heads) as f64;
    let kv = c.n_kv_heads as f64 * hd;
    let up = if matches!(c.activation, crate::model::Activation::SwiGlu) {
        2.0
    } else {
        1.0
    };
    let per_layer =
        2.0 * n * (d * d + 2.0 * d * kv + d * d + up * d * c.d_ff as f64 + c.d_ff as f64 * d)
            + 2.0 * 2.0 * (batch.batch as f64) * (batch.seq_len as f64).powi(2) * d;
    let embed = 2.0 * (batch.patches.len() as f64) * d + 2.0 * (batch.frames.len() as f64) * d;
    let head = 2.0 * targets as f64 * d * c.vocab_size as f64;
    c.n_layers as f64 * per_layer + embed + head
}

/// FLOP/s of a 1024 x 1024 x 1024 f32 matmul with candle (best of five).
pub fn matmul_peak() -> anyhow::Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let _ = a.matmul(&b)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dims();
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}

fn batch_tensors(i: usize, b: &Batch) -> anyhow::Result<Vec<(String, Tensor)>> {
    let dev = Device::Cpu;
    let (bs, t) = (b.batch, b.seq_len);
    let i64s = |v: Vec<i64>, shape: &[usize]| Tensor::from_vec(v, shape, &dev);
    let u8s = |v: Vec<u8>| Tensor::from_vec(v, (bs, t), &dev);
    let mut out = vec![
        (
            "tokens",
            i64s(b.tokens.iter().map(|&x| x as i64).collect(), &[bs, t])?,
        ),
        (
            "positions",
            i64s(b.positions.iter().map(|&x| x as i64).collect(), &[bs, t])?,
        ),
        ("attention_mask", u8s(b.attention_mask.clone())?),
        (
            "target_mask",
            u8s(b.target_mask.iter().map(|&x| x as u8).collect())?,
        ),
    ];
    let np = b.patch_positions.len();
    out.push((
        "patches",
        Tensor::from_vec(b.patches.clone(), (np, b.patch_dim), &dev)?,
    ));
    out.push((
        "patch_positions",
        i64s(b.patch_positions.iter().map(|&x| x as i64).collect(), &[np])?,
    ));
    let nf = b.frame_positions.len();
    out.push((
        "frames",
        Tensor::from_vec(b.frames.clone(), (nf, b.frame_dim), &dev)?,
    ));
    out.push((
        "frame_positions",
        i64s(b.frame_positions.iter().map(|&x| x as i64).collect(), &[nf])?,
    ));
    Ok(out
        .into_iter()
        .map(|(k, v)| (format!("batch{i}.{k}"), v))
        .collect())
}

/// The training config and tokenizer of `--model`: a preset's recipe, or for `fuyu-d<W>` the
/// scaling study's native model of width W (the study's batch size; the recipe's warm-up and
/// schedule do not matter here, the benchmark's rate is constant).
fn bench_config(
    name: &str,
    over: RecipeOverrides,
    seed: u64,
) -> anyhow::Result<(TrainConfig, TextTokenizer)> {
    let width = name
        .strip_prefix("fuyu-d")
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
    let Some(width) = width else {
        let cfg = preset_config(name, None, false, over, seed)?;
        let tok = data_tokenizer(&cfg)?;
        return Ok((cfg, tok));
    };
    let w: usize = width
        .parse()
        .with_context(|| format!("--model {name}: width {width} is too large"))?;
    let model =
        sized(Design::Native, w, false).map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
    let data = SyntheticData::sized_for(&model.image);
    let mut cfg = TrainConfig {
        data: Some(data),
        ..TrainConfig::new(
            model,
            over.steps.unwrap_or(1),
            over.batch_size
                .unwrap_or(crate::ablate::study::DEFAULT_BATCH),
            over.lr.unwrap_or(1e-3),
            seed,
        )
    };
    let tok = data_tokenizer(&cfg)?;
    cfg.model.model.vocab_size = cfg.model.model.vocab_size.max(tok.vocab_size());
    Ok((cfg, tok))
}

/// Runs `mmlab bench train`.
pub fn train_bench(a: &TrainBenchArgs) -> anyhow::Result<TrainBenchReport> {
    if a.steps == 0 {
        bail!("--steps must be positive");
    }
    let over = RecipeOverrides {
        steps: Some(a.steps + a.warmup),
        batch_size: a.batch_size,
        lr: Some(a.lr),
    };
    let (cfg, tok) = bench_config(&a.model, over, a.seed)?;
    let tok = std::sync::Arc::new(tok);
    let pad = tok.specials.pad;
    let Some(data) = cfg.data.clone() else {
        bail!("the benchmark uses synthetic data");
    };
    let builder = cfg.model.builder(tok.clone());
    let factory = Factory::new(Source::Synthetic(data), cfg.seed, cfg.batch_size, builder);
    let total = a.steps + a.warmup;
    let threads = crate::kernels::num_threads();
    let seqs: Vec<Vec<MultimodalSequence>> = (0..total)
        .map(|s| Ok(factory.batch(s)?.into_iter().map(|e| e.seq).collect()))
        .collect::<anyhow::Result<_>>()?;
    let batches: Vec<Batch> = seqs
        .iter()
        .map(|s| collate(s, pad, PadSide::Right).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    let shards: Vec<Vec<Batch>> = seqs
        .iter()
        .map(|s| {
            let k = a.shards.unwrap_or_else(|| shard_count(s.len(), threads));
            collate_shards(s, k, pad).map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let device = Device::Cpu;
    let (model, vm) = init_model(&cfg.model, cfg.seed, &device)?;
    if let Some(path) = &a.dump {
        let mut tensors: Vec<(String, Tensor)> = named_vars(&vm)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        for (i, b) in batches.iter().enumerate() {
            tensors.extend(batch_tensors(i, b)?);
        }
        let meta = serde_json::json!({
            "model": cfg.model.model, "optim": cfg.optim, "grad_clip": cfg.grad_clip,
            "steps": a.steps, "warmup": a.warmup,
        });
        let bytes = tensors_to_bytes(&tensors).map_err(anyhow::Error::msg)?;
        crate::io::atomic_write(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        crate::io::atomic_write(&path.with_extension("json"), meta.to_string().as_bytes())
            .with_context(|| format!("writing {}", path.with_extension("json").display()))?;
    }
    let mut opt = AdamW::new(named_vars(&vm), cfg.optim.clone());
    opt.lr = a.lr;
    let mut losses = Vec::new();
    let (mut fwd, mut bwd, mut upd) = (0f64, 0f64, 0f64);
    let (mut tokens, mut positions, mut flops) = (0u64, 0u64, 0f64);
    let mut t_start = Instant::now();
    let vars = opt.vars();
    for (s, (batch, parts)) in batches.iter().zip(&shards).enumerate() {
        if s as u64 == a.warmup {
            (fwd, bwd, upd) = (0.0, 0.0, 0.0);
            t_start = Instant::now();
        }
        let StepGrads {
            loss: lv,
            n_targets,
            grads,
            forward_s,
            backward_s,
        } = gradients(&model, parts, &vars)?;
        let t2 = Instant::now();
        let norm = opt.grad_norm(&grads)?;
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / norm
        } else {
            1.0
        };
        opt.step(&grads, scale)?;
        let t3 = Instant::now();
        losses.push(lv);
        fwd += forward_s;
        bwd += backward_s;
        upd += (t3 - t2).as_secs_f64();
        if s as u64 >= a.warmup {
            tokens += batch.attention_mask.iter().map(|&m| m as u64).sum::<u64>();
            positions += parts.iter().map(|b| b.batch * b.seq_len).sum::<usize>() as u64;
            flops += 3.0 * forward_flops(&cfg.model.model, batch, n_targets);
        }
    }
    let seconds = t_start.elapsed().as_secs_f64();
    let peak = matmul_peak()?;
    Ok(TrainBenchReport {
        model: a.model.clone(),
        parameters: parameter_count(&cfg.model.model),
        threads,
        shards: shards.first().map_or(1, |s| s.len()),
        steps: a.steps,
        tokens,
        positions,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        forward_s: fwd,
        backward_s: bwd,
        optimiser_s: upd,
        model_flops: flops,
        model_flops_per_s: flops / seconds,
        matmul_peak_flops_per_s: peak,
        mfu: flops / seconds / peak,
        losses,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Runs `mmlab bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        BenchWhat::Train(a) => {
            let r = train_bench(a)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} parameters, {} thread(s), {} shard(s) per batch, {} steps, {} tokens ({} positions) in {:.2} s",
                    r.model, r.parameters, r.threads, r.shards, r.steps, r.tokens, r.positions, r.seconds
                );
                println!("  tokens/s        {:.0}", r.tokens_per_s);
                println!(
                    "  time split      forward {:.1}%  backward {:.1}%  clip+AdamW {:.1}%",
                    100.0 * r.forward_s / r.seconds,
                    100.0 * r.backward_s / r.seconds,
                    100.0 * r.optimiser_s / r.seconds
                );
                println!(
                    "  model FLOP/s    {:.2} G  (matmul peak {:.1} G, MFU {:.1}%)",
                    r.model_flops_per_s / 1e9,
                    r.matmul_peak_flops_per_s / 1e9,
                    100.0 * r.mfu
                );
                if let Some(b) = r.peak_rss_bytes {
                    println!("  peak RSS        {:.0} MB", b as f64 / 1e6);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset;

    fn over() -> RecipeOverrides {
        RecipeOverrides {
            steps: Some(2),
            batch_size: None,
            lr: None,
        }
    }

    #[test]
    fn study_widths_build_the_study_model_and_batch() {
        let (cfg, tok) = bench_config("fuyu-d32", over(), 0).unwrap();
        let m = &cfg.model.model;
        assert_eq!((m.d_model, m.n_layers, m.n_heads, m.d_ff), (32, 2, 2, 128));
        assert_eq!(cfg.batch_size, crate::ablate::study::DEFAULT_BATCH);
        assert!(m.vocab_size >= tok.vocab_size());
        // A preset keeps its recipe.
        let (p, _) = bench_config("fuyu-tiny", over(), 0).unwrap();
        assert_eq!(
            p.model.model.d_model,
            preset("fuyu-tiny").unwrap().config.model.d_model
        );
    }

    #[test]
    fn bad_widths_name_the_flag() {
        let e = bench_config("fuyu-d40", over(), 0).unwrap_err().to_string();
        assert!(
            e.contains("--model fuyu-d40") && e.contains("multiple of 16"),
            "{e}"
        );
        let e = bench_config("fuyu-d99999999999999999999999", over(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(bench_config("fuyu-dx", over(), 0).is_err());
    }

    #[test]
    fn a_study_width_trains_and_dumps_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("b.safetensors");
        let r = train_bench(&TrainBenchArgs {
            model: "fuyu-d32".into(),
            steps: 2,
            warmup: 1,
            batch_size: Some(4),
            lr: 1e-3,
            seed: 0,
            dump: Some(dump.clone()),
            shards: None,
            json: true,
        })
        .unwrap();
        assert_eq!(r.losses.len(), 3);
        assert!(r.losses.iter().all(|l| l.is_finite()) && r.tokens > 0);
        assert!(dump.is_file() && dump.with_extension("json").is_file());
    }
}
