//! TFLOP/s of the CUDA FlashAttention kernels, forward and backward, bf16, head dim 128, at
//! sequence lengths 1k-16k (16k tokens per batch, 16 heads), causal and not: the numbers
//! benches/gpu.sh prints beside PyTorch's `scaled_dot_product_attention` (flash backend,
//! benches/reference/sdpa_bench.py, same shapes and FLOP count).
//!
//! The forward is measured with both block shapes of the tensor-core kernel (`fwd_*`: the
//! default, 64 query rows per block; `fwd_*_m128`: 128, selected by `MMLAB_FA_FWD=m128`).
//!
//! Then the q/k preparation before attention (QK-LayerNorm, rotary on half the head dim,
//! the head transpose), bf16, 16k tokens, 16 heads, head dim 128: the fused kernel
//! (`cuda::qk_norm_rope`, `kernels/qk_prep.cu`) against candle's ops as the model ran them
//! before (`Norm::forward`, `Rotary::apply`), forward and forward + backward (`"op":"qk_prep"`);
//! and the MLP's bias + relu² after its up-projection, bf16, 16k tokens x 16k columns (a
//! Persimmon-8B-sized MLP): the fused kernel (`cuda::bias_relu2`, `kernels/mlp_act.cu`) against
//! candle's `broadcast_add`, `relu`, `sqr` (`"op":"relu2"`).
//!
//! `cargo run --release --features cuda --example flash_bench [-- --seqs 1024,2048 --iters 20]`
//! Prints one JSON object per line.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mmlab::kernels::cuda;
use mmlab::kernels::sources::FwdTile;
use mmlab::model::config::NormKind;
use mmlab::model::layers::{Norm, Rotary};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seqs: Vec<usize> = opt("--seqs")
        .unwrap_or_else(|| "1024,2048,4096,8192,16384".into())
        .split(',')
        .map(|s| s.trim().parse().context("--seqs: comma-separated integers"))
        .collect::<anyhow::Result<_>>()?;
    let iters: usize = opt("--iters").map_or(Ok(10), |s| s.parse())?;
    let (tokens, heads, hd) = (16384usize, 16usize, 128usize);
    let dev = Device::new_cuda(0)?;
    let scale = 1.0 / (hd as f64).sqrt();
    for causal in [false, true] {
        for &seq in &seqs {
            let b = (tokens / seq).max(1);
            let mk = |seed: u64| -> anyhow::Result<Tensor> {
                dev.set_seed(seed)?;
                Ok(Tensor::randn(0f32, 1.0, (b, heads, seq, hd), &dev)?.to_dtype(DType::BF16)?)
            };
            let (q, k, v) = (mk(1)?, mk(2)?, mk(3)?);
            let dout =
                Tensor::randn(0f32, 1.0, (b, seq, heads * hd), &dev)?.to_dtype(DType::BF16)?;
            // Forward, with each block shape (the default's output feeds the backward).
            let fwd = |tile: FwdTile| -> anyhow::Result<(f64, Tensor, Tensor)> {
                let mut res = cuda::forward_tiled(&q, &k, &v, None, scale, causal, tile)?;
                for _ in 0..2 {
                    res = cuda::forward_tiled(&q, &k, &v, None, scale, causal, tile)?;
                }
                dev.synchronize()?;
                let t0 = Instant::now();
                for _ in 0..iters {
                    res = cuda::forward_tiled(&q, &k, &v, None, scale, causal, tile)?;
                }
                dev.synchronize()?;
                Ok((t0.elapsed().as_secs_f64() / iters as f64, res.0, res.1))
            };
            let (fwd_s, out, lse) = fwd(FwdTile::M64)?;
            let (fwd_m128_s, _, _) = fwd(FwdTile::M128)?;
            // Backward.
            for _ in 0..2 {
                cuda::backward(&q, &k, &v, &out, &dout, &lse, None, scale, causal)?;
            }
            dev.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..iters {
                cuda::backward(&q, &k, &v, &out, &dout, &lse, None, scale, causal)?;
            }
            dev.synchronize()?;
            let bwd_s = t0.elapsed().as_secs_f64() / iters as f64;
            // FLOPs as FlashAttention's benchmarks count them: 4 b h s^2 d forward (halved
            // when causal), 2.5x that backward.
            let mut flops = 4.0 * (b * heads * seq * seq * hd) as f64;
            if causal {
                flops /= 2.0;
            }
            println!(
                "{{\"impl\":\"mmlab\",\"seq\":{seq},\"batch\":{b},\"heads\":{heads},\"hd\":{hd},\
                 \"causal\":{causal},\"fwd_ms\":{:.3},\"bwd_ms\":{:.3},\"fwd_tflops\":{:.1},\
                 \"bwd_tflops\":{:.1},\"fwd_ms_m128\":{:.3},\"fwd_tflops_m128\":{:.1}}}",
                fwd_s * 1e3,
                bwd_s * 1e3,
                flops / fwd_s / 1e12,
                2.5 * flops / bwd_s / 1e12,
                fwd_m128_s * 1e3,
                flops / fwd_m128_s / 1e12
            );
        }
    }
    qk_prep(&dev, &seqs, iters)?;
    relu2(&dev, iters)?;
    Ok(())
}

