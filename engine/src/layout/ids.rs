//! `ids.bin`: the global id of every node of a shard. Spec: `format-spec/cluster.md`.

use std::path::Path;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::envelope::{append_footer, Envelope, FOOTER_BYTES};
use super::le_u32s;
use crate::error::{Error, FormatError, Result};

pub const IDS_MAGIC: [u8; 8] = *b"SHRDIDS\0";
const IDS_MAJOR: u16 = 1;
const IDS_MINOR: u16 = 0;
const HEADER: usize = 24;
const ENVELOPE: Envelope = Envelope {
    what: "ids file",
    magic: IDS_MAGIC,
    major: IDS_MAJOR,
};

/// The `ids.bin` header, exactly as stored (little-endian, no padding).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawIdsHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    reserved: U32,
    count: U64,
}
const _: () = assert!(std::mem::size_of::<RawIdsHeader>() == HEADER);

/// Writes `ids.bin` (header, ids, XXH3-64 footer); returns its size.
pub fn write_ids(path: &Path, ids: &[u32]) -> Result<u64> {
    let header = RawIdsHeader {
        magic: IDS_MAGIC,
        major: IDS_MAJOR.into(),
        minor: IDS_MINOR.into(),
        reserved: 0.into(),
        count: (ids.len() as u64).into(),
    };
    let mut bytes = Vec::with_capacity(HEADER + 4 * ids.len() + FOOTER_BYTES);
    bytes.extend_from_slice(header.as_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    append_footer(&mut bytes);
    std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// Reads and validates `ids.bin`.
pub fn read_ids(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_ids(&bytes).map_err(|e| Error::format(path, e))
}

/// Parses the bytes of an `ids.bin` file.
pub(crate) fn parse_ids(bytes: &[u8]) -> Result<Vec<u32>, FormatError> {
    let file_len = bytes.len() as u64;
    let (header, _) =
        RawIdsHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
            what: "ids header",
            offset: 0,
            end: HEADER as u64,
            file_len,
        })?;
    ENVELOPE.check_identity(header.magic, header.major.get(), header.minor.get())?;
    let count = header.count.get();
    if count > u32::MAX as u64 {
        return Err(FormatError::Invalid {
            field: "id count",
            value: count,
            why: "node ids are u32".into(),
        });
    }
    let need = (HEADER + FOOTER_BYTES) as u64 + 4 * count;
    if file_len != need {
        return Err(FormatError::Truncated {
            what: "ids and footer",
            offset: HEADER as u64,
            end: need,
            file_len,
        });
    }
    let body = ENVELOPE.check_footer(bytes)?;
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

    /// The golden file, written once if missing and never regenerated.
    #[test]
    fn golden_ids_v1_still_reads() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/ids-v1")
            .join(crate::layout::IDS_FILE);
        let ids = [7u32, 0, 4_000_000_000, 42, 1, 99];
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write_ids(&path, &ids).unwrap();
            eprintln!("wrote the golden ids file {}: commit it", path.display());
        }
        assert_eq!(read_ids(&path).unwrap(), ids);
    }
}
