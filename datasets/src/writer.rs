//! Dataset folders on disk: images, audio, annotations, question files, the
//! training mixture and a manifest with checksums. Same seed → same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DatasetError, Result};
use crate::loaders::{load_coco, TrainRecord};
use crate::pope::{
    build_count_questions, build_pope, AnnotatedItem, CountItem, CountQuestion, PopeConfig,
    PopeSplit, AUDIO_TEMPLATE, IMAGE_TEMPLATE,
};
use crate::questions::{
    audio_training_questions, compositional_questions, mixed_questions, seen_attribute_questions,
    training_questions, QaKind, QaMix, QA,
};
use crate::render::render;
use crate::rng::{purpose, stream_rng};
use crate::scene::{
    generate_scene, generate_scene_with_count, split_seed, Composition, Scene, SceneConfig, Tier,
    GENERATOR_VERSION,
};
use crate::sound::{
    generate_sound, generate_sound_with_count, synthesise, wav_bytes, SoundConfig, SoundScene,
};
use crate::vocab::{Shape, SoundClass};

/// Progress callback: called with the number of items (images or clips) just finished.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// What a dataset folder holds, with the sha256 of every file; written last as `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Generator name and version (changes whenever output bytes change).
    pub generator: String,
    /// Version of the mmlab-datasets crate that wrote the folder.
    pub crate_version: String,
    /// "shapes", "sounds", "mixed" or "pope-coco".
    pub kind: String,
    /// The dataset seed.
    pub seed: u64,
    /// The scene tier, for datasets with images.
    pub tier: Option<Tier>,
    /// The full configuration that produced the folder.
    pub config: serde_json::Value,
    /// Item and question counts by name ("images", "questions/pope-random.jsonl", …).
    pub counts: BTreeMap<String, u64>,
    /// sha256 (hex) of every file, by path relative to the folder.
    pub files: BTreeMap<String, String>,
}

/// Settings of [`write_shapes`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapesDatasetConfig {
    /// Dataset seed; every split derives its own seed from it.
    pub seed: u64,
    /// The scene generator.
    pub scene: SceneConfig,
    /// Images of the POPE split (POPE: 500), also used for CHAIR and the attribute control.
    pub pope_images: usize,
    /// Ground-truth and negative objects per POPE image (POPE: 3).
    pub pope_per_image: usize,
    /// Images of the counting split (counts balanced over 0..=max_count).
    pub count_images: usize,
    /// Images of the compositional split (each holds a held-out colour–shape pair).
    pub compositional_images: usize,
    /// Images of the training mixture.
    pub train_images: usize,
    /// Questions per training image.
    pub mix: QaMix,
}

impl Default for ShapesDatasetConfig {
    fn default() -> Self {
        ShapesDatasetConfig {
            seed: 0,
            scene: SceneConfig::small(),
            pope_images: 500,
            pope_per_image: 3,
            count_images: 700,
            compositional_images: 300,
            train_images: 2000,
            mix: QaMix::default(),
        }
    }
}

impl ShapesDatasetConfig {
    /// Number of images the writer will produce (for sizing a progress bar).
    pub fn total_items(&self) -> u64 {
        let comp = if self.scene.held_out.is_empty() {
            0
        } else {
            self.compositional_images
        };
        (self.pope_images + self.count_images + comp + self.train_images) as u64
    }
}

/// Settings of [`write_sounds`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SoundsDatasetConfig {
    /// Dataset seed.
    pub seed: u64,
    /// The sound generator.
    pub sound: SoundConfig,
    /// Clips of the audio POPE split.
    pub pope_clips: usize,
    /// Present and absent classes per POPE clip.
    pub pope_per_clip: usize,
    /// Clips of the counting split.
    pub count_clips: usize,
    /// Clips of the training mixture.
    pub train_clips: usize,
    /// Questions per training clip (presence, count and caption are used).
    pub mix: QaMix,
}

