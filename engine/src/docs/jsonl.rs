//! Documents as JSON Lines: one object per line with `"id"`, optionally
//! `"vector"`, and any other fields as the payload.
//!
//! A line may name its id `"_id"` instead, as a BEIR `corpus.jsonl` does
//! (`{"_id": "12", "title": …, "text": …}`): the id is taken as given (a
//! string stays a string) and `"_id"` does not go into the payload. A line
//! with both `"id"` and `"_id"` is refused rather than one of them guessed.

use std::collections::HashMap;
use std::io::BufRead;

use serde_json::{Map, Value};

use super::UserId;
use crate::element::ElemType;
use crate::error::{json_kind, DocsError};

/// Where each document's vector comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorSource {
    /// The `"vector"` field of each line: numbers of this element type; the
    /// first line fixes the dimension unless one is given.
    Inline { elem: ElemType, dim: Option<usize> },
    /// Row i of a vector file (named here for messages) is line i's
    /// vector; a `"vector"` field beside it is an error.
    Base { name: String },
    /// Vectors are made elsewhere (e.g. embedded from a text field): lines
    /// may not carry one.
    None,
}

/// One document read from a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based line number, for messages.
    pub line: usize,
    pub id: UserId,
    /// The vector, converted to f32 and checked against the element type
    /// (`VectorSource::Inline` only).
    pub vector: Option<Vec<f32>>,
    /// Every field but `"id"` (or `"_id"`) and `"vector"`, as given.
    pub payload: Map<String, Value>,
}

/// Reads documents from JSON Lines, checking each line as it goes: ids
/// present, unique and all of one kind (integers or strings); vectors of one
/// length and of values the element type holds. Blank lines are skipped.
pub struct DocReader<R> {
    input: R,
    source: VectorSource,
    line: usize,
    seen: HashMap<UserId, usize>,
    /// "integer" or "string": what the first id was.
    id_kind: Option<&'static str>,
    buf: String,
}

impl<R: BufRead> DocReader<R> {
    pub fn new(input: R, source: VectorSource) -> Self {
        DocReader {
            input,
            source,
            line: 0,
            seen: HashMap::new(),
            id_kind: None,
            buf: String::new(),
        }
    }

    /// The dimension fixed so far by inline vectors.
    pub fn dim(&self) -> Option<usize> {
        match self.source {
            VectorSource::Inline { dim, .. } => dim,
            _ => None,
        }
    }

    /// Documents read so far.
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// The next document, `Ok(None)` at the end of the input.
    pub fn next_document(&mut self) -> std::io::Result<Result<Option<Document>, DocsError>> {
        loop {
            self.buf.clear();
            if self.input.read_line(&mut self.buf)? == 0 {
                return Ok(Ok(None));
            }
            self.line += 1;
            if self.buf.trim().is_empty() {
                continue;
            }
            return Ok(self.parse_line().map(Some));
        }
    }

