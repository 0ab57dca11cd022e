//! HF Fuyu checkpoints (adept/fuyu-8b layout) against transformers' `FuyuForCausalLM`.
//!
//! `benches/reference/hf_fuyu_reference.py` saved a tiny random Fuyu (2 layers, hidden 64,
//! vocab 1024, patch 30) with `save_pretrained` in bf16, sharded into three files with an
//! index, plus transformers 5.24's logits (every position, each pair alone) and greedy
//! generations (each pair alone and both in one left-padded batch) for two image+prompt
//! pairs; one image (47x71) is not a multiple of 30. Here the directory goes through the
//! same loader as `--model DIR`, and we check the prompt ids, the logits (max abs diff
//! <= 1e-4) and the generated ids (identical). Corrupt checkpoints must give errors that
//! name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use mmlab::fusion::{collate, BosPlacement, ImageInput, PadSide, Segment};
use mmlab::model::generate::{generate, GenerateOptions};
use mmlab::model::io::hf_fuyu::{load_hf_fuyu, HfFuyuConfig};
use mmlab::model::io::{load_dir, read_config, tensors_to_bytes, LoadedModel};
use mmlab::model::responder::ModelResponder;
use mmlab_eval::{Request, Responder};
use serde_json::Value;

const LOGITS_TOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_fuyu")
}

