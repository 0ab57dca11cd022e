"""Puts the JSON lines of examples/flash_bench.rs and sdpa_bench.py side by side (benches/gpu.sh).

    python3 benches/reference/side_by_side.py mmlab.jsonl torch.jsonl
"""

import json
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if "op" not in r:
                    rows[(r["causal"], r["seq"])] = r
    return rows


def main():
    ours, ref = load(sys.argv[1]), load(sys.argv[2])
    print("bf16, head dim 128, 16 heads, 16k tokens per batch; TFLOP/s (FlashAttention's FLOP count)")
    print("mmlab fwd: the default forward (64 query rows per block); m128: 128 rows per block "
          "(MMLAB_FA_FWD=m128)")
    print(f"{'causal':>6} {'seq':>6} | {'mmlab fwd':>9} {'m128 fwd':>9} {'torch fwd':>9} {'ratio':>6} "
          f"{'m128':>6} | {'mmlab bwd':>9} {'torch bwd':>9} {'ratio':>6}")
    for key in sorted(set(ours) | set(ref)):
        o, r = ours.get(key, {}), ref.get(key, {})
        def cell(d, k):
            return f"{d[k]:9.1f}" if k in d else f"{'-':>9}"
        def ratio(k, rk=None):
            rk = rk or k
            return f"{o[k] / r[rk]:6.2f}" if k in o and rk in r and r[rk] > 0 else f"{'-':>6}"
        print(f"{str(key[0]):>6} {key[1]:>6} | {cell(o, 'fwd_tflops')} {cell(o, 'fwd_tflops_m128')} "
              f"{cell(r, 'fwd_tflops')} {ratio('fwd_tflops')} {ratio('fwd_tflops_m128', 'fwd_tflops')} | "
              f"{cell(o, 'bwd_tflops')} {cell(r, 'bwd_tflops')} {ratio('bwd_tflops')}")


def fused(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("op") in ("qk_prep", "relu2"):
                    rows.append(r)
    if not rows:
        return
    print()
    print("Fused kernels against candle's ops as the model ran them before, bf16; ms per call")
    print("qk_prep: QK-LayerNorm, rotary on 64 of 128 channels, head transpose (one of q or k), "
          "16k tokens, 16 heads")
    print("relu2: bias + relu² after the MLP's up-projection, 16k tokens x 16k columns")
    print(f"{'op':>8} {'shape':>12} | {'fwd plain':>9} {'fwd fused':>9} {'speedup':>7} {'GB/s':>6} | "
          f"{'f+b plain':>9} {'f+b fused':>9} {'speedup':>7}")
    for r in sorted(rows, key=lambda r: (r["op"], r.get("seq", 0))):
        shape = f"seq {r['seq']}" if r["op"] == "qk_prep" else f"{r['rows']}x{r['cols']}"
        print(f"{r['op']:>8} {shape:>12} | {r['fwd_ms_plain']:9.3f} {r['fwd_ms_fused']:9.3f} "
              f"{r['fwd_ms_plain'] / r['fwd_ms_fused']:7.1f} {r['fused_fwd_gbs']:6.0f} | "
              f"{r['fwd_bwd_ms_plain']:9.3f} {r['fwd_bwd_ms_fused']:9.3f} "
              f"{r['fwd_bwd_ms_plain'] / r['fwd_bwd_ms_fused']:7.1f}")


if __name__ == "__main__":
    main()
    fused(sys.argv[1])
