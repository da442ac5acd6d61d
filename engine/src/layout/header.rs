//! Sector 0 of `disk.index`. Spec: `format-spec/index.md`, "Header".

use zerocopy::little_endian::{F32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::envelope::Envelope;
use super::SECTOR;
use crate::element::ElemType;
use crate::error::FormatError;
use crate::metric::Metric;

pub const INDEX_MAGIC: [u8; 8] = *b"SHRDANN\0";
/// The newest major version this build writes and reads; it also reads 1.
pub const MAJOR_VERSION: u16 = 2;
pub const MINOR_VERSION: u16 = 0;
/// Bytes of sector 0 the header uses; the rest of the sector is zero.
pub const HEADER_BYTES: usize = 128;

const ENVELOPE: Envelope = Envelope {
    what: "index header",
    magic: INDEX_MAGIC,
    major: MAJOR_VERSION,
};
const ENVELOPE_V1: Envelope = Envelope {
    major: 1,
    ..ENVELOPE
};

/// Where node records sit in the file: the one thing versions 1 and 2 of
/// `disk.index` differ in (`format-spec/index.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOrder {
    /// Version 1: node `i` is the `i`-th record.
    #[default]
    Identity,
    /// Version 2: records are grouped so that a sector holds graph
    /// neighbours of one another; each record carries its node id and a
    /// slot table after the node sectors says where each node is.
    Locality,
}

impl NodeOrder {
    /// The file's major version.
    pub fn major(self) -> u16 {
        match self {
            NodeOrder::Identity => 1,
            NodeOrder::Locality => 2,
        }
    }
}

/// The index header, exactly as stored (little-endian, no implicit padding).
/// See `format-spec/index.md` for the meaning and checks of every field.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawHeader {
    pub magic: [u8; 8],
    pub major: U16,
    pub minor: U16,
    pub elem: u8,
    pub metric: u8,
    pub reserved0: [u8; 2],
    pub dim: U32,
    pub max_degree: U32,
    pub num_points: U64,
    pub medoid: U64,
    pub record_bytes: U32,
    pub records_per_sector: U32,
    pub sectors_per_record: U32,
    pub sector_size: U32,
    pub num_sectors: U64,
    pub pq_bytes: U32,
    pub build_list: U32,
    pub alpha: F32,
    pub reserved1: [u8; 44],
    pub checksum: U64,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_BYTES);

/// The decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct IndexHeader {
    pub elem: ElemType,
    pub metric: Metric,
    pub dim: u32,
    pub max_degree: u32,
    pub num_points: u64,
    pub medoid: u64,
    pub pq_bytes: u32,
    pub build_list: u32,
    pub alpha: f32,
    /// Version 1 (identity) or 2 (locality) node order.
    pub order: NodeOrder,
}

impl IndexHeader {
    /// Bytes of one node record: vector, degree, R neighbour slots, and in
    /// version 2 the node's id.
    pub fn record_bytes(&self) -> u64 {
        let id = match self.order {
            NodeOrder::Identity => 0,
            NodeOrder::Locality => 4,
        };
        self.dim as u64 * self.elem.size() as u64 + 4 + 4 * self.max_degree as u64 + id
    }

    /// Records per sector (≥ 1), or 0 if one record spans several sectors.
    pub fn records_per_sector(&self) -> u64 {
        SECTOR as u64 / self.record_bytes()
    }

    /// Sectors one record occupies when it does not fit in one (else 1).
    pub fn sectors_per_record(&self) -> u64 {
        self.record_bytes().div_ceil(SECTOR as u64)
    }

    /// Total sectors of the file, header included.
    pub fn num_sectors(&self) -> u64 {
        let rps = self.records_per_sector();
        if rps > 0 {
            1 + self.num_points.div_ceil(rps)
        } else {
            1 + self.num_points * self.sectors_per_record()
        }
    }

    /// Sectors of the version 2 slot table after the node sectors (`n`
    /// u32 slots and an 8-byte checksum, zero-padded); 0 in version 1.
    pub fn table_sectors(&self) -> u64 {
        match self.order {
            NodeOrder::Identity => 0,
            NodeOrder::Locality => (4 * self.num_points + 8).div_ceil(SECTOR as u64),
        }
    }

    /// The least length of a valid file, in bytes.
    pub fn file_bytes(&self) -> u64 {
        (self.num_sectors() + self.table_sectors()) * SECTOR as u64
    }

