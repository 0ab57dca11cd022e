//! `mmlab ablate ship STUDY.toml`: each design's frontier model at one budget of a study (by
//! default its top budget), written to `models/<design>[-<tier>]-<budget>/` (`llava-3e13`) beside the others, so that
//! side-by-side tables compare models trained with the same compute.
//!
//! The frontier model of a design at a budget is the size with the lowest held-out image loss
//! (validation seed) among that budget's finished grid runs; every size the study asks for must
//! be finished, or the frontier is not known and nothing is shipped. Weights are git-ignored in
//! the study's folder, so a fresh checkout has none: the run is then trained again from its
//! committed settings under `<study>/ship/<run>/` (resuming there if interrupted) and shipped
//! only if its held-out loss equals the committed run's, and its test accuracies the committed
//! ones: a model that does not reproduce its study numbers is refused, not shipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::Device;
use serde_json::json;

use super::{
    finished_runs, study_tokenizer, test_metrics, tier_label, validation, write_json, Phase,
    RunResult, RunSettings, StudySpec, RESULT, SETTINGS,
};
use crate::fusion::TextTokenizer;

/// Held-out loss difference above which a model is not the run it claims to be (a retrained
/// model repeats the run bit for bit; this only absorbs printing round-off).
pub const LOSS_TOLERANCE: f64 = 1e-6;

/// What to ship.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// The study tier the models were trained and chosen on (`small`, `free-small`).
    pub tier: String,
    /// The budget (default: the study's top budget).
    pub budget: Option<f64>,
    /// The designs (default: every design without an audio encoder).
    pub designs: Option<Vec<String>>,
    /// Where model directories go (`models`).
    pub models: PathBuf,
    /// Runs trained again at the same time, one core each.
    pub jobs: usize,
    /// Replace a model folder whose weights are not the ones being shipped.
    pub overwrite: bool,
}

/// One shipped model.
#[derive(Clone, Debug)]
pub struct Shipped {
    /// The design.
    pub design: String,
    /// The model's name (its directory under `models/`).
    pub name: String,
    /// The study run it is.
    pub run: RunResult,
    /// Whether its weights were trained again here (none were in the study's folder).
    pub retrained: bool,
    /// Its held-out image loss as measured now (equal to the run's).
    pub loss: f64,
    /// Test metrics on each of the study's tiers, with the tier's label (the trained tier's
    /// equal the run's committed ones).
    pub tiers: Vec<(String, String, BTreeMap<String, f64>)>,
}

/// The name a design's frontier model ships under: the design, the tier unless it is the
/// aligned `small`, and the budget (`llava-3e13`, `native-free-3e13`). Names of presets
/// (`llava-small`: the staged recipe's shape, which `mmlab train` still trains) are not reused:
/// a shipped name says which compute made it.
pub fn ship_name(design: &str, tier: &str, budget: f64) -> String {
    let tier = match tier {
        "small" => String::new(),
        t => format!("-{}", t.strip_suffix("-small").unwrap_or(t)),
    };
    format!("{design}{tier}-{budget:.0e}")
}

/// The frontier run of `design` at `budget` on `tier`: the finished grid run with the lowest
/// held-out image loss. Errors when a size the study asks for is not finished.
pub fn frontier_run(
    spec: &StudySpec,
    runs: &BTreeMap<String, RunResult>,
    tier: &str,
    design: &str,
    budget: f64,
) -> anyhow::Result<RunResult> {
    let mine: Vec<&RunResult> = runs
        .values()
        .filter(|r| {
            let k = &r.settings.key;
            k.phase == Phase::Grid && k.tier == tier && k.design == design && k.budget == budget
        })
        .collect();
    let missing: Vec<String> = spec
        .widths
        .iter()
        .filter(|w| !mine.iter().any(|r| r.settings.key.width == **w))
        .map(|w| format!("d{w}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{design} at {budget:.0e} FLOPs on {tier}: sizes {} are not finished, so its frontier model is not known yet (run `mmlab ablate` first)",
            missing.join(", ")
        );
    }
    let best = mine
        .into_iter()
        .min_by(|a, b| a.val.image_loss.total_cmp(&b.val.image_loss))
        .context("no runs")?;
    Ok(best.clone())
}

