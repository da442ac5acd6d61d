//! Documents: the user's ids, stored payloads, and the JSON Lines they come in.
//!
//! ```text
//!  docs.jsonl ──jsonl::DocReader──► (line, UserId, vector, payload)
//!                                        │        │         │
//!                         keys::KeyMap     ◄──────┘         ├──► store::DocStoreWriter ──► docs.bin
//!                              │                            └──► filter index (crate::filter)
//!                              ▼
//!                          keys.bin   (user id ↔ segment-local id)
//! ```
//!
//! | file | what |
//! |---|---|
//! | `jsonl.rs` | [`DocReader`]: one document per line, errors naming the line and the field |
//! | `store.rs` | `docs.bin`: payloads in zstd blocks; one block read per fetched document |
//! | `keys.rs` | `keys.bin`: every document's user id in segment order, and the lookup the other way |
//!
//! Inside the engine a document is its segment-local id (`u32`, the row of
//! its vector); the user's id exists only at the edges: in the input, in
//! `keys.bin`, and in answers. Specs: `format-spec/documents.md`.

mod jsonl;
mod keys;
mod store;

pub use jsonl::{DocReader, Document, VectorSource};
pub use keys::{KeyMap, KEYS_MAGIC};
pub use store::{DocStore, DocStoreWriter, DEFAULT_BLOCK_BYTES, DOCS_MAGIC};

/// A document's id as the user gave it: an unsigned integer or a string.
/// Returned exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserId {
    Int(u64),
    Str(String),
}

impl UserId {
    /// The JSON value of the id, as the user gave it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            UserId::Int(i) => serde_json::Value::from(*i),
            UserId::Str(s) => serde_json::Value::from(s.as_str()),
        }
    }

    /// An id from JSON: a non-negative integer or a string; `None` otherwise.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(UserId::Int),
            serde_json::Value::String(s) => Some(UserId::Str(s.clone())),
            _ => None,
        }
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserId::Int(i) => write!(f, "{i}"),
            UserId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UserId::Int(i) => s.serialize_u64(*i),
            UserId::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        UserId::from_json(&v)
            .ok_or_else(|| serde::de::Error::custom("an id is a non-negative integer or a string"))
    }
}
