//! The integrity envelope every binary file of a segment shares: magic
//! bytes, a major version that readers must match, and an XXH3-64 checksum
//! (seed 0). `pq.bin` and `ids.bin` carry the checksum as an 8-byte footer
//! over everything before it; the `disk.index` header carries it in its own
//! last field (the node sectors after it are covered by the manifest).
//!
//! One place checks all three, so a file kind cannot forget a check and
//! every kind reports a failure the same way (as tantivy's footer does for
//! every file of its segments).

use crate::error::FormatError;

/// How one file kind identifies itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    /// The file kind in messages ("index", "PQ", "ids").
    pub what: &'static str,
    pub magic: [u8; 8],
    /// The only major version this build reads.
    pub major: u16,
}

impl Envelope {
    /// Checks the magic bytes and the major version read from a header.
    pub fn check_identity(
        &self,
        magic: [u8; 8],
        major: u16,
        minor: u16,
    ) -> Result<(), FormatError> {
        if magic != self.magic {
            return Err(FormatError::BadMagic {
                what: self.what,
                found: magic.to_vec(),
            });
        }
        if major != self.major {
            return Err(FormatError::UnsupportedVersion {
                major,
                minor,
                supported: self.major,
            });
        }
        Ok(())
    }

    /// Compares a stored checksum with the one computed over `covered`.
    pub fn check_sum(&self, covered: &[u8], stored: u64) -> Result<(), FormatError> {
        let computed = xxhash_rust::xxh3::xxh3_64(covered);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                what: self.what,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Splits a whole file into the bytes its footer covers and checks the
    /// footer (the last 8 bytes, a little-endian XXH3-64 of the rest).
    pub fn check_footer<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], FormatError> {
        let at = file
            .len()
            .checked_sub(FOOTER_BYTES)
            .ok_or(FormatError::Truncated {
                what: "checksum footer",
                offset: 0,
                end: FOOTER_BYTES as u64,
                file_len: file.len() as u64,
            })?;
        let (body, footer) = file.split_at(at);
        let mut word = [0u8; FOOTER_BYTES];
        word.copy_from_slice(footer);
        self.check_sum(body, u64::from_le_bytes(word))?;
        Ok(body)
    }
}

/// Bytes of the checksum footer.
pub(crate) const FOOTER_BYTES: usize = 8;

/// Appends the checksum footer over everything in `bytes`.
pub(crate) fn append_footer(bytes: &mut Vec<u8>) {
    let sum = xxhash_rust::xxh3::xxh3_64(bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    const E: Envelope = Envelope {
        what: "test",
        magic: *b"SHRDTST\0",
        major: 3,
    };

    #[test]
    fn identity() {
        assert!(E.check_identity(E.magic, 3, 9).is_ok());
        assert!(matches!(
            E.check_identity(*b"SHRDXXX\0", 3, 0),
            Err(FormatError::BadMagic { what: "test", .. })
        ));
        assert!(matches!(
            E.check_identity(E.magic, 4, 0),
            Err(FormatError::UnsupportedVersion {
                major: 4,
                supported: 3,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn footer_round_trip_and_any_damage(body in prop::collection::vec(any::<u8>(), 0..200), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut file = body.clone();
            append_footer(&mut file);
            prop_assert_eq!(E.check_footer(&file).unwrap(), &body[..]);
            let i = at.index(file.len());
            let mut bad = file.clone();
            bad[i] ^= 1 << bit;
            prop_assert!(E.check_footer(&bad).is_err());
            prop_assert!(E.check_footer(&file[..i]).is_err());
        }
    }
}
