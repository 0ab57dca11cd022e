//! `mmlab eval`: run a task on a model (preset, directory, or predictions file) and print its table.

use std::path::{Path, PathBuf};

use anyhow::bail;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmlab_eval::{
    compare_as, compare_results, format_table, merge, parse_shard, task, tasks, AnswerMode,
    CompareFormat, PredictionsFile, Responder, RunOptions, TaskResult,
};

use crate::eval_data::DefaultDataEvent;
use crate::model::resolve::{load_model_as, parse_dtype};
use crate::model::responder::ModelResponder;
use crate::openai::{ClientOptions, OpenAiResponder};

/// What `mmlab eval --help` says after the options: the three readings of a POPE answer.
const READINGS_HELP: &str = "\
Every POPE run reads each raw answer three ways, side by side in the table and the result file:
  POPE authors (headline)     the POPE authors' evaluate.py: first sentence, commas removed,
                              any word No/not/no => no, else yes (\"I cannot tell\" is a yes)
  lmms-eval exact match       lmms-eval's lmms_eval/tasks/pope/utils.py: answer.lower().strip()
                              must be exactly yes or no (\"Yes.\" is neither, counted wrong);
                              its yes-ratio is of the ground truth (always ~0.5 on POPE)
  VLMEvalKit words, no judge  VLMEvalKit's YOrN_Extraction (vlmeval/dataset/utils/yorn.py)
                              without its LLM judge: yes xor no among the words, else Unknown
                              (counted wrong); its yes-ratio is ours, of the predictions
A POPE run also writes <result>.lmms-eval.json beside its result: lmms-eval's results.json
layout with lmms-eval's reading.

Several tasks and models in one call run the grid, one result per pair, and print one table:
  mmlab eval pope,count,chair --model fuyu-small,llava-small";

/// Arguments of `mmlab eval`.
#[derive(Clone, Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, after_long_help = READINGS_HELP)]
pub struct EvalArgs {
    /// `tasks`, `compare` or `merge` instead of a task.
    #[command(subcommand)]
    pub action: Option<EvalAction>,
    /// Task to run: pope, pope-random, pope-popular, pope-adversarial, count, chair,
    /// compositional (seen vs held-out colour-shape pairs, and the gap), compositional-held-out,
    /// attribute, audio-pope, audio-count; several joined by commas run each.
    pub task: Option<String>,
    /// Preset name, model directory, a served model (`openai:URL`, e.g.
    /// `openai:http://127.0.0.1:8000/v1`, any OpenAI-compatible chat completions server), or a
    /// predictions file (needs --data): JSON lines keyed by question_id, lmms-eval's
    /// samples_<task>.jsonl, or a VLMEvalKit sheet (.xlsx, .tsv; its `index` must be the
    /// question id). Several predictions files joined by commas are one per split, each named
    /// after its split; several models joined by commas run each.
    #[arg(long)]
    pub model: Option<String>,
    /// Dataset folder or question file (default: the synthetic test set, generated once from a fixed seed).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image folder, when the question files name images elsewhere (e.g. COCO val2014).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Only the first N questions of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run shard i of n (0-based), e.g. `--shard 0/4`; combine with `mmlab eval merge`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Score the task's fixed candidates (yes/no, 0-20) instead of generating.
    #[arg(long)]
    pub score: bool,
    /// Run the full prompt for every question (no shared image prefix).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Weights and compute dtype: f32, or bf16 / f16 for HF Fuyu directories.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
    /// Ignore and do not write the response cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Where result files go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// With `--model openai:URL`: the served model's name (default: the only one the server
    /// lists at /models).
    #[arg(long)]
    pub api_model: Option<String>,
    /// With `--model openai:URL`: environment variable holding the API key (sent as a bearer
    /// token).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// With `--model openai:URL`: requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// With `--model openai:URL`: seconds allowed per request.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// With `--model openai:URL`: retries of a request after a 429, 5xx, timeout, dropped
    /// connection or unreadable answer (exponential backoff from --backoff).
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// With `--model openai:URL`: seconds before the first retry (doubling each time, at most 30).
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,
    /// With `--model openai:URL`: max_tokens of each request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
}

/// Helper actions of `mmlab eval`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum EvalAction {
    /// List the tasks.
    Tasks,
    /// A table across models and tasks from result files or folders.
    Compare {
        /// Result files or folders (default: results/).
        paths: Vec<PathBuf>,
        /// text (aligned columns), md (Markdown tables), csv (one block per section) or json
        /// (one object per result with its full metrics).
        #[arg(long, default_value = "text")]
        format: CompareFormat,
    },
    /// Combine shard result files into one result.
    Merge {
        /// The shards' result files.
        paths: Vec<PathBuf>,
    },
}

/// The default test set for a task's modality ([`crate::eval_data::default_data`]), with what
/// it does shown on stderr.
pub fn default_data(audio: bool) -> anyhow::Result<PathBuf> {
    let bar = ProgressBar::hidden();
    let on = |e: DefaultDataEvent| {
        if let Some(line) = e.message() {
            eprintln!("{line}");
        }
        match e {
            DefaultDataEvent::Writing { items, .. } => {
                bar.set_length(items);
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            DefaultDataEvent::Wrote(n) => bar.inc(n),
            DefaultDataEvent::Written => bar.finish_and_clear(),
            DefaultDataEvent::Waiting { .. } => {}
        }
    };
    Ok(crate::eval_data::default_data(audio, &on)?)
}

/// The predictions files a `--model` names: one file, or several joined by commas (one per
/// split); `None` when it names no file.
fn predictions_files(model: &str) -> Option<Vec<PathBuf>> {
    if Path::new(model).is_file() {
        return Some(vec![PathBuf::from(model)]);
    }
    let parts: Vec<PathBuf> = model.split(',').map(PathBuf::from).collect();
    (parts.len() > 1 && parts.iter().all(|p| p.is_file())).then_some(parts)
}

/// The client for `--model openai:URL`.
fn served(url: &str, args: &EvalArgs) -> anyhow::Result<OpenAiResponder> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let mut o = ClientOptions::new(url);
    o.api_model = args.api_model.clone();
    o.api_key = args
        .api_key_env
        .as_deref()
        .map(super::serve::key_from_env)
        .transpose()?;
    o.concurrency = args.concurrency.max(1);
    o.timeout = std::time::Duration::from_secs_f64(args.timeout);
    o.retries = args.retries;
    if !(args.backoff.is_finite() && args.backoff >= 0.0) {
        bail!("--backoff must be a non-negative number of seconds");
    }
    o.backoff = std::time::Duration::from_secs_f64(args.backoff);
    o.max_tokens = args.max_tokens.max(1);
    OpenAiResponder::new(o)
}

fn responder(model: &str, args: &EvalArgs) -> anyhow::Result<Box<dyn Responder>> {
    let (no_prefix_cache, dtype) = (args.no_prefix_cache, args.dtype);
    if let Some(url) = model.strip_prefix("openai:") {
        return Ok(Box::new(served(url, args)?));
    }
    if let Some(files) = predictions_files(model) {
        if args.data.is_none() {
            bail!(
                "{model} is a predictions file: give the questions it answers with --data (a \
                 question file or data set folder); without it they would be scored against the \
                 default synthetic test set"
            );
        }
        return Ok(Box::new(PredictionsFile::open_many(&files)?));
    }
    let p = Path::new(model);
    let loaded = load_model_as(model, dtype)?;
    let name = if Path::new(model).is_dir() {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    };
    let mut r = ModelResponder::new(loaded, name);
    r.prefix_cache = !no_prefix_cache;
    Ok(Box::new(r))
}

/// Runs `mmlab eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    match &args.action {
        Some(EvalAction::Tasks) => {
            for t in tasks() {
                println!("{:<24} {}", t.name, t.description);
            }
            return Ok(());
        }
        Some(EvalAction::Compare { paths, format }) => {
            let paths = if paths.is_empty() {
                vec![args.results.clone()]
            } else {
                paths.clone()
            };
            print!("{}", compare_as(&paths, *format)?);
            return Ok(());
        }
        Some(EvalAction::Merge { paths }) => {
            let r = merge(paths)?;
            print!("{}", format_table(&r));
            return Ok(());
        }
        None => {}
    }
    let Some(task_arg) = &args.task else {
        bail!("name a task (`mmlab eval tasks` lists them), e.g. `mmlab eval pope --model fuyu-small`");
    };
    let Some(model_arg) = &args.model else {
        bail!("--model is required: a preset name, a model directory or a predictions file");
    };
    let task_names: Vec<&str> = task_arg.split(',').map(str::trim).collect();
    if task_names.iter().any(|t| t.is_empty()) {
        bail!("task list `{task_arg}` has an empty name; join task names with commas, e.g. pope,count");
    }
    for t in &task_names {
        task(t)?;
    }
    // Several predictions files joined by commas are one responder (one file per split);
    // otherwise commas join models.
    let models: Vec<String> = if predictions_files(model_arg).is_some() {
        vec![model_arg.clone()]
    } else {
        model_arg.split(',').map(|m| m.trim().to_string()).collect()
    };
    if models.iter().any(String::is_empty) {
        bail!("model list `{model_arg}` has an empty name");
    }
    if task_names.len() == 1 && models.len() == 1 {
        let result = run_one(args, task_names[0], &models[0])?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        } else {
            print!("{}", format_table(&result));
            println!("data: {}", result.config.data);
        }
        return Ok(());
    }
    // The grid: each model loaded once, each task run on it, one result per pair.
    let mut results: Vec<TaskResult> = Vec::new();
    for model in &models {
        let mut resp = responder(model, args).with_context(|| format!("loading model {model}"))?;
        for t in &task_names {
            eprintln!("{t} · {model}");
            let r = run_with(args, t, resp.as_mut())
                .with_context(|| format!("task {t} with model {model}"))?;
            if let Some(f) = &r.result_file {
                eprintln!("  wrote {f}");
            }
            results.push(r);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", compare_results(&results));
    }
    Ok(())
}

