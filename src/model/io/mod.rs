//! Model directories on disk: ours (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `train.jsonl`) and HuggingFace Fuyu's, and checked safetensors reading and writing. Files
//! are written with the crate's one atomic write ([`crate::io::atomic_write`]).

mod dir;
pub mod hf_fuyu;
mod safetensors;

use std::path::{Path, PathBuf};

pub use dir::{
    load_dir, load_files, parse_config, read_config, save_dir, LoadedModel, ModelDirConfig,
};
pub use safetensors::{
    check_safetensors, parse_weight_index, parse_weights, read_weights, safetensors_bytes,
    tensors_to_bytes, CheckedHeader, TensorInfo,
};

/// Errors reading or writing a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written (the cause is the error's source).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("{path}: invalid config: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// The weights file is missing tensors, has wrong shapes or is not valid safetensors.
    #[error("{path}: invalid weights: {msg}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// The tokenizer could not be loaded or saved.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
}

/// The error for a failed read or write of `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A weights error naming `path`.
pub(crate) fn weights_err(path: &Path, msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl From<crate::io::FileError> for CheckpointError {
    fn from(e: crate::io::FileError) -> Self {
        CheckpointError::Io {
            path: e.path,
            source: e.source,
        }
    }
}
