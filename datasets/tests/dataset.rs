//! Dataset folders: layout, agreement between questions and annotations, manifests
//! with checksums, and byte-for-byte determinism.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use mmlab_datasets::*;
use serde_json::Value;

fn small_shapes(seed: u64) -> ShapesDatasetConfig {
    ShapesDatasetConfig {
        seed,
        pope_images: 500,
        count_images: 70,
        compositional_images: 20,
        train_images: 40,
        ..ShapesDatasetConfig::default()
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn shapes_dataset_layout_questions_and_determinism() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let done = AtomicU64::new(0);
    let cfg = small_shapes(7);
    let m = write_shapes(a.path(), &cfg, &|n| {
        done.fetch_add(n, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(done.load(Ordering::Relaxed), cfg.total_items());
    assert_eq!(m.tier, Some(Tier::Aligned));
    assert_eq!(m.seed, 7);
    assert_eq!(m.counts["images"], 630);
    let root = a.path();
    for f in [
        "annotations.jsonl",
        "train.jsonl",
        "manifest.json",
        "questions/pope-random.jsonl",
        "questions/pope-popular.jsonl",
        "questions/pope-adversarial.jsonl",
        "questions/count.jsonl",
        "questions/chair.jsonl",
        "questions/attribute.jsonl",
        "questions/compositional.jsonl",
        "images/000000.png",
        "images/000629.png",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    // Every file is listed with a correct checksum.
    let verified = verify_dataset(root).unwrap();
    assert_eq!(verified, m);
    assert_eq!(m.files.len(), 630 + 9);

    // Annotations: one per image, tier on every line.
    let ann = lines(&root.join("annotations.jsonl"));
    assert_eq!(ann.len(), 630);
    let mut objects: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for l in &ann {
        assert_eq!(l["tier"], "aligned");
        let objs = l["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["category"].as_str().unwrap().to_string(),
                    o["colour"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        objects.insert(l["image"].as_str().unwrap().to_string(), objs);
    }
    let img = image::open(root.join("images/000003.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (48, 48));
    let scene: Scene = serde_json::from_value(ann[3].clone()).unwrap();
    assert_eq!(
        render(&scene),
        img,
        "the stored annotation re-renders to the stored image"
    );

    // POPE: official line format, 1500/1500, answers agree with annotations.
    let first = std::fs::read_to_string(root.join("questions/pope-random.jsonl")).unwrap();
    let first = first.lines().next().unwrap();
    assert!(
        first.starts_with("{\"question_id\": 1, \"image\": \"000000.png\", \"text\": \"Is there a"),
        "{first}"
    );
    for split in ["random", "popular", "adversarial"] {
        let qs = load_pope(&root.join(format!("questions/pope-{split}.jsonl"))).unwrap();
        assert_eq!(qs.len(), 3000);
        assert_eq!(qs.iter().filter(|q| q.label == YesNo::Yes).count(), 1500);
        for q in &qs {
            let obj = q.object().unwrap();
            let present = objects[&q.image].iter().any(|(c, _)| c == obj);
            assert_eq!(present, q.label == YesNo::Yes, "{split} {q:?}");
        }
    }
    // Counting: labels equal annotation counts, spread over 0..=6.
    let counts = load_count_qa(&root.join("questions/count.jsonl")).unwrap();
    assert_eq!(counts.len(), 70);
    let mut hist = [0usize; 7];
    for r in &counts {
        let obj = r.object.as_deref().unwrap();
        let n = objects[&r.image].iter().filter(|(c, _)| c == obj).count();
        assert_eq!(r.count as usize, n);
        hist[n] += 1;
    }
    assert_eq!(hist, [10; 7]);
    // CHAIR prompts list the ground-truth categories.
    for l in lines(&root.join("questions/chair.jsonl")) {
        let img = l["image"].as_str().unwrap();
        let listed: Vec<&str> = l["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for (c, _) in &objects[img] {
            assert!(listed.contains(&c.as_str()));
        }
        assert_eq!(l["text"], "Describe the image.");
    }
    // Compositional questions are about held-out pairs; training never shows them.
    let held = default_held_out();
    let train = load_train(&root.join("train.jsonl")).unwrap();
    assert!(train.len() >= 40 * 4);
    for t in &train {
        let img = t.image.as_deref().unwrap();
        for (s, c) in &objects[img] {
            let pair = (Colour::from_name(c).unwrap(), Shape::from_name(s).unwrap());
            assert!(
                !held.contains(&pair),
                "training image {img} shows held-out {pair:?}"
            );
        }
    }
    let comp = lines(&root.join("questions/compositional.jsonl"));
    assert!(comp.len() >= 40);
    for l in &comp {
        let img = l["image"].as_str().unwrap();
        let sp = ann.iter().find(|a| a["image"] == img).unwrap();
        assert_eq!(sp["split"], "compositional");
    }

    // Same seed → identical bytes; another seed → different images.
    write_shapes(b.path(), &cfg, &|_| {}).unwrap();
    assert!(
        tree_bytes(a.path()) == tree_bytes(b.path()),
        "same seed gave different bytes"
    );
    let c = tempfile::tempdir().unwrap();
    let m2 = write_shapes(c.path(), &small_shapes(8), &|_| {}).unwrap();
    assert_ne!(m2.files["images/000000.png"], m.files["images/000000.png"]);

    // A corrupted file is caught by verification.
    std::fs::write(root.join("images/000001.png"), b"corrupt").unwrap();
    let e = verify_dataset(root).unwrap_err().to_string();
    assert!(e.contains("000001.png"), "{e}");
}

#[test]
fn sounds_dataset_writes_wavs_and_audio_questions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SoundsDatasetConfig {
        seed: 3,
        pope_clips: 40,
        count_clips: 25,
        train_clips: 10,
        ..SoundsDatasetConfig::default()
    };
    let m = write_sounds(dir.path(), &cfg, &|_| {}).unwrap();
    assert_eq!(m.counts["clips"], 75);
    verify_dataset(dir.path()).unwrap();
    let r = hound::WavReader::open(dir.path().join("audio/000000.wav")).unwrap();
    assert_eq!(
        (
            r.spec().channels,
            r.spec().sample_rate,
            r.spec().bits_per_sample
        ),
        (1, 16_000, 16)
    );
    let ann = lines(&dir.path().join("annotations.jsonl"));
    let classes: HashMap<String, Vec<String>> = ann
        .iter()
        .map(|l| {
            (
                l["audio"].as_str().unwrap().to_string(),
                l["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["class"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    for split in ["random", "popular", "adversarial"] {
        let raw = lines(
            &dir.path()
                .join(format!("questions/audio-pope-{split}.jsonl")),
        );
        assert_eq!(raw.len(), 240);
        assert!(raw[0].get("audio").is_some() && raw[0].get("image").is_none());
        let qs = load_pope(
            &dir.path()
                .join(format!("questions/audio-pope-{split}.jsonl")),
        )
        .unwrap();
        for q in &qs {
            assert!(q.text.ends_with("in the audio?"));
            let present = classes[&q.image].iter().any(|c| c == q.object().unwrap());
            assert_eq!(present, q.label == YesNo::Yes);
        }
    }
    let counts = lines(&dir.path().join("questions/audio-count.jsonl"));
    assert_eq!(counts.len(), 25);
    for l in &counts {
        let n = classes[l["audio"].as_str().unwrap()]
            .iter()
            .filter(|c| *c == l["object"].as_str().unwrap())
            .count();
        assert_eq!(l["label"], n.to_string());
    }
    let train = load_train(&dir.path().join("train.jsonl")).unwrap();
    assert!(train.iter().all(|t| t.audio.is_some() && t.image.is_none()));
}

#[test]
fn mixed_dataset_pairs_images_with_clips() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MixedDatasetConfig {
        seed: 1,
        eval_pairs: 12,
        train_pairs: 8,
        ..MixedDatasetConfig::default()
    };
    let m = write_mixed(dir.path(), &cfg, &|_| {}).unwrap();
    assert_eq!(m.counts["pairs"], 20);
    assert_eq!(m.counts["questions/mixed.jsonl"], 36);
    for l in lines(&dir.path().join("questions/mixed.jsonl")) {
        assert!(dir
            .path()
            .join("images")
            .join(l["image"].as_str().unwrap())
            .is_file());
        assert!(dir
            .path()
            .join("audio")
            .join(l["audio"].as_str().unwrap())
            .is_file());
    }
    let train = load_train(&dir.path().join("train.jsonl")).unwrap();
    assert!(train
        .iter()
        .any(|t| t.kind == QaKind::Mixed && t.image.is_some() && t.audio.is_some()));
    assert!(train
        .iter()
        .any(|t| t.kind == QaKind::AudioCount && t.image.is_none()));
    assert!(train
        .iter()
        .any(|t| t.kind == QaKind::Count && t.audio.is_none()));
}

#[test]
fn pope_rebuilt_from_a_coco_file() {
    // A COCO-style file with skewed, themed categories: 600 images, 12 categories.
    let names = [
        "person", "car", "dog", "cat", "chair", "table", "cup", "bowl", "apple", "banana", "bus",
        "bench",
    ];
    let mut anns = Vec::new();
    let mut images = Vec::new();
    let mut id = 1;
    for i in 0..600u64 {
        images.push(serde_json::json!({"id": i + 1, "file_name": format!("COCO_val2014_{:012}.jpg", i + 1), "width": 640, "height": 480}));
        let mut rng = stream_rng(4, i, 0);
        use rand::Rng;
        let k = rng.random_range(1..6);
        for _ in 0..k {
            let c = (rng.random::<f64>().powi(2) * 12.0) as u64;
            anns.push(serde_json::json!({"id": id, "image_id": i + 1, "category_id": c + 1, "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0}));
            id += 1;
        }
    }
    let cats: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"id": i + 1, "name": n, "supercategory": "x"}))
        .collect();
    let coco = serde_json::json!({"images": images, "annotations": anns, "categories": cats});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instances_val2014.json");
    std::fs::write(&path, serde_json::to_string(&coco).unwrap()).unwrap();
    let parsed = load_coco(&path).unwrap();
    let truth: HashMap<String, Vec<String>> = parsed
        .object_lists()
        .into_iter()
        .map(|i| (i.media, i.objects))
        .collect();
    let eligible = truth.values().filter(|o| o.len() >= 3).count();
    let cfg = PopeConfig {
        images: eligible.min(500),
        seed: 2,
        ..PopeConfig::default()
    };
    let out = dir.path().join("pope");
    let m = write_pope_from_coco(&path, &out, &cfg, &|_| {}).unwrap();
    assert_eq!(m.kind, "pope-coco");
    for split in ["random", "popular", "adversarial"] {
        let qs = load_pope(&out.join(format!("questions/pope-{split}.jsonl"))).unwrap();
        assert_eq!(qs.len(), cfg.images * 6);
        for q in &qs {
            let objs = &truth[&q.image];
            assert_eq!(
                objs.iter().any(|o| o == q.object().unwrap()),
                q.label == YesNo::Yes
            );
        }
    }
    let e = write_pope_from_coco(
        &path,
        &out,
        &PopeConfig {
            images: eligible + 1,
            ..cfg
        },
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("POPE"), "{e}");
}
