//! Attention forward + backward, fused op vs candle's plain path, at sequence 512, 2048 and
//! 8192 (1 sequence, 4 heads of 64, causal). One thread each (RAYON_NUM_THREADS=1 unless set,
//! which is what candle and mmlab's ops read). It also prints the bytes of score matrices each path keeps, and
//! the fused path's mask (compact: O(seq)).
//!
//!     cargo bench --bench attention
//!
//! Seq 8192 takes minutes per sample on 2 cores; it runs only with MMLAB_BENCH_8192=1.

use candle_core::{DType, Device, Tensor, Var, D};
use criterion::{criterion_group, criterion_main, Criterion};
use mmlab::kernels::AttnMask;

/// q, k, v, the compact causal mask (fused path) and its dense form (plain path).
struct Inputs {
    q: Var,
    k: Var,
    v: Var,
    mask: AttnMask,
    dense: Tensor,
}

fn inputs(t: usize) -> Inputs {
    let (h, hd) = (4, 64);
    let dev = Device::Cpu;
    let q = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let k = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let v = Var::randn(0f32, 1.0, (1, h, t, hd), &dev).unwrap();
    let mask = AttnMask::causal(1, t, 0, &vec![1u8; t]).unwrap();
    let dense = mask.dense(&dev, DType::F32).unwrap();
    Inputs {
        q,
        k,
        v,
        mask,
        dense,
    }
}

fn plain(q: &Tensor, k: &Tensor, v: &Tensor, x: &Inputs) -> Tensor {
    let (b, h, t, hd) = q.dims4().unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt()))
        .unwrap()
        .broadcast_add(&x.dense)
        .unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, h * hd))
        .unwrap()
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, x: &Inputs) -> Tensor {
    let hd = q.dim(3).unwrap();
    mmlab::kernels::attention(q, k, v, &x.mask, 1.0 / (hd as f64).sqrt()).unwrap()
}

fn step(f: fn(&Tensor, &Tensor, &Tensor, &Inputs) -> Tensor, x: &Inputs) {
    let y = f(x.q.as_tensor(), x.k.as_tensor(), x.v.as_tensor(), x);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(x.q.as_tensor()).is_some());
}

fn bench(c: &mut Criterion) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
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
        // the masked scores and the probabilities (3 x h x t x t floats) and reads the dense
        // mask (t x t); fused keeps only the compact mask (one flag per key).
        let h = 4.0;
        let tt = (t * t) as f64 * 4.0;
        println!(
            "seq {t}: plain path keeps ~{:.0} MiB of score matrices (+{:.0} MiB dense mask), \
             fused {} bytes (compact mask)",
            3.0 * h * tt / 1048576.0,
            tt / 1048576.0,
            x.mask.bytes()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
