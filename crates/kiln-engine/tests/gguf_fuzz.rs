//! The GGUF reader against thousands of seeded mutations of real headers: the tiny qwen2/qwen3
//! fixtures (gguf-py's writer) and, when fetched, SmolLM2-135M's and Gemma-3-270M's (llama.cpp's
//! converter; the test fails saying so when they are missing, as the other model tests do).
//! Every mutated file is opened, and when it opens, loaded as a model ([`LlamaModel::new`]). The
//! test asserts, for every case:
//! - no panic (each case runs under `catch_unwind`; a panic fails the test naming the mutation);
//! - no allocation larger than the file could justify: a counting global allocator records the
//!   largest single allocation, which must stay under [`alloc_cap`] of the file's length;
//! - an error names what was wrong: every `Err` is `GGUF <field>: …` or an I/O error.
//!
//! Mutations, all from one seed so a failure replays: every truncation of the first 4 KiB (and
//! a sample further into the header), random bit flips, and structure-aware ones from a walk of
//! the valid header: each count, length, type, n_dims, dim and tensor offset overwritten with
//! hostile values (0, 1, 2^31, 2^32 + 1, 2^62, 2^63, u64::MAX, the file's length, …), dims
//! whose product overflows, and `general.alignment` set to 0, 3, 2^40.
//! `cargo fuzz` needs nightly, which this workspace does not use, so this is a seeded loop in a
//! normal test. Data sections are sparse files (zeros), so the big models cost only their header.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_engine::gguf::{GgufFile, Value};
use kiln_engine::llama::LlamaModel;
use kiln_engine::Rng;

/// Records the largest single allocation of the current thread.
struct CountingAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while a thread is being torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The largest allocation a file of `len` bytes may cause: a metadata array holds at most one
/// item per byte that remains and at most 2^22 items (the reader's cap), an item in memory
/// ([`Value`]) is 32 bytes; 1 MiB of slack for fixed-size buffers. So 32 bytes per byte of a
/// small file, and never more than 129 MiB however large the file.
fn alloc_cap(len: u64) -> usize {
    std::mem::size_of::<Value>() * (len as usize).min(1 << 22) + (1 << 20)
}

/// A header field the walk found: where, how wide, and what it is.
#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: usize,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// tensor_count, metadata_kv_count, a string length, an array count.
    Count,
    /// A value type, array item type or tensor type.
    Type,
    NDims,
    Dim,
    Offset,
    /// The value of `general.alignment`.
    Alignment,
}

/// Walks a valid header; returns its fields and where the tensor table ends.
fn walk(b: &[u8]) -> (Vec<Field>, usize) {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    let mut f = Vec::new();
    let mut p = 8;
    let field = |f: &mut Vec<Field>, at, width, kind| f.push(Field { at, width, kind });
    field(&mut f, p, 8, Kind::Count);
    field(&mut f, p + 8, 8, Kind::Count);
    let (n_tensors, n_kv) = (u64_at(p), u64_at(p + 8));
    p += 16;
    fn value(b: &[u8], p: &mut usize, ty: u32, f: &mut Vec<Field>, alignment: bool) {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => {
                if alignment {
                    f.push(Field {
                        at: *p,
                        width: 4,
                        kind: Kind::Alignment,
                    });
                }
                *p += 4
            }
            10..=12 => *p += 8,
            8 => {
                f.push(Field {
                    at: *p,
                    width: 8,
                    kind: Kind::Count,
                });
                *p += 8 + u64_at(*p) as usize;
            }
            9 => {
                f.push(Field {
                    at: *p,
                    width: 4,
                    kind: Kind::Type,
                });
                f.push(Field {
                    at: *p + 4,
                    width: 8,
                    kind: Kind::Count,
                });
                let (item, n) = (u32_at(*p), u64_at(*p + 4));
                *p += 12;
                // Long arrays: only the first items' fields (the rest are alike).
                for i in 0..n {
                    let mut sink = Vec::new();
                    let out = if i < 4 { &mut *f } else { &mut sink };
                    value(b, p, item, out, false);
                }
            }
            t => panic!("walk: value type {t} in a valid header"),
        }
    }
    for _ in 0..n_kv {
        let key_len = u64_at(p) as usize;
        field(&mut f, p, 8, Kind::Count);
        let key = &b[p + 8..p + 8 + key_len];
        p += 8 + key_len;
        field(&mut f, p, 4, Kind::Type);
        let ty = u32_at(p);
        p += 4;
        value(b, &mut p, ty, &mut f, key == b"general.alignment");
    }
    for _ in 0..n_tensors {
        field(&mut f, p, 8, Kind::Count);
        p += 8 + u64_at(p) as usize;
        field(&mut f, p, 4, Kind::NDims);
        let n_dims = u32_at(p) as usize;
        p += 4;
        for d in 0..n_dims {
            field(&mut f, p + 8 * d, 8, Kind::Dim);
        }
        p += 8 * n_dims;
        field(&mut f, p, 4, Kind::Type);
        field(&mut f, p + 4, 8, Kind::Offset);
        p += 12;
    }
    (f, p)
}

