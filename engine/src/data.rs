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

/// A read-only vector file: Big-ANN bins and `.npy` are memory-mapped and
/// viewed in place; TEXMEX `.fvecs`/`.bvecs` (a dimension before every row)
/// are copied into RAM without the row prefixes.
pub struct VectorFile {
    path: PathBuf,
    storage: Storage,
    elem: ElemType,
    count: usize,
    dim: usize,
}

enum Storage {
    /// The rows start at `offset` in the map.
    Mapped {
        map: Mmap,
        offset: usize,
    },
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// The vector file formats [`VectorFile::open`] reads, told apart by the
/// file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorFormat {
    /// `.u8bin` / `.bbin`, `.i8bin`, `.fbin`: u32 count, u32 dim, rows.
    BigAnn(ElemType),
    /// NumPy `.npy`, a 2-D C-order array of `<f4`, `|u1` or `|i1`.
    Npy,
    /// TEXMEX `.fvecs` (f32) and `.bvecs` (u8): each row is an i32
    /// dimension followed by the row.
    Texmex(ElemType),
}

impl VectorFormat {
    /// The format a file name's extension names.
    pub fn of_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "npy" => Ok(VectorFormat::Npy),
            "fvecs" => Ok(VectorFormat::Texmex(ElemType::F32)),
            "bvecs" => Ok(VectorFormat::Texmex(ElemType::U8)),
            _ => ElemType::from_extension(ext)
                .map(VectorFormat::BigAnn)
                .ok_or_else(|| {
                    Error::data(
                        path,
                        DataError::UnknownExtension {
                            ext: ext.to_string(),
                        },
                    )
                }),
        }
    }
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
    /// Opens a vector file in the format its extension names
    /// ([`VectorFormat`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match VectorFormat::of_path(path)? {
            VectorFormat::BigAnn(elem) => Self::open_as(path, elem),
            VectorFormat::Npy => Self::open_npy(path),
            VectorFormat::Texmex(elem) => Self::open_texmex(path, elem),
        }
    }

    /// Opens a Big-ANN vector file whose element type is known.
    pub fn open_as(path: impl AsRef<Path>, elem: ElemType) -> Result<Self> {
        let path = path.as_ref();
        let (map, len) = map_file(path)?;
        if len < 8 {
            return Err(Error::data(path, DataError::MissingHeader { len }));
        }
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
            storage: Storage::Mapped { map, offset: 8 },
            elem,
            count: count as usize,
            dim: dim as usize,
        })
    }

    /// A NumPy `.npy` file: version 1.0, 2.0 or 3.0 header, a 2-D C-order
    /// array of little-endian f32 (`<f4`), u8 (`|u1`) or i8 (`|i1`).
    fn open_npy(path: &Path) -> Result<Self> {
        let (map, len) = map_file(path)?;
        let h = npy_header(&map).map_err(|e| Error::data(path, e))?;
        let npy = |why: String| Error::data(path, DataError::Npy { why });
        let (count, dim) = (h.shape.0 as u64, h.shape.1 as u64);
        if dim == 0 {
            return Err(Error::data(path, DataError::ZeroDimension));
        }
        if count > u32::MAX as u64 || dim > u32::MAX as u64 {
            return Err(npy(format!(
                "shape ({count}, {dim}) is too large (each side at most {})",
                u32::MAX
            )));
        }
        check_size(path, count, dim, h.elem, len - h.data_offset as u64)?;
        let file = VectorFile {
            path: path.to_path_buf(),
            storage: Storage::Mapped {
                map,
                offset: h.data_offset,
            },
            elem: h.elem,
            count: count as usize,
            dim: dim as usize,
        };
        if h.data_offset % h.elem.size() == 0 {
            Ok(file)
        } else {
            // An odd header length leaves f32 rows unaligned: copy them.
            file.into_owned()
        }
    }

    /// A TEXMEX `.fvecs` / `.bvecs` file: every row is an i32 dimension
    /// (the same for all rows) followed by the row. The rows are copied
    /// without their prefixes.
    fn open_texmex(path: &Path, elem: ElemType) -> Result<Self> {
        let (map, len) = map_file(path)?;
        let bad = |why: String| Error::data(path, DataError::Texmex { why });
        if len == 0 {
            return Err(bad("the file is empty".into()));
        }
        let word = |at: usize| -> Option<i32> {
            Some(i32::from_le_bytes(map.get(at..at + 4)?.try_into().ok()?))
        };
        let dim = word(0).ok_or_else(|| bad("shorter than one row's 4-byte dimension".into()))?;
        if dim <= 0 || dim > 1 << 20 {
            return Err(bad(format!("row 0 says dimension {dim}")));
        }
        let dim = dim as usize;
        let row_bytes = 4 + dim * elem.size();
        if !(len as usize).is_multiple_of(row_bytes) {
            return Err(bad(format!(
                "{len} bytes is not a whole number of rows of {row_bytes} bytes                  (dimension {dim}, {elem}); truncated, or another format?"
            )));
        }
        let count = len as usize / row_bytes;
        if count > u32::MAX as usize {
            return Err(bad(format!("{count} rows: more than {}", u32::MAX)));
        }
        for r in 0..count {
            if word(r * row_bytes) != Some(dim as i32) {
                return Err(bad(format!(
                    "row {r} says dimension {}, row 0 says {dim}",
                    word(r * row_bytes).unwrap_or(0)
                )));
            }
        }
        let rows = map
            .chunks_exact(row_bytes)
            .flat_map(|row| row.get(4..).unwrap_or(&[]));
        let storage = match elem {
            ElemType::U8 => Storage::U8(rows.copied().collect()),
            _ => {
                let bytes: Vec<u8> = rows.copied().collect();
                Storage::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
        };
        Ok(VectorFile {
            path: path.to_path_buf(),
            storage,
            elem,
            count,
            dim,
        })
    }

    /// The same rows, copied into RAM (for a map whose rows are unaligned).
    fn into_owned(self) -> Result<Self> {
        let bytes = self.raw_bytes().to_vec();
        let storage = match self.elem {
            ElemType::U8 | ElemType::I8 => Storage::U8(bytes),
            ElemType::F32 => Storage::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        };
        Ok(VectorFile { storage, ..self })
    }

    fn raw_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped { map, offset } => map.get(*offset..).unwrap_or(&[]),
            Storage::U8(v) => v,
            Storage::F32(v) => bytemuck::cast_slice(v),
        }
    }

    /// Copies rows `ids` (ascending) out of the file, for a build that
    /// keeps only a subset of the base (one shard of a plan).
    ///
    /// Why not `vectors()` and `row()`: a shard's rows are spread over the
    /// whole base, so copying them touches every page of the map, and every
    /// touched page counts in the process's resident set until the kernel
    /// needs it back. At 1M points that was 122 MiB (the whole base) of a
    /// 240 MiB shard build's peak; at 1B it would be the 128 GB base on a
    /// machine sized for one shard. So a mapped file's pages are dropped
    /// from this process's resident set behind the copy, every
    /// [`RELEASE_BYTES`]. Ids out of order are copied without releasing.
    pub fn gather<T: Element>(&self, ids: &[u32]) -> Result<Vec<T>> {
        self.gather_releasing(ids, RELEASE_BYTES)
    }

    /// [`gather`](Self::gather), releasing every `every` bytes.
    fn gather_releasing<T: Element>(&self, ids: &[u32], every: usize) -> Result<Vec<T>> {
        let data = self.vectors::<T>()?;
        let mut rows: Vec<T> = Vec::with_capacity(ids.len() * self.dim);
        let ascending = ids.windows(2).all(|w| w[0] < w[1]);
        let row_bytes = self.dim * self.elem.size();
        let mut released = 0usize; // map bytes before this are released
        for &g in ids {
            let g = g as usize;
            if g >= self.count {
                return Err(Error::InvalidParameter(format!(
                    "{}: row {g} asked for, the file has {}",
                    self.path.display(),
                    self.count
                )));
            }
            rows.extend_from_slice(data.row(g));
            if let (true, Storage::Mapped { map, offset }) = (ascending, &self.storage) {
                let done = (*offset + g * row_bytes) & !(PAGE - 1);
                if done >= released + every {
                    release(map, released, done - released);
                    released = done;
                }
            }
        }
        if let (true, Storage::Mapped { map, .. }) = (ascending, &self.storage) {
            release(map, released, map.len() - released);
        }
        Ok(rows)
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
        // A map is page-aligned and its rows start at an offset aligned for
        // the element type (checked at open); owned rows are typed vectors.
        let data: &[T] = bytemuck::try_cast_slice(self.raw_bytes()).map_err(|e| {
            Error::InvalidParameter(format!(
                "{}: cannot view as {}: {e}",
                self.path.display(),
                T::TYPE
            ))
        })?;
        Ok(Vectors::new(data, self.dim))
    }
}