impl Default for SoundsDatasetConfig {
    fn default() -> Self {
        SoundsDatasetConfig {
            seed: 0,
            sound: SoundConfig::short(),
            pope_clips: 500,
            pope_per_clip: 3,
            count_clips: 500,
            train_clips: 2000,
            mix: QaMix::default(),
        }
    }
}

impl SoundsDatasetConfig {
    /// Number of clips the writer will produce.
    pub fn total_items(&self) -> u64 {
        (self.pope_clips + self.count_clips + self.train_clips) as u64
    }
}

/// Settings of [`write_mixed`]: paired images and clips with cross-modal questions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MixedDatasetConfig {
    /// Dataset seed.
    pub seed: u64,
    /// The scene generator.
    pub scene: SceneConfig,
    /// The sound generator.
    pub sound: SoundConfig,
    /// Image+clip pairs of the evaluation split.
    pub eval_pairs: usize,
    /// Image+clip pairs of the training mixture.
    pub train_pairs: usize,
    /// Single-modality questions added per training pair.
    pub mix: QaMix,
}

impl Default for MixedDatasetConfig {
    fn default() -> Self {
        MixedDatasetConfig {
            seed: 0,
            scene: SceneConfig::small(),
            sound: SoundConfig::short(),
            eval_pairs: 500,
            train_pairs: 2000,
            mix: QaMix::presence_and_count(),
        }
    }
}

impl MixedDatasetConfig {
    /// Number of image+clip pairs the writer will produce.
    pub fn total_items(&self) -> u64 {
        (self.eval_pairs + self.train_pairs) as u64
    }
}

// ---------------------------------------------------------------- file helpers

/// JSON with Python's `json.dumps` separators (", " and ": "), as POPE's files use.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// One JSON line with POPE's separators, newline included.
pub(crate) fn json_line<T: Serialize>(value: &T) -> String {
    let mut buf = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyFormatter);
    // Serialising plain data structs into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        buf.clear();
        buf.extend_from_slice(b"{}");
    }
    buf.push(b'\n');
    String::from_utf8(buf).unwrap_or_default()
}

/// Writes `bytes` to `path` through a temporary file and a rename; the temporary name is unique
/// to this process and call, so concurrent writers never rename each other's files away.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = path.with_file_name(format!(
        ".{name}.tmp{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes).map_err(|e| DatasetError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DatasetError::io(path, e)
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| DatasetError::io(path, e))
}

/// A file's path relative to the dataset folder and its bytes.
type NamedBytes = (String, Vec<u8>);

/// Collects written files and their checksums.
struct Folder {
    root: PathBuf,
    files: BTreeMap<String, String>,
    counts: BTreeMap<String, u64>,
}

impl Folder {
    fn new(root: &Path) -> Result<Self> {
        mkdir(root)?;
        Ok(Folder {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            counts: BTreeMap::new(),
        })
    }

    fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        write_atomic(&path, bytes)?;
        self.files.insert(rel.to_string(), sha256_hex(bytes));
        Ok(())
    }

    fn write_lines(&mut self, rel: &str, lines: &[String]) -> Result<()> {
        self.counts.insert(rel.to_string(), lines.len() as u64);
        self.write(rel, lines.concat().as_bytes())
    }

    /// Writes many media files in parallel; `make` returns (relative path, bytes).
    fn write_media<T: Sync>(
        &mut self,
        items: &[T],
        make: &(dyn Fn(&T) -> Result<NamedBytes> + Sync),
        progress: Progress<'_>,
    ) -> Result<()> {
        let root = self.root.clone();
        let done: Vec<(String, String)> = items
            .par_chunks(32)
            .map(|chunk| -> Result<Vec<(String, String)>> {
                let mut out = Vec::with_capacity(chunk.len());
                for it in chunk {
                    let (rel, bytes) = make(it)?;
                    write_atomic(&root.join(&rel), &bytes)?;
                    out.push((rel, sha256_hex(&bytes)));
                }
                progress(chunk.len() as u64);
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        self.files.extend(done);
        Ok(())
    }

    fn finish(
        mut self,
        kind: &str,
        seed: u64,
        tier: Option<Tier>,
        config: serde_json::Value,
    ) -> Result<Manifest> {
        let manifest = Manifest {
            generator: GENERATOR_VERSION.to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            kind: kind.to_string(),
            seed,
            tier,
            config,
            counts: std::mem::take(&mut self.counts),
            files: std::mem::take(&mut self.files),
        };
        let mut text =
            serde_json::to_string_pretty(&manifest).map_err(|e| DatasetError::Encode {
                path: self.root.join("manifest.json"),
                message: e.to_string(),
            })?;
        text.push('\n');
        write_atomic(&self.root.join("manifest.json"), text.as_bytes())?;
        Ok(manifest)
    }
}

fn png_bytes(scene: &Scene, rel: &str) -> Result<(String, Vec<u8>)> {
    use image::ImageEncoder;
    let img = render(scene);
    let mut buf = Vec::with_capacity(4096);
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DatasetError::Encode {
            path: rel.into(),
            message: e.to_string(),
        })?;
    Ok((rel.to_string(), buf))
}

fn wav_file(clip: &SoundScene, rel: &str) -> Result<(String, Vec<u8>)> {
    let bytes =
        wav_bytes(&synthesise(clip), clip.sample_rate).map_err(|e| DatasetError::Encode {
            path: rel.into(),
            message: e.to_string(),
        })?;
    Ok((rel.to_string(), bytes))
}

fn image_name(i: usize) -> String {
    format!("{i:06}.png")
}

fn audio_name(i: usize) -> String {
    format!("{i:06}.wav")
}

/// Generates items in index order (in parallel chunks) and keeps the first `want`
/// that satisfy `keep`; errors when `limit` candidates are not enough.
fn first_matching<T: Send>(
    want: usize,
    limit: u64,
    what: &str,
    make: &(dyn Fn(u64) -> T + Sync),
    keep: &(dyn Fn(&T) -> bool + Sync),
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(want);
    let mut next = 0u64;
    let chunk = 512u64;
    while out.len() < want {
        if next >= limit {
            return Err(DatasetError::Insufficient {
                what: what.to_string(),
                message: format!(
                    "only {} of {} wanted items qualified among {} candidates; raise max_objects/max_events",
                    out.len(),
                    want,
                    next
                ),
            });
        }
        let batch: Vec<T> = (next..next + chunk)
            .into_par_iter()
            .map(make)
            .filter(|t| keep(t))
            .collect();
        out.extend(batch.into_iter().take(want - out.len()));
        next += chunk;
    }
    Ok(out)
}

#[derive(Serialize)]
struct SceneLine<'a> {
    image: &'a str,
    split: &'a str,
    #[serde(flatten)]
    scene: &'a Scene,
}

#[derive(Serialize)]
struct SoundLine<'a> {
    audio: &'a str,
    split: &'a str,
    #[serde(flatten)]
    clip: &'a SoundScene,
}

#[derive(Serialize)]
struct AudioPopeLine<'a> {
    question_id: u64,
    audio: &'a str,
    text: &'a str,
    label: &'a str,
}

#[derive(Serialize)]
struct AudioCountLine<'a> {
    question_id: u64,
    audio: &'a str,
    text: &'a str,
    label: &'a str,
    object: &'a str,
}

#[derive(Serialize)]
struct QaLine<'a> {
    question_id: u64,
    image: &'a str,
    text: &'a str,
    label: &'a str,
    kind: &'a str,
}

#[derive(Serialize)]
struct MixedLine<'a> {
    question_id: u64,
    image: &'a str,
    audio: &'a str,
    text: &'a str,
    label: &'a str,
}

#[derive(Serialize)]
struct ChairLine<'a> {
    question_id: u64,
    image: &'a str,
    text: &'a str,
    objects: Vec<&'a str>,
}

