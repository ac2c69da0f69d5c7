//! The GGUF reader: a cursor over the header that checks every length against what remains,
//! the metadata values, and the tensor table with each tensor's bytes bounds-checked inside the
//! memory map.

use std::collections::BTreeMap;
use std::path::Path;

use super::quant::GgmlType;
use super::{bad, GgufError};

/// A metadata value (GGUF value types 0–12).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type as u64 (negative → None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }
    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One tensor of the table: name, shape (GGUF order: `dims[0]` is the contiguous row length),
/// type, and where its bytes are (absolute offset into the file).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub start: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Bytes {
    Map(memmap2::Mmap),
    /// The file read into memory on huge pages ([`GgufFile::load`]).
    #[cfg(target_os = "linux")]
    Resident(crate::hugemem::HugeMem),
    #[cfg(test)]
    Vec(Vec<u8>),
}

impl Bytes {
    fn slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            #[cfg(target_os = "linux")]
            Bytes::Resident(m) => m.bytes(),
            #[cfg(test)]
            Bytes::Vec(v) => v,
        }
    }

    /// The bytes, where they are kiln's own memory (not a read-only map of the file).
    fn slice_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Bytes::Map(_) => None,
            #[cfg(target_os = "linux")]
            Bytes::Resident(m) => Some(m.bytes_mut()),
            #[cfg(test)]
            Bytes::Vec(v) => Some(v),
        }
    }
}

