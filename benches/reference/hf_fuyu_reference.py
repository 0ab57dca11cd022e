#!/usr/bin/env python3
"""A tiny random HF Fuyu checkpoint with transformers' logits and greedy generations, for tests/hf_fuyu.rs.

Run by hand (CI has no Python ML stack); it rewrites tests/fixtures/hf_fuyu/:

    /work/venv/bin/python benches/reference/hf_fuyu_reference.py

Made with transformers 5.24.0, torch 2.15.0 (CPU), tokenizers, pillow, numpy.

What it writes:
- `tiny/`: a `FuyuForCausalLM` directory exactly as `save_pretrained` lays it out
  (config.json with the Persimmon text_config, weights in bf16 sharded into
  `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`) plus
  `tokenizer.json`. 2 layers, hidden 64, 4 heads, MLP 256, vocab 1024, patch 30.
- `expected.json`: for each (image, prompt) pair the ids FuyuProcessor builds, the
  image grid, and the greedy ids of `generate` (alone, and both pairs in one
  left-padded batch); `logits_<k>.f32`: little-endian f32 `(seq, vocab)` logits of
  pair k run alone.

The reference numbers come from the checkpoint *as saved*: the directory is loaded
back with `from_pretrained(..., dtype=float32)` (bf16 weights widened to f32), so the
Rust side, which widens the same bf16 values, computes with identical weights.

The tokenizer is the committed Fuyu-like one (tests/fixtures/fusion/fuyu_like_tokenizer.json).
The prompt ids are built here as FuyuProcessor lays them out, not by calling its text path:
in 5.24 that path tokenises the placeholder string `|SPEAKER|...|NEWLINE|<s>` and drops
the first id (`[..., 1:]`, expecting the leading `▁` Fuyu's own tokenizer emits) and
appends `<0x04>` as *text*; with any tokenizer.json that does not behave exactly like
adept/fuyu-8b's it loses an image token and fails its own count check. So the script takes
the image patches and the placeholder string from `FuyuProcessor._process_images`, checks
that our ids spell that string, and then appends the prompt's ids and the `<0x04>` id
(what 4.x's processor did by id): image placeholders with `|NEWLINE|` after each row,
`<s>`, the prompt, `<0x04>`. The batch is padded on the left with id 0, as the processor
does.

Images: tests/fixtures/fusion/fuyu_ragged.png (47x71, not a multiple of 30: 2x3 patches)
and fuyu_exact.png (90x120: 3x4 patches), both smaller than 1080x1920 so the two HF image
processor backends agree exactly.

Weights are drawn with a larger spread than HF's init (std 0.02 gives near-flat logits):
the script reports the smallest top-1/top-2 logit margin along every greedy path, so a
tie cannot make the token comparison flaky.
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from transformers import FuyuConfig, FuyuForCausalLM, FuyuProcessor, PreTrainedTokenizerFast
from transformers.models.fuyu.image_processing_fuyu import FuyuImageProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUSION = os.path.join(ROOT, "tests", "fixtures", "fusion")
OUT = os.path.join(ROOT, "tests", "fixtures", "hf_fuyu")
TINY = os.path.join(OUT, "tiny")

PAIRS = [
    ("fuyu_ragged.png", "Generate a coco-style caption."),
    ("fuyu_exact.png", "Is there a ring in the image?"),
]
MAX_NEW = 10
VOCAB = 1024


def make_tokenizer(path):
    shutil.copy(os.path.join(FUSION, "fuyu_like_tokenizer.json"), path)
    return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="|ENDOFTEXT|", unk_token="<unk>")


def make_config(tok):
    return FuyuConfig(
        text_config={
            "model_type": "persimmon",
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "hidden_act": "relu2",
            "layer_norm_eps": 1e-5,
            "qk_layernorm": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 25000.0, "partial_rotary_factor": 0.5},
            "bos_token_id": tok.convert_tokens_to_ids("<s>"),
            "eos_token_id": tok.convert_tokens_to_ids("|ENDOFTEXT|"),
            "pad_token_id": 0,
        },
        image_token_id=tok.convert_tokens_to_ids("|SPEAKER|"),
        patch_size=30,
        num_channels=3,
        tie_word_embeddings=False,
    )


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5))


def ours(tok, rows, cols, prompt):
    """The layout mmlab's builder makes (BosPlacement::AfterLeadingImages)."""
    image, newline = tok.convert_tokens_to_ids(["|SPEAKER|", "|NEWLINE|"])
    ids = ([image] * cols + [newline]) * rows
    ids += [tok.convert_tokens_to_ids("<s>")]
    ids += tok.encode(prompt, add_special_tokens=False)
    ids += [tok.convert_tokens_to_ids("<0x04>")]
    return ids


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(TINY)
    tok = make_tokenizer(os.path.join(TINY, "tokenizer.json"))
    proc = FuyuProcessor(image_processor=FuyuImageProcessor(), tokenizer=tok)
    torch.manual_seed(0)
    model = FuyuForCausalLM(make_config(tok)).eval()
    randomise(model, 0)
    model.to(torch.bfloat16).save_pretrained(TINY, max_shard_size="300KB")
    model = FuyuForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
    model.generation_config.pad_token_id = 0

    images = [Image.open(os.path.join(FUSION, f)).convert("RGB") for f, _ in PAIRS]
    expected = {"pairs": [], "max_new_tokens": MAX_NEW, "transformers": __import__("transformers").__version__}
    min_margin = float("inf")
    singles = []
    for k, ((fname, prompt), img) in enumerate(zip(PAIRS, images)):
        processed, replacements = proc._process_images([img], return_legacy_image_output=False)
        patches = processed["pixel_values"]
        w, h = img.size
        rows, cols = -(-h // 30), -(-w // 30)
        ids = ours(tok, rows, cols, prompt)
        n_place = rows * (cols + 1) + 1
        assert "".join(tok.convert_ids_to_tokens(ids[:n_place])) == replacements[0], replacements[0]
        assert patches.shape == (rows * cols, 2700), patches.shape
        singles.append((ids, patches))
        inp = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "image_patches": patches,
        }
        with torch.no_grad():
            logits = model(**inp).logits[0].float().numpy()
            gen = model.generate(**inp, max_new_tokens=MAX_NEW, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        new = gen.sequences[0, len(ids):].tolist()
        for step in gen.logits:
            top = torch.topk(step[0].float(), 2).values
            min_margin = min(min_margin, float(top[0] - top[1]))
        logits.astype("<f4").tofile(os.path.join(OUT, f"logits_{k}.f32"))
        expected["pairs"].append({
            "image": fname, "prompt": prompt, "rows": rows, "cols": cols, "input_ids": ids,
            "logits": f"logits_{k}.f32", "generated": new,
        })
        print(f"pair {k}: {len(ids)} tokens, grid {rows}x{cols}, generated {new}")

    # Both pairs in one batch, padded on the left with id 0 as FuyuProcessor pads; generate
    # derives position ids from the attention mask.
    t = max(len(i) for i, _ in singles)
    input_ids = torch.tensor([[0] * (t - len(i)) + i for i, _ in singles])
    mask = torch.tensor([[0] * (t - len(i)) + [1] * len(i) for i, _ in singles])
    inp = {"input_ids": input_ids, "attention_mask": mask, "image_patches": torch.cat([p for _, p in singles])}
    with torch.no_grad():
        gen = model.generate(**inp, max_new_tokens=MAX_NEW, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    expected["batched_input_ids"] = input_ids.tolist()
    expected["batched_attention_mask"] = mask.tolist()
    expected["batched_generated"] = gen.sequences[:, t:].tolist()
    for step in gen.logits:
        top = torch.topk(step.float(), 2, dim=-1).values
        min_margin = min(min_margin, float((top[:, 0] - top[:, 1]).min()))
    print("batched:", expected["batched_generated"])
    expected["min_top2_margin"] = min_margin
    print(f"smallest top-1/top-2 margin on the greedy paths: {min_margin:.4f}")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"fixture: {total / 1e6:.2f} MB in {OUT}")
    print(sorted(os.listdir(TINY)))


if __name__ == "__main__":
    main()