/// The fused bias + relu² against candle's ops on one MLP-sized matmul output.
fn relu2(dev: &Device, iters: usize) -> anyhow::Result<()> {
    let (rows, cols) = (16384usize, 16384usize);
    dev.set_seed(11)?;
    let z = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, cols), dev)?.to_dtype(DType::BF16)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, cols, dev)?.to_dtype(DType::BF16)?)?;
    let dy = Tensor::randn(0f32, 1.0, (rows, cols), dev)?.to_dtype(DType::BF16)?;
    let plain = || z.as_tensor().broadcast_add(b.as_tensor())?.relu()?.sqr();
    let fused = || cuda::bias_relu2(z.as_tensor(), Some(b.as_tensor()));
    let timing = fused_vs_plain(dev, iters, &plain, &fused, &dy, rows * cols)?;
    println!("{{\"impl\":\"mmlab\",\"op\":\"relu2\",\"rows\":{rows},\"cols\":{cols},{timing}}}");
    Ok(())
}

/// Seconds per call of `f`, after two warm-up calls.
fn time<T, E: Into<anyhow::Error>>(
    dev: &Device,
    iters: usize,
    mut f: impl FnMut() -> Result<T, E>,
) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f().map_err(Into::into)?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f().map_err(Into::into)?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}

/// A fused op and candle's ops for the same, forward and forward + backward (through
/// `(y * dy).sum()`), as the JSON fields `side_by_side.py` reads; `elems` bf16 elements in and
/// out, so the fused forward moves 4 bytes per element.
fn fused_vs_plain(
    dev: &Device,
    iters: usize,
    plain: &dyn Fn() -> candle_core::Result<Tensor>,
    fused: &dyn Fn() -> candle_core::Result<Tensor>,
    dy: &Tensor,
    elems: usize,
) -> anyhow::Result<String> {
    let fwd_plain = time(dev, iters, plain)?;
    let fwd_fused = time(dev, iters, fused)?;
    let train = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<()> {
        (f()? * dy)?.sum_all()?.backward()?;
        Ok(())
    };
    let step_plain = time(dev, iters, || train(plain))?;
    let step_fused = time(dev, iters, || train(fused))?;
    let gbs = 4.0 * elems as f64 / fwd_fused / 1e9;
    Ok(format!(
        "\"fwd_ms_plain\":{:.3},\"fwd_ms_fused\":{:.3},\"fwd_bwd_ms_plain\":{:.3},\
         \"fwd_bwd_ms_fused\":{:.3},\"fused_fwd_gbs\":{gbs:.0}",
        fwd_plain * 1e3,
        fwd_fused * 1e3,
        step_plain * 1e3,
        step_fused * 1e3
    ))
}

/// The fused q/k preparation against candle's ops, per sequence length (16k tokens per batch).
fn qk_prep(dev: &Device, seqs: &[usize], iters: usize) -> anyhow::Result<()> {
    let (tokens, heads, hd, rot) = (16384usize, 16usize, 128usize, 64usize);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::BF16, dev);
    let norm = Norm::new(NormKind::LayerNorm, hd, 1e-5, vb.pp("q_layernorm"))?;
    let vars = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("var map poisoned"))?
        .clone();
    let (w, bias) = (&vars["q_layernorm.weight"], &vars["q_layernorm.bias"]);
    for &seq in seqs {
        let b = (tokens / seq).max(1);
        let rotary = Rotary::new(rot, seq, 10_000.0, dev)?;
        let pos = Tensor::arange(0u32, seq as u32, dev)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let (cos, sin) = rotary.tables(&pos)?;
        let (cos, sin) = (cos.to_dtype(DType::BF16)?, sin.to_dtype(DType::BF16)?);
        dev.set_seed(7)?;
        let x = Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (b, seq, heads, hd), dev)?.to_dtype(DType::BF16)?,
        )?;
        let dy = Tensor::randn(0f32, 1.0, (b, heads, seq, hd), dev)?.to_dtype(DType::BF16)?;
        let plain = || -> candle_core::Result<Tensor> {
            let q = norm.forward(&x.as_tensor().transpose(1, 2)?)?;
            rotary.apply(&q, &cos, &sin)?.contiguous()
        };
        let fused = || {
            cuda::qk_norm_rope(
                x.as_tensor(),
                Some((w.as_tensor(), bias.as_tensor(), 1e-5)),
                &cos,
                &sin,
                rot,
            )
        };
        let timing = fused_vs_plain(dev, iters, &plain, &fused, &dy, b * seq * heads * hd)?;
        println!(
            "{{\"impl\":\"mmlab\",\"op\":\"qk_prep\",\"seq\":{seq},\"batch\":{b},\"heads\":{heads},\
             \"hd\":{hd},\"rot\":{rot},{timing}}}"
        );
    }
    Ok(())
}