/// A real file's header (through the end of the tensor table) and the file's length.
struct Seed {
    name: String,
    header: Vec<u8>,
    len: u64,
    fields: Vec<Field>,
}

fn seed(path: &Path) -> Seed {
    let len = std::fs::metadata(path).unwrap().len();
    // Headers are a few MiB at most (vocabularies); read enough, walk, keep the header.
    let mut head = vec![0u8; len.min(16 << 20) as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    let (fields, end) = walk(&head);
    head.truncate(end);
    Seed {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        header: head,
        len,
        fields,
    }
}

/// One file on disk, rewritten per case: the header bytes, then zeros (sparse) up to `len`.
struct Target {
    path: PathBuf,
    _dir: tempfile::TempDir,
    cases: usize,
    opened: usize,
    loaded: usize,
    largest: usize,
    largest_case: String,
    failures: Vec<String>,
}

impl Target {
    fn new() -> Target {
        let dir = tempfile::tempdir().unwrap();
        Target {
            path: dir.path().join("case.gguf"),
            _dir: dir,
            cases: 0,
            opened: 0,
            loaded: 0,
            largest: 0,
            largest_case: String::new(),
            failures: Vec::new(),
        }
    }

    fn check(&mut self, header: &[u8], len: u64, what: &str) {
        self.cases += 1;
        {
            let mut f = File::create(&self.path).unwrap();
            f.write_all(&header[..header.len().min(len as usize)])
                .unwrap();
            f.set_len(len).unwrap();
        }
        LARGEST.with(|l| l.set(0));
        let path = self.path.clone();
        let r = catch_unwind(AssertUnwindSafe(|| match GgufFile::open(&path) {
            Err(e) => (false, false, Some(e.to_string())),
            Ok(file) => match LlamaModel::new(Arc::new(file)) {
                Ok(_) => (true, true, None),
                Err(_) => (true, false, None),
            },
        }));
        let largest = LARGEST.with(|l| l.get());
        if largest > self.largest {
            self.largest = largest;
            self.largest_case = what.to_string();
        }
        match r {
            Err(_) => self.failures.push(format!("{what}: panicked")),
            Ok((opened, loaded, err)) => {
                self.opened += opened as usize;
                self.loaded += loaded as usize;
                if let Some(e) = err {
                    if !e.starts_with("GGUF ") || e.len() < 12 {
                        self.failures.push(format!("{what}: unclear error {e:?}"));
                    }
                }
            }
        }
        if largest > alloc_cap(len) {
            self.failures.push(format!(
                "{what}: allocated {largest} bytes at once for a file of {len}"
            ));
        }
    }
}

const HOSTILE: [u64; 12] = [
    0,
    1,
    2,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    (1 << 32) + 1,
    1 << 40,
    1 << 62,
    1 << 63,
    u64::MAX,
    u64::MAX - 7,
];

fn put(b: &mut [u8], f: Field, v: u64) {
    b[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
}

/// `random_cases` mutations of `s` and `cuts` truncations past its first 4 KiB.
fn fuzz(t: &mut Target, s: &Seed, rng: &mut Rng, random_cases: usize, cuts: usize) {
    let n = s.header.len();
    // Unmutated, it must open (and load: every seed is a model kiln runs).
    let (failures, loaded) = (t.failures.len(), t.loaded);
    t.check(&s.header, s.len, &format!("{}: unmutated", s.name));
    assert!(
        t.failures.len() == failures && t.loaded == loaded + 1,
        "{}: the seed itself does not load: {:?}",
        s.name,
        &t.failures[failures..]
    );
    // Truncations: every offset of the first 4 KiB, then a sample through the header.
    for cut in (0..n.min(4096)).chain((0..cuts).map(|_| rng.below(n as u64) as usize)) {
        t.check(
            &s.header,
            cut as u64,
            &format!("{}: truncated at {cut}", s.name),
        );
    }
    let mut b = s.header.clone();
    for i in 0..random_cases {
        let what;
        let mut touched = Vec::new();
        match i % 4 {
            // Bit flips anywhere in the header.
            0 => {
                let flips = 1 + rng.below(8) as usize;
                for _ in 0..flips {
                    let at = rng.below(n as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                    touched.push(at);
                }
                what = format!("{}: case {i}, bit flips at {touched:?}", s.name);
            }
            // A field of the walk set to a hostile value, the file's length, the most 4-byte
            // items that fit, or a small change of its own value.
            1 | 2 => {
                let f = s.fields[rng.below(s.fields.len() as u64) as usize];
                let mut old = [0u8; 8];
                old[..f.width].copy_from_slice(&b[f.at..f.at + f.width]);
                let v = match rng.below(4) {
                    0 => HOSTILE[rng.below(HOSTILE.len() as u64) as usize],
                    1 => s.len + rng.below(64),
                    // The largest count of 4-byte items that still fits in the file.
                    2 => (s.len - f.at as u64) / 4,
                    _ => u64::from_le_bytes(old)
                        .wrapping_add(rng.below(5))
                        .wrapping_sub(2),
                };
                put(&mut b, f, v);
                touched.extend(f.at..f.at + f.width);
                what = format!("{}: case {i}, {:?} at {} set to {v}", s.name, f.kind, f.at);
            }
            // Dims whose product overflows, or an alignment that is no power of two.
            _ => {
                let dims: Vec<Field> = s
                    .fields
                    .iter()
                    .copied()
                    .filter(|f| f.kind == Kind::Dim)
                    .collect();
                let align: Vec<Field> = s
                    .fields
                    .iter()
                    .copied()
                    .filter(|f| f.kind == Kind::Alignment)
                    .collect();
                if !align.is_empty() && rng.below(4) == 0 {
                    let f = align[0];
                    let v = [0, 3, 1 << 31, 48][rng.below(4) as usize];
                    put(&mut b, f, v);
                    touched.extend(f.at..f.at + f.width);
                    what = format!("{}: case {i}, alignment {v}", s.name);
                } else {
                    let k = rng.below(dims.len() as u64 - 1) as usize;
                    for f in [dims[k], dims[k + 1]] {
                        put(&mut b, f, (1 << 32) + 1);
                        touched.extend(f.at..f.at + f.width);
                    }
                    what = format!(
                        "{}: case {i}, dims at {} and {} overflow",
                        s.name,
                        dims[k].at,
                        dims[k + 1].at
                    );
                }
            }
        }
        t.check(&b, s.len, &what);
        for at in touched {
            b[at] = s.header[at];
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen")
        .join(name)
}

fn fetched(model: &str) -> PathBuf {
    kiln_data::models::resolve_model(model)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("{model}: run `kiln models fetch {model}`"))
}

#[test]
fn mutated_headers_are_errors_never_panics_or_huge_allocations() {
    let t0 = std::time::Instant::now();
    let mut rng = Rng::new(13);
    let mut t = Target::new();
    // The big headers cost ~15 ms (SmolLM2, 1.8 MB) and ~60 ms (Gemma, 6.5 MB) a case.
    for (path, cases, cuts) in [
        (fixture("qwen2-tiny.gguf"), 2000, 200),
        (fixture("qwen3-tiny.gguf"), 2000, 200),
        (fetched("smollm2-135m"), 120, 40),
        (fetched("gemma-3-270m"), 30, 10),
    ] {
        let t1 = std::time::Instant::now();
        let s = seed(&path);
        fuzz(&mut t, &s, &mut rng, cases, cuts);
        eprintln!(
            "{}: {}-byte header, {:.1}s",
            s.name,
            s.header.len(),
            t1.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "{} cases in {:.1}s: {} opened, {} loaded as models; largest allocation {} bytes ({})",
        t.cases,
        t0.elapsed().as_secs_f64(),
        t.opened,
        t.loaded,
        t.largest,
        t.largest_case
    );
    assert!(
        t.failures.is_empty(),
        "{} failures, the first ones:\n{}",
        t.failures.len(),
        t.failures[..t.failures.len().min(20)].join("\n")
    );
}
