//! WARC reading: WARC/1.0 and 1.1 records, plain or gzip-compressed per record (Common Crawl
//! style) or as one gzip stream, and the HTTP response inside a `response` record (status,
//! headers, chunked transfer encoding, gzip/deflate content encoding).
//!
//! Bad input never stops a file: a malformed header or a body cut short yields a [`Skip`] with a
//! reason and the reader resynchronises on the next `WARC/` line (plain files) or the next gzip
//! member (per-record gzip). A truncated gzip member ends the file with one counted skip, since
//! nothing after it can be found again reliably.

use flate2::bufread::GzDecoder;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// One WARC record: its named headers (lower-cased keys) and its raw block.
#[derive(Debug, Clone)]
pub struct Record {
    pub headers: Vec<(String, String)>,
    pub block: Vec<u8>,
}

impl Record {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a record (or the rest of a file) was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Short machine-readable reason, e.g. `truncated_gzip`, `malformed_warc_header`.
    pub reason: &'static str,
    pub detail: String,
}

/// An item read from a WARC file: a record or a skip.
pub type Item = Result<Record, Skip>;

/// Largest block accepted (bigger records are skipped as `record_too_large`).
pub const MAX_BLOCK: usize = 64 << 20;

/// Read every record of a WARC file (`.warc` or `.warc.gz`), calling `sink` for each record or
/// skip. Only an unreadable file is an error.
pub fn read_file(path: &Path, sink: &mut dyn FnMut(Item)) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    read_stream(&mut reader, sink)
}

/// Like [`read_file`] over any buffered reader (gzip detected from the magic bytes).
pub fn read_stream(reader: &mut dyn BufRead, sink: &mut dyn FnMut(Item)) -> std::io::Result<()> {
    let head = reader.fill_buf()?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        // One gzip member at a time: Common Crawl compresses each record separately, so a bad
        // member costs one record; a single-member file is read the same way.
        loop {
            if reader.fill_buf()?.is_empty() {
                return Ok(());
            }
            let mut member = Vec::new();
            let mut decoder = GzDecoder::new(&mut *reader).take(MAX_BLOCK as u64 * 4);
            match decoder.read_to_end(&mut member) {
                Ok(_) => {
                    let mut cursor = std::io::Cursor::new(member);
                    parse_records(&mut cursor, sink)?;
                }
                Err(e) => {
                    // Whatever decoded before the error may still hold whole records; the
                    // cut record itself is reported once, as the gzip error.
                    if !member.is_empty() {
                        let mut cursor = std::io::Cursor::new(member);
                        parse_records(&mut cursor, &mut |item: Item| {
                            if item.is_ok() {
                                sink(item)
                            }
                        })?;
                    }
                    sink(Err(Skip {
                        reason: "truncated_gzip",
                        detail: e.to_string(),
                    }));
                    return Ok(());
                }
            }
        }
    } else {
        parse_records(reader, sink)
    }
}

fn read_line(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    // Header lines are short; cap them so a binary blob cannot make one huge line.
    let n = reader.take(1 << 16).read_until(b'\n', line)?;
    Ok(n)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && (line[end - 1] == b'\n' || line[end - 1] == b'\r') {
        end -= 1;
    }
    &line[..end]
}