    /// Serializes into a full header sector with its checksum.
    pub fn to_sector(&self) -> Vec<u8> {
        let mut raw = RawHeader {
            magic: INDEX_MAGIC,
            major: self.order.major().into(),
            minor: MINOR_VERSION.into(),
            elem: self.elem.code(),
            metric: self.metric.code(),
            reserved0: [0; 2],
            dim: self.dim.into(),
            max_degree: self.max_degree.into(),
            num_points: self.num_points.into(),
            medoid: self.medoid.into(),
            record_bytes: (self.record_bytes() as u32).into(),
            records_per_sector: (self.records_per_sector() as u32).into(),
            sectors_per_record: (self.sectors_per_record() as u32).into(),
            sector_size: (SECTOR as u32).into(),
            num_sectors: self.num_sectors().into(),
            pq_bytes: self.pq_bytes.into(),
            build_list: self.build_list.into(),
            alpha: self.alpha.into(),
            reserved1: [0; 44],
            checksum: 0.into(),
        };
        raw.checksum = checksum(&raw).into();
        let mut sector = vec![0u8; SECTOR];
        if let Some(dst) = sector.get_mut(..HEADER_BYTES) {
            dst.copy_from_slice(raw.as_bytes());
        }
        sector
    }

    /// Parses and validates a header from the first bytes of an index file.
    /// `file_len` is the file's size, checked against the header's claims.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Self, FormatError> {
        let raw_bytes = bytes.get(..HEADER_BYTES).ok_or(FormatError::Truncated {
            what: "header",
            offset: 0,
            end: HEADER_BYTES as u64,
            file_len,
        })?;
        let raw = RawHeader::read_from_bytes(raw_bytes).map_err(|_| FormatError::Truncated {
            what: "header",
            offset: 0,
            end: HEADER_BYTES as u64,
            file_len,
        })?;
        let (envelope, order) = match raw.major.get() {
            1 => (ENVELOPE_V1, NodeOrder::Identity),
            _ => (ENVELOPE, NodeOrder::Locality),
        };
        envelope.check_identity(raw.magic, raw.major.get(), raw.minor.get())?;
        envelope.check_sum(checksummed(&raw), raw.checksum.get())?;
        let invalid = |field: &'static str, value: u64, why: &str| FormatError::Invalid {
            field,
            value,
            why: why.to_string(),
        };
        let elem = ElemType::from_code(raw.elem).ok_or_else(|| {
            invalid(
                "element type",
                raw.elem.into(),
                "expected 0 (u8), 1 (i8) or 2 (f32)",
            )
        })?;
        let metric = Metric::from_code(raw.metric).ok_or_else(|| {
            invalid(
                "metric",
                raw.metric.into(),
                "expected 0 (l2), 1 (ip) or 2 (cosine)",
            )
        })?;
        let h = IndexHeader {
            elem,
            metric,
            dim: raw.dim.get(),
            max_degree: raw.max_degree.get(),
            num_points: raw.num_points.get(),
            medoid: raw.medoid.get(),
            pq_bytes: raw.pq_bytes.get(),
            build_list: raw.build_list.get(),
            alpha: raw.alpha.get(),
            order,
        };
        if h.dim == 0 || h.dim > 65_536 {
            return Err(invalid("dimension", h.dim.into(), "must be in 1..=65536"));
        }
        if h.max_degree == 0 || h.max_degree > 4096 {
            return Err(invalid(
                "max degree",
                h.max_degree.into(),
                "must be in 1..=4096",
            ));
        }
        if h.num_points > u32::MAX as u64 {
            return Err(invalid("point count", h.num_points, "node ids are u32"));
        }
        if h.num_points > 0 && h.medoid >= h.num_points {
            return Err(invalid("medoid", h.medoid, "must be below the point count"));
        }
        if raw.sector_size.get() as usize != SECTOR {
            return Err(invalid(
                "sector size",
                raw.sector_size.get().into(),
                "must be 4096",
            ));
        }
        let derived = [
            (
                "record bytes",
                raw.record_bytes.get() as u64,
                h.record_bytes(),
            ),
            (
                "records per sector",
                raw.records_per_sector.get() as u64,
                h.records_per_sector(),
            ),
            (
                "sectors per record",
                raw.sectors_per_record.get() as u64,
                h.sectors_per_record(),
            ),
            ("sector count", raw.num_sectors.get(), h.num_sectors()),
        ];
        for (field, stored, want) in derived {
            if stored != want {
                return Err(invalid(
                    field,
                    stored,
                    &format!("the other fields imply {want}"),
                ));
            }
        }
        if h.order == NodeOrder::Locality && h.records_per_sector() < 1 {
            return Err(invalid(
                "records per sector",
                0,
                "version 2 needs records that fit a sector",
            ));
        }
        let need = h.num_sectors() * SECTOR as u64;
        if file_len < need {
            return Err(FormatError::Truncated {
                what: "node sectors",
                offset: SECTOR as u64,
                end: need,
                file_len,
            });
        }
        if file_len < h.file_bytes() {
            return Err(FormatError::Truncated {
                what: "slot table",
                offset: need,
                end: h.file_bytes(),
                file_len,
            });
        }
        Ok(h)
    }
}

