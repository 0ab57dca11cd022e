//! In-memory training questions checked against the scene annotations.

use mmlab_datasets::*;

fn rng(i: u64) -> DataRng {
    stream_rng(99, i, 0)
}

fn presence_object(q: &str, medium: &str) -> String {
    let rest = q
        .strip_prefix("Is there an ")
        .or_else(|| q.strip_prefix("Is there a "))
        .unwrap();
    rest.strip_suffix(&format!(" in the {medium}?"))
        .unwrap()
        .to_string()
}

#[test]
fn training_questions_answer_from_the_annotation() {
    let cfg = SceneConfig::small();
    let mix = QaMix::default();
    let (mut yes, mut no) = (0, 0);
    let mut count_hist = [0usize; 7];
    let mut hard_no = 0;
    let mut kinds = std::collections::HashSet::new();
    for i in 0..2000 {
        let s = generate_scene(&cfg, 13, i);
        let qs = training_questions(&s, &mix, &mut rng(i));
        for q in &qs {
            kinds.insert(q.kind);
            match q.kind {
                QaKind::Presence => {
                    let shape = Shape::from_name(&presence_object(&q.question, "image")).unwrap();
                    assert_eq!(
                        q.answer,
                        if s.contains(shape) { "yes" } else { "no" },
                        "{}",
                        q.question
                    );
                    if q.answer == "yes" {
                        yes += 1;
                    } else {
                        no += 1;
                        if s.categories().iter().any(|p| p.affinity(shape) > 0)
                            || shape.popularity_rank() < 4
                        {
                            hard_no += 1;
                        }
                    }
                }
                QaKind::Count => {
                    let word = q
                        .question
                        .strip_prefix("How many ")
                        .and_then(|r| r.strip_suffix(" are there in the image?"))
                        .unwrap();
                    let shape = Shape::from_name(word).unwrap();
                    assert_eq!(q.answer, s.count(shape).to_string());
                    count_hist[s.count(shape)] += 1;
                }
                QaKind::Colour => {
                    let word = q
                        .question
                        .strip_prefix("What colour is the ")
                        .and_then(|r| r.strip_suffix('?'))
                        .unwrap();
                    let shape = Shape::from_name(word).unwrap();
                    let objs: Vec<_> = s.objects.iter().filter(|o| o.category == shape).collect();
                    assert_eq!(objs.len(), 1);
                    assert_eq!(q.answer, objs[0].colour.name());
                }
                QaKind::Attribute => {
                    let phrase = presence_object(&q.question, "image");
                    let (c, sh) = phrase.split_once(' ').unwrap();
                    let (c, sh) = (Colour::from_name(c).unwrap(), Shape::from_name(sh).unwrap());
                    let present = s.objects.iter().any(|o| o.colour == c && o.category == sh);
                    assert_eq!(q.answer, if present { "yes" } else { "no" });
                    // "no" attribute questions keep a present shape: only the colour decides.
                    assert!(s.contains(sh));
                }
                QaKind::Spatial => {
                    let (a, rest) = q
                        .question
                        .strip_prefix("Is the ")
                        .unwrap()
                        .split_once(' ')
                        .unwrap();
                    let b = rest.rsplit(' ').next().unwrap().trim_end_matches('?');
                    let oa = s.objects.iter().find(|o| o.category.name() == a).unwrap();
                    let ob = s.objects.iter().find(|o| o.category.name() == b).unwrap();
                    let expect = if rest.starts_with("to the left or right") {
                        if oa.centre[0] < ob.centre[0] {
                            "left"
                        } else {
                            "right"
                        }
                    } else if oa.centre[1] < ob.centre[1] {
                        "above"
                    } else {
                        "below"
                    };
                    assert_eq!(q.answer, expect, "{}", q.question);
                }
                QaKind::Caption => {
                    for o in &s.objects {
                        assert!(
                            q.answer.contains(o.colour.name()),
                            "{} lacks {}",
                            q.answer,
                            o.colour
                        );
                        assert!(
                            q.answer.contains(o.category.name()),
                            "{} lacks {}",
                            q.answer,
                            o.category
                        );
                    }
                }
                other => panic!("unexpected kind {other:?}"),
            }
        }
    }
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    let share = yes as f64 / (yes + no) as f64;
    assert!((0.45..=0.55).contains(&share), "yes share {share}");
    // Hard negatives are over-represented compared with a uniform choice of absent shapes.
    assert!(
        hard_no as f64 / no as f64 > 0.75,
        "hard share {}",
        hard_no as f64 / no as f64
    );
    for h in count_hist {
        assert!(h > 150, "count answers {count_hist:?}");
    }
}

