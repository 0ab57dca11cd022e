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
    PopeQuestion, PopeSplit, AUDIO_TEMPLATE, IMAGE_TEMPLATE,
};
use crate::questions::{
    audio_training_questions, compositional_questions, mixed_questions, seen_attribute_questions,
    training_questions, QaKind, QaMix, QA,
};
use crate::render::render;
use crate::rng::{purpose, stream_rng, DataRng};
use crate::scene::{
    generate_scene, generate_scene_with_count, split_seed, Composition, Scene, SceneConfig, Tier,
    GENERATOR_VERSION,
};
use crate::sound::{
    generate_sound, generate_sound_with_count, synthesise, wav_bytes, SoundConfig, SoundScene,
};
use crate::vocab::{Category, Shape, SoundClass};

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

// ---------------------------------------------------------------- the skeleton of shapes and sounds

/// What the skeleton that [`write_shapes`] and [`write_sounds`] share needs of a modality.
trait Medium {
    /// A generated item: a scene or a clip.
    type Item: Send + Sync;
    /// What questions about it ask of: shapes or sound classes.
    type Category: Category;
    /// The folder of the media files ("images").
    const DIR: &'static str;
    /// The manifest's count of media files ("images").
    const COUNTED_AS: &'static str;
    /// The medium as counting questions name it ("image").
    const WORD: &'static str;
    /// POPE's question template.
    const POPE_TEMPLATE: &'static str;
    /// What task names and split seeds of this medium start with ("" or "audio-").
    const PREFIX: &'static str;

    /// The media file name of item `i`.
    fn file_name(i: usize) -> String;
    /// The media file of an item: (relative path, bytes).
    fn encode(item: &Self::Item, rel: &str) -> Result<NamedBytes>;
    /// Distinct categories in order of first appearance.
    fn objects(item: &Self::Item) -> Vec<Self::Category>;
    /// The count of every category of the vocabulary.
    fn counts(item: &Self::Item) -> Vec<(Self::Category, usize)>;
    /// An item's line of `annotations.jsonl`.
    fn annotation(name: &str, split: &str, item: &Self::Item) -> String;
    /// A POPE question's line.
    fn pope_line(q: &PopeQuestion) -> String;
    /// A counting question's line.
    fn count_line(q: &CountQuestion) -> String;
    /// The training questions of an item.
    fn training(item: &Self::Item, mix: &QaMix, rng: &mut DataRng) -> Vec<QA>;
    /// A training question's line of `train.jsonl`.
    fn train_line(name: &str, qa: &QA) -> String;
}

/// Scenes, as PNG images.
struct Shapes;

impl Medium for Shapes {
    type Item = Scene;
    type Category = Shape;
    const DIR: &'static str = "images";
    const COUNTED_AS: &'static str = "images";
    const WORD: &'static str = "image";
    const POPE_TEMPLATE: &'static str = IMAGE_TEMPLATE;
    const PREFIX: &'static str = "";

    fn file_name(i: usize) -> String {
        image_name(i)
    }
    fn encode(scene: &Scene, rel: &str) -> Result<NamedBytes> {
        png_bytes(scene, rel)
    }
    fn objects(scene: &Scene) -> Vec<Shape> {
        scene.categories()
    }
    fn counts(scene: &Scene) -> Vec<(Shape, usize)> {
        scene.counts()
    }
    fn annotation(image: &str, split: &str, scene: &Scene) -> String {
        json_line(&SceneLine {
            image,
            split,
            scene,
        })
    }
    fn pope_line(q: &PopeQuestion) -> String {
        json_line(q)
    }
    fn count_line(q: &CountQuestion) -> String {
        json_line(q)
    }
    fn training(scene: &Scene, mix: &QaMix, rng: &mut DataRng) -> Vec<QA> {
        training_questions(scene, mix, rng)
    }
    fn train_line(name: &str, qa: &QA) -> String {
        train_line(Some(name), None, qa)
    }
}

/// Clips, as WAV files.
struct Sounds;

