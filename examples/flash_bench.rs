//! TFLOP/s of the CUDA FlashAttention kernels, forward and backward, bf16, head dim 128, at
//! sequence lengths 1k-16k (16k tokens per batch, 16 heads), causal and not: the numbers
//! benches/gpu.sh prints beside PyTorch's `scaled_dot_product_attention` (flash backend,
//! benches/reference/sdpa_bench.py, same shapes and FLOP count).
//!
//! The forward is measured with both block shapes of the tensor-core kernel (`fwd_*`: the
//! default, 64 query rows per block; `fwd_*_m128`: 128, selected by `MMLAB_FA_FWD=m128`).
//!
//! `cargo run --release --features cuda --example flash_bench [-- --seqs 1024,2048 --iters 20]`
//! Prints one JSON object per line.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use mmlab::kernels::cuda;
use mmlab::kernels::sources::FwdTile;

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
    Ok(())
}
