//! A fill's temporary file, written around the page cache (`O_DIRECT`) where the filesystem
//! allows it.
//!
//! A buffered write of a blob puts every byte in a newly allocated page-cache page: the kernel's
//! copy and page work cost this process 1.2–1.6 s of system time per GiB on the reference machine
//! (`dd` with and without `oflag=direct`, docs/performance.md), more than moving the bytes
//! through the proxy at all, and the pages push other files out of the page cache. Written
//! directly, the disk reads the bytes from one reused, aligned block (0.1 s per GiB); the entry
//! reaches the page cache when a hit first reads it. Filesystems without direct I/O (a refusal at
//! `open`, or `EINVAL` on a write) get buffered writes, from the byte where direct writes stopped.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::pages::Pages;

/// Direct writes' alignment of memory, file offset and length: the largest logical block size
/// of common devices (512 and 4096 bytes both divide it).
pub const ALIGN: usize = 4096;
/// Bytes per direct write: large enough that one write in flight keeps a disk busy.
pub const BLOCK: usize = 4 << 20;

pub struct FillFile {
    file: File,
    /// `None`: buffered writes. `Some`: the block being gathered for the next direct write.
    block: Option<Block>,
    /// Bytes in the file so far (written, not counting the block's).
    at: u64,
}

/// An aligned buffer of [`BLOCK`] bytes (on huge pages where the kernel has them:
/// super::pages), and how much of it is filled.
struct Block {
    buf: Pages,
    filled: usize,
}

