//! Private working directories (0700 on Unix), emptied of a previous run's leftovers.

use std::path::{Path, PathBuf};

/// Removes `dir` if present and creates it afresh, readable only by this user.
pub fn fresh(dir: &Path) -> std::io::Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.recursive(true).create(dir)?;
    Ok(dir.to_path_buf())
}
