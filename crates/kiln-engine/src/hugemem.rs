//! Anonymous memory on 2 MiB pages where the kernel allows it (transparent huge pages in
//! `madvise` or `always` mode). Two users (and the `gguf_speed` bandwidth probe, so that it reads
//! memory laid out as the weights are): the CPU backend's large buffers, whose GEMM packing
//! walks rows kilobytes apart, and GGUF weights read in for inference, streamed once per decoded
//! token. With 4 KiB pages both miss the TLB on nearly every page, and a hardware prefetcher
//! stops at every page boundary.

/// A zeroed private anonymous mapping whose start is 2 MiB aligned, huge pages requested (a
/// hint: the kernel may still use small pages). Unmapped on drop.
pub struct HugeMem {
    base: *mut libc::c_void,
    mapped: usize,
    start: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this value; sharing follows the usual `&`/`&mut` rules of the
// slices handed out.
unsafe impl Send for HugeMem {}
unsafe impl Sync for HugeMem {}

/// The huge page size on x86-64 and arm64 Linux.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

impl HugeMem {
    /// `len` zeroed bytes; None if mmap fails (callers fall back to the heap or a file map).
    pub fn new(len: usize) -> Option<HugeMem> {
        let mapped = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return None;
            }
            let start = (base as usize).next_multiple_of(HUGE_PAGE) as *mut u8;
            libc::madvise(
                start as *mut libc::c_void,
                len.next_multiple_of(4096),
                libc::MADV_HUGEPAGE,
            );
            Some(HugeMem {
                base,
                mapped,
                start,
                len,
            })
        }
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.start
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes from `start` lie inside the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.start, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }
    }
}

impl Drop for HugeMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.base, self.mapped);
        }
    }
}

/// Whether the kernel hands out huge pages on request:
/// `/sys/kernel/mm/transparent_hugepage/enabled` reads `[always]` or `[madvise]`.
pub(crate) fn offered() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_aligned_and_writable() {
        let mut m = HugeMem::new(3 * HUGE_PAGE + 5).unwrap();
        assert_eq!(m.as_mut_ptr() as usize % HUGE_PAGE, 0);
        assert!(m.bytes().iter().all(|&b| b == 0));
        let n = m.bytes().len();
        m.bytes_mut()[n - 1] = 7;
        assert_eq!(m.bytes()[n - 1], 7);
    }
}