/// Page size the release ranges are aligned to (Linux's on x86-64 and
/// most arm64; a larger real page only makes the kernel round the range).
const PAGE: usize = 4096;

/// How much of a map [`VectorFile::gather`] copies between releases.
pub const RELEASE_BYTES: usize = 64 << 20;

/// Drops `len` bytes of `map` from `offset` out of this process's resident
/// set. Best effort: a kernel that refuses leaves the pages resident.
fn release(map: &Mmap, offset: usize, len: usize) {
    if len == 0 {
        return;
    }
    #[cfg(unix)]
    {
        // SAFETY: `map` is a read-only, shared mapping of a file (`map_file`):
        // MADV_DONTNEED only unmaps its pages from this process, and a later
        // read of any byte faults the file's same contents back in (from the
        // page cache or the disk). No byte a live `&[T]` can observe changes,
        // unlike DONTNEED on private or anonymous memory, which zero-fills.
        #[allow(unsafe_code)]
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
}

pub(crate) fn map_file(path: &Path) -> Result<(Mmap, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // mmap refuses anything but a regular file with ENODEV, "No such
    // device", which tells a user nothing about a directory given as a
    // vector file (issue 10).
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a special file (FIFO, socket or device)"
        };
        return Err(Error::data(path, DataError::NotAFile { kind }));
    }
    let len = meta.len();
    // SAFETY: the file is opened read-only and we only ever read the map.
    // A concurrent truncation by another process could fault; that is the
    // documented risk of mmap and the price of not copying 100s of GB.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((map, len))
}

