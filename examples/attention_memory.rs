//! One attention forward + backward at a given length, on the fused op or candle's plain path,
//! reporting wall time and the process's peak resident memory: run it once per path and length
//! (a fresh process each) to see how memory grows with the sequence.
//!
//!     cargo run --release --example attention_memory -- fused 8192
//!     cargo run --release --example attention_memory -- plain 2048
//!
//! Same shapes as `benches/attention.rs`: 1 sequence, 4 heads of 64, causal, one thread.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use mmlab::kernels::AttnMask;

fn main() -> anyhow::Result<()> {
    // The thread budget candle and mmlab's ops read (set before rayon's pool starts).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, t) = match args.as_slice() {
        [p, t] if p == "fused" || p == "plain" => (p.clone(), t.parse::<usize>()?),
        _ => anyhow::bail!("usage: attention_memory fused|plain SEQ"),
    };
    let (h, hd) = (4, 64);
    let dev = Device::Cpu;
    // Deterministic inputs, so the two paths' |dq| sums can be compared across processes.
    let input = |phase: f64| -> candle_core::Result<Var> {
        let n = h * t * hd;
        let x = (Tensor::arange(0u32, n as u32, &dev)?.to_dtype(DType::F32)? * 0.7311)?;
        Var::from_tensor(&(x + phase)?.sin()?.reshape((1, h, t, hd))?)
    };
    let (q, k, v) = (input(0.0)?, input(1.0)?, input(2.0)?);
    let mask = AttnMask::causal(1, t, 0, &vec![1u8; t])?;
    let scale = 1.0 / (hd as f64).sqrt();
    let base = mmlab::cli::bench::peak_rss_bytes().unwrap_or(0);
    let start = Instant::now();
    let y = if path == "fused" {
        mmlab::kernels::attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale)?
    } else {
        let dense = mask.dense(&dev, DType::F32)?;
        let s = (q.as_tensor().matmul(&k.as_tensor().t()?)? * scale)?.broadcast_add(&dense)?;
        let p = candle_nn::ops::softmax(&s, D::Minus1)?;
        p.matmul(v.as_tensor())?
            .transpose(1, 2)?
            .reshape((1, t, h * hd))?
    };
    let g = y.sum_all()?.backward()?;
    let dq: &Tensor = g
        .get(q.as_tensor())
        .ok_or_else(|| anyhow::anyhow!("no gradient for q"))?;
    let check = dq.abs()?.sum_all()?.to_scalar::<f32>()?;
    let secs = start.elapsed().as_secs_f64();
    let peak = mmlab::cli::bench::peak_rss_bytes().unwrap_or(0);
    println!(
        "{path} seq {t}: fwd+bwd {secs:.2} s, peak RSS {:.0} MiB ({:.0} MiB above the inputs), |dq| sum {check:.3e}",
        peak as f64 / 1048576.0,
        peak.saturating_sub(base) as f64 / 1048576.0
    );
    Ok(())
}
