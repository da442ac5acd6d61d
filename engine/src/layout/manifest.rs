//! `segment.json`: a segment's manifest. Spec: `format-spec/segment-v1.md`.
//!
//! One line of JSON (format, shard, version, parent, creation time, build
//! parameters, every file's size and XXH3-64), then a line `xxh3:<16 hex>`
//! over the JSON line's bytes. Written last when a segment is sealed, so its
//! presence means every file it lists is complete.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{INDEX_FILE, MANIFEST_FILE, PQ_FILE};
use crate::error::{Error, ManifestError, Result};

/// The `format` field of every manifest.
pub const FORMAT: &str = "shardann-segment";
/// The `format_version` this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Longest manifest accepted (a manifest lists a handful of files).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The largest version: directory names hold exactly 10 decimal digits.
pub const MAX_VERSION: u64 = 9_999_999_999;

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

/// `segment.json`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub shard_id: u32,
    /// Versions of one shard increase; 1 is the first, [`MAX_VERSION`] the last.
    pub version: u64,
    /// The version this one replaces, if any.
    pub parent_version: Option<u64>,
    pub created_unix_ms: u64,
    pub build: BuildInfo,
    /// Every file of the segment except the manifest, sorted by name.
    pub files: Vec<FileEntry>,
    /// For a version written by a merge: the last write-ahead-log LSN whose
    /// writes it holds. Replay skips records up to it. Absent for a build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_lsn: Option<u64>,
}

/// The directory name of version `v`: `v` and 10 digits.
pub fn version_dir_name(v: u64) -> String {
    format!("v{v:010}")
}

/// The version a directory name holds: `v` and exactly 10 decimal digits.
pub fn parse_version_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A checksum as the manifest writes it: 16 lowercase hex digits.
pub fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

/// A name that stays inside its directory: no separators, not `.` or `..`.
pub fn is_plain_name(name: &str) -> bool {
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
    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let json = serde_json::to_vec(self).map_err(ManifestError::Json)?;
        let mut out = json.clone();
        out.extend_from_slice(
            format!("\nxxh3:{}\n", hex64(xxhash_rust::xxh3::xxh3_64(&json))).as_bytes(),
        );
        Ok(out)
    }

    /// Parses and checks manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                max: MAX_MANIFEST_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8)?;
        let body = text
            .strip_suffix('\n')
            .ok_or(ManifestError::NoFinalNewline)?;
        let (json, sum_line) = body
            .rsplit_once('\n')
            .ok_or(ManifestError::NoChecksumLine)?;
        let stored = sum_line
            .strip_prefix("xxh3:")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| ManifestError::MalformedChecksumLine {
                line: sum_line.chars().take(80).collect(),
            })?;
        let computed = xxhash_rust::xxh3::xxh3_64(json.as_bytes());
        if computed != stored {
            return Err(ManifestError::ChecksumMismatch { stored, computed });
        }
        let m: Manifest = serde_json::from_str(json).map_err(ManifestError::Json)?;
        m.check()?;
        Ok(m)
    }

    /// Parses and checks manifest bytes; `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes).map_err(|e| Error::manifest(path, e))
    }

    /// What the spec requires of a manifest beyond parsing.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT || self.format_version != FORMAT_VERSION {
            return Err(ManifestError::WrongFormat {
                format: self.format.clone(),
                version: self.format_version,
                expected: FORMAT,
                expected_version: FORMAT_VERSION,
            });
        }
        if self.version == 0 {
            return Err(ManifestError::VersionZero);
        }
        // A version beyond 10 digits would name a directory (and a CURRENT)
        // that every reader refuses: refuse it where it enters.
        if self.version > MAX_VERSION {
            return Err(ManifestError::VersionTooLarge {
                what: "version",
                version: self.version,
                max: MAX_VERSION,
            });
        }
        if let Some(parent) = self.parent_version {
            if parent >= self.version {
                return Err(ManifestError::ParentNotOlder {
                    parent,
                    version: self.version,
                });
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for f in &self.files {
            if !is_plain_name(&f.name) || f.name == MANIFEST_FILE {
                return Err(ManifestError::BadFileName {
                    name: f.name.clone(),
                });
            }
            if f.xxh3.len() != 16 || !f.xxh3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ManifestError::MalformedFileChecksum {
                    name: f.name.clone(),
                    xxh3: f.xxh3.clone(),
                });
            }
            if !names.insert(f.name.as_str()) {
                return Err(ManifestError::DuplicateFile {
                    name: f.name.clone(),
                });
            }
        }
        for required in [INDEX_FILE, PQ_FILE] {
            if !names.contains(&required) {
                return Err(ManifestError::MissingFile { name: required });
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
        Self::from_bytes(&path, &bytes)
    }

    /// The entry for `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
            applied_lsn: None,
        }
    }

    proptest! {
        #[test]
        fn manifest_round_trips(
            shard in 0u32..10_000,
            version in 2u64..=MAX_VERSION,
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

    /// A merged version's `applied_lsn` is written and read back; a
    /// manifest without it (every build's) reads as before, and its bytes
    /// do not name the field.
    #[test]
    fn applied_lsn_is_optional() {
        let built = manifest(
            0,
            2,
            Some(1),
            vec![("disk.index".into(), 1, 1), ("pq.bin".into(), 1, 1)],
        );
        let bytes = built.to_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("applied_lsn"));
        assert_eq!(Manifest::parse(&bytes).unwrap().applied_lsn, None);
        let merged = Manifest {
            applied_lsn: Some(4711),
            ..built
        };
        let bytes = merged.to_bytes().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"applied_lsn\":4711"));
        assert_eq!(Manifest::parse(&bytes).unwrap(), merged);
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
            (
                Manifest {
                    version: MAX_VERSION + 1,
                    parent_version: None,
                    ..ok.clone()
                },
                "above 9999999999",
            ),
            (
                Manifest {
                    version: u64::MAX,
                    parent_version: Some(MAX_VERSION),
                    ..ok.clone()
                },
                "above 9999999999",
            ),
        ];
        for (m, want) in cases {
            let e = Manifest::from_bytes(p, &m.to_bytes().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    /// Issue 9: a version of 11 digits was accepted here, and `publish` then
    /// wrote a `CURRENT` that `current()` refused, leaving the shard
    /// unopenable. The largest version still round-trips.
    #[test]
    fn versions_beyond_ten_digits_are_refused() {
        let files = vec![("disk.index".into(), 1, 1), ("pq.bin".into(), 1, 1)];
        let last = manifest(0, MAX_VERSION, Some(1), files.clone());
        let bytes = last.to_bytes().unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), last);
        assert_eq!(
            parse_version_dir_name(&version_dir_name(MAX_VERSION)),
            Some(MAX_VERSION)
        );
        let over = manifest(0, MAX_VERSION + 1, Some(1), files);
        let err = Manifest::parse(&over.to_bytes().unwrap()).unwrap_err();
        assert!(
            matches!(err, ManifestError::VersionTooLarge { .. }),
            "{err}"
        );
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
