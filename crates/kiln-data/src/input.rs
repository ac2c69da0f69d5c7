//! Inputs of `kiln data process`: WARC files, folders of HTML pages, JSONL and parquet files,
//! planned into numbered *units* (one file, or a group of HTML files) in a fixed order so that
//! every task of a distributed run sees the same plan and takes units `i, i+N, i+2N, …`.
//!
//! Reading a unit yields documents and counted skips; only an unreadable file is an error.

use crate::config::InputConfig;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a WARC, JSONL, parquet or HTML file, nor a folder")]
    Unknown { path: PathBuf },
    #[error("{0}")]
    Shard(#[from] crate::shards::ShardError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSource {
    Warc(PathBuf),
    Jsonl(PathBuf),
    Parquet(PathBuf),
    Html { root: PathBuf, files: Vec<PathBuf> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub index: usize,
    pub source: UnitSource,
}

impl Unit {
    /// A short description for logs and stats.
    pub fn describe(&self) -> String {
        match &self.source {
            UnitSource::Warc(p) | UnitSource::Jsonl(p) | UnitSource::Parquet(p) => {
                p.display().to_string()
            }
            UnitSource::Html { root, files } => format!(
                "{} ({} HTML files from {})",
                root.display(),
                files.len(),
                files
                    .first()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Warc,
    Jsonl,
    Parquet,
    Html,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    if name.ends_with(".warc") || name.ends_with(".warc.gz") {
        Some(Kind::Warc)
    } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".json.gz")
    {
        Some(Kind::Jsonl)
    } else if name.ends_with(".parquet") {
        Some(Kind::Parquet)
    } else if name.ends_with(".html") || name.ends_with(".htm") || name.ends_with(".xhtml") {
        Some(Kind::Html)
    } else {
        None
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if kind_of(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

/// Plan the units of all inputs, in argument order then path order.
pub fn plan_units(inputs: &[PathBuf], cfg: &InputConfig) -> Result<Vec<Unit>, InputError> {
    let mut sources = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(io_err(input))?;
        let (root, files) = if meta.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)?;
            (input.clone(), files)
        } else {
            if kind_of(input).is_none() {
                return Err(InputError::Unknown {
                    path: input.clone(),
                });
            }
            (
                input.parent().map(Path::to_path_buf).unwrap_or_default(),
                vec![input.clone()],
            )
        };
        let mut html = Vec::new();
        for f in files {
            match kind_of(&f) {
                Some(Kind::Warc) => sources.push(UnitSource::Warc(f)),
                Some(Kind::Jsonl) => sources.push(UnitSource::Jsonl(f)),
                Some(Kind::Parquet) => sources.push(UnitSource::Parquet(f)),
                Some(Kind::Html) => html.push(f),
                None => {}
            }
        }
        for chunk in html.chunks(cfg.html_files_per_unit.max(1)) {
            sources.push(UnitSource::Html {
                root: root.clone(),
                files: chunk.to_vec(),
            });
        }
    }
    Ok(sources
        .into_iter()
        .enumerate()
        .map(|(index, source)| Unit { index, source })
        .collect())
}

/// What a document carries before extraction.
#[derive(Debug, Clone)]
pub enum Payload {
    Html {
        bytes: Vec<u8>,
        content_type: Option<String>,
    },
    Text(String),
}

#[derive(Debug, Clone)]
pub struct RawDoc {
    pub id: String,
    pub url: String,
    pub payload: Payload,
}

/// One item read from a unit.
#[derive(Debug, Clone)]
pub enum ReadItem {
    Doc(RawDoc),
    /// A document (or record) dropped while reading.
    Skip {
        id: String,
        url: String,
        reason: &'static str,
        detail: String,
        bytes: usize,
    },
    /// A record that is not a document (WARC request/metadata…): counted, not dropped.
    Note(String),
}

fn is_html_type(ct: &str) -> bool {
    let ct = ct.to_ascii_lowercase();
    ct.contains("text/html") || ct.contains("application/xhtml")
}

fn read_warc(
    path: &Path,
    cfg: &InputConfig,
    sink: &mut dyn FnMut(ReadItem),
) -> Result<(), InputError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut n = 0usize;
    crate::warc::read_file(path, &mut |item| {
        n += 1;
        let record = match item {
            Ok(r) => r,
            Err(skip) => {
                sink(ReadItem::Skip {
                    id: format!("{name}#record{n}"),
                    url: String::new(),
                    reason: skip.reason,
                    detail: skip.detail,
                    bytes: 0,
                });
                return;
            }
        };
        let kind = record
            .header("warc-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if kind != "response" {
            sink(ReadItem::Note(format!("warc_{kind}_records")));
            return;
        }
        let id = record
            .header("warc-record-id")
            .map(|s| s.trim_matches(['<', '>']).to_string())
            .unwrap_or_else(|| format!("{name}#record{n}"));
        let url = record
            .header("warc-target-uri")
            .unwrap_or("")
            .trim_matches(['<', '>'])
            .to_string();
        let bytes = record.block.len();
        let skip = |reason: &'static str, detail: String| ReadItem::Skip {
            id: id.clone(),
            url: url.clone(),
            reason,
            detail,
            bytes,
        };
        let http = match crate::warc::parse_http(&record.block) {
            Ok(h) => h,
            Err(s) => return sink(skip(s.reason, s.detail)),
        };
        if cfg.require_2xx && !(200..300).contains(&http.status) {
            return sink(skip("http_status", format!("HTTP {}", http.status)));
        }
        let content_type = http.header("content-type").map(str::to_string);
        let html_like = match (&content_type, record.header("warc-identified-payload-type")) {
            (_, Some(t)) => is_html_type(t),
            (Some(ct), None) => is_html_type(ct),
            (None, None) => {
                let head =
                    String::from_utf8_lossy(&http.body[..http.body.len().min(512)]).to_lowercase();
                head.contains("<html") || head.contains("<!doctype html")
            }
        };
        if !html_like {
            return sink(skip(
                "non_html",
                content_type.unwrap_or_else(|| "no content type".into()),
            ));
        }
        sink(ReadItem::Doc(RawDoc {
            id,
            url,
            payload: Payload::Html {
                bytes: http.body,
                content_type,
            },
        }));
    })
    .map_err(io_err(path))
}

fn read_jsonl(
    path: &Path,
    cfg: &InputConfig,
    sink: &mut dyn FnMut(ReadItem),
) -> Result<(), InputError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn Read> = if path.to_string_lossy().ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                sink(ReadItem::Skip {
                    id: format!("{name}:{}", n + 1),
                    url: String::new(),
                    reason: "truncated_gzip",
                    detail: e.to_string(),
                    bytes: 0,
                });
                return Ok(());
            }
        }
        n += 1;
        let fallback_id = format!("{name}:{n}");
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let skip = |reason: &'static str, detail: String| ReadItem::Skip {
            id: fallback_id.clone(),
            url: String::new(),
            reason,
            detail,
            bytes: line.len(),
        };
        let Ok(text) = std::str::from_utf8(&line) else {
            sink(skip("invalid_utf8", format!("line {n}")));
            continue;
        };
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                sink(skip("malformed_json", format!("line {n}: {e}")));
                continue;
            }
        };
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let Some(body) = field(&cfg.text_field) else {
            sink(skip(
                "missing_text",
                format!("line {n}: no string field `{}`", cfg.text_field),
            ));
            continue;
        };
        let id = field(&cfg.id_field)
            .or_else(|| {
                value
                    .get(&cfg.id_field)
                    .filter(|v| v.is_number())
                    .map(|v| format!("{name}:{v}"))
            })
            .unwrap_or(fallback_id);
        sink(ReadItem::Doc(RawDoc {
            id,
            url: field(&cfg.url_field).unwrap_or_default(),
            payload: Payload::Text(body),
        }));
    }
}

