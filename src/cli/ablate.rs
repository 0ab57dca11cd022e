//! `mmlab ablate FILE.toml`: native vs bolted-on designs under a matched training budget, or a
//! scaling study (a file with `budgets`); `mmlab ablate merge` gathers a sharded study.

use std::path::PathBuf;

use anyhow::Context;

use crate::ablate::study::{self, RunFilter, Shard, Slice, StudySpec};
use crate::ablate::{report, run, AblationSpec};

/// How training FLOPs are counted, shown under `mmlab ablate --help` (reports point here).
const FLOPS_HELP: &str = "\
Training FLOPs are estimated per step from each arm's own batches: 6·N·tokens for trained
components, 4·N·tokens for frozen ones gradients flow through, 2·N·tokens for frozen inputs
(N: matmul parameters; encoder and connector count patches, the decoder counts real sequence
tokens).";

/// Arguments of `mmlab ablate`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    after_help = FLOPS_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct AblateArgs {
    /// The ablation file (`ablations/native-vs-projector.toml`) or scaling-study file
    /// (`ablations/scaling.toml`: one with `budgets`).
    #[arg(required = true)]
    pub file: Option<PathBuf>,
    /// Where results go (default: an ablation's `results/ablations/<name>`, a study's
    /// `ablations/results/<name>`, where its finished runs are committed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs trained at the same time, one core each (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Study: run only slice I of N of the runs (0-based; `mmlab ablate merge` gathers them).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Study: run only the runs whose id matches one of these comma-separated glob patterns
    /// (e.g. `free-small-*`, `*-3e13`; ids are `<tier>-<design>-d<width>-<budget>` and
    /// `sweep-...`), to put some first; the report still covers every finished run.
    #[arg(long, value_name = "PATTERNS")]
    pub only: Option<RunFilter>,
    /// Study: write the report from the finished runs without training anything.
    #[arg(long)]
    pub report_only: bool,
    /// `merge`: gather the runs of several study folders.
    #[command(subcommand)]
    pub command: Option<AblateCommand>,
}

/// `mmlab ablate` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum AblateCommand {
    /// Copy the finished runs of study folders (shards' `--out`) into one and write its report.
    Merge(MergeArgs),
    /// Ship each design's frontier model at a study budget (default the top one) to
    /// `models/<design>[-<tier>]-<budget>/` (`llava-3e13`, `native-free-3e13`), training it again from its committed settings when its weights
    /// are not in the study's folder, and refusing it unless it repeats the committed held-out
    /// loss and test accuracies.
    Ship(ShipArgs),
}

/// Arguments of `mmlab ablate ship`.
#[derive(Clone, Debug, clap::Args)]
pub struct ShipArgs {
    /// The study file.
    pub file: PathBuf,
    /// The tier the models were trained on (`small`: aligned; `free-small`).
    #[arg(long, default_value = "small")]
    pub tier: String,
    /// The budget in training FLOPs (default: the study's top budget).
    #[arg(long)]
    pub budget: Option<f64>,
    /// Comma-separated designs (default: every design without an audio encoder).
    #[arg(long, value_delimiter = ',')]
    pub designs: Option<Vec<String>>,
    /// Where the model folders go.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// The study folder (default `ablations/results/<name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace a model folder that holds other weights (re-shipping the same run needs none).
    #[arg(long)]
    pub overwrite: bool,
}

/// Arguments of `mmlab ablate merge`.
#[derive(Clone, Debug, clap::Args)]
pub struct MergeArgs {
    /// The study file.
    pub file: PathBuf,
    /// The shards' study folders.
    #[arg(required = true)]
    pub from: Vec<PathBuf>,
    /// The study folder runs are gathered into (default `ablations/results/<name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs every arm and seed not already finished, then writes the report and plots (training
/// FLOPs are counted as `mmlab ablate --help` says).
pub fn run_cli(a: &AblateArgs) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let say = |s: &str| eprintln!("[{:>6.0} s] {s}", start.elapsed().as_secs_f64());
    let jobs = a.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if let Some(AblateCommand::Merge(m)) = &a.command {
        let spec = StudySpec::load(&m.file)?;
        let out = study_out(&spec, m.out.as_ref());
        let n = study::merge(&out, &m.from)?;
        say(&format!(
            "gathered {n} finished runs into {}",
            out.display()
        ));
        let text = study::report::write_report(&spec, &out, &say)?;
        print!("{text}");
        return Ok(());
    }
    if let Some(AblateCommand::Ship(s)) = &a.command {
        let spec = StudySpec::load(&s.file)?;
        let out = study_out(&spec, s.out.as_ref());
        let opts = study::ship::ShipOptions {
            tier: s.tier.clone(),
            budget: s.budget,
            designs: s.designs.clone(),
            models: s.models.clone(),
            jobs,
            overwrite: s.overwrite,
        };
        let shipped = study::ship::ship(&spec, &out, &opts, &say)?;
        for m in &shipped {
            let own = &m.tiers[0].2;
            let get = |k: &str| own.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "{:<20} {:<28} {:>8} params  held-out loss {:.4}  POPE acc. {:.3}  counting {:.3}{}",
                m.name,
                m.run.settings.key.id(),
                m.run.parameters,
                m.loss,
                get("pope_accuracy"),
                get("count_accuracy"),
                if m.retrained { "  (trained again)" } else { "" }
            );
        }
        return Ok(());
    }
    let file = a
        .file
        .as_ref()
        .context("an ablation or study file is needed")?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if StudySpec::is_study(&text) {
        let spec = StudySpec::load(file)?;
        let out = study_out(&spec, a.out.as_ref());
        if !a.report_only {
            let slice = Slice {
                shard: a.shard,
                only: a.only.clone(),
            };
            let r = study::run_study(&spec, &out, jobs, slice, &say)?;
            say(&format!(
                "{} of the {} runs asked for are finished",
                r.finished, r.asked
            ));
        }
        let text = study::report::write_report(&spec, &out, &say)?;
        print!("{text}");
        eprintln!("results: {}", out.display());
        return Ok(());
    }
    if a.shard.is_some() || a.only.is_some() || a.report_only {
        anyhow::bail!(
            "{}: --shard, --only and --report-only are for scaling studies (files with `budgets`)",
            file.display()
        );
    }
    let spec = AblationSpec::load(file)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/ablations").join(&spec.name));
    let r = run(&spec, &out, jobs, &say)?;
    print!("{}", report(&r));
    eprintln!("results: {}", out.display());
    Ok(())
}

/// A study's folder: `--out`, else `ablations/results/<name>`.
fn study_out(spec: &StudySpec, out: Option<&PathBuf>) -> PathBuf {
    out.cloned()
        .unwrap_or_else(|| PathBuf::from("ablations/results").join(&spec.name))
}
