//! Attention forward + backward, fused op vs candle's plain path, at sequence 512, 2048 and
//! 8192 (1 sequence, 4 heads of 64, causal). One thread each (CANDLE_NUM_THREADS=1, as
//! `mmlab` runs by default). It also prints the bytes of score matrices each path keeps.
//!
//!     cargo bench --bench attention
//!
//! Seq 8192 takes minutes per sample on 2 cores; it runs only with MMLAB_BENCH_8192=1.

use candle_core::{Device, Tensor, Var, D};
use criterion::{criterion_group, criterion_main, Criterion};

fn inputs(t: usize) -> (Var, Var, Var, Tensor) {
    let (h, hd) = (4, 64);
    let dev = Device::Cpu;
    let q = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let k = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let v = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let mask = mmlab::model::layers::attention_mask(1, t, 0, &vec![1u8; t], &dev).unwrap();
    (q, k, v, mask)
}

fn plain(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let (b, h, t, hd) = q.dims4().unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt()))
        .unwrap()
        .broadcast_add(mask)
        .unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, h * hd))
        .unwrap()
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let hd = q.dim(3).unwrap();
    mmlab::kernels::attention(q, k, v, mask, 1.0 / (hd as f64).sqrt()).unwrap()
}

fn step(f: fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Tensor, x: &(Var, Var, Var, Tensor)) {
    let y = f(x.0.as_tensor(), x.1.as_tensor(), x.2.as_tensor(), &x.3);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(x.0.as_tensor()).is_some());
}

fn bench(c: &mut Criterion) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let mut sizes = vec![512usize, 2048];
    if std::env::var_os("MMLAB_BENCH_8192").is_some() {
        sizes.push(8192);
    }
    for t in sizes {
        let x = inputs(t);
        let mut g = c.benchmark_group(format!("attention fwd+bwd seq {t}"));
        g.sample_size(10);
        g.bench_function("fused", |b| b.iter(|| step(fused, &x)));
        g.bench_function("plain", |b| b.iter(|| step(plain, &x)));
        g.finish();
        // What each path holds for backward beyond q, k, v, out: plain keeps the scores,
        // the masked scores and the probabilities (3 x h x t x t floats); fused keeps the mask
        // (t x t here, shared by heads; a length-only mask would make it O(t)).
        let h = 4.0;
        let tt = (t * t) as f64 * 4.0;
        println!(
            "seq {t}: plain path keeps ~{:.0} MiB of score matrices, fused ~{:.0} MiB (mask)",
            3.0 * h * tt / 1048576.0,
            tt / 1048576.0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
