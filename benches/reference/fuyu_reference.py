#!/usr/bin/env python3
"""Reference patches from HuggingFace's Fuyu image processors, for tests/fusion_parity.rs.

Run by hand (CI has no Python ML stack); it rewrites tests/fixtures/fusion/fuyu_*:

    /work/venv/bin/python benches/reference/fuyu_reference.py

Made with transformers 5.24.0, torch 2.15.0, torchvision, pillow 13.0.0, numpy 2.4.6.

In transformers 5.x `FuyuImageProcessor` is the torchvision backend (antialiased
bilinear resize on uint8 tensors) and `FuyuImageProcessorPil` the PIL backend
(`Image.resize(..., BILINEAR)`); both are recorded. Each image is processed as
`FuyuProcessor._process_images` does: run the image processor (resize to fit
1080x1920, pad to the box with 1, rescale, normalise), crop to
`ceil(unpadded / 30) * 30`, then `patchify_image`.

The input images are procedural (see `pattern`; tests regenerate them bit-exactly
in Rust). The three small ones are also written as PNG so the Rust test can check
its pattern against them and exercise `load_image`.

Fixture layout: `fuyu_patches.json` lists, per image and processor, the grid,
the resized size, which patches are stored (all, or 12 evenly spaced ones for the
resized images), and the names of two little-endian f32 files: the stored
patches (`n_stored x 2700`) and the sum of every patch (`rows*cols`).
"""

import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

from transformers.models.fuyu.image_processing_fuyu import FuyuImageProcessor
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "fusion")

# (name, height, width)
IMAGES = [
    ("exact", 90, 120),  # already a multiple of 30, no resize
    ("ragged", 47, 71),  # not a multiple of 30, no resize
    ("tiny", 5, 3),  # smaller than one patch
    ("large", 1500, 2600),  # over both sides -> 1080 x 1872
    ("wide", 700, 2500),  # over the width only -> 537 x 1920
    ("tall", 2400, 800),  # over the height only -> 1080 x 360
]
SUBSET = 12  # patches stored for resized images


def pattern(h, w, k):
    """Procedural RGB test image; tests/fusion_parity.rs has the same formula."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    chans = []
    for c in range(3):
        v = (x * (3 + c) + y * (5 + 2 * c) + ((x ^ (y * 3)) & 63) + 40 * c + 17 * k) % 256
        chans.append(v)
    return np.stack(chans, -1).astype(np.uint8)


def patches_for(proc, img, patch=30):
    out = proc(images=[img])
    images = out["images"]
    im = images[0][0] if isinstance(images, list) else images[0, 0]
    im = torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im
    uh = int(out["image_unpadded_heights"][0][0])
    uw = int(out["image_unpadded_widths"][0][0])
    H, W = im.shape[-2:]
    nh = min(H, math.ceil(uh / patch) * patch)
    nw = min(W, math.ceil(uw / patch) * patch)
    cropped = im[..., :nh, :nw]
    if isinstance(proc, FuyuImageProcessorPil):
        p = np.asarray(proc.patchify_image(np.asarray(cropped)[None]))
        p = p[0] if p.ndim == 3 else p
    else:
        p = proc.patchify_image(cropped.unsqueeze(0)).squeeze(0).numpy()
    return p.astype(np.float32), (uh, uw), (nh // patch, nw // patch)


def main():
    os.makedirs(OUT, exist_ok=True)
    procs = {"torchvision": FuyuImageProcessor(), "pil": FuyuImageProcessorPil()}
    manifest = {"patch": 30, "max_height": 1080, "max_width": 1920, "subset": SUBSET, "images": []}
    for k, (name, h, w) in enumerate(IMAGES):
        arr = pattern(h, w, k)
        img = Image.fromarray(arr, "RGB")
        if h * w <= 90 * 120:
            img.save(os.path.join(OUT, f"fuyu_{name}.png"))
        results = {pname: patches_for(proc, img) for pname, proc in procs.items()}
        resized = results["pil"][1] != (h, w)
        if not resized:
            a, b = results["pil"][0], results["torchvision"][0]
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-6, f"{name}: backends disagree"
            backends = ["pil"]  # identical without a resize
        else:
            backends = ["pil", "torchvision"]
        for pname in backends:
            p, (uh, uw), (rows, cols) = results[pname]
            assert p.shape == (rows * cols, 2700), p.shape
            if resized:
                idx = np.unique(np.round(np.linspace(0, rows * cols - 1, SUBSET)).astype(np.int64))
            else:
                idx = np.arange(rows * cols)
            base = f"fuyu_{name}_{pname}"
            p[idx].astype("<f4").tofile(os.path.join(OUT, base + ".patches.f32"))
            p.astype(np.float64).sum(axis=1).astype("<f4").tofile(os.path.join(OUT, base + ".sums.f32"))
            manifest["images"].append(
                {
                    "name": name,
                    "seed": k,
                    "height": h,
                    "width": w,
                    "backend": pname,
                    "resized_height": uh,
                    "resized_width": uw,
                    "rows": rows,
                    "cols": cols,
                    "stored": idx.tolist(),
                    "patches": base + ".patches.f32",
                    "sums": base + ".sums.f32",
                }
            )
        if resized:
            a, b = results["pil"][0], results["torchvision"][0]
            print(f"{name}: {h}x{w} -> {results['pil'][1]}, grid {results['pil'][2]}, "
                  f"pil vs torchvision mean |diff| {np.abs(a - b).mean():.6f}, max {np.abs(a - b).max():.6f}")
        else:
            print(f"{name}: {h}x{w}, grid {results['pil'][2]} (no resize)")
    with open(os.path.join(OUT, "fuyu_patches.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT) if n.startswith("fuyu_"))
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
