//! The CUDA kernels of `kernels/*.cu` run on the CPU by the emulator in `kernels/emu/`
//! (one fiber per CUDA thread, warp collectives exchanged through the warp, `mma`/`ldmatrix`
//! with the PTX ISA's fragment layouts, deferred `cp.async`), launched with the plan
//! `src/kernels/cuda/` uses (`sources::*_launch`), against the CPU attention: outputs and
//! gradients of q, k, v within 1e-3 (f32) and 2e-2 (bf16) of the reference's largest magnitude,
//! the bounds `tests/cuda.rs` holds the GPU to.
//!
//! This checks the kernels' indexing, tiling, masking, online softmax and backward on every CI
//! run, without a GPU. It cannot check speed, the real tensor cores' rounding, or what the
//! emulator does not model (memory ordering across blocks, bank conflicts, occupancy);
//! `benches/gpu.sh` does that on a GPU machine.
//!
//! Needs a C++20 compiler: `c++`, or the one `CXX` names. `MMLAB_EMU_KERNELS=<dir>` tests another
//! copy of `kernels/` (the emulator is built from it at run time, so a kernel can be changed and
//! re-tested without rebuilding the crate).

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};
use mmlab::kernels::sources::{self, AttnDims, Elem, FwdTile, Launch};
use mmlab::kernels::AttnMask;

mod common;
use common::rand;

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    usize,
    *mut *mut c_void,
    usize,
    i32,
    *mut c_char,
    usize,
) -> i32;

struct Emu {
    _lib: libloading::Library,
    launch: LaunchFn,
}

/// The emulator library, built once per test run; its state is global, so launches are
/// serialised through the mutex.
fn emu() -> &'static Mutex<Emu> {
    static EMU: OnceLock<Mutex<Emu>> = OnceLock::new();
    EMU.get_or_init(|| {
        // MMLAB_EMU_KERNELS: another copy of kernels/ to test (a kernel under change).
        let kernels = std::env::var_os("MMLAB_EMU_KERNELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels"));
        let src = kernels.join("emu/flash_attn_emu.cpp");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libfa_emu.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
        let res = Command::new(&cxx)
            .args([
                "-std=c++20",
                "-O2",
                "-shared",
                "-fPIC",
                "-Wall",
                "-Wextra",
                "-Wno-unknown-pragmas",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("{cxx} (a C++20 compiler, to build the emulator): {e}"));
        assert!(
            res.status.success(),
            "{cxx} failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        );
        // SAFETY: the library was just built from our own sources; it has no initialisers with
        // side effects beyond its globals.
        let lib = unsafe { libloading::Library::new(&out) }.expect("load the emulator");
        // SAFETY: fa_emu_launch has this signature in flash_attn_emu.cpp.
        let launch = unsafe {
            *lib.get::<LaunchFn>(b"fa_emu_launch\0")
                .expect("fa_emu_launch")
        };
        Mutex::new(Emu { _lib: lib, launch })
    })
}

/// Host memory standing in for a device buffer: 16-byte aligned, as cudarc's allocations are.
struct Buf {
    mem: Vec<u128>,
    bytes: usize,
}

impl Buf {
    fn zeros(bytes: usize) -> Buf {
        Buf {
            mem: vec![0; bytes.div_ceil(16)],
            bytes,
        }
    }

    /// `v` as the kernel's element type (bf16: `v` must already hold bf16 values).
    fn from(v: &[f32], elem: Elem) -> Buf {
        match elem {
            Elem::F32 => {
                let mut b = Buf::zeros(v.len() * 4);
                b.f32s_mut().copy_from_slice(v);
                b
            }
            Elem::Bf16 => {
                let mut b = Buf::zeros(v.len() * 2);
                for (d, x) in b.u16s_mut().iter_mut().zip(v) {
                    assert_eq!(x.to_bits() & 0xffff, 0, "not a bf16 value: {x}");
                    *d = (x.to_bits() >> 16) as u16;
                }
                b
            }
        }
    }

    fn f32s_mut(&mut self) -> &mut [f32] {
        let n = self.bytes / 4;
        // SAFETY: the Vec<u128> holds at least `bytes` bytes, aligned for f32.
        unsafe { std::slice::from_raw_parts_mut(self.mem.as_mut_ptr().cast(), n) }
    }

    fn u16s_mut(&mut self) -> &mut [u16] {
        let n = self.bytes / 2;
        // SAFETY: as above, aligned for u16.
        unsafe { std::slice::from_raw_parts_mut(self.mem.as_mut_ptr().cast(), n) }
    }

    fn read_f32(&mut self, elem: Elem) -> Vec<f32> {
        match elem {
            Elem::F32 => self.f32s_mut().to_vec(),
            Elem::Bf16 => self
                .u16s_mut()
                .iter()
                .map(|&x| f32::from_bits(u32::from(x) << 16))
                .collect(),
        }
    }

