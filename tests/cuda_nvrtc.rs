//! Every `kernels/*.cu` compiles with NVRTC to sm_90 machine code with no register spills.
//!
//! Needs no GPU and no CUDA toolkit: only NVRTC, from PyPI's `nvidia-cuda-nvrtc` wheel (pinned
//! to 13.0.x in `.ci/run`, which installs it under `target/nvrtc-wheels`). The library is
//! found through `MMLAB_NVRTC_DIR` (the folder holding `libnvrtc.so.13` and
//! `libnvrtc-builtins.so.13.0`) or at `target/nvrtc-wheels/nvidia/cu13/lib`. Without it the
//! test says so loudly and passes, unless `MMLAB_REQUIRE_NVRTC=1` (set by `.ci/run`): then a
//! missing NVRTC fails.
//!
//! The check reads ptxas' own report (`--ptxas-options=-v`): for every kernel the spill stores
//! and loads must be 0, registers at most 255, and static plus dynamic shared memory within
//! sm_90's 227 KiB per block. Every kernel `src/kernels/cuda/` launches must be in the report.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use mmlab::kernels::sources;

/// One kernel's line in the ptxas report.
#[derive(Debug, Default, Clone, PartialEq)]
struct KernelReport {
    name: String,
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

/// The number just before `unit` in `line` ("... 12 bytes spill stores" -> 12).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Parses ptxas' `-v` report into one entry per compiled kernel.
fn parse_ptxas(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelReport {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            cur.stack = number_before(line, "bytes stack frame").unwrap_or(u32::MAX);
            cur.spill_stores = number_before(line, "bytes spill stores").unwrap_or(u32::MAX);
            cur.spill_loads = number_before(line, "bytes spill loads").unwrap_or(u32::MAX);
        } else if line.contains("Used") && line.contains("registers") {
            cur.registers = number_before(line, "registers").unwrap_or(u32::MAX);
            cur.smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

type NvrtcProgram = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut NvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut NvrtcProgram) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// NVRTC opened with `dlopen` (no CUDA driver needed, unlike cudarc's loader).
struct Nvrtc {
    handle: *mut c_void,
}

impl Nvrtc {
    fn open(dir: &Path) -> Result<Self, String> {
        let open = |p: &Path| -> Result<*mut c_void, String> {
            let c = CString::new(p.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: a valid C string; the library stays loaded for the whole test.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if h.is_null() {
                // SAFETY: dlerror returns a static C string or null.
                let err = unsafe { libc::dlerror() };
                let msg = if err.is_null() {
                    String::from("unknown error")
                } else {
                    // SAFETY: non-null C string from dlerror.
                    unsafe { CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(format!("dlopen {}: {msg}", p.display()));
            }
            Ok(h)
        };
        // NVRTC loads its builtins library by soname; once loaded from the wheel's folder the
        // dynamic loader reuses it, so no LD_LIBRARY_PATH is needed.
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let p = entry.map_err(|e| e.to_string())?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.starts_with("libnvrtc-builtins.so")) {
                open(&p)?;
            }
        }
        let handle = open(&dir.join("libnvrtc.so.13"))?;
        Ok(Self { handle })
    }

    fn sym<T: Copy>(&self, name: &str) -> T {
        let c = CString::new(name).expect("symbol name");
        // SAFETY: the handle is a loaded library; T is the symbol's function pointer type.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        assert!(!p.is_null(), "NVRTC has no symbol {name}");
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: same size, and the symbol has the signature T describes (nvrtc.h).
        unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) }
    }

    fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        let rc = unsafe { self.sym::<VersionFn>("nvrtcVersion")(&mut a, &mut b) };
        assert_eq!(rc, 0, "nvrtcVersion");
        (a, b)
    }

