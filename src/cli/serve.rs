//! `mmlab serve`: a model behind an OpenAI-compatible chat completions endpoint.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::model::resolve::{load_model_as, parse_dtype};
use crate::model::responder::ModelResponder;
use crate::openai::{serve, ServeOptions};

/// Arguments of `mmlab serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Preset name or model directory (an HF Fuyu directory too).
    #[arg(long)]
    pub model: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on. Anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Environment variable holding the API key every request must send as
    /// `Authorization: Bearer <key>` (none: no key asked).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Most questions answered in one model batch.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Most tokens per answer (greedy decoding; a request's max_tokens may ask fewer). 8 is
    /// what `mmlab eval` generates, so served answers equal the direct ones.
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Largest image, in megapixels, read from its header before decoding.
    #[arg(long, default_value_t = 16.0)]
    pub max_megapixels: f64,
    /// Weights and compute dtype: f32, or bf16 / f16 for HF Fuyu directories.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
}

/// Reads an API key from the environment variable `var`, refusing an unset or empty one.
pub fn key_from_env(var: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        Ok(_) => anyhow::bail!("--api-key-env {var}: the variable is empty"),
        Err(_) => anyhow::bail!("--api-key-env {var}: the variable is not set"),
    }
}

/// Runs `mmlab serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let api_key = args.api_key_env.as_deref().map(key_from_env).transpose()?;
    if args.max_megapixels.is_nan() || args.max_megapixels <= 0.0 {
        anyhow::bail!("--max-megapixels must be positive");
    }
    let loaded = load_model_as(&args.model, args.dtype)?;
    let p = Path::new(&args.model);
    let name = if p.is_dir() {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.model.clone())
    } else {
        args.model.clone()
    };
    let model = ModelResponder::new(loaded, name.clone());
    let opts = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        api_key,
        max_body: args.max_body_mib.max(1) << 20,
        max_pixels: (args.max_megapixels * 1e6) as u64,
        max_batch: args.max_batch.max(1),
        batch_wait: Duration::from_millis(3),
        max_new_tokens: args.max_new_tokens.max(1),
        http_threads: 2,
    };
    let shown = name.clone();
    serve(model, name, opts, move |addr| {
        println!(
            "mmlab serve: {shown} at http://{addr}/v1 (POST /v1/chat/completions, GET /v1/models)"
        );
        let _ = std::io::stdout().flush();
    })
}