    fn ptr(&mut self) -> Arg {
        Arg::Ptr(self.mem.as_mut_ptr().cast())
    }
}

#[derive(Clone, Copy)]
enum Arg {
    Ptr(*mut c_void),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Runs one planned launch with `args` (in the kernel's parameter order).
fn launch(plan: &Launch, args: &[Arg], reverse: bool) -> Result<(), String> {
    // One 8-byte slot per argument; the kernel reads its parameter from the slot's start.
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(p) => p as u64,
            Arg::I32(x) => u64::from(x as u32),
            Arg::I64(x) => x as u64,
            Arg::F32(x) => u64::from(x.to_bits()),
        })
        .collect();
    let base = slots.as_mut_ptr();
    // SAFETY: every pointer stays inside `slots`, which outlives the call.
    let mut ptrs: Vec<*mut c_void> = (0..slots.len())
        .map(|i| unsafe { base.add(i) }.cast())
        .collect();
    let name = CString::new(plan.kernel.clone()).map_err(|e| e.to_string())?;
    let mut err = vec![0 as c_char; 512];
    let emu = emu().lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the argument slots match the kernel's parameters (checked for count by the
    // emulator); every buffer pointer addresses a live `Buf` of the size the kernel indexes.
    let rc = unsafe {
        (emu.launch)(
            name.as_ptr(),
            plan.grid.as_ptr(),
            plan.block.as_ptr(),
            plan.smem as usize,
            ptrs.as_mut_ptr(),
            ptrs.len(),
            i32::from(reverse),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let msg: Vec<u8> = err
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Err(String::from_utf8_lossy(&msg).into_owned())
    }
}

/// The attention call as `src/kernels/cuda/` makes it: the same plans, buffers and
/// argument lists, on emulated "device" memory.
struct Call<'a> {
    elem: Elem,
    d: AttnDims,
    scale: f32,
    causal: bool,
    /// Key flags (u8, `b x tk`) and each batch row's first real key (u32, `b`).
    keys: Option<(&'a mut Buf, &'a mut Buf)>,
    /// Block shape of the bf16 tensor-core forward.
    tile: FwdTile,
    reverse: bool,
}

impl Call<'_> {
    fn mask_args(&mut self) -> [Arg; 2] {
        match &mut self.keys {
            Some((valid, first)) => [valid.ptr(), first.ptr()],
            None => [Arg::Ptr(std::ptr::null_mut()); 2],
        }
    }

    fn tail(&self) -> [Arg; 6] {
        let d = &self.d;
        [
            Arg::I32(d.h as i32),
            Arg::I32(d.kvh as i32),
            Arg::I32(d.tq as i32),
            Arg::I32(d.tk as i32),
            Arg::F32(self.scale),
            Arg::I32(i32::from(self.causal)),
        ]
    }

    fn esize(&self) -> usize {
        match self.elem {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }

    /// Output `(b, tq, h, hd)` and LSE `(b, h, tq)`.
    fn forward(&mut self, q: &mut Buf, k: &mut Buf, v: &mut Buf) -> Result<(Buf, Buf), String> {
        let d = self.d;
        let mut out = Buf::zeros(d.b * d.tq * d.h * d.hd * self.esize());
        let mut lse = Buf::zeros(d.b * d.h * d.tq * 4);
        let plan = sources::fwd_launch(self.elem, &d, self.tile)?;
        let mut args = vec![q.ptr(), k.ptr(), v.ptr(), out.ptr(), lse.ptr()];
        args.extend(self.mask_args());
        args.extend(self.tail());
        launch(&plan, &args, self.reverse)?;
        Ok((out, lse))
    }

    /// dq, dk, dv.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        q: &mut Buf,
        k: &mut Buf,
        v: &mut Buf,
        o: &mut Buf,
        dout: &mut Buf,
        lse: &mut Buf,
    ) -> Result<(Buf, Buf, Buf), String> {
        let d = self.d;
        let es = self.esize();
        let mut dsum = Buf::zeros(d.b * d.h * d.tq * 4);
        let plan = sources::bwd_pre_launch(self.elem, &d)?;
        let args = [
            o.ptr(),
            dout.ptr(),
            dsum.ptr(),
            Arg::I32(d.b as i32),
            Arg::I32(d.h as i32),
            Arg::I32(d.tq as i32),
            Arg::I32(d.hd as i32),
        ];
        launch(&plan, &args, self.reverse)?;

        let mut dq = Buf::zeros(d.b * d.h * d.tq * d.hd * es);
        let mut dk = Buf::zeros(d.b * d.kvh * d.tk * d.hd * es);
        let mut dv = Buf::zeros(d.b * d.kvh * d.tk * d.hd * es);
        let plan = sources::bwd_dkdv_launch(self.elem, &d)?;
        let mut args = vec![q.ptr(), k.ptr(), v.ptr(), dout.ptr(), lse.ptr(), dsum.ptr()];
        args.extend(self.mask_args());
        args.extend([dk.ptr(), dv.ptr()]);
        args.extend(self.tail());
        launch(&plan, &args, self.reverse)?;

        let plan = sources::bwd_dq_launch(self.elem, &d)?;
        let mut args = vec![q.ptr(), k.ptr(), v.ptr(), dout.ptr(), lse.ptr(), dsum.ptr()];
        args.extend(self.mask_args());
        args.push(dq.ptr());
        args.extend(self.tail());
        launch(&plan, &args, self.reverse)?;
        Ok((dq, dk, dv))
    }
}

