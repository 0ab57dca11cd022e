//! Audio files: decode (WAV, FLAC, MP3, OGG/Vorbis), mix, resample to 16 kHz, then the
//! raw and log-mel front-ends. The first byte picks the file extension (a decoder hint).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mmlab::fusion::audio::{audio_features_named, load_audio_capped, AudioConfig};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mmlab-fuzz-audio-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ext = ["wav", "flac", "mp3", "ogg"][pick as usize % 4];
    let path = dir().join(format!("clip.{ext}"));
    std::fs::write(&path, body).expect("write the input");
    // A short cap keeps each run fast; the cap itself is part of what is checked.
    if let Ok(samples) = load_audio_capped(&path, 2.0) {
        assert!(!samples.is_empty());
        for cfg in [AudioConfig::raw(320), AudioConfig::logmel(80, 2)] {
            if let Ok(m) = audio_features_named(&samples, &cfg, &path) {
                assert_eq!(m.data.len(), m.n * m.dim);
            }
        }
    }
});
