#!/usr/bin/env python3
"""Side by side: training steps of a preset in mmlab (candle) and in PyTorch eager, same model,
same initial weights, same batches, same thread count, in one run.

    cargo build --release
    /work/venv/bin/python benches/reference/train_side_by_side.py \
        --model fuyu-d32,fuyu-d64,fuyu-d128,fuyu-small,fuyu-base --threads 1,2 [--steps 40] [--rounds 3]

`fuyu-d<W>` is the scaling study's native model of width W (its batch of 64); the presets use
their recipe's batch.

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
   - `compile`: the fused-ops step under torch.compile (inductor on CPU, dynamic shapes), what
     a PyTorch user would try next; compiled on every batch once before timing.
3. The sides run in alternating rounds (mmlab, eager, compile, then again); the table gives
   each side's median tokens/s and MFU and the ratio mmlab / PyTorch as the median of the
   rounds' ratios with their range, and the largest loss difference from mmlab (both sides
   train the same model on the same data, so the losses agree to float32 rounding).

Thread count: `--threads N` is passed to mmlab (`mmlab --threads N`, which cuts each batch into
N shards of examples, one per thread) and sets torch.set_num_threads(N).
"""

import argparse
import json
import os
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


class TorchSide:
    """PyTorch training (forward, loss, backward, clip, AdamW) of the dumped model. `compiled`
    wraps the fused-ops loss in torch.compile (inductor, dynamic shapes: batches differ in
    length) once; `reset` puts the initial weights back and starts a new optimiser, so every
    round trains the same steps without compiling again."""

    def __init__(self, c, meta, weights, fused, compiled):
        self.meta, self.weights = meta, weights
        self.W = {k: torch.nn.Parameter(v.clone().float()) for k, v in weights.items()}
        fn = (lambda inp: loss_of(c, self.W, inp, fused))
        self.fn = torch.compile(fn, dynamic=True) if compiled else fn
        self.params = list(self.W.values())
        self.reset()

    def reset(self):
        with torch.no_grad():
            for k, p in self.W.items():
                p.copy_(self.weights[k].float())
        o = self.meta["optim"]
        decay = [p for k, p in self.W.items() if p.dim() == 2 and "embed_tokens" not in k]
        rest = [p for k, p in self.W.items() if not (p.dim() == 2 and "embed_tokens" not in k)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
            lr=self.meta["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
        )

    def __call__(self, inp):
        self.opt.zero_grad(set_to_none=True)
        loss = self.fn(inp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.meta["grad_clip"])
        self.opt.step()
        return float(loss.detach())


def time_torch(step, batches, warmup):
    """Trains on `batches` (the first `warmup` untimed); tokens/s of the rest, and all losses."""
    losses, tokens = [], 0
    for i, inp in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        losses.append(step(inp))
        if i >= warmup:
            tokens += int(inp["attention_mask"].sum())
    secs = time.perf_counter() - t0
    return dict(tokens_per_s=tokens / secs, seconds=secs, tokens=tokens, losses=losses)


def run_mmlab(args, model, threads, dump=None):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [args.mmlab, "--threads", str(threads), "bench", "train", "--model", model, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--lr", str(args.lr), "--json"]
    if dump:
        cmd += ["--dump", dump]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def side_by_side(args, model, threads):
    """Alternating rounds of mmlab, PyTorch eager (fused ops) and, unless --no-compile,
    torch.compile, on the same weights and batches; returns one row of the table."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "batches.safetensors")
        first = run_mmlab(args, model, threads, dump)
        tensors = load_file(dump)
        with open(os.path.join(tmp, "batches.json")) as f:
            meta = json.load(f)
    meta["lr"] = args.lr
    c = config_dict(meta["model"])
    n = args.steps + args.warmup
    batches = batches_of(tensors, n)
    weights = {k: v for k, v in tensors.items() if not k.startswith("batch")}
    sides = {"eager": TorchSide(c, meta, weights, fused=True, compiled=False)}
    if args.reference:
        sides["reference"] = TorchSide(c, meta, weights, fused=False, compiled=False)
    compile_s = None
    if not args.no_compile:
        t = time.perf_counter()
        # Compiles (and recompiles for new shapes) on every batch once, before any timing.
        side = TorchSide(c, meta, weights, fused=True, compiled=True)
        for inp in batches:
            side(inp)
        compile_s = time.perf_counter() - t
        sides["compile"] = side
    rounds = {"mmlab": [], **{k: [] for k in sides}}
    losses = {}
    for r in range(args.rounds):
        rust = first if r == 0 else run_mmlab(args, model, threads)
        rounds["mmlab"].append(rust)
        for name, side in sides.items():
            side.reset()
            res = time_torch(side, batches, args.warmup)
            rounds[name].append(res)
            losses[name] = res["losses"]
    peak = median([x["matmul_peak_flops_per_s"] for x in rounds["mmlab"]])
    fpt = first["model_flops"] / first["tokens"]
    row = dict(model=model, parameters=first["parameters"], threads=threads, rounds=args.rounds,
               tokens_per_step=first["tokens"] / args.steps, matmul_peak_gflops=peak / 1e9,
               compile_seconds=compile_s, split=dict(
                   forward=median([x["forward_s"] / x["seconds"] for x in rounds["mmlab"]]),
                   backward=median([x["backward_s"] / x["seconds"] for x in rounds["mmlab"]]),
                   optimiser=median([x["optimiser_s"] / x["seconds"] for x in rounds["mmlab"]])))
    for name, rs in rounds.items():
        tps = [x["tokens_per_s"] for x in rs]
        row[name] = dict(tokens_per_s=median(tps), mfu=median(tps) * fpt / peak, all=tps)
    for name in sides:
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(rounds["mmlab"], rounds[name])]
        row[name]["ratio"] = dict(median=median(ratios), lo=min(ratios), hi=max(ratios))
        row[name]["max_loss_diff"] = max(abs(a - b) for a, b in zip(first["losses"], losses[name]))
        row[name]["loss_diffs"] = [abs(a - b) for a, b in zip(first["losses"], losses[name])]
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fuyu-small",
                    help="comma-separated: presets, or fuyu-d<W> (the scaling study's native model of width W)")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--reference", action="store_true",
                    help="also time native_reference.py's forward as written (explicit LayerNorm, softmax)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--mmlab", default=os.path.join(ROOT, "target", "release", "mmlab"))
    args = ap.parse_args()
    ref.DT = torch.float32
    rows = []
    for model in args.model.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            row = side_by_side(args, model, threads)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} alternating rounds; "
          f"torch {torch.__version__}; ratio = mmlab tokens/s over PyTorch's, median [min, max] of the rounds\n")
    cols = ["eager"] + (["compile"] if not args.no_compile else []) + (["reference"] if args.reference else [])
    head = f"| model | params | threads | mmlab tok/s | mmlab MFU |"
    for cname in cols:
        head += f" {cname} tok/s | mmlab / {cname} |"
    print(head)
    print("|" + "---|" * (5 + 2 * len(cols)))
    for r in rows:
        line = (f"| {r['model']} | {r['parameters'] / 1e3:.0f}k | {r['threads']} | {r['mmlab']['tokens_per_s']:,.0f} "
                f"| {100 * r['mmlab']['mfu']:.1f}% |")
        for cname in cols:
            q = r[cname]["ratio"]
            line += (f" {r[cname]['tokens_per_s']:,.0f} ({100 * r[cname]['mfu']:.0f}%) "
                     f"| {q['median']:.2f}x [{q['lo']:.2f}, {q['hi']:.2f}] |")
        print(line)
    print()
    for r in rows:
        s = r["split"]
        extra = f", torch.compile took {r['compile_seconds']:.0f} s" if r["compile_seconds"] is not None else ""
        diffs = ", ".join(f"{k} {r[k]['loss_diffs'][0]:.0e} / {r[k]['max_loss_diff']:.0e}" for k in cols)
        print(f"{r['model']} x{r['threads']}: {r['tokens_per_step']:.0f} tokens/step; mmlab split forward "
              f"{100 * s['forward']:.0f}% backward {100 * s['backward']:.0f}% clip+AdamW {100 * s['optimiser']:.0f}%; "
              f"matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; |loss - mmlab's| at the first step / largest over all: {diffs}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