/// Parse uncompressed WARC records from `reader` until it ends.
fn parse_records(reader: &mut dyn BufRead, sink: &mut dyn FnMut(Item)) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut pending: Option<Vec<u8>> = None; // a `WARC/` line found while resynchronising
    loop {
        // Version line (skip blank lines between records).
        let version = match pending.take() {
            Some(v) => v,
            None => loop {
                if read_line(reader, &mut line)? == 0 {
                    return Ok(());
                }
                let t = trim_eol(&line);
                if !t.is_empty() {
                    break t.to_vec();
                }
            },
        };
        if !(version.starts_with(b"WARC/1.0") || version.starts_with(b"WARC/1.1")) {
            sink(Err(Skip {
                reason: "malformed_warc_header",
                detail: format!(
                    "expected WARC/1.0 or WARC/1.1, found {:?}",
                    String::from_utf8_lossy(&version[..version.len().min(40)])
                ),
            }));
            pending = resync(reader, &mut line)?;
            if pending.is_none() {
                return Ok(());
            }
            continue;
        }
        let mut headers = Vec::new();
        let mut bad = None;
        loop {
            if read_line(reader, &mut line)? == 0 {
                bad = Some("file ends inside the record header".to_string());
                break;
            }
            let t = trim_eol(&line);
            if t.is_empty() {
                break;
            }
            if t.starts_with(b"WARC/1.") {
                bad = Some("record header not terminated by a blank line".to_string());
                pending = Some(t.to_vec());
                break;
            }
            match t.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let key = String::from_utf8_lossy(&t[..colon])
                        .trim()
                        .to_ascii_lowercase();
                    let value = String::from_utf8_lossy(&t[colon + 1..]).trim().to_string();
                    headers.push((key, value));
                }
                None if t[0] == b' ' || t[0] == b'\t' => {
                    // Folded continuation line.
                    if let Some(last) = headers.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(String::from_utf8_lossy(t).trim());
                    }
                }
                None => {
                    bad = Some(format!(
                        "header line without a colon: {:?}",
                        String::from_utf8_lossy(&t[..t.len().min(40)])
                    ));
                    break;
                }
            }
        }
        if let Some(detail) = bad {
            sink(Err(Skip {
                reason: "malformed_warc_header",
                detail,
            }));
            if pending.is_none() {
                pending = resync(reader, &mut line)?;
                if pending.is_none() {
                    return Ok(());
                }
            }
            continue;
        }
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let Some(length) = length else {
            sink(Err(Skip {
                reason: "malformed_warc_header",
                detail: "missing or invalid Content-Length".into(),
            }));
            pending = resync(reader, &mut line)?;
            if pending.is_none() {
                return Ok(());
            }
            continue;
        };
        if length > MAX_BLOCK {
            sink(Err(Skip {
                reason: "record_too_large",
                detail: format!("Content-Length {length} > {MAX_BLOCK}"),
            }));
            std::io::copy(&mut reader.take(length as u64), &mut std::io::sink())?;
            continue;
        }
        let mut block = Vec::with_capacity(length);
        reader.take(length as u64).read_to_end(&mut block)?;
        if block.len() < length {
            sink(Err(Skip {
                reason: "truncated_record",
                detail: format!("block has {} of {length} bytes", block.len()),
            }));
            return Ok(());
        }
        sink(Ok(Record { headers, block }));
    }
}

/// Skip lines until one starts a WARC record; return it (or `None` at end of input).
fn resync(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if read_line(reader, line)? == 0 {
            return Ok(None);
        }
        let t = trim_eol(line);
        if t.starts_with(b"WARC/1.0") || t.starts_with(b"WARC/1.1") {
            return Ok(Some(t.to_vec()));
        }
    }
}

