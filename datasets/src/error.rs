//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while generating, writing or loading data.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read, written or renamed (the cause is the error's source).
    #[error("{path}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A line or record of an input file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file being read.
        path: PathBuf,
        /// 1-based line number of the offending record.
        line: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A record is well-formed JSON but its content is wrong (unknown id, bad value).
    #[error("{path}: {location}: {message}")]
    Invalid {
        /// The file being read.
        path: PathBuf,
        /// Where in the file ("annotations[17]", "line 4").
        location: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A configuration field has an impossible value.
    #[error("invalid configuration field `{field}`: {message}")]
    Config {
        /// The field name, as spelled in the serialised config.
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The input does not hold enough material for what was asked.
    #[error("{what}: {message}")]
    Insufficient {
        /// The builder or file that ran short.
        what: String,
        /// How much was needed and how much was found.
        message: String,
    },
    /// An image or audio file could not be encoded.
    #[error("encoding {path}: {message}")]
    Encode {
        /// The file being produced.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
}

impl DatasetError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }

    /// A parse error on `path` at 1-based `line`.
    pub fn parse(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        DatasetError::Parse {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    /// A configuration error on `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        DatasetError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
