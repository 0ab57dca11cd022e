//! The CUDA FlashAttention kernels against the CPU path: outputs and gradients of q, k, v
//! (f32 within 1e-3, bf16 within 2e-2, as the largest error over the reference's largest
//! magnitude), causal and masked (padding on either side, encoder masks, generation steps over a
//! padded cache), odd sequence lengths, grouped KV heads, head dims 16, 64 and 128.
//!
//! Built only with `--features cuda` and run only with `MMLAB_CUDA_TESTS=1` on a machine with a
//! GPU (benches/gpu.sh does both); the CPU reference is `mmlab::kernels::attention`, whose own
//! tests (tests/kernels.rs) hold it to candle's plain ops.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use mmlab::kernels::{self, AttnMask};

mod common;
use common::{max_abs, rand};

fn enabled() -> bool {
    let on = std::env::var("MMLAB_CUDA_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("*** SKIPPED: CUDA tests need a GPU and MMLAB_CUDA_TESTS=1 (benches/gpu.sh)");
    }
    on
}

/// Largest |got - want| over the largest |want|, `got` moved to the CPU as f32.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let d = common::max_diff(&got, want);
    assert!(d.is_finite(), "non-finite values");
    d / max_abs(want).max(1e-6)
}

struct Case {
    dtype: DType,
    b: usize,
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    hd: usize,
    causal: bool,
    /// A mask with padded keys (and its own causal rule) instead of the causal flag.
    mask: Option<AttnMask>,
}

