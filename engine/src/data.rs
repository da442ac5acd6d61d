//! Big-ANN data files: `.u8bin`, `.i8bin`, `.fbin` and ground-truth `.bin`.
//!
//! A vector file is `u32 count, u32 dim` (little-endian) followed by
//! `count × dim` row-major elements. A ground-truth file is `u32 nq, u32 k`,
//! then `nq × k` u32 ids, then `nq × k` f32 distances.
//!
//! Vector files are memory-mapped and viewed in place: a 1B-point file is
//! never copied into RAM. Every size is checked against the header when the
//! file is opened, so a truncated download fails at open with a message that
//! says how many bytes were expected, not later with a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::element::ElemType;
use crate::error::{DataError, Error, Result};
use crate::metric::Element;

/// A read-only, memory-mapped vector file.
pub struct VectorFile {
    path: PathBuf,
    map: Mmap,
    elem: ElemType,
    count: usize,
    dim: usize,
}

impl std::fmt::Debug for VectorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorFile")
            .field("path", &self.path)
            .field("elem", &self.elem)
            .field("count", &self.count)
            .field("dim", &self.dim)
            .finish()
    }
}

impl VectorFile {
    /// Opens a vector file, taking the element type from its extension.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let elem = ElemType::from_extension(ext).ok_or_else(|| {
            Error::data(
                path,
                DataError::UnknownExtension {
                    ext: ext.to_string(),
                },
            )
        })?;
        Self::open_as(path, elem)
    }

    /// Opens a vector file whose element type is known.
    pub fn open_as(path: impl AsRef<Path>, elem: ElemType) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(Error::data(path, DataError::MissingHeader { len }));
        }
        // SAFETY: the file is opened read-only and we only ever read the map.
        // A concurrent truncation by another process could fault; that is the
        // documented risk of mmap and the price of not copying 100s of GB.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (count, dim) = read_header(&map);
        if dim == 0 {
            return Err(Error::data(path, DataError::ZeroDimension));
        }
        check_size(path, count, dim, elem, len - 8)?;
        #[cfg(unix)]
        {
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(VectorFile {
            path: path.to_path_buf(),
            map,
            elem,
            count: count as usize,
            dim: dim as usize,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn elem(&self) -> ElemType {
        self.elem
    }
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A typed view of the vectors. Fails if `T` is not the file's type.
    pub fn vectors<T: Element>(&self) -> Result<Vectors<'_, T>> {
        if T::TYPE != self.elem {
            return Err(Error::ElementMismatch {
                what: self.path.display().to_string(),
                expected: T::TYPE.name(),
                got: self.elem.name(),
            });
        }
        let bytes = self.map.get(8..).unwrap_or(&[]);
        // The map is page-aligned, so offset 8 is aligned for every element type.
        let data: &[T] = bytemuck::try_cast_slice(bytes).map_err(|e| {
            Error::InvalidParameter(format!(
                "{}: cannot view as {}: {e}",
                self.path.display(),
                T::TYPE
            ))
        })?;
        Ok(Vectors::new(data, self.dim))
    }
}

fn read_header(bytes: &[u8]) -> (u64, u64) {
    let mut h = [0u8; 8];
    h.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
    let count = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let dim = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as u64;
    (count, dim)
}

fn check_size(path: &Path, count: u64, dim: u64, elem: ElemType, actual: u64) -> Result<()> {
    // count and dim are u32 values, so count·dim·4 cannot overflow a u64.
    let expected = count * dim * elem.size() as u64;
    if expected == actual {
        return Ok(());
    }
    // Help with the two most common mistakes: a wrong extension, a cut download.
    let hint = if [1u64, 4]
        .iter()
        .any(|&s| s != elem.size() as u64 && count * dim * s == actual)
    {
        " (the size fits another element type: is the extension right?)"
    } else if actual < expected {
        " (truncated?)"
    } else {
        ""
    };
    Err(Error::data(
        path,
        DataError::SizeMismatch {
            count,
            dim,
            elem,
            expected,
            actual,
            hint,
        },
    ))
}

/// A row-major matrix of vectors borrowed from a file or a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Vectors<'a, T> {
    data: &'a [T],
    dim: usize,
}

impl<'a, T> Vectors<'a, T> {
    /// Views `data` as rows of `dim` elements; a trailing partial row is ignored.
    pub fn new(data: &'a [T], dim: usize) -> Self {
        assert!(dim > 0, "dimension must be positive");
        let whole = data.len() / dim * dim;
        Vectors {
            data: &data[..whole],
            dim,
        }
    }
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Row `i`. Panics if `i >= len()`, like slice indexing.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    pub fn as_slice(&self) -> &'a [T] {
        self.data
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a [T]> + '_ {
        self.data.chunks_exact(self.dim)
    }
}

/// Writes a vector file in one go.
pub fn write_vectors<T: Element>(path: impl AsRef<Path>, dim: usize, data: &[T]) -> Result<()> {
    let path = path.as_ref();
    let mut w = VectorWriter::<T>::create(path, dim, data.len() / dim.max(1))?;
    w.append(data)?;
    w.finish()
}