/// The HTTP response inside a `response` record.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    /// The payload, de-chunked and decompressed.
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse an HTTP/1.x response block (status line, headers, body).
pub fn parse_http(block: &[u8]) -> Result<HttpResponse, Skip> {
    let malformed = |detail: String| Skip {
        reason: "malformed_http",
        detail,
    };
    let end = find(block, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(block, b"\n\n").map(|i| (i, i + 2)))
        .ok_or_else(|| malformed("no blank line after the HTTP headers".into()))?;
    let head = String::from_utf8_lossy(&block[..end.0]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    if !status_line.starts_with("HTTP/") {
        return Err(malformed(format!(
            "status line {:?}",
            &status_line[..status_line.len().min(40)]
        )));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed(format!("status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = block[end.1..].to_vec();
    let has = |name: &str, value: &str| {
        headers
            .iter()
            .any(|(k, v)| k == name && v.to_ascii_lowercase().contains(value))
    };
    if has("transfer-encoding", "chunked") {
        body = dechunk(&body).ok_or_else(|| malformed("bad chunked encoding".into()))?;
    }
    if has("content-encoding", "gzip") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .take(MAX_BLOCK as u64)
            .read_to_end(&mut out)
            .map_err(|e| Skip {
                reason: "bad_content_encoding",
                detail: format!("gzip: {e}"),
            })?;
        body = out;
    } else if has("content-encoding", "deflate") {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&body[..])
            .take(MAX_BLOCK as u64)
            .read_to_end(&mut out)
            .map_err(|e| Skip {
                reason: "bad_content_encoding",
                detail: format!("deflate: {e}"),
            })?;
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Undo `Transfer-Encoding: chunked`. Crawlers often store the payload already de-chunked while
/// keeping the header, so a body that does not parse as chunks is returned unchanged.
fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut pos = 0;
    loop {
        let Some(eol) = find(&body[pos..], b"\r\n") else {
            return if pos == 0 {
                Some(body.to_vec())
            } else {
                Some(out)
            };
        };
        let size_str = String::from_utf8_lossy(&body[pos..pos + eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_str, 16) else {
            return if pos == 0 { Some(body.to_vec()) } else { None };
        };
        pos += eol + 2;
        if size == 0 {
            return Some(out);
        }
        let end = (pos + size).min(body.len());
        out.extend_from_slice(&body[pos..end]);
        pos = end + 2;
        if pos >= body.len() {
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(version: &str, kind: &str, payload: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "{version}\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:1>\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        r.extend_from_slice(payload);
        r.extend_from_slice(b"\r\n\r\n");
        r
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        read_stream(&mut std::io::Cursor::new(bytes), &mut |i| items.push(i)).unwrap();
        items
    }

    #[test]
    fn reads_plain_and_per_record_gzip_1_0_and_1_1() {
        let a = record("WARC/1.0", "response", b"HTTP/1.1 200 OK\r\n\r\nhello");
        let b = record("WARC/1.1", "request", b"GET / HTTP/1.1\r\n\r\n");
        let plain = [a.clone(), b.clone()].concat();
        let items = read_all(&plain);
        assert_eq!(items.len(), 2);
        let r = items[0].as_ref().unwrap();
        assert_eq!(r.header("WARC-Type"), Some("response"));
        assert!(r.block.ends_with(b"hello"));
        let gzipped = [gz(&a), gz(&b)].concat();
        let items = read_all(&gzipped);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.is_ok()));
    }

    #[test]
    fn truncated_gzip_keeps_earlier_records_and_counts_a_skip() {
        let a = gz(&record("WARC/1.0", "response", b"HTTP/1.1 200 OK\r\n\r\nx"));
        let b = gz(&record("WARC/1.0", "response", &[b'y'; 5000]));
        let mut bytes = [a, b].concat();
        bytes.truncate(bytes.len() - 30);
        let items = read_all(&bytes);
        assert!(items[0].is_ok());
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().reason,
            "truncated_gzip"
        );
    }

    #[test]
    fn malformed_header_is_skipped_and_reader_resyncs() {
        let good = record("WARC/1.0", "response", b"HTTP/1.1 200 OK\r\n\r\nok");
        let mut bytes = b"GARBAGE LINE\r\nmore garbage\r\n".to_vec();
        bytes.extend_from_slice(&good);
        bytes.extend_from_slice(b"WARC/1.0\r\nWARC-Type: response\r\nno colon here\r\n\r\n");
        bytes.extend_from_slice(&good);
        bytes.extend_from_slice(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: abc\r\n\r\n");
        bytes.extend_from_slice(&good);
        let items = read_all(&bytes);
        let reasons: Vec<_> = items
            .iter()
            .map(|i| i.as_ref().err().map(|s| s.reason).unwrap_or("ok"))
            .collect();
        assert_eq!(
            reasons,
            [
                "malformed_warc_header",
                "ok",
                "malformed_warc_header",
                "ok",
                "malformed_warc_header",
                "ok"
            ]
        );
    }

    #[test]
    fn truncated_block_is_counted() {
        let mut bytes = record("WARC/1.0", "response", &[b'z'; 100]);
        bytes.truncate(bytes.len() - 50);
        let items = read_all(&bytes);
        assert_eq!(items[0].as_ref().unwrap_err().reason, "truncated_record");
    }

    #[test]
    fn http_chunked_and_gzip_bodies_are_decoded() {
        let r = parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("content-type"), Some("text/html"));
        let mut block = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n".to_vec();
        block.extend_from_slice(&gz(b"<p>zipped</p>"));
        assert_eq!(parse_http(&block).unwrap().body, b"<p>zipped</p>");
        assert_eq!(parse_http(b"garbage").unwrap_err().reason, "malformed_http");
    }

    #[test]
    fn reads_the_real_iana_crawl() {
        // Needs the fetched `pywb` source (`kiln data fetch`; CI fetches it first).
        let dir = crate::fetch::source_dir("pywb").unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("pywb-2.10.0/sample_archive/warcs/iana.warc.gz");
        let mut kinds = std::collections::BTreeMap::new();
        read_file(&path, &mut |item| {
            let r = item.expect("the real crawl has no bad records");
            *kinds
                .entry(r.header("warc-type").unwrap_or("?").to_string())
                .or_insert(0) += 1;
        })
        .unwrap();
        assert_eq!(kinds.get("response"), Some(&48), "{kinds:?}");
        assert_eq!(kinds.get("revisit"), Some(&123), "{kinds:?}");
        assert_eq!(kinds.get("request"), Some(&171), "{kinds:?}");
    }
}