fn run(case: Case) {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let Case {
        dtype,
        b,
        h,
        kvh,
        tq,
        tk,
        hd,
        causal,
        mask,
    } = case;
    let tol = if dtype == DType::F32 { 1e-3 } else { 2e-2 };
    let name = format!("{dtype:?} b{b} h{h}/{kvh} tq{tq} tk{tk} hd{hd} causal={causal}");
    let scale = 1.0 / (hd as f64).sqrt();
    // Inputs rounded to the tested dtype, so the CPU sees exactly what the GPU sees.
    let round = |t: Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    let q = round((rand(&[b, h, tq, hd], 1) * 0.5).unwrap());
    let k = round((rand(&[b, kvh, tk, hd], 2) * 0.5).unwrap());
    let v = round(rand(&[b, kvh, tk, hd], 3));
    let r = rand(&[b, tq, h * hd], 4);

    // CPU reference: the fused CPU op with the same mask (the GPU's causal rule is aligned to
    // the end: key j visible to query i when j <= i + tk - tq, a cache of tk - tq keys).
    let cpu_mask = common::case_mask(b, tq, tk, causal, mask.as_ref());
    let want = common::attention_reference(&q, &k, &v, &r, &cpu_mask, scale);

    // GPU.
    let to_gpu = |t: &Tensor| t.to_device(&gpu).unwrap().to_dtype(dtype).unwrap();
    let (qg, kg, vg) = (
        Var::from_tensor(&to_gpu(&q)).unwrap(),
        Var::from_tensor(&to_gpu(&k)).unwrap(),
        Var::from_tensor(&to_gpu(&v)).unwrap(),
    );
    // The mask as the kernels take it: key flags and first real keys, causal from the mask.
    let keys = mask
        .as_ref()
        .and_then(|m| kernels::cuda::CudaMask::from_attn(m, &gpu).unwrap());
    let causal = mask.as_ref().map_or(causal, |m| m.is_causal());
    let yg = kernels::cuda::attention(
        qg.as_tensor(),
        kg.as_tensor(),
        vg.as_tensor(),
        keys.as_ref(),
        scale,
        causal,
    )
    .unwrap();
    assert_eq!(yg.dtype(), dtype);
    let rg = to_gpu(&r);
    let gg = (yg.to_dtype(DType::F32).unwrap() * rg.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let e = rel_err(&yg, &want.y);
    eprintln!("{name}: output {e:.2e}");
    assert!(e <= tol, "{name}: output error {e}");
    for (label, vg_, wanted) in [
        ("dq", &qg, &want.dq),
        ("dk", &kg, &want.dk),
        ("dv", &vg, &want.dv),
    ] {
        let got = gg.get(vg_.as_tensor()).expect("gpu gradient");
        let e = rel_err(got, wanted);
        eprintln!("{name}: {label} {e:.2e}");
        assert!(e <= tol, "{name}: {label} error {e}");
    }
}

fn case(dtype: DType, hd: usize, causal: bool, tq: usize, tk: usize) -> Case {
    Case {
        dtype,
        b: 2,
        h: 4,
        kvh: 2,
        tq,
        tk,
        hd,
        causal,
        mask: None,
    }
}

#[test]
fn f32_matches_cpu() {
    if !enabled() {
        return;
    }
    for hd in [64, 128] {
        for causal in [false, true] {
            run(case(DType::F32, hd, causal, 131, 131));
        }
    }
    // Fewer queries than keys (a KV cache): causal aligned to the end.
    run(case(DType::F32, 64, true, 37, 250));
    // The shipped fuyu-small's head dim.
    run(case(DType::F32, 16, true, 90, 90));
    // A generation step: one query over a cache.
    run(case(DType::F32, 16, true, 1, 77));
}

#[test]
fn bf16_matches_cpu() {
    if !enabled() {
        return;
    }
    for hd in [64, 128] {
        for causal in [false, true] {
            run(case(DType::BF16, hd, causal, 200, 200));
        }
    }
    run(case(DType::BF16, 128, true, 65, 321));
    run(case(DType::BF16, 16, false, 100, 100));
    run(case(DType::BF16, 128, true, 1, 77));
    // Long enough for many key tiles per block.
    run(Case {
        b: 1,
        h: 2,
        kvh: 1,
        ..case(DType::BF16, 128, true, 1024, 1024)
    });
}

#[test]
fn padding_mask_matches_cpu() {
    if !enabled() {
        return;
    }
    // The model's mask: causal plus padded keys (the first 9 of batch row 0, whose first rows
    // see only their own key; the last 20 of batch row 1).
    let (b, t) = (2, 150);
    let mut valid = vec![1u8; b * t];
    valid[..9].iter_mut().for_each(|x| *x = 0);
    valid[2 * t - 20..].iter_mut().for_each(|x| *x = 0);
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    // An encoder's mask over the same keys, and a generation step over a cache whose first
    // keys are padding, with a batch row that has no real key.
    let enc = AttnMask::bidirectional(b, t, 0, &valid).unwrap();
    let (past, tq) = (60, 1);
    let mut cache_valid = vec![1u8; b * (past + tq)];
    cache_valid[..12].iter_mut().for_each(|x| *x = 0);
    cache_valid[past + tq..].iter_mut().for_each(|x| *x = 0);
    let step = AttnMask::causal(b, tq, past, &cache_valid).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        for hd in [64, 128] {
            run(Case {
                mask: Some(mask.clone()),
                ..case(dtype, hd, false, t, t)
            });
        }
        run(Case {
            mask: Some(enc.clone()),
            ..case(dtype, 128, false, t, t)
        });
        run(Case {
            mask: Some(step.clone()),
            ..case(dtype, 64, false, tq, past + tq)
        });
    }
}

#[test]
fn model_dispatch_uses_cuda_kernels() {
    if !enabled() {
        return;
    }
    let gpu = Device::new_cuda(0).unwrap();
    let q = rand(&[1, 2, 10, 64], 5).to_device(&gpu).unwrap();
    assert!(kernels::cuda_attention(&q));
    let q32 = rand(&[1, 2, 10, 48], 5).to_device(&gpu).unwrap();
    assert!(
        !kernels::cuda_attention(&q32),
        "head dim 48 is not compiled"
    );
    // The fused CPU ops stand aside on the GPU; q and k are prepared by the fused CUDA kernel.
    assert!(!kernels::enabled_on(&gpu));
    let x = rand(&[1, 10, 2, 64], 5).to_device(&gpu).unwrap();
    assert!(kernels::cuda_qk_prep(&x).unwrap());
    assert!(!kernels::cuda_qk_prep(&rand(&[1, 10, 2, 64], 5)).unwrap());
    assert!(kernels::cuda_relu2(&x).unwrap());
}