/// Run one task on one model and return its result (written as usual).
fn run_one(args: &EvalArgs, task_name: &str, model: &str) -> anyhow::Result<TaskResult> {
    let mut resp = responder(model, args)?;
    run_with(args, task_name, resp.as_mut())
}

/// Run one task on a responder with the command's settings; warnings go to stderr.
fn run_with(
    args: &EvalArgs,
    task_name: &str,
    resp: &mut dyn Responder,
) -> anyhow::Result<TaskResult> {
    let spec = task(task_name)?;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => default_data(spec.media == mmlab_eval::tasks::MediaKind::Audio)?,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} answers  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b2 = bar.clone();
    let opts = RunOptions {
        limit: args.limit,
        shard: args.shard.as_deref().map(parse_shard).transpose()?,
        results_dir: args.results.clone(),
        cache_dir: args.results.join(".cache"),
        progress: Some(Box::new(move |done, total| {
            b2.set_length(total as u64);
            b2.set_position(done as u64);
        })),
        mode: if args.score {
            AnswerMode::Score
        } else {
            AnswerMode::Generate
        },
        images: args.images.clone(),
        synonyms: Some(mmlab_eval::default_synonyms()),
        use_cache: !args.no_cache,
        ..RunOptions::default()
    };
    let result = mmlab_eval::run_task(task_name, &data, resp, &opts)?;
    bar.finish_and_clear();
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    Ok(result)
}
