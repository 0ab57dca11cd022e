//! Bolted-on designs: connector output shapes and token counts, Flamingo's closed gates,
//! frozen components left bit-identical by training, and clear errors for mismatched inputs.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use mmlab::fusion::{collate, ImageInput, PadSide, Segment, TextTokenizer};
use mmlab::model::bolted::Connected;
use mmlab::model::io::{load_dir, read_config};
use mmlab::model::presets::preset;
use mmlab::model::{Design, ModelDirConfig};
use mmlab::train::data::SyntheticData;
use mmlab::train::{component, init_model, named_vars, train, RunControl, TrainConfig};

fn tokenizer() -> Arc<TextTokenizer> {
    Arc::new(TextTokenizer::builtin().expect("builtin tokenizer"))
}

fn config(name: &str, tok: &TextTokenizer) -> ModelDirConfig {
    let mut cfg = preset(name).unwrap().config;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    cfg
}

fn picture(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 5) as u8 ^ seed, (y * 7) as u8, seed.wrapping_mul(3)])
    })
}

/// Sequences `[image, question]` for images of the given sizes, built for `cfg`.
fn batch_of(
    cfg: &ModelDirConfig,
    tok: &Arc<TextTokenizer>,
    sizes: &[(u32, u32)],
    seed: u8,
) -> mmlab::fusion::Batch {
    let b = cfg.builder(tok.clone());
    let seqs: Vec<_> = sizes
        .iter()
        .map(|&(w, h)| {
            b.build(&[
                Segment::Image(ImageInput::Image(picture(w, h, seed))),
                Segment::Text("Is there a ring?".into()),
            ])
            .unwrap()
        })
        .collect();
    collate(&seqs, tok.specials.pad, PadSide::Left).unwrap()
}

#[test]
fn connectors_give_the_expected_shapes_and_token_counts() {
    let tok = tokenizer();
    // 48x48 -> 4x4 patches; 24x36 -> 2x3 patches (12-px patches).
    let sizes = [(48, 48), (36, 24)];
    for (name, per_image) in [
        ("llava-tiny", None),
        ("qformer-tiny", Some(4)),
        ("flamingo-tiny", Some(1)),
    ] {
        let cfg = config(name, &tok);
        let (model, _vm) = init_model(&cfg, 0, &Device::Cpu).unwrap();
        let batch = batch_of(&cfg, &tok, &sizes, 1);
        assert_eq!(batch.images.len(), 2, "{name}");
        let slots: Vec<usize> = batch.images.iter().map(|s| s.n_slots).collect();
        match per_image {
            None => assert_eq!(slots, vec![16, 6], "{name}: one slot per patch"),
            Some(n) => assert_eq!(slots, vec![n, n], "{name}: same count for any image size"),
        }
        let bolt = model.bolted().unwrap();
        match bolt.image_input(&batch).unwrap() {
            Connected::Slots(t) => {
                assert_eq!(
                    t.dims(),
                    &[batch.patch_positions.len(), cfg.model.d_model],
                    "{name}"
                );
            }
            Connected::Context(c) => {
                assert_eq!(name, "flamingo-tiny");
                // One row per sequence, n_latents per image, encoder width.
                assert_eq!(c.latents.dims(), &[2, 4, 16]);
                assert_eq!(c.key_pos.len(), 2 * 4);
            }
        }
        let out = model.forward(&batch, None, false).unwrap();
        assert_eq!(out.hidden.dims(), &[2, batch.seq_len, cfg.model.d_model]);
    }
}