/// A batch of image and audio sequences from the synthetic generator (as in tests/model.rs).
fn mixed_batch(
    cfg: &mmlab::model::ModelDirConfig,
    tok: std::sync::Arc<mmlab::fusion::TextTokenizer>,
    n: usize,
) -> mmlab::fusion::Batch {
    use mmlab::train::data::{Factory, Source, SyntheticData};
    let builder = cfg.builder(tok.clone());
    let mut d = SyntheticData::small();
    d.scene.width = cfg.image.max_width as u32;
    d.scene.height = cfg.image.max_height as u32;
    let f = Factory::new(Source::Synthetic(d.clone()), 7, n, builder);
    let mut seqs: Vec<_> = f.batch(0).unwrap().into_iter().map(|e| e.seq).collect();
    seqs.extend(
        f.batch(d.audio_every - 1)
            .unwrap()
            .into_iter()
            .take(2)
            .map(|e| e.seq),
    );
    mmlab::fusion::collate(&seqs, tok.specials.pad, mmlab::fusion::PadSide::Right).unwrap()
}

#[test]
fn fuyu_small_loss_and_gradients_match_cpu() {
    if !enabled() {
        return;
    }
    use mmlab::train::{init_model, named_vars};
    let gpu = Device::new_cuda(0).unwrap();
    let tok = std::sync::Arc::new(mmlab::fusion::TextTokenizer::builtin().unwrap());
    let mut cfg = mmlab::model::presets::preset("fuyu-small")
        .expect("fuyu-small preset")
        .config
        .clone();
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let (m_cpu, vm_cpu) = init_model(&cfg, 1, &Device::Cpu).unwrap();
    let (m_gpu, vm_gpu) = init_model(&cfg, 1, &gpu).unwrap();
    // Same weights on both devices.
    let cpu_vars = named_vars(&vm_cpu);
    let gpu_vars = named_vars(&vm_gpu);
    assert_eq!(cpu_vars.len(), gpu_vars.len());
    for ((nc, vc), (ng, vg)) in cpu_vars.iter().zip(&gpu_vars) {
        assert_eq!(nc, ng);
        vg.set(&vc.as_tensor().to_device(&gpu).unwrap()).unwrap();
    }
    let batch = mixed_batch(&cfg, tok, 4);
    let (lc, _) = m_cpu.loss(&batch).unwrap();
    let (lg, _) = m_gpu.loss(&batch).unwrap();
    let e = rel_err(&lg, &lc);
    eprintln!("fuyu-small loss: cpu {lc} gpu {lg} ({e:.2e})");
    assert!(e <= 1e-3, "loss differs: {e}");
    let gc = lc.backward().unwrap();
    let gg = lg.backward().unwrap();
    let mut worst = (0f32, String::new());
    for ((name, vc), (_, vg)) in cpu_vars.iter().zip(&gpu_vars) {
        let want = gc.get(vc.as_tensor()).expect("cpu gradient");
        let got = gg.get(vg.as_tensor()).expect("gpu gradient");
        let e = rel_err(got, want);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    eprintln!("fuyu-small gradients: worst {:.2e} ({})", worst.0, worst.1);
    assert!(
        worst.0 <= 1e-3,
        "gradient of {} differs: {}",
        worst.1,
        worst.0
    );
}

/// The fused QK-norm + rotary kernel (`kernels/qk_prep.cu`, `cuda::qk_norm_rope`) against the
/// model's plain path on the CPU (`Norm::forward_plain`, `Rotary::apply_plain` on the heads):
/// output and the gradients of x, the norm weight and the bias.
#[test]
fn qk_prep_matches_plain_path() {
    if !enabled() {
        return;
    }
    use candle_nn::{VarBuilder, VarMap};
    use mmlab::model::config::NormKind;
    use mmlab::model::layers::{Norm, Rotary};
    let gpu = Device::new_cuda(0).unwrap();
    let cpu = Device::Cpu;
    for dtype in [DType::F32, DType::BF16] {
        let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        for (hd, rot, norm) in [
            (16, 16, true),
            (64, 32, true),
            (128, 128, false),
            (80, 80, true),
        ] {
            let (b, t, n) = (2, 37, 3);
            let round = |x: Tensor| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let x = round(rand(&[b, t, n, hd], 1));
            let dy = round(rand(&[b, n, t, hd], 2));
            let w = round(rand(&[hd], 3).affine(0.25, 1.0).unwrap());
            let bias = round(rand(&[hd], 4).affine(0.25, 0.0).unwrap());
            let vm = VarMap::new();
            let layer = Norm::new(
                NormKind::LayerNorm,
                hd,
                1e-5,
                VarBuilder::from_varmap(&vm, DType::F32, &cpu).pp("n"),
            )
            .unwrap();
            let vars = vm.data().lock().unwrap().clone();
            vars["n.weight"].set(&w).unwrap();
            vars["n.bias"].set(&bias).unwrap();
            let pos: Vec<u32> = (0..b * t).map(|i| (i % t + 5 * (i / t)) as u32).collect();
            let pos = Tensor::from_vec(pos, (b, t), &cpu).unwrap();
            let rotary = Rotary::new(rot, t + 5 * b, 10_000.0, &cpu).unwrap();
            let (cos, sin) = rotary.tables(&pos).unwrap();
            let (cos, sin) = (round(cos), round(sin));
            // Reference on the CPU.
            let xv = Var::from_tensor(&x).unwrap();
            let heads = xv.as_tensor().transpose(1, 2).unwrap();
            let z = if norm {
                layer.forward_plain(&heads).unwrap()
            } else {
                heads
            };
            let want = rotary.apply_plain(&z, &cos, &sin).unwrap();
            let gw = (&want * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            // The kernel on the GPU.
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let xg = Var::from_tensor(&on(&x)).unwrap();
            let wg = Var::from_tensor(&on(&w)).unwrap();
            let bg = Var::from_tensor(&on(&bias)).unwrap();
            let got = kernels::cuda::qk_norm_rope(
                xg.as_tensor(),
                norm.then(|| (wg.as_tensor(), bg.as_tensor(), 1e-5)),
                &on(&cos),
                &on(&sin),
                rot,
            )
            .unwrap();
            let gg = (&got * &on(&dy))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut errs = vec![
                ("y", rel_err(&got, &want)),
                (
                    "dx",
                    rel_err(
                        gg.get(xg.as_tensor()).unwrap(),
                        gw.get(xv.as_tensor()).unwrap(),
                    ),
                ),
            ];
            if norm {
                for (name, v, r) in [("dw", &wg, "n.weight"), ("db", &bg, "n.bias")] {
                    let want = gw.get(vars[r].as_tensor()).unwrap();
                    errs.push((name, rel_err(gg.get(v.as_tensor()).unwrap(), want)));
                }
            }
            eprintln!("{dtype:?} hd {hd} rot {rot} norm {norm}: {errs:?}");
            for (name, e) in errs {
                assert!(e <= bound, "{dtype:?} hd {hd} rot {rot}: {name} error {e}");
            }
        }
    }
}

/// The fused bias + relu² kernel (`kernels/mlp_act.cu`, `cuda::bias_relu2`) against candle's
/// ops on the CPU: output and the gradients of the input and the bias.
#[test]
fn relu2_matches_candle_ops() {
    if !enabled() {
        return;
    }
    let gpu = Device::new_cuda(0).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        for (rows, cols) in [(37, 100), (2100, 40), (3, 7)] {
            let round = |x: Tensor| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let z = round(rand(&[rows, cols], 1));
            let b = round(rand(&[cols], 2));
            let dy = round(rand(&[rows, cols], 3));
            let (zv, bv) = (Var::from_tensor(&z).unwrap(), Var::from_tensor(&b).unwrap());
            let want = zv
                .as_tensor()
                .broadcast_add(bv.as_tensor())
                .unwrap()
                .relu()
                .unwrap()
                .sqr()
                .unwrap();
            let gw = (&want * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let (zg, bg) = (
                Var::from_tensor(&on(&z)).unwrap(),
                Var::from_tensor(&on(&b)).unwrap(),
            );
            let got = kernels::cuda::bias_relu2(zg.as_tensor(), Some(bg.as_tensor())).unwrap();
            let gg = (&got * &on(&dy))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let errs = [
                rel_err(&got, &want),
                rel_err(
                    gg.get(zg.as_tensor()).unwrap(),
                    gw.get(zv.as_tensor()).unwrap(),
                ),
                rel_err(
                    gg.get(bg.as_tensor()).unwrap(),
                    gw.get(bv.as_tensor()).unwrap(),
                ),
            ];
            eprintln!("{dtype:?} {rows} x {cols}: y, dz, db errors {errs:?}");
            assert!(
                errs.iter().all(|&e| e <= bound),
                "{dtype:?} {rows} x {cols}: {errs:?}"
            );
        }
    }
}
