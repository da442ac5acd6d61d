//! `pq.bin`: the PQ codebook and every point's code. Spec: `format-spec/pq.md`.
//!
//! The whole file is loaded into RAM at open (it is what the search keeps in
//! memory anyway), so a checksum over all of it costs one pass at ~10 GB/s.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::envelope::{append_footer, Envelope, FOOTER_BYTES};
use crate::error::{Error, FormatError, Result};
use crate::metric::Metric;
use crate::pq::{Codes, PqCodebook};

pub const PQ_MAGIC: [u8; 8] = *b"SHRDPQ\0\0";
const PQ_MAJOR: u16 = 1;
const PQ_MINOR: u16 = 0;
const PQ_HEADER_BYTES: usize = 64;
const CENTROIDS: u32 = 256;
const ENVELOPE: Envelope = Envelope {
    what: "PQ file",
    magic: PQ_MAGIC,
    major: PQ_MAJOR,
};

#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
struct RawPqHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    metric: u8,
    reserved0: [u8; 3],
    dim: U32,
    num_chunks: U32,
    num_centroids: U32,
    reserved1: [u8; 4],
    num_points: U64,
    reserved2: [u8; 24],
}
const _: () = assert!(std::mem::size_of::<RawPqHeader>() == PQ_HEADER_BYTES);

/// A decoded `pq.bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct PqFile {
    pub codebook: PqCodebook,
    /// `num_points × num_chunks` code bytes.
    pub codes: Codes,
}

/// Bytes after the header and before the footer; `None` on overflow (a
/// crafted header must not wrap around and pass the size check).
fn body_len(dim: u64, m: u64, n: u64) -> Option<u64> {
    let fixed = 4 * (m + 1) + 4 * dim + 4 * CENTROIDS as u64 * dim;
    n.checked_mul(m)?.checked_add(fixed)
}

/// Writes `pq.bin`; returns its size in bytes.
pub fn write_pq(path: &Path, pq: &PqCodebook, codes: &[u8]) -> Result<u64> {
    let m = pq.num_chunks();
    let n = codes.len() / m;
    let raw = RawPqHeader {
        magic: PQ_MAGIC,
        major: PQ_MAJOR.into(),
        minor: PQ_MINOR.into(),
        metric: pq.metric.code(),
        reserved0: [0; 3],
        dim: (pq.dim as u32).into(),
        num_chunks: (m as u32).into(),
        num_centroids: CENTROIDS.into(),
        reserved1: [0; 4],
        num_points: (n as u64).into(),
        reserved2: [0; 24],
    };
    let body = body_len(pq.dim as u64, m as u64, n as u64).unwrap_or(0);
    let mut bytes = Vec::with_capacity(PQ_HEADER_BYTES + body as usize + 8);
    bytes.extend_from_slice(raw.as_bytes());
    for o in &pq.offsets {
        bytes.extend_from_slice(&o.to_le_bytes());
    }
    for x in pq.center.iter().chain(&pq.pivots) {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.extend_from_slice(codes);
    append_footer(&mut bytes);
    let io = |e| Error::io(path, e);
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&bytes).map_err(io)?;
    out.flush().map_err(io)?;
    out.get_ref().sync_all().map_err(io)?;
    Ok(bytes.len() as u64)
}

/// Reads and fully validates `pq.bin`.
pub fn read_pq(path: &Path) -> Result<PqFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_pq(&bytes).map_err(|e| Error::format(path, e))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    super::le_f32s(bytes).collect()
}

