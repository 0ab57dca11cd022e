//! Weight files: the safetensors header check that runs before any tensor is read (HF Fuyu
//! loader), candle's reader behind our own model directories, and the shard index.
//!
//! The first byte picks the parser; the rest is the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mmlab::model::io::{check_safetensors, parse_weight_index};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 3 {
        0 => {
            if let Ok(checked) = check_safetensors(body, Path::new("model.safetensors")) {
                for t in checked.tensors.values() {
                    assert!(t.end <= body.len(), "a checked tensor lies inside the file");
                }
            }
        }
        1 => {
            let _ = mmlab::model::io::parse_weights(
                body,
                Path::new("model.safetensors"),
                &candle_core::Device::Cpu,
            );
        }
        _ => {
            let _ = parse_weight_index(body, Path::new("model.safetensors.index.json"));
        }
    }
});
