//! A run's checkpoints (weights, optimiser moments, settings and progress under
//! `out/checkpoint`), resuming from them, and warm starts from other models' weights. Weights
//! are read and written with the model's own functions ([`crate::model::checkpoint`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::{component, io_err, named_vars, LogLine, TrainConfig, TrainError, TrainState};
use crate::io::atomic_write;
use crate::model::io::{read_config, read_weights, safetensors_bytes, tensors_to_bytes};
use crate::model::ModelDirConfig;

/// The directory of the run's latest checkpoint.
pub(super) fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Writes the checkpoint of the run in `out` at `state`: into `checkpoint.tmp`, which then
/// replaces `checkpoint` (the old one is `checkpoint.old` in between).
pub(super) fn write_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    vm: &VarMap,
    opt: &AdamW,
    state: &TrainState,
) -> Result<(), TrainError> {
    let tmp = out.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let wp = tmp.join("model.safetensors");
    let w = safetensors_bytes(vm, DType::F32).map_err(save_err(&wp))?;
    std::fs::write(&wp, w).map_err(io_err(&tmp))?;
    let mut moments = Vec::new();
    for s in &opt.slots {
        let n = s.m.len();
        moments.push((
            format!("{}.m", s.name),
            candle_core::Tensor::from_slice(&s.m, n, &Device::Cpu)?,
        ));
        moments.push((
            format!("{}.v", s.name),
            candle_core::Tensor::from_slice(&s.v, n, &Device::Cpu)?,
        ));
    }
    let op = tmp.join("optimizer.safetensors");
    let ob = tensors_to_bytes(&moments).map_err(save_err(&op))?;
    std::fs::write(&op, ob).map_err(io_err(&tmp))?;
    let meta = serde_json::json!({ "config": cfg, "state": state });
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(&tmp))?;
    let dst = checkpoint_dir(out);
    let old = out.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn save_err(path: &Path) -> impl FnOnce(String) -> TrainError + '_ {
    move |msg| TrainError::SaveTensors {
        path: path.to_path_buf(),
        msg,
    }
}

/// The settings and progress saved in the checkpoint of the run in `out` (the directory of
/// the last complete checkpoint).
pub fn checkpoint_meta(out: &Path) -> Result<(TrainConfig, TrainState), TrainError> {
    let dir = resume_dir(out);
    let sp = dir.join("state.json");
    if !sp.is_file() {
        return Err(TrainError::NoCheckpoint {
            out: out.to_path_buf(),
            missing: sp,
        });
    }
    let text = std::fs::read_to_string(&sp).map_err(io_err(&sp))?;
    #[derive(Deserialize)]
    struct Meta {
        config: TrainConfig,
        state: TrainState,
    }
    let meta: Meta = serde_json::from_str(&text).map_err(|e| TrainError::CheckpointState {
        path: sp.clone(),
        msg: e.to_string(),
    })?;
    Ok((meta.config, meta.state))
}

/// The checkpoint directory a resume reads: `checkpoint`, or `checkpoint.old` when a crash
/// came between the two renames of [`write_checkpoint`].
fn resume_dir(out: &Path) -> PathBuf {
    let dir = checkpoint_dir(out);
    if !dir.exists() && out.join("checkpoint.old").exists() {
        out.join("checkpoint.old")
    } else {
        dir
    }
}

/// Refuses to resume the run in `out` with settings other than its checkpoint's, naming each
/// setting that differs.
pub fn check_resume(out: &Path, cfg: &TrainConfig) -> Result<TrainState, TrainError> {
    if !out.is_dir() {
        return Err(TrainError::NoRun {
            out: out.to_path_buf(),
        });
    }
    let (saved, state) = checkpoint_meta(out)?;
    let diff = settings_diff(&saved, cfg);
    if !diff.is_empty() {
        return Err(TrainError::SettingsDiffer {
            checkpoint: checkpoint_dir(out),
            diff,
        });
    }
    Ok(state)
}

/// The settings that differ between `old` and `new`, one `path: OLD -> NEW` entry each
/// (`optim.lr: 0.003 -> 0.001`); empty when they are equal.
pub fn settings_diff<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (a, b) = match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return vec!["settings that cannot be written as JSON".into()],
    };
    let mut out = Vec::new();
    json_diff("", &a, &b, &mut out);
    out
}

fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    if a == b {
        return;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            json_diff(
                &p,
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    let show = |v: &Value| match v {
        Value::Null => "none".to_string(),
        v => v.to_string(),
    };
    let name = if path.is_empty() { "settings" } else { path };
    out.push(format!("{name}: {} -> {}", show(a), show(b)));
}

/// Restores the run in `out` made with `cfg` (weights into `vm`, moments into `opt`) and
/// keeps only its `train.jsonl` lines up to the checkpoint; returns its progress.
pub(super) fn resume(
    out: &Path,
    cfg: &TrainConfig,
    vm: &VarMap,
    opt: &mut AdamW,
) -> Result<TrainState, TrainError> {
    let (saved, state) = checkpoint_meta(out)?;
    if &saved != cfg {
        return Err(TrainError::CheckpointChanged {
            dir: checkpoint_dir(out),
        });
    }
    let dir = resume_dir(out);
    set_vars(&dir.join("model.safetensors"), vm, None)?;
    let op = dir.join("optimizer.safetensors");
    let o = read_weights(&op, &Device::Cpu)?;
    for s in &mut opt.slots {
        let get = |k: String| -> Result<Vec<f32>, TrainError> {
            let t = o.get(&k).ok_or_else(|| TrainError::MissingTensor {
                path: op.clone(),
                name: k.clone(),
                needed_for: None,
            })?;
            Ok(t.to_vec1::<f32>()?)
        };
        s.m = get(format!("{}.m", s.name))?;
        s.v = get(format!("{}.v", s.name))?;
    }
    opt.t = state.adam_t;
    truncate_log(&out.join("train.jsonl"), state.step)?;
    Ok(state)
}

/// Keeps only the `train.jsonl` lines up to `step` (after a resume).
fn truncate_log(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<LogLine>(l)
                .map(|x| x.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    atomic_write(path, kept.as_bytes())?;
    Ok(())
}

/// Sets the starting weights of a fresh run in `vm`: the model directory `cfg.init_from`
/// (everything, or only `cfg.init_parts`), then the pre-trained encoders.
pub(super) fn warm_start(cfg: &TrainConfig, vm: &VarMap) -> Result<(), TrainError> {
    if let Some(dir) = &cfg.init_from {
        if cfg.init_parts.is_empty() {
            load_model_dir(dir, &cfg.model, vm)?;
        } else {
            let parts: Vec<&str> = cfg.init_parts.iter().map(|s| s.as_str()).collect();
            load_matching(
                &dir.join("model.safetensors"),
                vm,
                &format!("{parts:?}"),
                &|n| parts.contains(&component(n)),
            )?;
        }
    }
    if cfg.model.model.bolt.is_none() && cfg.init_encoder.is_some() {
        return Err(TrainError::NoVisionEncoder);
    }
    for (from, what, prefix) in [
        (&cfg.init_encoder, "vision encoder", "vision_encoder."),
        (&cfg.init_audio_encoder, "audio encoder", "audio_encoder."),
    ] {
        if let Some(p) = from {
            // A `mmlab pretrain-encoder` folder, or the weights file itself.
            let file = if p.is_dir() {
                p.join("encoder.safetensors")
            } else {
                p.clone()
            };
            load_matching(&file, vm, what, &|n| n.starts_with(prefix))?;
        }
    }
    Ok(())
}

/// Copies the weights of the model directory `dir` into `vm`; the directory's model settings
/// must equal `model`.
fn load_model_dir(dir: &Path, model: &ModelDirConfig, vm: &VarMap) -> Result<(), TrainError> {
    let theirs = read_config(dir)?;
    if theirs.model != model.model || theirs.image != model.image || theirs.audio != model.audio {
        return Err(TrainError::InitMismatch {
            path: dir.join("config.json"),
        });
    }
    set_vars(&dir.join("model.safetensors"), vm, None)?;
    Ok(())
}

/// Sets the variables of `vm` whose names pass `keep` from the weights file `wp` (the `what`
/// weights); at least one must be there.
fn load_matching(
    wp: &Path,
    vm: &VarMap,
    what: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(), TrainError> {
    if set_vars(wp, vm, Some((what, keep)))? == 0 {
        return Err(TrainError::NothingToLoad {
            path: wp.to_path_buf(),
            what: what.to_string(),
        });
    }
    Ok(())
}

/// Some of a model's weights: their name in errors, and which variable names they are.
type Subset<'a> = (&'a str, &'a dyn Fn(&str) -> bool);

/// Sets the variables of `vm` from the weights file `wp`: every one, or (with `only`) the
/// `what` weights, those whose names pass `keep`. Each must be in the file with the model's
/// shape. Returns how many were set.
fn set_vars(wp: &Path, vm: &VarMap, only: Option<Subset>) -> Result<usize, TrainError> {
    let w = read_weights(wp, &Device::Cpu)?;
    let mut n = 0;
    for (name, var) in named_vars(vm) {
        if only.is_some_and(|(_, keep)| !keep(&name)) {
            continue;
        }
        let t = w.get(&name).ok_or_else(|| TrainError::MissingTensor {
            path: wp.to_path_buf(),
            name: name.clone(),
            needed_for: only.map(|(what, _)| what.to_string()),
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::TensorShape {
                path: wp.to_path_buf(),
                name,
                found: t.dims().to_vec(),
                expected: var.dims().to_vec(),
            });
        }
        var.set(t)?;
        n += 1;
    }
    Ok(n)
}
