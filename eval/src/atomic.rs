//! Files written whole or not at all: a temporary file in the same folder, then a rename. The
//! temporary names are unique per process, thread and call, so concurrent writers never rename
//! each other's files away.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{EvalError, Result};

/// A temporary file name next to `name` that no other process or thread uses at the same time.
pub fn temp_name(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".{name}.tmp{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create a folder if needed and check a file can be written in it, before any work is done.
pub fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let probe = dir.join(temp_name("write-check"));
    std::fs::File::create(&probe).map_err(|e| EvalError::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Write a file atomically: a temporary file in the same folder, flushed to disk, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_parts_atomic(path, &[bytes], true)
}

/// Write the concatenation of `parts` atomically; `durable` also waits for the disk.
pub(crate) fn write_parts_atomic(path: &Path, parts: &[&[u8]], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(temp_name(&name));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(EvalError::io(path, e));
    }
    Ok(())
}
