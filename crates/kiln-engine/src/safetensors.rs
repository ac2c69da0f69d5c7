//! The safetensors file format (8-byte little-endian header length, JSON header of
//! `name → {dtype, shape, data_offsets}`, raw little-endian data), read and written here directly:
//! the format is ~40 lines and this keeps f16/bf16 → f32 conversion and atomic writes in one place.
//! Writes go to a temp file in the same directory, are fsynced, then renamed ([`write_atomic`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::EngineError;

/// One tensor as f32 on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Write `tensors` (f32) plus string metadata atomically to `path`.
pub fn write(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut off = 0usize;
    for (name, shape, data) in tensors {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(EngineError::ckpt(
                path,
                format!("tensor {name}: shape {shape:?} but {} values", data.len()),
            ));
        }
        header.insert(
            (*name).to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4 * n]}),
        );
        off += 4 * n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| EngineError::ckpt(path, e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + off);
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for x in *data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` atomically (see [`write_file_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    write_file_atomic(path, |f| f.write_all(bytes), EngineError::io)
}

/// The engine's atomic write (checkpoints, GGUF exports): `fill` writes into a temp file in the
/// same directory (so the rename stays on one filesystem), which is fsynced, then renamed over
/// `path` (`tempfile`'s persist). A reader sees the old file or the new one, never a prefix; a
/// crash leaves at most a `.{name}.tmp-…` file beside it. `err` names the file an I/O error
/// happened on, in the caller's error type.
pub(crate) fn write_file_atomic<E>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    err: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    // what `File::create` gives under the usual umask (tempfile's default is 0600)
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut f = b.tempfile_in(dir).map_err(|e| err(dir, e))?;
    fill(f.as_file_mut())
        .and_then(|()| f.as_file().sync_all())
        .map_err(|e| err(f.path(), e))?;
    f.persist(path).map_err(|e| err(path, e.error))?;
    Ok(())
}

/// Read every tensor of a safetensors file as f32 (F32, F16 and BF16 are accepted), plus metadata.
pub fn read(path: &Path) -> Result<(Vec<Tensor>, BTreeMap<String, String>), EngineError> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let bad = |m: String| EngineError::ckpt(path, m);
    if bytes.len() < 8 {
        return Err(bad(format!("truncated: {} bytes, no header", bytes.len())));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if hlen > bytes.len() - 8 {
        return Err(bad(format!(
            "header length {hlen} exceeds file size {} (truncated or not safetensors)",
            bytes.len()
        )));
    }
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + hlen])
        .map_err(|e| bad(format!("bad safetensors header: {e}")))?;
    let data = &bytes[8 + hlen..];
    let mut meta = BTreeMap::new();
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            if let Some(m) = info.as_object() {
                for (k, v) in m {
                    meta.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("");
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("{name}: no shape")))?
            .iter()
            .map(|x| x.as_u64().map(|v| v as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("{name}: bad shape")))?;
        let offs = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad(format!("{name}: no data_offsets")))?;
        let (s, e) = (
            offs.first().and_then(|v| v.as_u64()).unwrap_or(0) as usize,
            offs.get(1).and_then(|v| v.as_u64()).unwrap_or(0) as usize,
        );
        if e > data.len() || s > e {
            return Err(bad(format!(
                "{name}: data {s}..{e} beyond {} data bytes (truncated?)",
                data.len()
            )));
        }
        let raw = &data[s..e];
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = match dtype {
            "F32" => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "BF16" => raw
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            _ => {
                // non-float buffers (e.g. HF's attention masks) are skipped
                continue;
            }
        };
        if vals.len() != n {
            return Err(bad(format!(
                "{name}: shape {shape:?} needs {n} values, data has {}",
                vals.len()
            )));
        }
        out.push(Tensor {
            name,
            shape,
            data: vals,
        });
    }
    Ok((out, meta))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // subnormal
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        write(
            &p,
            &[("x", &[2, 2], &[1.0, 2.0, 3.0, -4.5]), ("y", &[1], &[7.0])],
            &meta,
        )
        .unwrap();
        let (t, m) = read(&p).unwrap();
        assert_eq!(m["k"], "v");
        assert_eq!(
            t.iter().find(|t| t.name == "x").unwrap().data,
            vec![1.0, 2.0, 3.0, -4.5]
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&p, b"garbage!garbage").unwrap();
        assert!(read(&p).is_err());
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
    }
}
