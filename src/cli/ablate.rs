//! `mmlab ablate FILE.toml`: native vs bolted-on designs under a matched training budget.

use std::path::PathBuf;

use crate::ablate::{report, run, AblationSpec};

/// How training FLOPs are counted, shown under `mmlab ablate --help` (reports point here).
const FLOPS_HELP: &str = "\
Training FLOPs are estimated per step from each arm's own batches: 6·N·tokens for trained
components, 4·N·tokens for frozen ones gradients flow through, 2·N·tokens for frozen inputs
(N: matmul parameters; encoder and connector count patches, the decoder counts real sequence
tokens).";

/// Arguments of `mmlab ablate`.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = FLOPS_HELP)]
pub struct AblateArgs {
    /// The ablation file (`ablations/native-vs-projector.toml`).
    pub file: PathBuf,
    /// Where results go (default `results/ablations/<name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// (arm, seed) runs trained at the same time, one core each (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// Runs every arm and seed not already finished, then writes the report and plots (training
/// FLOPs are counted as `mmlab ablate --help` says).
pub fn run_cli(a: &AblateArgs) -> anyhow::Result<()> {
    let spec = AblationSpec::load(&a.file)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/ablations").join(&spec.name));
    let start = std::time::Instant::now();
    let say = |s: &str| eprintln!("[{:>6.0} s] {s}", start.elapsed().as_secs_f64());
    let jobs = a.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let r = run(&spec, &out, jobs, &say)?;
    print!("{}", report(&r));
    eprintln!("results: {}", out.display());
    Ok(())
}