impl Medium for Sounds {
    type Item = SoundScene;
    type Category = SoundClass;
    const DIR: &'static str = "audio";
    const COUNTED_AS: &'static str = "clips";
    const WORD: &'static str = "audio";
    const POPE_TEMPLATE: &'static str = AUDIO_TEMPLATE;
    const PREFIX: &'static str = "audio-";

    fn file_name(i: usize) -> String {
        audio_name(i)
    }
    fn encode(clip: &SoundScene, rel: &str) -> Result<NamedBytes> {
        wav_file(clip, rel)
    }
    fn objects(clip: &SoundScene) -> Vec<SoundClass> {
        clip.classes()
    }
    fn counts(clip: &SoundScene) -> Vec<(SoundClass, usize)> {
        clip.counts()
    }
    fn annotation(audio: &str, split: &str, clip: &SoundScene) -> String {
        json_line(&SoundLine { audio, split, clip })
    }
    fn pope_line(q: &PopeQuestion) -> String {
        json_line(&AudioPopeLine {
            question_id: q.question_id,
            audio: &q.image,
            text: &q.text,
            label: q.label.as_str(),
        })
    }
    fn count_line(q: &CountQuestion) -> String {
        json_line(&AudioCountLine {
            question_id: q.question_id,
            audio: &q.image,
            text: &q.text,
            label: &q.label,
            object: &q.object,
        })
    }
    fn training(clip: &SoundScene, mix: &QaMix, rng: &mut DataRng) -> Vec<QA> {
        audio_training_questions(clip, mix, rng)
    }
    fn train_line(name: &str, qa: &QA) -> String {
        train_line(None, Some(name), qa)
    }
}

/// A data set's items in file order: (media file name, split, item).
type Named<'a, T> = [(String, &'a str, &'a T)];

/// `n` items made in parallel, in index order.
fn generate<T: Send>(n: usize, make: &(dyn Fn(u64) -> T + Sync)) -> Vec<T> {
    (0..n as u64).into_par_iter().map(make).collect()
}

/// `n` items whose probe counts cycle through `0..=kmax`, for balanced counting questions.
fn generate_balanced<T: Send>(
    n: usize,
    kmax: usize,
    make: &(dyn Fn(u64, usize) -> T + Sync),
) -> Vec<T> {
    generate(n, &|i| make(i, (i as usize) % (kmax + 1)))
}

/// The first `n` items of a stream that hold at least `per` distinct categories (POPE's images).
fn generate_pope<M: Medium>(
    n: usize,
    per: usize,
    what: &str,
    make: &(dyn Fn(u64) -> M::Item + Sync),
) -> Result<Vec<M::Item>> {
    first_matching(n, (n as u64 + 1) * 200, what, make, &|it: &M::Item| {
        M::objects(it).len() >= per
    })
}

/// Names the items of each split in order, writes their media files (in parallel) and
/// `annotations.jsonl`.
fn write_items<'a, M: Medium>(
    folder: &mut Folder,
    splits: &[(&'a str, &'a [M::Item])],
    progress: Progress<'_>,
) -> Result<Vec<(String, &'a str, &'a M::Item)>> {
    let mut all: Vec<(String, &str, &M::Item)> = Vec::new();
    for (split, items) in splits {
        for it in items.iter() {
            all.push((M::file_name(all.len()), *split, it));
        }
    }
    folder.write_media(
        &all,
        &|(name, _, it)| M::encode(it, &format!("{}/{name}", M::DIR)),
        progress,
    )?;
    folder.counts.insert(M::COUNTED_AS.into(), all.len() as u64);
    let ann: Vec<String> = all
        .iter()
        .map(|(name, split, it)| M::annotation(name, split, it))
        .collect();
    folder.write_lines("annotations.jsonl", &ann)?;
    Ok(all)
}

