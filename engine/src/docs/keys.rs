//! `keys.bin`: every document's user id, in segment-local id order, and
//! the order that sorts them, so a user id is found by binary search.
//! Spec: `format-spec/documents.md`.
//!
//! ```text
//!  ┌───────────┬──────────────────────────────┬───────────────┬────────┐
//!  │header 32 B│ keys: u64 × n (integers)      │ order: u32 × n│ xxh3-64│
//!  │           │   or u64 × (n+1) + bytes      │ (sorted ids)  │ footer │
//!  └───────────┴──────────────────────────────┴───────────────┴────────┘
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::UserId;
use crate::error::{DocsError, Error, FormatError, Result};
use crate::layout::{append_footer, Envelope, FOOTER_BYTES};

pub const KEYS_MAGIC: [u8; 8] = *b"SHRDKEY\0";
const MAJOR: u16 = 1;
const MINOR: u16 = 0;
const HEADER: usize = 32;
const KIND_INT: u8 = 0;
const KIND_STR: u8 = 1;
const ENVELOPE: Envelope = Envelope {
    what: "keys file",
    magic: KEYS_MAGIC,
    major: MAJOR,
};

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    kind: u8,
    reserved: [u8; 3],
    count: U64,
    string_bytes: U64,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER);

#[derive(Debug, Clone, PartialEq)]
enum Keys {
    Int(Vec<u64>),
    Str { offsets: Vec<u64>, bytes: Vec<u8> },
}

/// User ids ↔ segment-local ids, held in RAM.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMap {
    keys: Keys,
    /// Segment-local ids sorted by their key.
    order: Vec<u32>,
}

impl KeyMap {
    /// A map over `ids` (segment-local id i has `ids[i]`); ids must be
    /// unique and all integers or all strings.
    pub fn from_ids(ids: Vec<UserId>) -> std::result::Result<Self, DocsError> {
        if ids.len() as u64 > u32::MAX as u64 {
            return Err(DocsError::TooMany {
                max: u32::MAX as u64,
            });
        }
        let all_int = ids.iter().all(|i| matches!(i, UserId::Int(_)));
        let keys = if all_int {
            Keys::Int(
                ids.iter()
                    .map(|i| match i {
                        UserId::Int(x) => *x,
                        UserId::Str(_) => 0,
                    })
                    .collect(),
            )
        } else {
            let mut offsets = Vec::with_capacity(ids.len() + 1);
            let mut bytes = Vec::new();
            offsets.push(0);
            for id in &ids {
                match id {
                    UserId::Str(s) => bytes.extend_from_slice(s.as_bytes()),
                    UserId::Int(x) => {
                        return Err(DocsError::MixedKeys { id: x.to_string() });
                    }
                }
                offsets.push(bytes.len() as u64);
            }
            Keys::Str { offsets, bytes }
        };
        let mut map = KeyMap {
            keys,
            order: (0..ids.len() as u32).collect(),
        };
        let mut order = std::mem::take(&mut map.order);
        order.sort_by(|&a, &b| map.cmp_keys(a, b));
        if let Some(&[a, _]) = order
            .windows(2)
            .find(|w| matches!(w, &[a, b] if map.cmp_keys(*a, *b).is_eq()))
        {
            return Err(DocsError::KeyTwice {
                id: map.key(a).to_string(),
            });
        }
        map.order = order;
        Ok(map)
    }

    fn cmp_keys(&self, a: u32, b: u32) -> std::cmp::Ordering {
        match &self.keys {
            Keys::Int(v) => v.get(a as usize).cmp(&v.get(b as usize)),
            Keys::Str { .. } => self.str_bytes(a).cmp(self.str_bytes(b)),
        }
    }

