//! Memory for the buffers a fill's bytes are read into and written to the disk from: an
//! anonymous mapping of its own per buffer, page-aligned (so aligned for direct writes), and,
//! from 2 MiB up, aligned to 2 MiB and advised for transparent huge pages.
//!
//! A direct write pins every page of its buffer for the device, and the write's completion
//! unpins them, on whichever task the disk's interrupt lands. From 4 KiB pages that is 1,024 pins
//! and unpins per 4 MiB chunk; from 2 MiB pages, two. Measured on the reference machine
//! (docs/performance.md, "Several runs pooled, and huge pages under a fill's buffers"): 256 direct
//! writes of 4 MiB cost 46–51 ms of system time per GiB from small pages and 13–17 ms from huge
//! pages, and a whole 1 GiB fill 2–3 % less. Where the kernel has no transparent huge pages (or
//! has them off), the buffer is made of small pages, as any allocation would be. How hard the
//! kernel tries to find a huge page at the first touch is the host's
//! `/sys/kernel/mm/transparent_hugepage/defrag` (docs/blob-cache.md, Limits).

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A huge page's size and alignment on x86-64 and arm64 with 4 KiB base pages.
pub const HUGE: usize = 2 << 20;
/// The base page size every mapping is aligned to.
const PAGE: usize = 4096;

/// A zeroed buffer of its own anonymous mapping, unmapped when dropped.
pub struct Pages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Pages` owns its mapping outright, as a `Vec<u8>` owns its allocation: nothing else
// refers to it, and `&Pages` gives only shared access to the bytes.
#[allow(unsafe_code)]
unsafe impl Send for Pages {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zeroed bytes (rounded up to whole pages, at least one): page-aligned; from
    /// [`HUGE`] up, aligned to it and advised for huge pages. An error when the kernel refuses
    /// the mapping (out of memory or address space), where a vector's allocation would abort the
    /// process.
    pub fn new(len: usize) -> std::io::Result<Pages> {
        let len = len.max(1).next_multiple_of(PAGE);
        let huge = len >= HUGE;
        // Room to move the start to a huge page's boundary; the excess is unmapped below.
        let map = if huge { len + HUGE } else { len };
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        #[allow(unsafe_code)]
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = at as usize;
        let (start, head, tail) = trim(base, map, len, if huge { HUGE } else { PAGE });
        for (from, n) in [(base, head), (start + len, tail)] {
            if n > 0 {
                // SAFETY: whole pages of the mapping just made, outside the `len` bytes kept.
                #[allow(unsafe_code)]
                unsafe {
                    libc::munmap(from as *mut libc::c_void, n)
                };
            }
        }
        if huge {
            // Advice only: a kernel without transparent huge pages (or with them off) refuses or
            // ignores it, and the buffer is made of small pages.
            // SAFETY: the range is the mapping kept.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE)
            };
        }
        let ptr = NonNull::new(start as *mut u8)
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        Ok(Pages { ptr, len })
    }
}

/// Where `len` bytes aligned to `align` start in a mapping of `map` bytes at `base`, and how
/// many bytes of the mapping lie before and after them.
fn trim(base: usize, map: usize, len: usize, align: usize) -> (usize, usize, usize) {
    let start = base.next_multiple_of(align);
    let head = start - base;
    (start, head, map - head - len)
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable and writable at `ptr`, owned by this value for
        // its lifetime; an anonymous mapping starts zeroed, so every byte is initialized.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
        }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping kept in `new`, unmapped once; no reference to it outlives `self`.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_aligned_writable_and_huge_ones_on_huge_boundaries() {
        for len in [
            0,
            1,
            4095,
            4096,
            10_000,
            HUGE - 1,
            HUGE,
            4 << 20,
            (4 << 20) + 1,
        ] {
            let mut p = Pages::new(len).unwrap();
            assert!(
                p.len() >= len.max(1) && p.len().is_multiple_of(PAGE),
                "{len}"
            );
            assert!(p.len() < len + PAGE + 1, "{len}: {} bytes", p.len());
            assert_eq!(p.as_ptr() as usize % PAGE, 0, "{len}");
            if len >= HUGE {
                assert_eq!(p.as_ptr() as usize % HUGE, 0, "{len}");
            }
            assert!(p.iter().all(|&b| b == 0), "{len}");
            let n = p.len();
            p[0] = 1;
            p[n - 1] = 2;
            assert_eq!((p[0], p[n - 1]), (1, 2));
        }
    }

    #[test]
    fn an_aligned_buffer_keeps_only_its_own_bytes_of_the_mapping() {
        let len = 4 << 20;
        for base in [HUGE, HUGE + PAGE, 3 * HUGE - PAGE, 7 * HUGE + 5 * PAGE] {
            let (start, head, tail) = trim(base, len + HUGE, len, HUGE);
            assert_eq!(start % HUGE, 0);
            assert_eq!(start, base + head);
            assert!(head < HUGE);
            assert_eq!(head + len + tail, len + HUGE);
        }
        assert_eq!(trim(5 * PAGE, 3 * PAGE, 3 * PAGE, PAGE), (5 * PAGE, 0, 0));
    }
}
