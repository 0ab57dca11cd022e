#!/usr/bin/env python3
"""Side by side: our fusion tokenizer (criterion, `cargo bench --bench fusion`) and transformers' processors.

    /work/venv/bin/python benches/reference/fusion_side_by_side.py [--skip-rust]
    /work/venv/bin/python benches/reference/fusion_side_by_side.py --logmel-rounds N

`--logmel-rounds N` times only log-mel 30 s (80 mels): N alternating rounds of the torch
path (median of 20 calls) and the criterion bench, then the median ratio and its range.

Both sides get the same inputs: the procedural 1080x1920 image of
`fuyu_reference.py::pattern(1080, 1920, 0)` and 30 s at 16 kHz of a 440 Hz tone plus
LCG noise (see `thirty_seconds`, mirrored in `benches/fusion.rs`).

Python side, per call (median of repeated runs, same process, threads as torch sets them):
- FuyuImageProcessor (torchvision backend, the default in transformers 5) and
  FuyuImageProcessorPil, each followed by the crop + `patchify_image` that
  `FuyuProcessor` does, so the output is the same patch matrix ours returns;
- WhisperFeatureExtractor(feature_size=80) with `padding="longest"` (the torch STFT
  path, used when torch is installed) and its numpy path
  `_np_extract_fbank_features` (used when torch is not installed).

Rust side: runs the criterion bench and reads its `--output-format bencher` lines.
"""

import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from transformers import WhisperFeatureExtractor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def thirty_seconds():
    n = 480_000
    s = 12345
    noise = np.empty(n)
    for i in range(n):
        s = (1664525 * s + 1013904223) % (1 << 32)
        noise[i] = (s / 4294967296.0 * 2.0 - 1.0) * 0.1
    t = np.arange(n) / 16000.0
    return (0.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fuyu_patches(proc, img):
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    out = proc(images=[img])
    images = out["images"]
    im = images[0][0] if isinstance(images, list) else images[0, 0]
    uh = int(out["image_unpadded_heights"][0][0])
    uw = int(out["image_unpadded_widths"][0][0])
    nh, nw = math.ceil(uh / 30) * 30, math.ceil(uw / 30) * 30
    if isinstance(proc, FuyuImageProcessorPil):
        return proc.patchify_image(np.asarray(im)[None, :, :nh, :nw])
    return proc.patchify_image(im[None, :, :nh, :nw])


def rust_bench(filter=None):
    cmd = ["cargo", "bench", "--bench", "fusion", "--", "--output-format", "bencher"]
    if filter:
        cmd.append(filter)
    print("running:", " ".join(cmd), file=sys.stderr)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    got = {}
    for line in res.stdout.splitlines():
        m = re.match(r"test (.+?) \.\.\. bench:\s+([\d,]+) ns/iter", line)
        if m:
            got[m.group(1).strip()] = int(m.group(2).replace(",", "")) / 1e9
    return got


def logmel_rounds(n):
    audio = thirty_seconds()
    fe = WhisperFeatureExtractor(feature_size=80)
    ratios = []
    for r in range(n):
        py = median_time(
            lambda: fe(audio, sampling_rate=16000, padding="longest", return_tensors="np"), 20
        )
        rs = rust_bench("log-mel 30 s \\(80 mels\\)")["log-mel 30 s (80 mels)"]
        ratios.append(py / rs)
        print(f"round {r + 1}: torch path {py * 1e3:.2f} ms, mmlab {rs * 1e3:.3f} ms, {py / rs:.1f}x")
    ratios.sort()
    print(f"median {ratios[len(ratios) // 2]:.1f}x (range {ratios[0]:.1f}-{ratios[-1]:.1f}x), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")


def main():
    if "--logmel-rounds" in sys.argv:
        logmel_rounds(int(sys.argv[sys.argv.index("--logmel-rounds") + 1]))
        return
    # The image side needs torchvision (transformers' Fuyu processor); the log-mel rounds do not.
    from fuyu_reference import pattern
    from transformers.models.fuyu.image_processing_fuyu import FuyuImageProcessor
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    skip_rust = "--skip-rust" in sys.argv
    img = Image.fromarray(pattern(1080, 1920, 0), "RGB")
    audio = thirty_seconds()
    fe = WhisperFeatureExtractor(feature_size=80)
    py = {
        "patchify 1080x1920: FuyuImageProcessor (torchvision)": median_time(
            lambda: fuyu_patches(FuyuImageProcessor(), img), 10
        ),
        "patchify 1080x1920: FuyuImageProcessorPil": median_time(
            lambda: fuyu_patches(FuyuImageProcessorPil(), img), 5
        ),
        "log-mel 30 s: WhisperFeatureExtractor (torch path)": median_time(
            lambda: fe(audio, sampling_rate=16000, padding="longest", return_tensors="np"), 10
        ),
        "log-mel 30 s: WhisperFeatureExtractor numpy path": median_time(
            lambda: fe._np_extract_fbank_features(audio[None, :], "cpu"), 3
        ),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for k, v in py.items():
        print(f"  python  {k:<60s} {v * 1e3:9.2f} ms")
    if skip_rust:
        return
    rs = rust_bench()
    for k, v in rs.items():
        print(f"  rust    {k:<60s} {v * 1e3:9.3f} ms")
    pairs = [
        ("patchify 1080x1920 (fuyu, no resize)", "patchify 1080x1920: FuyuImageProcessor (torchvision)"),
        ("patchify 1080x1920 (fuyu, no resize)", "patchify 1080x1920: FuyuImageProcessorPil"),
        ("log-mel 30 s (80 mels)", "log-mel 30 s: WhisperFeatureExtractor (torch path)"),
        ("log-mel 30 s (80 mels)", "log-mel 30 s: WhisperFeatureExtractor numpy path"),
    ]
    print("speed-up (python / rust):")
    for r, p in pairs:
        if r in rs:
            print(f"  {p:<60s} {py[p] / rs[r]:7.1f}x")


if __name__ == "__main__":
    main()
