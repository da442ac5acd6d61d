//! One segment: an immutable, sealed, checksummed index directory.
//!
//! ```text
//!  v0000000002/                  a segment: never changed once sealed
//!    disk.index  pq.bin  ids.bin  build.json
//!    segment.json                manifest: version, build, every file's size and XXH3-64
//! ```
//!
//! A segment is sealed by writing its manifest last ([`seal`]), so its
//! presence means every file it lists is complete. Opening a segment
//! ([`open`]) checks the manifest's checksum and every file's size (cheap)
//! before any file is parsed; [`verify`] hashes every byte. The manifest's
//! bytes are `layout::Manifest`; the versions of a shard and its `CURRENT`
//! pointer are the layer above, [`crate::shard`]. Spec:
//! `format-spec/segment-v1.md`.

use std::path::{Path, PathBuf};

use crate::docs::Documents;
use crate::error::{Error, Result, SegmentError};
use crate::fs::{fsync_path, hash_file};
use crate::index::{DiskIndex, OpenOptions};
use crate::io::SectorReader;
use crate::layout::{hex64, BuildInfo, FileEntry, Manifest, MANIFEST_FILE};

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seals the index in `dir` as version `version` of shard `shard_id`:
/// fsyncs its files, hashes them, and writes the manifest last (via a
/// temporary file, so a half-written manifest never exists under its name).
/// `applied_lsn`: the last logged write a merged version holds (`None`
/// for a build).
pub fn seal(
    dir: &Path,
    shard_id: u32,
    version: u64,
    parent_version: Option<u64>,
    applied_lsn: Option<u64>,
) -> Result<Manifest> {
    let index = DiskIndex::open(dir, OpenOptions::buffered())?;
    let h = index.header();
    let build = BuildInfo {
        metric: h.metric.to_string(),
        elem: h.elem.to_string(),
        dim: h.dim,
        num_points: h.num_points,
        max_degree: h.max_degree,
        build_list: h.build_list,
        alpha: h.alpha,
        pq_bytes: index.pq().num_chunks() as u32,
    };
    drop(index);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE || name.ends_with(".tmp") || !entry.path().is_file() {
            continue;
        }
        fsync_path(&entry.path())?;
        let (sum, size) = hash_file(&entry.path())?;
        files.push(FileEntry {
            name,
            size,
            xxh3: hex64(sum),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest = Manifest {
        format: crate::layout::MANIFEST_FORMAT.into(),
        format_version: crate::layout::MANIFEST_FORMAT_VERSION,
        shard_id,
        version,
        parent_version,
        created_unix_ms: now_unix_ms(),
        build,
        files,
        applied_lsn,
    };
    let path = dir.join(MANIFEST_FILE);
    manifest.check().map_err(|e| Error::manifest(&path, e))?;
    let bytes = manifest.to_bytes().map_err(|e| Error::manifest(&path, e))?;
    crate::fs::write_atomic(&path, &bytes)?;
    Ok(manifest)
}

/// The cheap checks made whenever a segment is opened: the manifest parses
/// and its checksum holds, and every listed file exists with its size.
/// `Ok(None)` for a plain index (no manifest).
///
/// A directory named as a version (`v0000000001`, which is what `CURRENT`
/// names) without a manifest is a segment that was never sealed (a build or
/// pull cut short, a manifest removed by hand): the spec says it MUST NOT
/// be opened as one, and opening it as a plain index would skip every
/// check. Only a directory otherwise named is a plain index.
pub fn check_on_open(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.join(MANIFEST_FILE).exists() {
        let named_as_version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::layout::parse_version_dir_name)
            .is_some();
        if named_as_version {
            return Err(Error::segment(dir, SegmentError::Unsealed));
        }
        return Ok(None);
    }
    let m = Manifest::read(dir)?;
    for f in &m.files {
        let path = dir.join(&f.name);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        if size != f.size {
            return Err(Error::segment(
                &path,
                SegmentError::SizeMismatch {
                    size,
                    expected: f.size,
                },
            ));
        }
    }
    Ok(Some(m))
}

/// Opens the segment (or plain index) in `dir` for search: the manifest
/// and file sizes first, so a torn or foreign segment is refused before any
/// of its files is parsed; then the index files.
pub fn open(dir: &Path, opts: OpenOptions) -> Result<DiskIndex> {
    let manifest = check_on_open(dir)?;
    let index = DiskIndex::open(dir, opts)?;
    attach(index, manifest)
}

/// [`open`], reading node sectors through `reader`.
pub fn open_with_reader(dir: &Path, reader: Box<dyn SectorReader>) -> Result<DiskIndex> {
    let manifest = check_on_open(dir)?;
    let index = DiskIndex::open_with_reader(dir, reader)?;
    attach(index, manifest)
}

/// What a segment holds beside the vector index: its manifest and its
/// documents (user ids, payloads, filter index), checked against the index.
fn attach(mut index: DiskIndex, manifest: Option<Manifest>) -> Result<DiskIndex> {
    let documents = Documents::open(index.dir(), index.len() as u64)?;
    index.set_manifest(manifest);
    index.set_documents(documents);
    Ok(index)
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The segment directory checked.
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Checks every byte of the segment in `dir`: the manifest, every file's
/// size and XXH3-64, then opens the index (header, PQ and id checksums,
/// cross-checks). The error names the file and what is wrong.
pub fn verify(dir: &Path) -> Result<Verified> {
    let m = Manifest::read(dir)?;
    let mut bytes = 0;
    for f in &m.files {
        let p = dir.join(&f.name);
        let (sum, size) = hash_file(&p)?;
        if size != f.size {
            return Err(Error::segment(
                &p,
                SegmentError::SizeMismatch {
                    size,
                    expected: f.size,
                },
            ));
        }
        if hex64(sum) != f.xxh3 {
            return Err(Error::segment(
                &p,
                SegmentError::ChecksumMismatch {
                    expected: f.xxh3.clone(),
                    computed: hex64(sum),
                },
            ));
        }
        bytes += size;
    }
    open(dir, OpenOptions::buffered())?;
    Ok(Verified {
        dir: dir.to_path_buf(),
        manifest: m,
        bytes,
    })
}
