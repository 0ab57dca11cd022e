//! Scene generator and renderer checked against the annotations and the tier definitions.

use std::collections::HashMap;

use mmlab_datasets::scene::{BACKGROUND_COLOURS, GRADIENT_PAIRS, NOISE_AMPLITUDE};
use mmlab_datasets::*;

fn dist(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (*x as f32 - *y as f32).powi(2))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn aligned_tier_puts_each_object_alone_inside_one_cell() {
    let cfg = SceneConfig::small();
    assert_eq!(
        (cfg.width, cfg.height, cfg.cell, cfg.tier),
        (48, 48, 12, Tier::Aligned)
    );
    let mut sizes_seen = std::collections::HashSet::new();
    for i in 0..500 {
        let s = generate_scene(&cfg, 3, i);
        assert_eq!(s.tier, Tier::Aligned);
        assert!(
            (1..=6).contains(&s.objects.len()),
            "{} objects",
            s.objects.len()
        );
        let mut cells = std::collections::HashSet::new();
        for o in &s.objects {
            let [c, r] = o.cell.expect("aligned objects record their cell");
            assert!(cells.insert((c, r)), "two objects share cell {c},{r}");
            let (x0, y0) = ((c * 12) as f32, (r * 12) as f32);
            assert!(o.bbox[0] >= x0 && o.bbox[1] >= y0, "{o:?} leaves its cell");
            assert!(
                o.bbox[2] <= x0 + 12.0 && o.bbox[3] <= y0 + 12.0,
                "{o:?} leaves its cell"
            );
            let centre_off = ((o.centre[0] - x0 - 6.0).abs()).max((o.centre[1] - y0 - 6.0).abs());
            assert!(centre_off <= cfg.jitter as f32, "jitter {centre_off}");
            assert_eq!(o.visible, 1.0);
            sizes_seen.insert(o.size);
        }
    }
    assert_eq!(sizes_seen.len(), 2, "both sizes occur");
}

#[test]
fn free_tier_limits_overlap_and_occlusion_tier_records_visibility() {
    let cfg = SceneConfig::free_medium();
    for i in 0..200 {
        let s = generate_scene(&cfg, 5, i);
        assert_eq!(s.tier, Tier::Free);
        for (a, oa) in s.objects.iter().enumerate() {
            assert!(
                oa.bbox[0] >= 0.0 && oa.bbox[2] <= 96.0 && oa.bbox[1] >= 0.0 && oa.bbox[3] <= 96.0
            );
            for ob in &s.objects[a + 1..] {
                let w = (oa.bbox[2].min(ob.bbox[2]) - oa.bbox[0].max(ob.bbox[0])).max(0.0);
                let h = (oa.bbox[3].min(ob.bbox[3]) - oa.bbox[1].max(ob.bbox[1])).max(0.0);
                let small = (oa.extent * oa.extent).min(ob.extent * ob.extent);
                assert!(
                    w * h <= cfg.max_overlap * small + 1e-3,
                    "overlap {} of {}",
                    w * h,
                    small
                );
            }
        }
    }
    let cfg = SceneConfig::occlusion_medium();
    let mut occluded = 0;
    for i in 0..200 {
        let s = generate_scene(&cfg, 5, i);
        assert_eq!(s.tier, Tier::Occlusion);
        for o in &s.objects {
            assert!(
                o.visible >= cfg.min_visible - 0.01,
                "visible {} < {}",
                o.visible,
                cfg.min_visible
            );
            assert!(o.visible <= 1.0);
            if o.visible < 0.999 {
                occluded += 1;
            }
        }
        // The last object is drawn on top of everything.
        if let Some(last) = s.objects.last() {
            assert_eq!(last.visible, 1.0);
        }
    }
    assert!(
        occluded > 100,
        "only {occluded} occluded objects in 200 occlusion scenes"
    );
}

