//! Versioned, immutable, checksummed segments.
//!
//! ```text
//!  shard-3/                      a shard directory
//!    CURRENT                     "v0000000002\n": the version searches open
//!    v0000000001/                a segment: never changed once sealed
//!      disk.index  pq.bin  ids.bin  build.json
//!      segment.json              manifest: versions, build, every file's size and XXH3-64
//!    v0000000002/ …
//! ```
//!
//! A segment is sealed by writing its manifest last; a version becomes
//! current by replacing `CURRENT` atomically (temporary file, fsync, rename,
//! fsync of the directory), so a crash leaves the old or the new version
//! current, never neither and never a mixture. Opening a segment checks the
//! manifest's checksum and every file's size (cheap); [`verify`] hashes every
//! byte. Spec: `format-spec/segment-v1.md`.
//!
//! A directory without `CURRENT` and without `segment.json` is a plain
//! (unversioned) index, as written by `build_index`; it still opens.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::DiskIndex;

/// The manifest file of a segment.
pub const MANIFEST_FILE: &str = "segment.json";
/// The pointer file of a shard directory.
pub const CURRENT_FILE: &str = "CURRENT";
const FORMAT: &str = "shardann-segment";
const FORMAT_VERSION: u32 = 1;
/// Longest manifest accepted (a manifest lists a handful of files).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What a segment's index was built with (from its header and PQ file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    pub metric: String,
    pub elem: String,
    pub dim: u32,
    pub num_points: u64,
    pub max_degree: u32,
    pub build_list: u32,
    pub alpha: f32,
    pub pq_bytes: u32,
}

/// One file of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A plain file name inside the segment directory.
    pub name: String,
    pub size: u64,
    /// XXH3-64 (seed 0) of the whole file, 16 lowercase hex digits.
    pub xxh3: String,
}

/// `segment.json`. Spec: `format-spec/segment-v1.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub shard_id: u32,
    /// Versions of one shard increase; 1 is the first.
    pub version: u64,
    /// The version this one replaces, if any.
    pub parent_version: Option<u64>,
    pub created_unix_ms: u64,
    pub build: BuildInfo,
    /// Every file of the segment except the manifest, sorted by name.
    pub files: Vec<FileEntry>,
}

/// The directory name of version `v`.
pub fn version_dir_name(v: u64) -> String {
    format!("v{v:010}")
}

fn parse_version_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

fn bad(path: &Path, why: impl Into<String>) -> Error {
    Error::Segment {
        path: path.to_path_buf(),
        reason: why.into(),
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

impl Manifest {
    /// The manifest file's bytes: the JSON on one line, then a line
    /// `xxh3:<16 hex digits>` holding the XXH3-64 of the JSON line's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::InvalidParameter(e.to_string()))?;
        let mut out = json.clone();
        out.extend_from_slice(
            format!("\nxxh3:{}\n", hex64(xxhash_rust::xxh3::xxh3_64(&json))).as_bytes(),
        );
        Ok(out)
    }

    /// Parses and checks manifest bytes; `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad(path, "manifest is not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad(path, "manifest does not end with a newline (truncated?)"))?;
        let (json, sum_line) = body
            .rsplit_once('\n')
            .ok_or_else(|| bad(path, "manifest has no checksum line (truncated?)"))?;
        let stored = sum_line
            .strip_prefix("xxh3:")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad(path, format!("malformed checksum line {sum_line:?}")))?;
        let computed = xxhash_rust::xxh3::xxh3_64(json.as_bytes());
        if computed != stored {
            return Err(bad(
                path,
                format!(
                    "manifest checksum mismatch: stored {}, computed {}",
                    hex64(stored),
                    hex64(computed)
                ),
            ));
        }
        let m: Manifest = serde_json::from_str(json)
            .map_err(|e| bad(path, format!("manifest does not parse: {e}")))?;
        m.check(path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.format != FORMAT || self.format_version != FORMAT_VERSION {
            return Err(bad(
                path,
                format!(
                    "format {:?} version {} is not {FORMAT} version {FORMAT_VERSION}",
                    self.format, self.format_version
                ),
            ));
        }
        if self.version == 0 {
            return Err(bad(path, "version 0 is not valid (versions start at 1)"));
        }
        if let Some(p) = self.parent_version {
            if p >= self.version {
                return Err(bad(
                    path,
                    format!(
                        "parent version {p} is not older than version {}",
                        self.version
                    ),
                ));
            }
        }
        let mut names: Vec<&str> = Vec::with_capacity(self.files.len());
        for f in &self.files {
            if !is_plain_name(&f.name) || f.name == MANIFEST_FILE {
                return Err(bad(path, format!("file name {:?} is not allowed", f.name)));
            }
            if f.xxh3.len() != 16 || !f.xxh3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    path,
                    format!("{}: malformed checksum {:?}", f.name, f.xxh3),
                ));
            }
            names.push(&f.name);
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != names.len() {
            return Err(bad(path, "a file is listed twice"));
        }
        for required in [crate::index::INDEX_FILE, crate::index::PQ_FILE] {
            if !names.contains(&required) {
                return Err(bad(path, format!("the manifest does not list {required}")));
            }
        }
        Ok(())
    }

    /// Reads `dir/segment.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(
                &path,
                format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        Self::from_bytes(&path, &bytes)
    }

    /// The entry for `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// XXH3-64 and length of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(u64, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.digest(), len))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fsync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Seals the index in `dir` as version `version` of shard `shard_id`:
