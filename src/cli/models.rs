//! `mmlab models`: presets with parameter counts and where their weights come from (compiled
//! into the binary, or `<root>/models/<name>`), the other model directories under
//! `<root>/models`, and any directories named on the command line.

use std::path::{Path, PathBuf};

use mmlab_eval::error::error_chain;

use crate::model::io::read_config;
use crate::model::presets::{embedded, parameter_count, preset, presets, EMBEDDED};
use crate::model::resolve::{locate_in, model_dirs, root};

/// Arguments of `mmlab models`.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelsArgs {
    /// Extra model directories to list.
    pub dirs: Vec<PathBuf>,
}

/// Prints the table; fails (after printing it) when a directory named on the command line
/// is not a valid model directory.
pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    let (table, problems) = table_in(args, &root());
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

/// The table as text, with bare names looked up under the workspace folder ([`root`]).
pub fn render(args: &ModelsArgs) -> String {
    table_in(args, &root()).0
}

/// The table as text, with bare names looked up under `root/models`; the weights column says
/// what `--model NAME` loads: `embedded` (compiled into the binary) or a directory.
pub fn render_in(args: &ModelsArgs, root: &Path) -> String {
    table_in(args, root).0
}

/// The table, and one message per directory of `args.dirs` that is not a valid model directory.
fn table_in(args: &ModelsArgs, root: &Path) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = format!(
        "{:<18} {:<8} {:>10}  {:<56} {}\n",
        "name", "design", "params", "about", "weights"
    );
    for p in presets() {
        let w = locate_in(p.name, root)
            .map(|s| s.describe())
            .unwrap_or_else(|_| "(not trained here)".into());
        out += &format!(
            "{:<18} {:<8} {:>10}  {:<56} {}\n",
            p.name,
            p.config.design,
            parameter_count(&p.config.model),
            p.about,
            w
        );
    }
    // Shipped models that are not presets (a study's frontier models): their own row.
    for m in EMBEDDED.iter().filter(|m| preset(m.name).is_none()) {
        match serde_json::from_slice::<crate::model::ModelDirConfig>(m.config) {
            Ok(c) => {
                out += &format!(
                    "{:<18} {:<8} {:>10}  {:<56} {}\n",
                    m.name,
                    c.design,
                    parameter_count(&c.model),
                    format!("shipped; what made it: models/{}/README.md", m.name),
                    "embedded"
                )
            }
            Err(e) => out += &format!("{} (embedded): config.json: {e}\n", m.name),
        }
    }
    for d in model_dirs(root) {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A directory named like a preset is that preset's row (or, for a shipped one, only
        // reachable by its path: `--model NAME` loads the compiled-in copy).
        if preset(&name).is_some() || embedded(&name).is_some() {
            continue;
        }
        let about = if crate::model::io::hf_fuyu::is_hf_fuyu_dir(&d) {
            "HuggingFace Fuyu checkpoint"
        } else {
            "model directory"
        };
        match read_config(&d) {
            Ok(c) => {
                out += &format!(
                    "{:<18} {:<8} {:>10}  {:<56} {}\n",
                    name,
                    c.design,
                    parameter_count(&c.model),
                    about,
                    d.display()
                )
            }
            Err(e) => out += &format!("{}: {e}\n", d.display()),
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