/// The bytes the header checksum covers: all but the checksum field.
fn checksummed(raw: &RawHeader) -> &[u8] {
    let bytes = raw.as_bytes();
    bytes.get(..HEADER_BYTES - 8).unwrap_or(bytes)
}

fn checksum(raw: &RawHeader) -> u64 {
    xxhash_rust::xxh3::xxh3_64(checksummed(raw))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = IndexHeader> {
        (
            0u8..3,
            0u8..3,
            1u32..2000,
            1u32..200,
            1u64..10_000_000,
            0u32..256,
            1u32..500,
            1.0f32..2.0,
            any::<bool>(),
        )
            .prop_filter("version 2 records fit a sector", |t| {
                !t.8 || t.2 * [1, 1, 4][t.0 as usize] + 8 + 4 * t.3 <= SECTOR as u32
            })
            .prop_map(|(e, m, dim, r, n, pq, l, alpha, v2)| IndexHeader {
                elem: ElemType::from_code(e).unwrap(),
                metric: Metric::from_code(m).unwrap(),
                dim,
                max_degree: r,
                num_points: n,
                medoid: n / 2,
                pq_bytes: pq,
                build_list: l,
                alpha,
                order: if v2 {
                    NodeOrder::Locality
                } else {
                    NodeOrder::Identity
                },
            })
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_header()) {
            let sector = h.to_sector();
            prop_assert_eq!(sector.len(), SECTOR);
            let len = h.file_bytes();
            prop_assert_eq!(IndexHeader::parse(&sector, len).unwrap(), h);
        }

        /// Any single flipped byte in the used header is rejected, never
        /// accepted and never a panic.
        #[test]
        fn any_corruption_is_rejected(h in arb_header(), at in 0usize..HEADER_BYTES, bit in 0u8..8) {
            let mut sector = h.to_sector();
            sector[at] ^= 1 << bit;
            let len = h.file_bytes();
            prop_assert!(IndexHeader::parse(&sector, len).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), len in any::<u64>()) {
            let _ = IndexHeader::parse(&bytes, len);
        }
    }

    #[test]
    fn each_rejection_says_why() {
        let h = IndexHeader {
            elem: ElemType::U8,
            metric: Metric::L2,
            dim: 128,
            max_degree: 64,
            num_points: 1000,
            medoid: 3,
            pq_bytes: 32,
            build_list: 100,
            alpha: 1.2,
            order: NodeOrder::Identity,
        };
        let len = h.num_sectors() * SECTOR as u64;
        let s = h.to_sector();
        let mut bad = s.clone();
        bad[0] = b'X';
        assert!(matches!(
            IndexHeader::parse(&bad, len),
            Err(FormatError::BadMagic { .. })
        ));
        let mut bad = s.clone();
        bad[8] = 3;
        assert!(matches!(
            IndexHeader::parse(&bad, len),
            Err(FormatError::UnsupportedVersion { major: 3, .. })
        ));
        let mut bad = s.clone();
        bad[16] ^= 1;
        assert!(matches!(
            IndexHeader::parse(&bad, len),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            IndexHeader::parse(&s, len - 1),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            IndexHeader::parse(&s[..100], len),
            Err(FormatError::Truncated { .. })
        ));
        // A header whose checksum is right but whose fields disagree.
        let mut raw = RawHeader::read_from_bytes(&s[..HEADER_BYTES]).unwrap();
        raw.record_bytes = 999.into();
        raw.checksum = checksum(&raw).into();
        let msg = IndexHeader::parse(raw.as_bytes(), len)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("record bytes = 999"), "{msg}");
    }
}