/// POPE's three splits over `part`, `per` present and absent objects per item.
fn write_pope_questions<M: Medium>(
    folder: &mut Folder,
    part: &Named<'_, M::Item>,
    per: usize,
    seed: u64,
) -> Result<()> {
    // POPE's item format names the media file `image`, whatever the medium.
    let items: Vec<AnnotatedItem> = part
        .iter()
        .map(|(file, _, it)| AnnotatedItem {
            media: file.clone(),
            objects: M::objects(it)
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
            template: M::POPE_TEMPLATE.to_string(),
            seed,
        },
    )?;
    for (split, qs) in &pope.splits {
        let lines: Vec<String> = qs.iter().map(M::pope_line).collect();
        let file = format!("questions/{}pope-{}.jsonl", M::PREFIX, split.name());
        folder.write_lines(&file, &lines)?;
    }
    Ok(())
}

/// Balanced counting questions over `part` (answers spread over `0..=kmax`).
fn write_count_questions<M: Medium>(
    folder: &mut Folder,
    part: &Named<'_, M::Item>,
    kmax: usize,
    seed: u64,
) -> Result<()> {
    let items: Vec<CountItem> = part
        .iter()
        .map(|(file, _, it)| CountItem {
            media: file.clone(),
            counts: M::counts(it)
                .into_iter()
                .map(|(c, n)| (c.name().to_string(), n))
                .collect(),
        })
        .collect();
    let plural = |o: &str| {
        M::Category::from_name(o)
            .map(|c| c.plural().to_string())
            .unwrap_or_else(|| format!("{o}s"))
    };
    let counts = build_count_questions(&items, kmax, seed, &plural, M::WORD);
    let lines: Vec<String> = counts.iter().map(M::count_line).collect();
    folder.write_lines(&format!("questions/{}count.jsonl", M::PREFIX), &lines)
}

/// `train.jsonl`: the training questions of every item of `part`.
fn write_training<M: Medium>(
    folder: &mut Folder,
    part: &Named<'_, M::Item>,
    seed: u64,
    mix: &QaMix,
) -> Result<()> {
    let train: Vec<String> = part
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (name, _, it))| {
            let mut rng = stream_rng(seed, i as u64, purpose::QUESTIONS);
            M::training(it, mix, &mut rng)
                .into_iter()
                .map(|qa| M::train_line(name, &qa))
                .collect::<Vec<_>>()
        })
        .collect();
    folder.write_lines("train.jsonl", &train)
}

// ---------------------------------------------------------------- shapes

/// The four splits of a shapes data set: POPE, counting, compositional and training scenes.
struct ShapeSplits {
    pope: Vec<Scene>,
    count: Vec<Scene>,
    compositional: Vec<Scene>,
    train: Vec<Scene>,
}

/// Generates the scenes of every split of a shapes data set.
fn shape_splits(cfg: &ShapesDatasetConfig) -> Result<ShapeSplits> {
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
    let pope_seed = split_seed(cfg.seed, "pope");
    let count_seed = split_seed(cfg.seed, "count");
    let comp_seed = split_seed(cfg.seed, "compositional");
    let train_seed = split_seed(cfg.seed, "train");
    let comp_n = if has_holdout {
        cfg.compositional_images
    } else {
        0
    };
    Ok(ShapeSplits {
        pope: generate_pope::<Shapes>(
            cfg.pope_images,
            cfg.pope_per_image,
            "shapes POPE split",
            &|i| generate_scene(&seen, pope_seed, i),
        )?,
        count: generate_balanced(cfg.count_images, seen.effective_max_count(), &|i, k| {
            generate_scene_with_count(&seen, count_seed, i, k)
        }),
        compositional: generate(comp_n, &|i| generate_scene(&unseen, comp_seed, i)),
        train: generate(cfg.train_images, &|i| generate_scene(&seen, train_seed, i)),
    })
}

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
    let mut folder = Folder::new(out)?;
    mkdir(&out.join("images"))?;
    mkdir(&out.join("questions"))?;
    let scenes = shape_splits(cfg)?;
    let all = write_items::<Shapes>(
        &mut folder,
        &[
            ("pope", &scenes.pope),
            ("count", &scenes.count),
            ("compositional", &scenes.compositional),
            ("train", &scenes.train),
        ],
        progress,
    )?;
    let (pope_part, rest) = all.split_at(scenes.pope.len());
    let (count_part, rest) = rest.split_at(scenes.count.len());
    let (comp_part, train_part) = rest.split_at(scenes.compositional.len());

    write_pope_questions::<Shapes>(
        &mut folder,
        pope_part,
        cfg.pope_per_image,
        split_seed(cfg.seed, "pope-questions"),
    )?;
    let qseed = split_seed(cfg.seed, "questions");
    write_chair_and_attribute(&mut folder, pope_part, qseed)?;
    let kmax = cfg.scene.effective_max_count();
    write_count_questions::<Shapes>(&mut folder, count_part, kmax, qseed)?;
    // Compositional (held-out colour–shape pairs).
    if !cfg.scene.held_out.is_empty() {
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
    write_training::<Shapes>(
        &mut folder,
        train_part,
        split_seed(cfg.seed, "train"),
        &cfg.mix,
    )?;
    folder.finish("shapes", cfg.seed, Some(cfg.scene.tier), config_value(cfg))
}

