//! What a result was measured on: content hashes of the questions and media, the data set's
//! manifest and scene tier, and the key that tells two results apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::fxhash::{map_with_capacity, FxHashMap};

/// sha256 of a byte string, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What [`hash_files`] records for a file that does not exist.
pub const ABSENT: &str = "absent";

/// The sha256 of each distinct file's bytes, read and hashed in parallel, once per file; a file
/// that does not exist is recorded as [`ABSENT`] (a predictions file needs no images), any other
/// read error is an error naming the file.
pub(crate) fn hash_files<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<FxHashMap<PathBuf, String>> {
    let mut unique: Vec<&Path> = paths.into_iter().collect();
    unique.sort_unstable();
    unique.dedup();
    let hashed: Vec<(PathBuf, String)> = unique
        .par_iter()
        .map(|p| match std::fs::read(p) {
            Ok(bytes) => Ok((p.to_path_buf(), sha256_hex(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok((p.to_path_buf(), ABSENT.to_string()))
            }
            Err(e) => Err(EvalError::io(p, e)),
        })
        .collect::<Result<_>>()?;
    let mut out = map_with_capacity(hashed.len());
    out.extend(hashed);
    Ok(out)
}

/// The scene setting a synthetic data set was drawn with, from its `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneInfo {
    /// The layout tier (`aligned`, `free`, `occlusion`), or `sounds` for audio data sets.
    pub tier: String,
    /// Image width in pixels (image data sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Grid cell side in pixels (the aligned tier puts each object in its own cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<u32>,
}

impl std::fmt::Display for SceneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.tier)?;
        if let (Some(w), Some(h)) = (self.width, self.height) {
            write!(f, " {w}x{h}")?;
        }
        if let Some(c) = self.cell {
            write!(f, " cell {c}px")?;
        }
        Ok(())
    }
}

/// One split's question file, by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitData {
    /// The split's task name.
    pub task: String,
    /// sha256 of the question file's bytes.
    pub questions_sha256: String,
    /// sha256 over the media hashes of the questions used (all of the file, or the first
    /// `--limit`), in question order.
    pub media_sha256: String,
    /// Distinct media files among them.
    pub media_files: usize,
    /// Of those, files that were not there (identified by name only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub media_absent: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The identity of the data a result was measured on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// Short id over everything below (16 hex digits): equal ids, equal questions and media.
    pub id: String,
    /// sha256 of the data set's `manifest.json`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// The generator's kind and seed from the manifest (`shapes seed 1000000007`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    /// The scene tier and image size, from the manifest; `None` for data without one (real
    /// benchmark files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<SceneInfo>,
    /// Per split: question file and media hashes.
    pub splits: Vec<SplitData>,
}

impl DataIdentity {
    /// Combine the parts into [`DataIdentity::id`].
    pub fn compute_id(manifest: Option<&str>, splits: &[SplitData]) -> String {
        let mut h = Sha256::new();
        h.update(manifest.unwrap_or("-").as_bytes());
        for s in splits {
            h.update(b"\n");
            h.update(s.task.as_bytes());
            h.update(b" ");
            h.update(s.questions_sha256.as_bytes());
            h.update(b" ");
            h.update(s.media_sha256.as_bytes());
        }
        hex::encode(h.finalize())[..16].to_string()
    }

    /// How the tier reads in a table: `aligned 48x48 cell 12px`; `none` for data without a
    /// manifest (real benchmark files).
    pub fn tier_label(&self) -> String {
        match (&self.scene, &self.manifest_sha256) {
            (Some(s), _) => s.to_string(),
            (None, Some(_)) => "unknown (manifest names none)".to_string(),
            (None, None) => "none (no manifest: real data)".to_string(),
        }
    }
}

