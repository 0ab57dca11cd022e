//! `mmlab ask`: one question about an image and/or audio clip.

use std::path::PathBuf;

use anyhow::Context;
use mmlab_eval::{Request, Responder};

use crate::model::generate::{check_max_new_tokens, check_temperature};
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
    /// Most tokens in the answer (1 to 65536).
    #[arg(long, default_value_t = 16, value_parser = parse_max_tokens)]
    pub max_tokens: usize,
    /// Sampling temperature, a finite number >= 0 (0: greedy).
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample only from the k most likely tokens (0: all of them).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weights and compute dtype: f32, or bf16 / f16 for HF Fuyu directories.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
    /// The question.
    pub question: String,
}

/// Parses `--temperature`: a finite number >= 0.
fn parse_temperature(s: &str) -> Result<f64, String> {
    let t: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check_temperature(t).map_err(|e| e.to_string())
}

/// Parses `--max-tokens`: 1 to 65536.
fn parse_max_tokens(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of tokens"))?;
    check_max_new_tokens(n).map_err(|e| e.to_string())
}

/// Prints the model's answer.
pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    let loaded = load_model_as(&args.model, args.dtype)?;
    let mut r = ModelResponder::new(loaded, args.model.clone());
    r.opts.max_new_tokens = args.max_tokens;
    r.opts.temperature = args.temperature;
    r.opts.top_k = args.top_k;
    r.opts.seed = args.seed;
    r.opts.validate()?;
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