/// CHAIR prompts and the seen-attribute control on the POPE images.
fn write_chair_and_attribute(
    folder: &mut Folder,
    pope_part: &Named<'_, Scene>,
    qseed: u64,
) -> Result<()> {
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
    let attr = qa_lines(pope_part, &|i, s| {
        seen_attribute_questions(s, &mut stream_rng(qseed, i, purpose::QUESTIONS))
    });
    folder.write_lines("questions/attribute.jsonl", &attr)
}

fn qa_lines(
    part: &Named<'_, Scene>,
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
    let pope_clips = generate_pope::<Sounds>(cfg.pope_clips, per, "sounds POPE split", &|i| {
        generate_sound(&cfg.sound, pope_seed, i)
    })?;
    let count_seed = split_seed(cfg.seed, "audio-count");
    let kmax = cfg.sound.effective_max_count();
    let count_clips = generate_balanced(cfg.count_clips, kmax, &|i, k| {
        generate_sound_with_count(&cfg.sound, count_seed, i, k)
    });
    let train_seed = split_seed(cfg.seed, "audio-train");
    let train_clips = generate(cfg.train_clips, &|i| {
        generate_sound(&cfg.sound, train_seed, i)
    });
    let all = write_items::<Sounds>(
        &mut folder,
        &[
            ("pope", &pope_clips),
            ("count", &count_clips),
            ("train", &train_clips),
        ],
        progress,
    )?;
    let (pope_part, rest) = all.split_at(pope_clips.len());
    let (count_part, train_part) = rest.split_at(count_clips.len());
    write_pope_questions::<Sounds>(
        &mut folder,
        pope_part,
        per,
        split_seed(cfg.seed, "audio-pope-questions"),
    )?;
    let qseed = split_seed(cfg.seed, "audio-questions");
    write_count_questions::<Sounds>(&mut folder, count_part, kmax, qseed)?;
    write_training::<Sounds>(&mut folder, train_part, train_seed, &cfg.mix)?;
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
    let train_lines = mixed_training_lines(&train, eval.len(), train_seed, &cfg.mix);
    folder.write_lines("train.jsonl", &train_lines)?;
    folder.finish("mixed", cfg.seed, Some(cfg.scene.tier), config_value(cfg))
}

/// The training lines of the mixed pairs, numbered from `offset`: the mixed questions, then
/// the image's and the clip's own, each line naming the media it needs.
fn mixed_training_lines(
    train: &[(Scene, SoundScene)],
    offset: usize,
    seed: u64,
    mix: &QaMix,
) -> Vec<String> {
    train
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (scene, clip))| {
            let mut rng = stream_rng(seed, i as u64, purpose::QUESTIONS);
            let (img, aud) = (image_name(offset + i), audio_name(offset + i));
            let mut qs = mixed_questions(scene, clip, &mut rng);
            qs.extend(training_questions(scene, mix, &mut rng));
            qs.extend(audio_training_questions(clip, mix, &mut rng));
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
        .collect()
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
