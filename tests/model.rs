//! Native model: gradients reach every parameter, finite differences agree with autograd,
//! prefix-cached generation equals full generation, checkpoints reject bad files, and a
//! resumed training run matches an uninterrupted one.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use mmlab::fusion::{collate, Batch, MultimodalSequence, PadSide, SequenceBuilder, TextTokenizer};
use mmlab::model::generate::{generate, generate_with_prefixes, GenerateOptions};
use mmlab::model::presets::{parameter_count, preset, presets};
use mmlab::model::KvCache;
use mmlab::train::data::{Factory, Source, SyntheticData};
use mmlab::train::{init_model, named_vars};

mod common;

fn tokenizer() -> Arc<TextTokenizer> {
    Arc::new(TextTokenizer::builtin().expect("builtin tokenizer"))
}

/// A batch with image sequences and audio sequences from the synthetic generator.
fn mixed_batch(cfg: &mmlab::model::ModelDirConfig, tok: Arc<TextTokenizer>, n: usize) -> Batch {
    let pad = tok.specials.pad;
    collate(&mixed_seqs(cfg, tok, n), pad, PadSide::Right).expect("collate")
}

/// `n` image sequences then two audio sequences from the synthetic generator.
fn mixed_seqs(
    cfg: &mmlab::model::ModelDirConfig,
    tok: Arc<TextTokenizer>,
    n: usize,
) -> Vec<MultimodalSequence> {
    let builder = cfg.builder(tok.clone());
    let mut d = SyntheticData::small();
    d.scene.width = cfg.image.max_width as u32;
    d.scene.height = cfg.image.max_height as u32;
    let f = Factory::new(Source::Synthetic(d.clone()), 7, n, builder);
    let mut seqs: Vec<_> = f
        .batch(0)
        .expect("image batch")
        .into_iter()
        .map(|e| e.seq)
        .collect();
    let audio_step = d.audio_every - 1;
    seqs.extend(
        f.batch(audio_step)
            .expect("audio batch")
            .into_iter()
            .take(2)
            .map(|e| e.seq),
    );
    seqs
}

