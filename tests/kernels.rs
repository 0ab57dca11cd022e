//! Fused CPU ops against the plain candle path: forward values and gradients (<= 1e-5),
//! on odd sizes, a single row, and with masks.

use candle_core::{DType, Device, Tensor, Var, D};
use mmlab::kernels::{self, AttnMask};

mod common;
use common::{max_abs, max_diff, rand};

/// Compares `fused(vars)` and `plain(vars)`: outputs, and gradients of `sum(out * r)` for a
/// fixed random `r`, for every var (within `tol`, times the gradient's largest magnitude
/// when that is above 1).
fn compare(
    name: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    plain: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fused(&ts);
    let yp = plain(&ts);
    let d = max_diff(&yf, &yp);
    assert!(d <= tol, "{name}: forward differs by {d}");
    let r = rand(yf.dims(), 99);
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gp = (&yp * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let a = gf.get(v.as_tensor()).expect("fused op gave no gradient");
        let b = gp.get(v.as_tensor()).expect("plain op gave no gradient");
        // Gradients of weights sum over many rows: compare relative to their magnitude.
        let scale = 1f32.max(max_abs(b));
        let d = max_diff(a, b);
        assert!(
            d <= tol * scale,
            "{name}: gradient of input {i} differs by {d} (scale {scale})"
        );
    }
}

fn plain_layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Tensor {
    let d = x.dim(D::Minus1).unwrap() as f64;
    let (xc, var) = if b.is_some() {
        let mean = (x.sum_keepdim(D::Minus1).unwrap() / d).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = (xc.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / d).unwrap();
        (xc, var)
    } else {
        let ms = (x.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / d).unwrap();
        (x.clone(), ms)
    };
    let y = xc
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap();
    match b {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    }
}

#[test]
fn layer_norm_matches_plain_path() {
    for (shape, seed) in [
        (vec![3, 5, 7], 1u64),
        (vec![1, 1, 64], 2),
        (vec![2, 3, 300, 16], 3),
    ] {
        let d = *shape.last().unwrap();
        let inputs = [
            rand(&shape, seed),
            rand(&[d], seed + 10),
            rand(&[d], seed + 20),
        ];
        compare(
            &format!("layer_norm {shape:?}"),
            &inputs,
            |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            |t| plain_layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5),
            1e-5,
        );
        compare(
            &format!("rms_norm {shape:?}"),
            &inputs[..2],
            |t| kernels::rms_norm(&t[0], &t[1], 1e-6).unwrap(),
            |t| plain_layer_norm(&t[0], &t[1], None, 1e-6),
            1e-5,
        );
    }
}

#[test]
fn layer_norm_of_a_transposed_view_matches() {
    // QK-norm runs on (b, h, t, hd) views made by a transpose.
    let x = rand(&[2, 5, 3, 8], 7).transpose(1, 2).unwrap();
    let w = rand(&[8], 8);
    let b = rand(&[8], 9);
    let d = max_diff(
        &kernels::layer_norm(&x, &w, &b, 1e-5).unwrap(),
        &plain_layer_norm(&x, &w, Some(&b), 1e-5),
    );
    assert!(d <= 1e-5, "{d}");
}

#[test]
fn linear_and_bias_match_plain_path() {
    for (shape, out, seed) in [
        (vec![4, 7, 9], 5usize, 1u64),
        (vec![1, 1, 3], 1, 2),
        (vec![600, 13], 11, 3),
    ] {
        let inp = *shape.last().unwrap();
        let inputs = [
            rand(&shape, seed),
            rand(&[out, inp], seed + 1),
            rand(&[out], seed + 2),
        ];
        compare(
            &format!("linear {shape:?} -> {out}"),
            &inputs,
            |t| kernels::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
            |t| {
                candle_nn::Module::forward(
                    &candle_nn::Linear::new(t[1].clone(), Some(t[2].clone())),
                    &t[0],
                )
                .unwrap()
            },
            1e-5,
        );
    }
}