/// What a `.npy` header says.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    elem: ElemType,
    shape: (usize, usize),
    data_offset: usize,
}

/// Parses the header of a `.npy` file (format versions 1.0–3.0): magic,
/// version, header length, and the header dict's `descr`, `fortran_order`
/// and `shape`.
fn npy(why: impl Into<String>) -> DataError {
    DataError::Npy { why: why.into() }
}

fn npy_header(bytes: &[u8]) -> std::result::Result<NpyHeader, DataError> {
    let magic = bytes
        .get(..6)
        .ok_or_else(|| npy("shorter than the 6-byte magic"))?;
    if magic != b"\x93NUMPY" {
        return Err(npy("no \\x93NUMPY magic: not a .npy file"));
    }
    let major = *bytes.get(6).ok_or_else(|| npy("no version"))?;
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(npy(format!("format version {v} is not 1, 2 or 3"))),
    };
    let mut len = [0u8; 4];
    len[..len_bytes].copy_from_slice(
        bytes
            .get(8..8 + len_bytes)
            .ok_or_else(|| npy("truncated header"))?,
    );
    let header_len = u32::from_le_bytes(len) as usize;
    let data_offset = start + header_len;
    let text = bytes
        .get(start..data_offset)
        .ok_or_else(|| npy("the header is longer than the file"))?;
    let text = std::str::from_utf8(text).map_err(|_| npy("the header is not text"))?;
    let field = |name: &str| -> std::result::Result<&str, DataError> {
        let key = format!("'{name}':");
        let at = text
            .find(&key)
            .ok_or_else(|| npy(format!("the header has no '{name}'")))?;
        Ok(text[at + key.len()..].trim_start())
    };
    let descr = field("descr")?;
    let elem = if descr.starts_with("'<f4'") {
        ElemType::F32
    } else if descr.starts_with("'|u1'") || descr.starts_with("'<u1'") || descr.starts_with("'u1'")
    {
        ElemType::U8
    } else if descr.starts_with("'|i1'") || descr.starts_with("'<i1'") || descr.starts_with("'i1'")
    {
        ElemType::I8
    } else {
        let shown: String = descr.chars().take_while(|&c| c != ',').collect();
        return Err(npy(format!(
            "dtype {shown} is not supported: use float32 ('<f4'), uint8 ('|u1') or int8 ('|i1')"
        )));
    };
    if !field("fortran_order")?.starts_with("False") {
        return Err(npy(
            "the array is in Fortran (column-major) order; save it C-ordered",
        ));
    }
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| npy("malformed shape"))?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| npy(format!("malformed shape ({inner})")))
        })
        .collect::<std::result::Result<_, _>>()?;
    let [n, d] = dims[..] else {
        return Err(npy(format!(
            "the array has {} dimensions ({inner}); a vector file is 2-D (rows, dim)",
            dims.len()
        )));
    };
    Ok(NpyHeader {
        elem,
        shape: (n, d),
        data_offset,
    })
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
        if !data.len().is_multiple_of(self.dim) {
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

    /// Reads a ground-truth file, checking its size against its header: the
    /// Big-ANN `.bin` (ids and distances), or a TEXMEX `.ivecs` (ids only;
    /// its distances read as NaN).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "ivecs") {
            return Self::read_ivecs(path);
        }
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

    fn read_ivecs(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::data(path, DataError::Texmex { why });
        let word = |at: usize| -> Option<i32> {
            Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let k = word(0).ok_or_else(|| bad("shorter than one row's 4-byte length".into()))?;
        if k <= 0 || k > 1 << 20 {
            return Err(bad(format!("row 0 says {k} neighbours")));
        }
        let k = k as usize;
        let row_bytes = 4 + 4 * k;
        if !bytes.len().is_multiple_of(row_bytes) {
            return Err(bad(format!(
                "{} bytes is not a whole number of rows of {k} ids",
                bytes.len()
            )));
        }
        let nq = bytes.len() / row_bytes;
        let mut ids = Vec::with_capacity(nq * k);
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            if word(r * row_bytes) != Some(k as i32) {
                return Err(bad(format!("row {r} has another length than row 0 ({k})")));
            }
            for c in row[4..].chunks_exact(4) {
                let id = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                ids.push(u32::try_from(id).map_err(|_| bad(format!("row {r}: negative id {id}")))?);
            }
        }
        Ok(GroundTruth {
            nq,
            k,
            distances: vec![f32::NAN; ids.len()],
            ids,
        })
    }

    /// Checks every id against the size of the base set it claims to index.
    pub fn check_ids(&self, path: &Path, base_count: usize) -> Result<()> {
        if let Some((pos, &id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id != u32::MAX && id as usize >= base_count)
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
///
/// Ids `u32::MAX` in the truth mean "no neighbour" (a filtered query with
/// fewer than k matches): the denominator is the number of real neighbours,
/// and a query with none has recall 1.
pub fn recall_at_k(found: &[u32], truth: &[u32], k: usize) -> f64 {
    let truth: Vec<u32> = truth
        .iter()
        .take(k)
        .copied()
        .filter(|&id| id != u32::MAX)
        .collect();
    if truth.is_empty() {
        return 1.0;
    }
    let hits = found.iter().take(k).filter(|id| truth.contains(id)).count();
    hits as f64 / truth.len() as f64
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

    /// Rows gathered with their pages released behind the copy are the
    /// file's rows, and the map still reads the same bytes afterwards
    /// (released pages of a shared file map fault back in, not as zeros).
    #[test]
    fn gather_copies_rows_and_released_pages_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.u8bin");
        let (n, dim) = (3000usize, 100usize);
        let data: Vec<u8> = (0..n * dim).map(|i| (i * 7 % 251) as u8).collect();
        write_vectors(&p, dim, &data).unwrap();
        let f = VectorFile::open(&p).unwrap();
        let ids: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 1).collect();
        let got: Vec<u8> = f.gather_releasing(&ids, PAGE).unwrap();
        let want: Vec<u8> = ids
            .iter()
            .flat_map(|&i| data[i as usize * dim..][..dim].iter().copied())
            .collect();
        assert_eq!(got, want);
        assert_eq!(f.vectors::<u8>().unwrap().as_slice(), &data[..]);
        // Out of order: copied, nothing released; out of range: an error.
        let back: Vec<u8> = f.gather(&[5, 2]).unwrap();
        assert_eq!(&back[..dim], &data[5 * dim..6 * dim]);
        let err = f.gather::<u8>(&[1, n as u32]).unwrap_err().to_string();
        assert!(err.contains("row 3000"), "{err}");
        assert!(f.gather::<f32>(&[0]).is_err());
    }

    fn npy_bytes(descr: &str, shape: &str, fortran: bool, payload: &[u8]) -> Vec<u8> {
        let mut dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        // NumPy pads the header with spaces and a newline to a multiple of 64.
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn npy_files_open_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.npy");
        let rows: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        std::fs::write(
            &p,
            npy_bytes("<f4", "(3, 2)", false, bytemuck::cast_slice(&rows)),
        )
        .unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert_eq!((f.len(), f.dim(), f.elem()), (3, 2, ElemType::F32));
        assert_eq!(f.vectors::<f32>().unwrap().row(2), &[2.0, 2.5]);
        std::fs::write(&p, npy_bytes("|u1", "(2, 3)", false, &[1, 2, 3, 4, 5, 6])).unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert_eq!(f.vectors::<u8>().unwrap().row(1), &[4, 5, 6]);
        std::fs::write(&p, npy_bytes("|i1", "(1, 2)", false, &[255, 1])).unwrap();
        assert_eq!(
            VectorFile::open(&p)
                .unwrap()
                .vectors::<i8>()
                .unwrap()
                .row(0),
            &[-1, 1]
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (npy_bytes("<f8", "(1, 1)", false, &[0; 8]), "not supported"),
            (npy_bytes("<f4", "(1, 1)", true, &[0; 4]), "Fortran"),
            (npy_bytes("<f4", "(4,)", false, &[0; 16]), "1 dimensions"),
            (npy_bytes("<f4", "(2, 2)", false, &[0; 12]), "truncated"),
            (b"PK\x03\x04".to_vec(), "magic"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, bytes).unwrap();
            let e = VectorFile::open(&p).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("v.npy"),
                "{e:?} should name {want:?}"
            );
        }
    }

    fn texmex_bytes<T: bytemuck::Pod>(rows: &[&[T]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(&(r.len() as i32).to_le_bytes());
            out.extend_from_slice(bytemuck::cast_slice(r));
        }
        out
    }

    #[test]
    fn texmex_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.fvecs");
        std::fs::write(&p, texmex_bytes::<f32>(&[&[1.0, 2.0], &[3.0, 4.0]])).unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert_eq!((f.len(), f.dim()), (2, 2));
        assert_eq!(f.vectors::<f32>().unwrap().row(1), &[3.0, 4.0]);
        let b = dir.path().join("v.bvecs");
        std::fs::write(&b, texmex_bytes::<u8>(&[&[9, 8, 7]])).unwrap();
        assert_eq!(
            VectorFile::open(&b)
                .unwrap()
                .vectors::<u8>()
                .unwrap()
                .row(0),
            &[9, 8, 7]
        );
        std::fs::write(&p, texmex_bytes::<f32>(&[&[1.0, 2.0], &[3.0]])).unwrap();
        let e = VectorFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("whole number of rows"), "{e}");
        let g = dir.path().join("gt.ivecs");
        std::fs::write(&g, texmex_bytes::<i32>(&[&[5, 1], &[2, 0]])).unwrap();
        let gt = GroundTruth::read(&g).unwrap();
        assert_eq!((gt.nq, gt.k, gt.row(1)), (2, 2, &[2u32, 0][..]));
        std::fs::write(&g, texmex_bytes::<i32>(&[&[5, -1]])).unwrap();
        assert!(GroundTruth::read(&g)
            .unwrap_err()
            .to_string()
            .contains("negative"));
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

    /// Issue 10, item 12: `build --base d.u8bin` on a directory said "No
    /// such device" (mmap's ENODEV); it must say what the path is.
    #[test]
    fn a_directory_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["d.u8bin", "d.npy", "d.fvecs"] {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).unwrap();
            let msg = VectorFile::open(&p).unwrap_err().to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains("is a directory, not a file"), "{msg}");
        }
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
