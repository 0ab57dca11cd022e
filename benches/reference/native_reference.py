#!/usr/bin/env python3
"""Independent PyTorch reference of the native (Fuyu-style) model, for tests/model_reference.rs.

Run by hand (CI has no Python ML stack); it rewrites tests/fixtures/model/native_ref_*.safetensors,
which are committed:

    /work/venv/bin/python benches/reference/native_reference.py

Made with torch 2.15.0, safetensors 0.8.0, numpy 2.4.6. Plain PyTorch, no transformers.

The architecture is re-implemented here from the Rust source (src/model/{config,layers,native}.rs),
not translated from it line by line:

* input embeddings: token embedding rows, with the rows at image-patch / audio-frame
  placeholders replaced by `vision_embed(patch)` / `audio_embed(frame)` (linear + bias);
* pre-norm blocks `x + attn(norm(x))`, `x + mlp(norm(x))`, LayerNorm (weight + bias) or
  RMSNorm (weight), eps inside the square root;
* attention: q/k/v/dense linears with bias, optional QK-LayerNorm over the head dimension
  (shared over heads, before rotary), GPT-NeoX rotate-half rotary on the first `rotary_dim`
  channels of every head with `inv_freq_i = theta^(-2i/rotary_dim)`, grouped KV heads
  (query head j reads KV head j // (n_heads / n_kv_heads)), scale 1/sqrt(head_dim),
  additive mask = causal and padded keys masked (a row with no key left sees itself);
* MLP: relu(x W1)^2 (relu2) or silu(x Wg) * (x W1) (swiglu), then W2;
* final norm, untied `lm_head` (no bias) or tied `embed_tokens`;
* loss: mean NLL of every target token, predicted from the position before it.

The optimiser step is torch.optim.AdamW itself (two parameter groups: weight decay 0.1 on
rank-2 weights except `embed_tokens.weight`, 0 elsewhere), lr 1e-2, betas (0.9, 0.999),
eps 1e-8, after scaling every gradient by min(1, 1 / global L2 norm) (clip to 1.0).

Numerics: the initial weights are drawn in float32, rounded to values that float16 holds
exactly and stored as F16 (lossless; keeps each file under 200 KB). Everything else is
computed in float64 from those exact values and stored as float32, so a Rust (float32)
mismatch measures Rust's error only.

Fixture layout (one safetensors file per config, metadata `config` = the Rust ModelConfig
as JSON, plus `lr`, `weight_decay`, `betas`, `eps`, `grad_clip`):

* `<name>`: initial weight (F16), under the Rust VarBuilder name;
* `in.tokens` (i64, b x t), `in.positions` (i64, b x t), `in.attention_mask` (u8, b x t),
  `in.target_mask` (u8, b x t), `in.patches` (f32, n_patches x patch_dim),
  `in.patch_positions` (i64, flat index b*t+i), `in.frames` (f32, n_frames x frame_dim),
  `in.frame_positions` (i64);
* `out.logits` (f32, b x t x vocab, every position), `out.loss` (f32, scalar),
  `out.grad_norm` (f64, scalar, before clipping);
* `grad.<name>` (f32): gradient of `out.loss` (unscaled);
* `upd.<name>` (f32): the weight after one AdamW step.
"""

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
DT = torch.float64

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "model")

LR, WD, BETAS, EPS, CLIP = 1e-2, 0.1, (0.9, 0.999), 1e-8, 1.0

CONFIGS = {
    # LayerNorm, QK-norm, partial rotary, GQA, relu2, untied head.
    "ln_gqa": dict(
        vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
        norm="layer_norm", norm_eps=1e-5, qk_norm=True, rope_theta=25000.0, partial_rotary_factor=0.5,
        activation="relu2", patch_dim=12, frame_dim=8, tie_embeddings=False,
    ),
    # RMSNorm, no QK-norm, full rotary, MHA, swiglu, tied embeddings.
    "rms_tied": dict(
        vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=32, max_seq_len=64,
        norm="rms_norm", norm_eps=1e-6, qk_norm=False, rope_theta=10000.0, partial_rotary_factor=1.0,
        activation="swi_glu", patch_dim=12, frame_dim=8, tie_embeddings=True,
    ),
}


