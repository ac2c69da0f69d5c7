//! Training input: files and folders of UTF-8 text. Folders are walked recursively (hidden entries
//! skipped, sorted order); a binary file (a NUL byte) is an error naming it unless `skip_binary`;
//! invalid UTF-8 is an error naming the file and line. [`Corpus`] is what `kiln tok train` and
//! [`crate::train_from_files`] read: every file's text, with the end held out on request.

use crate::TokenizerError;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The texts of a set of input files, read in full (the held-out slice is the corpus's end, so
/// its size is known only once everything is read).
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Files read (binary files skipped with `skip_binary` included).
    pub files: usize,
    /// One text per file that had text, in [`collect_files`] order.
    pub texts: Vec<String>,
}

impl Corpus {
    /// Reads the files and folders of `paths` in parallel, with a byte progress bar on stderr
    /// when `progress`. A corpus without a single byte of text is an error.
    pub fn read(
        paths: &[PathBuf],
        skip_binary: bool,
        progress: bool,
    ) -> Result<Corpus, TokenizerError> {
        let files = collect_files(paths)?;
        let size = |f: &PathBuf| f.metadata().map(|m| m.len()).unwrap_or(0);
        let bar =
            crate::train::progress_bar(progress, files.iter().map(size).sum(), "reading", true);
        let texts: Vec<Option<String>> = files
            .par_iter()
            .map(|f| {
                let text = read_text_file(f, skip_binary);
                bar.inc(size(f));
                text
            })
            .collect::<Result<_, _>>()?;
        bar.finish_and_clear();
        let corpus = Corpus {
            files: files.len(),
            texts: texts.into_iter().flatten().collect(),
        };
        if corpus.bytes() == 0 {
            return Err(TokenizerError::EmptyCorpus(format!(
                "no text in {} ({} files)",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                corpus.files
            )));
        }
        Ok(corpus)
    }

    /// Bytes of text read.
    pub fn bytes(&self) -> usize {
        self.texts.iter().map(String::len).sum()
    }

    /// Splits the corpus into `(train, held_out)`: the held-out part is the last `fraction` of
    /// its bytes (possibly spanning files, cut at a character boundary), both in corpus order.
    pub fn split_holdout(&self, fraction: f64) -> (Vec<&str>, Vec<&str>) {
        let mut want = (self.bytes() as f64 * fraction) as usize;
        let mut held_out: Vec<&str> = Vec::new();
        let mut train: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        while want > 0 {
            let Some(last) = train.pop() else { break };
            if last.len() <= want {
                want -= last.len();
                held_out.push(last);
            } else {
                let mut cut = last.len() - want;
                while !last.is_char_boundary(cut) {
                    cut += 1;
                }
                held_out.push(&last[cut..]);
                train.push(&last[..cut]);
                want = 0;
            }
        }
        held_out.reverse();
        (train, held_out)
    }
}

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
    fn holdout_takes_the_end_of_the_corpus_at_char_boundaries() {
        let c = Corpus {
            files: 2,
            texts: vec!["abcd".into(), "éfgh".into()],
        };
        assert_eq!(c.split_holdout(0.0), (vec!["abcd", "éfgh"], vec![]));
        // 9 bytes × 0.5 = 4 bytes held out: the last file's "fgh" and the cut moves past é.
        assert_eq!(c.split_holdout(0.5), (vec!["abcd", "é"], vec!["fgh"]));
        assert_eq!(c.split_holdout(0.8), (vec!["ab"], vec!["cd", "éfgh"]));
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
