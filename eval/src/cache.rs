//! The on-disk response cache: append-only JSON lines, one file per (model identity, task).
//!
//! An entry is keyed on the question id, the prompt, the candidates and the sha256 of the
//! media (image or audio bytes) the question was asked about, so the same ids over other images
//! never share answers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::fxhash::FxHashMap;
use crate::responder::{Request, Response};

/// Keep the characters that are safe in a file name, replacing the rest with `_`.
pub fn sanitize(name: &str, max: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "model".to_string()
    } else {
        s
    }
}

/// The folder holding one model's cache files.
pub fn model_cache_dir(cache_dir: &Path, identity: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(identity.as_bytes()));
    cache_dir.join(format!("{}-{}", sanitize(identity, 60), &digest[..12]))
}

/// A cached response with the rest of its key (the question id is the map key).
#[derive(Clone, Debug)]
struct Entry {
    prompt: String,
    /// sha256 of the media file's bytes (empty for entries written before media were keyed).
    media: String,
    candidates: Option<Vec<String>>,
    /// `None` once taken by [`ResponseCache::take`].
    response: Option<Response>,
    /// The next entry with the same question id.
    next: Option<u32>,
}

fn ser_scores<S: serde::Serializer>(v: &&Option<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
    crate::responder::score_serde::serialize(v, s)
}

#[derive(Serialize)]
struct LineOut<'a> {
    question_id: &'a str,
    prompt: &'a str,
    media: &'a str,
    candidates: Option<&'a [String]>,
    answer: &'a str,
    #[serde(serialize_with = "ser_scores")]
    scores: &'a Option<Vec<f32>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unanswered: bool,
}

/// Any line of a cache file: a header (`identity`, `task`) or a response.
#[derive(Deserialize)]
struct LineIn {
    identity: Option<String>,
    task: Option<String>,
    question_id: Option<String>,
    prompt: Option<String>,
    media: Option<String>,
    candidates: Option<Vec<String>>,
    answer: Option<String>,
    #[serde(default, with = "crate::responder::score_serde")]
    scores: Option<Vec<f32>>,
    #[serde(default)]
    unanswered: bool,
}

#[derive(Serialize)]
struct Header<'a> {
    identity: &'a str,
    task: &'a str,
}

/// What a cached answer is looked up by.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    /// The question id.
    pub question_id: &'a str,
    /// The prompt the model saw.
    pub prompt: &'a str,
    /// sha256 of the media file's bytes.
    pub media: &'a str,
    /// The candidates scored (candidate mode).
    pub candidates: Option<&'a [String]>,
}

impl<'a> Key<'a> {
    /// The key of a request about media with this sha256.
    pub fn of(req: &'a Request, media: &'a str) -> Self {
        Key {
            question_id: &req.question_id,
            prompt: &req.prompt,
            media,
            candidates: req.candidates.as_deref(),
        }
    }
}

/// Responses already given by one model to one task's questions, and the file new ones go to.
///
/// A sharded run writes its own file (`<task>.shard-<i>-of-<n>.jsonl`) so several processes never
/// append to one file; every run reads the unsharded and all shard files of the task.
#[derive(Debug)]
pub struct ResponseCache {
    dir: PathBuf,
    write_path: PathBuf,
    identity: String,
    task: String,
    file: Option<File>,
    by_id: FxHashMap<String, u32>,
    entries: Vec<Entry>,
}

impl ResponseCache {
    /// Open (and read) the cache of `identity` for `task` under `cache_dir`.
    pub fn open(
        cache_dir: &Path,
        identity: &str,
        task: &str,
        shard: Option<(usize, usize)>,
    ) -> Result<Self> {
        let dir = model_cache_dir(cache_dir, identity);
        let task_file = sanitize(task, 80);
        let write_name = match shard {
            Some((i, n)) => format!("{task_file}.shard-{i}-of-{n}.jsonl"),
            None => format!("{task_file}.jsonl"),
        };
        let mut cache = ResponseCache {
            write_path: dir.join(&write_name),
            dir,
            identity: identity.to_string(),
            task: task.to_string(),
            file: None,
            by_id: FxHashMap::default(),
            entries: Vec::new(),
        };
        if !cache.dir.is_dir() {
            return Ok(cache);
        }
        let rd = std::fs::read_dir(&cache.dir).map_err(|e| EvalError::io(&cache.dir, e))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| EvalError::io(&cache.dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let ours = name == format!("{task_file}.jsonl")
                || (name.starts_with(&format!("{task_file}.shard-")) && name.ends_with(".jsonl"));
            if ours {
                files.push(entry.path());
            }
        }
        files.sort();
        // Read the other files first so our own (newest for this run) wins on duplicates.
        files.sort_by_key(|p| *p == cache.write_path);
        for f in files {
            cache.read_file(&f)?;
        }
        Ok(cache)
    }