#[test]
fn softmax_matches_plain_path_with_masked_entries() {
    for (shape, seed) in [
        (vec![2, 3, 5, 5], 1u64),
        (vec![1, 1, 1, 1], 2),
        (vec![3, 700], 3),
    ] {
        let x = rand(&shape, seed);
        // Mask every third entry to -inf except the first column (no row is all -inf).
        let n = *shape.last().unwrap();
        let m: Vec<f32> = (0..x.elem_count())
            .map(|i| {
                if i % n != 0 && i % 3 == 0 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(m, x.dims(), &Device::Cpu).unwrap();
        compare(
            &format!("softmax {shape:?}"),
            &[x],
            |t| kernels::softmax_last(&(&t[0] + &mask).unwrap()).unwrap(),
            |t| candle_nn::ops::softmax(&(&t[0] + &mask).unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn wrong_shapes_and_dtypes_are_errors_not_panics() {
    let x = rand(&[2, 4], 1);
    assert!(kernels::layer_norm(&x, &rand(&[3], 2), &rand(&[4], 3), 1e-5).is_err());
    assert!(kernels::linear(&x, &rand(&[3, 4], 2), Some(&rand(&[5], 3))).is_err());
    let xh = x.to_dtype(candle_core::DType::F16).unwrap();
    let e = kernels::softmax_last(&xh).unwrap_err().to_string();
    assert!(e.contains("f32"), "{e}");
}

fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
    let (b, h, tq, hd) = q.dims4().unwrap();
    let kvh = k.dim(1).unwrap();
    let rep = h / kvh;
    let expand = |x: &Tensor| {
        let (b, n, t, d) = x.dims4().unwrap();
        x.unsqueeze(2)
            .unwrap()
            .expand((b, n, rep, t, d))
            .unwrap()
            .reshape((b, n * rep, t, d))
            .unwrap()
    };
    let (k, v) = (expand(k), expand(v));
    let s = (q.matmul(&k.t().unwrap()).unwrap() * scale)
        .unwrap()
        .broadcast_add(mask)
        .unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, tq, h * hd))
        .unwrap()
}

/// Fused attention with the compact mask against the plain path with its dense form:
/// forward and gradients within 1e-5, plus the dense form against the mask's own rule.
fn check_attention(name: &str, mask: &AttnMask, h: usize, kvh: usize, hd: usize, seed: u64) {
    let (b, tq, tk) = (mask.b(), mask.tq(), mask.tk());
    let dense = mask.dense(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(dense.dims(), [b, 1, tq, tk], "{name}");
    let d = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for bi in 0..b {
        for qi in 0..tq {
            let row = &d[(bi * tq + qi) * tk..(bi * tq + qi + 1) * tk];
            assert!(row.contains(&0.0), "{name}: row {bi}/{qi} sees nothing");
            for (ki, &x) in row.iter().enumerate() {
                let want = if mask.visible(bi, qi, ki) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                assert_eq!(x, want, "{name}: entry {bi}/{qi}/{ki}");
            }
        }
    }
    let inputs = [
        rand(&[b, h, tq, hd], seed),
        rand(&[b, kvh, tk, hd], seed + 1),
        rand(&[b, kvh, tk, hd], seed + 2),
    ];
    let scale = 1.0 / (hd as f64).sqrt();
    compare(
        &format!("attention {name}: b{b} h{h} kv{kvh} tq{tq} tk{tk} hd{hd}"),
        &inputs,
        |t| kernels::attention(&t[0], &t[1], &t[2], mask, scale).unwrap(),
        |t| plain_attention(&t[0], &t[1], &t[2], &dense, scale),
        1e-5,
    );
}

#[test]
fn attention_matches_plain_path_with_causal_padding_and_grouped_heads() {
    // (b, h, kv_heads, tq, past, hd); past > 0 is the KV-cache case (queries see old keys).
    for (b, h, kvh, tq, past, hd, seed) in [
        (2usize, 4usize, 2usize, 7usize, 0usize, 8usize, 1u64),
        (1, 1, 1, 1, 0, 4, 2),
        (3, 2, 2, 5, 3, 6, 3),
        (1, 6, 3, 33, 0, 5, 4),
        // Several query tiles of 64 rows, the last one partial, with and without a cache.
        (2, 2, 1, 150, 0, 16, 5),
        (1, 2, 2, 70, 9, 8, 6),
    ] {
        let tk = past + tq;
        // Batch row 1 has its last two keys padded.
        let valid: Vec<u8> = (0..b * tk)
            .map(|i| u8::from(!(i / tk == 1 && i % tk + 2 >= tk)))
            .collect();
        let mask = AttnMask::causal(b, tq, past, &valid).unwrap();
        // The dense builder the tests and benches use is the same mask.
        let old = mmlab::model::layers::attention_mask(b, tq, past, &valid, &Device::Cpu).unwrap();
        let new = mask.dense(&Device::Cpu, DType::F32).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(old.dims(), new.dims());
        assert_eq!(flat(&old), flat(&new));
        check_attention("right-padded keys", &mask, h, kvh, hd, seed);
    }
}

#[test]
fn attention_mask_cases_match_plain_path() {
    // Left padding: row 1's first three positions are padding, so its first three query rows
    // see no key and fall back to themselves; row 0 is unpadded.
    let (b, t) = (2, 9);
    let valid: Vec<u8> = (0..b * t)
        .map(|i| u8::from(i / t == 0 || i % t >= 3))
        .collect();
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    assert!(mask.sees_nothing(1, 0) && mask.sees_nothing(1, 2) && !mask.sees_nothing(1, 3));
    assert!(!mask.sees_nothing(0, 0));
    assert!(mask.visible(1, 1, 1) && !mask.visible(1, 1, 0) && !mask.visible(1, 4, 1));
    check_attention("left padding", &mask, 4, 2, 8, 10);

    // Right padding: the padded query rows at the end still see the real keys before them.
    let valid: Vec<u8> = (0..b * t).map(|i| u8::from(i % t < 5 + i / t)).collect();
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    assert!(!mask.sees_nothing(0, 8) && mask.visible(0, 8, 4) && !mask.visible(0, 8, 8));
    check_attention("right padding", &mask, 2, 2, 6, 20);

    // A KV cache (past 6) with left padding inside the cached part and a padded new token.
    let (past, t) = (6, 3);
    let tk = past + t;
    let valid: Vec<u8> = (0..b * tk)
        .map(|i| u8::from(!((i / tk == 1 && i % tk < 4) || i == 2 * tk - 1)))
        .collect();
    let mask = AttnMask::causal(b, t, past, &valid).unwrap();
    assert_eq!((mask.tk(), mask.key_limit(0), mask.key_limit(2)), (9, 7, 9));
    check_attention("kv cache", &mask, 3, 1, 4, 30);

    // A batch row of padding only: every query row of it sees only itself.
    let valid: Vec<u8> = (0..b * t).map(|i| u8::from(i / t == 0)).collect();
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    assert!((0..t).all(|qi| mask.sees_nothing(1, qi)));
    check_attention("padded row sees nothing", &mask, 2, 1, 8, 40);
    // ... also behind a cache whose keys are all padding.
    let valid = vec![0u8; 4 + 2];
    let mask = AttnMask::causal(1, 2, 4, &valid).unwrap();
    assert!(mask.visible(0, 1, 5) && !mask.visible(0, 1, 4));
    check_attention("padded row behind a cache", &mask, 2, 2, 4, 45);

    // A single token, alone and after a cache.
    let mask = AttnMask::causal(1, 1, 0, &[1]).unwrap();
    check_attention("single token", &mask, 2, 1, 4, 50);
    let mask = AttnMask::causal(2, 1, 5, &[1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1]).unwrap();
    check_attention("single token after a cache", &mask, 4, 2, 8, 55);

    // Grouped KV heads (6 query heads on 2) with padding.
    let (b, t) = (2, 17);
    let valid: Vec<u8> = (0..b * t)
        .map(|i| u8::from(i % t != 3 && i % t < 15))
        .collect();
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    check_attention("grouped heads", &mask, 6, 2, 8, 60);

    // Bidirectional (the encoders): no causal limit, padded keys hidden.
    let valid: Vec<u8> = (0..b * t).map(|i| u8::from(i % t < 11 + i / t)).collect();
    let mask = AttnMask::bidirectional(b, t, 0, &valid).unwrap();
    assert!(!mask.is_causal() && mask.visible(0, 0, 10) && !mask.visible(0, 0, 11));
    check_attention("bidirectional", &mask, 4, 4, 8, 70);
    // ... over several query tiles, with left padding.
    let (b, t) = (2, 131);
    let valid: Vec<u8> = (0..b * t)
        .map(|i| u8::from(i / t == 0 || i % t >= 40))
        .collect();
    let mask = AttnMask::bidirectional(b, t, 0, &valid).unwrap();
    check_attention("bidirectional, several tiles", &mask, 2, 2, 8, 75);
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    check_attention("left padding, several tiles", &mask, 2, 1, 8, 80);
}

#[test]
fn attention_mask_is_linear_in_the_keys_and_checks_sizes() {
    let t = 8192;
    let mask = AttnMask::causal(1, t, 0, &vec![1u8; t]).unwrap();
    // One flag per key and one index per batch row, not a t x t matrix (256 MiB in f32).
    assert!(mask.bytes() <= 2 * t, "{} bytes", mask.bytes());
    let mask = AttnMask::causal(4, t, 0, &vec![1u8; 4 * t]).unwrap();
    assert!(mask.bytes() <= 4 * 2 * t, "{} bytes", mask.bytes());

    // Wrong sizes are errors, not panics.
    let e = AttnMask::causal(2, 4, 1, &[1; 9]).unwrap_err().to_string();
    assert!(e.contains("9 key flags"), "{e}");
    assert!(AttnMask::bidirectional(3, 2, 0, &[1; 5]).is_err());
    assert!(AttnMask::causal(usize::MAX, 2, 1, &[1; 4]).is_err());
    assert!(mmlab::model::layers::attention_mask(2, 4, 0, &[1; 7], &Device::Cpu).is_err());
    // Out-of-range queries are not visible, and do not panic either.
    let mask = AttnMask::causal(1, 2, 0, &[1, 1]).unwrap();
    assert!(!mask.visible(1, 0, 0) && !mask.visible(0, 2, 0) && !mask.visible(0, 0, 2));
    assert!(mask.key_valid_row(3).is_empty());
    // A mask for other sizes than q / k is an error from attention.
    let (q, k) = (rand(&[1, 2, 3, 4], 1), rand(&[1, 2, 3, 4], 2));
    assert!(kernels::attention(&q, &k, &k, &mask, 0.5).is_err());
    let empty = AttnMask::causal(0, 3, 0, &[]).unwrap();
    assert_eq!(empty.bytes(), 0);
}

#[test]
fn rotary_matches_plain_path() {
    use mmlab::model::layers::Rotary;
    for (b, h, t, hd, dim, seed) in [
        (2usize, 3usize, 5usize, 8usize, 4usize, 1u64),
        (1, 1, 1, 6, 6, 2),
        (2, 2, 9, 10, 2, 3),
    ] {
        let rot = Rotary::new(dim, 64, 10000.0, &Device::Cpu).unwrap();
        let pos: Vec<u32> = (0..b * t).map(|i| (i % t) as u32 + 3).collect();
        let pos = Tensor::from_vec(pos, (b, t), &Device::Cpu).unwrap();
        let (cos, sin) = rot.tables(&pos).unwrap();
        compare(
            &format!("rotary b{b} h{h} t{t} hd{hd} dim{dim}"),
            &[rand(&[b, h, t, hd], seed)],
            |x| kernels::rotary(&x[0], &cos, &sin, dim).unwrap(),
            |x| rot.apply_plain(&x[0], &cos, &sin).unwrap(),
            1e-5,
        );
    }
}

// ---------------------------------------------------------------------------------------
// cross-entropy, AdamW, gradient accumulation

#[test]
fn cross_entropy_matches_plain_path() {
    // (rows, vocab): one row, odd sizes, more rows than one parallel task, a wide vocabulary.
    for (i, &(n, v)) in [(1usize, 7usize), (37, 384), (300, 129), (5, 4001)]
        .iter()
        .enumerate()
    {
        // Scaled logits: large values check the log-sum-exp's stability.
        let logits = (rand(&[n, v], 40 + i as u64) * (1.0 + 10.0 * i as f64)).unwrap();
        let targets: Vec<u32> = (0..n).map(|r| ((r * 7919 + i) % v) as u32).collect();
        compare(
            &format!("cross_entropy {n}x{v}"),
            &[logits],
            |t| kernels::cross_entropy(&t[0], &targets).unwrap(),
            |t| kernels::cross_entropy_plain(&t[0], &targets).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let logits = rand(&[3, 5], 1);
    let e = kernels::cross_entropy(&logits, &[0, 5, 1]).unwrap_err();
    assert!(e.to_string().contains("target 5"), "{e}");
    let e = kernels::cross_entropy(&logits, &[0, 1]).unwrap_err();
    assert!(e.to_string().contains("2 targets for 3 rows"), "{e}");
    assert!(kernels::cross_entropy(&rand(&[0, 5], 1), &[]).is_err());
    assert!(kernels::cross_entropy(&rand(&[5], 1), &[0]).is_err());
}

#[test]
fn adamw_update_matches_pytorch_rule() {
    // PyTorch's AdamW written out: p -= lr*wd*p; m, v moments; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    let (lr, wd, b1, b2, eps, scale) = (3e-3f64, 0.1f64, 0.9f64, 0.95f64, 1e-8f64, 0.7f64);
    for n in [1usize, 17, 4099] {
        let p0 = rand(&[n], 5).to_vec1::<f32>().unwrap();
        let var = Var::from_slice(&p0, n, &Device::Cpu).unwrap();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut want: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        let (mut wm, mut wv) = (vec![0f64; n], vec![0f64; n]);
        for t in 1..=3i32 {
            let g = rand(&[n], 100 + t as u64);
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            let step = kernels::AdamWStep {
                b1: b1 as f32,
                b2: b2 as f32,
                eps: eps as f32,
                grad_scale: scale as f32,
                decay: (1.0 - lr * wd) as f32,
                step_size: (lr / bc1) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
            };
            kernels::adamw_update(var.as_tensor(), &g, &mut m, &mut v, step).unwrap();
            for (i, gi) in g.to_vec1::<f32>().unwrap().into_iter().enumerate() {
                let gi = gi as f64 * scale;
                want[i] -= lr * wd * want[i];
                wm[i] = b1 * wm[i] + (1.0 - b1) * gi;
                wv[i] = b2 * wv[i] + (1.0 - b2) * gi * gi;
                want[i] -= lr / bc1 * wm[i] / (wv[i].sqrt() / bc2.sqrt() + eps);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..n {
            assert!(
                (got[i] as f64 - want[i]).abs() <= 1e-6,
                "n {n}, element {i}: {} against {}",
                got[i],
                want[i]
            );
            assert!((m[i] as f64 - wm[i]).abs() <= 1e-6 && (v[i] as f64 - wv[i]).abs() <= 1e-6);
        }
    }
}

#[test]
fn adamw_update_rejects_mismatched_shapes() {
    let var = Var::from_slice(&[1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
    let step = kernels::AdamWStep {
        b1: 0.9,
        b2: 0.999,
        eps: 1e-8,
        grad_scale: 1.0,
        decay: 1.0,
        step_size: 1e-3,
        bc2_sqrt: 1.0,
    };
    let (mut m, mut v) = (vec![0f32; 3], vec![0f32; 3]);
    let g = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    assert!(kernels::adamw_update(var.as_tensor(), &g, &mut m, &mut v, step).is_err());
    let g = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let (mut m2, mut v2) = (vec![0f32; 2], vec![0f32; 3]);
    assert!(kernels::adamw_update(var.as_tensor(), &g, &mut m2, &mut v2, step).is_err());
    // Nothing was written by the refused calls.
    assert_eq!(
        var.as_tensor().to_vec1::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}

#[test]
fn sum_squares_matches_candle() {
    let g = rand(&[3, 1031], 8);
    let want = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let got = kernels::sum_squares(&g).unwrap();
    assert!((got - want).abs() <= 1e-3 * want, "{got} against {want}");
}

#[test]
fn gradients_accumulate_over_many_uses() {
    // The patched backprop adds later gradient contributions in place when nothing else holds
    // the stored one; shared gradients (x + x hands one tensor to both sides) must not be
    // changed under another tensor's feet.
    let x = Var::from_tensor(&rand(&[4, 6], 3)).unwrap();
    let w = rand(&[6, 6], 4);
    let xt = x.as_tensor();
    let h = kernels::layer_norm(xt, &rand(&[6], 5), &rand(&[6], 6), 1e-5).unwrap();
    // h is used by three matmuls, x by the norm, a doubling and an exp.
    let y = ((h.matmul(&w).unwrap() + h.matmul(&w.t().unwrap()).unwrap()).unwrap()
        + h.matmul(&w).unwrap().exp().unwrap())
    .unwrap();
    let z = ((xt + xt).unwrap() * 3.0).unwrap();
    let loss = (y.sum_all().unwrap() + z.sqr().unwrap().sum_all().unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let got = g.get(xt).unwrap().clone();
    // The same graph with every use written out separately through the plain ops.
    let x2 = Var::from_tensor(xt).unwrap();
    let hp = {
        let xt = x2.as_tensor();
        let d = 6f64;
        let mean = (xt.sum_keepdim(D::Minus1).unwrap() / d).unwrap();
        let xc = xt.broadcast_sub(&mean).unwrap();
        let var = (xc.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / d).unwrap();
        xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&rand(&[6], 5))
            .unwrap()
            .broadcast_add(&rand(&[6], 6))
            .unwrap()
    };
    let yp = ((hp.matmul(&w).unwrap() + hp.matmul(&w.t().unwrap()).unwrap()).unwrap()
        + hp.matmul(&w).unwrap().exp().unwrap())
    .unwrap();
    let zp = (x2.as_tensor().affine(6.0, 0.0)).unwrap();
    let lp = (yp.sum_all().unwrap() + zp.sqr().unwrap().sum_all().unwrap()).unwrap();
    let gp = lp.backward().unwrap();
    let want = gp.get(x2.as_tensor()).unwrap();
    let scale = 1f32.max(max_diff(want, &want.zeros_like().unwrap()));
    let d = max_diff(&got, want);
    assert!(d <= 1e-5 * scale, "accumulated gradient differs by {d}");
}

#[test]
fn linear_epilogue_and_no_bias_match_plain_path() {
    // relu² fused onto the projection, a bias-free layer, a single row, a transposed input.
    for (shape, out, seed) in [
        (vec![3, 5, 9], 17usize, 11u64),
        (vec![1, 4], 1, 12),
        (vec![301, 64], 256, 13),
    ] {
        let inp = *shape.last().unwrap();
        let inputs = [
            rand(&shape, seed),
            rand(&[out, inp], seed + 1),
            rand(&[out], seed + 2),
        ];
        let plain = |t: &[Tensor]| {
            candle_nn::Module::forward(
                &candle_nn::Linear::new(t[1].clone(), Some(t[2].clone())),
                &t[0],
            )
            .unwrap()
        };
        compare(
            &format!("linear+relu2 {shape:?} -> {out}"),
            &inputs,
            |t| kernels::linear_then(&t[0], &t[1], Some(&t[2]), kernels::Epilogue::Relu2).unwrap(),
            |t| plain(t).relu().unwrap().sqr().unwrap(),
            1e-5,
        );
        compare(
            &format!("linear+gelu {shape:?} -> {out}"),
            &inputs,
            |t| kernels::linear_then(&t[0], &t[1], Some(&t[2]), kernels::Epilogue::Gelu).unwrap(),
            |t| plain(t).gelu().unwrap(),
            1e-5,
        );
        compare(
            &format!("linear no bias {shape:?} -> {out}"),
            &inputs[..2],
            |t| kernels::linear(&t[0], &t[1], None).unwrap(),
            |t| {
                candle_nn::Module::forward(&candle_nn::Linear::new(t[1].clone(), None), &t[0])
                    .unwrap()
            },
            1e-5,
        );
    }
    // A transposed (non-contiguous) input is read correctly.
    let x = rand(&[6, 4], 20).t().unwrap();
    let w = rand(&[3, 6], 21);
    let want = x.matmul(&w.t().unwrap()).unwrap();
    assert!(max_diff(&kernels::linear(&x, &w, None).unwrap(), &want) <= 1e-5);
}

#[test]
fn linear_rejects_mismatched_shapes() {
    let x = rand(&[2, 3], 1);
    assert!(kernels::linear(&x, &rand(&[4, 5], 2), None).is_err());
    assert!(kernels::linear(&x, &rand(&[4, 3], 2), Some(&rand(&[5], 3))).is_err());
}

#[test]
fn block_takes_the_fused_path_with_the_compact_mask_and_matches_the_plain_one() {
    use mmlab::model::layers::{Block, LayerMask, Rotary, FUSED_ATTENTION_MIN_SCORES};
    let mut cfg = mmlab::model::presets::presets()[0].config.model.clone();
    (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff) = (32, 4, 2, 64);
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let block = Block::new(&cfg, vb).unwrap();
    let rotary = Rotary::new(cfg.rotary_dim(), 1024, cfg.rope_theta, &Device::Cpu).unwrap();
    // Long enough for the fused op; batch row 1 left-padded by 5 (its first query rows see
    // nothing but themselves), row 0 right-padded by 7.
    let (b, t) = (2, 512);
    assert!(t * t >= FUSED_ATTENTION_MIN_SCORES);
    let valid: Vec<u8> = (0..b * t)
        .map(|i| {
            u8::from(if i / t == 0 {
                i % t < t - 7
            } else {
                i % t >= 5
            })
        })
        .collect();
    let pos: Vec<u32> = (0..b * t).map(|i| (i % t) as u32).collect();
    let pos = Tensor::from_vec(pos, (b, t), &Device::Cpu).unwrap();
    let (cos, sin) = rotary.tables(&pos).unwrap();
    let x = (rand(&[b, t, cfg.d_model], 7) * 0.5).unwrap();
    let mask = || {
        LayerMask::new(
            AttnMask::causal(b, t, 0, &valid).unwrap(),
            &Device::Cpu,
            DType::F32,
        )
    };
    let fused_mask = mask();
    let (yf, _) = block
        .forward(&x, &rotary, &cos, &sin, &fused_mask, None, false)
        .unwrap();
    assert!(
        !fused_mask.dense_built(),
        "the fused path built a dense mask"
    );
    // want_probs forces the plain path, which builds the dense mask once and reuses it.
    let plain_mask = mask();
    let (yp, probs) = block
        .forward(&x, &rotary, &cos, &sin, &plain_mask, None, true)
        .unwrap();
    assert!(plain_mask.dense_built() && probs.is_some());
    let d1 = plain_mask.dense().unwrap();
    let d2 = plain_mask.dense().unwrap();
    assert_eq!(d1.id(), d2.id(), "dense mask rebuilt");
    let d = max_diff(&yf, &yp);
    assert!(d <= 1e-4, "fused vs plain block output differ by {d}");
}