/// Parses the bytes of a `pq.bin` file.
pub(crate) fn parse_pq(bytes: &[u8]) -> Result<PqFile, FormatError> {
    let file_len = bytes.len() as u64;
    let truncated = |what, offset: u64, end: u64| FormatError::Truncated {
        what,
        offset,
        end,
        file_len,
    };
    let head =
        bytes
            .get(..PQ_HEADER_BYTES)
            .ok_or(truncated("PQ header", 0, PQ_HEADER_BYTES as u64))?;
    let raw = RawPqHeader::read_from_bytes(head).map_err(|_| truncated("PQ header", 0, 64))?;
    ENVELOPE.check_identity(raw.magic, raw.major.get(), raw.minor.get())?;
    let invalid = |field, value: u64, why: &str| FormatError::Invalid {
        field,
        value,
        why: why.into(),
    };
    let metric = Metric::from_code(raw.metric)
        .ok_or_else(|| invalid("metric", raw.metric.into(), "expected 0, 1 or 2"))?;
    let (dim, m, n) = (
        raw.dim.get() as u64,
        raw.num_chunks.get() as u64,
        raw.num_points.get(),
    );
    if dim == 0 || dim > 65_536 {
        return Err(invalid("dimension", dim, "must be in 1..=65536"));
    }
    if m == 0 || m > dim {
        return Err(invalid("chunk count", m, "must be in 1..=dimension"));
    }
    if raw.num_centroids.get() != CENTROIDS {
        return Err(invalid(
            "centroid count",
            raw.num_centroids.get().into(),
            "must be 256",
        ));
    }
    if n > u32::MAX as u64 {
        return Err(invalid("point count", n, "node ids are u32"));
    }
    let need = body_len(dim, m, n)
        .and_then(|b| b.checked_add((PQ_HEADER_BYTES + FOOTER_BYTES) as u64))
        .ok_or_else(|| invalid("point count", n, "file size overflows"))?;
    if file_len != need {
        return Err(truncated(
            "PQ body and footer",
            PQ_HEADER_BYTES as u64,
            need,
        ));
    }
    let body = ENVELOPE.check_footer(bytes)?;
    let (dim, m) = (dim as usize, m as usize);
    let mut at = PQ_HEADER_BYTES;
    let mut take = |len: usize| {
        let s = body.get(at..at + len).unwrap_or(&[]);
        at += len;
        s
    };
    let offsets: Vec<u32> = super::le_u32s(take(4 * (m + 1))).collect();
    let center = f32s(take(4 * dim));
    let pivots = f32s(take(4 * CENTROIDS as usize * dim));
    let codes = Codes::from_slice(take(n as usize * m));
    let monotone = offsets.windows(2).all(|w| w.first() < w.get(1));
    if offsets.first() != Some(&0) || offsets.last() != Some(&(dim as u32)) || !monotone {
        return Err(invalid(
            "chunk offsets",
            0,
            "must rise strictly from 0 to the dimension",
        ));
    }
    Ok(PqFile {
        codebook: PqCodebook::from_parts(metric, dim, offsets, center, pivots),
        codes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::data::Vectors;
    use crate::pq::PqParams;
    use crate::progress::NoProgress;
    use proptest::prelude::*;

    fn sample() -> (PqCodebook, Vec<u8>) {
        let data: Vec<u8> = (0..64 * 300).map(|i| (i * 31 % 251) as u8).collect();
        let v = Vectors::new(&data[..], 64);
        let p = PqParams {
            num_chunks: 8,
            train_sample: 300,
            iterations: 2,
            seed: 1,
        };
        let pq = PqCodebook::train(v, Metric::L2, &p, &NoProgress).unwrap();
        let codes = pq.encode_all(v, &NoProgress);
        (pq, codes)
    }

    #[test]
    fn round_trip() {
        let (pq, codes) = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pq.bin");
        write_pq(&p, &pq, &codes).unwrap();
        let back = read_pq(&p).unwrap();
        assert_eq!(back.codebook, pq);
        assert_eq!(&back.codes[..], &codes[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every flipped bit and every truncation is rejected.
        #[test]
        fn corruption_is_rejected(at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let (pq, codes) = sample();
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("pq.bin");
            write_pq(&p, &pq, &codes).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= 1 << bit;
            prop_assert!(parse_pq(&flipped).is_err());
            prop_assert!(parse_pq(&bytes[..cut.index(bytes.len())]).is_err());
        }
    }
}