/// True when `a` and `b` hold the same bits (a race shows as a difference between thread
/// orders).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The rows (`width` wide) of `parts` added up: the kernels' per-block partial sums.
fn sum_rows(parts: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0f32; width];
    for row in parts.chunks(width) {
        for (s, p) in sums.iter_mut().zip(row) {
            *s += p;
        }
    }
    sums
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |got - want| over the largest |want|, or over 1e-3 when that is smaller: a gradient
/// that is zero in exact arithmetic (dq with a single visible key) is rounding noise on both
/// sides, ~1e-7, and must not be compared relative to itself.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut d = 0f32;
    let mut m = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite value {g}");
        d = d.max((g - w).abs());
        m = m.max(w.abs());
    }
    d / m.max(1e-3)
}

struct Case {
    elem: Elem,
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

fn case(elem: Elem, hd: usize, causal: bool, tq: usize, tk: usize) -> Case {
    Case {
        elem,
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

/// What the emulated kernels produced: output, LSE, dq, dk, dv, as f32.
type Results = [Vec<f32>; 5];

fn emulate(c: &Case, inputs: &[Vec<f32>; 4], tile: FwdTile, reverse: bool) -> Results {
    let scale = 1.0 / (c.hd as f32).sqrt();
    let d = AttnDims {
        b: c.b,
        h: c.h,
        kvh: c.kvh,
        tq: c.tq,
        tk: c.tk,
        hd: c.hd,
    };
    let [q, k, v, r] = inputs;
    let (mut q, mut k, mut v, mut r) = (
        Buf::from(q, c.elem),
        Buf::from(k, c.elem),
        Buf::from(v, c.elem),
        Buf::from(r, c.elem),
    );
    // The mask as the CUDA op passes it: key flags and first real keys, causal from the mask.
    let mut keys = c.mask.as_ref().map(|m| {
        let mut valid = Buf::zeros(m.key_valid().len());
        // SAFETY: `valid` holds exactly key_valid().len() bytes.
        unsafe { std::slice::from_raw_parts_mut(valid.mem.as_mut_ptr().cast::<u8>(), valid.bytes) }
            .copy_from_slice(m.key_valid());
        let mut first = Buf::zeros(m.first_valid().len() * 4);
        for (d, &f) in first.f32s_mut().iter_mut().zip(m.first_valid()) {
            *d = f32::from_bits(f as u32);
        }
        (valid, first)
    });
    let causal = c.mask.as_ref().map_or(c.causal, |m| m.is_causal());
    let mut call = Call {
        elem: c.elem,
        d,
        scale,
        causal,
        keys: keys.as_mut().map(|(v, f)| (v, f)),
        tile,
        reverse,
    };
    let (mut o, mut lse) = call
        .forward(&mut q, &mut k, &mut v)
        .unwrap_or_else(|e| panic!("forward: {e}"));
    let (mut dq, mut dk, mut dv) = call
        .backward(&mut q, &mut k, &mut v, &mut o, &mut r, &mut lse)
        .unwrap_or_else(|e| panic!("backward: {e}"));
    [
        o.read_f32(c.elem),
        lse.read_f32(Elem::F32),
        dq.read_f32(c.elem),
        dk.read_f32(c.elem),
        dv.read_f32(c.elem),
    ]
}

/// Runs `c` through the emulated kernels and the CPU op; with `both_orders`, also in reverse
/// thread order, which must give the same bits.
fn run(c: Case, both_orders: bool) {
    let dtype = match c.elem {
        Elem::F32 => DType::F32,
        Elem::Bf16 => DType::BF16,
    };
    let tol = if c.elem == Elem::F32 { 1e-3 } else { 2e-2 };
    let name = format!(
        "{:?} b{} h{}/{} tq{} tk{} hd{} causal={} mask={}",
        c.elem,
        c.b,
        c.h,
        c.kvh,
        c.tq,
        c.tk,
        c.hd,
        c.causal,
        c.mask.is_some()
    );
    let (b, h, kvh, tq, tk, hd) = (c.b, c.h, c.kvh, c.tq, c.tk, c.hd);
    let scale = 1.0 / (hd as f64).sqrt();
    // Inputs rounded to the tested dtype, so the CPU sees exactly what the kernels see.
    let round = |t: Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    let q = round((rand(&[b, h, tq, hd], 1) * 0.5).unwrap());
    let k = round((rand(&[b, kvh, tk, hd], 2) * 0.5).unwrap());
    let v = round(rand(&[b, kvh, tk, hd], 3));
    let r = round(rand(&[b, tq, h * hd], 4));

    // CPU reference (the kernels' causal rule is aligned to the end: key j visible to query i
    // when j <= i + tk - tq, a cache of tk - tq keys).
    let cpu_mask = common::case_mask(b, tq, tk, c.causal, c.mask.as_ref());
    let want = common::attention_reference(&q, &k, &v, &r, &cpu_mask, scale);

    let inputs = [flat(&q), flat(&k), flat(&v), flat(&r)];
    let dense_mask = flat(&cpu_mask.dense(&Device::Cpu, DType::F32).unwrap());
    // Every forward block shape compiled for this case (the backward is the same for both).
    for tile in FwdTile::ALL {
        if tile.resolve(c.elem, hd) != tile {
            continue;
        }
        let name = format!("{name} fwd={}", tile.name());
        let t0 = std::time::Instant::now();
        let got = emulate(&c, &inputs, tile, false);
        let secs = t0.elapsed().as_secs_f64();

        let e = rel_err(&got[0], &flat(&want.y));
        eprintln!("{name}: output {e:.2e} ({secs:.2} s emulated)");
        assert!(e <= tol, "{name}: output error {e}");
        for (label, i, grad) in [
            ("dq", 2, &want.dq),
            ("dk", 3, &want.dk),
            ("dv", 4, &want.dv),
        ] {
            let e = rel_err(&got[i], &flat(grad));
            eprintln!("{name}: {label} {e:.2e}");
            assert!(e <= tol, "{name}: {label} error {e}");
        }
        // The LSE: finite exactly for the rows that see some key.
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..tq {
                    let sees = dense_mask[(bi * tq + i) * tk..(bi * tq + i + 1) * tk]
                        .iter()
                        .any(|x| x.is_finite());
                    let l = got[1][(bi * h + hi) * tq + i];
                    assert_eq!(
                        l.is_finite(),
                        sees,
                        "{name}: lse {l} of row ({bi}, {hi}, {i}), which sees a key: {sees}"
                    );
                }
            }
        }
        if both_orders {
            let rev = emulate(&c, &inputs, tile, true);
            for (i, what) in ["output", "lse", "dq", "dk", "dv"].iter().enumerate() {
                assert!(
                    same_bits(&got[i], &rev[i]),
                    "{name}: {what} depends on the threads' order (a race)"
                );
            }
        }
    }
}

#[test]
fn f32_kernels_match_cpu() {
    // The shipped fuyu-small's head dim, several query and key tiles.
    run(case(Elem::F32, 16, true, 90, 90), true);
    run(case(Elem::F32, 64, false, 70, 70), false);
    // Fewer queries than keys (a KV cache): causal aligned to the end.
    run(case(Elem::F32, 64, true, 37, 100), false);
    run(case(Elem::F32, 128, true, 40, 40), false);
    run(case(Elem::F32, 32, false, 33, 33), false);
}

#[test]
fn bf16_kernels_match_cpu() {
    // Tensor-core forward: partial query and key tiles, several key tiles per block.
    run(case(Elem::Bf16, 64, true, 130, 130), true);
    run(case(Elem::Bf16, 64, false, 70, 70), false);
    run(case(Elem::Bf16, 128, true, 65, 150), false);
    run(case(Elem::Bf16, 32, false, 40, 40), false);
    // Head dim 16: the CUDA-core forward with bf16 storage.
    run(case(Elem::Bf16, 16, true, 50, 50), false);
    // Five key tiles through the two shared-memory stages; four query heads on one KV head.
    run(
        Case {
            b: 1,
            h: 4,
            kvh: 1,
            ..case(Elem::Bf16, 128, true, 300, 300)
        },
        false,
    );
}

#[test]
fn decode_steps_and_tiny_shapes_match_cpu() {
    // One new query over a KV cache (a generation step), one sequence of one token, and
    // lengths just past a tile.
    for (elem, hd) in [(Elem::F32, 16), (Elem::Bf16, 64), (Elem::Bf16, 128)] {
        run(case(elem, hd, true, 1, 77), false);
        run(case(elem, hd, true, 1, 1), false);
    }
    run(case(Elem::Bf16, 32, true, 65, 65), false);
    run(case(Elem::F32, 32, false, 33, 65), false);
}

/// `MMLAB_EMU_SWEEP`'s case count (none: the sweep `what` says it skipped) and a xorshift
/// stream from `seed`: `next(m)` is in `0..m`.
fn sweep(what: &str, seed: u64) -> Option<(u64, impl FnMut(u64) -> u64)> {
    let n: u64 = std::env::var("MMLAB_EMU_SWEEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if n == 0 {
        eprintln!("{what} skipped: set MMLAB_EMU_SWEEP=<cases> to run it");
        return None;
    }
    let mut s = seed;
    Some((n, move |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % m
    }))
}

