//! Speed of the early-fusion tokenizer: patchify (HF Fuyu rules) and Whisper log-mel.
//!
//! `cargo bench --bench fusion`; `benches/reference/fusion_side_by_side.py` runs this and
//! the transformers processors on the same inputs and prints both.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use image::{Rgb, RgbImage};
use mmlab::fusion::audio::{audio_features, AudioConfig, LogMel};
use mmlab::fusion::image::{patchify, resize_bilinear, resize_bilinear_fast, ImageConfig};

/// The procedural test image of `benches/reference/fuyu_reference.py::pattern`.
fn pattern(h: u32, w: u32, k: u64) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as u64, y as u64);
        let v = |c: u64| {
            ((x * (3 + c) + y * (5 + 2 * c) + ((x ^ (y * 3)) & 63) + 40 * c + 17 * k) % 256) as u8
        };
        Rgb([v(0), v(1), v(2)])
    })
}

/// 30 s at 16 kHz: a 440 Hz tone plus LCG noise (same as `fusion_side_by_side.py`).
fn thirty_seconds() -> Vec<f32> {
    let mut s: u64 = 12345;
    (0..480_000)
        .map(|i| {
            s = (1_664_525 * s + 1_013_904_223) % (1 << 32);
            let noise = (s as f64 / 4_294_967_296.0 * 2.0 - 1.0) * 0.1;
            let tone = 0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin();
            (tone + noise) as f32
        })
        .collect()
}

fn images(c: &mut Criterion) {
    let fuyu = ImageConfig::fuyu();
    let full_hd = pattern(1080, 1920, 0);
    c.bench_function("patchify 1080x1920 (fuyu, no resize)", |b| {
        b.iter(|| patchify(black_box(&full_hd), &fuyu))
    });
    let large = pattern(1500, 2600, 3);
    c.bench_function("patchify 1500x2600 (fuyu, resize to 1080x1872)", |b| {
        b.iter(|| patchify(black_box(&large), &fuyu))
    });
    c.bench_function("resize 1500x2600 -> 1080x1872 (Pillow port)", |b| {
        b.iter(|| resize_bilinear(black_box(&large), 1872, 1080))
    });
    c.bench_function("resize 1500x2600 -> 1080x1872 (fast_image_resize)", |b| {
        b.iter(|| resize_bilinear_fast(black_box(&large), 1872, 1080))
    });
    let small = ImageConfig {
        patch: 12,
        max_height: 48,
        max_width: 48,
    };
    let tiny = pattern(48, 48, 1);
    c.bench_function("patchify 48x48 (patch 12, trainer path)", |b| {
        b.iter(|| patchify(black_box(&tiny), &small))
    });
}

fn audio(c: &mut Criterion) {
    let samples = thirty_seconds();
    let mel = LogMel::new(80);
    c.bench_function("log-mel 30 s (80 mels)", |b| {
        b.iter(|| mel.compute(black_box(&samples)))
    });
    let cfg = AudioConfig::logmel(80, 1);
    c.bench_function("audio_features log-mel 30 s (80 mels, incl. setup)", |b| {
        b.iter(|| audio_features(black_box(&samples), &cfg))
    });
    let mel128 = LogMel::new(128);
    c.bench_function("log-mel 30 s (128 mels)", |b| {
        b.iter(|| mel128.compute(black_box(&samples)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = images, audio
}
criterion_main!(benches);
