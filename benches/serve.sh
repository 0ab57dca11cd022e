#!/usr/bin/env bash
# Questions per second of `mmlab eval pope` on fuyu-small: direct, and through `mmlab serve` at
# client concurrency 1 and 8, in alternating rounds (the machine is shared and noisy).
# Each run answers every question afresh (--no-cache) on the default test set, --limit per split.
# Usage: benches/serve.sh [ROUNDS] [LIMIT]   (build first: cargo build --release -p mmlab)
set -euo pipefail
ROUNDS=${1:-5}
LIMIT=${2:-300}
BIN=${MMLAB_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/mmlab}
WORK=$(mktemp -d)
trap 'kill $SERVE_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
"$BIN" serve --model fuyu-small --port 0 --max-batch 32 > serve.out 2> serve.err &
SERVE_PID=$!
for _ in $(seq 100); do grep -q http serve.out 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[^ ]*' serve.out)
# The default test set, written once before timing.
"$BIN" eval pope --model fuyu-small --limit 1 --no-cache --results warm > /dev/null 2>&1
q=$((3 * LIMIT))
run() { # name, args...
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" eval pope --limit "$LIMIT" --no-cache --results "r-$name" "$@" > /dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$name $(echo "$q / ($t1 - $t0)" | bc -l)"
}
for r in $(seq "$ROUNDS"); do
  run direct --model fuyu-small
  run served-c1 --model "openai:$URL" --concurrency 1
  run served-c8 --model "openai:$URL" --concurrency 8
done | tee rounds.txt
python3 - rounds.txt <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for n, v in rows: by.setdefault(n, []).append(float(v))
d = by["direct"]
for n, v in by.items():
    ratios = [a / b for a, b in zip(v, d)]
    print(f"{n:10s} median {st.median(v):7.1f} q/s  (range {min(v):.1f}-{max(v):.1f});"
          f" vs direct: median {st.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
PY
