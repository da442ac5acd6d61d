//! Reading sectors: the seam between the engine and whatever does the IO.
//!
//! The search asks for whole sectors by index; a [`SectorReader`] fetches
//! them. Both file readers open the index with `O_DIRECT` by default, so
//! every read goes to the device and a benchmark measures the disk, not the
//! page cache:
//!
//! | reader | how | when |
//! |---|---|---|
//! | [`UringReader`] | the W reads of a round submitted together to io_uring, awaited together | default where io_uring works |
//! | [`FileReader`] | one blocking `pread` after another | fallback (io_uring blocked by seccomp or `io_uring_disabled`) |
//! | [`MemReader`] | copies from a buffer | tests |
//!
//! [`open_reader`] with [`IoBackend::Auto`] probes io_uring and falls back to
//! `pread`, saying so once on stderr. Its `unsafe` code hands buffers to
//! the kernel; the engine's other `unsafe` blocks are `metric`'s SIMD
//! kernels, `data`'s file mapping and `pq`'s prefetch hint.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;

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

/// Which file reader to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring if it can be set up here, else `pread` (with one note on stderr).
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// Blocking `pread`.
    Pread,
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "uring" | "io_uring" => Ok(IoBackend::Uring),
            "pread" => Ok(IoBackend::Pread),
            _ => Err(format!(
                "unknown IO backend {s:?}: expected auto, uring or pread"
            )),
        }
    }
}

fn open_file(path: &Path, direct: bool) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path).map_err(|e| {
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
    })
}

/// Opens `path` with the requested backend.
pub fn open_reader(path: &Path, direct: bool, backend: IoBackend) -> Result<Box<dyn SectorReader>> {
    match backend {
        IoBackend::Pread => Ok(Box::new(FileReader::open(path, direct)?)),
        IoBackend::Uring => Ok(Box::new(UringReader::open(path, direct)?)),
        IoBackend::Auto => {
            match UringReader::open(path, direct) {
                Ok(r) => Ok(Box::new(r)),
                Err(Error::Io { source, .. }) if UringReader::is_unavailable(&source) => {
                    eprintln!("note: io_uring is not available here ({source}); reading with pread instead");
                    Ok(Box::new(FileReader::open(path, direct)?))
                }
                Err(e) => Err(e),
            }
        }
    }
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
        let file = open_file(path, direct)?;
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

/// io_uring reader: all requests of one call are submitted at once and
/// awaited together, so a query's W reads are in flight at the same time.
///
/// Rings are pooled: a call takes one (creating it if the pool is empty),
/// so each search thread effectively owns a ring without thread-locals.
pub struct UringReader {
    file: File,
    direct: bool,
    rings: Mutex<Vec<IoUring>>,
}

impl std::fmt::Debug for UringReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReader")
            .field("direct", &self.direct)
            .finish()
    }
}

/// Submission queue size of each ring: the most reads one call can batch
/// before it has to submit.
const RING_ENTRIES: u32 = 64;

