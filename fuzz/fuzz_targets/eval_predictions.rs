//! Predictions files (`mmlab eval --predictions FILE`): `PredictionsFile::open`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mmlab-fuzz-predictions-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join("answers.jsonl")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).expect("write the input");
    let _ = mmlab_eval::responder::PredictionsFile::open(file());
});
