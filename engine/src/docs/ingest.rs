//! Reading a documents file into what a segment needs: vectors (staged as a
//! vector file, or checked against the `--base` file), `docs.bin`, the user
//! ids and the filter index, before anything is built, so a bad line stops
//! the build before any version exists.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{DocReader, DocStoreWriter, KeyMap, UserId, VectorSource, DEFAULT_BLOCK_BYTES};
use crate::element::ElemType;
use crate::error::{DocsError, Error, Result};
use crate::filter::{FilterIndex, FilterIndexBuilder};
use crate::layout::{DOCS_FILE, TEXT_FILE};
use crate::progress::Progress;
use crate::text::{Analyzer, TextIndexBuilder};

/// Which payload fields a build indexes, and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexedFields {
    /// Fields of the filter index (`--filter-fields`).
    pub filter: Vec<String>,
    /// Fields of the BM25 text index (`--text-fields`), joined in this order.
    pub text: Vec<String>,
    /// How the text fields become terms.
    pub analyzer: Analyzer,
}

/// What [`ingest`] read.
#[derive(Debug)]
pub struct Ingested {
    /// Documents read.
    pub count: usize,
    /// The vectors, when they came inline: a Big-ANN file in the staging
    /// directory, row i = document i.
    pub vectors: Option<PathBuf>,
    /// `docs.bin`, in the staging directory.
    pub store: PathBuf,
    pub keys: KeyMap,
    /// The filter index, when fields to index were named.
    pub filters: Option<FilterIndex>,
    /// `text.bin`, in the staging directory, when text fields were named.
    pub text: Option<PathBuf>,
    /// The fields indexed (to index a subset the same way).
    pub fields: IndexedFields,
}

