//! File helpers shared across the crate: the one atomic write (temp file + rename).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation that failed, with the file it was on (the cause is the error's source).
#[derive(Debug, thiserror::Error)]
#[error("{path}")]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub source: std::io::Error,
}

/// The file error on `path` (for `map_err`).
pub fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part.
///
/// The bytes go to a temp file beside `path` whose name is unique to this process and call
/// (so two writers of the same file never share a temp file), which is then renamed over it.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path)(e)
    })
}

/// Removes the files and directories `names` from `dir` where they exist.
pub fn remove_all(dir: &Path, names: &[&str]) -> Result<(), FileError> {
    for name in names {
        let p = dir.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        };
        r.map_err(file_err(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("a.json");
        let e = atomic_write(&p, b"x").unwrap_err();
        assert!(e.path.starts_with(d.path().join("missing-dir")), "{e}");
    }
}