/// Streams rows into a vector file whose row count is known in advance.
pub struct VectorWriter<T: Element> {
    path: PathBuf,
    out: BufWriter<File>,
    dim: usize,
    expected: usize,
    written: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Element> VectorWriter<T> {
    pub fn create(path: impl AsRef<Path>, dim: usize, count: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (Ok(c32), Ok(d32)) = (u32::try_from(count), u32::try_from(dim)) else {
            return Err(Error::InvalidParameter(format!(
                "{}: {count} × {dim} does not fit the u32 header",
                path.display()
            )));
        };
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&c32.to_le_bytes())
            .and_then(|_| out.write_all(&d32.to_le_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(VectorWriter {
            path,
            out,
            dim,
            expected: count,
            written: 0,
            _t: std::marker::PhantomData,
        })
    }

    /// Appends whole rows (`data.len()` must be a multiple of the dimension).
    pub fn append(&mut self, data: &[T]) -> Result<()> {
        if data.len() % self.dim != 0 {
            return Err(Error::InvalidParameter(format!(
                "{}: appending {} values, not a multiple of dimension {}",
                self.path.display(),
                data.len(),
                self.dim
            )));
        }
        self.out
            .write_all(bytemuck::cast_slice(data))
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += data.len() / self.dim;
        Ok(())
    }

    /// Flushes and checks that exactly the announced number of rows arrived.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(Error::InvalidParameter(format!(
                "{}: header announced {} rows but {} were written",
                self.path.display(),
                self.expected,
                self.written
            )));
        }
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Exact nearest neighbours of a query set: `k` ids and distances per query.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    pub nq: usize,
    pub k: usize,
    /// `nq × k` ids, row-major, nearest first.
    pub ids: Vec<u32>,
    /// `nq × k` distances in the metric's convention (squared L2 for L2).
    pub distances: Vec<f32>,
}

impl GroundTruth {
    /// The ids of query `q`.
    pub fn row(&self, q: usize) -> &[u32] {
        &self.ids[q * self.k..(q + 1) * self.k]
    }

    /// Reads a ground-truth `.bin` file, checking its size against its header.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.len() < 8 {
            return Err(Error::data(
                path,
                DataError::MissingHeader {
                    len: bytes.len() as u64,
                },
            ));
        }
        let (nq, k) = read_header(&bytes);
        // nq and k are u32 values, so 8 + nq·k·8 can reach 2^67: past u64, not u128.
        let expected = 8 + nq as u128 * k as u128 * 8;
        if bytes.len() as u128 != expected {
            return Err(Error::data(
                path,
                DataError::GroundTruthSize {
                    nq,
                    k,
                    expected: expected.min(u64::MAX as u128) as u64,
                    actual: bytes.len() as u64,
                },
            ));
        }
        let n = (nq * k) as usize;
        let body = &bytes[8..];
        let ids = body[..4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let distances = body[4 * n..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(GroundTruth {
            nq: nq as usize,
            k: k as usize,
            ids,
            distances,
        })
    }

    /// Checks every id against the size of the base set it claims to index.
    pub fn check_ids(&self, path: &Path, base_count: usize) -> Result<()> {
        if let Some((pos, &id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= base_count)
        {
            return Err(Error::data(
                path,
                DataError::GroundTruthId {
                    row: pos / self.k.max(1),
                    id,
                    count: base_count,
                },
            ));
        }
        Ok(())
    }

    /// Writes the ground-truth `.bin` format.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |e| Error::io(path, e);
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(&(self.nq as u32).to_le_bytes()).map_err(io)?;
        out.write_all(&(self.k as u32).to_le_bytes()).map_err(io)?;
        for id in &self.ids {
            out.write_all(&id.to_le_bytes()).map_err(io)?;
        }
        for d in &self.distances {
            out.write_all(&d.to_le_bytes()).map_err(io)?;
        }
        out.flush().map_err(io)
    }
}

/// Recall@k of one result list against one ground-truth row: the fraction of
/// the first `k` true neighbours found among the first `k` results.
pub fn recall_at_k(found: &[u32], truth: &[u32], k: usize) -> f64 {
    let truth = &truth[..k.min(truth.len())];
    let hits = found.iter().take(k).filter(|id| truth.contains(id)).count();
    hits as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_views() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fbin");
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        write_vectors(&p, 3, &data).unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert_eq!((f.len(), f.dim(), f.elem()), (4, 3, ElemType::F32));
        let v = f.vectors::<f32>().unwrap();
        assert_eq!(v.row(2), &[6.0, 7.0, 8.0]);
        assert!(f.vectors::<u8>().is_err());
    }

    #[test]
    fn truncated_file_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.u8bin");
        write_vectors(&p, 4, &[1u8; 40]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let msg = VectorFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains("a.u8bin"), "{msg}");
        assert!(msg.contains("40 bytes") && msg.contains("37"), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
        std::fs::write(&p, [1u8, 0, 0]).unwrap();
        let msg = VectorFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains("too short"), "{msg}");
    }

    #[test]
    fn wrong_extension_is_hinted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fbin");
        write_vectors(&p, 4, &[1u8; 40]).unwrap();
        let msg = VectorFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains("extension"), "{msg}");
        let q = dir.path().join("a.txt");
        std::fs::write(&q, [0u8; 16]).unwrap();
        let msg = VectorFile::open(&q).unwrap_err().to_string();
        assert!(msg.contains("unknown extension"), "{msg}");
    }

    #[test]
    fn ground_truth_round_trip_and_size_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gt.bin");
        let gt = GroundTruth {
            nq: 2,
            k: 3,
            ids: vec![1, 2, 3, 4, 5, 6],
            distances: vec![0.5; 6],
        };
        gt.write(&p).unwrap();
        assert_eq!(GroundTruth::read(&p).unwrap(), gt);
        assert!(gt.check_ids(&p, 6).is_err());
        assert!(gt.check_ids(&p, 7).is_ok());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let msg = GroundTruth::read(&p).unwrap_err().to_string();
        assert!(msg.contains("nq = 2, k = 3"), "{msg}");
    }

    #[test]
    fn recall_counts_overlap() {
        assert_eq!(recall_at_k(&[1, 2, 3], &[3, 2, 9, 1], 3), 2.0 / 3.0);
    }
}
