//! Question files: the JSONL reader behind `mmlab eval --data FILE` for every task.
//!
//! The first byte picks the task; the rest is written to a file named as that task's
//! first split expects, then loaded with `mmlab_eval::tasks::load_task`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mmlab-fuzz-questions-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let tasks = mmlab_eval::tasks::tasks();
    let spec = &tasks[pick as usize % tasks.len()];
    let file = dir().join(spec.splits[0].files[0]);
    std::fs::write(&file, body).expect("write the input");
    if let Ok(splits) = mmlab_eval::tasks::load_task(spec.name, &file) {
        for s in &splits {
            assert!(!s.questions.is_empty(), "a loaded split has questions");
        }
    }
});
