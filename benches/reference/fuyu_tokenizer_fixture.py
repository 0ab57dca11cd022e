#!/usr/bin/env python3
"""A small Fuyu-style tokenizer.json for tests/fusion_text.rs (the real one cannot be downloaded offline).

Run by hand (CI has no Python ML stack); it rewrites
tests/fixtures/fusion/fuyu_like_tokenizer.json and fuyu_like_expected.json:

    /work/venv/bin/python benches/reference/fuyu_tokenizer_fixture.py

Made with the `tokenizers` Python package installed with transformers 5.24.0.

It has the structure of HF Fuyu's (adept/fuyu-8b) tokenizer.json: a Llama-style
BPE with byte fallback (so `<0x00>`..`<0xFF>` are vocabulary entries and `<0x04>`
is Fuyu's begin-of-answer token), a `▁` normaliser, and the special tokens
`<unk>`, `<s>`, `|ENDOFTEXT|`, `|SPEAKER|` (image placeholder) and `|NEWLINE|`.
It lacks `<audio>` and `|FRAME|`, which `TextTokenizer::from_file` must add.
The expected ids of a few strings, encoded by the Python library, are stored
so the Rust test checks that the Rust crate encodes identically.
"""

import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "fusion")

CORPUS = [
    "Is there a ring in the image?",
    "How many circles are there in the picture?",
    "Generate a coco-style caption.",
    "The quick brown fox jumps over the lazy dog.",
    "yes no zero one two three four five six seven",
] * 20

SPECIALS = ["<unk>", "<s>", "|ENDOFTEXT|", "|SPEAKER|", "|NEWLINE|"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]

SAMPLES = [
    "Is there a ring in the image?",
    "caption: dog\u00e9\u4e2d",
    "|SPEAKER| is text here",
]


def main():
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=150,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=[],
        limit_alphabet=60,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    # Byte-fallback tokens are ordinary vocabulary entries right after the specials,
    # as in Llama-style (and Fuyu's) tokenizer.json files.
    spec = json.loads(tok.to_str())
    old = spec["model"]["vocab"]
    order = SPECIALS + BYTES + [t for t, _ in sorted(old.items(), key=lambda kv: kv[1]) if t not in SPECIALS]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    for a in spec["added_tokens"]:
        a["id"] = spec["model"]["vocab"][a["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    path = os.path.join(OUT, "fuyu_like_tokenizer.json")
    tok.save(path, pretty=True)
    expected = {
        "ids": {name: tok.token_to_id(name) for name in SPECIALS + ["<0x04>"]},
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        # Specials spelled in text are matched by the Python library; our encoder treats
        # them as plain text, so only the first two samples are compared id for id.
        "encodings": [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids} for s in SAMPLES[:2]],
    }
    with open(os.path.join(OUT, "fuyu_like_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps(expected["ids"]), expected["vocab_size"])
    for e in expected["encodings"]:
        print(e["text"], e["ids"], repr(tok.decode(e["ids"])))


if __name__ == "__main__":
    main()