impl Block {
    fn new() -> std::io::Result<Block> {
        Ok(Block {
            buf: Pages::new(BLOCK)?,
            filled: 0,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[..BLOCK]
    }
}

impl FillFile {
    /// Creates `path` exclusively, locked; with direct writes when `direct` and the filesystem
    /// takes them.
    pub fn create(path: &Path, direct: bool) -> std::io::Result<FillFile> {
        let open = |flags: libc::c_int| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match direct {
            true => match open(libc::O_DIRECT) {
                Ok(f) => (f, true),
                // Refused (tmpfs before Linux 6.6, some network filesystems): buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
                Err(e) => return Err(e),
            },
            false => (open(0)?, false),
        };
        file.try_lock().map_err(std::io::Error::other)?;
        Ok(FillFile {
            file,
            block: if direct { Some(Block::new()?) } else { None },
            at: 0,
        })
    }

    /// Whether writes still go around the page cache.
    pub fn direct(&self) -> bool {
        self.block.is_some()
    }

    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        // Aligned in memory and at an aligned place in the file (a fill's own exchange reads
        // into such buffers: blob_cache::fetch::ChunkPool): written from where it is, after
        // what the block holds.
        let whole = data.len() - data.len() % ALIGN;
        let aligned = whole > 0 && data.as_ptr().align_offset(ALIGN) == 0;
        if aligned && self.block.as_ref().is_some_and(|b| b.filled % ALIGN == 0) {
            self.flush_block()?;
            let done = self.write_direct(&data[..whole])?;
            data = &data[done..];
        }
        while !data.is_empty() {
            let Some(block) = &mut self.block else {
                self.file.write_all(data)?;
                self.at += data.len() as u64;
                return Ok(());
            };
            let n = data.len().min(BLOCK - block.filled);
            let filled = block.filled;
            block.bytes()[filled..filled + n].copy_from_slice(&data[..n]);
            block.filled += n;
            data = &data[n..];
            if block.filled == BLOCK {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    /// Writes `data` (aligned in memory, a multiple of [`ALIGN`] long, at an aligned offset)
    /// straight to the file; how much it wrote. On `EINVAL` or a partial write the file goes on
    /// buffered, and the caller writes the rest.
    fn write_direct(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.block.is_none() {
            return Ok(0);
        }
        let done = write_aligned(&mut self.file, data)?;
        self.at += done as u64;
        if done < data.len() {
            // The block is empty (flushed before): the file goes on buffered from `at`.
            self.go_buffered(0)?;
        }
        Ok(done)
    }

    /// Writes the block's bytes, padded to the alignment (the file is cut to its length at
    /// [`FillFile::finish`]); on `EINVAL` the file goes on buffered from the same offset.
    fn flush_block(&mut self) -> std::io::Result<()> {
        let Some(block) = &mut self.block else {
            return Ok(());
        };
        let len = block.filled;
        let padded = len.next_multiple_of(ALIGN);
        block.bytes()[len..padded].fill(0);
        let done = write_aligned(&mut self.file, &block.bytes()[..padded])?;
        if done >= len {
            self.at += len as u64;
            block.filled = 0;
            return Ok(());
        }
        self.go_buffered(done)
    }

    /// Direct writes refused after `done` bytes of the gathered block reached the file: the
    /// rest of the block, and everything after it, goes buffered from the first byte not
    /// written.
    fn go_buffered(&mut self, done: usize) -> std::io::Result<()> {
        let Some(mut block) = self.block.take() else {
            return Ok(());
        };
        let filled = block.filled;
        let rest = block.bytes()[done..filled].to_vec();
        self.at += done as u64;
        self.buffered()?;
        // Whatever a refused or partial write left beyond `at` is not meant.
        self.file.set_len(self.at)?;
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(self.at))?;
        self.write(&rest)
    }

    /// Clears `O_DIRECT` on the open file.
    fn buffered(&self) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this value owns, with integer arguments only.
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let set = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) };
        if set < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes what is gathered, cuts the file to the `len` bytes written, and syncs it (data
    /// and length) to disk.
    pub fn finish(&mut self) -> std::io::Result<u64> {
        let padded = self.block.as_ref().is_some_and(|b| b.filled % ALIGN != 0);
        self.flush_block()?;
        if padded {
            self.file.set_len(self.at)?;
        }
        self.file.sync_data()?;
        Ok(self.at)
    }
}

/// Writes `data` with direct writes until it is all written or the file refuses (`EINVAL`),
/// or a write ends off the alignment (a partial direct write ends on a block boundary of the
/// device, not always of [`ALIGN`]): how much was written. The caller writes the rest buffered.
fn write_aligned(file: &mut File, data: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match file.write(&data[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) if n % ALIGN != 0 => return Ok(done + n),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;

    /// Writes `bytes` in `chunk`-sized pieces; what the file holds after `finish`.
    fn round_trip(dir: &Path, direct: bool, bytes: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        let path = dir.join(format!("f-{direct}-{}-{chunk}", bytes.len()));
        let mut f = FillFile::create(&path, direct).unwrap();
        for c in bytes.chunks(chunk) {
            f.write(c).unwrap();
        }
        assert_eq!(f.finish().unwrap(), bytes.len() as u64);
        let was_direct = f.direct();
        drop(f);
        (std::fs::read(&path).unwrap(), was_direct)
    }

    #[test]
    fn aligned_chunks_go_to_the_disk_from_where_they_are_and_the_rest_is_gathered() {
        let dir = Scratch::new("fill-file-aligned");
        let bytes = crate::testing::patterned(3 * BLOCK + 5000);
        let pool = crate::blob_cache::fetch::ChunkPool::default();
        let chunk = crate::blob_cache::fetch::CHUNK;
        // As a fill's own exchange writes: what came with the head (not aligned), a chunk to
        // the next chunk boundary, whole chunks, then ends that are not whole.
        let mut cuts = vec![100, chunk];
        while cuts.last().unwrap() + chunk < bytes.len() {
            cuts.push(cuts.last().unwrap() + chunk);
        }
        cuts.push(cuts.last().unwrap() + 5000);
        cuts.push(bytes.len());
        for direct in [true, false] {
            let path = dir.join(format!("aligned-{direct}"));
            let mut f = FillFile::create(&path, direct).unwrap();
            let mut from = 0;
            for &to in &cuts {
                let to = to.min(bytes.len());
                let mut c = pool.take(to - from).unwrap();
                c.room().copy_from_slice(&bytes[from..to]);
                let n = c.room().len();
                c.filled(n);
                f.write(&c.freeze()).unwrap();
                from = to;
            }
            assert_eq!(from, bytes.len());
            assert_eq!(f.finish().unwrap(), bytes.len() as u64);
            let stayed = f.direct();
            drop(f);
            assert!(std::fs::read(&path).unwrap() == bytes, "direct {direct}");
            if !direct {
                assert!(!stayed);
            }
        }
    }

    #[test]
    fn every_length_is_stored_exactly_direct_or_buffered() {
        let dir = Scratch::new("fill-file-lengths");
        // Empty, under one alignment unit, unaligned and aligned ends, more than a block.
        let lengths = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            BLOCK,
            BLOCK + 7,
            2 * BLOCK + ALIGN,
        ];
        for len in lengths {
            let bytes = crate::testing::patterned(len);
            for direct in [true, false] {
                for chunk in [1000, 65536, BLOCK + 3] {
                    let (got, was_direct) = round_trip(&dir.0, direct, &bytes, chunk);
                    assert!(got == bytes, "length {len}, direct {direct}, chunk {chunk}");
                    assert!(direct || !was_direct, "direct writes only when asked");
                }
            }
        }
    }

    #[test]
    fn a_file_that_stops_writing_directly_goes_on_buffered_from_the_same_byte() {
        let dir = Scratch::new("fill-file-switch");
        let bytes = crate::testing::patterned(2 * BLOCK + 12345);
        let path = dir.join("f");
        let mut f = FillFile::create(&path, true).unwrap();
        f.write(&bytes[..BLOCK + 100]).unwrap();
        // What a filesystem refusing the next direct write leads to (`EINVAL`): the gathered
        // bytes and the rest go buffered.
        f.go_buffered(0).unwrap();
        assert!(!f.direct());
        f.write(&bytes[BLOCK + 100..]).unwrap();
        assert_eq!(f.finish().unwrap(), bytes.len() as u64);
        drop(f);
        assert!(std::fs::read(&path).unwrap() == bytes);
    }

    #[test]
    fn the_file_is_created_exclusively_and_locked() {
        let dir = Scratch::new("fill-file-exclusive");
        let path = dir.join("f");
        let _f = FillFile::create(&path, true).unwrap();
        assert!(FillFile::create(&path, true).is_err());
        assert!(File::open(&path).unwrap().try_lock().is_err());
    }
}