/// An open GGUF file: metadata, tensor table, and the mapped bytes.
pub struct GgufFile {
    bytes: Bytes,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Absolute offset where tensor data begins.
    pub data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

// Generous caps that no real model reaches; they turn a corrupt count into an error instead of
// a loop over billions of entries (allocation is separately bounded by the bytes that remain).
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: u32 = 2;
/// Items of one metadata array: 16× the largest vocabulary (Gemma 3's 262,144 tokens). Each item
/// is a 32-byte [`Value`] in memory, so without this a flipped bit in the count of a byte array
/// would let its items run through the tensor data: 32 bytes of memory per byte of the file.
const MAX_ARRAY_LEN: usize = 1 << 22;
/// Tensor names are shorter than ggml's `GGML_MAX_NAME` (llama.cpp refuses longer ones).
const MAX_NAME: usize = 64;
/// Tensors in one file (the largest models have tens of thousands).
const MAX_TENSORS: usize = 1 << 20;
/// Vectors sized by a count are reserved up to this many items and grown as items parse, so a
/// corrupt count that the bytes fail to back costs nothing before its error.
const MAX_RESERVE: usize = 4096;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(bad(
                field,
                format!(
                    "needs {n} bytes at offset {} but the file ends after {} (truncated?)",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, field)?.try_into().expect("length checked"))
    }
    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(field)?))
    }
    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(field)?))
    }
    /// A count that will size a loop/allocation of items at least `min_item` bytes each: it must
    /// fit in what remains.
    fn count(&mut self, field: &str, min_item: usize) -> Result<usize, GgufError> {
        let n = self.u64(field)?;
        let fits = (self.remaining() / min_item.max(1)) as u64;
        if n > fits {
            return Err(bad(
                field,
                format!(
                    "count {n} cannot fit in the {} bytes that remain",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, field: &str) -> Result<String, GgufError> {
        let n = self.count(field, 1)?;
        let s = self.take(n, field)?;
        String::from_utf8(s.to_vec()).map_err(|_| bad(field, "string is not valid UTF-8"))
    }
    /// A tensor name: at most [`MAX_NAME`] bytes, as llama.cpp's reader requires.
    fn name(&mut self, field: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let n = self.u64(field)?;
        if n >= MAX_NAME as u64 {
            return Err(bad(
                field,
                format!("a name of {n} bytes (llama.cpp's limit: {})", MAX_NAME - 1),
            ));
        }
        self.pos = at;
        self.string(field)
    }
    fn value(&mut self, ty: u32, field: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(field)?[0]),
            1 => Value::I8(self.arr::<1>(field)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(field)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(field)?)),
            4 => Value::U32(self.u32(field)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(field)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(field)?)),
            7 => match self.arr::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(bad(field, format!("bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::Str(self.string(field)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(field, "arrays nested too deeply"));
                }
                let item_ty = self.u32(field)?;
                let min = min_value_size(item_ty)
                    .ok_or_else(|| bad(field, format!("unknown array item type {item_ty}")))?;
                let n = self.count(field, min)?;
                if n > MAX_ARRAY_LEN {
                    return Err(bad(
                        field,
                        format!("an array of {n} items (at most {MAX_ARRAY_LEN})"),
                    ));
                }
                let mut items = Vec::with_capacity(n.min(MAX_RESERVE));
                for _ in 0..n {
                    items.push(self.value(item_ty, field, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(field)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(field)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(field)?)),
            t => return Err(bad(field, format!("unknown value type {t} (known: 0–12)"))),
        })
    }
}

/// The fewest bytes a value of type `ty` takes (strings and arrays: their u64 length).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl GgufFile {
    /// Memory-map and parse `path`: instant, for reading metadata and tensors a few times (for
    /// inference, [`load`](Self::load)).
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        Self::map(&file, path)
    }

    /// The map behind [`open`](Self::open), of a file already open.
    fn map(file: &std::fs::File, path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        // SAFETY: the map is read-only; kiln never writes to the file while it is mapped. A file
        // truncated by another process underneath would fault, as with every mmap reader.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(io)?;
        Self::parse(Bytes::Map(map))
    }

    /// Read `path` into memory for inference: the whole file, in memory the kernel is asked to
    /// back with 2 MiB pages (transparent huge pages). Decode streams every weight once per
    /// token; from a file mapping's 4 KiB pages Gemma-3-270M decoded at 32.3–32.9 tokens/s on
    /// one thread (AVX2 host, interleaved runs), from huge pages at 36.0–36.5 (2 threads:
    /// 55.2–55.3 → 62.2–62.4): a TLB miss and a stop of the hardware prefetcher at every 4 KiB
    /// page cost that much. The price is reading the file up front (0.3 s for its 290 MB).
    ///
    /// Falls back to [`open`](Self::open)'s map where the kernel offers no huge pages, off
    /// Linux, or when the file is larger than half the available memory (a model bigger than
    /// RAM still runs, paged in from the file).
    #[cfg(target_os = "linux")]
    pub fn load(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let fits = resident::available_bytes().is_some_and(|avail| len <= avail / 2);
        if len == 0 || !fits || !crate::hugemem::offered() {
            return Self::map(&file, path);
        }
        let Some(mut mem) = crate::hugemem::HugeMem::new(len as usize) else {
            return Self::map(&file, path);
        };
        resident::read_all(&file, mem.bytes_mut()).map_err(io)?;
        Self::parse(Bytes::Resident(mem))
    }

    /// [`open`](Self::open) off Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn load(path: &Path) -> Result<GgufFile, GgufError> {
        Self::open(path)
    }

    /// Parse a GGUF held in memory (tests build small files byte by byte).
    #[cfg(test)]
    pub(crate) fn from_bytes(b: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Bytes::Vec(b))
    }

    fn parse(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let b = bytes.slice();
        let mut c = Cursor { b, pos: 0 };
        let magic = c.arr::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(bad(
                "magic",
                format!("expected \"GGUF\", found {magic:02x?} (not a GGUF file)"),
            ));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(
                "version",
                format!("{version} is not supported (2 and 3 are)"),
            ));
        }
        // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
        // a key/value at least 8 (key len) + 4 (type) + 1.
        let n_tensors = c.count("tensor_count", 24)?;
        let n_kv = c.count("metadata_kv_count", 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("metadata `{key}` type"))?;
            let v = c.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(bad(
                        "general.alignment",
                        format!("{v:?} is not a power of two ≤ 1 MiB"),
                    ))
                }
            },
        };
        if n_tensors > MAX_TENSORS {
            return Err(bad(
                "tensor_count",
                format!("{n_tensors} tensors (at most {MAX_TENSORS})"),
            ));
        }
        let mut raw = Vec::with_capacity(n_tensors.min(MAX_RESERVE));
        for i in 0..n_tensors {
            let name = c.name(&format!("tensor #{i} name"))?;
            let field = |f: &str| format!("tensor `{name}` {f}");
            let n_dims = c.u32(&field("n_dims"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(
                    field("n_dims"),
                    format!("{n_dims} (must be 1..={MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&field("dims"))?);
            }
            let ty_id = c.u32(&field("type"))?;
            let ty = GgmlType::from_id(ty_id).map_err(|m| bad(field("type"), m))?;
            let offset = c.u64(&field("offset"))?;
            raw.push((name, dims, ty, offset));
        }
        // Vocab-only files (no tensors) may end right after the header, without padding.
        let data_offset = (c.pos.div_ceil(alignment) * alignment).min(if raw.is_empty() {
            b.len()
        } else {
            usize::MAX
        });
        if data_offset > b.len() {
            return Err(bad(
                "tensor data",
                format!(
                    "data section would start at {data_offset}, past the end ({})",
                    b.len()
                ),
            ));
        }
        let data_len = (b.len() - data_offset) as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let field = |f: &str| format!("tensor `{name}` {f}");
            let mut n: u64 = 1;
            for &d in &dims {
                n = n
                    .checked_mul(d)
                    .filter(|&n| n <= data_len * 8)
                    .ok_or_else(|| {
                        bad(
                            field("dims"),
                            format!("{dims:?} has more elements than the file could hold"),
                        )
                    })?;
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
            let n_bytes = n / ty.block_elems() as u64 * ty.block_bytes() as u64;
            if !offset.is_multiple_of(alignment as u64) {
                return Err(bad(
                    field("offset"),
                    format!("{offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if offset.checked_add(n_bytes).is_none_or(|end| end > data_len) {
                return Err(bad(
                    field("offset"),
                    format!(
                        "{offset} + {n_bytes} bytes runs past the end of the data section ({data_len} bytes)"
                    ),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                start: data_offset + offset as usize,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(GgufFile {
            bytes,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    fn all_bytes(&self) -> &[u8] {
        self.bytes.slice()
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.all_bytes()[t.start..t.start + t.n_bytes]
    }

    /// Repack the 2-D Q4_0 and Q4_1 tensors that `pick` chooses into kiln's decode layout
    /// ([`crate::cpu::quant::x8`]), in place: their type becomes the repacked one and the
    /// matrix kernels read them from then on. Only a file read into memory
    /// ([`load`](Self::load)) is changed (a file map is read-only); returns how many were
    /// repacked. Pick only tensors used as matrices, never ones read row by row (embeddings).
    /// A tensor whose bytes overlap another's (no writer makes such a file, but the format
    /// allows it) is left as it is: repacking it would rewrite the other's bytes.
    pub fn repack_rows8(&mut self, pick: impl Fn(&TensorInfo) -> bool) -> usize {
        use crate::cpu::quant::x8;
        let shared = overlapping(&self.tensors);
        let Some(bytes) = self.bytes.slice_mut() else {
            return 0;
        };
        let mut scratch = Vec::new();
        let mut n = 0;
        for (t, shared) in self.tensors.iter_mut().zip(shared) {
            let (Some(r8), &[cols, rows]) = (t.ty.rows8(), &t.dims[..]) else {
                continue;
            };
            let (rows, cols) = (rows as usize, cols as usize);
            if shared || !x8::repackable(t.ty, rows, cols) || !pick(t) {
                continue;
            }
            x8::repack(
                t.ty,
                &mut bytes[t.start..t.start + t.n_bytes],
                rows,
                cols,
                &mut scratch,
            );
            t.ty = r8;
            n += 1;
        }
        n
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string key.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .ok_or_else(|| bad(key, "missing"))?
            .as_str()
            .ok_or_else(|| bad(key, "is not a string"))
    }

    /// A required integer key.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .ok_or_else(|| bad(key, "missing"))?
            .as_u64()
            .ok_or_else(|| bad(key, "is not a non-negative integer"))
    }

    /// A required number key.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)
            .ok_or_else(|| bad(key, "missing"))?
            .as_f64()
            .ok_or_else(|| bad(key, "is not a number"))
    }
}

/// For each tensor, whether its bytes overlap another tensor's.
fn overlapping(tensors: &[TensorInfo]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].n_bytes > 0)
        .collect();
    order.sort_by_key(|&i| tensors[i].start);
    let mut shared = vec![false; tensors.len()];
    // The furthest end so far, and which tensor reaches it.
    let mut reach: Option<(usize, usize)> = None;
    for i in order {
        let t = &tensors[i];
        if let Some((end, j)) = reach {
            if t.start < end {
                shared[i] = true;
                shared[j] = true;
            }
        }
        let end = t.start + t.n_bytes;
        if reach.is_none_or(|(e, _)| end > e) {
            reach = Some((end, i));
        }
    }
    shared
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny GGUF writer for tests.
    pub(crate) struct Builder {
        pub kv: Vec<u8>,
        pub n_kv: u64,
        pub infos: Vec<u8>,
        pub n_tensors: u64,
        pub data: Vec<u8>,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                kv: vec![],
                n_kv: 0,
                infos: vec![],
                n_tensors: 0,
                data: vec![],
            }
        }
        fn s(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        pub fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
            Self::s(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(payload);
            self.n_kv += 1;
            self
        }
        pub fn kv_u32(self, key: &str, v: u32) -> Self {
            self.kv_raw(key, 4, &v.to_le_bytes())
        }
        pub fn kv_str(self, key: &str, v: &str) -> Self {
            let mut p = vec![];
            Self::s(&mut p, v);
            self.kv_raw(key, 8, &p)
        }
        pub fn kv_strs(self, key: &str, v: &[&str]) -> Self {
            let mut p = vec![];
            p.extend(8u32.to_le_bytes());
            p.extend((v.len() as u64).to_le_bytes());
            for s in v {
                Self::s(&mut p, s);
            }
            self.kv_raw(key, 9, &p)
        }
        /// A tensor whose data is appended (aligned to 32).
        pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) -> Self {
            while !self.data.len().is_multiple_of(32) {
                self.data.push(0);
            }
            Self::s(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(ty.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(data);
            self.n_tensors += 1;
            self
        }
        pub fn build(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(self.n_tensors.to_le_bytes());
            b.extend(self.n_kv.to_le_bytes());
            b.extend(&self.kv);
            b.extend(&self.infos);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(&self.data);
            b
        }
    }

    fn sample() -> Builder {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
            .kv_raw("flag", 7, &[1])
            .kv_raw("eps", 6, &1e-5f32.to_le_bytes())
            .tensor("w", &[3, 2], 0, &data)
            .tensor("v", &[2], 0, &data[..8])
    }

    /// Repacking leaves alone a tensor whose bytes another tensor also names.
    #[test]
    fn tensors_sharing_bytes_are_not_repacked() {
        let (rows, cols) = (8u64, 64u64);
        let q4_1: Vec<u8> = (0..rows * cols / 32 * 20).map(|i| i as u8).collect();
        let mut b = Builder::new().tensor("a", &[cols, rows], 3, &q4_1).tensor(
            "c",
            &[cols, rows],
            3,
            &q4_1,
        );
        // "b" names "a"'s bytes: the second tensor info, pointing at offset 0.
        Builder::s(&mut b.infos, "b");
        b.infos.extend(2u32.to_le_bytes());
        b.infos.extend(cols.to_le_bytes());
        b.infos.extend(rows.to_le_bytes());
        b.infos.extend(3u32.to_le_bytes());
        b.infos.extend(0u64.to_le_bytes());
        b.n_tensors += 1;
        let mut g = GgufFile::from_bytes(b.build()).unwrap();
        let a_bytes = g.tensor_bytes(g.tensor("a").unwrap()).to_vec();
        assert_eq!(g.repack_rows8(|_| true), 1);
        let ty = |g: &GgufFile, n: &str| g.tensor(n).unwrap().ty;
        assert_eq!(ty(&g, "a"), GgmlType::Q4_1);
        assert_eq!(ty(&g, "b"), GgmlType::Q4_1);
        assert_eq!(ty(&g, "c"), GgmlType::Q4_1R8);
        assert_eq!(g.tensor_bytes(g.tensor("a").unwrap()), &a_bytes[..]);
    }

    fn err(b: Vec<u8>) -> String {
        GgufFile::from_bytes(b).unwrap_err().to_string()
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let g = GgufFile::from_bytes(sample().build()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.get("flag"), Some(&Value::Bool(true)));
        assert_eq!(g.f64("eps").unwrap() as f32, 1e-5);
        let toks = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(toks[2], Value::Str("ab".into()));
        let w = g.tensor("w").unwrap();
        assert_eq!(w.dims, vec![3, 2]);
        assert_eq!(w.start % 32, 0);
        let got = crate::gguf::dequantize(w.ty, g.tensor_bytes(w), 6).unwrap();
        assert_eq!(got, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.tensor_bytes(g.tensor("v").unwrap()).len(), 8);
    }

    #[test]
    fn load_reads_what_open_maps() {
        let dir = tempfile::tempdir().unwrap();
        // An odd length (the parallel read splits it unevenly) and over a MiB of tensor data.
        let big: Vec<u8> = (0..(1 << 20) + 12u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let bytes = sample()
            .tensor("big", &[big.len() as u64 / 4], 0, &big)
            .build();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let (mapped, loaded) = (
            GgufFile::open(&path).unwrap(),
            GgufFile::load(&path).unwrap(),
        );
        assert_eq!(loaded.metadata, mapped.metadata);
        assert_eq!(loaded.tensors, mapped.tensors);
        assert_eq!(loaded.bytes.slice(), &bytes[..]);
        assert_eq!(loaded.tensor_bytes(loaded.tensor("big").unwrap()), &big[..]);

        #[cfg(target_os = "linux")]
        {
            let mut buf = vec![0u8; bytes.len()];
            resident::read_all(&std::fs::File::open(&path).unwrap(), &mut buf).unwrap();
            assert_eq!(buf, bytes);
        }

        // A truncated file fails the same way whichever way it is read.
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let (a, b) = (GgufFile::open(&path), GgufFile::load(&path));
        assert_eq!(a.unwrap_err().to_string(), b.unwrap_err().to_string());
        std::fs::write(&path, b"").unwrap();
        assert!(GgufFile::load(&path)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }

    #[test]
    fn a_file_without_tensors_needs_no_padding() {
        let b = Builder::new()
            .kv_str("tokenizer.ggml.model", "gpt2")
            .build();
        let header_len = 24 + 8 + 20 + 4 + 8 + 4;
        let g = GgufFile::from_bytes(b[..header_len].to_vec()).unwrap();
        assert!(g.tensors.is_empty());
        assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample().build();
        for n in 0..full.len() - 1 {
            // Cutting inside the tensor data is caught by the offset check; elsewhere by the cursor.
            assert!(
                GgufFile::from_bytes(full[..n].to_vec()).is_err(),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn bad_headers_name_the_field() {
        let mut b = sample().build();
        b[0] = b'X';
        assert!(err(b).contains("magic"));
        let mut b = sample().build();
        b[4] = 1;
        assert!(err(b).contains("version"));
        let mut b = sample().build();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(b).contains("tensor_count"));
        let mut b = sample().build();
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(b).contains("metadata_kv_count"));
        // A string length far past the end.
        let b = Builder::new()
            .kv_raw("s", 8, &(1u64 << 50).to_le_bytes())
            .build();
        let e = err(b);
        assert!(e.contains("metadata `s`") && e.contains("count"), "{e}");
        // An absurd array count.
        let mut p = 0u32.to_le_bytes().to_vec();
        p.extend(u64::MAX.to_le_bytes());
        assert!(err(Builder::new().kv_raw("a", 9, &p).build()).contains("metadata `a`"));
        // Unknown value type, unknown array item type.
        assert!(err(Builder::new().kv_raw("t", 99, &[0; 8]).build()).contains("unknown value type"));
        let mut p = 77u32.to_le_bytes().to_vec();
        p.extend(1u64.to_le_bytes());
        assert!(err(Builder::new().kv_raw("t", 9, &p).build()).contains("unknown array item type"));
        // Bool that is not 0/1.
        assert!(err(Builder::new().kv_raw("f", 7, &[2]).build()).contains("metadata `f`"));
    }

    #[test]
    fn counts_past_the_caps_are_errors_before_any_allocation() {
        // A byte array one item longer than the cap, every item present.
        let mut p = 0u32.to_le_bytes().to_vec();
        p.extend(((MAX_ARRAY_LEN + 1) as u64).to_le_bytes());
        p.resize(p.len() + MAX_ARRAY_LEN + 1, 0);
        let e = err(Builder::new().kv_raw("a", 9, &p).build());
        assert!(e.contains("metadata `a`") && e.contains("at most"), "{e}");
        // A tensor name as long as ggml's limit.
        let long = "x".repeat(MAX_NAME);
        let e = err(Builder::new().tensor(&long, &[4], 0, &[0; 16]).build());
        assert!(e.contains("tensor #0 name") && e.contains("limit"), "{e}");
        assert!(
            GgufFile::from_bytes(Builder::new().tensor(&long[1..], &[4], 0, &[0; 16]).build())
                .is_ok()
        );
    }

    #[test]
    fn bad_tensors_name_the_field() {
        let f32s = [0u8; 16];
        let e = err(Builder::new().tensor("x", &[4], 123, &f32s).build());
        assert!(e.contains("tensor `x` type") && e.contains("Q4_K"), "{e}");
        let e = err(Builder::new().tensor("x", &[8], 0, &f32s).build());
        assert!(
            e.contains("tensor `x` offset") && e.contains("past the end"),
            "{e}"
        );
        let e = err(Builder::new()
            .tensor("x", &[u64::MAX, u64::MAX], 0, &f32s)
            .build());
        assert!(e.contains("tensor `x` dims"), "{e}");
        let e = err(Builder::new()
            .tensor("x", &[4, 1, 1, 1, 1], 0, &f32s)
            .build());
        assert!(e.contains("tensor `x` n_dims"), "{e}");
        // Q8_0 rows must be whole blocks of 32.
        let e = err(Builder::new().tensor("x", &[16], 8, &[0; 34]).build());
        assert!(e.contains("tensor `x` dims") && e.contains("block"), "{e}");
        // Offset not aligned.
        let mut b = Builder::new().tensor("x", &[4], 0, &f32s);
        let at = b.infos.len() - 8;
        b.infos[at..].copy_from_slice(&4u64.to_le_bytes());
        assert!(err(b.build()).contains("alignment"));
        // A bad alignment value.
        let e = err(Builder::new().kv_u32("general.alignment", 3).build());
        assert!(e.contains("general.alignment"), "{e}");
    }
}

/// What [`GgufFile::load`] asks of the OS: how much memory is free, and a parallel read of the
/// file into the buffer.
#[cfg(target_os = "linux")]
mod resident {
    use std::fs::File;

    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    pub(super) fn available_bytes() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Fill `buf` from the start of `file`, a few threads each reading its own range (one
    /// thread spends as long faulting in and zeroing the fresh pages as copying into them).
    pub(super) fn read_all(file: &File, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let chunk = buf.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = buf
                .chunks_mut(chunk)
                .enumerate()
                .map(|(i, part)| s.spawn(move || file.read_exact_at(part, (i * chunk) as u64)))
                .collect();
            parts
                .into_iter()
                .try_for_each(|h| h.join().expect("a reader thread panicked"))
        })
    }
}
