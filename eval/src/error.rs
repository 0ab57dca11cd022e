//! The error type of the evaluation harness.

use std::path::PathBuf;

/// Everything that can go wrong while loading tasks, asking a model, or writing results.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or folder could not be read or written (the cause is the error's source).
    #[error("{path}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a JSON-lines file is not valid JSON.
    #[error("{path}:{line}: invalid JSON")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A whole-file JSON document (a result file) is not what was expected.
    #[error("{path}: invalid result file")]
    JsonDocument {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A field of a record is missing or has the wrong type or value.
    #[error("{path}:{line}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field name.
        field: String,
        /// What was expected.
        message: String,
    },
    /// Two records of one file share a question id.
    #[error(
        "{path}:{line}: duplicate question id {question_id} (first seen on line {first_line})"
    )]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The line of the second occurrence.
        line: usize,
        /// The line of the first occurrence.
        first_line: usize,
        /// The repeated id.
        question_id: String,
    },
    /// No task of that name is registered.
    #[error("unknown task `{name}`; known tasks: {known}")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// The data path does not hold what the task needs.
    #[error("{path}: {message}")]
    Data {
        /// The data path.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// A predictions file has no answer for a question the task asks.
    #[error("{path}: no prediction for question id {question_id} of task {task}")]
    MissingPrediction {
        /// The predictions file.
        path: PathBuf,
        /// The task (split) being scored.
        task: String,
        /// The unanswered question id.
        question_id: String,
    },
    /// A predictions file holds several answers that could each serve one question.
    #[error("{path}: question id {question_id} of task {task} is ambiguous: lines {lines:?} all match; add a `task` or `split` key")]
    AmbiguousPrediction {
        /// The predictions file.
        path: PathBuf,
        /// The task (split) being scored.
        task: String,
        /// The question id.
        question_id: String,
        /// The lines that match.
        lines: Vec<usize>,
    },
    /// A responder (model) failed.
    #[error("model `{identity}` failed: {message}")]
    Responder {
        /// The responder's identity.
        identity: String,
        /// What went wrong.
        message: String,
    },
    /// A responder returned the wrong number of responses or scores.
    #[error("model `{identity}` returned {got} {what} for {expected} requests")]
    ResponseShape {
        /// The responder's identity.
        identity: String,
        /// What was miscounted (responses, scores).
        what: String,
        /// How many were expected.
        expected: usize,
        /// How many came back.
        got: usize,
    },
    /// A run option is invalid (shard, limit, mode).
    #[error("invalid option: {0}")]
    Option(String),
    /// A complete line of a response cache file cannot be read.
    #[error(
        "{path}:{line}: corrupt cache entry ({message}); the cache only saves time: delete that \
         line or the whole file (answers are asked again), or run with --no-cache"
    )]
    CacheCorrupt {
        /// The cache file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// Shard results cannot be merged.
    /// Some requests of a batch were answered before another failed for good: the harness
    /// keeps (caches) the answered ones, so a rerun does not ask them again, then reports `error`.
    #[error("{error}")]
    PartlyAnswered {
        /// One entry per request of the batch, in order; `None` where no answer came.
        answered: Vec<Option<crate::Response>>,
        /// Why the rest got no answer.
        error: Box<EvalError>,
    },
    #[error("cannot merge: {0}")]
    Merge(String),
}

impl EvalError {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wrap any model-side error so a `Responder` implementation can return it.
    pub fn responder(identity: impl Into<String>, message: impl std::fmt::Display) -> Self {
        EvalError::Responder {
            identity: identity.into(),
            message: message.to_string(),
        }
    }
}

/// An error and its causes on one line, `error: cause: cause`, as anyhow's `{:#}` prints them.
///
/// Errors here keep their cause as [`std::error::Error::source`] instead of repeating it in
/// their message; use this wherever an error becomes a string.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Result with [`EvalError`] as the default error.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
