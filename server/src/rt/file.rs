//! Reading files on either backend: the index's node file (sector reads,
//! `O_DIRECT`) and segment files served to peers (chunks, page cache).
//!
//! On glommio both go through io_uring (`DmaFile`, `BufferedFile`). On
//! epoll they are blocking `pread`s on `blocking`'s thread pool, so a
//! search round's W reads still wait together, each on a pool thread,
//! while the executor runs other queries.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use shardann_engine::io::AlignedBuf;

use super::{current, Backend};

/// An index's node file, opened by (and belonging to) one executor.
pub enum IndexFile {
    Dma(glommio::io::DmaFile),
    Pread(Arc<File>),
}

/// Sectors read from an [`IndexFile`].
pub enum Sectors {
    Dma(glommio::io::ReadResult),
    /// The buffer and how many of its bytes were read.
    Heap(AlignedBuf, usize),
}

impl Deref for Sectors {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Sectors::Dma(r) => r,
            Sectors::Heap(b, n) => &b.as_slice()[..*n],
        }
    }
}

impl IndexFile {
    /// Opens `path` for the caller's executor: `O_DIRECT` through io_uring
    /// on glommio; on epoll `O_DIRECT` too, or through the page cache on a
    /// filesystem without it (tmpfs).
    pub async fn open(path: &Path) -> io::Result<IndexFile> {
        match current() {
            Backend::Glommio => glommio::io::DmaFile::open(path)
                .await
                .map(IndexFile::Dma)
                .map_err(io::Error::from),
            Backend::Epoll => {
                let direct = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path);
                let file = match direct {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => File::open(path)?,
                    other => other?,
                };
                Ok(IndexFile::Pread(Arc::new(file)))
            }
        }
    }

    /// Reads `len` bytes at `pos` (both multiples of the sector size);
    /// fewer only at the end of the file.
    pub async fn read_at_aligned(&self, pos: u64, len: usize) -> io::Result<Sectors> {
        match self {
            IndexFile::Dma(f) => f
                .read_at_aligned(pos, len)
                .await
                .map(Sectors::Dma)
                .map_err(io::Error::from),
            IndexFile::Pread(f) => {
                let f = Arc::clone(f);
                let (buf, n) = blocking::unblock(move || {
                    let mut buf = AlignedBuf::new(len);
                    let n = read_full(&f, &mut buf.as_mut_slice()[..len], pos, true)?;
                    Ok::<_, io::Error>((buf, n))
                })
                .await?;
                Ok(Sectors::Heap(buf, n))
            }
        }
    }

    /// Closes the file (glommio closes through the ring).
    pub async fn close(self) {
        if let IndexFile::Dma(f) = self {
            let _ = f.close().await;
        }
    }
}

/// `pread` until `buf` is full or the file ends; the bytes read. With
/// `sectors`, a read that ends off a sector boundary is the end of the
/// file: a further `O_DIRECT` read from there would be refused (EINVAL).
fn read_full(f: &File, buf: &mut [u8], pos: u64, sectors: bool) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if sectors && got % shardann_engine::layout::SECTOR != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A segment file read in chunks through the page cache (replication).
pub enum ChunkFile {
    Glommio(glommio::io::BufferedFile),
    Std(Arc<File>),
}

impl ChunkFile {
    pub async fn open(path: &Path) -> io::Result<ChunkFile> {
        match current() {
            Backend::Glommio => glommio::io::BufferedFile::open(path)
                .await
                .map(ChunkFile::Glommio)
                .map_err(io::Error::from),
            Backend::Epoll => Ok(ChunkFile::Std(Arc::new(File::open(path)?))),
        }
    }

    /// Up to `len` bytes at `pos` (fewer only at the end of the file).
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            ChunkFile::Glommio(f) => f
                .read_at(pos, len)
                .await
                .map(|r| r.to_vec())
                .map_err(io::Error::from),
            ChunkFile::Std(f) => {
                let f = Arc::clone(f);
                blocking::unblock(move || {
                    let mut buf = vec![0; len];
                    let n = read_full(&f, &mut buf, pos, false)?;
                    buf.truncate(n);
                    Ok(buf)
                })
                .await
            }
        }
    }

    pub async fn close(self) {
        if let ChunkFile::Glommio(f) = self {
            let _ = f.close().await;
        }
    }
}
