//! Evaluation harness for multimodal models: tasks, answer parsing, metrics, caching and result files.
//!
//! The harness knows models only through the [`Responder`] trait: a model, a file of answers
//! produced elsewhere ([`PredictionsFile`]), or the test responders ([`Oracle`], [`Constant`],
//! [`RandomResponder`]). [`run_task`] asks it every question of a task through an on-disk cache,
//! parses the answers as the original papers do, computes the metrics with seeded bootstrap
//! intervals, and writes `results/<model>/<task>-<timestamp>.json` plus a samples file.

mod atomic;
pub mod cache;
pub mod chair;
pub mod compositional;
pub mod error;
mod fxhash;
pub mod harness;
pub mod identity;
pub mod interop;
pub mod metrics;
pub mod parse;
pub mod readings;
pub mod report;
pub mod responder;
pub mod tasks;

pub use chair::{default_synonyms, ObjectMatcher, SynonymTable};
pub use compositional::CompositionalReport;
pub use error::{EvalError, Result};
pub use harness::{
    load_result, merge, merge_into, parse_shard, read_samples, run_task, AnswerMode, Counts,
    Metrics, Progress, RunConfig, RunOptions, Sample, SplitInfo, TaskResult, Timing, Versions,
};
pub use metrics::{Bootstrap, ChairReport, Confusion, CountReport, Estimate, PopeReport};
pub use parse::{parse_count, parse_yes_no, read_lmms_eval, read_vlmevalkit, Reading, YesNo};
pub use readings::{Harness, HarnessReading, HarnessReadings, ReadingCounts};
pub use report::{
    compare, compare_as, compare_results, compare_results_as, format_table, CompareFormat,
};
pub use responder::{
    Constant, MissingPolicy, Oracle, PredictionsFile, RandomResponder, Request, Responder, Response,
};
pub use tasks::{
    load_task, load_task_with, task, tasks, DataOptions, Label, LoadedSplit, MediaKind, MetricKind,
    ParserKind, Question, SplitSpec, TaskSpec,
};
