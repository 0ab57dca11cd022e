//! The on-disk response cache: append-only JSON lines, one file per (model identity, task).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
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

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    question_id: String,
    prompt: String,
    candidates: Option<Vec<String>>,
}

impl Key {
    fn of(r: &Request) -> Self {
        Key {
            question_id: r.question_id.clone(),
            prompt: r.prompt.clone(),
            candidates: r.candidates.clone(),
        }
    }
}

#[derive(Serialize)]
struct LineOut<'a> {
    question_id: &'a str,
    prompt: &'a str,
    candidates: &'a Option<Vec<String>>,
    #[serde(flatten)]
    response: &'a Response,
}

#[derive(Deserialize)]
struct LineIn {
    question_id: String,
    prompt: String,
    candidates: Option<Vec<String>>,
    #[serde(flatten)]
    response: Response,
}

#[derive(Serialize, Deserialize)]
struct Header {
    identity: String,
    task: String,
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
    entries: HashMap<Key, Response>,
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
            entries: HashMap::new(),
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
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let line = i + 1;
            let v: Value = serde_json::from_str(raw).map_err(|e| EvalError::Json {
                path: path.to_path_buf(),
                line,
                source: e,
            })?;
            if v.get("identity").is_some() {
                let h: Header = serde_json::from_value(v).map_err(|e| EvalError::Json {
                    path: path.to_path_buf(),
                    line,
                    source: e,
                })?;
                if h.identity != self.identity || h.task != self.task {
                    return Err(EvalError::Data {
                        path: path.to_path_buf(),
                        message: format!(
                            "cache file belongs to model `{}` task `{}`, not `{}` task `{}`",
                            h.identity, h.task, self.identity, self.task
                        ),
                    });
                }
                continue;
            }
            let l: LineIn = serde_json::from_value(v).map_err(|e| EvalError::Json {
                path: path.to_path_buf(),
                line,
                source: e,
            })?;
            self.entries.insert(
                Key {
                    question_id: l.question_id,
                    prompt: l.prompt,
                    candidates: l.candidates,
                },
                l.response,
            );
        }
        Ok(())
    }

    /// The cached response to a request, if any.
    pub fn get(&self, req: &Request) -> Option<&Response> {
        self.entries.get(&Key::of(req))
    }

    /// Number of cached responses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file new responses are appended to.
    pub fn path(&self) -> &Path {
        &self.write_path
    }

    /// Append responses and hand them to the operating system in one write, so a killed
    /// process loses at most this batch (and leaves at most one partial line).
    pub fn append(&mut self, reqs: &[Request], resps: &[Response]) -> Result<()> {
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
                    identity: self.identity.clone(),
                    task: self.task.clone(),
                };
                serde_json::to_writer(&mut buf, &h)
                    .map_err(|e| EvalError::io(&self.write_path, e.into()))?;
                buf.push(b'\n');
            }
            self.file = Some(f);
        }
        for (r, resp) in reqs.iter().zip(resps) {
            let line = LineOut {
                question_id: &r.question_id,
                prompt: &r.prompt,
                candidates: &r.candidates,
                response: resp,
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
        for (r, resp) in reqs.iter().zip(resps) {
            self.entries.insert(Key::of(r), resp.clone());
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
            c.append(&reqs, &resps).unwrap();
            c.path().to_path_buf()
        };
        // Simulate a kill in the middle of writing a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"question_id\":\"9\",\"prom").unwrap();
        drop(f);
        let mut c = ResponseCache::open(dir.path(), "m@1", "pope-random", None).unwrap();
        assert_eq!(c.len(), 3);
        for (r, resp) in reqs.iter().zip(&resps) {
            assert_eq!(c.get(r), Some(resp));
        }
        // A different prompt is a different key.
        let mut other = req("0");
        other.prompt = "Is there a star?".into();
        assert_eq!(c.get(&other), None);
        c.append(&[req("5")], &[Response::text("No")]).unwrap();
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
        a.append(&[req("1")], &[Response::text("3")]).unwrap();
        let mut b = ResponseCache::open(dir.path(), "m", "count", Some((1, 2))).unwrap();
        b.append(&[req("2")], &[Response::text("4")]).unwrap();
        assert_ne!(a.path(), b.path());
        let all = ResponseCache::open(dir.path(), "m", "count", None).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn corrupt_complete_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ResponseCache::open(dir.path(), "m", "count", None).unwrap();
        c.append(&[req("1")], &[Response::text("3")]).unwrap();
        let p = c.path().to_path_buf();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"garbage\n").unwrap();
        let err = ResponseCache::open(dir.path(), "m", "count", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:"), "{err}");
    }
}
