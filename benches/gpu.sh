#!/usr/bin/env bash
# The CUDA checks, on the GPU machine (H200: nvcc 13.0, PyTorch, no internet, no Rust):
#  1. the CUDA tests (tests/cuda.rs): outputs and gradients against the CPU path,
#     f32 <= 1e-3, bf16 <= 2e-2;
#  2. end to end: fuyu-small evaluated on 100 POPE questions with --device cpu, --device cuda,
#     and --device cuda with candle's ops instead of the fused kernels of kernels/qk_prep.cu and
#     kernels/mlp_act.cu (MMLAB_QK_PREP=plain MMLAB_RELU2=plain);
#  3. TFLOP/s of the attention kernels, forward and backward, bf16, head dim 128, seq 1k-16k,
#     beside PyTorch's scaled_dot_product_attention (flash backend), as a table; then the fused
#     q/k preparation and bias + relu² against candle's ops (ms).
#
# The binaries come from benches/gpu-build.sh, run beforehand on a machine with crates.io
# (no GPU needed); carry target/gpu-bundle with the working tree. Where cargo and nvcc are
# present instead (a GPU machine with Rust), the script builds in place.
# Logs and JSON go to $OUT (the device tool's output folder) or target/gpu-out.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUTD=${OUT:-target/gpu-out}
mkdir -p "$OUTD"
RUN=$(mktemp -d /tmp/mmlab-gpu.XXXX)
B=target/gpu-bundle
step() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

if [ -f "$B/cuda_tests.xz" ]; then
  step "unpacking target/gpu-bundle (built from commit $(cat $B/COMMIT 2>/dev/null))"
  unxz_to() { # xz, or Python's lzma where xz is not installed
    if command -v xz >/dev/null; then xz -dc "$1" > "$2"
    else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
  }
  for f in mmlab flash_bench cuda_tests; do
    unxz_to "$B/$f.xz" "$RUN/$f" && chmod +x "$RUN/$f" || { echo "bad bundle: $f"; exit 1; }
  done
elif command -v cargo >/dev/null && command -v nvcc >/dev/null; then
  step "building in place (cargo + nvcc found)"
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  cargo build --release --features cuda --bin mmlab --example flash_bench || exit 1
  cp target/release/mmlab target/release/examples/flash_bench "$RUN/"
  T=$(cargo test --release --features cuda --test cuda --no-run --message-format=json \
      | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda": print(m["executable"])' | tail -1)
  cp "$T" "$RUN/cuda_tests"
else
  echo "no target/gpu-bundle, and no cargo + nvcc to build with here: run benches/gpu-build.sh first and carry target/gpu-bundle"
  exit 1
fi

# Libraries the binaries were linked against by soname: libcuda.so.1 from the driver;
# cuBLAS, cuBLASLt, cuRAND, NVRTC (and its builtins) from PyTorch's nvidia wheels.
LIBS=$(python3 - <<'PY'
import glob, os, site, sys
want = ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcudart.so.13"]
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = []
for w in want:
    for r in roots:
        hits = glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True)
        if hits:
            d = os.path.dirname(hits[0])
            if d not in dirs:
                dirs.append(d)
            break
    else:
        print("missing " + w, file=sys.stderr)
print(":".join(dirs))
PY
)
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libcuda.so.1" ] && LIBS="$LIBS:$d"
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$RUN/cuda_tests" | grep -E "cuda|cublas|curand|nvrtc" || true

FAIL=0
step "1. CUDA tests (tests/cuda.rs)"
MMLAB_CUDA_TESTS=1 "$RUN/cuda_tests" --test-threads=1 --nocapture 2>&1 | tee "$OUTD/cuda_tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "CUDA TESTS FAILED"; FAIL=1; }

step "2. fuyu-small, 100 POPE questions, cpu vs cuda (fused kernels, then candle's ops instead)"
for run in cpu cuda cuda-plain; do
  dev=${run%-plain}
  qk=fused; [ "$run" = cuda-plain ] && qk=plain
  t0=$(date +%s%N)
  MMLAB_QK_PREP=$qk MMLAB_RELU2=$qk "$RUN/mmlab" --device $dev eval pope-random --model models/fuyu-small \
    --limit 100 --no-cache --results "$RUN/results-$run" 2>&1 | tail -15 | tee -a "$OUTD/pope.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "POPE on $run FAILED"; FAIL=1; }
  echo "$run: $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$OUTD/pope.log"
done

step "3. attention TFLOP/s: mmlab kernels"
"$RUN/flash_bench" --iters ${ITERS:-10} | tee "$OUTD/bench_mmlab.jsonl" || { echo "BENCH FAILED"; FAIL=1; }
step "3. attention TFLOP/s: PyTorch SDPA (flash backend)"
PYTHONUNBUFFERED=1 python3 benches/reference/sdpa_bench.py --iters ${ITERS:-10} | tee "$OUTD/bench_torch.jsonl" \
  || { echo "TORCH BENCH FAILED"; FAIL=1; }
step "side by side"
python3 benches/reference/side_by_side.py "$OUTD/bench_mmlab.jsonl" "$OUTD/bench_torch.jsonl" | tee "$OUTD/side_by_side.txt"

step "done (exit $FAIL)"
exit $FAIL