/// The fields of `manifest.json` read here.
#[derive(Deserialize)]
struct RawManifest {
    kind: Option<String>,
    seed: Option<u64>,
    tier: Option<String>,
    config: Option<serde_json::Value>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

/// What a manifest says.
pub struct ManifestInfo {
    /// sha256 of the manifest's bytes.
    pub sha256: String,
    /// `kind seed N`.
    pub generator: Option<String>,
    /// The scene setting.
    pub scene: Option<SceneInfo>,
    /// sha256 of every file it lists, by path relative to its folder.
    pub files: BTreeMap<String, String>,
}

/// The manifest of the data set the questions come from: `<data>/manifest.json` for a data set
/// folder, the folder above a `questions/` folder, or for a single question file the manifest
/// of its folder (or of the folder above, when the file sits in `questions/`).
pub fn find_manifest(data: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    let in_questions = |p: &Path| p.file_name().is_some_and(|n| n == "questions");
    if data.is_dir() {
        candidates.push(data.join("manifest.json"));
        if in_questions(data) {
            candidates.extend(data.parent().map(|p| p.join("manifest.json")));
        }
    } else if let Some(parent) = data.parent() {
        candidates.push(parent.join("manifest.json"));
        if in_questions(parent) {
            candidates.extend(parent.parent().map(|p| p.join("manifest.json")));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Read a manifest: its sha256, `kind seed N`, the scene setting and the files it lists.
pub fn read_manifest(path: &Path) -> Result<ManifestInfo> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let raw: RawManifest = serde_json::from_slice(&bytes).map_err(|e| EvalError::JsonDocument {
        path: path.to_path_buf(),
        source: e,
    })?;
    let generator = raw.kind.as_ref().map(|k| match raw.seed {
        Some(s) => format!("{k} seed {s}"),
        None => k.clone(),
    });
    let scene_cfg = raw.config.as_ref().and_then(|c| c.get("scene"));
    let num = |k: &str| {
        scene_cfg
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    let scene = match (&raw.tier, raw.kind.as_deref()) {
        (Some(t), _) => Some(SceneInfo {
            tier: t.clone(),
            width: num("width"),
            height: num("height"),
            cell: num("cell"),
        }),
        (None, Some("sounds")) => Some(SceneInfo {
            tier: "sounds".to_string(),
            width: None,
            height: None,
            cell: None,
        }),
        _ => None,
    };
    Ok(ManifestInfo {
        sha256: sha256_hex(&bytes),
        generator,
        scene,
        files: raw.files,
    })
}

/// The parts of a result's identity: two results with equal keys measured the same thing
/// (same weights, task, questions and media, mode, prompt, decoding, limit and shard).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResultKey {
    /// The model's display name (folder under `results/`).
    pub model: String,
    /// The task.
    pub task: String,
    /// The model identity (weights hash).
    pub model_identity: String,
    /// [`DataIdentity::id`], empty for results written before it existed.
    pub data: String,
    /// Generate or score.
    pub mode: String,
    /// The prompt template.
    pub prompt: String,
    /// Decoding settings as JSON text.
    pub decoding: String,
    /// `--limit`.
    pub limit: Option<usize>,
    /// `--shard`.
    pub shard: Option<(usize, usize)>,
}

impl ResultKey {
    /// Name the parts in which two keys of the same model and task differ.
    pub fn differences(&self, other: &ResultKey) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.model_identity != other.model_identity {
            d.push("weights");
        }
        if self.data != other.data {
            d.push("data");
        }
        if self.mode != other.mode {
            d.push("mode");
        }
        if self.prompt != other.prompt {
            d.push("prompt");
        }
        if self.decoding != other.decoding {
            d.push("decoding");
        }
        if self.limit != other.limit {
            d.push("limit");
        }
        if self.shard != other.shard {
            d.push("shard");
        }
        d
    }
}

/// Short labels of a map's keys, for messages.
pub fn first_few(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(", …");
    }
    s
}

/// Media hashes of every question, and the per-split data identity.
pub(crate) struct Hashed {
    /// Per split, per question (by index in the split): the media sha256.
    pub media: Vec<Vec<String>>,
    /// The identity.
    pub identity: DataIdentity,
    /// Seconds spent reading and hashing the question files and media.
    pub seconds: f64,
    /// The first media file that was not there, if any.
    pub first_absent: Option<PathBuf>,
}

/// Hash the question files and the media of the first `limits[i]` questions of each split.
pub(crate) fn hash_data(
    data: &Path,
    splits: &[crate::tasks::LoadedSplit],
    limits: &[usize],
) -> Result<Hashed> {
    let t = std::time::Instant::now();
    let media_paths = splits
        .iter()
        .zip(limits)
        .flat_map(|(s, &n)| s.questions[..n].iter())
        .filter_map(|q| q.image.as_deref().or(q.audio.as_deref()));
    let question_files = splits.iter().map(|s| s.source.as_path());
    let hashes = hash_files(media_paths.chain(question_files))?;
    let mut media = Vec::with_capacity(splits.len());
    let mut parts = Vec::with_capacity(splits.len());
    let mut first_absent: Option<PathBuf> = None;
    for (s, &n) in splits.iter().zip(limits) {
        let mut h = Sha256::new();
        let mut per = Vec::with_capacity(n);
        let mut distinct: BTreeMap<&str, ()> = BTreeMap::new();
        let mut absent: Vec<PathBuf> = Vec::new();
        for q in &s.questions[..n] {
            let path = q.image.as_deref().or(q.audio.as_deref());
            let digest = match path.and_then(|p| hashes.get(p).map(|h| (p, h))) {
                Some((p, h)) if h == ABSENT => {
                    absent.push(p.to_path_buf());
                    format!("{ABSENT}:{}", p.display())
                }
                Some((_, h)) => h.clone(),
                None => String::new(),
            };
            h.update(digest.as_bytes());
            h.update(b"\n");
            per.push(digest);
        }
        for d in &per {
            distinct.insert(d.as_str(), ());
        }
        absent.sort();
        absent.dedup();
        if first_absent.is_none() {
            first_absent = absent.first().cloned();
        }
        parts.push(SplitData {
            media_absent: absent.len(),
            task: s.task.clone(),
            questions_sha256: hashes.get(&s.source).cloned().unwrap_or_default(),
            media_sha256: hex::encode(h.finalize()),
            media_files: distinct.len(),
        });
        media.push(per);
    }
    let (manifest_sha256, generator, scene) = match find_manifest(data) {
        Some(p) => {
            let m = read_manifest(&p)?;
            let root = p.parent().unwrap_or(Path::new("."));
            // A question file the manifest lists must be the one it generated: otherwise the
            // tier and seed it states would describe other questions.
            for (s, part) in splits.iter().zip(&parts) {
                let rel = s.source.strip_prefix(root).ok().map(|r| {
                    r.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                });
                if let Some(want) = rel.as_ref().and_then(|r| m.files.get(r)) {
                    if *want != part.questions_sha256 {
                        return Err(EvalError::Data {
                            path: s.source.clone(),
                            message: format!(
                                "the question file does not match {} (changed after the data set \
                                 was written?); regenerate the data set or remove the manifest",
                                p.display()
                            ),
                        });
                    }
                }
            }
            (Some(m.sha256), m.generator, m.scene)
        }
        None => (None, None, None),
    };
    let id = DataIdentity::compute_id(manifest_sha256.as_deref(), &parts);
    Ok(Hashed {
        media,
        identity: DataIdentity {
            id,
            manifest_sha256,
            generator,
            scene,
            splits: parts,
        },
        seconds: t.elapsed().as_secs_f64(),
        first_absent,
    })
}
