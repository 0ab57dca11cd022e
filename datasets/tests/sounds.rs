//! Sound generator and synthesiser checked against the annotations.

use mmlab_datasets::*;

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Power of `x` at frequency `f` (Goertzel).
fn power_at(x: &[f32], f: f32, sr: f32) -> f32 {
    let w = std::f32::consts::TAU * f / sr;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &v in x {
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f32).powi(2)
}

#[test]
fn events_are_placed_in_time_with_gaps() {
    let cfg = SoundConfig::short();
    let mut classes = std::collections::HashSet::new();
    for i in 0..500 {
        let c = generate_sound(&cfg, 1, i);
        assert_eq!(c.sample_rate, 16_000);
        assert_eq!(c.num_samples, 24_000);
        assert!(
            (1..=4).contains(&c.events.len()),
            "{} events",
            c.events.len()
        );
        for e in &c.events {
            assert!(e.start_sample < e.end_sample && e.end_sample <= c.num_samples);
            let (lo, hi) = mmlab_datasets::sound::class_duration(e.class);
            let d = e.end_s - e.start_s;
            assert!(
                d >= lo - 0.001 && d <= hi + 0.001,
                "{:?} lasts {d}",
                e.class
            );
            classes.insert(e.class);
        }
        for w in c.events.windows(2) {
            let gap = w[1].start_s - w[0].end_s;
            assert!(gap >= cfg.min_gap_s - 0.001, "gap {gap}");
        }
    }
    assert_eq!(classes.len(), SoundClass::ALL.len());
}

#[test]
fn synthesis_is_loud_inside_events_and_quiet_between() {
    let cfg = SoundConfig::short();
    for i in 0..100 {
        let c = generate_sound(&cfg, 2, i);
        let x = synthesise(&c);
        assert_eq!(x.len(), c.num_samples);
        assert!(x.iter().all(|v| v.abs() <= 1.0));
        // Background: samples outside every event (with 10 ms margins).
        let margin = 160;
        let quiet: Vec<f32> = x
            .iter()
            .enumerate()
            .filter(|(k, _)| {
                c.events
                    .iter()
                    .all(|e| *k + margin < e.start_sample || *k > e.end_sample + margin)
            })
            .map(|(_, v)| *v)
            .collect();
        let bg = rms(&quiet);
        assert!(bg <= 0.03, "background rms {bg}");
        for e in &c.events {
            let seg = &x[e.start_sample..e.end_sample];
            let r = rms(seg);
            assert!(
                r > 4.0 * bg.max(0.004),
                "{:?} rms {r} vs background {bg}",
                e.class
            );
        }
    }
}

#[test]
fn tonal_events_sound_at_their_annotated_frequency() {
    let cfg = SoundConfig::short();
    let mut checked = 0;
    for i in 0..300 {
        let c = generate_sound(&cfg, 3, i);
        let x = synthesise(&c);
        for e in c
            .events
            .iter()
            .filter(|e| matches!(e.class, SoundClass::Beep | SoundClass::Whistle))
        {
            let seg = &x[e.start_sample..e.end_sample];
            let at = power_at(seg, e.freq_hz, 16_000.0);
            for off in [0.7, 1.4, 2.0] {
                let other = power_at(seg, e.freq_hz * off, 16_000.0);
                assert!(
                    at > 20.0 * other,
                    "{:?} {} Hz: {at} vs {other}",
                    e.class,
                    e.freq_hz
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 50);
}

#[test]
fn count_probe_is_balanced_and_deterministic() {
    let cfg = SoundConfig::short();
    let mut hist = [0usize; 5];
    for i in 0..2500 {
        let c = generate_sound(&cfg, 4, i);
        hist[c.count(c.probe)] += 1;
    }
    for h in hist {
        assert!((400..=600).contains(&h), "{hist:?}");
    }
    for k in 0..=4 {
        let c = generate_sound_with_count(&cfg, 4, 9, k);
        assert_eq!(c.count(c.probe), k);
    }
    let a = generate_sound(&cfg, 5, 5);
    assert_eq!(a, generate_sound(&cfg, 5, 5));
    assert_eq!(synthesise(&a), synthesise(&generate_sound(&cfg, 5, 5)));
    assert_ne!(synthesise(&a), synthesise(&generate_sound(&cfg, 6, 5)));
}

#[test]
fn wav_files_are_16_bit_mono_16khz_and_round_trip() {
    let c = generate_sound(&SoundConfig::short(), 7, 0);
    let x = synthesise(&c);
    let bytes = wav_bytes(&x, SAMPLE_RATE).unwrap();
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let spec = r.spec();
    assert_eq!(spec.channels, 1);
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(spec.bits_per_sample, 16);
    assert_eq!(spec.sample_format, hound::SampleFormat::Int);
    let back: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    assert_eq!(back.len(), x.len());
    for (a, b) in x.iter().zip(back.iter()) {
        assert!((a * 32767.0 - *b as f32).abs() <= 0.5 + 1e-3);
    }
}

#[test]
fn sound_configs_validate() {
    SoundConfig::short().validate().unwrap();
    SoundConfig::long().validate().unwrap();
    let bad = SoundConfig {
        max_events: 9,
        ..SoundConfig::short()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_events"));
    let bad = SoundConfig {
        noise_level: [0.5, 0.1],
        ..SoundConfig::short()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("noise_level"));
}

#[test]
fn class_frequencies_are_skewed_and_themes_co_occur() {
    let cfg = SoundConfig::short();
    let n = 3000;
    let clips: Vec<SoundScene> = (0..n).map(|i| generate_sound(&cfg, 12, i)).collect();
    let p = |c: SoundClass| clips.iter().filter(|x| x.contains(c)).count() as f64 / n as f64;
    let most = p(SoundClass::POPULARITY[0]);
    let least = p(SoundClass::POPULARITY[7]);
    assert!(most > 2.0 * least, "most {most} least {least}");
    // Lift P(a,b) / (P(a) P(b)): pairs that share a theme co-occur clearly more
    // often than pairs that do not.
    let (mut themed, mut other) = (Vec::new(), Vec::new());
    for a in SoundClass::ALL {
        for b in SoundClass::ALL {
            if a < b {
                let both = clips
                    .iter()
                    .filter(|x| x.contains(a) && x.contains(b))
                    .count() as f64;
                let lift = both / n as f64 / (p(a) * p(b));
                let shared = SoundClass::THEMES
                    .iter()
                    .any(|t| t.contains(&a) && t.contains(&b));
                if shared {
                    themed.push(lift);
                } else {
                    other.push(lift);
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&themed) > 1.5 * mean(&other),
        "themed lift {} vs other {}",
        mean(&themed),
        mean(&other)
    );
}
