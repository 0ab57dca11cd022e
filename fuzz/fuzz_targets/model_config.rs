//! A model directory's `config.json` (ours or HF Fuyu): parse and validate, then the
//! parameter count `mmlab models` prints.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mmlab::model::io::parse_config;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = parse_config(data, Path::new("config.json")) {
        // A config that validates has a parameter count that fits (no wrap-around).
        let n = cfg
            .model
            .parameter_count()
            .expect("validated configs count without overflow");
        assert!(n > 0);
        let _ = cfg.image.validate();
        let _ = cfg.audio.validate();
    }
});
