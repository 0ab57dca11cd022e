//! Helpers shared by the integration tests: a seeded synthetic dataset folder and test responders.

#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::Path;
use std::rc::Rc;

use mmlab_eval::{EvalError, Request, Responder, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SHAPES: [&str; 6] = ["circle", "ring", "square", "triangle", "star", "heart"];

/// Write a dataset folder like the one `mmlab-datasets` makes: `n` questions per file.
///
/// POPE labels alternate yes/no starting with yes (so exactly half are yes when `n` is even);
/// counts are uniform in 0..=6; captions have one to three objects.
pub fn write_dataset(dir: &Path, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    std::fs::create_dir_all(dir.join("questions")).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("audio")).unwrap();
    std::fs::write(dir.join("manifest.json"), "{}").unwrap();
    std::fs::write(dir.join("annotations.jsonl"), "").unwrap();
    for (prefix, media, noun, what) in [
        ("pope", "image", "png", "image"),
        ("audio-pope", "audio", "wav", "audio"),
    ] {
        for split in ["random", "popular", "adversarial"] {
            let mut s = String::new();
            for i in 0..n {
                let shape = SHAPES[rng.random_range(0..SHAPES.len())];
                let label = if i % 2 == 0 { "yes" } else { "no" };
                writeln!(
                    s,
                    r#"{{"question_id": {}, "{media}": "{:06}.{noun}", "text": "Is there a {shape} in the {what}?", "label": "{label}"}}"#,
                    i + 1,
                    i / 6
                )
                .unwrap();
            }
            std::fs::write(dir.join(format!("questions/{prefix}-{split}.jsonl")), s).unwrap();
        }
    }
    for (file, media, noun, what) in [
        ("count", "image", "png", "image"),
        ("audio-count", "audio", "wav", "audio"),
    ] {
        let mut s = String::new();
        for i in 0..n {
            let shape = SHAPES[rng.random_range(0..SHAPES.len())];
            let c: u32 = rng.random_range(0..=6);
            writeln!(
                s,
                r#"{{"question_id": "{file}-{i}", "{media}": "{i:06}.{noun}", "text": "How many {shape}s are there in the {what}?", "label": "{c}", "object": "{shape}"}}"#
            )
            .unwrap();
        }
        std::fs::write(dir.join(format!("questions/{file}.jsonl")), s).unwrap();
    }
    let mut s = String::new();
    for i in 0..n {
        let k = rng.random_range(1..=3);
        let objs: Vec<String> = (0..k)
            .map(|_| format!("\"{}\"", SHAPES[rng.random_range(0..SHAPES.len())]))
            .collect();
        writeln!(
            s,
            r#"{{"question_id": {i}, "image": "{i:06}.png", "text": "Describe the image.", "objects": [{}]}}"#,
            objs.join(", ")
        )
        .unwrap();
    }
    std::fs::write(dir.join("questions/chair.jsonl"), s).unwrap();
    // The media the questions name (their content only identifies them).
    for i in 0..n {
        std::fs::write(dir.join(format!("images/{i:06}.png")), format!("image {i}")).unwrap();
        std::fs::write(dir.join(format!("audio/{i:06}.wav")), format!("audio {i}")).unwrap();
    }
}

/// Wraps a responder: counts requests, and fails once `fail_after` requests have been answered.
pub struct Flaky<R> {
    pub inner: R,
    pub calls: Rc<Cell<usize>>,
    pub fail_after: Option<usize>,
}

impl<R: Responder> Flaky<R> {
    pub fn new(inner: R, fail_after: Option<usize>) -> Self {
        Flaky {
            inner,
            calls: Rc::new(Cell::new(0)),
            fail_after,
        }
    }
}

impl<R: Responder> Responder for Flaky<R> {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        if let Some(k) = self.fail_after {
            if self.calls.get() + batch.len() > k {
                return Err(EvalError::responder(self.identity(), "simulated crash"));
            }
        }
        self.calls.set(self.calls.get() + batch.len());
        self.inner.respond(batch)
    }

    fn batch_size(&self) -> usize {
        10
    }

    fn needs_media(&self) -> bool {
        self.inner.needs_media()
    }

    fn settings(&self) -> serde_json::Value {
        self.inner.settings()
    }

    fn check_questions(
        &mut self,
        splits: &[mmlab_eval::LoadedSplit],
    ) -> Result<Vec<String>, EvalError> {
        self.inner.check_questions(splits)
    }
}