/// Random shapes, head dims, masks and KV grouping (`MMLAB_EMU_SWEEP=N` cases, default none):
/// the long check to run after changing a kernel.
#[test]
fn random_sweep_matches_cpu() {
    let Some((n, mut next)) = sweep("random sweep", 0x9e3779b97f4a7c15) else {
        return;
    };
    for _ in 0..n {
        let elem = if next(2) == 0 { Elem::F32 } else { Elem::Bf16 };
        let hd = sources::HEAD_DIMS[next(4) as usize];
        let kvh = 1 + next(2) as usize;
        let h = kvh * (1 + next(3) as usize);
        let b = 1 + next(2) as usize;
        let tq = 1 + next(160) as usize;
        let tk = tq + next(3) as usize * next(90) as usize;
        let kind = next(3);
        let mask = (kind == 2).then(|| {
            let mut valid = vec![1u8; b * tk];
            for bi in 0..b {
                let pad = next(tk as u64 / 2 + 1) as usize;
                if next(2) == 0 {
                    valid[bi * tk..bi * tk + pad]
                        .iter_mut()
                        .for_each(|x| *x = 0);
                } else {
                    valid[(bi + 1) * tk - pad..(bi + 1) * tk]
                        .iter_mut()
                        .for_each(|x| *x = 0);
                }
            }
            if next(2) == 0 {
                AttnMask::causal(b, tq, tk - tq, &valid).unwrap()
            } else {
                AttnMask::bidirectional(b, tq, tk - tq, &valid).unwrap()
            }
        });
        run(
            Case {
                elem,
                b,
                h,
                kvh,
                tq,
                tk,
                hd,
                causal: kind == 1,
                mask,
            },
            next(4) == 0,
        );
    }
}

