//! The input of an embed run: JSON Lines, one document per line, each with
//! an id (`"id"`, or BEIR's `"_id"`) and the string fields to embed.
//!
//! Blank lines are skipped, as `build --docs` skips them, so row *i* of the
//! vectors is the *i*-th document of the file and `build --docs F --base
//! vectors.fbin` pairs them. Every line is checked, even those outside a
//! part, so that every worker of a split run refuses the same bad file.

use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::error::{json_kind, EmbedError, Error, Result};

/// The documents of one run's rows, and what identifies the whole file.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Documents in the whole file.
    pub total: usize,
    /// XXH3-64 and length of the file's bytes.
    pub xxh3: u64,
    pub len: u64,
    /// For the rows asked for: 1-based line numbers, ids (as JSON), texts.
    pub lines: Vec<usize>,
    pub ids: Vec<Value>,
    pub texts: Vec<String>,
}

fn documents(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

/// Reads `path`, checks every document, and keeps the ids and texts of the
/// rows that `rows` picks from the document count (called once the count is
/// known). Fields are joined with a space, in the order given.
pub fn read(
    path: &Path,
    fields: &[String],
    rows: impl FnOnce(usize) -> Range<usize>,
) -> Result<Input> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let total = documents(&bytes).count();
    let keep = rows(total);
    let mut input = Input {
        total,
        xxh3: xxhash_rust::xxh3::xxh3_64(&bytes),
        len: bytes.len() as u64,
        ..Input::default()
    };
    let bad = |e: EmbedError| Error::embed(path, e);
    for (row, (line, raw)) in documents(&bytes).enumerate() {
        let obj: serde_json::Map<String, Value> = match serde_json::from_slice(raw) {
            Ok(Value::Object(o)) => o,
            Ok(other) => {
                return Err(bad(EmbedError::NotObject {
                    line,
                    why: format!("got {}", json_kind(&other)),
                }))
            }
            Err(e) => {
                return Err(bad(EmbedError::NotObject {
                    line,
                    why: e.to_string(),
                }))
            }
        };
        let id = match (obj.get("id"), obj.get("_id")) {
            (Some(id), None) | (None, Some(id)) => id,
            (Some(_), Some(_)) => {
                return Err(bad(EmbedError::NotObject {
                    line,
                    why: "both \"id\" and \"_id\" are given; a document has one id".into(),
                }))
            }
            (None, None) => return Err(bad(EmbedError::MissingId { line })),
        };
        let mut text = String::new();
        for field in fields {
            match obj.get(field) {
                Some(Value::String(s)) => {
                    if !text.is_empty() {
                        text.push(' ');
                    }
                    text.push_str(s);
                }
                Some(other) => {
                    return Err(bad(EmbedError::NotString {
                        line,
                        field: field.clone(),
                        got: json_kind(other),
                    }))
                }
                None => {
                    return Err(bad(EmbedError::MissingField {
                        line,
                        field: field.clone(),
                    }))
                }
            }
        }
        if keep.contains(&row) {
            input.lines.push(line);
            input.ids.push(id.clone());
            input.texts.push(text);
        }
    }
    Ok(input)
}
