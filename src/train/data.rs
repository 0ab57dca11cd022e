//! Training samples made on the fly from the procedural generators, or read from a dataset folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmlab_datasets::{
    audio_caption, audio_training_questions, caption, generate_scene, generate_sound, render,
    stream_rng, synthesise, training_questions, QaKind, QaMix, SceneConfig, SoundConfig,
    TrainRecord,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fusion::{
    patchify, AudioInput, FusionError, ImageConfig, ImageInput, MultimodalSequence, Segment,
    SequenceBuilder, TextTokenizer,
};

/// Stream ids for [`stream_rng`], so question and scene randomness never collide.
const PURPOSE_QA: u64 = 0x51A;
const PURPOSE_AUDIO_QA: u64 = 0x51B;

/// What the on-the-fly generator makes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyntheticData {
    /// Scene generator settings (the difficulty tier is part of them).
    pub scene: SceneConfig,
    /// Sound generator settings.
    pub sound: SoundConfig,
    /// Questions per scene.
    pub mix: QaMix,
    /// Questions per sound clip.
    pub audio_mix: QaMix,
    /// Every `audio_every`-th batch is an audio batch (0: no audio).
    pub audio_every: u64,
    /// Text-only samples for decoder pre-training: the image or sound is replaced by its
    /// caption in words ("Scene: a red circle and two blue rings. How many rings?" → "2").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_only: bool,
}

impl SyntheticData {
    /// Presence + counting on aligned 48x48 scenes, with an audio batch every fifth step.
    pub fn small() -> Self {
        Self {
            scene: SceneConfig::small(),
            sound: SoundConfig::short(),
            mix: QaMix::presence_and_count(),
            audio_mix: QaMix::presence_and_count(),
            audio_every: 5,
            text_only: false,
        }
    }

    /// [`SyntheticData::small`] with scenes drawn at the model's largest image size.
    pub fn sized_for(image: &ImageConfig) -> Self {
        let mut d = Self::small();
        d.scene.width = image.max_width as u32;
        d.scene.height = image.max_height as u32;
        d
    }
}

/// One training example before tokenisation.
#[derive(Clone, Debug)]
pub struct Example {
    /// Question kind (for per-kind eval).
    pub kind: QaKind,
    /// Sequence with the answer as targets.
    pub seq: MultimodalSequence,
}

/// Where training samples come from.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// The procedural generators, seeded; sample `i` depends only on `(seed, i)`.
    Synthetic(SyntheticData),
    /// A dataset folder's `train.jsonl` with its images and audio.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Its records.
        records: Vec<TrainRecord>,
    },
}

/// Makes batches of examples deterministically from a step number.
pub struct Factory {
    /// Sample source.
    pub source: Source,
    /// Seed of the data stream.
    pub seed: u64,
    /// Sequences per batch.
    pub batch_size: usize,
    builder: SequenceBuilder,
}

impl Factory {
    /// A factory building sequences with `tokenizer` and the model's image/audio settings.
    pub fn new(source: Source, seed: u64, batch_size: usize, builder: SequenceBuilder) -> Self {
        Self {
            source,
            seed,
            batch_size,
            builder,
        }
    }

    /// The builder in use.
    pub fn builder(&self) -> &SequenceBuilder {
        &self.builder
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.builder.tokenizer
    }

    fn encode(&self, s: &str) -> Result<Vec<u32>, FusionError> {
        self.builder.tokenizer.encode(s)
    }

    /// Examples made from scene `index` of stream `seed`.
    pub fn scene_examples(
        &self,
        d: &SyntheticData,
        seed: u64,
        index: u64,
    ) -> Result<Vec<Example>, FusionError> {
        let scene = generate_scene(&d.scene, seed, index);
        if d.text_only {
            let mut rng = stream_rng(seed, index, PURPOSE_QA);
            return self.described(
                &format!("Scene: {}. ", caption(&scene)),
                training_questions(&scene, &d.mix, &mut rng),
            );
        }
        let img = render(&scene);
        let grid = patchify(&img, &self.builder.image);
        let mut rng = stream_rng(seed, index, PURPOSE_QA);
        training_questions(&scene, &d.mix, &mut rng)
            .into_iter()
            .map(|qa| {
                let q = self.encode(&qa.question)?;
                let a = self.encode(&qa.answer)?;
                Ok(Example {
                    kind: qa.kind,
                    seq: self.builder.build_with_patches(&grid, &q, Some(&a)),
                })
            })
            .collect()
    }

    /// Text-only examples: `description` (the scene or sound in words), then each question.
    fn described(
        &self,
        description: &str,
        qas: Vec<mmlab_datasets::QA>,
    ) -> Result<Vec<Example>, FusionError> {
        qas.into_iter()
            .map(|qa| {
                Ok(Example {
                    kind: qa.kind,
                    seq: self.builder.build(&[
                        Segment::Text(description.to_string()),
                        Segment::Text(qa.question),
                        Segment::Answer(qa.answer),
                    ])?,
                })
            })
            .collect()
    }