fn read_parquet(
    path: &Path,
    cfg: &InputConfig,
    sink: &mut dyn FnMut(ReadItem),
) -> Result<(), InputError> {
    let texts = crate::shards::read_text_column(path, &cfg.text_field)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let ids = crate::shards::read_text_column(path, &cfg.id_field)
        .ok()
        .filter(|v| v.len() == texts.len());
    let urls = crate::shards::read_text_column(path, &cfg.url_field)
        .ok()
        .filter(|v| v.len() == texts.len());
    for (row, text) in texts.into_iter().enumerate() {
        sink(ReadItem::Doc(RawDoc {
            id: ids
                .as_ref()
                .map_or_else(|| format!("{name}#{row}"), |v| v[row].clone()),
            url: urls.as_ref().map_or_else(String::new, |v| v[row].clone()),
            payload: Payload::Text(text),
        }));
    }
    Ok(())
}

fn read_html(
    root: &Path,
    files: &[PathBuf],
    sink: &mut dyn FnMut(ReadItem),
) -> Result<(), InputError> {
    let root_name = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for f in files {
        let bytes = std::fs::read(f).map_err(io_err(f))?;
        let rel = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/");
        sink(ReadItem::Doc(RawDoc {
            id: format!("{root_name}/{rel}"),
            url: format!("file:///{rel}"),
            payload: Payload::Html {
                bytes,
                content_type: None,
            },
        }));
    }
    Ok(())
}