fn tiny() -> PathBuf {
    root().join("tiny")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(root().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn image_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fusion")
        .join(name)
}

/// The prompt sequence for pair `p` as `mmlab ask` builds it.
fn prompt(m: &LoadedModel, p: &Value) -> mmlab::fusion::MultimodalSequence {
    let builder = m.config.builder(Arc::new(m.tokenizer.clone()));
    builder
        .build_placed(
            &[
                Segment::Image(ImageInput::Path(image_path(p["image"].as_str().unwrap()))),
                Segment::Text(p["prompt"].as_str().unwrap().to_string()),
            ],
            m.bos,
        )
        .unwrap()
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Logits `(t, vocab)` of one prompt run alone.
fn logits(m: &LoadedModel, seq: &mmlab::fusion::MultimodalSequence) -> Vec<f32> {
    let batch = collate(
        std::slice::from_ref(seq),
        m.tokenizer.specials.pad,
        PadSide::Left,
    )
    .unwrap();
    let out = m.model.forward(&batch, None, false).unwrap();
    let (_, t, d) = out.hidden.dims3().unwrap();
    let h = out.hidden.reshape((t, d)).unwrap();
    m.model
        .logits(&h)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy ids up to (not including) `<eos>`, as our generation returns them.
fn until_eos(v: &[u32], eos: u32) -> Vec<u32> {
    v.iter().copied().take_while(|&t| t != eos).collect()
}

#[test]
fn prompt_ids_and_logits_match_transformers() {
    let m = load_dir(&tiny(), &Device::Cpu).unwrap();
    assert_eq!(m.bos, BosPlacement::AfterLeadingImages);
    assert_eq!(m.config.design, "hf-fuyu");
    let exp = expected();
    for (k, p) in exp["pairs"].as_array().unwrap().iter().enumerate() {
        let seq = prompt(&m, p);
        assert_eq!(seq.tokens, ids(&p["input_ids"]), "pair {k}: prompt ids");
        let rows = p["rows"].as_u64().unwrap() as usize;
        let cols = p["cols"].as_u64().unwrap() as usize;
        assert_eq!(seq.patch_positions.len(), rows * cols);
        let ours = logits(&m, &seq);
        let theirs = read_f32(&root().join(p["logits"].as_str().unwrap()));
        let diff = max_abs_diff(&ours, &theirs);
        let scale = theirs.iter().fold(0f32, |a, x| a.max(x.abs()));
        println!(
            "pair {k}: {} tokens, logits max |diff| {diff:.3e} (max |logit| {scale:.2})",
            seq.tokens.len()
        );
        assert!(diff <= LOGITS_TOL, "pair {k}: logits differ by {diff}");
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let m = load_dir(&tiny(), &Device::Cpu).unwrap();
    let exp = expected();
    let n = exp["max_new_tokens"].as_u64().unwrap() as usize;
    let eos = m.tokenizer.specials.eos;
    let opts = GenerateOptions {
        max_new_tokens: n,
        stop_tokens: vec![eos],
        ..Default::default()
    };
    let pairs = exp["pairs"].as_array().unwrap();
    let seqs: Vec<_> = pairs.iter().map(|p| prompt(&m, p)).collect();
    for (k, (p, s)) in pairs.iter().zip(&seqs).enumerate() {
        let got = generate(&m.model, std::slice::from_ref(s), 0, &opts).unwrap();
        assert_eq!(
            got[0],
            until_eos(&ids(&p["generated"]), eos),
            "pair {k} alone"
        );
    }
    // Both in one left-padded batch, as HF's generate ran them.
    let got = generate(&m.model, &seqs, 0, &opts).unwrap();
    for (k, row) in exp["batched_generated"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(got[k], until_eos(&ids(row), eos), "pair {k} batched");
    }
    // Through the eval harness's responder (prefix cache: image + <s> once, then the question).
    let mut r = ModelResponder::new(load_dir(&tiny(), &Device::Cpu).unwrap(), "tiny".into());
    r.opts.max_new_tokens = n;
    let reqs: Vec<Request> = pairs
        .iter()
        .enumerate()
        .map(|(k, p)| Request {
            task: "ask".into(),
            question_id: k.to_string(),
            prompt: p["prompt"].as_str().unwrap().into(),
            image: Some(image_path(p["image"].as_str().unwrap())),
            audio: None,
            candidates: None,
        })
        .collect();
    for prefix_cache in [true, false] {
        r.prefix_cache = prefix_cache;
        let answers = r.respond(&reqs).unwrap();
        for (k, p) in pairs.iter().enumerate() {
            let want = m
                .tokenizer
                .decode(&until_eos(&ids(&p["generated"]), eos))
                .unwrap();
            assert_eq!(
                answers[k].answer,
                want.trim(),
                "pair {k}, prefix cache {prefix_cache}"
            );
        }
    }
}

/// Named tensors, as safetensors files hold them.
type Named = Vec<(String, Tensor)>;

/// All tensors of the fixture's shards, by HF name.
fn fixture_tensors() -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(tiny())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let ts = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
        out.extend(ts);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A copy of the fixture directory with `tensors` as one `model.safetensors`.
fn dir_with(tensors: &[(String, Tensor)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), d.path().join(f)).unwrap();
    }
    std::fs::write(
        d.path().join("model.safetensors"),
        tensors_to_bytes(tensors).unwrap(),
    )
    .unwrap();
    d
}

#[test]
fn single_file_f32_and_5x_names_load_the_same_model() {
    let sharded = load_dir(&tiny(), &Device::Cpu).unwrap();
    let exp = expected();
    let seq = prompt(&sharded, &exp["pairs"][0]);
    let want = logits(&sharded, &seq);
    // One file, f32, and transformers 5.x's in-memory names instead of adept's.
    let renamed: Vec<(String, Tensor)> = fixture_tensors()
        .into_iter()
        .map(|(n, t)| {
            let n = if let Some(r) = n.strip_prefix("language_model.model.") {
                format!("model.language_model.{r}")
            } else if n == "language_model.lm_head.weight" {
                "lm_head.weight".into()
            } else {
                format!("model.{n}")
            };
            (n, t.to_dtype(DType::F32).unwrap())
        })
        .collect();
    let d = dir_with(&renamed);
    let single = load_dir(d.path(), &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&logits(&single, &seq), &want), 0.0);
    assert_ne!(single.weights_sha256, sharded.weights_sha256);
    // The same tensors again give the same identity.
    let again = load_dir(d.path(), &Device::Cpu).unwrap();
    assert_eq!(again.weights_sha256, single.weights_sha256);
    // bf16 weights loaded as bf16 compute: close to f32, not bit-equal.
    let b = load_hf_fuyu(&tiny(), &Device::Cpu, DType::BF16).unwrap();
    let lb = logits(&b, &seq);
    let diff = max_abs_diff(&lb, &want);
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    println!("bf16 compute: logits max |diff| {diff:.3e} vs f32 (max |logit| {scale:.2})");
    assert!(diff < 0.02 * scale, "bf16 logits far from f32: {diff}");
    // f16 likewise (bf16 values widen to f32 and round to f16).
    let h = load_hf_fuyu(&tiny(), &Device::Cpu, DType::F16).unwrap();
    let diff = max_abs_diff(&logits(&h, &seq), &want);
    println!("f16 compute: logits max |diff| {diff:.3e} vs f32");
    assert!(diff < 0.02 * scale, "f16 logits far from f32: {diff}");
}

#[test]
fn config_reads_both_layouts() {
    // Flat (4.x, as in adept/fuyu-8b's config.json): no text_config, rope_theta at the top.
    let flat: Value = serde_json::json!({
        "model_type": "fuyu", "hidden_act": "relu2", "hidden_size": 4096, "intermediate_size": 16384,
        "num_attention_heads": 64, "num_hidden_layers": 36, "vocab_size": 262144,
        "max_position_embeddings": 16384, "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.5,
        "qk_layernorm": true, "rope_theta": 25000.0, "rope_scaling": null, "patch_size": 30,
        "num_channels": 3, "tie_word_embeddings": false, "image_size": 300
    });
    let c = HfFuyuConfig::from_json(&flat).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.vocab_size,
            c.num_attention_heads
        ),
        (4096, 36, 262144, 64)
    );
    assert_eq!((c.rope_theta, c.partial_rotary_factor), (25000.0, 0.5));
    let m = c.model_config();
    assert_eq!((m.head_dim(), m.rotary_dim(), m.patch_dim), (64, 32, 2700));
    // Defaults are fuyu-8b's.
    assert_eq!(
        HfFuyuConfig::from_json(&serde_json::json!({"model_type": "fuyu"})).unwrap(),
        c
    );
    // 5.x nested, as the fixture.
    let d = read_config(&tiny()).unwrap();
    assert_eq!(
        (d.model.d_model, d.model.n_layers, d.model.vocab_size),
        (64, 2, 1024)
    );
    assert_eq!(d.model.rope_theta, 25000.0);
    assert_eq!(d.image.patch, 30);
    // Unsupported settings are refused with the key named.
    for (k, v) in [
        ("hidden_act", serde_json::json!("gelu")),
        ("num_channels", serde_json::json!(1)),
        ("hidden_size", serde_json::json!(-4)),
    ] {
        let mut bad = flat.clone();
        bad[k] = v;
        let e = HfFuyuConfig::from_json(&bad).unwrap_err();
        assert!(e.contains(k), "{k}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Broken and hostile checkpoints: an error naming the file (and tensor), never a panic.
// ---------------------------------------------------------------------------

/// A safetensors file from a raw header and data.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn load_err(dir: &Path) -> String {
    match load_dir(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_headers_are_errors_naming_file_and_tensor() {
    let d = dir_with(&[]);
    let w = d.path().join("model.safetensors");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("short", vec![1, 2, 3], vec!["too short"]),
        (
            "header longer than file",
            {
                let mut b = 1_000_000u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            vec!["header length 1000000"],
        ),
        (
            "huge header length",
            u64::MAX
                .to_le_bytes()
                .to_vec()
                .into_iter()
                .chain(*b"{}")
                .collect(),
            vec!["header length"],
        ),
        ("not json", raw_safetensors("{nope", &[]), vec!["JSON"]),
        (
            "offsets past the end",
            raw_safetensors(
                r#"{"vision_embed_tokens.bias":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#,
                &[0u8; 16],
            ),
            vec!["vision_embed_tokens.bias", "data_offsets"],
        ),
        (
            "offsets reversed",
            raw_safetensors(
                r#"{"vision_embed_tokens.bias":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#,
                &[0u8; 16],
            ),
            vec!["vision_embed_tokens.bias", "data_offsets"],
        ),
        (
            "size does not match shape",
            raw_safetensors(
                r#"{"vision_embed_tokens.bias":{"dtype":"F32","shape":[64],"data_offsets":[0,16]}}"#,
                &[0u8; 16],
            ),
            vec!["vision_embed_tokens.bias", "needs 256 bytes"],
        ),
        (
            "shape overflows",
            raw_safetensors(
                r#"{"vision_embed_tokens.bias":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
                &[0u8; 16],
            ),
            vec!["vision_embed_tokens.bias", "overflows"],
        ),
        (
            "integer dtype",
            raw_safetensors(
                r#"{"vision_embed_tokens.bias":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
                &[0u8; 16],
            ),
            vec!["vision_embed_tokens.bias", "I64"],
        ),
        (
            "missing everything",
            raw_safetensors("{}", &[]),
            vec!["missing tensor", "embed_tokens.weight"],
        ),
    ];
    for (what, bytes, needles) in cases {
        std::fs::write(&w, bytes).unwrap();
        let e = load_err(d.path());
        assert!(e.contains("model.safetensors"), "{what}: no file in {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: {n:?} not in {e}");
        }
    }
}

#[test]
fn wrong_shape_dtype_and_missing_tensors_are_named() {
    let base = fixture_tensors();
    let edit = |f: &dyn Fn(&mut Named)| {
        let mut t = base.clone();
        f(&mut t);
        dir_with(&t)
    };
    let qkv = "language_model.model.layers.1.self_attn.query_key_value.weight";
    // A tensor with the wrong shape for the config.
    let d = edit(&|t| {
        for (n, x) in t.iter_mut() {
            if n == qkv {
                *x = Tensor::zeros((192, 32), DType::BF16, &Device::Cpu).unwrap();
            }
        }
    });
    let e = load_err(d.path());
    assert!(
        e.contains(qkv) && e.contains("[192, 32]") && e.contains("model.safetensors"),
        "{e}"
    );
    // A tensor stored as integers.
    let d = edit(&|t| {
        for (n, x) in t.iter_mut() {
            if n == "language_model.model.final_layernorm.weight" {
                *x = Tensor::zeros(64, DType::U8, &Device::Cpu).unwrap();
            }
        }
    });
    let e = load_err(d.path());
    assert!(
        e.contains("final_layernorm.weight") && e.contains("U8"),
        "{e}"
    );
    // A missing tensor.
    let d =
        edit(&|t| t.retain(|(n, _)| n != "language_model.model.layers.0.mlp.dense_4h_to_h.bias"));
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor")
            && e.contains("layers.0.mlp.dense_4h_to_h.bias")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn broken_index_files_are_errors() {
    let copy = || {
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(tiny()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        d
    };
    let index = |d: &Path| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap()
    };
    let write = |d: &Path, v: &Value| {
        std::fs::write(d.join("model.safetensors.index.json"), v.to_string()).unwrap()
    };
    // A shard that is not there.
    let d = copy();
    std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
    // A tensor listed for the wrong shard.
    let d = copy();
    let mut v = index(d.path());
    v["weight_map"]["vision_embed_tokens.weight"] = "model-00001-of-00003.safetensors".into();
    write(d.path(), &v);
    let e = load_err(d.path());
    assert!(
        e.contains("vision_embed_tokens.weight") && e.contains("model-00001-of-00003"),
        "{e}"
    );
    // A shard path that leaves the directory.
    let d = copy();
    let mut v = index(d.path());
    v["weight_map"]["vision_embed_tokens.weight"] = "../elsewhere.safetensors".into();
    write(d.path(), &v);
    let e = load_err(d.path());
    assert!(e.contains("elsewhere") && e.contains("index.json"), "{e}");
    // Not JSON.
    let d = copy();
    std::fs::write(d.path().join("model.safetensors.index.json"), "{").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("index.json"), "{e}");
    // A shard whose header lies about its length.
    let d = copy();
    let shard = d.path().join("model-00003-of-00003.safetensors");
    let mut b = std::fs::read(&shard).unwrap();
    let n = b.len() as u64;
    b[..8].copy_from_slice(&n.to_le_bytes());
    std::fs::write(&shard, b).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model-00003-of-00003.safetensors") && e.contains("header length"),
        "{e}"
    );
}

#[test]
fn models_table_lists_the_directory() {
    let out = mmlab::cli::models::render(&mmlab::cli::models::ModelsArgs { dirs: vec![tiny()] });
    let line = out
        .lines()
        .find(|l| l.contains("hf-fuyu"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("tiny"), "{line}");
}

#[test]
fn cli_ask_and_eval_pope_run_the_directory() {
    let exp = expected();
    let p = &exp["pairs"][0];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .arg("ask")
        .arg("--model")
        .arg(tiny())
        .arg("--image")
        .arg(image_path(p["image"].as_str().unwrap()))
        .arg("--max-tokens")
        .arg("10")
        .arg(p["prompt"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = load_dir(&tiny(), &Device::Cpu).unwrap();
    let eos = m.tokenizer.specials.eos;
    let want = m
        .tokenizer
        .decode(&until_eos(&ids(&p["generated"]), eos))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want.trim());
    // bf16 weights and compute: runs (its greedy tokens may differ from f32's).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(["ask", "--dtype", "bf16", "--model"])
        .arg(tiny())
        .arg("--image")
        .arg(image_path(p["image"].as_str().unwrap()))
        .arg("Is there a ring?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our own models compute in f32 only.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args([
            "ask",
            "--dtype",
            "bf16",
            "--model",
            "fuyu-small",
            "Is there a ring?",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only HF Fuyu directories"), "{err}");
    // A real-format POPE file (COCO-style names, one line per question) over an image folder.
    let d = tempfile::tempdir().unwrap();
    let images = d.path().join("val2014");
    std::fs::create_dir(&images).unwrap();
    for (k, name) in ["fuyu_ragged.png", "fuyu_exact.png"].iter().enumerate() {
        std::fs::copy(
            image_path(name),
            images.join(format!("COCO_val2014_{k:012}.png")),
        )
        .unwrap();
    }
    let lines: Vec<String> = (0..4)
        .map(|q| {
            serde_json::json!({
                "question_id": q + 1,
                "image": format!("COCO_val2014_{:012}.png", q % 2),
                "text": if q < 2 { "Is there a ring in the image?" } else { "Is there a dog in the image?" },
                "label": if q % 2 == 0 { "yes" } else { "no" },
            })
            .to_string()
        })
        .collect();
    let pope = d.path().join("coco_pope_random.json");
    std::fs::write(&pope, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(["eval", "pope-random", "--json", "--model"])
        .arg(tiny())
        .arg("--data")
        .arg(&pope)
        .arg("--images")
        .arg(&images)
        .arg("--results")
        .arg(d.path().join("results"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = r.to_string();
    assert!(text.contains("tiny"), "{text}");
}

#[test]
fn hf_directories_under_a_models_folder_are_found() {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(tiny(), d.path().join("fuyu-8b")).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fuyu-small"),
        d.path().join("fuyu-small"),
    )
    .unwrap();
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let found = mmlab::model::resolve::hf_dirs_in(d.path());
    assert_eq!(found, vec![d.path().join("fuyu-8b")]);
}

// ---------------------------------------------------------------------------
// Peak memory (slow; run by hand):
//   cargo test --release --test hf_fuyu -- --ignored --nocapture peak_rss
// ---------------------------------------------------------------------------

/// Writes a random bf16 HF Fuyu checkpoint of about `target` bytes, one tensor at a time.
fn write_big_checkpoint(dir: &Path, target: u64) -> u64 {
    use std::io::Write;
    let (d, ff, v, heads) = (2048usize, 8192usize, 65536usize, 16usize);
    let per_layer =
        (3 * d * d + 3 * d + d * d + d + 2 * ff * d + ff + d + 4 * d + 4 * (d / heads)) * 2;
    let fixed = (2 * v * d + d * 2700 + d + 2 * d) * 2;
    let layers = ((target as usize).saturating_sub(fixed) / per_layer).max(1);
    let cfg = serde_json::json!({
        "model_type": "fuyu", "patch_size": 30, "num_channels": 3, "tie_word_embeddings": false,
        "image_token_id": 3,
        "text_config": {"model_type": "persimmon", "vocab_size": v, "hidden_size": d,
            "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
            "max_position_embeddings": 4096, "hidden_act": "relu2", "qk_layernorm": true,
            "layer_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 25000.0, "partial_rotary_factor": 0.5}}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(tiny().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "language_model.model.embed_tokens.weight".into(),
            vec![v, d],
        ),
        ("language_model.lm_head.weight".into(), vec![v, d]),
        ("vision_embed_tokens.weight".into(), vec![d, 2700]),
        ("vision_embed_tokens.bias".into(), vec![d]),
        (
            "language_model.model.final_layernorm.weight".into(),
            vec![d],
        ),
        ("language_model.model.final_layernorm.bias".into(), vec![d]),
    ];
    for i in 0..layers {
        let l = format!("language_model.model.layers.{i}");
        for (n, s) in [
            ("self_attn.query_key_value.weight", vec![3 * d, d]),
            ("self_attn.query_key_value.bias", vec![3 * d]),
            ("self_attn.dense.weight", vec![d, d]),
            ("self_attn.dense.bias", vec![d]),
            ("mlp.dense_h_to_4h.weight", vec![ff, d]),
            ("mlp.dense_h_to_4h.bias", vec![ff]),
            ("mlp.dense_4h_to_h.weight", vec![d, ff]),
            ("mlp.dense_4h_to_h.bias", vec![d]),
            ("input_layernorm.weight", vec![d]),
            ("input_layernorm.bias", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("post_attention_layernorm.bias", vec![d]),
            ("self_attn.q_layernorm.weight", vec![d / heads]),
            ("self_attn.q_layernorm.bias", vec![d / heads]),
            ("self_attn.k_layernorm.weight", vec![d / heads]),
            ("self_attn.k_layernorm.bias", vec![d / heads]),
        ] {
            shapes.push((format!("{l}.{n}"), s));
        }
    }
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (n, s) in &shapes {
        let bytes = s.iter().product::<usize>() * 2;
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let h = Value::Object(header).to_string();
    let path = dir.join("model.safetensors");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut left = off;
    while left > 0 {
        buf.clear();
        let n = left.min(1 << 20) / 2;
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // bf16 in [-0.06, 0.06]: exponent well inside range, random mantissa and sign.
            let bits = 0x3C00u16 | (state as u16 & 0x807F);
            buf.extend_from_slice(&bits.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
        left -= n * 2;
    }
    f.flush().unwrap();
    std::fs::metadata(&path).unwrap().len()
}

fn max_rss_bytes() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

/// Child side of `peak_rss`: loads `MMLAB_PEAK_DIR` in `MMLAB_PEAK_DTYPE` and prints the peak.
#[test]
#[ignore]
fn peak_rss_child() {
    let Ok(dir) = std::env::var("MMLAB_PEAK_DIR") else {
        return;
    };
    let dtype = match std::env::var("MMLAB_PEAK_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let before = max_rss_bytes();
    let t = std::time::Instant::now();
    let m = load_hf_fuyu(Path::new(&dir), &Device::Cpu, dtype).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "PEAK before={before} after={} secs={secs:.1} layers={}",
        max_rss_bytes(),
        m.config.model.n_layers
    );
}

#[test]
#[ignore]
fn peak_rss_loading_a_2gb_bf16_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let size = write_big_checkpoint(d.path(), 2_000_000_000);
    let mut results = HashMap::new();
    for dtype in ["bf16", "f32"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "peak_rss_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MMLAB_PEAK_DIR", d.path())
            .env("MMLAB_PEAK_DTYPE", dtype)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find_map(|l| l.find("PEAK ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr)));
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        let (before, after) = (field("before"), field("after"));
        println!(
            "{dtype}: file {:.3} GB, max RSS {:.3} GB ({:.2}x file; {:.3} GB before loading), load {:.1} s",
            size as f64 / 1e9,
            after / 1e9,
            after / size as f64,
            before / 1e9,
            field("secs")
        );
        results.insert(dtype, after / size as f64);
    }
    assert!(
        results["bf16"] <= 1.2,
        "bf16 load peak {:.2}x the file",
        results["bf16"]
    );
}
