//! The text tokenizer a run uses: a BPE trained on the texts of its data, or the one of the
//! run it continues or starts from.

use std::path::Path;

use super::data::{corpus, SyntheticData};
use super::{TrainConfig, TrainError};
use crate::fusion::{ImageConfig, TextTokenizer};
use crate::model::presets::PRESET_VOCAB;

/// Scenes (and sound clips) whose questions and answers a synthetic-data tokenizer is trained on.
pub const CORPUS_SCENES: u64 = 2000;

/// A BPE of [`PRESET_VOCAB`] tokens trained on the questions and answers of the generator
/// `data` with seed `seed`.
pub fn synthetic_tokenizer(
    data: &SyntheticData,
    seed: u64,
    image: &ImageConfig,
) -> Result<TextTokenizer, TrainError> {
    let texts = corpus(data, seed, CORPUS_SCENES, image);
    Ok(TextTokenizer::train_bpe(&texts, PRESET_VOCAB)?)
}

/// A BPE of [`PRESET_VOCAB`] tokens trained on the questions and answers of the dataset
/// folder `dir` (its `train.jsonl`) and the built-in corpus.
pub fn folder_tokenizer(dir: &Path) -> Result<TextTokenizer, TrainError> {
    let p = dir.join("train.jsonl");
    let mut texts = crate::fusion::text::builtin_corpus();
    for r in mmlab_datasets::load_train(&p)? {
        texts.push(r.question);
        texts.push(r.answer);
    }
    Ok(TextTokenizer::train_bpe(&texts, PRESET_VOCAB)?)
}

/// The tokenizer for the run `cfg` into `out`: the warm start's (`cfg.init_from`), else the
/// one saved in `out` when `resume`, else one trained on the run's data.
pub fn run_tokenizer(
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
) -> Result<TextTokenizer, TrainError> {
    let saved = out.join("tokenizer.json");
    let from = match &cfg.init_from {
        Some(dir) => Some(dir.join("tokenizer.json")),
        None => (resume && saved.is_file()).then_some(saved),
    };
    if let Some(p) = from {
        return TextTokenizer::from_file(&p)
            .map_err(|source| TrainError::Tokenizer { path: p, source });
    }
    data_tokenizer(cfg)
}

/// A tokenizer trained on the data of the run `cfg` (generated or a dataset folder).
pub fn data_tokenizer(cfg: &TrainConfig) -> Result<TextTokenizer, TrainError> {
    match (&cfg.data, &cfg.data_dir) {
        (Some(d), _) => synthetic_tokenizer(d, cfg.seed, &cfg.model.image),
        (None, Some(dir)) => folder_tokenizer(dir),
        (None, None) => Err(TrainError::NoData),
    }
}