/// Read every document of a unit.
pub fn read_unit(
    unit: &Unit,
    cfg: &InputConfig,
    sink: &mut dyn FnMut(ReadItem),
) -> Result<(), InputError> {
    match &unit.source {
        UnitSource::Warc(p) => read_warc(p, cfg, sink),
        UnitSource::Jsonl(p) => read_jsonl(p, cfg, sink),
        UnitSource::Parquet(p) => read_parquet(p, cfg, sink),
        UnitSource::Html { root, files } => read_html(root, files, sink),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_units_in_a_fixed_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for f in [
            "b.html",
            "a.html",
            "sub/c.htm",
            "x.jsonl",
            "notes.txt",
            "w.warc.gz",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let cfg = InputConfig {
            html_files_per_unit: 2,
            ..Default::default()
        };
        let units = plan_units(&[d.to_path_buf()], &cfg).unwrap();
        let kinds: Vec<String> = units
            .iter()
            .map(|u| match &u.source {
                UnitSource::Warc(_) => "warc".into(),
                UnitSource::Jsonl(_) => "jsonl".into(),
                UnitSource::Parquet(_) => "parquet".into(),
                UnitSource::Html { files, .. } => format!("html{}", files.len()),
            })
            .collect();
        assert_eq!(kinds, ["warc", "jsonl", "html2", "html1"]);
        assert!(plan_units(&[d.join("notes.txt")], &cfg)
            .unwrap_err()
            .to_string()
            .contains("notes.txt"));
    }

    #[test]
    fn jsonl_bad_lines_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let mut bytes =
            b"{\"text\": \"hello\", \"url\": \"http://a.example/\", \"id\": \"one\"}\n{not json}\n"
                .to_vec();
        bytes.extend_from_slice(b"{\"text\": \"bad \xff\"}\n{\"other\": 1}\n{\"text\": \"two\"}\n");
        std::fs::write(&p, bytes).unwrap();
        let unit = Unit {
            index: 0,
            source: UnitSource::Jsonl(p),
        };
        let mut got = Vec::new();
        read_unit(&unit, &InputConfig::default(), &mut |i| {
            got.push(match i {
                ReadItem::Doc(d) => format!("doc:{}", d.id),
                ReadItem::Skip { reason, .. } => format!("skip:{reason}"),
                ReadItem::Note(n) => n,
            })
        })
        .unwrap();
        assert_eq!(
            got,
            [
                "doc:one",
                "skip:malformed_json",
                "skip:invalid_utf8",
                "skip:missing_text",
                "doc:d.jsonl:5"
            ]
        );
    }

    #[test]
    fn parquet_input_keeps_ids_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let doc = |t: &str, id: &str| crate::textshard::TextDoc {
            text: t.into(),
            id: id.into(),
            url: format!("http://{id}.example/"),
            language: "en".into(),
            language_score: 1.0,
        };
        crate::textshard::write_text_shard(&p, &[doc("one", "a"), doc("two", "b")]).unwrap();
        let unit = Unit {
            index: 0,
            source: UnitSource::Parquet(p),
        };
        let mut got = Vec::new();
        read_unit(&unit, &InputConfig::default(), &mut |i| {
            if let ReadItem::Doc(d) = i {
                let Payload::Text(t) = d.payload else {
                    panic!("text payload")
                };
                got.push(format!("{}|{}|{t}", d.id, d.url));
            }
        })
        .unwrap();
        assert_eq!(got, ["a|http://a.example/|one", "b|http://b.example/|two"]);
    }
}