    /// Examples made from sound clip `index` of stream `seed`.
    pub fn sound_examples(
        &self,
        d: &SyntheticData,
        seed: u64,
        index: u64,
    ) -> Result<Vec<Example>, FusionError> {
        let clip = generate_sound(&d.sound, seed, index);
        if d.text_only {
            let mut rng = stream_rng(seed, index, PURPOSE_AUDIO_QA);
            return self.described(
                &format!("Sounds: {}. ", audio_caption(&clip)),
                audio_training_questions(&clip, &d.audio_mix, &mut rng),
            );
        }
        let samples = synthesise(&clip);
        let mut rng = stream_rng(seed, index, PURPOSE_AUDIO_QA);
        audio_training_questions(&clip, &d.audio_mix, &mut rng)
            .into_iter()
            .map(|qa| {
                let seq = self.builder.build(&[
                    Segment::Audio(AudioInput::Samples(samples.clone())),
                    Segment::Text(qa.question.clone()),
                    Segment::Answer(qa.answer.clone()),
                ])?;
                Ok(Example { kind: qa.kind, seq })
            })
            .collect()
    }

    /// True when `step`'s batch is an audio batch (batches never mix modalities, which keeps padding low).
    pub fn is_audio_step(&self, step: u64) -> bool {
        matches!(&self.source, Source::Synthetic(d) if d.audio_every > 0 && step % d.audio_every == d.audio_every - 1)
    }

    /// The batch for `step` (deterministic in `(seed, step)`), made in parallel.
    pub fn batch(&self, step: u64) -> Result<Vec<Example>, FusionError> {
        self.batch_from(self.seed, step)
    }

    /// The batch for `step` of stream `seed`.
    pub fn batch_from(&self, seed: u64, step: u64) -> Result<Vec<Example>, FusionError> {
        let bs = self.batch_size as u64;
        match &self.source {
            Source::Synthetic(d) => {
                let audio = self.is_audio_step(step);
                let per = if audio {
                    d.audio_mix.presence + d.audio_mix.count
                } else {
                    d.mix.presence
                        + d.mix.count
                        + d.mix.colour
                        + d.mix.attribute
                        + d.mix.spatial
                        + d.mix.caption
                };
                let items = bs.div_ceil(per.max(1) as u64);
                let base = step * items;
                let groups: Vec<Vec<Example>> = (0..items)
                    .into_par_iter()
                    .map(|j| {
                        if audio {
                            self.sound_examples(d, seed, base + j)
                        } else {
                            self.scene_examples(d, seed, base + j)
                        }
                    })
                    .collect::<Result<_, _>>()?;
                let mut out: Vec<Example> = groups.into_iter().flatten().collect();
                out.truncate(self.batch_size);
                Ok(out)
            }
            Source::Folder { dir, records } => {
                if records.is_empty() {
                    return Ok(Vec::new());
                }
                let n = records.len() as u64;
                // A seeded permutation per epoch keeps the order reproducible and resumable.
                (0..bs)
                    .into_par_iter()
                    .map(|j| {
                        let k = step * bs + j;
                        let epoch = k / n;
                        let perm = epoch_permutation(
                            records.len(),
                            seed ^ epoch.wrapping_mul(0x9E37_79B9),
                        );
                        let r = &records[perm[(k % n) as usize]];
                        self.folder_example(dir, r)
                    })
                    .collect()
            }
        }
    }

    fn folder_example(&self, dir: &Path, r: &TrainRecord) -> Result<Example, FusionError> {
        let mut segs = Vec::new();
        if let Some(img) = &r.image {
            segs.push(Segment::Image(ImageInput::Path(
                dir.join("images").join(img),
            )));
        }
        if let Some(a) = &r.audio {
            segs.push(Segment::Audio(AudioInput::Path(dir.join("audio").join(a))));
        }
        segs.push(Segment::Text(r.question.clone()));
        segs.push(Segment::Answer(r.answer.clone()));
        Ok(Example {
            kind: r.kind,
            seq: self.builder.build(&segs)?,
        })
    }
}

/// A Fisher-Yates permutation of `0..n` from `seed`.
fn epoch_permutation(n: usize, seed: u64) -> Vec<usize> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// The texts a tokenizer for synthetic data must cover: questions and answers from many samples.
pub fn corpus(d: &SyntheticData, seed: u64, scenes: u64, image: &ImageConfig) -> Vec<String> {
    let _ = image;
    let mut out = crate::fusion::text::builtin_corpus();
    let rich = QaMix::default();
    for i in 0..scenes {
        let scene = generate_scene(&d.scene, seed, i);
        let mut rng = stream_rng(seed, i, PURPOSE_QA);
        for qa in training_questions(&scene, &rich, &mut rng) {
            out.push(qa.question);
            out.push(qa.answer);
        }
        let clip = generate_sound(&d.sound, seed, i);
        let mut rng = stream_rng(seed, i, PURPOSE_AUDIO_QA);
        for qa in audio_training_questions(&clip, &rich, &mut rng) {
            out.push(qa.question);
            out.push(qa.answer);
        }
    }
    for n in 0..=20 {
        out.push(n.to_string());
    }
    out
}
