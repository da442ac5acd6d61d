//! The PQ codes of an index's points (`n × M` bytes), held in RAM.

use std::fmt;
use std::ops::Deref;

/// The alignment of the first code. A search reads thousands of scattered
/// codes per query, and each cache line a code spans is a miss: aligned to
/// 64 bytes, a code of M = 8, 16, 32 or 64 bytes lies in one line. From
/// the heap (16-byte aligned) a 32-byte code crossed two lines one time in
/// two. Aligned, the flat plan over 75K matches ran 23 % and 37 % faster
/// in two interleaved rounds (1M points, M = 32, `bench --filter`).
const ALIGN: usize = 64;

/// Code bytes that start on a cache line.
///
/// Alignment is obtained without `unsafe`: over-allocate by `ALIGN` and
/// start at the first aligned byte.
pub struct Codes {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Codes {
    /// A copy of `bytes`, aligned.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut raw = vec![0u8; bytes.len() + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        raw[start..start + bytes.len()].copy_from_slice(bytes);
        Codes {
            raw,
            start,
            len: bytes.len(),
        }
    }
}

impl Codes {
    /// `pieces` laid end to end (`len` bytes in all; a shortfall stays
    /// zero, an excess is dropped), aligned, written in place: building a
    /// `Vec` first and then [`Codes::from_slice`] held both at once.
    pub fn from_pieces<'a>(len: usize, pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut at = start;
        let end = start + len;
        for piece in pieces {
            let n = piece.len().min(end - at);
            raw[at..at + n].copy_from_slice(&piece[..n]);
            at += n;
            if at == end {
                break;
            }
        }
        Codes { raw, start, len }
    }
}

impl Deref for Codes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl Clone for Codes {
    fn clone(&self) -> Self {
        Codes::from_slice(self)
    }
}

impl PartialEq for Codes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_aligned_and_equal_their_bytes() {
        for len in [0usize, 1, 31, 32, 4096, 10_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let codes = Codes::from_slice(&bytes);
            assert_eq!(&*codes, &bytes[..]);
            assert_eq!(codes.as_ptr() as usize % ALIGN, 0, "len {len}");
            let copy = codes.clone();
            assert_eq!(copy, codes);
            assert_eq!(copy.as_ptr() as usize % ALIGN, 0);
            // Laid end to end from pieces of 7 bytes: the same bytes.
            let pieced = Codes::from_pieces(len, bytes.chunks(7));
            assert_eq!(&*pieced, &bytes[..]);
            assert_eq!(pieced.as_ptr() as usize % ALIGN, 0);
        }
    }
}