    fn parse_line(&mut self) -> Result<Document, DocsError> {
        let line = self.line;
        if self.seen.len() as u64 >= u32::MAX as u64 {
            return Err(DocsError::TooMany {
                max: u32::MAX as u64,
            });
        }
        let value: Value = serde_json::from_str(&self.buf)
            .map_err(|source| DocsError::NotJson { line, source })?;
        let Value::Object(mut payload) = value else {
            return Err(DocsError::NotObject {
                line,
                got: json_kind(&value),
            });
        };
        let raw_id = match (payload.remove("id"), payload.remove("_id")) {
            (Some(id), None) | (None, Some(id)) => id,
            (Some(_), Some(_)) => return Err(DocsError::TwoIds { line }),
            (None, None) => return Err(DocsError::MissingId { line }),
        };
        let id = UserId::from_json(&raw_id).ok_or_else(|| DocsError::BadId {
            line,
            got: truncate(&raw_id.to_string()),
        })?;
        let kind = match id {
            UserId::Int(_) => "integer",
            UserId::Str(_) => "string",
        };
        match self.id_kind {
            Some(expected) if expected != kind => {
                return Err(DocsError::MixedIds {
                    line,
                    id: truncate(&id.to_string()),
                    got: kind,
                    expected,
                });
            }
            _ => self.id_kind = Some(kind),
        }
        if let Some(&first) = self.seen.get(&id) {
            return Err(DocsError::DuplicateId {
                line,
                id: truncate(&id.to_string()),
                first,
            });
        }
        let raw_vector = payload.remove("vector");
        let vector = match (&mut self.source, raw_vector) {
            (VectorSource::Inline { elem, dim }, Some(v)) => {
                let v =
                    parse_vector(&v, *elem).map_err(|why| DocsError::BadVector { line, why })?;
                match dim {
                    Some(d) if *d != v.len() => {
                        return Err(DocsError::BadVector {
                            line,
                            why: format!("has {} values, the documents before it {d}", v.len()),
                        })
                    }
                    Some(_) => {}
                    None => *dim = Some(v.len()),
                }
                Some(v)
            }
            (VectorSource::Inline { .. }, None) => return Err(DocsError::MissingVector { line }),
            (VectorSource::Base { name }, Some(_)) => {
                return Err(DocsError::VectorBesideBase {
                    line,
                    base: name.clone(),
                })
            }
            (VectorSource::Base { .. } | VectorSource::None, None) => None,
            (VectorSource::None, Some(_)) => None,
        };
        self.seen.insert(id.clone(), line);
        Ok(Document {
            line,
            id,
            vector,
            payload,
        })
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(64).collect::<String>())
    }
}