fn train_line(image: Option<&str>, audio: Option<&str>, qa: &QA) -> String {
    json_line(&TrainRecord {
        image: image.map(str::to_string),
        audio: audio.map(str::to_string),
        kind: qa.kind,
        question: qa.question.clone(),
        answer: qa.answer.clone(),
    })
}

fn config_value<T: Serialize>(cfg: &T) -> serde_json::Value {
    serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null)
}

// ---------------------------------------------------------------- shapes

/// Writes a shapes dataset: `images/`, `annotations.jsonl`, `questions/pope-{random,popular,adversarial}.jsonl`,
/// `questions/count.jsonl`, `questions/chair.jsonl`, `questions/attribute.jsonl`,
/// `questions/compositional.jsonl`, `train.jsonl` and `manifest.json`.
/// `progress` receives the number of images finished since its last call.
pub fn write_shapes(
    out: &Path,
    cfg: &ShapesDatasetConfig,
    progress: Progress<'_>,
) -> Result<Manifest> {
    cfg.scene.validate()?;
    if cfg.pope_per_image == 0 {
        return Err(DatasetError::config("pope_per_image", "must be at least 1"));
    }
    let has_holdout = !cfg.scene.held_out.is_empty();
    let seen = SceneConfig {
        composition: if has_holdout {
            Composition::Seen
        } else {
            Composition::Any
        },
        ..cfg.scene.clone()
    };
    let unseen = SceneConfig {
        composition: Composition::Unseen,
        ..cfg.scene.clone()
    };
    let mut folder = Folder::new(out)?;
    mkdir(&out.join("images"))?;
    mkdir(&out.join("questions"))?;

    // POPE split: scenes with at least `pope_per_image` distinct categories.
    let pope_seed = split_seed(cfg.seed, "pope");
    let per = cfg.pope_per_image;
    let pope_scenes = first_matching(
        cfg.pope_images,
        (cfg.pope_images as u64 + 1) * 200,
        "shapes POPE split",
        &|i| generate_scene(&seen, pope_seed, i),
        &|s: &Scene| s.categories().len() >= per,
    )?;
    let count_seed = split_seed(cfg.seed, "count");
    let kmax = seen.effective_max_count();
    let count_scenes: Vec<Scene> = (0..cfg.count_images as u64)
        .into_par_iter()
        .map(|i| generate_scene_with_count(&seen, count_seed, i, (i as usize) % (kmax + 1)))
        .collect();
    let comp_seed = split_seed(cfg.seed, "compositional");
    let comp_n = if has_holdout {
        cfg.compositional_images
    } else {
        0
    };
    let comp_scenes: Vec<Scene> = (0..comp_n as u64)
        .into_par_iter()
        .map(|i| generate_scene(&unseen, comp_seed, i))
        .collect();
    let train_seed = split_seed(cfg.seed, "train");
    let train_scenes: Vec<Scene> = (0..cfg.train_images as u64)
        .into_par_iter()
        .map(|i| generate_scene(&seen, train_seed, i))
        .collect();

    let mut all: Vec<(String, &str, &Scene)> = Vec::new();
    for (split, scenes) in [
        ("pope", &pope_scenes),
        ("count", &count_scenes),
        ("compositional", &comp_scenes),
        ("train", &train_scenes),
    ] {
        for s in scenes.iter() {
            all.push((image_name(all.len()), split, s));
        }
    }
    folder.write_media(
        &all,
        &|(name, _, scene)| png_bytes(scene, &format!("images/{name}")),
        progress,
    )?;
    folder.counts.insert("images".into(), all.len() as u64);
    let ann: Vec<String> = all
        .iter()
        .map(|(name, split, scene)| {
            json_line(&SceneLine {
                image: name,
                split,
                scene,
            })
        })
        .collect();
    folder.write_lines("annotations.jsonl", &ann)?;

    let (pope_part, rest) = all.split_at(pope_scenes.len());
    let (count_part, rest) = rest.split_at(count_scenes.len());
    let (comp_part, train_part) = rest.split_at(comp_scenes.len());

    // POPE.
    let items: Vec<AnnotatedItem> = pope_part
        .iter()
        .map(|(name, _, s)| AnnotatedItem {
            image: name.clone(),
            objects: s
                .categories()
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
        })
        .collect();
    let pope = build_pope(
        &items,
        &PopeConfig {
            images: items.len(),
            per_image: per,
            template: IMAGE_TEMPLATE.to_string(),
            seed: split_seed(cfg.seed, "pope-questions"),
        },
    )?;
    for (split, qs) in &pope.splits {
        let lines: Vec<String> = qs.iter().map(json_line).collect();
        folder.write_lines(&format!("questions/pope-{}.jsonl", split.name()), &lines)?;
    }

    // CHAIR prompts and the seen-attribute control on the POPE images.
    let chair: Vec<String> = pope_part
        .iter()
        .enumerate()
        .map(|(i, (name, _, s))| {
            json_line(&ChairLine {
                question_id: i as u64 + 1,
                image: name,
                text: "Describe the image.",
                objects: s.categories().iter().map(|c| c.name()).collect(),
            })
        })
        .collect();
    folder.write_lines("questions/chair.jsonl", &chair)?;
    let qseed = split_seed(cfg.seed, "questions");
    let attr = qa_lines(pope_part, &|i, s| {
        seen_attribute_questions(s, &mut stream_rng(qseed, i, purpose::QUESTIONS))
    });
    folder.write_lines("questions/attribute.jsonl", &attr)?;

    // Counting.
    let count_items: Vec<CountItem> = count_part
        .iter()
        .map(|(name, _, s)| CountItem {
            image: name.clone(),
            counts: s
                .counts()
                .into_iter()
                .map(|(c, n)| (c.name().to_string(), n))
                .collect(),
        })
        .collect();
    let plural = |o: &str| {
        Shape::from_name(o)
            .map(|s| s.plural().to_string())
            .unwrap_or_else(|| format!("{o}s"))
    };
    let counts = build_count_questions(&count_items, kmax, qseed, &plural, "image");
    let lines: Vec<String> = counts.iter().map(json_line).collect();
    folder.write_lines("questions/count.jsonl", &lines)?;

    // Compositional (held-out colour–shape pairs).
    if has_holdout {
        let held = cfg.scene.held_out.clone();
        let comp = qa_lines(comp_part, &|i, s| {
            compositional_questions(
                s,
                &held,
                &mut stream_rng(qseed, 1_000_000 + i, purpose::QUESTIONS),
            )
        });
        folder.write_lines("questions/compositional.jsonl", &comp)?;
    }

    // Training mixture.
    let train: Vec<String> = train_part
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (name, _, s))| {
            let mut rng = stream_rng(train_seed, i as u64, purpose::QUESTIONS);
            training_questions(s, &cfg.mix, &mut rng)
                .into_iter()
                .map(|qa| train_line(Some(name), None, &qa))
                .collect::<Vec<_>>()
        })
        .collect();
    folder.write_lines("train.jsonl", &train)?;

    folder.finish("shapes", cfg.seed, Some(cfg.scene.tier), config_value(cfg))
}

