"""PyTorch's scaled_dot_product_attention (flash backend) timed like examples/flash_bench.rs.

bf16, head dim 128, 16 heads, 16k tokens per batch (batch = 16384 / seq), causal and not;
forward alone, then backward alone (out.backward(dout) on a retained graph), CUDA events,
2 warm-up and N timed runs. FLOPs as FlashAttention's benchmarks count them: 4 b h s^2 d
forward (halved when causal), 2.5x that backward. One JSON object per line, like the Rust
bench, so benches/gpu.sh can put them side by side.

    python3 benches/reference/sdpa_bench.py [--seqs 1024,2048] [--iters 10]
"""

import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa


def timed(fn, iters):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    tokens, heads, hd = 16384, 16, 128
    dev = torch.device("cuda")
    torch.manual_seed(0)
    for causal in (False, True):
        for seq in [int(s) for s in a.seqs.split(",")]:
            b = max(tokens // seq, 1)
            q, k, v = (
                torch.randn(b, heads, seq, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
                for _ in range(3)
            )
            dout = torch.randn(b, heads, seq, hd, device=dev, dtype=torch.bfloat16)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                fwd = timed(lambda: sdpa(q, k, v, is_causal=causal), a.iters)
                out = sdpa(q, k, v, is_causal=causal)
                bwd = timed(lambda: out.backward(dout, retain_graph=True), a.iters)
            flops = 4.0 * b * heads * seq * seq * hd / (2.0 if causal else 1.0)
            print(
                json.dumps(
                    {
                        "impl": "torch-sdpa-flash",
                        "torch": torch.__version__,
                        "seq": seq,
                        "batch": b,
                        "heads": heads,
                        "hd": hd,
                        "causal": causal,
                        "fwd_ms": round(fwd * 1e3, 3),
                        "bwd_ms": round(bwd * 1e3, 3),
                        "fwd_tflops": round(flops / fwd / 1e12, 1),
                        "bwd_tflops": round(2.5 * flops / bwd / 1e12, 1),
                    }
                ),
                flush=True,
            )
            del q, k, v, dout, out
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
