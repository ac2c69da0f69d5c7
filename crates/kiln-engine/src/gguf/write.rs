//! The GGUF writer (version 3): metadata key/values of every GGUF type, the tensor table, the
//! data section aligned to `general.alignment` (32 unless set) with each tensor padded to it, and
//! the encoders for the types kiln exports (F32, F16, Q8_0). The file is written to a temp file
//! beside the target, fsynced and renamed over it, so a reader never sees a prefix.
//!
//! Layout (as llama.cpp's `gguf.cpp` and gguf-py's `GGUFWriter` write it): magic, version,
//! tensor count, kv count, the key/values, the tensor infos (name, n_dims, dims, type, offset
//! relative to the data section), zero padding to the alignment, then each tensor's bytes followed
//! by zero padding to the alignment.

use std::io::Write;
use std::path::Path;

use half::f16;

use super::quant::GgmlType;
use super::read::Value;
use super::{bad, GgufError};

/// Default data alignment of a GGUF file (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// A GGUF file being assembled in memory: key/values in insertion order, then tensors.
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    alignment: usize,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// The GGUF value type id of `v` (`gguf_type` in gguf.h).
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Arrays must hold one item type (nested arrays too): checked when a value is set.
fn check_homogeneous(v: &Value, key: &str) -> Result<(), GgufError> {
    if let Value::Array(items) = v {
        let item_ty = items.first().map_or(0, type_id);
        if let Some(i) = items.iter().position(|x| type_id(x) != item_ty) {
            return Err(bad(
                key,
                format!(
                    "array item {i} has type {} but item 0 has {item_ty}: GGUF arrays hold one type",
                    type_id(&items[i])
                ),
            ));
        }
        items.iter().try_for_each(|x| check_homogeneous(x, key))?;
    }
    Ok(())
}

/// The payload of `v` (without its type id). An empty array is written with item type u8 (it
/// reads back as the same empty array whatever the type).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|x| put_value(out, x));
        }
    }
}

/// The GGML type id written in the tensor table (`ggml_type` in ggml.h).
fn ggml_type_id(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_K => 12,
        GgmlType::Q5_K => 13,
        GgmlType::Q6_K => 14,
        GgmlType::BF16 => 30,
        GgmlType::Q4_0R8 | GgmlType::Q4_1R8 | GgmlType::Q8_0R8 => {
            unreachable!("refused by add_tensor")
        }
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Set `key` (replacing an earlier value). `general.alignment` must be a u32 power of two
    /// and sets the data alignment.
    pub fn set(&mut self, key: &str, value: Value) -> Result<(), GgufError> {
        check_homogeneous(&value, key)?;
        if key == "general.alignment" {
            match value {
                Value::U32(a) if a.is_power_of_two() && a <= 1 << 20 => self.alignment = a as usize,
                _ => {
                    return Err(bad(
                        key,
                        format!("{value:?}: must be a u32 power of two ≤ 1 MiB"),
                    ))
                }
            }
        }
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kv.push((key.to_string(), value)),
        }
        Ok(())
    }

    pub fn set_str(&mut self, key: &str, value: &str) -> Result<(), GgufError> {
        self.set(key, Value::Str(value.to_string()))
    }

    pub fn set_u32(&mut self, key: &str, value: u32) -> Result<(), GgufError> {
        self.set(key, Value::U32(value))
    }

    pub fn set_f32(&mut self, key: &str, value: f32) -> Result<(), GgufError> {
        self.set(key, Value::F32(value))
    }

    /// Add a tensor of already encoded bytes. `dims` are in GGUF order (`dims[0]` is the
    /// contiguous row length); `data` must be exactly the bytes `ty` takes for them.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let field = |f: &str| format!("tensor `{name}` {f}");
        if dims.is_empty() || dims.len() > 4 {
            return Err(bad(field("dims"), format!("{dims:?}: 1 to 4 dimensions")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad(field("name"), "appears twice"));
        }
        if ty.file_type() != ty {
            return Err(bad(
                field("type"),
                format!("{ty:?} is kiln's in-memory layout, not a GGUF type"),
            ));
        }
        if !dims[0].is_multiple_of(ty.block_elems() as u64) {
            return Err(bad(
                field("dims"),
                format!(
                    "row length {} is not a multiple of {ty:?}'s block of {}",
                    dims[0],
                    ty.block_elems()
                ),
            ));
        }
        let n: u64 = dims.iter().product();
        let want = n / ty.block_elems() as u64 * ty.block_bytes() as u64;
        if data.len() as u64 != want {
            return Err(bad(
                field("data"),
                format!("{} bytes, but {dims:?} of {ty:?} take {want}", data.len()),
            ));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// Add f32 values as a tensor of type `ty` (encoded by [`encode`]).
    pub fn add_f32(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<(), GgufError> {
        let n: u64 = dims.iter().product();
        if n != values.len() as u64 {
            return Err(bad(
                format!("tensor `{name}` dims"),
                format!("{dims:?} hold {n} values, got {}", values.len()),
            ));
        }
        if !dims
            .first()
            .is_some_and(|d| d.is_multiple_of(ty.block_elems() as u64))
        {
            return Err(bad(
                format!("tensor `{name}` dims"),
                format!(
                    "{dims:?}: rows must be whole {ty:?} blocks of {}",
                    ty.block_elems()
                ),
            ));
        }
        let data = encode(ty, values).map_err(|m| bad(format!("tensor `{name}` type"), m))?;
        self.add_tensor(name, dims, ty, data)
    }

    /// The whole file into `out`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut head = b"GGUF".to_vec();
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut head, k);
            head.extend(type_id(v).to_le_bytes());
            put_value(&mut head, v);
        }
        let a = self.alignment as u64;
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(ggml_type_id(t.ty).to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).div_ceil(a) * a;
        }
        let pad = |n: usize| vec![0u8; n.div_ceil(self.alignment) * self.alignment - n];
        if !self.tensors.is_empty() {
            head.extend(pad(head.len()));
        }
        out.write_all(&head)?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            out.write_all(&pad(t.data.len()))?;
        }
        Ok(())
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Write the file to `path` atomically (the engine's atomic write, as for checkpoints). A
    /// crash leaves the old file (or none) and at most a `.{name}.tmp-…` file.
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        crate::safetensors::write_file_atomic(
            path,
            |f| {
                let mut w = std::io::BufWriter::new(f);
                self.write_to(&mut w)?;
                w.flush()
            },
            |p, source| GgufError::Io {
                path: p.display().to_string(),
                source,
            },
        )?;
        Ok(())
    }
}

