//! `mmlab models`: presets with parameter counts and where their weights are, HF Fuyu
//! checkpoints under `models/`, and any directories named on the command line.

use std::path::PathBuf;

use crate::model::checkpoint::read_config;
use crate::model::presets::{parameter_count, presets, shipped_dir};

/// Arguments of `mmlab models`.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelsArgs {
    /// Extra model directories to list.
    pub dirs: Vec<PathBuf>,
}

/// Prints the table.
pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    print!("{}", render(args));
    Ok(())
}

/// The table as text.
pub fn render(args: &ModelsArgs) -> String {
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
            Err(e) => out += &format!("{}: {e}\n", d.display()),
        }
    }
    out
}