#[test]
fn captions_read_naturally() {
    let mut s = generate_scene(&SceneConfig::small(), 1, 0);
    s.objects.truncate(0);
    assert_eq!(caption(&s), "nothing");
    let base = generate_scene_with_count(&SceneConfig::small(), 1, 3, 3);
    let c = caption(&base);
    assert!(!c.is_empty());
    let n: usize = base.count(base.probe);
    assert_eq!(n, 3);
}

#[test]
fn audio_and_mixed_questions_answer_from_the_annotation() {
    let scfg = SceneConfig::small();
    let acfg = SoundConfig::short();
    let mut yes = 0;
    let mut total = 0;
    for i in 0..1000 {
        let clip = generate_sound(&acfg, 3, i);
        for q in audio_training_questions(&clip, &QaMix::default(), &mut rng(i)) {
            match q.kind {
                QaKind::AudioPresence => {
                    let c = SoundClass::from_name(&presence_object(&q.question, "audio")).unwrap();
                    assert_eq!(q.answer, if clip.contains(c) { "yes" } else { "no" });
                    yes += (q.answer == "yes") as usize;
                    total += 1;
                }
                QaKind::AudioCount => {
                    let word = q
                        .question
                        .strip_prefix("How many ")
                        .and_then(|r| r.strip_suffix(" are there in the audio?"))
                        .unwrap();
                    let c = SoundClass::from_name(word).unwrap();
                    assert_eq!(q.answer, clip.count(c).to_string());
                }
                QaKind::AudioCaption => {
                    for e in &clip.events {
                        assert!(q.answer.contains(e.class.name()));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let scene = generate_scene(&scfg, 3, i);
        let m = mixed_questions(&scene, &clip, &mut rng(i));
        assert_eq!(m.len(), 3);
        let total_count = scene.count(scene.probe) + clip.count(clip.probe);
        assert_eq!(m[2].answer, total_count.to_string());
        let more = scene.count(scene.probe) > clip.count(clip.probe);
        assert_eq!(m[1].answer, if more { "yes" } else { "no" });
        let q = &m[0].question;
        let shape = Shape::ALL
            .iter()
            .find(|s| q.contains(&format!(" {} in the image", s.name())))
            .unwrap();
        let class = SoundClass::ALL
            .iter()
            .find(|c| q.contains(&format!(" {} in the audio", c.name())))
            .unwrap();
        let both = scene.contains(*shape) && clip.contains(*class);
        assert_eq!(m[0].answer, if both { "yes" } else { "no" });
    }
    let share = yes as f64 / total as f64;
    assert!((0.45..=0.55).contains(&share), "{share}");
}

#[test]
fn compositional_questions_ask_about_held_out_pairs() {
    let held = default_held_out();
    let cfg = SceneConfig {
        composition: Composition::Unseen,
        ..SceneConfig::small()
    };
    for i in 0..300 {
        let s = generate_scene(&cfg, 8, i);
        let qs = compositional_questions(&s, &held, &mut rng(i));
        assert!(qs.iter().any(|q| q.answer == "yes"));
        for q in qs.iter().filter(|q| q.kind == QaKind::Attribute) {
            let phrase = presence_object(&q.question, "image");
            let (c, sh) = phrase.split_once(' ').unwrap();
            let pair = (Colour::from_name(c).unwrap(), Shape::from_name(sh).unwrap());
            assert!(held.contains(&pair), "{pair:?} is not held out");
            let present = s.objects.iter().any(|o| (o.colour, o.category) == pair);
            assert_eq!(q.answer, if present { "yes" } else { "no" });
        }
    }
}

#[test]
fn training_questions_are_deterministic_in_the_rng() {
    let s = generate_scene(&SceneConfig::medium(), 1, 1);
    let a = training_questions(&s, &QaMix::default(), &mut rng(5));
    let b = training_questions(&s, &QaMix::default(), &mut rng(5));
    assert_eq!(a, b);
}