    /// Read one cache file; a truncated last line (a killed write) is skipped.
    fn read_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if complete < bytes.len() && *path == self.write_path {
            // Cut the partial line so the next append starts on a fresh line.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| EvalError::io(path, e))?;
            f.set_len(complete as u64)
                .map_err(|e| EvalError::io(path, e))?;
        }
        let text = String::from_utf8_lossy(&bytes[..complete]);
        let lines = crate::tasks::numbered_lines(&text);
        for &(line, raw) in &lines {
            let l: LineIn = serde_json::from_str(raw).map_err(|e| EvalError::CacheCorrupt {
                path: path.to_path_buf(),
                line,
                message: e.to_string(),
            })?;
            if let Some(identity) = l.identity {
                let task = l.task.unwrap_or_default();
                if identity != self.identity || task != self.task {
                    return Err(EvalError::Data {
                        path: path.to_path_buf(),
                        message: format!(
                            "cache file belongs to model `{identity}` task `{task}`, not `{}` task `{}`",
                            self.identity, self.task
                        ),
                    });
                }
                continue;
            }
            let missing = |field: &str| EvalError::Field {
                path: path.to_path_buf(),
                line,
                field: field.to_string(),
                message: "missing".to_string(),
            };
            let qid = l.question_id.ok_or_else(|| missing("question_id"))?;
            let prompt = l.prompt.ok_or_else(|| missing("prompt"))?;
            let answer = l.answer.ok_or_else(|| missing("answer"))?;
            self.insert(
                qid,
                Entry {
                    prompt,
                    media: l.media.unwrap_or_default(),
                    candidates: l.candidates,
                    response: Some(Response {
                        answer,
                        scores: l.scores,
                        unanswered: l.unanswered,
                    }),
                    next: None,
                },
            );
        }
        Ok(())
    }

    /// Add or replace an entry.
    fn insert(&mut self, qid: String, e: Entry) {
        let idx = self.entries.len() as u32;
        let Some(&first) = self.by_id.get(&qid) else {
            self.by_id.insert(qid, idx);
            self.entries.push(e);
            return;
        };
        let mut cur = first as usize;
        loop {
            let x = &mut self.entries[cur];
            if x.prompt == e.prompt && x.media == e.media && x.candidates == e.candidates {
                x.response = e.response;
                return;
            }
            match x.next {
                Some(n) => cur = n as usize,
                None => break,
            }
        }
        self.entries[cur].next = Some(idx);
        self.entries.push(e);
    }

    /// Index of the entry for a question with this prompt, media and candidates.
    fn find(&self, key: &Key<'_>) -> Option<usize> {
        let mut cur = *self.by_id.get(key.question_id)? as usize;
        loop {
            let e = &self.entries[cur];
            if e.prompt == key.prompt
                && e.media == key.media
                && e.candidates.as_deref() == key.candidates
            {
                return Some(cur);
            }
            cur = e.next? as usize;
        }
    }

    /// The cached response to a question, if any.
    pub fn lookup(&self, key: &Key<'_>) -> Option<&Response> {
        let i = self.find(key)?;
        self.entries[i].response.as_ref()
    }

    /// Move a cached response out of this in-memory view (the file keeps it).
    pub fn take(&mut self, key: &Key<'_>) -> Option<Response> {
        let i = self.find(key)?;
        self.entries[i].response.take()
    }

    /// The cached response to a request about media with this sha256, if any.
    pub fn get(&self, req: &Request, media: &str) -> Option<&Response> {
        self.lookup(&Key::of(req, media))
    }

    /// Number of cached responses.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.response.is_some()).count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file new responses are appended to.
    pub fn path(&self) -> &Path {
        &self.write_path
    }

    /// Append responses and hand them to the operating system in one write, so a killed
    /// process loses at most this batch (and leaves at most one partial line).
    ///
    /// Appended responses are not added to this in-memory view (a run asks each question once);
    /// the next [`ResponseCache::open`] sees them.
    /// `media[i]` is the sha256 of the media `reqs[i]` asks about.
    pub fn append(&mut self, reqs: &[Request], media: &[&str], resps: &[Response]) -> Result<()> {
        if media.len() != reqs.len() || resps.len() != reqs.len() {
            return Err(EvalError::Option(format!(
                "cache append: {} requests, {} media hashes, {} responses",
                reqs.len(),
                media.len(),
                resps.len()
            )));
        }
        let mut buf = Vec::with_capacity(reqs.len() * 128);
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| EvalError::io(&self.dir, e))?;
            let fresh = !self.write_path.exists();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.write_path)
                .map_err(|e| EvalError::io(&self.write_path, e))?;
            if fresh {
                let h = Header {
                    identity: &self.identity,
                    task: &self.task,
                };
                serde_json::to_writer(&mut buf, &h)
                    .map_err(|e| EvalError::io(&self.write_path, e.into()))?;
                buf.push(b'\n');
            }
            self.file = Some(f);
        }
        for ((r, resp), m) in reqs.iter().zip(resps).zip(media) {
            let line = LineOut {
                question_id: &r.question_id,
                prompt: &r.prompt,
                media: m,
                candidates: r.candidates.as_deref(),
                answer: &resp.answer,
                scores: &resp.scores,
                unanswered: resp.unanswered,
            };
            serde_json::to_writer(&mut buf, &line)
                .map_err(|e| EvalError::io(&self.write_path, e.into()))?;
            buf.push(b'\n');
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&buf)
                .and_then(|_| f.flush())
                .map_err(|e| EvalError::io(&self.write_path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> Request {
        Request {
            task: "pope-random".into(),
            question_id: id.into(),
            prompt: format!("Is there a ring {id}?"),
            image: None,
            audio: None,
            candidates: None,
        }
    }

    #[test]
    fn round_trip_and_truncated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let reqs: Vec<Request> = (0..3).map(|i| req(&i.to_string())).collect();
        let resps = vec![
            Response::text("Yes"),
            Response::scored("no", vec![-0.5, f32::NEG_INFINITY]),
            Response::unanswered(),
        ];
        let path = {
            let mut c = ResponseCache::open(dir.path(), "m@1", "pope-random", None).unwrap();
            assert!(c.is_empty());
            c.append(&reqs, &["m0", "m1", "m2"], &resps).unwrap();
            c.path().to_path_buf()
        };
        // Simulate a kill in the middle of writing a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"question_id\":\"9\",\"prom").unwrap();
        drop(f);
        let mut c = ResponseCache::open(dir.path(), "m@1", "pope-random", None).unwrap();
        assert_eq!(c.len(), 3);
        for (r, resp) in reqs.iter().zip(&resps) {
            assert_eq!(c.get(r, &format!("m{}", r.question_id)), Some(resp));
        }
        // A different prompt is a different key.
        let mut other = req("0");
        other.prompt = "Is there a star?".into();
        assert_eq!(c.get(&other, "m0"), None);
        c.append(&[req("5")], &["m5"], &[Response::text("No")])
            .unwrap();
        let c = ResponseCache::open(dir.path(), "m@1", "pope-random", None).unwrap();
        assert_eq!(c.len(), 4);
        // Other identities and tasks do not see these entries.
        let c2 = ResponseCache::open(dir.path(), "m@2", "pope-random", None).unwrap();
        assert!(c2.is_empty());
        let c3 = ResponseCache::open(dir.path(), "m@1", "pope-popular", None).unwrap();
        assert!(c3.is_empty());
    }

    #[test]
    fn shard_files_are_shared_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ResponseCache::open(dir.path(), "m", "count", Some((0, 2))).unwrap();
        a.append(&[req("1")], &["m"], &[Response::text("3")])
            .unwrap();
        let mut b = ResponseCache::open(dir.path(), "m", "count", Some((1, 2))).unwrap();
        b.append(&[req("2")], &["m"], &[Response::text("4")])
            .unwrap();
        assert_ne!(a.path(), b.path());
        let all = ResponseCache::open(dir.path(), "m", "count", None).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn corrupt_complete_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ResponseCache::open(dir.path(), "m", "count", None).unwrap();
        c.append(&[req("1")], &["m"], &[Response::text("3")])
            .unwrap();
        let p = c.path().to_path_buf();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"garbage\n").unwrap();
        let err = ResponseCache::open(dir.path(), "m", "count", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("--no-cache"), "says how to recover: {err}");
    }

    #[test]
    fn same_question_about_other_media_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ResponseCache::open(dir.path(), "m", "pope-random", None).unwrap();
        c.append(&[req("1")], &["aaaa"], &[Response::text("Yes")])
            .unwrap();
        let c = ResponseCache::open(dir.path(), "m", "pope-random", None).unwrap();
        assert_eq!(c.get(&req("1"), "aaaa"), Some(&Response::text("Yes")));
        // Same id, same prompt, other image bytes: never the cached answer.
        assert_eq!(c.get(&req("1"), "bbbb"), None);
    }
}