#[test]
fn flamingo_with_closed_gates_ignores_the_image_and_with_open_gates_does_not() {
    let tok = tokenizer();
    let cfg = config("flamingo-tiny", &tok);
    let (model, vm) = init_model(&cfg, 2, &Device::Cpu).unwrap();
    let run = |seed: u8| {
        let b = batch_of(&cfg, &tok, &[(48, 48)], seed);
        model
            .last_logits(&model.forward(&b, None, false).unwrap().hidden)
            .unwrap()
    };
    let diff = |a: Tensor, b: Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(
        diff(run(1), run(200)),
        0.0,
        "closed gates must hide the image"
    );
    for (name, var) in named_vars(&vm) {
        if name.ends_with("_gate") {
            var.set(&Tensor::new(&[0.7f32], &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    assert!(
        diff(run(1), run(200)) > 1e-6,
        "open gates must let the image through"
    );
}

fn train_config(name: &str, freeze: &[&str]) -> TrainConfig {
    let mut cfg = common::train_config_for(name, 3);
    cfg.batch_size = 6;
    cfg.warmup = 1;
    cfg.seed = 8;
    cfg.freeze = freeze.iter().map(|s| s.to_string()).collect();
    cfg
}

#[test]
fn frozen_components_are_bit_identical_after_training() {
    for (name, freeze) in [
        ("llava-tiny", vec!["encoder", "decoder"]),
        ("flamingo-tiny", vec!["encoder"]),
    ] {
        let cfg = train_config(name, &freeze);
        let dir = tempfile::tempdir().unwrap();
        common::train_quietly(&cfg, dir.path());
        let (_m, init) = init_model(&cfg.model, cfg.seed, &Device::Cpu).unwrap();
        let trained =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut changed = 0;
        for (n, var) in named_vars(&init) {
            let a = var
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = trained[&n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            if freeze.contains(&component(&n)) {
                assert!(same, "{name}: frozen {n} ({}) changed", component(&n));
            } else if !same {
                changed += 1;
            }
        }
        assert!(changed > 0, "{name}: nothing trainable changed");
        // The saved model directory loads as its design.
        let loaded = load_dir(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config.design, cfg.model.design);
    }
}

#[test]
fn freezing_an_unknown_component_or_everything_is_an_error() {
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    let ctl = RunControl {
        resume: false,
        progress: &quiet,
        stop_after: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let e = train(
        &train_config("llava-tiny", &["vision"]),
        TextTokenizer::builtin().unwrap(),
        dir.path(),
        &ctl,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"vision\"") && e.contains("encoder"), "{e}");
    let e = train(
        &train_config("llava-tiny", &["encoder", "connector", "decoder"]),
        TextTokenizer::builtin().unwrap(),
        dir.path(),
        &ctl,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nothing to train"), "{e}");
}

#[test]
fn a_native_layout_batch_is_refused_by_a_resampling_model_with_a_clear_error() {
    let tok = tokenizer();
    let native = config("fuyu-tiny", &tok);
    let cfg = config("qformer-tiny", &tok);
    let (model, _vm) = init_model(&cfg, 0, &Device::Cpu).unwrap();
    let batch = batch_of(&native, &tok, &[(48, 48)], 3);
    let e = model.forward(&batch, None, false).unwrap_err().to_string();
    assert!(e.contains("16 token slots") && e.contains("needs 4"), "{e}");
}

#[test]
fn a_config_whose_design_does_not_match_its_bolt_section_is_refused() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("llava-tiny", &tok);
    cfg.design = Design::Native;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let e = read_config(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("bolt section is present"),
        "{e}"
    );
    // A bolted-on design must be the one its connector makes.
    cfg.design = Design::Flamingo;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let e = read_config(dir.path()).unwrap_err().to_string();
    assert!(e.contains("its connector is \"mlp\""), "{e}");
    cfg.design = Design::Llava;
    cfg.model.bolt.as_mut().unwrap().encoder.n_heads = 5;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let e = read_config(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not divisible by n_heads 5"), "{e}");
}

#[test]
fn audio_encoders_give_the_expected_token_counts() {
    let tok = tokenizer();
    // 0.5 s and 1.1 s at 16 kHz: 50 and 110 log-mel frames, 25 and 55 tokens of two frames.
    let clips = [vec![0.1f32; 8000], vec![0.05f32; 17600]];
    for (name, per_clip) in [
        ("llava-audio-tiny", None),
        ("qformer-audio-tiny", Some(4)),
        ("flamingo-audio-tiny", Some(1)),
    ] {
        let cfg = config(name, &tok);
        let (model, _vm) = init_model(&cfg, 0, &Device::Cpu).unwrap();
        let b = cfg.builder(tok.clone());
        let seqs: Vec<_> = clips
            .iter()
            .map(|c| {
                b.build(&[
                    Segment::Audio(mmlab::fusion::AudioInput::Samples(c.clone())),
                    Segment::Text("Is there a beep?".into()),
                ])
                .unwrap()
            })
            .collect();
        let batch = collate(&seqs, tok.specials.pad, PadSide::Left).unwrap();
        let frames: Vec<usize> = batch.audio.iter().map(|a| a.n_frames).collect();
        let slots: Vec<usize> = batch.audio.iter().map(|a| a.n_slots).collect();
        assert_eq!(frames, vec![25, 55], "{name}");
        match per_clip {
            // The stride-2 convolution halves the frames (rounding up).
            None => assert_eq!(slots, vec![13, 28], "{name}"),
            Some(n) => assert_eq!(slots, vec![n, n], "{name}"),
        }
        let bolt = model.bolted().unwrap();
        match bolt.audio_input(&batch).unwrap() {
            Connected::Slots(t) => {
                assert_eq!(
                    t.dims(),
                    &[batch.frame_positions.len(), cfg.model.d_model],
                    "{name}"
                )
            }
            Connected::Context(c) => assert_eq!(c.latents.dims(), &[2, 4, 16], "{name}"),
        }
        let out = model.forward(&batch, None, false).unwrap();
        assert_eq!(out.hidden.dims(), &[2, batch.seq_len, cfg.model.d_model]);
    }
}

#[test]
fn sound_caption_pretraining_feeds_the_audio_encoder_of_a_later_stage() {
    use mmlab::train::contrastive::{pretrain, ContrastiveLoss, PretrainConfig, PretrainModality};
    let tok = TextTokenizer::builtin().unwrap();
    let model = config("llava-audio-tiny", &tok);
    let pre = tempfile::tempdir().unwrap();
    let pc = PretrainConfig {
        model: model.clone(),
        data: SyntheticData::small(),
        loss: ContrastiveLoss::Siglip,
        steps: 3,
        batch_size: 4,
        lr: 1e-3,
        seed: 1,
        eval_pairs: 4,
        modality: PretrainModality::Audio,
    };
    let r = pretrain(&pc, &tok, pre.path(), &|_, _, _| {}).unwrap();
    assert_eq!(r.after.pairs, 4);
    let enc = candle_core::safetensors::load(pre.path().join("encoder.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(enc.keys().any(|k| k.starts_with("audio_encoder.")));
    assert!(!enc.keys().any(|k| k.starts_with("vision_encoder.")));
    // Stage 2 with the pre-trained audio encoder, kept frozen: it must come out unchanged.
    let mut tc = train_config("llava-audio-tiny", &["encoder"]);
    tc.steps = 2;
    tc.init_audio_encoder = Some(pre.path().to_path_buf());
    let out = tempfile::tempdir().unwrap();
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    train(
        &tc,
        TextTokenizer::builtin().unwrap(),
        out.path(),
        &RunControl {
            resume: false,
            progress: &quiet,
            stop_after: None,
        },
    )
    .unwrap();
    let trained =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut n = 0;
    for (k, v) in &enc {
        if k.starts_with("audio_encoder.") {
            let a = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = trained[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{k}");
            n += 1;
        }
    }
    assert!(n > 4);
    // An image preset has no audio encoder to pre-train.
    let mut bad = pc.clone();
    bad.model = config("llava-tiny", &tok);
    let e = pretrain(&bad, &tok, pre.path(), &|_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no audio encoder"), "{e}");
}