    /// Compiles `src` with `opts`: `(success, log, cubin size)`.
    fn compile(&self, name: &str, src: &str, opts: &[&str]) -> (bool, String, usize) {
        let src_c = CString::new(src).expect("source without NUL");
        let name_c = CString::new(name).expect("name without NUL");
        let opts_c: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(*o).expect("option"))
            .collect();
        let opt_ptrs: Vec<*const c_char> = opts_c.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid C strings that outlive the program; no headers passed.
        unsafe {
            let rc = self.sym::<CreateFn>("nvrtcCreateProgram")(
                &mut prog,
                src_c.as_ptr(),
                name_c.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            assert_eq!(rc, 0, "nvrtcCreateProgram({name})");
            let ok = self.sym::<CompileFn>("nvrtcCompileProgram")(
                prog,
                opt_ptrs.len() as c_int,
                opt_ptrs.as_ptr(),
            ) == 0;
            let mut n = 0usize;
            assert_eq!(
                self.sym::<SizeFn>("nvrtcGetProgramLogSize")(prog, &mut n),
                0
            );
            let mut buf = vec![0u8; n.max(1)];
            assert_eq!(
                self.sym::<GetFn>("nvrtcGetProgramLog")(prog, buf.as_mut_ptr() as *mut c_char),
                0
            );
            let log = CStr::from_bytes_until_nul(&buf)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut cubin = 0usize;
            if ok {
                assert_eq!(self.sym::<SizeFn>("nvrtcGetCUBINSize")(prog, &mut cubin), 0);
                let mut bin = vec![0u8; cubin];
                assert_eq!(
                    self.sym::<GetFn>("nvrtcGetCUBIN")(prog, bin.as_mut_ptr() as *mut c_char),
                    0
                );
                // An ELF image.
                assert_eq!(&bin[..4], b"\x7fELF", "{name}: cubin is not an ELF image");
            }
            self.sym::<DestroyFn>("nvrtcDestroyProgram")(&mut prog);
            (ok, log, cubin)
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nvrtc_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MMLAB_NVRTC_DIR").map(PathBuf::from),
        Some(root().join("target/nvrtc-wheels/nvidia/cu13/lib")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("libnvrtc.so.13").exists())
}

#[test]
fn every_cuda_source_compiles_to_sm90_without_spills() {
    let required = std::env::var("MMLAB_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let Some(dir) = nvrtc_dir() else {
        assert!(
            !required,
            "MMLAB_REQUIRE_NVRTC=1 but no libnvrtc.so.13 found (MMLAB_NVRTC_DIR or \
             target/nvrtc-wheels/nvidia/cu13/lib; .ci/run installs it)"
        );
        eprintln!(
            "\n*** SKIPPED: NVRTC not found, the CUDA kernels were NOT checked. Install it with\n\
             ***   python3 -m pip install --target target/nvrtc-wheels nvidia-cuda-nvrtc==13.0.88\n\
             *** or set MMLAB_NVRTC_DIR (MMLAB_REQUIRE_NVRTC=1 turns this into a failure).\n"
        );
        return;
    };
    let nvrtc = Nvrtc::open(&dir).unwrap_or_else(|e| panic!("loading NVRTC: {e}"));
    let (major, minor) = nvrtc.version();
    eprintln!("NVRTC {major}.{minor} from {}", dir.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(root().join("kernels"))
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no kernels/*.cu found");

    let mut all: Vec<KernelReport> = Vec::new();
    for path in &sources {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(path).expect("readable source");
        let (ok, log, cubin) = nvrtc.compile(
            &name,
            &src,
            &[
                "--gpu-architecture=sm_90",
                "--ptxas-options=-v",
                "--std=c++17",
            ],
        );
        assert!(ok, "{name} does not compile with NVRTC for sm_90:\n{log}");
        let reports = parse_ptxas(&log);
        assert!(
            !reports.is_empty(),
            "{name}: no kernel found in the ptxas report:\n{log}"
        );
        eprintln!("{name}: {cubin} bytes of sm_90 code");
        eprintln!(
            "  {:<28} {:>5} {:>7} {:>7} {:>7} {:>7}",
            "kernel", "regs", "stack", "spill-s", "spill-l", "smem"
        );
        for r in &reports {
            eprintln!(
                "  {:<28} {:>5} {:>7} {:>7} {:>7} {:>7}",
                r.name, r.registers, r.stack, r.spill_stores, r.spill_loads, r.smem
            );
        }
        all.extend(reports);
    }

    let mut bad = Vec::new();
    for r in &all {
        if r.spill_stores != 0 || r.spill_loads != 0 || r.registers == 0 || r.registers > 255 {
            bad.push(format!("{r:?}"));
        }
    }
    assert!(bad.is_empty(), "kernels with spills:\n{}", bad.join("\n"));

    // Every kernel the CUDA ops launch was compiled, and fits sm_90's shared memory per block.
    // The fused QK-norm + rotary kernels take the most shared memory at their largest head dim.
    let qk_prep = [sources::Elem::F32, sources::Elem::Bf16]
        .into_iter()
        .flat_map(|e| {
            [true, false].map(|fwd| {
                sources::qk_prep_launch(e, fwd, 1, sources::QK_PREP_MAX_HD).expect("launch plan")
            })
        });
    let launches: Vec<sources::Launch> = sources::HEAD_DIMS
        .iter()
        .flat_map(|&hd| {
            [sources::Elem::F32, sources::Elem::Bf16]
                .map(|e| sources::all_launches(e, hd).expect("launch plans"))
        })
        .flatten()
        .chain(qk_prep)
        .chain(
            [sources::Elem::F32, sources::Elem::Bf16]
                .into_iter()
                .flat_map(|e| {
                    [true, false]
                        .map(|fwd| sources::relu2_launch(e, fwd, 1, 1).expect("launch plan"))
                }),
        )
        .collect();
    for name in sources::flash_attn_kernels()
        .into_iter()
        .chain(sources::qk_prep_kernels())
        .chain(sources::mlp_act_kernels())
    {
        let r = all.iter().find(|r| r.name == name).unwrap_or_else(|| {
            panic!("kernel {name} (launched by src/kernels/cuda/) not compiled")
        });
        let dynamic = launches
            .iter()
            .find(|l| l.kernel == name)
            .map_or(0, |l| l.smem as usize);
        let total = r.smem as usize + dynamic;
        assert!(
            total <= 227 * 1024,
            "{name}: {total} bytes of shared memory per block"
        );
    }
}

#[test]
fn ptxas_report_parser_sees_spills() {
    // Shape of a real ptxas -v report (from NVRTC 13.0), with a spilling kernel planted.
    let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'good' for 'sm_90'
ptxas info    : Function properties for good
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 254 registers, used 1 barriers, 32768 bytes smem
ptxas info    : Compiling entry function 'bad' for 'sm_90'
ptxas info    : Function properties for bad
ptxas         .     40 bytes stack frame, 36 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
";
    let r = parse_ptxas(log);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0],
        KernelReport {
            name: "good".into(),
            registers: 254,
            stack: 0,
            spill_stores: 0,
            spill_loads: 0,
            smem: 32768
        }
    );
    assert_eq!(
        (
            r[1].name.as_str(),
            r[1].spill_stores,
            r[1].spill_loads,
            r[1].stack,
            r[1].smem
        ),
        ("bad", 36, 12, 40, 0)
    );
}
