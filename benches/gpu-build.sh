#!/usr/bin/env bash
# Builds the CUDA binaries that benches/gpu.sh runs, on a machine WITHOUT a GPU or CUDA toolkit
# (the GPU machine has no Rust toolchain and no crates.io), and packs them into
# target/gpu-bundle/ (about 20-30 MB compressed) to be carried there with the working tree.
#
#   benches/gpu-build.sh           # full release build + bundle
#   benches/gpu-build.sh --check   # only `cargo clippy --features cuda --all-targets`: type-checks
#                                  # the CUDA code in minutes; candle's own kernels are NOT
#                                  # compiled (a stand-in nvcc writes empty PTX / objects)
#
# What it needs here: python3 + pip (PyPI), crates.io, a C compiler (cc). What it does:
#  1. installs CUDA 13.0.x's nvcc, NVVM, CCCL, runtime headers and NVRTC from PyPI into
#     target/cuda-wheels (pinned to 13.0.x: the GPU machines run driver 580 / CUDA 13.0);
#  2. makes target/cuda-root, a CUDA_ROOT with bin/ and include/ from the wheels and, in lib64/,
#     link-time stubs of libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and
#     libnvrtc.so.13: shared objects that export every function name cudarc declares (read
#     from cudarc's own bindings), so the linker is satisfied; at run time the real libraries
#     (the driver's libcuda, PyTorch's cuBLAS / cuRAND / NVRTC wheels) are loaded by soname;
#  3. builds with `--features cuda --release` (candle-kernels compiles candle's own kernels with
#     nvcc for sm_90 here: the longest part);
#  4. copies the stripped `mmlab`, the `flash_bench` example and the `cuda` test binary into
#     target/gpu-bundle/, xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

WHEELS=target/cuda-wheels
if [ ! -d "$WHEELS/nvidia_cuda_nvcc-13.0.88.dist-info" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-nvrtc==13.0.88
fi
CU="$ROOT_DIR/$WHEELS/nvidia/cu13"

CUDA_ROOT_DIR="$ROOT_DIR/target/cuda-root"
mkdir -p "$CUDA_ROOT_DIR/lib64"
ln -sfn "$CU/bin" "$CUDA_ROOT_DIR/bin"
ln -sfn "$CU/include" "$CUDA_ROOT_DIR/include"
ln -sfn "$CU/nvvm" "$CUDA_ROOT_DIR/nvvm"

# Link-time stubs (see 2. above).
CUDARC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort -V | tail -1)
if [ -z "$CUDARC" ]; then
  cargo fetch >/dev/null
  CUDARC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort -V | tail -1)
fi
stub() { # stub NAME SONAME SYS_DIR
  local name=$1 soname=$2 sys=$3 c="$CUDA_ROOT_DIR/lib64/$1.c"
  grep -ho 'pub unsafe fn [A-Za-z0-9_]*(' "$CUDARC/src/$sys/sys/"*.rs \
    | sed 's/pub unsafe fn \(.*\)(/void \1(void) {}/' | sort -u > "$c"
  cc -shared -fPIC -Wl,-soname,"$soname" -o "$CUDA_ROOT_DIR/lib64/$name.so" "$c"
}
stub libcuda libcuda.so.1 driver
stub libcublas libcublas.so.13 cublas
stub libcublasLt libcublasLt.so.13 cublaslt
stub libcurand libcurand.so.10 curand
stub libnvrtc libnvrtc.so.13 nvrtc
# candle-kernels links cudart (dynamically): the wheel's library under the plain name.
ln -sfn "$CU/lib/libcudart.so.13" "$CUDA_ROOT_DIR/lib64/libcudart.so"

export CUDA_ROOT="$CUDA_ROOT_DIR" CUDA_HOME="$CUDA_ROOT_DIR" CUDA_PATH="$CUDA_ROOT_DIR"
export PATH="$CUDA_ROOT_DIR/bin:$PATH" NVCC="$CUDA_ROOT_DIR/bin/nvcc"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$CUDA_ROOT_DIR/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"

if [ "$CHECK" = 1 ]; then
  FAKE="$ROOT_DIR/target/cuda-root/fake-nvcc"
  mkdir -p "$FAKE"
  cat > "$FAKE/nvcc" <<'SH'
#!/usr/bin/env bash
# Stand-in nvcc for type-checking: real answers to queries, empty outputs for compilations.
real="$(dirname "$0")/../bin/nvcc"
out="" dir="" lib=0 ptx=0 src=""
while [ $# -gt 0 ]; do
  case "$1" in
    --version|--list-gpu-code) exec "$real" "$1" ;;
    -o) out=$2; shift ;;
    --output-directory) dir=$2; shift ;;
    --lib) lib=1 ;;
    --ptx) ptx=1 ;;
    *.cu) src=$1 ;;
  esac
  shift
done
if [ "$ptx" = 1 ]; then f=$(basename "$src" .cu); : > "${dir:-.}/$f.ptx"; fi
[ -n "$out" ] && : > "$out"
exit 0
SH
  chmod +x "$FAKE/nvcc"
  export NVCC="$FAKE/nvcc" PATH="$FAKE:$PATH"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check}" \
    cargo clippy --features cuda --all-targets -- -D warnings
  exit 0
fi

# A target folder of its own, so the CUDA build neither clobbers nor is clobbered by the CPU one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/gpu-build}"
cargo build --release --features cuda --bin mmlab --example flash_bench
TEST_BIN=$(cargo test --release --features cuda --test cuda --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])' | tail -1)
[ -n "$TEST_BIN" ] || { echo "no test binary for tests/cuda.rs" >&2; exit 1; }

OUTB=target/gpu-bundle
rm -rf "$OUTB" && mkdir -p "$OUTB"
for pair in "$CARGO_TARGET_DIR/release/mmlab:mmlab" \
  "$CARGO_TARGET_DIR/release/examples/flash_bench:flash_bench" "$TEST_BIN:cuda_tests"; do
  src=${pair%%:*} dst=${pair##*:}
  strip -o "$OUTB/$dst" "$src"
  xz -T0 -6 "$OUTB/$dst"
done
git rev-parse HEAD > "$OUTB/COMMIT"
du -ah "$OUTB"
echo "bundle ready: carry target/gpu-bundle and run benches/gpu.sh on the GPU machine"