/// A JSON array of numbers that all fit `elem`, as f32.
fn parse_vector(v: &Value, elem: ElemType) -> Result<Vec<f32>, String> {
    let Value::Array(items) = v else {
        return Err(format!("must be an array of numbers, got {}", json_kind(v)));
    };
    if items.is_empty() {
        return Err("is empty".into());
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, x) in items.iter().enumerate() {
        let Some(f) = x.as_f64() else {
            return Err(format!("value {i} is {}, not a number", json_kind(x)));
        };
        let fits = match elem {
            ElemType::U8 => f.fract() == 0.0 && (0.0..=255.0).contains(&f),
            ElemType::I8 => f.fract() == 0.0 && (-128.0..=127.0).contains(&f),
            ElemType::F32 => f.is_finite() && f.abs() <= f32::MAX as f64,
        };
        if !fits {
            return Err(format!("value {i} = {f} does not fit {elem}"));
        }
        out.push(f as f32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, source: VectorSource) -> Result<Vec<Document>, DocsError> {
        let mut r = DocReader::new(text.as_bytes(), source);
        let mut out = Vec::new();
        while let Some(d) = r.next_document().unwrap()? {
            out.push(d);
        }
        Ok(out)
    }

    fn inline() -> VectorSource {
        VectorSource::Inline {
            elem: ElemType::U8,
            dim: None,
        }
    }

    #[test]
    fn reads_ids_vectors_and_payloads() {
        let docs = read_all(
            "{\"id\": 7, \"vector\": [1, 2], \"title\": \"ls\", \"tags\": [\"a\"]}\n\n\
             {\"id\": 9, \"vector\": [3, 4], \"n\": {\"x\": 1}}\n",
            inline(),
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, UserId::Int(7));
        assert_eq!(docs[1].line, 3);
        assert_eq!(docs[0].vector.as_deref(), Some(&[1.0, 2.0][..]));
        assert_eq!(docs[0].payload.len(), 2);
        assert!(!docs[0].payload.contains_key("id"));
        assert_eq!(docs[1].payload["n"]["x"], 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let cases: Vec<(&str, VectorSource, &str)> = vec![
            (
                "{\"id\": 1, \"vector\": [1]}\nnot json\n",
                inline(),
                "line 2: not JSON",
            ),
            (
                "[1]\n",
                inline(),
                "line 1: a document is a JSON object, got an array",
            ),
            ("{\"vector\": [1]}\n", inline(), "line 1: no \"id\""),
            (
                "{\"id\": 1, \"_id\": \"1\", \"vector\": [1]}\n",
                inline(),
                "line 1: both \"id\" and \"_id\"",
            ),
            (
                "{\"_id\": 1, \"vector\": [1]}\n{\"_id\": \"2\", \"vector\": [1]}\n",
                inline(),
                "line 2: id \"2\" is a string, but the ids before it are integers",
            ),
            (
                "{\"id\": -3, \"vector\": [1]}\n",
                inline(),
                "line 1: \"id\" must be",
            ),
            (
                "{\"id\": 1.5, \"vector\": [1]}\n",
                inline(),
                "\"id\" must be",
            ),
            (
                "{\"id\": 1, \"vector\": [1]}\n{\"id\": 1, \"vector\": [1]}\n",
                inline(),
                "line 2: id 1 was already used on line 1",
            ),
            (
                "{\"id\": 1, \"vector\": [1]}\n{\"id\": \"a\", \"vector\": [1]}\n",
                inline(),
                "line 2: id \"a\" is a string, but the ids before it are integers",
            ),
            ("{\"id\": 1}\n", inline(), "line 1: no \"vector\""),
            (
                "{\"id\": 1, \"vector\": [256]}\n",
                inline(),
                "value 0 = 256 does not fit u8",
            ),
            (
                "{\"id\": 1, \"vector\": [1, \"x\"]}\n",
                inline(),
                "value 1 is a string",
            ),
            ("{\"id\": 1, \"vector\": []}\n", inline(), "is empty"),
            (
                "{\"id\": 1, \"vector\": [1, 2]}\n{\"id\": 2, \"vector\": [1]}\n",
                inline(),
                "line 2: field \"vector\": has 1 values, the documents before it 2",
            ),
            (
                "{\"id\": 1, \"vector\": [1]}\n",
                VectorSource::Base {
                    name: "base.u8bin".into(),
                },
                "come from base.u8bin",
            ),
        ];
        for (text, source, want) in cases {
            let e = read_all(text, source).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn beir_corpus_lines_take_their_id_from_underscore_id() {
        let docs = read_all(
            "{\"_id\": \"0\", \"title\": \"open(2)\", \"text\": \"open a file\"}\n\
             {\"_id\": \"doc-17\", \"title\": \"ls(1)\", \"text\": \"list\"}\n",
            VectorSource::Base {
                name: "base.fbin".into(),
            },
        )
        .unwrap();
        // A string id stays a string, even when it looks like a number.
        assert_eq!(docs[0].id, UserId::Str("0".into()));
        assert_eq!(docs[1].id, UserId::Str("doc-17".into()));
        for d in &docs {
            assert!(!d.payload.contains_key("_id"), "{:?}", d.payload);
            assert_eq!(d.payload.len(), 2);
        }
        assert_eq!(docs[1].payload["text"], "list");
        // Duplicates are caught across the two spellings too.
        let e = read_all(
            "{\"id\": \"a\", \"vector\": [1]}\n{\"_id\": \"a\", \"vector\": [1]}\n",
            inline(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 2: id \"a\" was already used on line 1"),
            "{e}"
        );
    }

    #[test]
    fn element_ranges() {
        assert!(parse_vector(&serde_json::json!([-128, 127]), ElemType::I8).is_ok());
        assert!(parse_vector(&serde_json::json!([128]), ElemType::I8).is_err());
        assert!(parse_vector(&serde_json::json!([0.5]), ElemType::U8).is_err());
        assert!(parse_vector(&serde_json::json!([0.5, -1e30]), ElemType::F32).is_ok());
        assert!(parse_vector(&serde_json::json!([1e300]), ElemType::F32).is_err());
    }
}