#[test]
fn padding_masks_match_cpu() {
    // The model's mask: causal plus padded keys, right padding in one batch row and left
    // padding in the other (whose first rows see no key at all).
    let (b, t) = (2, 75);
    let mut valid = vec![1u8; b * t];
    valid[t - 20..t].iter_mut().for_each(|x| *x = 0);
    valid[t..t + 9].iter_mut().for_each(|x| *x = 0);
    let mask = AttnMask::causal(b, t, 0, &valid).unwrap();
    for (elem, hd) in [
        (Elem::F32, 16),
        (Elem::F32, 64),
        (Elem::Bf16, 64),
        (Elem::Bf16, 16),
    ] {
        run(
            Case {
                mask: Some(mask.clone()),
                ..case(elem, hd, false, t, t)
            },
            false,
        );
    }
    // An encoder's mask (every query sees every real key), and a decoder step over a cache
    // whose first keys are padding, with a batch row that has no real key at all.
    let enc = AttnMask::bidirectional(b, t, 0, &valid).unwrap();
    let (past, tq) = (60, 5);
    let mut cache_valid = vec![1u8; b * (past + tq)];
    cache_valid[..12].iter_mut().for_each(|x| *x = 0);
    cache_valid[past + tq..].iter_mut().for_each(|x| *x = 0);
    let step = AttnMask::causal(b, tq, past, &cache_valid).unwrap();
    for (elem, hd) in [(Elem::F32, 32), (Elem::Bf16, 128)] {
        run(
            Case {
                mask: Some(enc.clone()),
                ..case(elem, hd, false, t, t)
            },
            elem == Elem::Bf16,
        );
        run(
            Case {
                mask: Some(step.clone()),
                ..case(elem, hd, false, tq, past + tq)
            },
            false,
        );
    }
}

#[test]
fn emulator_rejects_bad_launches() {
    let d = AttnDims {
        b: 1,
        h: 1,
        kvh: 1,
        tq: 8,
        tk: 8,
        hd: 64,
    };
    let plan = sources::fwd_launch(Elem::Bf16, &d, FwdTile::M64).unwrap();
    let e = launch(&plan, &[Arg::I32(0)], false).unwrap_err();
    assert!(e.contains("1 arguments given, the kernel takes 13"), "{e}");
    let unknown = Launch {
        kernel: "fa_fwd_f64_hd64".into(),
        ..plan.clone()
    };
    assert!(launch(&unknown, &[], false)
        .unwrap_err()
        .contains("no kernel named"));
    // A K buffer whose rows are not 16-byte aligned: cp.async must refuse it.
    let mut q = Buf::zeros(8 * 64 * 2);
    let mut kv = Buf::zeros(8 * 64 * 2 + 16);
    let mut o = Buf::zeros(8 * 64 * 2);
    let mut lse = Buf::zeros(8 * 4);
    let Arg::Ptr(kp) = kv.ptr() else {
        unreachable!()
    };
    // SAFETY: 2 bytes into a buffer 16 bytes longer than the kernel reads.
    let k_off = Arg::Ptr(unsafe { kp.cast::<u8>().add(2) }.cast());
    let args = [
        q.ptr(),
        k_off,
        k_off,
        o.ptr(),
        lse.ptr(),
        Arg::Ptr(std::ptr::null_mut()),
        Arg::Ptr(std::ptr::null_mut()),
        Arg::I32(1),
        Arg::I32(1),
        Arg::I32(8),
        Arg::I32(8),
        Arg::F32(0.125),
        Arg::I32(0),
    ];
    let e = launch(&plan, &args, false).unwrap_err();
    assert!(e.contains("not 16-byte aligned"), "{e}");
}