    fn str_bytes(&self, doc: u32) -> &[u8] {
        match &self.keys {
            Keys::Str { offsets, bytes } => {
                let i = doc as usize;
                let (Some(&s), Some(&e)) = (offsets.get(i), offsets.get(i + 1)) else {
                    return &[];
                };
                bytes.get(s as usize..e as usize).unwrap_or(&[])
            }
            Keys::Int(_) => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether the ids are integers (else strings): new documents of the
    /// segment's shard must have ids of the same kind.
    pub fn int_ids(&self) -> bool {
        matches!(self.keys, Keys::Int(_))
    }

    /// The user id of segment-local id `doc` (`doc < len()`).
    pub fn key(&self, doc: u32) -> UserId {
        match &self.keys {
            Keys::Int(v) => UserId::Int(v.get(doc as usize).copied().unwrap_or(0)),
            Keys::Str { .. } => {
                UserId::Str(String::from_utf8_lossy(self.str_bytes(doc)).into_owned())
            }
        }
    }

    /// The segment-local id of a user id.
    pub fn lookup(&self, id: &UserId) -> Option<u32> {
        let found = match (&self.keys, id) {
            (Keys::Int(v), UserId::Int(x)) => self
                .order
                .binary_search_by(|&d| v.get(d as usize).cmp(&Some(x))),
            (Keys::Str { .. }, UserId::Str(s)) => self
                .order
                .binary_search_by(|&d| self.str_bytes(d).cmp(s.as_bytes())),
            _ => return None,
        };
        found.ok().and_then(|i| self.order.get(i).copied())
    }

    /// Bytes of RAM held.
    pub fn memory_bytes(&self) -> usize {
        4 * self.order.len()
            + match &self.keys {
                Keys::Int(v) => 8 * v.len(),
                Keys::Str { offsets, bytes } => 8 * offsets.len() + bytes.len(),
            }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let (kind, string_bytes) = match &self.keys {
            Keys::Int(_) => (KIND_INT, 0),
            Keys::Str { bytes, .. } => (KIND_STR, bytes.len() as u64),
        };
        let header = RawHeader {
            magic: KEYS_MAGIC,
            major: MAJOR.into(),
            minor: MINOR.into(),
            kind,
            reserved: [0; 3],
            count: (self.order.len() as u64).into(),
            string_bytes: string_bytes.into(),
        };
        let mut out = header.as_bytes().to_vec();
        match &self.keys {
            Keys::Int(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Keys::Str { offsets, bytes } => {
                offsets
                    .iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                out.extend_from_slice(bytes);
            }
        }
        self.order
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        append_footer(&mut out);
        out
    }

    /// Writes `keys.bin`; returns its size.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes();
        std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
        Ok(bytes.len() as u64)
    }

    /// Reads and checks `keys.bin`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|e| Error::format(path, e))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, FormatError> {
        let file_len = bytes.len() as u64;
        let (h, _) = RawHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
            what: "keys header",
            offset: 0,
            end: HEADER as u64,
            file_len,
        })?;
        ENVELOPE.check_identity(h.magic, h.major.get(), h.minor.get())?;
        let (n, sbytes) = (h.count.get(), h.string_bytes.get());
        let invalid = |field, value, why: &str| FormatError::Invalid {
            field,
            value,
            why: why.into(),
        };
        if n > u32::MAX as u64 {
            return Err(invalid("key count", n, "segment-local ids are u32"));
        }
        let keys_len = match h.kind {
            KIND_INT if sbytes == 0 => 8 * n,
            KIND_INT => return Err(invalid("string bytes", sbytes, "must be 0 for integer ids")),
            KIND_STR => (8 * (n + 1)).saturating_add(sbytes),
            k => {
                return Err(invalid(
                    "key kind",
                    k.into(),
                    "expected 0 (integers) or 1 (strings)",
                ))
            }
        };
        let need = (HEADER as u64)
            .checked_add(keys_len)
            .and_then(|x| x.checked_add(4 * n + FOOTER_BYTES as u64));
        if need != Some(file_len) {
            return Err(FormatError::Truncated {
                what: "keys, order and footer",
                offset: HEADER as u64,
                end: need.unwrap_or(u64::MAX),
                file_len,
            });
        }
        let body = ENVELOPE.check_footer(bytes)?;
        let section = |from: u64, len: u64| {
            body.get(from as usize..(from + len) as usize)
                .unwrap_or(&[])
        };
        let u64s = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect()
        };
        let keys_at = HEADER as u64;
        let keys = if h.kind == KIND_INT {
            Keys::Int(u64s(section(keys_at, 8 * n)))
        } else {
            let offsets = u64s(section(keys_at, 8 * (n + 1)));
            let ok = offsets.first() == Some(&0)
                && offsets.last() == Some(&sbytes)
                && offsets.windows(2).all(|w| w.first() <= w.get(1));
            if !ok {
                return Err(invalid(
                    "key offsets",
                    0,
                    "must rise from 0 to the string bytes",
                ));
            }
            let strings = section(keys_at + 8 * (n + 1), sbytes).to_vec();
            if std::str::from_utf8(&strings).is_err() {
                return Err(invalid("key bytes", sbytes, "not UTF-8"));
            }
            Keys::Str {
                offsets,
                bytes: strings,
            }
        };
        let order: Vec<u32> = crate::layout::le_u32s(section(keys_at + keys_len, 4 * n)).collect();
        let map = KeyMap { keys, order };
        // The order must be a permutation that sorts the keys strictly
        // (strictly: unique ids); each string key must be valid UTF-8 on
        // its own, not only the concatenation.
        let mut seen = vec![false; n as usize];
        for (i, &d) in map.order.iter().enumerate() {
            match seen.get_mut(d as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(invalid("order", d.into(), "not a permutation of the ids")),
            }
            if let Some(&prev) = i.checked_sub(1).and_then(|p| map.order.get(p)) {
                if !map.cmp_keys(prev, d).is_lt() {
                    return Err(invalid("order", d.into(), "keys not strictly increasing"));
                }
            }
            if std::str::from_utf8(map.str_bytes(d)).is_err() {
                return Err(invalid("key", d.into(), "not UTF-8"));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn check_round_trip(ids: Vec<UserId>) {
        let map = KeyMap::from_ids(ids.clone()).unwrap();
        let back = KeyMap::parse(&map.to_bytes()).unwrap();
        assert_eq!(back, map);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(back.key(i as u32), *id);
            assert_eq!(back.lookup(id), Some(i as u32));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn int_keys(ids in prop::collection::btree_set(any::<u64>(), 0..200), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ids: Vec<UserId> = ids.into_iter().rev().map(UserId::Int).collect();
            check_round_trip(ids.clone());
            let bytes = KeyMap::from_ids(ids).unwrap().to_bytes();
            let i = at.index(bytes.len());
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            prop_assert!(KeyMap::parse(&bad).is_err() || (13..16).contains(&i));
            prop_assert!(KeyMap::parse(&bytes[..i]).is_err());
        }

        #[test]
        fn string_keys(ids in prop::collection::btree_set("\\PC{0,12}", 0..100), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ids: Vec<UserId> = ids.into_iter().map(UserId::Str).collect();
            check_round_trip(ids.clone());
            let bytes = KeyMap::from_ids(ids).unwrap().to_bytes();
            let i = at.index(bytes.len());
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            prop_assert!(KeyMap::parse(&bad).is_err() || (13..16).contains(&i));
        }
    }

    #[test]
    fn unknown_and_duplicate_ids() {
        let map = KeyMap::from_ids(vec![UserId::Int(5), UserId::Int(2)]).unwrap();
        assert_eq!(map.lookup(&UserId::Int(3)), None);
        assert_eq!(map.lookup(&UserId::Str("5".into())), None);
        assert!(KeyMap::from_ids(vec![UserId::Int(5), UserId::Int(5)])
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(KeyMap::from_ids(vec![UserId::Str("a".into()), UserId::Int(5)]).is_err());
    }

    /// The golden files, written once if missing and never regenerated:
    /// one of integer keys, one of string keys.
    #[test]
    fn golden_keys_v1_still_read() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/keys-v1");
        let ints: Vec<UserId> = [9u64, 3, u64::MAX, 0, 12].map(UserId::Int).to_vec();
        let strs: Vec<UserId> = ["man.1#0", "ls(1)", "", "ünïcode", "man.1#10"]
            .map(|s| UserId::Str(s.to_string()))
            .to_vec();
        for (name, ids) in [("int", &ints), ("str", &strs)] {
            let path = dir.join(format!("{name}-{}", crate::layout::KEYS_FILE));
            if !path.exists() {
                std::fs::create_dir_all(&dir).unwrap();
                KeyMap::from_ids(ids.clone()).unwrap().write(&path).unwrap();
                eprintln!("wrote the golden keys file {}: commit it", path.display());
            }
            let map = KeyMap::read(&path).unwrap();
            assert_eq!(map.len(), ids.len());
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(map.key(i as u32), *id);
                assert_eq!(map.lookup(id), Some(i as u32));
            }
        }
    }
}