/// f32 values encoded as `ty` (F32, F16, BF16 or Q8_0; `values.len()` a multiple of the block).
pub fn encode(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, String> {
    if !values.len().is_multiple_of(ty.block_elems()) {
        return Err(format!(
            "{} values are not whole {ty:?} blocks of {}",
            values.len(),
            ty.block_elems()
        ));
    }
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Round to nearest even, as numpy's astype(float16) and ggml's fp32→fp16.
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| bf16_bits(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quantize_q8_0(values),
        other => {
            return Err(format!(
                "kiln does not encode {other:?} (F32, F16, BF16, Q8_0)"
            ))
        }
    })
}

/// fp32 → bf16 as ggml's `ggml_compute_fp32_to_bf16` (round to nearest even; NaN kept quiet).
fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Q8_0 by the format's rule (`quantize_row_q8_0_ref` in ggml-quants.c): per block of 32,
/// `d = max|x| / 127`, `q = round(x / d)` (half away from zero, via `x * (1/d)`), `d` stored as
/// f16. Bit-exact with gguf-py's `quants.quantize(…, Q8_0)` (tests/gguf_write.rs).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize, GgufFile};

    fn every_value_type() -> Vec<(&'static str, Value)> {
        vec![
            ("u8", Value::U8(200)),
            ("i8", Value::I8(-7)),
            ("u16", Value::U16(65_000)),
            ("i16", Value::I16(-30_000)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-2_000_000_000)),
            ("f32", Value::F32(1.5e-5)),
            ("bool", Value::Bool(true)),
            ("str", Value::Str("héllo ✓".into())),
            ("u64", Value::U64(u64::MAX - 1)),
            ("i64", Value::I64(i64::MIN + 1)),
            ("f64", Value::F64(-2.25e300)),
            (
                "arr.str",
                Value::Array(vec![Value::Str("a".into()), Value::Str("".into())]),
            ),
            ("arr.i32", Value::Array(vec![Value::I32(-1), Value::I32(3)])),
            ("arr.empty", Value::Array(vec![])),
            (
                "arr.nested",
                Value::Array(vec![
                    Value::Array(vec![Value::U8(1)]),
                    Value::Array(vec![Value::U8(2), Value::U8(3)]),
                ]),
            ),
        ]
    }

    #[test]
    fn round_trips_through_the_reader() {
        for alignment in [None, Some(64u32), Some(1)] {
            let mut w = GgufWriter::new();
            w.set_str("general.architecture", "test").unwrap();
            if let Some(a) = alignment {
                w.set("general.alignment", Value::U32(a)).unwrap();
            }
            for (k, v) in every_value_type() {
                w.set(k, v).unwrap();
            }
            let vals: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) * 0.37).collect();
            w.add_f32("a.f32", &[3], GgmlType::F32, &vals[..3]).unwrap();
            w.add_f32("b.q8", &[32, 3], GgmlType::Q8_0, &vals).unwrap();
            w.add_f32("c.f16", &[5, 2], GgmlType::F16, &vals[..10])
                .unwrap();
            w.add_f32("d.bf16", &[7], GgmlType::BF16, &vals[..7])
                .unwrap();
            let bytes = w.to_bytes();
            let g = GgufFile::from_bytes(bytes.clone()).unwrap();
            let a = alignment.unwrap_or(32) as usize;
            assert_eq!(g.alignment, a);
            assert_eq!(g.data_offset % a, 0);
            for (k, v) in every_value_type() {
                assert_eq!(g.get(k), Some(&v), "{k}");
            }
            assert_eq!(g.tensors.len(), 4);
            for t in &g.tensors {
                assert_eq!(t.start % a, 0, "{} not aligned", t.name);
            }
            // The file ends with the last tensor's padding.
            assert_eq!(bytes.len() % a, 0);
            let back = |name: &str| {
                let t = g.tensor(name).unwrap();
                dequantize(t.ty, g.tensor_bytes(t), t.n_elements() as usize).unwrap()
            };
            assert_eq!(back("a.f32"), &vals[..3]);
            assert_eq!(g.tensor("b.q8").unwrap().dims, vec![32, 3]);
            let q = back("b.q8");
            let max_err = q
                .iter()
                .zip(&vals)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // half a quantization step of the largest block (|x| ≤ 20.7 → step 0.163)
            assert!(max_err < 0.09, "{max_err}");
            let h = back("c.f16");
            assert!(h
                .iter()
                .zip(&vals)
                .all(|(a, b)| (a - b).abs() <= b.abs() * 1e-3));
            let bf = back("d.bf16");
            assert!(bf
                .iter()
                .zip(&vals)
                .all(|(a, b)| (a - b).abs() <= b.abs() * 8e-3));
        }
    }

    #[test]
    fn q8_0_follows_the_reference_rule() {
        let mut x = vec![0f32; 64];
        x[0] = 127.0;
        x[1] = 0.5; // exactly half a step: rounds away from zero
        x[2] = -0.5;
        x[3] = -127.0;
        // the second block is all zeros: d = 0, every q = 0
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 68);
        assert_eq!(
            f16::from_bits(u16::from_le_bytes([q[0], q[1]])).to_f32(),
            1.0
        );
        assert_eq!(q[2..6], [127, 1, 255, 129]);
        assert!(q[34..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut w = GgufWriter::new();
        let e = w.set("general.alignment", Value::U32(3)).unwrap_err();
        assert!(e.to_string().contains("general.alignment"), "{e}");
        let e = w
            .add_f32("x", &[16], GgmlType::Q8_0, &[0.0; 16])
            .unwrap_err();
        assert!(e.to_string().contains("tensor `x` dims"), "{e}");
        let e = w
            .add_tensor("y", &[4], GgmlType::F32, vec![0; 15])
            .unwrap_err();
        assert!(e.to_string().contains("tensor `y` data"), "{e}");
        w.add_f32("z", &[1], GgmlType::F32, &[1.0]).unwrap();
        let e = w.add_f32("z", &[1], GgmlType::F32, &[1.0]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let mixed = Value::Array(vec![Value::U8(1), Value::Str("a".into())]);
        let e = w.set("mixed", mixed).unwrap_err();
        assert!(
            e.to_string().contains("mixed") && e.to_string().contains("one type"),
            "{e}"
        );
    }

    #[test]
    fn type_ids_are_ggml_s() {
        use GgmlType::*;
        for t in [F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16] {
            assert_eq!(GgmlType::from_id(ggml_type_id(t)), Ok(t));
        }
    }

    #[test]
    fn write_is_atomic_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.set_str("general.architecture", "test").unwrap();
        w.write(&p).unwrap();
        w.set_str("general.name", "second").unwrap();
        w.write(&p).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.str("general.name").unwrap(), "second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.gguf")]);
    }
}
