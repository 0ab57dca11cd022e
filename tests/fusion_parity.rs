//! Parity with HuggingFace: Fuyu patches and Whisper log-mel features against stored reference outputs.
//!
//! The fixtures in `tests/fixtures/fusion/` were made by
//! `benches/reference/fuyu_reference.py` and `benches/reference/whisper_reference.py`
//! (see their docstrings for versions and layout).

use std::path::{Path, PathBuf};

use image::RgbImage;
use mmlab::fusion::audio::{load_audio, LogMel};
use mmlab::fusion::image::{load_image, patchify, ImageConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fusion")
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn manifest(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

/// The procedural image of `fuyu_reference.py::pattern`.
fn pattern(h: u32, w: u32, k: u64) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as u64, y as u64);
        let v = |c: u64| {
            ((x * (3 + c) + y * (5 + 2 * c) + ((x ^ (y * 3)) & 63) + 40 * c + 17 * k) % 256) as u8
        };
        image::Rgb([v(0), v(1), v(2)])
    })
}

#[test]
fn procedural_images_match_the_reference_pngs() {
    let m = manifest("fuyu_patches.json");
    let mut checked = 0;
    for e in m["images"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let png = fixtures().join(format!("fuyu_{name}.png"));
        if !png.exists() {
            continue;
        }
        let loaded = load_image(&png).unwrap();
        let made = pattern(
            e["height"].as_u64().unwrap() as u32,
            e["width"].as_u64().unwrap() as u32,
            e["seed"].as_u64().unwrap(),
        );
        assert_eq!(loaded, made, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn fuyu_patches_match_hf() {
    let m = manifest("fuyu_patches.json");
    let cfg = ImageConfig::fuyu();
    assert_eq!(m["patch"].as_u64().unwrap() as usize, cfg.patch);
    let entries = m["images"].as_array().unwrap();
    assert!(entries.len() >= 4);
    let mut resized_seen = 0;
    let mut exact_seen = 0;
    for e in entries {
        let name = e["name"].as_str().unwrap();
        let backend = e["backend"].as_str().unwrap();
        let (h, w) = (
            e["height"].as_u64().unwrap() as usize,
            e["width"].as_u64().unwrap() as usize,
        );
        let img = pattern(h as u32, w as u32, e["seed"].as_u64().unwrap());
        let grid = patchify(&img, &cfg);
        let rows = e["rows"].as_u64().unwrap() as usize;
        let cols = e["cols"].as_u64().unwrap() as usize;
        assert_eq!((grid.rows, grid.cols), (rows, cols), "{name}: grid");
        assert_eq!(grid.patch_dim, 2700);
        let resized = (
            e["resized_height"].as_u64().unwrap() as usize,
            e["resized_width"].as_u64().unwrap() as usize,
        );
        assert_eq!(cfg.fitted_size(h, w), resized, "{name}: resized size");
        let is_resized = resized != (h, w);

        let stored: Vec<usize> = e["stored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let reference = read_f32(e["patches"].as_str().unwrap());
        assert_eq!(reference.len(), stored.len() * 2700);
        let (mut sum_abs, mut max_abs) = (0f64, 0f64);
        for (k, &pi) in stored.iter().enumerate() {
            let ours = grid.patch(pi).unwrap();
            let theirs = &reference[k * 2700..(k + 1) * 2700];
            for (a, b) in ours.iter().zip(theirs) {
                let d = (*a as f64 - *b as f64).abs();
                sum_abs += d;
                max_abs = max_abs.max(d);
            }
        }
        let mad = sum_abs / reference.len() as f64;

        let sums = read_f32(e["sums"].as_str().unwrap());
        assert_eq!(sums.len(), rows * cols);
        let worst_sum = (0..rows * cols)
            .map(|i| {
                let s: f64 = grid.patch(i).unwrap().iter().map(|&v| v as f64).sum();
                (s - sums[i] as f64).abs() / 2700.0
            })
            .fold(0f64, f64::max);
        println!(
            "{name} ({backend}): {h}x{w} -> {resized:?}, grid {rows}x{cols}, stored {} patches: \
             mean |diff| {mad:.3e}, max |diff| {max_abs:.3e}; worst per-patch mean of sum diff {worst_sum:.3e}",
            stored.len()
        );
        if is_resized {
            resized_seen += 1;
            assert!(mad <= 1.0 / 255.0, "{name} ({backend}): mean |diff| {mad}");
            if backend == "pil" {
                // resize_bilinear is a port of Pillow's resampler: byte-exact.
                assert!(max_abs <= 1e-5, "{name} (pil): max |diff| {max_abs}");
            }
            assert!(
                worst_sum <= 1.0 / 255.0,
                "{name} ({backend}): patch sums differ by {worst_sum} per value"
            );
        } else {
            exact_seen += 1;
            assert!(max_abs <= 1e-5, "{name}: max |diff| {max_abs}");
            assert!(
                worst_sum <= 1e-6,
                "{name}: patch sums differ by {worst_sum}"
            );
        }
    }
    assert!(resized_seen >= 2 && exact_seen >= 3);
}

#[test]
fn whisper_logmel_matches_transformers() {
    let m = manifest("whisper_features.json");
    let cases = m["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let signal = c["signal"].as_str().unwrap();
        let n_mels = c["n_mels"].as_u64().unwrap() as usize;
        let path = c["path"].as_str().unwrap();
        let samples = load_audio(&fixtures().join(c["wav"].as_str().unwrap())).unwrap();
        let ours = LogMel::new(n_mels).compute(&samples);
        let frames = c["frames"].as_u64().unwrap() as usize;
        assert_eq!((ours.n, ours.dim), (frames, n_mels), "{signal}/{n_mels}");
        let theirs = read_f32(c["file"].as_str().unwrap());
        let max = ours
            .data
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{signal} n_mels={n_mels} vs {path}: {frames} frames, max |diff| {max:.2e}");
        assert!(max <= 1e-4, "{signal}/{n_mels}/{path}: max |diff| {max}");
    }
}
