//! `ids.bin`: the global id of every node of a shard. Spec: `format-spec/cluster.md`.

use std::path::Path;

use super::{le_u32s, FormatError};
use crate::error::{Error, Result};

pub const IDS_MAGIC: [u8; 8] = *b"SHRDIDS\0";
const IDS_MAJOR: u16 = 1;
const HEADER: usize = 24;

/// Writes `ids.bin` (header, ids, XXH3-64 footer); returns its size.
pub fn write_ids(path: &Path, ids: &[u32]) -> Result<u64> {
    let mut bytes = Vec::with_capacity(HEADER + 4 * ids.len() + 8);
    bytes.extend_from_slice(&IDS_MAGIC);
    bytes.extend_from_slice(&IDS_MAJOR.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// Reads and validates `ids.bin`.
pub fn read_ids(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_ids(&bytes).map_err(|e| Error::format(path, e))
}

fn parse_ids(bytes: &[u8]) -> Result<Vec<u32>, FormatError> {
    let file_len = bytes.len() as u64;
    let head = bytes.get(..HEADER).ok_or(FormatError::Truncated {
        what: "ids header",
        offset: 0,
        end: HEADER as u64,
        file_len,
    })?;
    let (magic, rest) = head.split_at(8);
    if magic != IDS_MAGIC {
        return Err(FormatError::BadMagic {
            what: "ids",
            found: magic.to_vec(),
        });
    }
    let word = |at: usize, len: usize| -> u64 {
        rest.get(at..at + len)
            .map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
            .unwrap_or(0)
    };
    let (major, minor, count) = (word(0, 2) as u16, word(2, 2) as u16, word(8, 8));
    if major != IDS_MAJOR {
        return Err(FormatError::UnsupportedVersion {
            major,
            minor,
            supported: IDS_MAJOR,
        });
    }
    if count > u32::MAX as u64 {
        return Err(FormatError::Invalid {
            field: "id count",
            value: count,
            why: "node ids are u32".into(),
        });
    }
    let need = HEADER as u64 + 4 * count + 8;
    if file_len != need {
        return Err(FormatError::Truncated {
            what: "ids and footer",
            offset: HEADER as u64,
            end: need,
            file_len,
        });
    }
    let (body, footer) = bytes.split_at(bytes.len() - 8);
    let stored = u64::from_le_bytes(footer.try_into().unwrap_or([0; 8]));
    let computed = xxhash_rust::xxh3::xxh3_64(body);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch {
            what: "ids file",
            stored,
            computed,
        });
    }
    Ok(le_u32s(body.get(HEADER..).unwrap_or(&[])).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn round_trip_and_corruption(ids in prop::collection::vec(any::<u32>(), 0..300), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("ids.bin");
            write_ids(&p, &ids).unwrap();
            prop_assert_eq!(read_ids(&p).unwrap(), ids);
            let mut bytes = std::fs::read(&p).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(parse_ids(&bytes).is_err());
            prop_assert!(parse_ids(&bytes[..i]).is_err());
        }
    }
}
