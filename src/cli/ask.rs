//! `mmlab ask`: one question about an image and/or audio clip.

use std::path::PathBuf;

use anyhow::Context;
use mmlab_eval::{Request, Responder};

use crate::model::resolve::{load_model_as, parse_dtype};
use crate::model::responder::ModelResponder;

/// Arguments of `mmlab ask`.
#[derive(Clone, Debug, clap::Args)]
pub struct AskArgs {
    /// Preset name or model directory.
    #[arg(long)]
    pub model: String,
    /// Image to ask about.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Audio clip to ask about.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weights and compute dtype: f32, or bf16 / f16 for HF Fuyu directories.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
    /// The question.
    pub question: String,
}

/// Prints the model's answer.
pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    let loaded = load_model_as(&args.model, args.dtype)?;
    let mut r = ModelResponder::new(loaded, args.model.clone());
    r.opts.max_new_tokens = args.max_tokens;
    r.opts.temperature = args.temperature;
    r.opts.seed = args.seed;
    let req = Request {
        task: "ask".into(),
        question_id: "0".into(),
        prompt: args.question.clone(),
        image: args.image.clone(),
        audio: args.audio.clone(),
        candidates: None,
    };
    let resp = r.respond(std::slice::from_ref(&req)).context("answering")?;
    println!("{}", resp.first().map(|r| r.answer.as_str()).unwrap_or(""));
    Ok(())
}
