//! The only host functions the guest can reach: a minimal `wasi_snapshot_preview1` written here
//! rather than a full WASI implementation, so that what the sandbox grants is this short list.
//!
//! Granted: argv (the program), stdout/stderr into capped buffers, stdin at end of file, an empty
//! environment, a clock that reads zero, deterministic bytes for `random_get`, `proc_exit`, and the
//! fd metadata the interpreter asks for at start-up. No preopened directories: `fd_prestat_get` answers
//! EBADF, so the guest knows of no file system and `open()` fails inside Python. Every other import
//! the module declares (any other WASI call: sockets, paths, polling) is linked to a stub
//! that returns ENOSYS / zero — instantiation never fails on a missing import, and nothing reaches
//! the host.

use wasmi::{Caller, Engine, Error, Extern, ExternType, Linker, Module, Val, ValType};

const WASI: &str = "wasi_snapshot_preview1";
const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const ENOSYS: i32 = 52;

/// Bytes of stderr kept from its start (beside the tail of `stderr_keep` bytes).
const STDERR_HEAD: usize = 4 << 10;

/// Per-call host state.
pub struct Host {
    args: Vec<Vec<u8>>,
    pub stdout: Vec<u8>,
    /// The first bytes of stderr (where a traceback with a huge message names its error).
    pub stderr_head: Vec<u8>,
    /// The last bytes of stderr after the head (where the traceback of the error that ended a
    /// program spamming stderr is).
    pub stderr: Vec<u8>,
    /// Bytes of stderr dropped between the head and the tail.
    pub stderr_dropped: bool,
    output_limit: usize,
    stderr_keep: usize,
    /// Set when stdout reached `output_limit` and the program was stopped there.
    pub output_overflow: bool,
    pub limits: crate::GrowthLimiter,
    rng: u64,
}