/// fsyncs its files, hashes them, and writes the manifest last (via a
/// temporary file, so a half-written manifest never exists under its name).
pub fn seal(
    dir: &Path,
    shard_id: u32,
    version: u64,
    parent_version: Option<u64>,
) -> Result<Manifest> {
    let index = DiskIndex::open(dir, crate::index::OpenOptions::buffered())?;
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
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        shard_id,
        version,
        parent_version,
        created_unix_ms: now_unix_ms(),
        build,
        files,
    };
    manifest.check(&dir.join(MANIFEST_FILE))?;
    write_atomic(&dir.join(MANIFEST_FILE), &manifest.to_bytes()?)?;
    Ok(manifest)
}

/// Builds the next version of the shard in `shard_dir` (version 1 in an
/// empty or missing directory): builds into its segment directory, runs
/// `extra` there (to add files such as `ids.bin`), seals it and makes it
/// current. Searches of the previous version are unaffected until the
/// switch, which is atomic. Returns the build report and the new version.
pub fn build_version<T: crate::Element>(
    data: crate::data::Vectors<'_, T>,
    params: &crate::index::BuildParams,
    shard_dir: &Path,
    shard_id: u32,
    progress: &dyn crate::progress::Progress,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<(crate::index::BuildReport, u64)> {
    if shard_dir.join(crate::index::INDEX_FILE).exists() && !shard_dir.join(CURRENT_FILE).exists() {
        return Err(bad(
            shard_dir,
            "holds a plain (unversioned) index; build into a new directory",
        ));
    }
    let (version, parent) = if shard_dir.join(CURRENT_FILE).exists() {
        let (cur, _) = current(shard_dir)?;
        (cur + 1, Some(cur))
    } else {
        (1, None)
    };
    let seg = shard_dir.join(version_dir_name(version));
    if seg.exists() {
        // Newer than the current version, so never served: the leftover of
        // an interrupted build. Start it over.
        std::fs::remove_dir_all(&seg).map_err(|e| Error::io(&seg, e))?;
    }
    let report = crate::index::build_index(data, params, &seg, progress)?;
    extra(&seg)?;
    seal(&seg, shard_id, version, parent)?;
    publish(shard_dir, version)?;
    Ok((report, version))
}

/// Writes `bytes` to `path` atomically: `path.tmp`, fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_path(dir)
}

/// The current version of a shard directory: its number and segment path.
pub fn current(shard_dir: &Path) -> Result<(u64, PathBuf)> {
    let path = shard_dir.join(CURRENT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let name = text
        .strip_suffix('\n')
        .ok_or_else(|| bad(&path, "does not end with a newline"))?;
    let v = parse_version_dir_name(name)
        .ok_or_else(|| bad(&path, format!("{name:?} is not a version directory name")))?;
    Ok((v, shard_dir.join(name)))
}

/// Makes `version` (a sealed segment in `shard_dir`) the current one,
/// atomically. Refuses a version older than the current one.
pub fn publish(shard_dir: &Path, version: u64) -> Result<()> {
    let seg = shard_dir.join(version_dir_name(version));
    let m = Manifest::read(&seg)?;
    if m.version != version {
        return Err(bad(
            &seg.join(MANIFEST_FILE),
            format!("says version {}, its directory {version}", m.version),
        ));
    }
    if shard_dir.join(CURRENT_FILE).exists() {
        let (cur, _) = current(shard_dir)?;
        if version < cur {
            return Err(bad(
                shard_dir,
                format!("version {version} is older than the current version {cur}"),
            ));
        }
    }
    write_atomic(
        &shard_dir.join(CURRENT_FILE),
        format!("{}\n", version_dir_name(version)).as_bytes(),
    )
}

/// The directory whose files a search opens: the current segment of a
/// shard directory, or `dir` itself (a segment, or a plain index).
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(CURRENT_FILE).exists() {
        Ok(current(dir)?.1)
    } else {
        Ok(dir.to_path_buf())
    }
}

