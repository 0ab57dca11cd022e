//! The default test set: synthetic shapes and sounds from a fixed seed that no training stream
//! uses, written once under `data/` and read by `mmlab eval` (without `--data`) and by every
//! ablation's evaluation.

use std::path::{Path, PathBuf};

use mmlab_datasets::{
    write_shapes, write_sounds, SceneConfig, ShapesDatasetConfig, SoundsDatasetConfig,
};

/// Seed of the default synthetic test set (no training stream uses it).
pub const DEFAULT_EVAL_SEED: u64 = 1_000_000_007;

/// Errors making the default test set.
#[derive(Debug, thiserror::Error)]
pub enum EvalDataError {
    /// No scene preset has this name.
    #[error("unknown scene preset {name:?} ({})", SceneConfig::PRESETS.join(", "))]
    UnknownScenes {
        /// The name given.
        name: String,
    },
    /// Its folder could not be created.
    #[error("creating {}", path.display())]
    Create {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The lock file beside it could not be opened.
    #[error("opening the lock file {}", path.display())]
    OpenLock {
        /// The lock file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Waiting for the lock failed.
    #[error("locking {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Writing the set failed.
    #[error("writing {}", dir.display())]
    Write {
        /// The set's folder.
        dir: PathBuf,
        /// What went wrong.
        source: mmlab_datasets::DatasetError,
    },
}

/// What [`default_data`] is doing, for the caller to show.
pub enum DefaultDataEvent<'a> {
    /// Another process holds the lock: waiting for it to finish writing `dir`.
    Waiting {
        /// The set's folder.
        dir: &'a Path,
    },
    /// Writing the set into `dir`: `items` images or clips in all.
    Writing {
        /// The set's folder.
        dir: &'a Path,
        /// Items to write.
        items: u64,
    },
    /// `n` more items written.
    Wrote(u64),
    /// The set is written.
    Written,
}

impl DefaultDataEvent<'_> {
    /// The line to show for this event (`None` for progress counts).
    pub fn message(&self) -> Option<String> {
        match self {
            DefaultDataEvent::Waiting { dir } => Some(format!(
                "waiting for another mmlab process writing {} ...",
                dir.display()
            )),
            DefaultDataEvent::Writing { dir, .. } => Some(format!(
                "writing the default synthetic test set to {} (seed {DEFAULT_EVAL_SEED}, once)",
                dir.display()
            )),
            DefaultDataEvent::Wrote(_) | DefaultDataEvent::Written => None,
        }
    }
}

/// Where the default synthetic test set lives (relative to the working directory).
pub fn default_data_root() -> PathBuf {
    PathBuf::from("data").join(format!("eval-{DEFAULT_EVAL_SEED}"))
}

/// The default test set for a task's modality (`audio`: sounds, else shapes), written on
/// first use; `on` hears what it does.
///
/// Several processes may start at once on a fresh checkout: one writes the set while holding a
/// lock file beside it, the others wait for the lock and then find the manifest.
pub fn default_data(
    audio: bool,
    on: &(dyn Fn(DefaultDataEvent) + Sync),
) -> Result<PathBuf, EvalDataError> {
    test_data("small", audio, on)
}

/// The test set of scene tier `scenes` (a [`SceneConfig::preset`] name; `small`, the aligned
/// tier, is the default test set): the same seed and sizes as the default set, its scenes drawn
/// by that preset, written once under `data/eval-<seed>-<scenes>/` (`small`: `data/eval-<seed>/`).
/// The sounds do not depend on the tier: every tier's audio set is the default one.
pub fn test_data(
    scenes: &str,
    audio: bool,
    on: &(dyn Fn(DefaultDataEvent) + Sync),
) -> Result<PathBuf, EvalDataError> {
    let scene = SceneConfig::preset(scenes).ok_or_else(|| EvalDataError::UnknownScenes {
        name: scenes.to_string(),
    })?;
    let root = if audio || scenes == "small" {
        default_data_root()
    } else {
        PathBuf::from("data").join(format!("eval-{DEFAULT_EVAL_SEED}-{scenes}"))
    };
    let dir = root.join(if audio { "sounds" } else { "shapes" });
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(|source| EvalDataError::Create {
        path: root.clone(),
        source,
    })?;
    let lock_path = root.join(if audio {
        ".sounds.lock"
    } else {
        ".shapes.lock"
    });
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| EvalDataError::OpenLock {
            path: lock_path.clone(),
            source,
        })?;
    if lock.try_lock().is_err() {
        on(DefaultDataEvent::Waiting { dir: &dir });
        lock.lock().map_err(|source| EvalDataError::Lock {
            path: lock_path.clone(),
            source,
        })?;
    }
    // Another process may have finished it while this one waited.
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    let sounds = SoundsDatasetConfig {
        seed: DEFAULT_EVAL_SEED,
        train_clips: 0,
        ..SoundsDatasetConfig::default()
    };
    let shapes = ShapesDatasetConfig {
        seed: DEFAULT_EVAL_SEED,
        scene,
        train_images: 0,
        ..ShapesDatasetConfig::default()
    };
    let items = if audio {
        sounds.total_items()
    } else {
        shapes.total_items()
    };
    on(DefaultDataEvent::Writing { dir: &dir, items });
    let progress = |n| on(DefaultDataEvent::Wrote(n));
    let written = if audio {
        write_sounds(&dir, &sounds, &progress)
    } else {
        write_shapes(&dir, &shapes, &progress)
    };
    written.map_err(|source| EvalDataError::Write {
        dir: dir.clone(),
        source,
    })?;
    on(DefaultDataEvent::Written);
    drop(lock);
    Ok(dir)
}