def head_dim(c):
    return c["d_model"] // c["n_heads"]


def rotary_dim(c):
    r = int(round(head_dim(c) * c["partial_rotary_factor"]))
    return r - r % 2


def param_shapes(c):
    """Every parameter, by its Rust VarBuilder name."""
    d, hd, ff = c["d_model"], head_dim(c), c["d_ff"]
    s = {"embed_tokens.weight": (c["vocab_size"], d)}

    def lin(name, i, o, bias=True):
        s[f"{name}.weight"] = (o, i)
        if bias:
            s[f"{name}.bias"] = (o,)

    def norm(name, n, kind):
        s[f"{name}.weight"] = (n,)
        if kind == "layer_norm":
            s[f"{name}.bias"] = (n,)

    if c["patch_dim"]:
        lin("vision_embed", c["patch_dim"], d)
    if c["frame_dim"]:
        lin("audio_embed", c["frame_dim"], d)
    for l in range(c["n_layers"]):
        p = f"layers.{l}"
        norm(f"{p}.input_layernorm", d, c["norm"])
        lin(f"{p}.self_attn.q_proj", d, c["n_heads"] * hd)
        lin(f"{p}.self_attn.k_proj", d, c["n_kv_heads"] * hd)
        lin(f"{p}.self_attn.v_proj", d, c["n_kv_heads"] * hd)
        lin(f"{p}.self_attn.dense", c["n_heads"] * hd, d)
        if c["qk_norm"]:
            norm(f"{p}.self_attn.q_layernorm", hd, "layer_norm")
            norm(f"{p}.self_attn.k_layernorm", hd, "layer_norm")
        norm(f"{p}.post_attention_layernorm", d, c["norm"])
        lin(f"{p}.mlp.dense_h_to_4h", d, ff)
        if c["activation"] == "swi_glu":
            lin(f"{p}.mlp.gate_proj", d, ff)
        lin(f"{p}.mlp.dense_4h_to_h", ff, d)
    norm("final_layernorm", d, c["norm"])
    if not c["tie_embeddings"]:
        lin("lm_head", d, c["vocab_size"], bias=False)
    return s


