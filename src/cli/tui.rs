//! `mmlab tui` and `mmlab inspect`: the dashboard and inspector's arguments.

use std::path::PathBuf;

use crate::tui::{InspectOptions, TuiOptions};

/// Arguments of `mmlab tui`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TuiArgs {
    /// Workspace folder holding `models/`, `runs/`, `results/` and `ablations/` (the global
    /// `--root`, else `$MMLAB_HOME`, else the working directory).
    #[arg(skip)]
    pub root: PathBuf,
    /// Open the inspector instead of the dashboard.
    #[arg(long)]
    pub inspect: bool,
    /// Model to inspect (preset name or model directory).
    #[arg(long)]
    pub model: Option<String>,
    /// Image to inspect.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Audio clip to inspect.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Prompt.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// A result file (or its `.samples.jsonl`) whose wrong answers to browse (default: the
    /// model's latest results under `results/`).
    #[arg(long)]
    pub samples: Option<PathBuf>,
}

/// Arguments of `mmlab inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Preset name or model directory.
    #[arg(long)]
    pub model: String,
    /// The image.
    #[arg(long)]
    pub image: PathBuf,
    /// Audio clip played after the image, if any.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Layer (1-based; default: mean over layers).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Head (1-based; default: mean over heads).
    #[arg(long)]
    pub head: Option<usize>,
    /// Sequence position of the query token (default: the last prompt token, which predicts
    /// the answer).
    #[arg(long)]
    pub token: Option<usize>,
    /// Q-Former / Flamingo: draw this query's or latent's own attention over the patches
    /// (1-based; default: the token's attention carried through all of them).
    #[arg(long)]
    pub slot: Option<usize>,
    /// Where to write the PNG (the overlay, a colour bar with its scale, and a caption).
    #[arg(long)]
    pub out: PathBuf,
    /// Longer side of the PNG in pixels (at least).
    #[arg(long, default_value_t = 480)]
    pub size: u32,
}

impl From<&TuiArgs> for TuiOptions {
    fn from(a: &TuiArgs) -> Self {
        TuiOptions {
            root: a.root.clone(),
            inspect: a.inspect,
            model: a.model.clone(),
            image: a.image.clone(),
            audio: a.audio.clone(),
            prompt: a.prompt.clone(),
            samples: a.samples.clone(),
        }
    }
}

impl From<&InspectArgs> for InspectOptions {
    fn from(a: &InspectArgs) -> Self {
        InspectOptions {
            model: a.model.clone(),
            image: a.image.clone(),
            audio: a.audio.clone(),
            prompt: a.prompt.clone(),
            layer: a.layer,
            head: a.head,
            token: a.token,
            slot: a.slot,
            out: a.out.clone(),
            size: a.size,
        }
    }
}
