#!/usr/bin/env python3
"""Side by side: training steps of a preset in mmlab (candle) and in PyTorch eager, same model,
same initial weights, same batches, same thread count, in one run.

    cargo build --release
    /work/venv/bin/python benches/reference/train_side_by_side.py [--model fuyu-small] [--steps 40] [--threads 1]

1. `mmlab bench train --dump F` makes the recipe's batches (synthetic scenes and sounds,
   seed 0), writes them with the initial weights to F, then times forward + loss + backward +
   clip + AdamW on them and reports tokens/s, the forward/backward/optimiser split, model
   FLOP/s against its measured matmul peak (MFU) and peak RSS.
2. This script loads F and trains the same model with PyTorch (float32, eager), using the
   architecture of `native_reference.py` (the independent re-implementation the parity
   fixtures come from), torch.optim.AdamW with the same two parameter groups and
   `clip_grad_norm_`, for the same steps. Two PyTorch variants are timed:
   - `reference`: native_reference.py's forward as written (explicit LayerNorm and softmax);
   - `fused-ops`: the same with F.layer_norm and F.scaled_dot_product_attention, as a
     PyTorch user would write it.
3. It prints tokens/s of each, the ratio, and the first losses of both sides (they train
   the same model on the same data, so the losses agree to float32 rounding).

Thread count: `--threads N` is passed to mmlab (`mmlab --threads N`, which cuts each batch into
N shards of examples, one per thread) and sets torch.set_num_threads(N).
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import native_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_dict(m):
    act = {"relu2": "relu2", "swi_glu": "swi_glu", "gelu": "gelu"}[m["activation"]]
    c = dict(m)
    c["activation"] = act
    return c


def batches_of(t, n):
    out = []
    for i in range(n):
        p = f"batch{i}."
        out.append({k[len(p):]: v for k, v in t.items() if k.startswith(p)})
    return out


def forward_fused(c, W, inp):
    """native_reference.forward with F.layer_norm and scaled_dot_product_attention."""
    b, t = inp["tokens"].shape
    d, H, KV, hd = c["d_model"], c["n_heads"], c["n_kv_heads"], ref.head_dim(c)
    eps = c["norm_eps"]

    def lin(x, name):
        return F.linear(x, W[name + ".weight"], W.get(name + ".bias"))

    def nrm(x, name, n):
        return F.layer_norm(x, (n,), W[name + ".weight"], W.get(name + ".bias"), eps)

    x = W["embed_tokens.weight"][inp["tokens"].reshape(-1)].clone()
    if len(inp["patch_positions"]):
        x[inp["patch_positions"]] = lin(inp["patches"], "vision_embed")
    if len(inp["frame_positions"]):
        x[inp["frame_positions"]] = lin(inp["frames"], "audio_embed")
    x = x.reshape(b, t, d)
    mask = ref.additive_mask(inp["attention_mask"])
    pos = inp["positions"]
    rdim = ref.rotary_dim(c)
    for l in range(c["n_layers"]):
        p = f"layers.{l}"
        h = nrm(x, f"{p}.input_layernorm", d)
        q = lin(h, f"{p}.self_attn.q_proj").reshape(b, t, H, hd).transpose(1, 2)
        k = lin(h, f"{p}.self_attn.k_proj").reshape(b, t, KV, hd).transpose(1, 2)
        v = lin(h, f"{p}.self_attn.v_proj").reshape(b, t, KV, hd).transpose(1, 2)
        if c["qk_norm"]:
            q = nrm(q, f"{p}.self_attn.q_layernorm", hd)
            k = nrm(k, f"{p}.self_attn.k_layernorm", hd)
        q = ref.rope(q, pos, rdim, c["rope_theta"])
        k = ref.rope(k, pos, rdim, c["rope_theta"])
        if H != KV:
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + lin(o.transpose(1, 2).reshape(b, t, H * hd), f"{p}.self_attn.dense")
        h = nrm(x, f"{p}.post_attention_layernorm", d)
        up = lin(h, f"{p}.mlp.dense_h_to_4h")
        a = torch.relu(up) ** 2 if c["activation"] == "relu2" else F.silu(lin(h, f"{p}.mlp.gate_proj")) * up
        x = x + lin(a, f"{p}.mlp.dense_4h_to_h")
    x = nrm(x, "final_layernorm", d)
    head = W["embed_tokens.weight"] if c["tie_embeddings"] else W["lm_head.weight"]
    return x, head


def loss_of(c, W, inp, fused):
    tok, tm = inp["tokens"], inp["target_mask"].bool()
    sel = tm[:, 1:]
    if fused:
        x, head = forward_fused(c, W, inp)
        h = x[:, :-1][sel]  # only the rows that predict a target go through the head, as in mmlab
        return F.cross_entropy(h @ head.T, tok[:, 1:][sel])
    logits = ref.forward(c, W, inp)
    return ref.loss_fn(logits, inp)


def train_torch(c, meta, weights, batches, warmup, fused):
    W = {k: torch.nn.Parameter(v.clone().float()) for k, v in weights.items()}
    o = meta["optim"]
    decay = [p for k, p in W.items() if p.dim() == 2 and "embed_tokens" not in k]
    rest = [p for k, p in W.items() if not (p.dim() == 2 and "embed_tokens" not in k)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
        lr=meta["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
    )
    losses, tokens = [], 0
    for i, inp in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(c, W, inp, fused)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(W.values()), meta["grad_clip"])
        opt.step()
        losses.append(float(loss.detach()))
        if i >= warmup:
            tokens += int(inp["attention_mask"].sum())
    secs = time.perf_counter() - t0
    return dict(tokens_per_s=tokens / secs, seconds=secs, tokens=tokens, losses=losses)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fuyu-small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mmlab", default=os.path.join(ROOT, "target", "release", "mmlab"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref.DT = torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "batches.safetensors")
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        cmd = [args.mmlab, "--threads", str(args.threads), "bench", "train", "--model", args.model, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--lr", str(args.lr), "--dump", dump, "--json"]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rust = json.loads(out.strip().splitlines()[-1])
        tensors = load_file(dump)
        with open(os.path.join(tmp, "batches.json")) as f:
            meta = json.load(f)
    meta["lr"] = args.lr
    c = config_dict(meta["model"])
    n = args.steps + args.warmup
    batches = batches_of(tensors, n)
    weights = {k: v for k, v in tensors.items() if not k.startswith("batch")}
    ref_run = train_torch(c, meta, weights, batches, args.warmup, fused=False)
    fused_run = train_torch(c, meta, weights, batches, args.warmup, fused=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{args.model}, {args.steps} timed steps after {args.warmup} warm-up, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    print(f"  mmlab (candle)            {rust['tokens_per_s']:8.0f} tokens/s   "
          f"(forward {100 * rust['forward_s'] / rust['seconds']:.0f}%, backward "
          f"{100 * rust['backward_s'] / rust['seconds']:.0f}%, clip+AdamW {100 * rust['optimiser_s'] / rust['seconds']:.0f}%; "
          f"MFU {100 * rust['mfu']:.1f}% of a {rust['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s matmul; "
          f"peak RSS {rust['peak_rss_bytes'] / 1e6:.0f} MB)")
    flops_per_token = rust["model_flops"] / rust["tokens"]
    for name, r in [("pytorch eager, reference", ref_run), ("pytorch eager, fused ops", fused_run)]:
        mfu = r["tokens_per_s"] * flops_per_token / rust["matmul_peak_flops_per_s"]
        print(f"  {name:25s} {r['tokens_per_s']:8.0f} tokens/s   (MFU {100 * mfu:.1f}%)   "
              f"mmlab / this = {rust['tokens_per_s'] / r['tokens_per_s']:.2f}x")
    print(f"  python peak RSS {rss / 1e6:.0f} MB")
    print("  first losses  mmlab   ", " ".join(f"{x:.5f}" for x in rust["losses"][:6]))
    print("  first losses  torch   ", " ".join(f"{x:.5f}" for x in ref_run["losses"][:6]))
    print("  first losses  fused   ", " ".join(f"{x:.5f}" for x in fused_run["losses"][:6]))
    worst = max(abs(a - b) for a, b in zip(rust["losses"], ref_run["losses"]))
    print(f"  max |loss difference| mmlab vs torch reference over {n} steps: {worst:.2e}")


if __name__ == "__main__":
    main()
