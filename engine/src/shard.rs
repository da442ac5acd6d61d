//! A shard directory: the versions of one shard and which one is current.
//!
//! ```text
//!  shard-3/                      a shard directory
//!    CURRENT                     "v0000000002\n": the version searches open
//!    v0000000001/                a sealed segment (crate::segment)
//!    v0000000002/ …
//! ```
//!
//! A version becomes current by replacing `CURRENT` atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the old
//! or the new version current, never neither and never a mixture; it never
//! moves backwards. [`build_version`] builds, seals and publishes the next
//! version; [`open`] opens whatever is current.
//!
//! This is the layer above one segment. Today a shard is its current
//! segment; the retrieval issues add here what a shard holds beside it (a
//! mutable in-memory part, a delete set, a text index, a document store),
//! so that searches keep entering through one place.
//!
//! A directory without `CURRENT` is opened as it is: a segment, or a plain
//! (unversioned) index as `index::build_index` writes it.

use std::path::{Path, PathBuf};

use crate::data::Vectors;
use crate::error::{Error, Result, SegmentError};
use crate::index::{build_index, BuildParams, BuildReport, DiskIndex, OpenOptions};
use crate::io::SectorReader;
use crate::layout::{
    parse_version_dir_name, version_dir_name, Manifest, CURRENT_FILE, INDEX_FILE, MANIFEST_FILE,
    MAX_VERSION,
};
use crate::metric::Element;
use crate::progress::Progress;
use crate::segment::{self, Verified};

/// The current version of a shard directory: its number and segment path.
pub fn current(shard_dir: &Path) -> Result<(u64, PathBuf)> {
    let path = shard_dir.join(CURRENT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let name = text
        .strip_suffix('\n')
        .ok_or_else(|| Error::segment(&path, SegmentError::PointerNoNewline))?;
    let v = parse_version_dir_name(name).ok_or_else(|| {
        Error::segment(
            &path,
            SegmentError::PointerBadName {
                name: name.chars().take(40).collect(),
            },
        )
    })?;
    Ok((v, shard_dir.join(name)))
}

/// Makes `version` (a sealed segment in `shard_dir`) the current one,
/// atomically. Refuses a version older than the current one, and one that
/// does not fit a version directory name.
pub fn publish(shard_dir: &Path, version: u64) -> Result<()> {
    check_fits(shard_dir, version)?;
    let seg = shard_dir.join(version_dir_name(version));
    let m = Manifest::read(&seg)?;
    if m.version != version {
        return Err(Error::segment(
            seg.join(MANIFEST_FILE),
            SegmentError::VersionMismatch {
                manifest: m.version,
                dir: version,
            },
        ));
    }
    if shard_dir.join(CURRENT_FILE).exists() {
        let (current, _) = current(shard_dir)?;
        if version < current {
            return Err(Error::segment(
                shard_dir,
                SegmentError::OlderVersion { version, current },
            ));
        }
    }
    crate::fs::write_atomic(
        &shard_dir.join(CURRENT_FILE),
        format!("{}\n", version_dir_name(version)).as_bytes(),
    )
}

/// Refuses a version that does not fit a version directory name.
fn check_fits(shard_dir: &Path, version: u64) -> Result<()> {
    if version > MAX_VERSION {
        return Err(Error::segment(
            shard_dir,
            SegmentError::VersionTooLarge {
                version,
                max: MAX_VERSION,
            },
        ));
    }
    Ok(())
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

/// Opens what `dir` holds for search: the current segment of a shard
/// directory, or `dir` itself (see [`resolve`]).
pub fn open(dir: impl AsRef<Path>, opts: OpenOptions) -> Result<DiskIndex> {
    segment::open(&resolve(dir.as_ref())?, opts)
}

/// [`open`], reading node sectors through `reader`.
pub fn open_with_reader(dir: impl AsRef<Path>, reader: Box<dyn SectorReader>) -> Result<DiskIndex> {
    segment::open_with_reader(&resolve(dir.as_ref())?, reader)
}

/// Checks every byte of the current segment of `dir` (or of `dir`, a
/// segment): see [`segment::verify`].
pub fn verify(dir: &Path) -> Result<Verified> {
    segment::verify(&resolve(dir)?)
}

/// Builds the next version of the shard in `shard_dir` (version 1 in an
/// empty or missing directory): builds into its segment directory, runs
/// `extra` there (to add files such as `ids.bin`), seals it and makes it
/// current. Searches of the previous version are unaffected until the
/// switch, which is atomic. Returns the build report and the new version.
pub fn build_version<T: Element>(
    data: Vectors<'_, T>,
    params: &BuildParams,
    shard_dir: &Path,
    shard_id: u32,
    progress: &dyn Progress,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<(BuildReport, u64)> {
    build_version_with(
        shard_dir,
        shard_id,
        |seg| build_index(data, params, seg, progress),
        extra,
    )
}

/// [`build_version`] with the index built by `build` into the version's
/// directory (a build under a memory budget: [`crate::budget`]).
pub fn build_version_with(
    shard_dir: &Path,
    shard_id: u32,
    build: impl FnOnce(&Path) -> Result<BuildReport>,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<(BuildReport, u64)> {
    if shard_dir.join(INDEX_FILE).exists() && !shard_dir.join(CURRENT_FILE).exists() {
        return Err(Error::segment(shard_dir, SegmentError::PlainIndex));
    }
    let (version, parent) = if shard_dir.join(CURRENT_FILE).exists() {
        let (cur, _) = current(shard_dir)?;
        (cur + 1, Some(cur))
    } else {
        (1, None)
    };
    check_fits(shard_dir, version)?;
    let seg = shard_dir.join(version_dir_name(version));
    if seg.exists() {
        // Newer than the current version, so never served: the leftover of
        // an interrupted build. Start it over.
        std::fs::remove_dir_all(&seg).map_err(|e| Error::io(&seg, e))?;
    }
    let report = build(&seg)?;
    extra(&seg)?;
    segment::seal(&seg, shard_id, version, parent, None)?;
    publish(shard_dir, version)?;
    Ok((report, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: `publish` of a version beyond 10 digits wrote a `CURRENT`
    /// that `current()` then refused, leaving the shard unopenable.
    #[test]
    fn publish_refuses_versions_that_do_not_fit_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = publish(dir.path(), MAX_VERSION + 1).unwrap_err();
        assert!(err.to_string().contains("above 9999999999"), "{err}");
        assert!(!dir.path().join(CURRENT_FILE).exists());
    }
}