impl UringReader {
    /// Opens `path` and sets up a first ring, which fails where io_uring is
    /// blocked (seccomp, `kernel.io_uring_disabled`).
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        let file = open_file(path, direct)?;
        let ring = Self::new_ring().map_err(|e| Error::io(path, e))?;
        Ok(UringReader {
            file,
            direct,
            rings: Mutex::new(vec![ring]),
        })
    }

    fn new_ring() -> std::io::Result<IoUring> {
        if std::env::var_os("SHARDANN_DISABLE_URING").is_some() {
            // Lets tests (and operators) exercise the fallback path.
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        IoUring::new(RING_ENTRIES)
    }

    /// Can this process set up an io_uring (not disabled by the kernel, a
    /// seccomp filter, or `SHARDANN_DISABLE_URING`)? Sets one up and drops it.
    pub fn usable() -> bool {
        Self::new_ring().is_ok()
    }

    /// Does this setup error mean "io_uring is not usable here" (as opposed
    /// to, say, a missing file)?
    pub fn is_unavailable(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS)
                | Some(libc::EPERM)
                | Some(libc::EACCES)
                | Some(libc::ENOMEM)
                | Some(libc::EINVAL)
        )
    }

    fn read_with(
        &self,
        ring: &mut IoUring,
        requests: &mut [SectorRequest<'_>],
    ) -> std::io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        // Refuse a bad request before queueing anything: a read that was
        // queued must be submitted and awaited before this call returns, or
        // the ring goes back to the pool with entries whose buffers are gone.
        if let Some(r) = requests
            .iter()
            .find(|r| u32::try_from(r.buf.len()).is_err())
        {
            return Err(std::io::Error::other(format!(
                "read of {} bytes is too large for one io_uring entry",
                r.buf.len()
            )));
        }
        let mut first_err: Option<std::io::Error> = None;
        for chunk in requests.chunks_mut(RING_ENTRIES as usize) {
            if first_err.is_some() {
                // The caller gets an error either way; issue no more reads.
                break;
            }
            let mut inflight = 0usize;
            for (i, r) in chunk.iter_mut().enumerate() {
                // Lengths were checked above, so this cannot truncate.
                let len = r.buf.len() as u32;
                let entry = opcode::Read::new(fd, r.buf.as_mut_ptr(), len)
                    .offset(r.sector * SECTOR as u64)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer is valid for `len` bytes and is borrowed
                // mutably for this whole call; we do not return (not even on
                // error) before every pushed entry has been submitted and has
                // completed below, so the kernel never writes into memory we
                // no longer own and no entry outlives this call in the queue.
                let pushed = unsafe { ring.submission().push(&entry) };
                if pushed.is_err() {
                    // `chunk` has at most RING_ENTRIES entries, so a full
                    // queue means a ring left dirty: record it (never skip a
                    // request silently) and drain what was queued below.
                    first_err = Some(std::io::Error::other("io_uring submission queue full"));
                    break;
                }
                inflight += 1;
            }
            while inflight > 0 {
                match ring.submit_and_wait(inflight) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        // We can neither wait nor return: the kernel may still
                        // write into buffers the caller would free. Unwinding
                        // would free them too, so stop the process.
                        eprintln!(
                            "fatal: io_uring wait failed with {inflight} reads in flight: {e}"
                        );
                        std::process::abort();
                    }
                }
                for cqe in ring.completion() {
                    inflight -= 1;
                    let i = cqe.user_data() as usize;
                    let want = chunk.get(i).map_or(0, |r| r.buf.len()) as i32;
                    let res = cqe.result();
                    if res < 0 {
                        first_err.get_or_insert(std::io::Error::from_raw_os_error(-res));
                    } else if res != want {
                        first_err.get_or_insert(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("short read: {res} of {want} bytes"),
                        ));
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl SectorReader for UringReader {
    fn read(&self, requests: &mut [SectorRequest<'_>]) -> std::io::Result<()> {
        let pooled = self.rings.lock().pop();
        let mut ring = match pooled {
            Some(r) => r,
            None => Self::new_ring()?,
        };
        let result = self.read_with(&mut ring, requests);
        self.rings.lock().push(ring);
        result
    }

    fn name(&self) -> &'static str {
        if self.direct {
            "uring-direct"
        } else {
            "uring-buffered"
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

    /// Issue 9: a request that cannot be queued used to return early with
    /// the requests before it still in the submission queue; the ring went
    /// back to the pool and the next call submitted them into buffers the
    /// caller had moved on from. Now nothing is queued, and the ring stays
    /// clean for the next call.
    #[test]
    fn a_refused_request_leaves_the_ring_clean() {
        if !UringReader::usable() {
            eprintln!("io_uring unavailable here; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..4 * SECTOR).map(|i| (i / SECTOR) as u8 + 1).collect();
        std::fs::write(&path, &data).unwrap();
        let reader = UringReader::open(&path, false).unwrap();
        let mut kept = vec![0xAAu8; SECTOR];
        // Too large for one entry; allocated lazily, never touched.
        let mut huge = vec![0u8; (u32::MAX as usize) + 1];
        let err = reader
            .read(&mut [
                SectorRequest {
                    sector: 1,
                    buf: &mut kept,
                },
                SectorRequest {
                    sector: 2,
                    buf: &mut huge,
                },
            ])
            .unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        drop(huge);
        let mut fresh = vec![0u8; SECTOR];
        reader
            .read(&mut [SectorRequest {
                sector: 3,
                buf: &mut fresh,
            }])
            .unwrap();
        assert!(
            fresh.iter().all(|&b| b == 4),
            "the next read gets its own sector"
        );
        assert!(
            kept.iter().all(|&b| b == 0xAA),
            "no stale read landed later"
        );
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, 5000, 65536] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % SECTOR, 0);
            assert!(b.len() >= len && b.len().is_multiple_of(SECTOR));
            b.as_mut_slice()[0] = 1;
        }
    }

    #[test]
    fn uring_reads_many_sectors_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100 * SECTOR)
            .map(|i| (i / SECTOR * 7 + i % 13) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let r = match UringReader::open(&p, true) {
            Ok(r) => r,
            Err(Error::Io { source, .. }) if UringReader::is_unavailable(&source) => {
                eprintln!("io_uring unavailable here; the pread fallback is tested instead");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // More requests than ring entries, in scrambled order.
        let sectors: Vec<u64> = (0..90).map(|i| (i * 37) % 100).collect();
        let mut bufs: Vec<AlignedBuf> = sectors.iter().map(|_| AlignedBuf::new(SECTOR)).collect();
        let mut reqs: Vec<SectorRequest<'_>> = sectors
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&s, b)| SectorRequest {
                sector: s,
                buf: b.as_mut_slice(),
            })
            .collect();
        r.read(&mut reqs).unwrap();
        drop(reqs);
        for (&s, b) in sectors.iter().zip(&bufs) {
            let at = s as usize * SECTOR;
            assert_eq!(b.as_slice(), &data[at..at + SECTOR], "sector {s}");
        }
        let mut past = AlignedBuf::new(SECTOR);
        assert!(r
            .read(&mut [SectorRequest {
                sector: 500,
                buf: past.as_mut_slice()
            }])
            .is_err());
    }

    #[test]
    fn unavailability_is_told_apart_from_other_errors() {
        assert!(UringReader::is_unavailable(
            &std::io::Error::from_raw_os_error(libc::ENOSYS)
        ));
        assert!(UringReader::is_unavailable(
            &std::io::Error::from_raw_os_error(libc::EPERM)
        ));
        assert!(!UringReader::is_unavailable(
            &std::io::Error::from_raw_os_error(libc::ENOENT)
        ));
        let missing = open_reader(Path::new("/nonexistent/disk.index"), false, IoBackend::Auto);
        assert!(matches!(missing, Err(Error::Io { .. })));
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
