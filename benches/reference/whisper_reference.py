#!/usr/bin/env python3
"""Reference log-mel features from transformers' WhisperFeatureExtractor, for tests/fusion_parity.rs.

Run by hand (CI has no Python ML stack); it rewrites tests/fixtures/fusion/whisper_*:

    /work/venv/bin/python benches/reference/whisper_reference.py

Made with transformers 5.24.0, torch 2.15.0, numpy 2.4.6.

Signals (16 kHz mono, written as 16-bit PCM WAV so both sides read identical samples):
- `tone`: 2 s of 0.5*sin(440 Hz) + 0.25*sin(1000 Hz);
- `noise`: 2 s of uniform white noise in [-0.3, 0.3) from a 32-bit LCG (seed 12345);
- `short`: 170 samples of a 300 Hz sine (shorter than the 200-sample reflect pad;
  only the numpy path, since `torch.stft` refuses it).

For each signal and n_mels in (80, 128) it stores the extractor's output called as
`fe(x, sampling_rate=16000, padding="longest")` (the torch STFT path, used when torch
is installed) and the numpy path `fe._np_extract_fbank_features` (float64 FFT), both
transposed to time-major `frames x n_mels` little-endian f32, and `whisper_features.json`
lists them.
"""

import json
import os
import wave

import numpy as np
from transformers import WhisperFeatureExtractor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "fusion")
SR = 16000


def lcg_noise(n, seed=12345, amp=0.3):
    out = np.empty(n, dtype=np.float64)
    s = seed
    for i in range(n):
        s = (1664525 * s + 1013904223) % (1 << 32)
        out[i] = (s / 2**32 * 2.0 - 1.0) * amp
    return out


def signals():
    t = np.arange(2 * SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 1000 * t)
    noise = lcg_noise(2 * SR)
    short = 0.5 * np.sin(2 * np.pi * 300 * np.arange(170) / SR)
    return {"tone": tone, "noise": noise, "short": short}


def to_int16(x):
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path, pcm):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"sample_rate": SR, "cases": []}
    for name, x in signals().items():
        pcm = to_int16(x)
        wav = f"whisper_{name}.wav"
        write_wav(os.path.join(OUT, wav), pcm)
        samples = pcm.astype(np.float32) / 32768.0
        for n_mels in (80, 128):
            fe = WhisperFeatureExtractor(feature_size=n_mels)
            np_feats = fe._np_extract_fbank_features(samples[None, :], "cpu")[0]
            assert np_feats.shape == (n_mels, len(samples) // 160), np_feats.shape
            results = [("numpy", np_feats)]
            diff = float("nan")
            if len(samples) > 200:  # torch.stft refuses a reflect pad longer than the signal
                torch_feats = fe(samples, sampling_rate=SR, padding="longest", return_tensors="np")["input_features"][0]
                assert torch_feats.shape == np_feats.shape, torch_feats.shape
                diff = np.abs(torch_feats - np_feats).max()
                results.append(("torch", torch_feats))
            for path_name, feats in results:
                fname = f"whisper_{name}_{n_mels}_{path_name}.f32"
                np.ascontiguousarray(feats.T).astype("<f4").tofile(os.path.join(OUT, fname))
                manifest["cases"].append(
                    {
                        "signal": name,
                        "wav": wav,
                        "n_mels": n_mels,
                        "path": path_name,
                        "frames": int(feats.shape[1]),
                        "file": fname,
                    }
                )
            print(f"{name} n_mels={n_mels}: {np_feats.shape[1]} frames, torch vs numpy max |diff| {diff:.2e}")
    with open(os.path.join(OUT, "whisper_features.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