/// Ships the frontier model of each design (see the module's documentation).
pub fn ship(
    spec: &StudySpec,
    out: &Path,
    opts: &ShipOptions,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Vec<Shipped>> {
    spec.validate()?;
    if !spec.tiers.contains(&opts.tier) {
        bail!(
            "tier {:?} is not one of the study's ({})",
            opts.tier,
            spec.tiers.join(", ")
        );
    }
    let top = spec.budgets.iter().copied().fold(f64::NAN, f64::max);
    let budget = opts.budget.unwrap_or(top);
    if !spec.budgets.contains(&budget) {
        bail!(
            "budget {budget:.0e} is not one of the study's ({})",
            spec.budgets
                .iter()
                .map(|b| format!("{b:.0e}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let designs: Vec<String> = match &opts.designs {
        Some(d) => {
            for n in d {
                match spec.design(n) {
                    None => bail!("no design {n:?} in the study"),
                    Some(s) if s.audio_encoder => bail!(
                        "{n} has an audio encoder: its runs are at the audio budgets and its frontier is not shipped"
                    ),
                    _ => {}
                }
            }
            d.clone()
        }
        None => spec
            .designs
            .iter()
            .filter(|d| !d.audio_encoder)
            .map(|d| d.name.clone())
            .collect(),
    };
    let runs = finished_runs(spec, out)?;
    let frontier: Vec<RunResult> = designs
        .iter()
        .map(|d| frontier_run(spec, &runs, &opts.tier, d, budget))
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(&opts.models)
        .with_context(|| format!("creating {}", opts.models.display()))?;
    let tok = Arc::new(study_tokenizer(out)?);
    let done = super::super::work_pool(frontier.len(), opts.jobs, &|i| {
        let run = &frontier[i];
        let design = &run.settings.key.design;
        let name = ship_name(design, &opts.tier, budget);
        ship_one(spec, out, run, &name, opts, &tok, say)
            .with_context(|| format!("shipping {} as {name}", run.settings.key.id()))
    })?;
    Ok(done.into_iter().flatten().collect())
}

/// The weights of `run`: its own folder's when they are there and match, else trained again
/// under `out/ship/<id>/`. Returns the folder and whether it was trained here.
fn weights_of(
    out: &Path,
    run: &RunResult,
    tok: &TextTokenizer,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(PathBuf, bool)> {
    let id = run.settings.key.id();
    let complete = |dir: &Path| {
        ["model.safetensors", "config.json", "tokenizer.json"]
            .iter()
            .all(|f| dir.join(f).is_file())
            && !dir.join("checkpoint").exists()
            && stored_settings(dir).as_ref() == Some(&run.settings)
    };
    let own = out.join("runs").join(&id);
    if complete(&own) {
        return Ok((own, false));
    }
    let scratch = out.join("ship").join(&id);
    if complete(&scratch) {
        return Ok((scratch, true));
    }
    if scratch.exists() && stored_settings(&scratch).as_ref() != Some(&run.settings) {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("clearing {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    write_json(&scratch.join(SETTINGS), &run.settings)?;
    let resume = scratch.join("checkpoint").join("state.json").is_file();
    say(&format!(
        "{id}: no weights in {} (they are not committed); {} {} steps into {}",
        own.display(),
        if resume {
            "resuming,"
        } else {
            "training again,"
        },
        run.settings.train.steps,
        scratch.display()
    ));
    super::super::run_stage(&run.settings.train, tok, &scratch)?;
    Ok((scratch, true))
}

fn stored_settings(dir: &Path) -> Option<RunSettings> {
    let text = std::fs::read_to_string(dir.join(SETTINGS)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Test metrics of the model in `dir` on `tier` (the study's own measurement), with the tier's
/// label.
fn measure(
    dir: &Path,
    name: &str,
    tier: &str,
    spec: &StudySpec,
    scratch: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(String, BTreeMap<String, f64>)> {
    let loaded = crate::model::load_dir(dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    let eval_dir = scratch.join(format!("eval-{tier}"));
    let _ = std::fs::remove_dir_all(&eval_dir);
    let (label, m) = test_metrics(dir, &eval_dir, name, loaded, tier, &spec.eval, say)?;
    let _ = std::fs::remove_dir_all(&eval_dir);
    Ok((label, m.into_iter().map(|(k, v)| (k, v.value)).collect()))
}

fn ship_one(
    spec: &StudySpec,
    out: &Path,
    run: &RunResult,
    name: &str,
    opts: &ShipOptions,
    tok: &TextTokenizer,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Shipped> {
    let models = opts.models.as_path();
    let id = run.settings.key.id();
    let dest = models.join(name);
    // Another model already under that name is not replaced unless asked.
    let (weights, retrained) = weights_of(out, run, tok, say)?;
    if !opts.overwrite && dest.exists() {
        let new = std::fs::read(weights.join("model.safetensors"))
            .with_context(|| format!("reading {}", weights.join("model.safetensors").display()))?;
        if std::fs::read(dest.join("model.safetensors"))
            .ok()
            .as_deref()
            != Some(&new[..])
        {
            bail!(
                "{} holds other weights than run {id}'s; ship with --overwrite to replace it",
                dest.display()
            );
        }
    }
    let loaded = crate::model::load_dir(&weights, &Device::Cpu)
        .with_context(|| format!("loading {}", weights.display()))?;
    let val = validation(&run.settings.train, &loaded)?;
    let diff = (val.image_loss - run.val.image_loss).abs();
    if diff.is_nan() || diff > LOSS_TOLERANCE {
        bail!(
            "the weights in {} give held-out image loss {:.6}, the committed run {:.6} ({}): they are not that run's, so they are not shipped{}",
            weights.display(),
            val.image_loss,
            run.val.image_loss,
            out.join("runs").join(&id).join(RESULT).display(),
            if retrained {
                " (training did not repeat bit for bit here)"
            } else {
                ""
            }
        );
    }
    say(&format!(
        "{id}: held-out image loss {:.6}, as committed{}",
        val.image_loss,
        if retrained {
            " (trained again here)"
        } else {
            ""
        }
    ));

    // Assemble the model folder beside its final place, then swap it in.
    let tmp = models.join(format!(".{name}.shipping"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(weights.join(f), tmp.join(f)).with_context(|| {
            format!("copying {} to {}", weights.join(f).display(), tmp.display())
        })?;
    }
    let log = out.join("runs").join(&id).join("train.jsonl");
    std::fs::copy(&log, tmp.join("train.jsonl"))
        .with_context(|| format!("copying {}", log.display()))?;
    write_json(&tmp.join("study-run.json"), &run.settings)?;

    let scratch = out.join("ship").join(&id);
    let mut tiers = Vec::new();
    for t in std::iter::once(&run.settings.key.tier)
        .chain(spec.tiers.iter().filter(|t| **t != run.settings.key.tier))
    {
        let (label, m) = measure(&tmp, name, t, spec, &scratch, say)?;
        tiers.push((t.clone(), label, m));
    }
    // The trained tier's accuracies are the run's committed ones (same weights, same questions).
    let own = &tiers[0].2;
    for (k, committed) in &run.test {
        if let Some(now) = own.get(k) {
            if (now - committed.value).abs() > 1e-9 {
                bail!(
                    "{name}: test {k} is {now:.4} here, {:.4} in the committed run {id}: not shipped",
                    committed.value
                );
            }
        }
    }
    let mut metrics = serde_json::Map::new();
    metrics.insert(
        "data".into(),
        json!(format!("default test set, {}", questions(spec))),
    );
    metrics.insert("tier".into(), json!(tiers[0].1));
    for (k, v) in own {
        // The means over splits are the README's; the TUI shows the splits.
        if ![
            "pope_accuracy",
            "audio_pope_accuracy",
            "pope_f1",
            "audio_pope_f1",
        ]
        .contains(&k.as_str())
        {
            metrics.insert(k.clone(), json!(v));
        }
    }
    write_json(&tmp.join("eval-metrics.json"), &metrics)?;
    std::fs::write(tmp.join("COMMAND"), command_text(spec, run, name))
        .with_context(|| format!("writing {}", tmp.join("COMMAND").display()))?;
    let shipped = Shipped {
        design: run.settings.key.design.clone(),
        name: name.to_string(),
        run: run.clone(),
        retrained,
        loss: val.image_loss,
        tiers,
    };
    std::fs::write(tmp.join("README.md"), readme(spec, &shipped))
        .with_context(|| format!("writing {}", tmp.join("README.md").display()))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("replacing {}", dest.display()))?;
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
    say(&format!("{name}: shipped to {}", dest.display()));
    Ok(shipped)
}

/// Which test questions were asked.
fn questions(spec: &StudySpec) -> String {
    match spec.eval.limit {
        Some(n) => format!("first {n} questions of each POPE split and task"),
        None => "every question".to_string(),
    }
}

fn command_text(spec: &StudySpec, run: &RunResult, name: &str) -> String {
    let k = &run.settings.key;
    format!(
        "# Grid run {id} of study `{study}` ({tier}, width {w}, {b:.0e} training FLOPs, peak learning rate {lr}):\n\
         mmlab ablate ablations/{study}.toml --only {id}\n\
         # then this folder (its frontier model: lowest held-out loss of the sizes at that budget),\n\
         # trained again from the committed settings when the weights are not there, and checked\n\
         # against the committed held-out loss and test accuracies:\n\
         mmlab ablate ship ablations/{study}.toml --tier {tier} --budget {b:.0e} --designs {design}\n\
         # ({name})\n",
        id = k.id(),
        study = spec.name,
        tier = k.tier,
        w = k.width,
        b = k.budget,
        lr = k.lr,
        design = k.design,
    )
}

fn readme(spec: &StudySpec, s: &Shipped) -> String {
    let r = &s.run;
    let k = &r.settings.key;
    let cfg = &r.settings.train.model;
    let mut t = format!(
        "# {name} (shipped weights)\n\n\
         The frontier model of design `{design}` at {b:.1e} training FLOPs on the {tier} tier of the \
         scaling study `{study}` (`ablations/{study}.toml`, report in `ablations/results/{study}/report.md`): \
         of the sizes trained with that budget ({widths}), the one with the lowest held-out image \
         loss on the validation seed. Grid run `{id}`: decoder width {w}, {params} parameters, \
         {steps} steps of batch {batch}, peak learning rate {lr} (the study's sweep, chosen on the \
         validation seed), one stage with every component trained from its seeded initialisation \
         (the study's recipe for every design). Every model shipped from the study at this budget \
         was trained with the same compute, so they compare at equal compute.\n\n",
        name = s.name,
        design = k.design,
        b = k.budget,
        tier = tier_label(&k.tier),
        study = spec.name,
        widths = spec
            .widths
            .iter()
            .map(|w| format!("d{w}"))
            .collect::<Vec<_>>()
            .join(", "),
        id = k.id(),
        w = k.width,
        params = r.parameters,
        steps = r.steps,
        batch = r.settings.train.batch_size,
        lr = k.lr,
    );
    t += &format!(
        "Model: `{}` ({:?} design), d_model {}, {} layers, {} heads. Held-out image loss \
         {:.4} (validation seed {}), measured again on these weights{}.\n\n",
        cfg.preset.as_deref().unwrap_or("custom"),
        cfg.design,
        cfg.model.d_model,
        cfg.model.n_layers,
        cfg.model.n_heads,
        s.loss,
        spec.val_seed,
        if s.retrained {
            " after training them again from the committed settings (the study's folder keeps no weights): equal to the committed run's"
        } else {
            ": equal to the committed run's"
        },
    );
    t += &format!(
        "Test set (the default test set's seed, which no choice read), {}:\n\n",
        questions(spec)
    );
    let cols = [
        ("POPE random F1", "pope_random_f1"),
        ("popular F1", "pope_popular_f1"),
        ("adversarial F1", "pope_adversarial_f1"),
        ("POPE accuracy (mean)", "pope_accuracy"),
        ("counting", "count_accuracy"),
        ("audio-POPE F1 (mean)", "audio_pope_f1"),
        ("audio counting", "audio_count_accuracy"),
    ];
    t += "| tier |";
    for (h, _) in cols {
        t += &format!(" {h} |");
    }
    t += "\n|---|";
    for _ in cols {
        t += "---|";
    }
    t += "\n";
    for (i, (_, label, m)) in s.tiers.iter().enumerate() {
        t += &format!("| {label}{} |", if i == 0 { " (trained on)" } else { "" });
        for (_, key) in cols {
            match m.get(key) {
                Some(v) => t += &format!(" {v:.3} |"),
                None => t += " — |",
            }
        }
        t += "\n";
    }
    t += "\n`eval-metrics.json` holds the trained tier's numbers (what `mmlab tui` shows, marked \
          shipped); `study-run.json` the run's full settings; `train.jsonl` its training log; \
          `COMMAND` how to make this folder again.\n";
    t
}
