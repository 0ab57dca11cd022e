//! POPE and counting builders checked against their definitions, with statistics
//! recomputed here independently of the crate.

use std::collections::{HashMap, HashSet};

use mmlab_datasets::*;

fn scene_items(n: usize) -> Vec<AnnotatedItem> {
    let cfg = SceneConfig::small();
    (0..)
        .map(|i| (i, generate_scene(&cfg, 21, i)))
        .filter(|(_, s)| s.categories().len() >= 3)
        .take(n)
        .map(|(i, s)| AnnotatedItem {
            media: format!("{i:06}.png"),
            objects: s
                .categories()
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
        })
        .collect()
}

fn object_of(q: &PopeQuestion) -> String {
    q.object().expect("POPE question text").to_string()
}

/// Checks one split of a POPE set against the POPE definition.
fn check_split(items: &[AnnotatedItem], split: PopeSplit, qs: &[PopeQuestion]) {
    // Independent statistics.
    let mut freq: HashMap<&str, usize> = HashMap::new();
    let mut co: HashMap<(&str, &str), usize> = HashMap::new();
    for it in items {
        for a in &it.objects {
            *freq.entry(a).or_default() += 1;
            for b in &it.objects {
                if a != b {
                    *co.entry((a, b)).or_default() += 1;
                }
            }
        }
    }
    let vocab: Vec<&str> = freq.keys().copied().collect();
    let by_image: HashMap<&str, &AnnotatedItem> =
        items.iter().map(|i| (i.media.as_str(), i)).collect();
    assert_eq!(qs.len(), items.len() * 6);
    assert_eq!(
        qs.iter().filter(|q| q.label == YesNo::Yes).count(),
        qs.len() / 2
    );
    for (k, q) in qs.iter().enumerate() {
        assert_eq!(q.question_id, k as u64 + 1);
        assert_eq!(q.label, if k % 2 == 0 { YesNo::Yes } else { YesNo::No });
    }
    for group in qs.chunks(6) {
        let item = by_image[group[0].image.as_str()];
        assert!(group.iter().all(|q| q.image == item.media));
        let mut history: Vec<String> = Vec::new();
        for pair in group.chunks(2) {
            let (yes, no) = (object_of(&pair[0]), object_of(&pair[1]));
            assert!(
                item.objects.contains(&yes),
                "yes object {yes} not annotated"
            );
            assert!(!item.objects.contains(&no), "no object {no} is annotated");
            history.push(yes.clone());
            let usable: Vec<&str> = vocab
                .iter()
                .copied()
                .filter(|o| !item.objects.iter().any(|x| x == o) && !history.iter().any(|h| h == o))
                .collect();
            assert!(usable.contains(&no.as_str()), "{no} repeated or present");
            match split {
                PopeSplit::Random => {}
                PopeSplit::Popular => {
                    let best = usable.iter().map(|o| freq[o]).max().unwrap();
                    assert_eq!(
                        freq[no.as_str()],
                        best,
                        "{no} is not the most frequent absent object"
                    );
                }
                PopeSplit::Adversarial => {
                    let score = |o: &str| co.get(&(yes.as_str(), o)).copied().unwrap_or(0);
                    let best = usable.iter().map(|o| score(o)).max().unwrap();
                    assert_eq!(score(&no), best, "{no} does not co-occur most with {yes}");
                }
            }
            history.push(no);
        }
    }
}