impl Host {
    pub fn new(
        args: Vec<Vec<u8>>,
        output_limit: usize,
        stderr_keep: usize,
        limits: crate::GrowthLimiter,
    ) -> Self {
        Host {
            args,
            stdout: Vec::new(),
            stderr_head: Vec::new(),
            stderr: Vec::new(),
            stderr_dropped: false,
            output_limit,
            stderr_keep,
            output_overflow: false,
            limits,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

fn memory(caller: &Caller<'_, Host>) -> Option<wasmi::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

/// `mem[ptr..ptr+len]`, or None when out of bounds (the guest passed a bad pointer: EFAULT).
fn slice(mem: &[u8], ptr: i32, len: usize) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len)?)
}

fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> bool {
    let start = ptr as u32 as usize;
    match start
        .checked_add(bytes.len())
        .and_then(|end| mem.get_mut(start..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Write `argv`-style lists (pointers array + NUL-terminated strings).
fn list_get(
    caller: &mut Caller<'_, Host>,
    items_of: fn(&Host) -> &[Vec<u8>],
    ptrs: i32,
    buf: i32,
) -> i32 {
    let Some(mem) = memory(caller) else {
        return EFAULT;
    };
    let (data, host) = mem.data_and_store_mut(caller);
    let mut at = buf as u32;
    for (i, item) in items_of(host).iter().enumerate() {
        if !put(data, ptrs.wrapping_add(4 * i as i32), &at.to_le_bytes()) {
            return EFAULT;
        }
        let mut z = item.clone();
        z.push(0);
        if !put(data, at as i32, &z) {
            return EFAULT;
        }
        at = at.wrapping_add(z.len() as u32);
    }
    ESUCCESS
}

fn list_sizes(
    caller: &mut Caller<'_, Host>,
    items_of: fn(&Host) -> &[Vec<u8>],
    count: i32,
    size: i32,
) -> i32 {
    let Some(mem) = memory(caller) else {
        return EFAULT;
    };
    let (data, host) = mem.data_and_store_mut(caller);
    let items = items_of(host);
    let n = items.len() as u32;
    let bytes: u32 = items.iter().map(|a| a.len() as u32 + 1).sum();
    if put(data, count, &n.to_le_bytes()) && put(data, size, &bytes.to_le_bytes()) {
        ESUCCESS
    } else {
        EFAULT
    }
}

fn args_of(h: &Host) -> &[Vec<u8>] {
    &h.args
}

fn env_of(_: &Host) -> &[Vec<u8>] {
    &[]
}

/// The buffers of an iovec list in guest memory (at most 1024, as POSIX's `IOV_MAX`), borrowed:
/// nothing is copied until the caller knows how much of it it keeps. (Copying them all into one
/// buffer first let one `writev` of 1024 views of a 1 MB string make the host allocate 1 GB.)
fn iov_slices(data: &[u8], iovs: i32, n: i32) -> Option<Vec<&[u8]>> {
    (0..(n as u32 as usize).min(1024))
        .map(|i| {
            let iov = slice(data, iovs.wrapping_add(8 * i as i32), 8)?;
            let ptr = i32::from_le_bytes(iov[0..4].try_into().ok()?);
            let len = u32::from_le_bytes(iov[4..8].try_into().ok()?) as usize;
            slice(data, ptr, len)
        })
        .collect()
}

fn fd_write(
    mut caller: Caller<'_, Host>,
    fd: i32,
    iovs: i32,
    n: i32,
    nwritten: i32,
) -> Result<i32, Error> {
    let Some(mem) = memory(&caller) else {
        return Ok(EFAULT);
    };
    let (data, host) = mem.data_and_store_mut(&mut caller);
    let Some(parts) = iov_slices(data, iovs, n) else {
        return Ok(EFAULT);
    };
    let total: usize = parts.iter().map(|p| p.len()).sum();
    match fd {
        1 => {
            for part in &parts {
                let room = host.output_limit.saturating_sub(host.stdout.len());
                host.stdout.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    // Stop here rather than let the program burn its fuel printing what nobody
                    // reads.
                    host.output_overflow = true;
                    return Err(Error::new("output limit"));
                }
            }
        }
        2 => {
            // A head and a tail are kept: copy at most that much of each buffer.
            let head_room = STDERR_HEAD.min(host.stderr_keep);
            for part in &parts {
                let to_head = part.len().min(head_room - host.stderr_head.len());
                host.stderr_head.extend_from_slice(&part[..to_head]);
                let rest = &part[to_head..];
                if rest.len() > host.stderr_keep {
                    host.stderr_dropped = true;
                }
                host.stderr
                    .extend_from_slice(&rest[rest.len().saturating_sub(host.stderr_keep)..]);
                if host.stderr.len() > host.stderr_keep {
                    let cut = host.stderr.len() - host.stderr_keep;
                    host.stderr.drain(..cut);
                    host.stderr_dropped = true;
                }
            }
        }
        _ => return Ok(EBADF),
    }
    let written = u32::try_from(total).unwrap_or(u32::MAX);
    if !put(data, nwritten, &written.to_le_bytes()) {
        return Ok(EFAULT);
    }
    Ok(ESUCCESS)
}

/// The linker for `module`: the granted functions above, stubs for every other import.
pub fn linker(engine: &Engine, module: &Module) -> Result<Linker<Host>, String> {
    let mut l = Linker::<Host>::new(engine);
    let e = |e: wasmi::errors::LinkerError| e.to_string();
    l.func_wrap(
        WASI,
        "args_get",
        |mut c: Caller<'_, Host>, p: i32, b: i32| list_get(&mut c, args_of, p, b),
    )
    .map_err(e)?;
    l.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: Caller<'_, Host>, n: i32, s: i32| list_sizes(&mut c, args_of, n, s),
    )
    .map_err(e)?;
    l.func_wrap(
        WASI,
        "environ_get",
        |mut c: Caller<'_, Host>, p: i32, b: i32| list_get(&mut c, env_of, p, b),
    )
    .map_err(e)?;
    l.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: Caller<'_, Host>, n: i32, s: i32| list_sizes(&mut c, env_of, n, s),
    )
    .map_err(e)?;
    l.func_wrap(WASI, "fd_write", fd_write).map_err(e)?;
    l.func_wrap(
        WASI,
        "fd_read",
        |mut c: Caller<'_, Host>, fd: i32, _iovs: i32, _n: i32, nread: i32| {
            // stdin is at end of file; nothing else is open.
            if fd != 0 {
                return EBADF;
            }
            let Some(mem) = memory(&c) else { return EFAULT };
            if put(mem.data_mut(&mut c), nread, &0u32.to_le_bytes()) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )
    .map_err(e)?;
    l.func_wrap(WASI, "proc_exit", |code: i32| -> Result<(), Error> {
        Err(Error::i32_exit(code))
    })
    .map_err(e)?;
    l.func_wrap(WASI, "fd_prestat_get", |_fd: i32, _p: i32| EBADF)
        .map_err(e)?;
    l.func_wrap(
        WASI,
        "fd_fdstat_get",
        |mut c: Caller<'_, Host>, fd: i32, p: i32| {
            if !(0..=2).contains(&fd) {
                return EBADF;
            }
            // filetype 2 = character device, no flags, all rights on the three std streams.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            let Some(mem) = memory(&c) else { return EFAULT };
            if put(mem.data_mut(&mut c), p, &stat) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )
    .map_err(e)?;
    l.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: Caller<'_, Host>, _id: i32, _prec: i64, p: i32| {
            // A frozen clock: no timing side channel, and runs are reproducible.
            let Some(mem) = memory(&c) else { return EFAULT };
            if put(mem.data_mut(&mut c), p, &0u64.to_le_bytes()) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )
    .map_err(e)?;
    l.func_wrap(
        WASI,
        "random_get",
        |mut c: Caller<'_, Host>, p: i32, len: i32| {
            // splitmix64: reproducible bytes (hash seeds), not a secret.
            let Some(mem) = memory(&c) else { return EFAULT };
            let (data, host) = mem.data_and_store_mut(&mut c);
            let len = len as u32 as usize;
            let start = p as u32 as usize;
            let Some(dst) = start
                .checked_add(len)
                .and_then(|end| data.get_mut(start..end))
            else {
                return EFAULT;
            };
            for b in dst.iter_mut() {
                host.rng = host.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = host.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                *b = (z ^ (z >> 31)) as u8;
            }
            ESUCCESS
        },
    )
    .map_err(e)?;
    // Everything else the module imports: a stub with the import's own signature.
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if defined(import.module(), import.name()) {
            continue;
        }
        let result_types: Vec<ValType> = ty.results().to_vec();
        l.func_new(
            import.module(),
            import.name(),
            ty.clone(),
            move |_c, _params, results| {
                for (i, (r, t)) in results.iter_mut().zip(&result_types).enumerate() {
                    *r = match t {
                        ValType::I32 if i == 0 => Val::I32(ENOSYS),
                        ValType::I32 => Val::I32(0),
                        ValType::I64 => Val::I64(0),
                        ValType::F32 => Val::F32(0f32.into()),
                        ValType::F64 => Val::F64(0f64.into()),
                        other => Val::default_for_ty(*other),
                    };
                }
                Ok(())
            },
        )
        .map_err(e)?;
    }
    Ok(l)
}

/// The imports defined above by name (the linker cannot be asked about host functions).
fn defined(module: &str, name: &str) -> bool {
    module == WASI
        && matches!(
            name,
            "args_get"
                | "args_sizes_get"
                | "environ_get"
                | "environ_sizes_get"
                | "fd_write"
                | "fd_read"
                | "proc_exit"
                | "fd_prestat_get"
                | "fd_fdstat_get"
                | "clock_time_get"
                | "random_get"
        )
}