/// Reads `path` (JSON Lines), writing `docs.bin` and, for inline vectors,
/// a vector file into `staging`. Errors name the line and the field.
pub fn ingest(
    path: &Path,
    source: VectorSource,
    fields: &IndexedFields,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<Ingested> {
    std::fs::create_dir_all(staging).map_err(|e| Error::io(staging, e))?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let total = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let inline = match source {
        VectorSource::Inline { elem, .. } => Some(elem),
        _ => None,
    };
    let counted = CountingReader {
        inner: file,
        progress,
    };
    progress.stage("reading documents", total);
    let mut reader = DocReader::new(BufReader::with_capacity(1 << 20, counted), source);
    let store_path = staging.join(DOCS_FILE);
    let mut store = DocStoreWriter::create(&store_path, DEFAULT_BLOCK_BYTES)?;
    let mut vectors = match inline {
        Some(elem) => Some(StagedVectors::create(staging, elem)?),
        None => None,
    };
    let mut filters = if fields.filter.is_empty() {
        None
    } else {
        Some(FilterIndexBuilder::new(&fields.filter)?)
    };
    let mut text = if fields.text.is_empty() {
        None
    } else {
        Some(TextIndexBuilder::new(
            &fields.text,
            fields.analyzer,
            &staging.join("text-scratch"),
        )?)
    };
    let mut ids: Vec<UserId> = Vec::new();
    let docs = |e| Error::docs(path, e);
    while let Some(doc) = reader
        .next_document()
        .map_err(|e| Error::io(path, e))?
        .map_err(docs)?
    {
        let n = ids.len() as u32;
        if let Some(f) = filters.as_mut() {
            f.add(n, &doc.payload).map_err(|source| {
                docs(DocsError::Filter {
                    line: doc.line,
                    source,
                })
            })?;
        }
        if let Some(t) = text.as_mut() {
            t.add(n, &doc.payload).map_err(|source| {
                docs(DocsError::Text {
                    line: doc.line,
                    source,
                })
            })?;
        }
        if let (Some(v), Some(row)) = (vectors.as_mut(), doc.vector.as_deref()) {
            v.push(row)?;
        }
        let payload = serde_json::to_vec(&doc.payload).map_err(|e| {
            docs(DocsError::BadPayload {
                line: doc.line,
                why: e.to_string(),
            })
        })?;
        store.add(&payload)?;
        ids.push(doc.id);
    }
    progress.finish_stage();
    if ids.is_empty() {
        return Err(docs(DocsError::Empty));
    }
    store.finish()?;
    let vectors = match vectors {
        Some(v) => Some(v.finish(reader.dim().unwrap_or(0))?),
        None => None,
    };
    let keys = KeyMap::from_ids(ids).map_err(docs)?;
    let text = match text {
        Some(t) => {
            let out = staging.join(TEXT_FILE);
            t.finish(&out)?;
            Some(out)
        }
        None => None,
    };
    Ok(Ingested {
        count: keys.len(),
        vectors,
        store: store_path,
        keys,
        filters: filters.map(FilterIndexBuilder::finish),
        text,
        fields: fields.clone(),
    })
}

/// Counts bytes read into the progress bar.
struct CountingReader<'a> {
    inner: File,
    progress: &'a dyn Progress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Inline vectors streamed into a Big-ANN file whose row count is written
/// once it is known.
struct StagedVectors {
    path: PathBuf,
    out: std::io::BufWriter<File>,
    elem: ElemType,
    rows: u64,
}

impl StagedVectors {
    fn create(staging: &Path, elem: ElemType) -> Result<Self> {
        let path = staging.join(format!("vectors.{}", elem.extension()));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; 8]).map_err(|e| Error::io(&path, e))?;
        Ok(StagedVectors {
            path,
            out,
            elem,
            rows: 0,
        })
    }

    /// One row, already checked to fit the element type.
    fn push(&mut self, row: &[f32]) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        match self.elem {
            ElemType::U8 => {
                let bytes: Vec<u8> = row.iter().map(|&x| x as u8).collect();
                self.out.write_all(&bytes).map_err(io)?;
            }
            ElemType::I8 => {
                let bytes: Vec<u8> = row.iter().map(|&x| x as i8 as u8).collect();
                self.out.write_all(&bytes).map_err(io)?;
            }
            ElemType::F32 => {
                for x in row {
                    self.out.write_all(&x.to_le_bytes()).map_err(io)?;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self, dim: usize) -> Result<PathBuf> {
        let io = |e| Error::io(&self.path, e);
        self.out.flush().map_err(io)?;
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&(self.rows as u32).to_le_bytes())
            .map_err(io)?;
        file.write_all(&(dim as u32).to_le_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::VectorFile;
    use crate::docs::DocStore;
    use crate::filter::Filter;
    use crate::progress::NoProgress;

    #[test]
    fn ingests_inline_vectors_payloads_ids_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("d.jsonl");
        std::fs::write(
            &input,
            "{\"id\": \"a\", \"vector\": [1, 2], \"lang\": \"en\", \"year\": 2020}\n\
             {\"id\": \"b\", \"vector\": [3, 4], \"lang\": \"fr\", \"year\": 2024, \"text\": \"x\"}\n",
        )
        .unwrap();
        let staging = dir.path().join("staging");
        let got = ingest(
            &input,
            VectorSource::Inline {
                elem: ElemType::U8,
                dim: None,
            },
            &IndexedFields {
                filter: vec!["lang".into(), "year".into()],
                text: vec!["text".into()],
                ..IndexedFields::default()
            },
            &staging,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(got.count, 2);
        let v = VectorFile::open(got.vectors.unwrap()).unwrap();
        assert_eq!(v.vectors::<u8>().unwrap().row(1), &[3, 4]);
        assert_eq!(got.keys.lookup(&UserId::Str("b".into())), Some(1));
        let store = DocStore::open(&got.store).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&store.get(1).unwrap()).unwrap();
        assert_eq!(b["text"], "x");
        let f = Filter::parse(&serde_json::json!({"year": {"$gte": 2021}})).unwrap();
        let m = got.filters.unwrap().evaluate(&f).unwrap();
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![1]);
        let text = crate::text::TextIndex::open(&got.text.unwrap()).unwrap();
        let hits = text.search(&text.analyze("xx"), None, 5, None).unwrap();
        assert!(hits.is_empty());
        assert_eq!(text.num_docs(), 2);
    }

    #[test]
    fn a_bad_text_field_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("d.jsonl");
        std::fs::write(
            &input,
            "{\"id\": 1, \"vector\": [1], \"t\": \"ok\"}\n{\"id\": 2, \"vector\": [1], \"t\": {\"a\": 1}}\n",
        )
        .unwrap();
        let e = ingest(
            &input,
            VectorSource::Inline {
                elem: ElemType::U8,
                dim: None,
            },
            &IndexedFields {
                text: vec!["t".into()],
                ..IndexedFields::default()
            },
            &dir.path().join("s"),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("d.jsonl")
                && e.contains("line 2")
                && e.contains("\"t\"")
                && e.contains("an object"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_filter_field_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("d.jsonl");
        std::fs::write(
            &input,
            "{\"id\": 1, \"vector\": [1], \"year\": 2020}\n{\"id\": 2, \"vector\": [1], \"year\": \"x\"}\n",
        )
        .unwrap();
        let e = ingest(
            &input,
            VectorSource::Inline {
                elem: ElemType::U8,
                dim: None,
            },
            &IndexedFields {
                filter: vec!["year".into()],
                ..IndexedFields::default()
            },
            &dir.path().join("s"),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("d.jsonl") && e.contains("line 2") && e.contains("\"year\""),
            "{e}"
        );
    }
}