#[test]
fn occlusion_visibility_matches_rendered_pixels() {
    // Visible fraction ≈ share of the object's own pixels still showing its colour.
    let mut cfg = SceneConfig::occlusion_medium();
    cfg.backgrounds = vec![BackgroundStyle::Plain];
    let mut checked = 0;
    for i in 0..60 {
        let s = generate_scene(&cfg, 11, i);
        for (k, o) in s.objects.iter().enumerate() {
            if o.visible > 0.95 || s.objects[k + 1..].iter().any(|p| p.colour == o.colour) {
                continue;
            }
            // Render 8x larger so edge pixels do not matter, then compare the share
            // of the object's own solid pixels that still show its colour.
            let up = |sc: &Scene| {
                let mut b = sc.clone();
                b.width *= 8;
                b.height *= 8;
                for p in &mut b.objects {
                    p.centre = p.centre.map(|v| v * 8.0);
                    p.extent *= 8.0;
                    p.bbox = p.bbox.map(|v| v * 8.0);
                }
                b.background.style = BackgroundStyle::Plain;
                b
            };
            let big = render(&up(&s));
            let mut alone = up(&s);
            alone.objects = vec![alone.objects[k].clone()];
            let solo = render(&alone);
            let (mut own, mut shown) = (0, 0);
            for (p, q) in solo.pixels().zip(big.pixels()) {
                if p.0 == o.colour.rgb() {
                    own += 1;
                    if q.0 == o.colour.rgb() {
                        shown += 1;
                    }
                }
            }
            if own < 10 {
                continue;
            }
            let frac = shown as f32 / own as f32;
            assert!(
                (frac - o.visible).abs() < 0.2,
                "pixels {frac} vs annotation {}",
                o.visible
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked only {checked}");
}

#[test]
fn frequencies_are_skewed_and_themes_co_occur() {
    let cfg = SceneConfig::small();
    let n = 4000;
    let mut freq: HashMap<Shape, usize> = HashMap::new();
    let mut both = 0usize;
    let mut with_circle = 0usize;
    let mut with_ring = 0usize;
    for i in 0..n {
        let s = generate_scene(&cfg, 9, i);
        for c in s.categories() {
            *freq.entry(c).or_default() += 1;
        }
        let (c, r) = (s.contains(Shape::Circle), s.contains(Shape::Ring));
        with_circle += c as usize;
        with_ring += r as usize;
        both += (c && r) as usize;
    }
    let most = freq[&Shape::POPULARITY[0]] as f64;
    let least = freq[&Shape::POPULARITY[13]] as f64;
    assert!(most > 3.0 * least, "most {most} least {least}");
    assert!(freq.len() == 14, "every category appears");
    // Lift: P(ring | circle) clearly above P(ring).
    let p_ring = with_ring as f64 / n as f64;
    let p_ring_given_circle = both as f64 / with_circle as f64;
    assert!(
        p_ring_given_circle > 1.3 * p_ring,
        "{p_ring_given_circle} vs {p_ring}"
    );
}

#[test]
fn count_probe_is_balanced_including_zero() {
    let cfg = SceneConfig::small();
    let mut hist = [0usize; 7];
    for i in 0..3500 {
        let s = generate_scene(&cfg, 2, i);
        hist[s.count(s.probe)] += 1;
    }
    for (k, h) in hist.iter().enumerate() {
        assert!(
            (400..=600).contains(h),
            "count {k} occurs {h} times of 3500: {hist:?}"
        );
    }
    for k in 0..=6 {
        let s = generate_scene_with_count(&cfg, 2, 77, k);
        assert_eq!(s.count(s.probe), k);
    }
}

#[test]
fn held_out_pairs_never_seen_and_always_in_unseen() {
    let seen = SceneConfig::small();
    let unseen = SceneConfig {
        composition: Composition::Unseen,
        ..SceneConfig::small()
    };
    let held = default_held_out();
    for i in 0..800 {
        let s = generate_scene(&seen, 1, i);
        assert!(s
            .objects
            .iter()
            .all(|o| !held.contains(&(o.colour, o.category))));
        let u = generate_scene(&unseen, 1, i);
        assert!(u
            .objects
            .iter()
            .any(|o| held.contains(&(o.colour, o.category))));
    }
}

#[test]
fn rendered_colour_at_each_anchor_matches_the_annotation() {
    let palette: Vec<[u8; 3]> = Colour::ALL.iter().map(|c| c.rgb()).collect();
    let mut checked = 0;
    for cfg in [
        SceneConfig::small(),
        SceneConfig::medium(),
        SceneConfig::free_medium(),
    ] {
        for i in 0..300 {
            let s = generate_scene(&cfg, 4, i);
            let img = render(&s);
            assert_eq!(img.dimensions(), (cfg.width, cfg.height));
            for o in s.objects.iter().filter(|o| o.visible == 1.0) {
                let (x, y) = (o.anchor[0].floor() as u32, o.anchor[1].floor() as u32);
                let px = img.get_pixel(x.min(cfg.width - 1), y.min(cfg.height - 1)).0;
                let mut best = (f32::MAX, None);
                for (k, c) in palette.iter().enumerate() {
                    let d = dist(px, *c);
                    if d < best.0 {
                        best = (d, Some(Colour::ALL[k]));
                    }
                }
                let bg = dist(px, s.background.from).min(dist(px, s.background.to));
                assert_eq!(
                    best.1,
                    Some(o.colour),
                    "{:?} at {x},{y} = {px:?}",
                    o.category
                );
                assert!(
                    best.0 < bg,
                    "{:?} anchor pixel {px:?} closer to background",
                    o.category
                );
                checked += 1;
            }
            // Hollow shapes show the background in their middle.
            for o in s.objects.iter().filter(|o| {
                matches!(o.category, Shape::Ring | Shape::Frame)
                    && o.visible == 1.0
                    && o.extent >= 10.0
            }) {
                let px = img.get_pixel(o.centre[0] as u32, o.centre[1] as u32).0;
                let to_obj = dist(px, o.colour.rgb());
                let to_bg = dist(px, s.background.from).min(dist(px, s.background.to));
                assert!(to_bg < to_obj, "hole of {:?} is filled: {px:?}", o.category);
            }
        }
    }
    assert!(checked > 2000);
}

/// Connected components of non-background pixels (8-connectivity).
fn components(img: &image::RgbImage, bg: [u8; 3]) -> Vec<[u32; 4]> {
    let (w, h) = img.dimensions();
    let fg: Vec<bool> = img.pixels().map(|p| dist(p.0, bg) > 30.0).collect();
    let mut label = vec![usize::MAX; (w * h) as usize];
    let mut boxes = Vec::new();
    for start in 0..(w * h) as usize {
        if !fg[start] || label[start] != usize::MAX {
            continue;
        }
        let id = boxes.len();
        let mut bb = [u32::MAX, u32::MAX, 0, 0];
        let mut stack = vec![start];
        label[start] = id;
        while let Some(p) = stack.pop() {
            let (x, y) = ((p as u32) % w, (p as u32) / w);
            bb = [bb[0].min(x), bb[1].min(y), bb[2].max(x), bb[3].max(y)];
            for dy in -1i32..=1 {
                for dx in -1i32..=1 {
                    let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i32 || ny >= h as i32 {
                        continue;
                    }
                    let q = (ny as u32 * w + nx as u32) as usize;
                    if fg[q] && label[q] == usize::MAX {
                        label[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        boxes.push(bb);
    }
    boxes
}

#[test]
fn connected_components_count_the_objects_of_non_overlapping_scenes() {
    for base in [SceneConfig::small(), SceneConfig::medium()] {
        let cfg = SceneConfig {
            backgrounds: vec![BackgroundStyle::Plain],
            jitter: 0,
            ..base
        };
        for i in 0..300 {
            let s = generate_scene(&cfg, 8, i);
            let img = render(&s);
            let comps = components(&img, s.background.from);
            assert_eq!(
                comps.len(),
                s.objects.len(),
                "scene {i}: {:?}",
                s.categories()
            );
            for o in &s.objects {
                let hit = comps.iter().any(|b| {
                    (b[0] as f32) >= o.bbox[0] - 1.0
                        && (b[1] as f32) >= o.bbox[1] - 1.0
                        && (b[2] as f32) <= o.bbox[2] + 1.0
                        && (b[3] as f32) <= o.bbox[3] + 1.0
                        && o.anchor[0] >= b[0] as f32
                        && o.anchor[0] <= b[2] as f32 + 1.0
                });
                assert!(hit, "no component matches {:?} {:?}", o.category, o.bbox);
            }
        }
    }
}

#[test]
fn backgrounds_never_hide_an_object_colour() {
    let mut bgs: Vec<[u8; 3]> = BACKGROUND_COLOURS.to_vec();
    for (a, b) in GRADIENT_PAIRS {
        let (ca, cb) = (BACKGROUND_COLOURS[a], BACKGROUND_COLOURS[b]);
        for t in 0..=10 {
            let f = t as f32 / 10.0;
            bgs.push(
                [0, 1, 2].map(|k| (ca[k] as f32 * (1.0 - f) + cb[k] as f32 * f).round() as u8),
            );
        }
    }
    let n = NOISE_AMPLITUDE as f32 * 3f32.sqrt();
    for c in Colour::ALL {
        for bg in &bgs {
            let d = dist(c.rgb(), *bg);
            assert!(d - n >= 75.0, "{c} vs background {bg:?}: distance {d}");
        }
    }
    // Distinct colours stay distinct, including the confusable pairs.
    for a in Colour::ALL {
        for b in Colour::ALL {
            if a != b {
                assert!(dist(a.rgb(), b.rgb()) >= 60.0, "{a} vs {b}");
            }
        }
    }
}

#[test]
fn generation_and_rendering_are_deterministic() {
    for cfg in [SceneConfig::small(), SceneConfig::occlusion_medium()] {
        let a = generate_scene(&cfg, 42, 17);
        let b = generate_scene(&cfg, 42, 17);
        assert_eq!(a, b);
        assert_eq!(render(&a).into_raw(), render(&b).into_raw());
        let c = generate_scene(&cfg, 43, 17);
        assert_ne!(render(&a).into_raw(), render(&c).into_raw());
    }
    // Background styles all occur.
    let styles: std::collections::HashSet<_> = (0..100)
        .map(|i| generate_scene(&SceneConfig::small(), 1, i).background.style)
        .collect();
    assert_eq!(styles.len(), 3);
}

#[test]
fn configs_validate_and_name_the_bad_field() {
    for name in SceneConfig::PRESETS {
        SceneConfig::preset(name).unwrap().validate().unwrap();
    }
    let bad = SceneConfig {
        min_objects: 7,
        max_objects: 3,
        ..SceneConfig::small()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("min_objects"), "{e}");
    let bad = SceneConfig {
        min_objects: 20,
        max_objects: 20,
        ..SceneConfig::small()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("16 cells"));
    let bad = SceneConfig {
        cell: 100,
        ..SceneConfig::small()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("cell"));
    // Config round-trips through JSON (it is stored in manifests).
    let cfg = SceneConfig::medium();
    let back: SceneConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(cfg, back);
    // Missing fields take the small preset's values.
    let partial: SceneConfig = serde_json::from_str(r#"{"tier": "free"}"#).unwrap();
    assert_eq!(partial.tier, Tier::Free);
    assert_eq!(partial.cell, 12);
}