def init_weights(c, gen):
    """Random weights with O(1) activations; norm weights near 1, biases small but non-zero."""
    w = {}
    for name, shape in param_shapes(c).items():
        if name == "embed_tokens.weight":  # tied: it is also the head, keep logits O(1)
            t = torch.randn(shape, generator=gen) / (math.sqrt(shape[1]) if c["tie_embeddings"] else 1.0)
        elif "layernorm" in name and name.endswith(".weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.2 * torch.randn(shape, generator=gen)
        else:  # linear weight (out, in)
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        w[name] = t.to(torch.float16)  # exactly representable; stored as F16
    return w


def make_inputs(c, gen):
    """Two sequences, right-padded: one with 4 image patches, one (shorter) with 3 audio frames."""
    IMG, NL, AUD, PAD = 3, 4, 5, 0  # placeholder ids used nowhere else; PAD only in padding
    # seq 0 (len 14): text, 2x2 patches with a newline after each row, question, answer
    s0 = [1, 17, IMG, IMG, NL, IMG, IMG, NL, 23, 9, 41, 12, 33, 2]
    t0 = [0] * 11 + [1, 1, 1]
    p0 = [2, 3, 5, 6]
    # seq 1 (len 10): text, 3 audio frames, question, answer
    s1 = [1, 8, AUD, AUD, AUD, 30, 44, 27, 19, 2]
    t1 = [0] * 7 + [1, 1, 1]
    f1 = [2, 3, 4]
    b, t = 2, max(len(s0), len(s1))
    tokens = torch.full((b, t), PAD, dtype=torch.int64)
    positions = torch.zeros((b, t), dtype=torch.int64)
    amask = torch.zeros((b, t), dtype=torch.uint8)
    tmask = torch.zeros((b, t), dtype=torch.uint8)
    for i, (s, tm) in enumerate([(s0, t0), (s1, t1)]):
        n = len(s)
        tokens[i, :n] = torch.tensor(s)
        positions[i, :n] = torch.arange(n)
        amask[i, :n] = 1
        tmask[i, :n] = torch.tensor(tm, dtype=torch.uint8)
    patches = torch.randn((len(p0), c["patch_dim"]), generator=gen)
    frames = torch.randn((len(f1), c["frame_dim"]), generator=gen)
    return dict(
        tokens=tokens, positions=positions, attention_mask=amask, target_mask=tmask,
        patches=patches, patch_positions=torch.tensor([0 * t + p for p in p0], dtype=torch.int64),
        frames=frames, frame_positions=torch.tensor([1 * t + p for p in f1], dtype=torch.int64),
    )


# --- the model ------------------------------------------------------------------------------


def norm_fn(x, w, b, eps):
    if b is not None:  # LayerNorm
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w + b
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w  # RMSNorm


def rope(x, pos, rdim, theta):
    """NeoX rotate-half on the first rdim channels; x (b, h, t, hd), pos (b, t)."""
    if rdim == 0:
        return x
    half = rdim // 2
    inv = theta ** (-torch.arange(0, half, dtype=DT) * 2.0 / rdim)
    ang = pos.to(DT)[:, None, :, None] * inv  # (b, 1, t, half)
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2, rest = x[..., :half], x[..., half:rdim], x[..., rdim:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def additive_mask(valid):
    """(b, 1, t, t): 0 where query i may see key j (j <= i and key j real), -inf elsewhere."""
    b, t = valid.shape
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    ok = causal[None] & valid.bool()[:, None, :]
    eye = torch.eye(t, dtype=torch.bool)[None].expand(b, t, t)
    ok = torch.where(ok.any(-1, keepdim=True), ok, eye)  # a row with no key sees itself
    m = torch.zeros((b, t, t), dtype=DT).masked_fill(~ok, float("-inf"))
    return m[:, None]


def forward(c, W, inp):
    """Returns logits (b, t, vocab)."""
    b, t = inp["tokens"].shape
    d, H, KV, hd = c["d_model"], c["n_heads"], c["n_kv_heads"], head_dim(c)
    eps, kind = c["norm_eps"], c["norm"]
    g = lambda name: W.get(name)

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        bias = g(name + ".bias")
        return y if bias is None else y + bias

    def nrm(x, name):
        return norm_fn(x, W[name + ".weight"], g(name + ".bias"), eps)

    x = W["embed_tokens.weight"][inp["tokens"].reshape(-1)]  # (b*t, d)
    x = x.clone()
    if len(inp["patch_positions"]):
        x[inp["patch_positions"]] = lin(inp["patches"].to(DT), "vision_embed")
    if len(inp["frame_positions"]):
        x[inp["frame_positions"]] = lin(inp["frames"].to(DT), "audio_embed")
    x = x.reshape(b, t, d)

    mask = additive_mask(inp["attention_mask"])
    pos = inp["positions"]
    rdim = rotary_dim(c)
    for l in range(c["n_layers"]):
        p = f"layers.{l}"
        h = nrm(x, f"{p}.input_layernorm")
        q = lin(h, f"{p}.self_attn.q_proj").reshape(b, t, H, hd).transpose(1, 2)
        k = lin(h, f"{p}.self_attn.k_proj").reshape(b, t, KV, hd).transpose(1, 2)
        v = lin(h, f"{p}.self_attn.v_proj").reshape(b, t, KV, hd).transpose(1, 2)
        if c["qk_norm"]:
            q = norm_fn(q, W[f"{p}.self_attn.q_layernorm.weight"], W[f"{p}.self_attn.q_layernorm.bias"], eps)
            k = norm_fn(k, W[f"{p}.self_attn.k_layernorm.weight"], W[f"{p}.self_attn.k_layernorm.bias"], eps)
        q = rope(q, pos, rdim, c["rope_theta"])
        k = rope(k, pos, rdim, c["rope_theta"])
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, t, H * hd)
        x = x + lin(o, f"{p}.self_attn.dense")
        h = nrm(x, f"{p}.post_attention_layernorm")
        up = lin(h, f"{p}.mlp.dense_h_to_4h")
        if c["activation"] == "relu2":
            a = torch.relu(up) ** 2
        elif c["activation"] == "swi_glu":
            a = F.silu(lin(h, f"{p}.mlp.gate_proj")) * up
        else:
            raise ValueError(c["activation"])
        x = x + lin(a, f"{p}.mlp.dense_4h_to_h")
    x = nrm(x, "final_layernorm")
    head = W["embed_tokens.weight"] if c["tie_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def loss_fn(logits, inp):
    """Mean NLL over the target tokens, each predicted from the previous position."""
    tok, tm = inp["tokens"], inp["target_mask"].bool()
    pred = logits[:, :-1][tm[:, 1:]]  # (n, vocab)
    tgt = tok[:, 1:][tm[:, 1:]]
    return -torch.log_softmax(pred, -1).gather(1, tgt[:, None]).mean()


# --- the fixture ----------------------------------------------------------------------------


def canonical_header(path):
    """Rewrites the safetensors header with sorted keys (the writer orders metadata at random),
    so that rerunning the script reproduces the committed files byte for byte."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def build(name, c, seed):
    gen = torch.Generator().manual_seed(seed)
    w16 = init_weights(c, gen)
    inp = make_inputs(c, gen)
    params = {k: torch.nn.Parameter(v.to(DT)) for k, v in w16.items()}

    logits = forward(c, params, inp)
    loss = loss_fn(logits, inp)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = min(1.0, CLIP / norm)
    decay = [p for k, p in params.items() if p.dim() == 2 and k != "embed_tokens.weight"]
    no_decay = [p for k, p in params.items() if not (p.dim() == 2 and k != "embed_tokens.weight")]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=WD), dict(params=no_decay, weight_decay=0.0)],
        lr=LR, betas=BETAS, eps=EPS, foreach=False,
    )
    with torch.no_grad():
        for p in params.values():
            p.grad.mul_(scale)
    opt.step()

    out = {}
    for k, v in w16.items():
        out[k] = v.contiguous()
    for k, v in inp.items():
        out[f"in.{k}"] = v.contiguous()
    out["out.logits"] = logits.detach().float().contiguous()
    out["out.loss"] = loss.detach().float().reshape(())
    out["out.grad_norm"] = torch.tensor(norm, dtype=torch.float64)
    for k, p in params.items():
        out[f"grad.{k}"] = grads[k].float().contiguous()
        out[f"upd.{k}"] = p.detach().float().contiguous()
    meta = {
        "config": json.dumps(c),
        "lr": repr(LR), "weight_decay": repr(WD), "betas": json.dumps(BETAS), "eps": repr(EPS),
        "grad_clip": repr(CLIP), "seed": str(seed),
        "made_with": f"torch {torch.__version__.split('+')[0]}, benches/reference/native_reference.py",
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, f"native_ref_{name}.safetensors")
    save_file(out, path, metadata=meta)
    canonical_header(path)
    n_par = sum(v.numel() for v in w16.values())
    print(f"{name}: {n_par} params, loss {loss.item():.6f}, grad norm {norm:.4f} (clip scale {scale:.4f}), "
          f"{os.path.getsize(path)} bytes -> {os.path.relpath(path, ROOT)}")


def main():
    for i, (name, c) in enumerate(CONFIGS.items()):
        build(name, c, seed=1234 + i)


if __name__ == "__main__":
    main()
