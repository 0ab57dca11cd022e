//! The `mmlab` command line (clap): one module per subcommand.

pub mod ablate;
pub mod ask;
pub mod bench;
pub mod data;
pub mod eval;
pub mod models;
pub mod pretrain;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod tui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// How `--model` is resolved, shown under `mmlab --help`.
const MODELS_HELP: &str = "\
Models: --model takes a preset name, a model directory (any path), or a name NAME looked up
as ROOT/models/NAME. The shipped fuyu-small, llava-small, qformer-small and flamingo-small are
compiled into the binary, so `--model fuyu-small` works from any directory; a directory of
the same name is used only when given as a path (`--model ./models/fuyu-small`).
ROOT is --root, else $MMLAB_HOME, else the working directory.";

/// mmlab: a workbench for native (early-fusion) multimodal models.
#[derive(Debug, Parser)]
#[command(name = "mmlab", version, about, after_help = MODELS_HELP)]
pub struct Cli {
    /// Threads for tensor math and data generation (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Compute device for train / eval / ask: cpu, cuda or cuda:N (cuda needs a `--features
    /// cuda` build).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// Workspace folder: `--model NAME` looks in ROOT/models/NAME, and `mmlab tui` reads its
    /// models/, runs/, results/ and ablations/ (default: $MMLAB_HOME, else the working directory).
    #[arg(long, global = true, value_name = "ROOT")]
    pub root: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show how text, images, audio and video fuse into one token sequence.
    Tokenize(tokenize::TokenizeArgs),
    /// List model presets and model directories.
    Models(models::ModelsArgs),
    /// Write procedural datasets, or rebuild POPE from COCO annotations.
    Data(data::DataArgs),
    /// Evaluate a model on a task (POPE, counting, CHAIR, audio), or list / compare / merge results.
    Eval(eval::EvalArgs),
    /// Train a model.
    Train(train::TrainArgs),
    /// Serve a model behind an OpenAI-compatible `/v1/chat/completions` (for lmms-eval,
    /// VLMEvalKit or any OpenAI client).
    Serve(serve::ServeArgs),
    /// Ask a model a question about an image and/or audio clip.
    Ask(ask::AskArgs),
    /// Contrastive (CLIP / SigLIP) pre-training of a bolted-on preset's vision encoder.
    PretrainEncoder(pretrain::PretrainArgs),
    /// Train and evaluate native and bolted-on designs under a matched budget, or run a scaling
    /// study (budgets x sizes x designs x tiers, with fits); write a report.
    Ablate(ablate::AblateArgs),
    /// Time training steps on fixed batches (and write them for the PyTorch side-by-side).
    Bench(bench::BenchArgs),
    /// The terminal dashboard comparing models, and the model inspector (`--inspect`).
    Tui(tui::TuiArgs),
    /// Write a model's attention over an image's patches as a PNG (the inspector's overlay).
    Inspect(tui::InspectArgs),
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    // candle hands elementwise ops on large tensors to a pool of CANDLE_NUM_THREADS - 1
    // workers that spin while they wait. mmlab splits work its own way (one shard of the batch
    // per thread, `train::step`, and its ops' rayon splits), and the spinning workers only take
    // cores from it: `fuyu-small` training on 2 threads ran at 40k tokens/s with them and 52k
    // without. So candle gets no pool of its own unless CANDLE_NUM_THREADS says otherwise.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MMLAB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    crate::device::select(&cli.device)?;
    let root = crate::model::resolve::choose_root(cli.root.clone(), std::env::var_os("MMLAB_HOME"));
    crate::model::resolve::set_root(root.clone());
    match &cli.command {
        Command::Tokenize(a) => tokenize::run(a),
        Command::Ablate(a) => ablate::run_cli(a),
        Command::PretrainEncoder(a) => pretrain::run(a),
        Command::Models(a) => models::run(a),
        Command::Data(a) => data::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Ask(a) => ask::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tui(a) => crate::tui::run(&crate::tui::TuiOptions { root, ..a.into() }),
        Command::Inspect(a) => crate::tui::run_inspect(&a.into()),
    }
}
