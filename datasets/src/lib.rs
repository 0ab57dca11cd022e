//! Procedural scenes and sounds, question builders and loaders for real benchmark files.
//!
//! mmlab makes its own controllable, contamination-free data with exact ground truth:
//!
//! - **Scenes** ([`generate_scene`], [`render`]): coloured shapes from 14 categories and
//!   8 colours, two sizes, three layout tiers ([`Tier::Aligned`] grid cells, [`Tier::Free`],
//!   [`Tier::Occlusion`]), plain / gradient / noise backgrounds, anti-aliased with tiny-skia.
//!   Category frequencies are skewed and themed, so POPE's popular and adversarial splits
//!   mean something. [`SceneConfig::small`] (48×48, 12-px cells) is the default for small models.
//! - **Sounds** ([`generate_sound`], [`synthesise`], [`wav_bytes`]): 16 kHz mono clips with
//!   8 synthesised event classes placed in time over background noise.
//! - **Questions**: POPE exactly as its paper and reference code build it ([`build_pope`]),
//!   balanced counting ([`build_count_questions`]), and in-memory training questions
//!   ([`training_questions`], [`audio_training_questions`], [`mixed_questions`]).
//! - **Dataset folders** ([`write_shapes`], [`write_sounds`], [`write_mixed`],
//!   [`write_pope_from_coco`]): `images/`, `audio/`, `annotations.jsonl`,
//!   `questions/<task>.jsonl`, `train.jsonl`, `manifest.json`; same seed, same bytes.
//! - **Loaders** ([`load_pope`], [`load_coco`], [`load_count_qa`], …): real benchmark files,
//!   with errors that name the file and line.
//!
//! Every function is deterministic in its seed: `generate_scene(cfg, seed, i)` depends
//! only on its arguments, so samples can be made in parallel and on the fly.

#![warn(missing_docs)]

pub mod error;
pub mod loaders;
pub mod pope;
pub mod questions;
pub mod render;
pub mod rng;
mod sampling;
pub mod scene;
pub mod sound;
pub mod vocab;
pub mod writer;

pub use error::{DatasetError, Result};
pub use loaders::{
    load_coco, load_count_qa, load_jsonl, load_object_lists, load_pope, load_pope_with_images,
    load_train, CocoAnnotation, CocoCategory, CocoImage, CocoInstances, CountRecord, PopeFile,
    TrainRecord,
};
pub use pope::{
    build_count_questions, build_pope, pope_text, AnnotatedItem, CountItem, CountQuestion,
    PopeConfig, PopeQuestion, PopeSet, PopeSplit, PopeStats, YesNo, AUDIO_TEMPLATE, IMAGE_TEMPLATE,
};
pub use questions::{
    attribute_question, audio_caption, audio_count_question, audio_presence_question,
    audio_training_questions, caption, caption_question, colour_question, compositional_questions,
    count_question, mixed_questions, presence_question, seen_attribute_questions, spatial_question,
    training_questions, NegativeKind, QaKind, QaMix, QA,
};
pub use render::{render, render_pixmap};
pub use rng::{stream_rng, DataRng};
pub use scene::{
    default_held_out, generate_scene, generate_scene_with_count, split_seed, Background,
    BackgroundStyle, Composition, Scene, SceneConfig, SceneObject, Tier, GENERATOR_VERSION,
};
pub use sound::{
    generate_sound, generate_sound_with_count, synthesise, wav_bytes, NoiseKind, SoundConfig,
    SoundEvent, SoundScene, SAMPLE_RATE,
};
pub use vocab::{sound_class_synonyms, synonyms, Colour, Shape, Size, SoundClass};
pub use writer::{
    verify_dataset, write_atomic, write_mixed, write_pope_from_coco, write_pope_items,
    write_shapes, write_sounds, Manifest, MixedDatasetConfig, Progress, ShapesDatasetConfig,
    SoundsDatasetConfig,
};