/// Opens Flamingo's tanh gates (they start at zero, which by design blocks the gradient of
/// everything behind them on the first step; only the gates themselves get one).
fn open_gates(vm: &candle_nn::VarMap) {
    for (name, var) in named_vars(vm) {
        if name.ends_with("_gate") {
            var.set(&Tensor::new(&[0.5f32], &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn every_parameter_of_every_preset_gets_a_gradient() {
    let tok = tokenizer();
    for p in presets() {
        let mut cfg = p.config.clone();
        cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
        let (model, vm) = init_model(&cfg, 1, &Device::Cpu).expect("init");
        open_gates(&vm);
        let vars = named_vars(&vm);
        let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(
            n,
            parameter_count(&cfg.model),
            "{}: parameter_count disagrees with the built model",
            p.name
        );
        let batch = mixed_batch(&cfg, tok.clone(), 4);
        assert!(!batch.patch_positions.is_empty() && !batch.frame_positions.is_empty());
        let (loss, _) = model.loss(&batch).expect("loss");
        let grads = loss.backward().expect("backward");
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", p.name));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: gradient of {name} is {norm}",
                p.name
            );
        }
    }
}

/// A batch cut into shards of examples (one per thread in training) gives the loss and
/// gradients of the whole batch: each shard's mean loss is weighted by its share of the answer
/// tokens. Shards of unequal size and unequal target counts (images, then audio) are covered.
#[test]
fn sharded_step_equals_the_whole_batch() {
    use mmlab::train::step::{collate_shards, gradients};
    let tok = tokenizer();
    let pad = tok.specials.pad;
    for name in ["fuyu-tiny", "llava-tiny", "flamingo-audio-tiny"] {
        let mut cfg = preset(name).unwrap().config;
        cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
        let (model, vm) = init_model(&cfg, 5, &Device::Cpu).unwrap();
        open_gates(&vm);
        let vars: Vec<_> = named_vars(&vm).into_iter().map(|(_, v)| v).collect();
        let seqs = mixed_seqs(&cfg, tok.clone(), 5);
        let whole = gradients(&model, &collate_shards(&seqs, 1, pad).unwrap(), &vars).unwrap();
        assert!(
            gradients(&model, &[], &vars).is_err(),
            "no batch is an error"
        );
        for k in [2, 3, 7] {
            let shards = collate_shards(&seqs, k, pad).unwrap();
            assert_eq!(shards.len(), k.min(seqs.len()));
            let sizes: Vec<usize> = shards.iter().map(|b| b.batch).collect();
            assert_eq!(sizes.iter().sum::<usize>(), seqs.len());
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            let split = gradients(&model, &shards, &vars).unwrap();
            assert_eq!(split.n_targets, whole.n_targets, "{name}, {k} shards");
            assert!(
                (split.loss - whole.loss).abs() <= 1e-5,
                "{name}, {k} shards: loss {} against {}",
                split.loss,
                whole.loss
            );
            for v in &vars {
                let (a, b) = (
                    whole.grads.get(v.as_tensor()).unwrap(),
                    split.grads.get(v.as_tensor()).unwrap(),
                );
                let diff = common::max_diff(a, b);
                let scale = common::max_abs(a).max(1.0);
                assert!(
                    diff <= 1e-5 * scale,
                    "{name}, {k} shards: gradient differs by {diff} (largest entry {scale})"
                );
            }
        }
    }
}

#[test]
fn finite_differences_match_autograd_on_fuyu_tiny() {
    finite_differences_match_autograd("fuyu-tiny");
}

#[test]
fn finite_differences_match_autograd_on_the_bolted_tiny_presets() {
    for name in [
        "llava-tiny",
        "qformer-tiny",
        "flamingo-tiny",
        "llava-audio-tiny",
        "flamingo-audio-tiny",
    ] {
        finite_differences_match_autograd(name);
    }
}

fn finite_differences_match_autograd(preset_name: &str) {
    let tok = tokenizer();
    let mut cfg = preset(preset_name).unwrap().config;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let (model, vm) = init_model(&cfg, 3, &Device::Cpu).unwrap();
    open_gates(&vm);
    let batch = mixed_batch(&cfg, tok, 4);
    let (loss, _) = model.loss(&batch).unwrap();
    let grads = loss.backward().unwrap();
    let loss_at = || model.loss(&batch).unwrap().0.to_scalar::<f32>().unwrap() as f64;
    let mut checked = 0;
    for (name, var) in named_vars(&vm) {
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The element with the largest gradient: the one finite differences resolve best.
        let (i, gi) =
            g.iter().enumerate().fold(
                (0, 0f32),
                |b, (i, &v)| if v.abs() > b.1.abs() { (i, v) } else { b },
            );
        if gi.abs() < 1e-3 {
            continue;
        }
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // A step small enough that curvature does not matter, large enough for f32 loss resolution.
        let h = (2e-3 / gi.abs()).clamp(1e-4, 1e-2);
        let set = |delta: f32| {
            let mut w = orig.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, var.shape().clone(), &Device::Cpu).unwrap())
                .unwrap();
        };
        set(h);
        let lp = loss_at();
        set(-h);
        let lm = loss_at();
        set(0.0);
        let fd = (lp - lm) / (2.0 * h as f64);
        let rel = (fd - gi as f64).abs() / (gi.abs() as f64).max(1e-3);
        assert!(
            rel < 0.05,
            "{preset_name} {name}[{i}]: autograd {gi}, finite difference {fd} (rel err {rel:.3})"
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} parameters had a gradient large enough to check"
    );
}

#[test]
fn prefix_cached_generation_equals_full_generation() {
    prefix_cached_generation_equals_full("fuyu-tiny");
}

#[test]
fn prefix_cached_generation_equals_full_generation_for_bolted_designs() {
    for name in [
        "llava-tiny",
        "qformer-tiny",
        "flamingo-tiny",
        "qformer-audio-tiny",
    ] {
        prefix_cached_generation_equals_full(name);
    }
}

fn prefix_cached_generation_equals_full(preset_name: &str) {
    let tok = tokenizer();
    let mut cfg = preset(preset_name).unwrap().config;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let (model, vm) = init_model(&cfg, 5, &Device::Cpu).unwrap();
    open_gates(&vm);
    let builder = cfg.builder(tok.clone());
    let d = SyntheticData::small();
    let questions = [
        "Is there a ring in the image?",
        "How many stars are there in the image?",
        "Is there a red circle?",
    ];
    let mut prefixes = Vec::new();
    let mut suffixes = Vec::new();
    let mut full = Vec::new();
    for img in 0..3u64 {
        let scene = mmlab_datasets::generate_scene(&d.scene, 11, img);
        let grid = mmlab::fusion::patchify(&mmlab_datasets::render(&scene), &cfg.image);
        let mut pre = builder.build_with_patches(&grid, &[], None);
        pre.target_mask.pop();
        pre.tokens.pop();
        pre.modality.pop();
        pre.positions.pop();
        for (qi, q) in questions.iter().enumerate().take(img as usize + 1) {
            let mut ids = tok.encode(q).unwrap();
            full.push(builder.build_with_patches(&grid, &ids, None));
            ids.push(tok.specials.boa);
            suffixes.push((prefixes.len(), ids));
            let _ = qi;
        }
        prefixes.push(pre);
    }
    let opts = GenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let a = generate(&model, &full, tok.specials.pad, &opts).unwrap();
    let b = generate_with_prefixes(&model, &prefixes, &suffixes, tok.specials.pad, &opts).unwrap();
    assert_eq!(a, b);
    // And the next-token logits agree numerically.
    let batch = collate(&full[..1], tok.specials.pad, PadSide::Left).unwrap();
    let lf = model
        .last_logits(&model.forward(&batch, None, false).unwrap().hidden)
        .unwrap();
    let mut cache = KvCache::default();
    let pb = collate(&prefixes[..1], tok.specials.pad, PadSide::Left).unwrap();
    model.forward(&pb, Some(&mut cache), false).unwrap();
    let ids = &suffixes[0].1;
    let sb = Batch {
        batch: 1,
        seq_len: ids.len(),
        tokens: ids.clone(),
        positions: (0..ids.len() as u32)
            .map(|k| cache.next_pos[0] + k)
            .collect(),
        attention_mask: vec![1; ids.len()],
        target_mask: vec![false; ids.len()],
        modality: vec![mmlab::fusion::TokenKind::Text; ids.len()],
        ..Default::default()
    };
    let lc = model
        .last_logits(&model.forward(&sb, Some(&mut cache), false).unwrap().hidden)
        .unwrap();
    let diff = (lf - lc)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-4,
        "{preset_name}: prefix-cached logits differ by {diff}"
    );
}

#[test]
fn left_padding_does_not_change_the_answer() {
    let tok = tokenizer();
    let mut cfg = preset("fuyu-tiny").unwrap().config;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let (model, _vm) = init_model(&cfg, 9, &Device::Cpu).unwrap();
    let builder = SequenceBuilder::new(tok.clone(), cfg.image, cfg.audio);
    let scene = mmlab_datasets::generate_scene(&SyntheticData::small().scene, 2, 0);
    let grid = mmlab::fusion::patchify(&mmlab_datasets::render(&scene), &cfg.image);
    let short = builder.build_with_patches(&grid, &tok.encode("Is there a ring?").unwrap(), None);
    let long = builder.build_with_patches(
        &grid,
        &tok.encode("How many rings are there in the image today?")
            .unwrap(),
        None,
    );
    let opts = GenerateOptions {
        max_new_tokens: 4,
        ..Default::default()
    };
    let alone = generate(
        &model,
        std::slice::from_ref(&short),
        tok.specials.pad,
        &opts,
    )
    .unwrap();
    let padded = generate(&model, &[long, short], tok.specials.pad, &opts).unwrap();
    assert_eq!(alone[0], padded[1]);
}