/// Errors of one fused QK-norm + rotary case: output, dx, dw, dbias (dw and dbias 0 without a
/// norm).
#[derive(Debug, Default)]
struct QkPrepErrors {
    y: f32,
    dx: f32,
    dw: f32,
    db: f32,
}

/// Rounds `t` to bf16 values when `elem` is bf16 (the kernels' inputs are bf16 then).
fn round_to(t: Tensor, elem: Elem) -> Tensor {
    match elem {
        Elem::F32 => t,
        Elem::Bf16 => t
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    }
}

/// `kernels/qk_prep.cu` on `x` `(b, t, n, hd)` against the model's plain path on the same
/// values: `Norm::forward_plain` (LayerNorm, when `norm`) and `Rotary::apply_plain` on the heads
/// `(b, n, t, hd)`, and candle's autograd for dx, dw and dbias. Returns the errors and the raw
/// outputs (for the thread-order check).
#[allow(clippy::too_many_arguments)]
fn qk_prep_case(
    elem: Elem,
    b: usize,
    t: usize,
    n: usize,
    hd: usize,
    rot: usize,
    norm: bool,
    reverse: bool,
) -> (QkPrepErrors, Vec<f32>) {
    use candle_nn::{VarBuilder, VarMap};
    use mmlab::model::config::NormKind;
    use mmlab::model::layers::{Norm, Rotary};
    let dev = Device::Cpu;
    let seed = (b * 1000 + t * 100 + n * 10 + hd + rot) as u64;
    let eps = 1e-5;
    let x = round_to(rand(&[b, t, n, hd], seed), elem);
    let dy = round_to(rand(&[b, n, t, hd], seed + 1), elem);
    let w = round_to(rand(&[hd], seed + 2).affine(0.25, 1.0).unwrap(), elem);
    let bias = round_to(rand(&[hd], seed + 3).affine(0.25, 0.0).unwrap(), elem);

    // The reference, with the norm's parameters as variables.
    let vm = VarMap::new();
    let layer = Norm::new(
        NormKind::LayerNorm,
        hd,
        eps,
        VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("n"),
    )
    .unwrap();
    let vars = vm.data().lock().unwrap().clone();
    vars["n.weight"].set(&w).unwrap();
    vars["n.bias"].set(&bias).unwrap();
    // Positions differ per batch row (as after left padding), so the tables are gathered.
    let pos: Vec<u32> = (0..b)
        .flat_map(|bi| (0..t).map(move |ti| (ti + 3 * bi) as u32))
        .collect();
    let pos = Tensor::from_vec(pos, (b, t), &dev).unwrap();
    let rotary = Rotary::new(rot, t + 3 * b, 10_000.0, &dev).unwrap();
    let (cos, sin) = if rot > 0 {
        let (c, s) = rotary.tables(&pos).unwrap();
        (round_to(c, elem), round_to(s, elem))
    } else {
        let z = Tensor::zeros((b, 1, t, 0), DType::F32, &dev).unwrap();
        (z.clone(), z)
    };
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let heads = xv.as_tensor().transpose(1, 2).unwrap();
    let z = if norm {
        layer.forward_plain(&heads).unwrap()
    } else {
        heads
    };
    let want_y = rotary.apply_plain(&z, &cos, &sin).unwrap();
    let grads = (&want_y * &dy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let want_dx = grads.get(xv.as_tensor()).unwrap();

    // The kernels, as src/kernels/cuda/ launches them.
    let rows = b * n * t;
    let mut xb = Buf::from(&flat(&x), elem);
    let mut wb = Buf::from(&flat(&w), elem);
    let mut bb = Buf::from(&flat(&bias), elem);
    let mut cb = Buf::from(&flat(&cos), elem);
    let mut sb = Buf::from(&flat(&sin), elem);
    let mut dyb = Buf::from(&flat(&dy), elem);
    let es = if elem == Elem::F32 { 4 } else { 2 };
    let mut yb = Buf::zeros(rows * hd * es);
    let null = Arg::Ptr(std::ptr::null_mut());
    let (wa, ba) = if norm {
        (wb.ptr(), bb.ptr())
    } else {
        (null, null)
    };
    let dims = [b, t, n, hd, rot].map(|v| Arg::I32(v as i32));
    let plan = sources::qk_prep_launch(elem, true, rows, hd).unwrap();
    let mut args = vec![xb.ptr(), wa, ba, cb.ptr(), sb.ptr(), yb.ptr()];
    args.extend(dims);
    args.push(Arg::F32(eps as f32));
    launch(&plan, &args, reverse).unwrap_or_else(|e| panic!("qk_prep forward: {e}"));

    let plan = sources::qk_prep_launch(elem, false, rows, hd).unwrap();
    let mut dxb = Buf::zeros(rows * hd * es);
    let mut dwb = Buf::zeros(plan.grid[0] as usize * 2 * hd * 4);
    let dwa = if norm { dwb.ptr() } else { null };
    let mut args = vec![xb.ptr(), wa, cb.ptr(), sb.ptr(), dyb.ptr(), dxb.ptr(), dwa];
    args.extend(dims);
    args.push(Arg::F32(eps as f32));
    launch(&plan, &args, reverse).unwrap_or_else(|e| panic!("qk_prep backward: {e}"));

    let got_y = yb.read_f32(elem);
    let got_dx = dxb.read_f32(elem);
    let mut errs = QkPrepErrors {
        y: rel_err(&got_y, &flat(&want_y.contiguous().unwrap())),
        dx: rel_err(&got_dx, &flat(want_dx)),
        ..Default::default()
    };
    let mut raw = [got_y, got_dx].concat();
    if norm {
        // The blocks' partial sums, added up as cuda.rs does.
        let sums = sum_rows(&dwb.read_f32(Elem::F32), 2 * hd);
        errs.dw = rel_err(&sums[..hd], &flat(grads.get(&vars["n.weight"]).unwrap()));
        errs.db = rel_err(&sums[hd..], &flat(grads.get(&vars["n.bias"]).unwrap()));
        raw.extend(sums);
    }
    (errs, raw)
}

#[test]
fn qk_prep_kernels_match_the_plain_path() {
    let mut worst = [0f32; 2];
    for elem in [Elem::F32, Elem::Bf16] {
        let bound = if elem == Elem::F32 { 1e-5 } else { 1e-2 };
        // Head dims of the shipped models (16, 64), Persimmon's (partial rotary), one that is
        // not a multiple of the warp (80) and the largest (256); full, partial and no rotary;
        // with and without the norm.
        for (hd, rot) in [(16, 16), (64, 32), (80, 80), (128, 0), (256, 128)] {
            for norm in [true, false] {
                let (e, _) = qk_prep_case(elem, 2, 7, 3, hd, rot, norm, false);
                eprintln!("{elem:?} hd {hd} rot {rot} norm {norm}: {e:?}");
                for v in [e.y, e.dx, e.dw, e.db] {
                    assert!(v <= bound, "{elem:?} hd {hd} rot {rot} norm {norm}: {e:?}");
                    worst[usize::from(elem == Elem::Bf16)] =
                        worst[usize::from(elem == Elem::Bf16)].max(v);
                }
            }
        }
    }
    eprintln!(
        "largest errors: f32 {:.2e}, bf16 {:.2e}",
        worst[0], worst[1]
    );
    // More rows than the backward has warps (4 x 1024): warps walk several rows, and the
    // block sums must still add up; the same bits in reverse thread order.
    let (e, fwd_order) = qk_prep_case(Elem::F32, 2, 520, 4, 16, 16, true, false);
    assert!(
        e.y <= 1e-5 && e.dx <= 1e-5 && e.dw <= 1e-5 && e.db <= 1e-5,
        "{e:?}"
    );
    let (_, rev_order) = qk_prep_case(Elem::F32, 2, 520, 4, 16, 16, true, true);
    assert!(
        same_bits(&fwd_order, &rev_order),
        "qk_prep depends on thread order"
    );
}

/// Errors of one fused bias + relu² case (output, dz, dbias) and the raw results.
fn relu2_case(
    elem: Elem,
    rows: usize,
    cols: usize,
    bias: bool,
    reverse: bool,
) -> ([f32; 3], Vec<f32>) {
    let seed = (rows * 31 + cols) as u64;
    let z = round_to(rand(&[rows, cols], seed), elem);
    let b = round_to(rand(&[cols], seed + 1).affine(0.5, 0.0).unwrap(), elem);
    let dy = round_to(rand(&[rows, cols], seed + 2), elem);
    // The reference: candle's ops as `kernels::linear_then` runs them off the CPU fast path.
    let zv = candle_core::Var::from_tensor(&z).unwrap();
    let bv = candle_core::Var::from_tensor(&b).unwrap();
    let pre = if bias {
        zv.as_tensor().broadcast_add(bv.as_tensor()).unwrap()
    } else {
        zv.as_tensor().clone()
    };
    let want = pre.relu().unwrap().sqr().unwrap();
    let grads = (&want * &dy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let es = if elem == Elem::F32 { 4 } else { 2 };
    let mut zb = Buf::from(&flat(&z), elem);
    let mut bb = Buf::from(&flat(&b), elem);
    let mut dyb = Buf::from(&flat(&dy), elem);
    let mut yb = Buf::zeros(rows * cols * es);
    let null = Arg::Ptr(std::ptr::null_mut());
    let ba = if bias { bb.ptr() } else { null };
    let shape = [Arg::I64(rows as i64), Arg::I32(cols as i32)];
    let plan = sources::relu2_launch(elem, true, rows, cols).unwrap();
    let mut args = vec![zb.ptr(), ba, yb.ptr()];
    args.extend(shape);
    launch(&plan, &args, reverse).unwrap_or_else(|e| panic!("relu2 forward: {e}"));
    let plan = sources::relu2_launch(elem, false, rows, cols).unwrap();
    let mut dzb = Buf::zeros(rows * cols * es);
    let mut parts = Buf::zeros(plan.grid[1] as usize * cols * 4);
    let pa = if bias { parts.ptr() } else { null };
    let mut args = vec![zb.ptr(), ba, dyb.ptr(), dzb.ptr(), pa];
    args.extend(shape);
    launch(&plan, &args, reverse).unwrap_or_else(|e| panic!("relu2 backward: {e}"));

    let (y, dz) = (yb.read_f32(elem), dzb.read_f32(elem));
    let mut errs = [
        rel_err(&y, &flat(&want)),
        rel_err(&dz, &flat(grads.get(zv.as_tensor()).unwrap())),
        0.0,
    ];
    let mut raw = [y, dz].concat();
    if bias {
        // The block rows' partial sums, added up as cuda.rs does.
        let db = sum_rows(&parts.read_f32(Elem::F32), cols);
        errs[2] = rel_err(&db, &flat(grads.get(bv.as_tensor()).unwrap()));
        raw.extend(db);
    }
    (errs, raw)
}

#[test]
fn relu2_kernels_match_candle_ops() {
    for elem in [Elem::F32, Elem::Bf16] {
        let bound = if elem == Elem::F32 { 1e-6 } else { 1e-2 };
        // Columns not a multiple of the 32-column block; more rows than the backward's block
        // rows cover in one sweep (8 x 256), so threads walk several rows.
        for (rows, cols, bias) in [
            (5, 64, true),
            (37, 100, true),
            (3, 7, false),
            (2100, 40, true),
        ] {
            let (e, _) = relu2_case(elem, rows, cols, bias, false);
            eprintln!(
                "{elem:?} {rows} x {cols} bias {bias}: y {:.2e} dz {:.2e} db {:.2e}",
                e[0], e[1], e[2]
            );
            assert!(
                e.iter().all(|&v| v <= bound),
                "{elem:?} {rows} x {cols}: {e:?}"
            );
        }
    }
    let (_, fwd_order) = relu2_case(Elem::F32, 37, 100, true, false);
    let (_, rev_order) = relu2_case(Elem::F32, 37, 100, true, true);
    assert!(
        same_bits(&fwd_order, &rev_order),
        "relu2 depends on thread order"
    );
}

/// Random shapes through the fused q/k preparation and relu² kernels (`MMLAB_EMU_SWEEP=N`
/// cases each, default none): any head dim up to 256 (odd ones too), any even rotary width,
/// with and without the norm; any matrix shape, with and without the bias.
#[test]
fn fused_ops_random_sweep() {
    let Some((n, mut next64)) = sweep("fused-op sweep", 0x2545f4914f6cdd1d) else {
        return;
    };
    let mut next = |m: u64| next64(m) as usize;
    let mut worst = [0f32; 2];
    for i in 0..n {
        let elem = if next(2) == 0 { Elem::F32 } else { Elem::Bf16 };
        let bound = if elem == Elem::F32 { 1e-5 } else { 1e-2 };
        let (b, t, h) = (1 + next(3), 1 + next(40), 1 + next(4));
        let hd = 1 + next(256);
        let rot = 2 * next(hd as u64 / 2 + 1);
        let norm = next(2) == 0;
        let (e, _) = qk_prep_case(elem, b, t, h, hd, rot, norm, next(4) == 0);
        let w = &mut worst[usize::from(elem == Elem::Bf16)];
        for v in [e.y, e.dx, e.dw, e.db] {
            assert!(
                v <= bound,
                "case {i}: qk_prep {elem:?} b {b} t {t} n {h} hd {hd} rot {rot} norm {norm}: {e:?}"
            );
            *w = w.max(v);
        }
        let (rows, cols, bias) = (1 + next(3000), 1 + next(300), next(2) == 0);
        let (e, _) = relu2_case(elem, rows, cols, bias, next(4) == 0);
        assert!(
            e.iter().all(|&v| v <= bound),
            "case {i}: relu2 {elem:?} {rows} x {cols} bias {bias}: {e:?}"
        );
        *w = w.max(e.into_iter().fold(0f32, f32::max));
    }
    eprintln!(
        "{n} cases each: largest error f32 {:.2e}, bf16 {:.2e}",
        worst[0], worst[1]
    );
}