#[test]
fn pope_on_scenes_follows_the_definition() {
    let items = scene_items(500);
    let set = build_pope(&items, &PopeConfig::default()).unwrap();
    assert_eq!(set.items.len(), 500);
    for split in PopeSplit::ALL {
        let qs = set.split(split);
        assert_eq!(qs.len(), 3000);
        assert_eq!(qs.iter().filter(|q| q.label == YesNo::Yes).count(), 1500);
        assert_eq!(qs.iter().filter(|q| q.label == YesNo::No).count(), 1500);
        let images: HashSet<&str> = qs.iter().map(|q| q.image.as_str()).collect();
        assert_eq!(images.len(), 500);
        check_split(&set.items, split, qs);
    }
    // The splits differ where they should: popular negatives are concentrated.
    let distinct = |s: PopeSplit| {
        set.split(s)
            .iter()
            .filter(|q| q.label == YesNo::No)
            .map(object_of)
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(distinct(PopeSplit::Random) > distinct(PopeSplit::Popular));
    let text = &set.split(PopeSplit::Random)[0].text;
    assert!(text.starts_with("Is there a") && text.ends_with(" in the image?"));
}

#[test]
fn pope_samples_images_with_enough_objects_and_reports_shortage() {
    let mut items = scene_items(40);
    items.push(AnnotatedItem {
        media: "few.png".into(),
        objects: vec!["ring".into()],
    });
    let cfg = PopeConfig {
        images: 30,
        ..PopeConfig::default()
    };
    let set = build_pope(&items, &cfg).unwrap();
    assert_eq!(set.items.len(), 30);
    assert!(set.items.iter().all(|i| i.media != "few.png"));
    // Same seed, same sample; another seed, another sample.
    let again = build_pope(&items, &cfg).unwrap();
    assert_eq!(set.items, again.items);
    let other = build_pope(
        &items,
        &PopeConfig {
            seed: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(set.items, other.items);
    let err = build_pope(&items, &PopeConfig { images: 41, ..cfg }).unwrap_err();
    assert!(err.to_string().contains("found 40"), "{err}");
}

#[test]
fn pope_text_uses_an_before_vowels() {
    assert_eq!(
        pope_text(IMAGE_TEMPLATE, "arrow"),
        "Is there an arrow in the image?"
    );
    assert_eq!(
        pope_text(IMAGE_TEMPLATE, "ring"),
        "Is there a ring in the image?"
    );
    assert_eq!(
        pope_text(AUDIO_TEMPLATE, "siren"),
        "Is there a siren in the audio?"
    );
    let q = PopeQuestion {
        question_id: 1,
        image: "x".into(),
        text: "Is there an traffic light in the image?".into(),
        label: YesNo::No,
    };
    assert_eq!(q.object(), Some("traffic light"));
}

#[test]
fn official_pope_files_load_exactly() {
    let candidates = [
        std::env::var("MMLAB_POPE_DIR").unwrap_or_default(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/pope-coco").to_string(),
        "/work/shared/data/pope-coco".to_string(),
    ];
    let Some(dir) = candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.join("coco_pope_random.json").is_file())
    else {
        eprintln!("official POPE files not found; set MMLAB_POPE_DIR to check them");
        return;
    };
    for split in ["random", "popular", "adversarial"] {
        let qs = load_pope(&dir.join(format!("coco_pope_{split}.json"))).unwrap();
        assert_eq!(qs.len(), 3000, "{split}");
        assert_eq!(qs.iter().filter(|q| q.label == YesNo::Yes).count(), 1500);
        assert_eq!(qs.iter().filter(|q| q.label == YesNo::No).count(), 1500);
        let images: HashSet<&str> = qs.iter().map(|q| q.image.as_str()).collect();
        assert_eq!(images.len(), 500);
        assert!(qs.iter().all(|q| q.object().is_some()));
        assert_eq!(qs[0].question_id, 1);
        assert_eq!(qs[2999].question_id, 3000);
    }
}

#[test]
fn count_questions_match_annotations_and_are_balanced() {
    let cfg = SceneConfig::small();
    let items: Vec<(Scene, CountItem)> = (0..700u64)
        .map(|i| {
            let s = generate_scene_with_count(&cfg, 5, i, (i % 7) as usize);
            let item = CountItem {
                media: format!("{i:06}.png"),
                counts: s
                    .counts()
                    .into_iter()
                    .map(|(c, n)| (c.name().to_string(), n))
                    .collect(),
            };
            (s, item)
        })
        .collect();
    let plain: Vec<CountItem> = items.iter().map(|(_, c)| c.clone()).collect();
    let plural = |o: &str| Shape::from_name(o).unwrap().plural().to_string();
    let qs = build_count_questions(&plain, 6, 1, &plural, "image");
    assert_eq!(qs.len(), 700);
    let mut hist = [0usize; 7];
    for (q, (scene, _)) in qs.iter().zip(items.iter()) {
        let shape = Shape::from_name(&q.object).unwrap();
        assert_eq!(q.label, scene.count(shape).to_string(), "{}", q.text);
        assert_eq!(
            q.text,
            format!("How many {} are there in the image?", shape.plural())
        );
        hist[scene.count(shape)] += 1;
    }
    assert!(hist.iter().all(|h| (98..=102).contains(h)), "{hist:?}");
}
