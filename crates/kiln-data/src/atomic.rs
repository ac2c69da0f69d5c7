//! Atomic file writes, the one helper kiln-data and kiln-tokenizer use: the content goes to
//! a temp file in the target's folder (same filesystem, so the rename is atomic), is synced, and
//! is renamed over the target. Readers see the old file or the new one, never half of one; a
//! failed or interrupted write leaves the target untouched (the temp file is removed on error;
//! after a SIGKILL a hidden `.tmp*` file may remain, which shard listings ignore).

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes a file atomically: `fill` writes the content into a temp file beside `path`, which is
/// then synced and renamed to `path`. The parent folder is created if missing. Errors from
/// `fill` pass through; I/O errors of the temp file and the rename convert with `From`.
pub fn write_file_atomic<E: From<std::io::Error>>(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A hidden name (`.tmpXXXXXX`): folder listings of shards skip it.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (see [`write_file_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file_atomic(path, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.txt"]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let r: std::io::Result<()> = write_file_atomic(&p, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
