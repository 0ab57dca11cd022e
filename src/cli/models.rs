//! `mmlab models`: presets with parameter counts and where their weights are, HF Fuyu
//! checkpoints under `models/`, and any directories named on the command line.

use std::path::PathBuf;

use mmlab_eval::error::error_chain;

use crate::model::checkpoint::read_config;
use crate::model::presets::{parameter_count, presets, shipped_dir};

/// Arguments of `mmlab models`.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelsArgs {
    /// Extra model directories to list.
    pub dirs: Vec<PathBuf>,
}

/// Prints the table; fails (after printing it) when a directory named on the command line
/// is not a valid model directory.
pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    let (table, problems) = table(args);
    print!("{table}");
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of the {} model directories named is invalid:\n  {}",
            problems.len(),
            args.dirs.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The table as text (a directory that cannot be read gets a line saying why).
pub fn render(args: &ModelsArgs) -> String {
    table(args).0
}

/// The table, and one message per directory of `args.dirs` that is not a valid model directory.
fn table(args: &ModelsArgs) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = format!(
        "{:<18} {:<8} {:>10}  {:<56} {}\n",
        "name", "design", "params", "about", "weights"
    );
    for p in presets() {
        let w = shipped_dir(p.name)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "(not trained here)".into());
        out += &format!(
            "{:<18} {:<8} {:>10}  {:<56} {}\n",
            p.name,
            p.config.design,
            parameter_count(&p.config.model),
            p.about,
            w
        );
    }
    for d in crate::model::resolve::hf_dirs() {
        if let Ok(c) = read_config(&d) {
            out += &format!(
                "{:<18} {:<8} {:>10}  {:<56} {}\n",
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                c.design,
                parameter_count(&c.model),
                "HuggingFace Fuyu checkpoint",
                d.display()
            );
        }
    }
    for d in &args.dirs {
        match read_config(d) {
            Ok(c) => {
                out += &format!(
                    "{:<18} {:<8} {:>10}  {:<56} {}\n",
                    c.preset.clone().unwrap_or_else(|| "-".into()),
                    c.design,
                    parameter_count(&c.model),
                    "model directory",
                    d.display()
                )
            }
            Err(e) => {
                let msg = error_chain(&e);
                out += &format!("{}: {msg}\n", d.display());
                problems.push(msg);
            }
        }
    }
    (out, problems)
}
