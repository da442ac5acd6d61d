//! Reading sectors: the seam between the engine and whatever does the IO.
//!
//! The search asks for whole sectors by index; a [`SectorReader`] fetches
//! them. [`FileReader`] does it with `pread`, by default on a file opened
//! with `O_DIRECT` so that every read goes to the device and a benchmark
//! measures the disk, not the page cache. The server crate brings its own
//! io_uring implementation; tests use [`MemReader`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::SECTOR;

/// A heap buffer whose start is aligned to [`SECTOR`], as `O_DIRECT` requires.
///
/// Alignment is obtained without `unsafe`: over-allocate by one sector and
/// start at the first aligned byte.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to whole sectors).
    pub fn new(len: usize) -> Self {
        let len = len.div_ceil(SECTOR) * SECTOR;
        let raw = vec![0u8; len + SECTOR];
        let start = raw.as_ptr().align_offset(SECTOR).min(SECTOR);
        AlignedBuf { raw, start, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// One read: `buf.len() / SECTOR` consecutive sectors starting at `sector`.
#[derive(Debug)]
pub struct SectorRequest<'a> {
    pub sector: u64,
    pub buf: &'a mut [u8],
}

/// Reads sectors of one index file. Implementations may serve the requests
/// of one call in any order or concurrently; they return when all are done.
pub trait SectorReader: Send + Sync {
    fn read(&self, requests: &mut [SectorRequest<'_>]) -> std::io::Result<()>;
    /// A short name for reports ("pread-direct", "pread-buffered", ...).
    fn name(&self) -> &'static str;
}

/// `pread`-based reader, `O_DIRECT` by default.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    direct: bool,
    path: PathBuf,
}

impl FileReader {
    /// Opens `path` for sector reads; `direct` asks for `O_DIRECT`.
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        if direct {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| {
            if direct && e.raw_os_error() == Some(libc::EINVAL) {
                Error::io(
                    path,
                    std::io::Error::new(
                        e.kind(),
                        "this filesystem does not support O_DIRECT; open the index with buffered reads (--buffered)",
                    ),
                )
            } else {
                Error::io(path, e)
            }
        })?;
        Ok(FileReader {
            file,
            direct,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SectorReader for FileReader {
    fn read(&self, requests: &mut [SectorRequest<'_>]) -> std::io::Result<()> {
        for r in requests.iter_mut() {
            self.file.read_exact_at(r.buf, r.sector * SECTOR as u64)?;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        if self.direct {
            "pread-direct"
        } else {
            "pread-buffered"
        }
    }
}

/// Serves sectors from a copy of the file in memory.
#[derive(Debug, Clone)]
pub struct MemReader {
    bytes: Vec<u8>,
}

impl MemReader {
    pub fn new(bytes: Vec<u8>) -> Self {
        MemReader { bytes }
    }
    pub fn load(path: &Path) -> Result<Self> {
        Ok(MemReader {
            bytes: std::fs::read(path).map_err(|e| Error::io(path, e))?,
        })
    }
}

impl SectorReader for MemReader {
    fn read(&self, requests: &mut [SectorRequest<'_>]) -> std::io::Result<()> {
        for r in requests.iter_mut() {
            let at = r.sector as usize * SECTOR;
            let src = self.bytes.get(at..at + r.buf.len()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("sector {} past the end", r.sector),
                )
            })?;
            r.buf.copy_from_slice(src);
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, 5000, 65536] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % SECTOR, 0);
            assert!(b.len() >= len && b.len() % SECTOR == 0);
            b.as_mut_slice()[0] = 1;
        }
    }

    #[test]
    fn direct_and_buffered_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..4 * SECTOR).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mem = MemReader::new(data.clone());
        let mut want = AlignedBuf::new(SECTOR);
        mem.read(&mut [SectorRequest {
            sector: 2,
            buf: want.as_mut_slice(),
        }])
        .unwrap();
        for direct in [false, true] {
            let Ok(r) = FileReader::open(&p, direct) else {
                continue; // O_DIRECT unsupported here (e.g. some tmpfs): nothing to compare
            };
            let mut got = AlignedBuf::new(SECTOR);
            r.read(&mut [SectorRequest {
                sector: 2,
                buf: got.as_mut_slice(),
            }])
            .unwrap();
            assert_eq!(got.as_slice(), want.as_slice(), "direct = {direct}");
        }
        assert!(mem
            .read(&mut [SectorRequest {
                sector: 9,
                buf: want.as_mut_slice()
            }])
            .is_err());
    }
}
