//! Training input: files and folders of UTF-8 text. Folders are walked recursively (hidden entries
//! skipped, sorted order); a binary file (a NUL byte) is an error naming it unless `skip_binary`;
//! invalid UTF-8 is an error naming the file and line.

use crate::TokenizerError;
use std::path::{Path, PathBuf};

/// The files named by `paths`, folders expanded recursively. Missing paths are errors.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, TokenizerError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| TokenizerError::io(path, e))?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TokenizerError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TokenizerError::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TokenizerError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort();
    for path in paths {
        let meta = std::fs::metadata(&path).map_err(|e| TokenizerError::io(&path, e))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks bytes read from `path`: Ok(None) for a binary file when `skip_binary`.
pub fn text_from_bytes(
    path: &Path,
    bytes: Vec<u8>,
    skip_binary: bool,
) -> Result<Option<String>, TokenizerError> {
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        if skip_binary {
            tracing::warn!("skipping binary file {}", path.display());
            return Ok(None);
        }
        return Err(TokenizerError::Binary {
            path: path.to_path_buf(),
            offset,
        });
    }
    utf8_text(path, bytes).map(Some)
}

/// `bytes` as a String, or an error naming `path`, the line and byte offset of the first invalid
/// UTF-8 sequence.
pub fn utf8_text(path: &Path, bytes: Vec<u8>) -> Result<String, TokenizerError> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        TokenizerError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count(),
            offset,
        }
    })
}

/// Reads one text file (see [`text_from_bytes`]).
pub fn read_text_file(path: &Path, skip_binary: bool) -> Result<Option<String>, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    text_from_bytes(path, bytes, skip_binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_line() {
        let err = text_from_bytes(
            Path::new("x.txt"),
            b"ok\nfine\nbad \xff here\n".to_vec(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "x.txt:3: invalid UTF-8 (byte offset 12)");
    }

    #[test]
    fn binary_files_error_or_skip() {
        let err = text_from_bytes(Path::new("a.bin"), b"PK\x03\x04\x00".to_vec(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.bin") && err.contains("binary"), "{err}");
        assert!(text_from_bytes(Path::new("a.bin"), b"\x00".to_vec(), true)
            .unwrap()
            .is_none());
    }

    #[test]
    fn folders_are_walked_sorted_without_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "b").unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join(".hidden"), "h").unwrap();
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["b.txt", "sub/a.txt"]);
        let err = collect_files(&[dir.path().join("missing.txt")]).unwrap_err();
        assert!(err.to_string().contains("missing.txt"), "{err}");
    }
}
