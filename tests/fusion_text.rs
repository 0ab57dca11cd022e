//! Text tokenizers: our trained BPE and a Fuyu-style `tokenizer.json` (specials, round trips, parity ids).

use std::path::{Path, PathBuf};

use mmlab::fusion::text::{builtin_corpus, TextTokenizer, SPECIAL_NAMES};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fusion")
}

#[test]
fn fuyu_tokenizer_specials_are_mapped_and_missing_ones_added() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("fuyu_like_expected.json")).unwrap())
            .unwrap();
    let id = |name: &str| expected["ids"][name].as_u64().unwrap() as u32;
    let t = TextTokenizer::from_file(&fixtures().join("fuyu_like_tokenizer.json")).unwrap();
    let sp = t.specials;
    assert_eq!(sp.pad, id("|ENDOFTEXT|"));
    assert_eq!(sp.eos, id("|ENDOFTEXT|"));
    assert_eq!(sp.bos, id("<s>"));
    assert_eq!(sp.boa, id("<0x04>"));
    assert_eq!(sp.image, id("|SPEAKER|"));
    assert_eq!(sp.newline, id("|NEWLINE|"));
    let before = expected["vocab_size"].as_u64().unwrap() as u32;
    assert_eq!((sp.audio, sp.frame), (before, before + 1));
    assert_eq!(t.vocab_size(), before as usize + 2);
    assert_eq!(t.id_to_token(sp.audio).as_deref(), Some("<audio>"));
    assert_eq!(t.id_to_token(sp.frame).as_deref(), Some("|FRAME|"));
}

#[test]
fn fuyu_tokenizer_encodes_like_the_python_library() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("fuyu_like_expected.json")).unwrap())
            .unwrap();
    let t = TextTokenizer::from_file(&fixtures().join("fuyu_like_tokenizer.json")).unwrap();
    for case in expected["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(t.encode(text).unwrap(), ids, "{text}");
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
    // A spelled-out placeholder is text, not the image token.
    let ids = t.encode("|SPEAKER| here").unwrap();
    assert!(!ids.contains(&t.specials.image), "{ids:?}");
}

#[test]
fn fuyu_tokenizer_survives_save_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let t = TextTokenizer::from_file(&fixtures().join("fuyu_like_tokenizer.json")).unwrap();
    let p = dir.path().join("tokenizer.json");
    t.save(&p).unwrap();
    let t2 = TextTokenizer::from_file(&p).unwrap();
    assert_eq!(t.specials, t2.specials);
    assert_eq!(t.vocab_size(), t2.vocab_size());
    let s = "How many circles are there?";
    assert_eq!(t.encode(s).unwrap(), t2.encode(s).unwrap());
}

#[test]
fn trained_bpe_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = TextTokenizer::train_bpe(&builtin_corpus(), 320).unwrap();
    assert_eq!(t.vocab_size(), 320);
    let p = dir.path().join("tokenizer.json");
    t.save(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let t2 = TextTokenizer::from_file(&p).unwrap();
    assert_eq!(t2.specials, t.specials);
    for (i, name) in SPECIAL_NAMES.iter().enumerate() {
        assert_eq!(t2.id_to_token(i as u32).as_deref(), Some(*name));
    }
    // Saving again gives the same bytes.
    let p2 = dir.path().join("again.json");
    t2.save(&p2).unwrap();
    assert_eq!(std::fs::read(&p2).unwrap(), bytes);
    // Same corpus, same file; a different corpus, a different file.
    let t3 = TextTokenizer::train_bpe(&builtin_corpus(), 320).unwrap();
    assert_eq!(t3.to_json().unwrap().as_bytes(), &bytes[..]);
    let other = vec!["completely different words appear in this corpus".to_string(); 3];
    let t4 = TextTokenizer::train_bpe(&other, 320).unwrap();
    assert_ne!(t4.to_json().unwrap().as_bytes(), &bytes[..]);
    // Unicode text round-trips through byte-level BPE.
    let s = "Ünïcödé — 中文 ✓";
    assert_eq!(t2.decode(&t2.encode(s).unwrap()).unwrap(), s);
}

#[test]
fn foreign_tokenizer_gets_all_specials_added() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{
      "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2}, "unk_token": "[UNK]"}
    }"#;
    let p = dir.path().join("wordlevel.json");
    std::fs::write(&p, json).unwrap();
    let t = TextTokenizer::from_file(&p).unwrap();
    assert_eq!(t.specials.all(), [3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(t.encode("hello world").unwrap(), vec![1, 2]);
}