/// The cheap checks made whenever a segment is opened: the manifest parses
/// and its checksum holds, and every listed file exists with its size.
/// `Ok(None)` for a plain index (no manifest).
pub fn check_on_open(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.join(MANIFEST_FILE).exists() {
        return Ok(None);
    }
    let m = Manifest::read(dir)?;
    for f in &m.files {
        let path = dir.join(&f.name);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        if size != f.size {
            return Err(bad(
                &path,
                format!("is {size} bytes; the manifest says {}", f.size),
            ));
        }
    }
    Ok(Some(m))
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The segment directory checked.
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Checks every byte of a segment (or of the current segment of a shard
/// directory): the manifest, every file's size and XXH3-64, then opens the
/// index (header, PQ and id checksums, cross-checks). The error names the
/// file and what is wrong.
pub fn verify(path: &Path) -> Result<Verified> {
    let dir = resolve(path)?;
    let m = Manifest::read(&dir)?;
    let mut bytes = 0;
    for f in &m.files {
        let p = dir.join(&f.name);
        let (sum, size) = hash_file(&p)?;
        if size != f.size {
            return Err(bad(
                &p,
                format!("is {size} bytes; the manifest says {}", f.size),
            ));
        }
        if hex64(sum) != f.xxh3 {
            return Err(bad(
                &p,
                format!(
                    "checksum mismatch: the manifest says {}, the file hashes to {}",
                    f.xxh3,
                    hex64(sum)
                ),
            ));
        }
        bytes += size;
    }
    DiskIndex::open(&dir, crate::index::OpenOptions::buffered())?;
    Ok(Verified {
        dir,
        manifest: m,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(
        shard_id: u32,
        version: u64,
        parent: Option<u64>,
        files: Vec<(String, u64, u64)>,
    ) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            shard_id,
            version,
            parent_version: parent,
            created_unix_ms: 1_764_000_000_000,
            build: BuildInfo {
                metric: "l2".into(),
                elem: "u8".into(),
                dim: 128,
                num_points: 1000,
                max_degree: 64,
                build_list: 100,
                alpha: 1.2,
                pq_bytes: 32,
            },
            files: files
                .into_iter()
                .map(|(name, size, sum)| FileEntry {
                    name,
                    size,
                    xxh3: hex64(sum),
                })
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn manifest_round_trips(
            shard in 0u32..10_000,
            version in 2u64..u64::MAX / 2,
            has_parent in any::<bool>(),
            extra in proptest::collection::btree_map("[a-z]{1,12}\\.[a-z]{1,4}", (any::<u64>(), any::<u64>()), 0..4),
        ) {
            let mut files = vec![
                ("disk.index".to_string(), 4096, 7),
                ("pq.bin".to_string(), 100, 9),
            ];
            for (name, (size, sum)) in extra {
                if name != "disk.index" && name != "pq.bin" {
                    files.push((name, size, sum));
                }
            }
            let m = manifest(shard, version, has_parent.then_some(version - 1), files);
            let bytes = m.to_bytes().unwrap();
            let back = Manifest::from_bytes(Path::new("segment.json"), &bytes).unwrap();
            prop_assert_eq!(&back, &m);
            // Any single flipped byte is caught (checksum, parse or check).
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x20;
                let r = Manifest::from_bytes(Path::new("segment.json"), &b);
                prop_assert!(r.is_err() || r.unwrap() == m, "flip at {} accepted", i);
            }
            // Any truncation is refused.
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                prop_assert!(Manifest::from_bytes(Path::new("segment.json"), &bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn bad_manifests_are_named() {
        let p = Path::new("segment.json");
        let ok = manifest(
            1,
            3,
            Some(2),
            vec![("disk.index".into(), 1, 1), ("pq.bin".into(), 1, 1)],
        );
        let cases: Vec<(Manifest, &str)> = vec![
            (
                Manifest {
                    version: 0,
                    ..ok.clone()
                },
                "version 0",
            ),
            (
                Manifest {
                    parent_version: Some(3),
                    ..ok.clone()
                },
                "not older",
            ),
            (
                Manifest {
                    format_version: 2,
                    ..ok.clone()
                },
                "version 2",
            ),
            (
                manifest(
                    1,
                    3,
                    None,
                    vec![
                        ("../x".into(), 1, 1),
                        ("disk.index".into(), 1, 1),
                        ("pq.bin".into(), 1, 1),
                    ],
                ),
                "not allowed",
            ),
            (
                manifest(1, 3, None, vec![("disk.index".into(), 1, 1)]),
                "pq.bin",
            ),
            (
                manifest(
                    1,
                    3,
                    None,
                    vec![
                        ("disk.index".into(), 1, 1),
                        ("disk.index".into(), 1, 1),
                        ("pq.bin".into(), 1, 1),
                    ],
                ),
                "twice",
            ),
        ];
        for (m, want) in cases {
            let e = Manifest::from_bytes(p, &m.to_bytes().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn version_names() {
        assert_eq!(version_dir_name(2), "v0000000002");
        assert_eq!(parse_version_dir_name("v0000000002"), Some(2));
        assert_eq!(parse_version_dir_name("v2"), None);
        assert_eq!(parse_version_dir_name("v000000000x"), None);
        assert_eq!(parse_version_dir_name("../v0000000002"), None);
    }
}