fn qa_lines(
    part: &[(String, &str, &Scene)],
    make: &(dyn Fn(u64, &Scene) -> Vec<QA> + Sync),
) -> Vec<String> {
    let qas: Vec<(usize, QA)> = part
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, s))| make(i as u64, s).into_iter().map(move |q| (i, q)))
        .collect();
    qas.iter()
        .enumerate()
        .map(|(k, (i, qa))| {
            json_line(&QaLine {
                question_id: k as u64 + 1,
                image: &part[*i].0,
                text: &qa.question,
                label: &qa.answer,
                kind: qa.kind.name(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------- sounds

/// Writes a sounds dataset: `audio/`, `annotations.jsonl`, `questions/audio-pope-{random,popular,adversarial}.jsonl`,
/// `questions/audio-count.jsonl`, `train.jsonl` and `manifest.json`.
/// `progress` receives the number of clips finished since its last call.
pub fn write_sounds(
    out: &Path,
    cfg: &SoundsDatasetConfig,
    progress: Progress<'_>,
) -> Result<Manifest> {
    cfg.sound.validate()?;
    if cfg.pope_per_clip == 0 {
        return Err(DatasetError::config("pope_per_clip", "must be at least 1"));
    }
    let mut folder = Folder::new(out)?;
    mkdir(&out.join("audio"))?;
    mkdir(&out.join("questions"))?;
    let per = cfg.pope_per_clip;
    let pope_seed = split_seed(cfg.seed, "audio-pope");
    let pope_clips = first_matching(
        cfg.pope_clips,
        (cfg.pope_clips as u64 + 1) * 200,
        "sounds POPE split",
        &|i| generate_sound(&cfg.sound, pope_seed, i),
        &|c: &SoundScene| c.classes().len() >= per,
    )?;
    let count_seed = split_seed(cfg.seed, "audio-count");
    let kmax = cfg.sound.effective_max_count();
    let count_clips: Vec<SoundScene> = (0..cfg.count_clips as u64)
        .into_par_iter()
        .map(|i| generate_sound_with_count(&cfg.sound, count_seed, i, (i as usize) % (kmax + 1)))
        .collect();
    let train_seed = split_seed(cfg.seed, "audio-train");
    let train_clips: Vec<SoundScene> = (0..cfg.train_clips as u64)
        .into_par_iter()
        .map(|i| generate_sound(&cfg.sound, train_seed, i))
        .collect();
    let mut all: Vec<(String, &str, &SoundScene)> = Vec::new();
    for (split, clips) in [
        ("pope", &pope_clips),
        ("count", &count_clips),
        ("train", &train_clips),
    ] {
        for c in clips.iter() {
            all.push((audio_name(all.len()), split, c));
        }
    }
    folder.write_media(
        &all,
        &|(name, _, clip)| wav_file(clip, &format!("audio/{name}")),
        progress,
    )?;
    folder.counts.insert("clips".into(), all.len() as u64);
    let ann: Vec<String> = all
        .iter()
        .map(|(name, split, clip)| {
            json_line(&SoundLine {
                audio: name,
                split,
                clip,
            })
        })
        .collect();
    folder.write_lines("annotations.jsonl", &ann)?;
    let (pope_part, rest) = all.split_at(pope_clips.len());
    let (count_part, train_part) = rest.split_at(count_clips.len());

    let items: Vec<AnnotatedItem> = pope_part
        .iter()
        .map(|(name, _, c)| AnnotatedItem {
            image: name.clone(),
            objects: c.classes().iter().map(|k| k.name().to_string()).collect(),
        })
        .collect();
    let pope = build_pope(
        &items,
        &PopeConfig {
            images: items.len(),
            per_image: per,
            template: AUDIO_TEMPLATE.to_string(),
            seed: split_seed(cfg.seed, "audio-pope-questions"),
        },
    )?;
    for (split, qs) in &pope.splits {
        let lines: Vec<String> = qs
            .iter()
            .map(|q| {
                json_line(&AudioPopeLine {
                    question_id: q.question_id,
                    audio: &q.image,
                    text: &q.text,
                    label: q.label.as_str(),
                })
            })
            .collect();
        folder.write_lines(
            &format!("questions/audio-pope-{}.jsonl", split.name()),
            &lines,
        )?;
    }
    let count_items: Vec<CountItem> = count_part
        .iter()
        .map(|(name, _, c)| CountItem {
            image: name.clone(),
            counts: c
                .counts()
                .into_iter()
                .map(|(k, n)| (k.name().to_string(), n))
                .collect(),
        })
        .collect();
    let plural = |o: &str| {
        SoundClass::from_name(o)
            .map(|s| s.plural().to_string())
            .unwrap_or_else(|| format!("{o}s"))
    };
    let qseed = split_seed(cfg.seed, "audio-questions");
    let counts: Vec<CountQuestion> =
        build_count_questions(&count_items, kmax, qseed, &plural, "audio");
    let lines: Vec<String> = counts
        .iter()
        .map(|q| {
            json_line(&AudioCountLine {
                question_id: q.question_id,
                audio: &q.image,
                text: &q.text,
                label: &q.label,
                object: &q.object,
            })
        })
        .collect();
    folder.write_lines("questions/audio-count.jsonl", &lines)?;
    let train: Vec<String> = train_part
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (name, _, c))| {
            let mut rng = stream_rng(train_seed, i as u64, purpose::QUESTIONS);
            audio_training_questions(c, &cfg.mix, &mut rng)
                .into_iter()
                .map(|qa| train_line(None, Some(name), &qa))
                .collect::<Vec<_>>()
        })
        .collect();
    folder.write_lines("train.jsonl", &train)?;
    folder.finish("sounds", cfg.seed, None, config_value(cfg))
}

// ---------------------------------------------------------------- mixed

/// Writes paired images and clips (`images/N.png` with `audio/N.wav`), `annotations.jsonl`,
/// `questions/mixed.jsonl` (fields `question_id`, `image`, `audio`, `text`, `label`),
/// `train.jsonl` (mixed plus single-modality questions) and `manifest.json`.
pub fn write_mixed(
    out: &Path,
    cfg: &MixedDatasetConfig,
    progress: Progress<'_>,
) -> Result<Manifest> {
    cfg.scene.validate()?;
    cfg.sound.validate()?;
    let scene_cfg = SceneConfig {
        composition: if cfg.scene.held_out.is_empty() {
            Composition::Any
        } else {
            Composition::Seen
        },
        ..cfg.scene.clone()
    };
    let mut folder = Folder::new(out)?;
    mkdir(&out.join("images"))?;
    mkdir(&out.join("audio"))?;
    mkdir(&out.join("questions"))?;
    let eval_seed = split_seed(cfg.seed, "mixed-eval");
    let train_seed = split_seed(cfg.seed, "mixed-train");
    let make = |seed: u64, n: usize| -> Vec<(Scene, SoundScene)> {
        (0..n as u64)
            .into_par_iter()
            .map(|i| {
                (
                    generate_scene(&scene_cfg, seed, i),
                    generate_sound(&cfg.sound, seed, i),
                )
            })
            .collect()
    };
    let eval = make(eval_seed, cfg.eval_pairs);
    let train = make(train_seed, cfg.train_pairs);
    let all: Vec<(usize, &str, &(Scene, SoundScene))> = eval
        .iter()
        .map(|p| ("eval", p))
        .chain(train.iter().map(|p| ("train", p)))
        .enumerate()
        .map(|(i, (split, p))| (i, split, p))
        .collect();
    folder.write_media(
        &all,
        &|(i, _, (scene, _))| png_bytes(scene, &format!("images/{}", image_name(*i))),
        &|_| {},
    )?;
    folder.write_media(
        &all,
        &|(i, _, (_, clip))| wav_file(clip, &format!("audio/{}", audio_name(*i))),
        progress,
    )?;
    folder.counts.insert("pairs".into(), all.len() as u64);
    #[derive(Serialize)]
    struct PairLine<'a> {
        image: String,
        audio: String,
        split: &'a str,
        scene: &'a Scene,
        sound: &'a SoundScene,
    }
    let ann: Vec<String> = all
        .iter()
        .map(|(i, split, (scene, sound))| {
            json_line(&PairLine {
                image: image_name(*i),
                audio: audio_name(*i),
                split,
                scene,
                sound,
            })
        })
        .collect();
    folder.write_lines("annotations.jsonl", &ann)?;
    let mut lines = Vec::new();
    for (i, (scene, clip)) in eval.iter().enumerate() {
        let mut rng = stream_rng(eval_seed, i as u64, purpose::QUESTIONS);
        for qa in mixed_questions(scene, clip, &mut rng) {
            lines.push(json_line(&MixedLine {
                question_id: lines.len() as u64 + 1,
                image: &image_name(i),
                audio: &audio_name(i),
                text: &qa.question,
                label: &qa.answer,
            }));
        }
    }
    folder.write_lines("questions/mixed.jsonl", &lines)?;
    let offset = eval.len();
    let train_lines: Vec<String> = train
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (scene, clip))| {
            let mut rng = stream_rng(train_seed, i as u64, purpose::QUESTIONS);
            let (img, aud) = (image_name(offset + i), audio_name(offset + i));
            let mut qs = mixed_questions(scene, clip, &mut rng);
            qs.extend(training_questions(scene, &cfg.mix, &mut rng));
            qs.extend(audio_training_questions(clip, &cfg.mix, &mut rng));
            qs.into_iter()
                .map(|qa| {
                    let image = matches!(
                        qa.kind,
                        QaKind::Mixed
                            | QaKind::Presence
                            | QaKind::Count
                            | QaKind::Colour
                            | QaKind::Attribute
                            | QaKind::Spatial
                            | QaKind::Caption
                    );
                    let audio = !image || qa.kind == QaKind::Mixed;
                    train_line(
                        image.then_some(img.as_str()),
                        audio.then_some(aud.as_str()),
                        &qa,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    folder.write_lines("train.jsonl", &train_lines)?;
    folder.finish("mixed", cfg.seed, Some(cfg.scene.tier), config_value(cfg))
}

// ---------------------------------------------------------------- POPE from COCO

/// Rebuilds POPE from a COCO instances file: writes `questions/pope-{random,popular,adversarial}.jsonl`
/// (image names are COCO `file_name`s), `annotations.jsonl` (the sampled images with their
/// ground-truth objects, POPE's own input format) and `manifest.json`.
pub fn write_pope_from_coco(
    annotations: &Path,
    out: &Path,
    cfg: &PopeConfig,
    progress: Progress<'_>,
) -> Result<Manifest> {
    let coco = load_coco(annotations)?;
    let items = coco.object_lists();
    write_pope_items(&items, out, cfg, "pope-coco", progress)
}

/// Builds and writes the three POPE splits over any annotated items (see [`write_pope_from_coco`]).
pub fn write_pope_items(
    items: &[AnnotatedItem],
    out: &Path,
    cfg: &PopeConfig,
    kind: &str,
    progress: Progress<'_>,
) -> Result<Manifest> {
    let pope = build_pope(items, cfg)?;
    let mut folder = Folder::new(out)?;
    mkdir(&out.join("questions"))?;
    let ann: Vec<String> = pope.items.iter().map(json_line).collect();
    folder.write_lines("annotations.jsonl", &ann)?;
    for split in PopeSplit::ALL {
        let lines: Vec<String> = pope.split(split).iter().map(json_line).collect();
        folder.write_lines(&format!("questions/pope-{}.jsonl", split.name()), &lines)?;
    }
    progress(pope.items.len() as u64);
    folder
        .counts
        .insert("images".into(), pope.items.len() as u64);
    folder.finish(kind, cfg.seed, None, config_value(cfg))
}

/// Reads `manifest.json` of a dataset folder and checks every listed file's sha256.
pub fn verify_dataset(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DatasetError::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| DatasetError::parse(&path, e.line(), e.to_string()))?;
    for (rel, sum) in &manifest.files {
        let p = dir.join(rel);
        let bytes = std::fs::read(&p).map_err(|e| DatasetError::io(&p, e))?;
        if &sha256_hex(&bytes) != sum {
            return Err(DatasetError::Invalid {
                path: path.clone(),
                location: format!("files[{rel:?}]"),
                message: "checksum does not match the file on disk".into(),
            });
        }
    }
    Ok(manifest)
}
