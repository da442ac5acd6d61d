//! The batch job: a JSON Lines corpus in, `vectors.fbin` (row *i* = the
//! *i*-th document) and `ids.jsonl` out, resumable after a kill at any
//! moment, splittable into parts that run anywhere and merge into the same
//! bytes as one run.
//!
//! ```text
//!  docs.jsonl ─► input::read ─► tokenize (rayon) ─► plan::batches (fixed by the input)
//!                                                        │
//!      journal (records already durable) ─ skip ◄────────┤
//!                                                        ▼
//!                            Encoder::embed_tokens ─► Journal::append (fdatasync)
//!                                                        │ all batches durable
//!                                                        ▼
//!        vectors.fbin, ids.jsonl (temp + fsync + rename) ─► embed.json last ─► journal removed
//! ```
//!
//! `embed.json` is written last and names the checksums of the other two,
//! so a folder with an `embed.json` that verifies is a finished run; running
//! the same command again then does nothing. A part writes
//! `part-IIII-of-NNNN.{fbin,ids.jsonl,json}` instead, and [`merge`] joins
//! them. Spec: `format-spec/embed.md`.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::journal::{Journal, Record, RunKey};
use super::model::{Encoder, Tokens};
use super::{input, plan};
use crate::error::{EmbedError, Error, Result};
use crate::progress::Progress;

/// Name of a whole run's vectors.
pub const VECTORS_FILE: &str = "vectors.fbin";
/// Name of a whole run's ids (one JSON value per line, row order).
pub const IDS_FILE: &str = "ids.jsonl";
/// Name of a whole run's manifest, written last.
pub const MANIFEST_FILE: &str = "embed.json";
/// Name of a whole run's checkpoint journal.
pub const JOURNAL_FILE: &str = "embed.journal";
/// `format` of every manifest.
pub const MANIFEST_FORMAT: &str = "shardann-embed";
pub const MANIFEST_VERSION: u32 = 1;

/// What to embed and where.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub input: PathBuf,
    /// Fields whose strings are joined (with a space) into the text.
    pub fields: Vec<String>,
    pub out: PathBuf,
    /// Texts per batch.
    pub batch: usize,
    /// `Some((i, n))`: only part i (0-based) of n.
    pub part: Option<(usize, usize)>,
    /// Rows per window of the batch plan ([`plan::WINDOW`] unless a test
    /// wants many windows from few documents).
    pub window: usize,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// Documents in the input.
    pub total: usize,
    /// This run's rows.
    pub rows: Range<usize>,
    /// Rows found done in the checkpoint (not recomputed).
    pub resumed: usize,
    /// Rows embedded by this invocation.
    pub embedded: usize,
    /// Texts cut to the model's limit.
    pub truncated: usize,
    /// Word pieces embedded, and batch slots including padding (this
    /// invocation): their ratio says what padding cost.
    pub tokens: u64,
    pub slots: u64,
    /// The output was already complete: nothing was done.
    pub already_done: bool,
    pub vectors: PathBuf,
    pub ids: PathBuf,
    pub manifest: PathBuf,
}

/// A file named in a manifest, with what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub file: String,
    pub bytes: u64,
    pub xxh3: String,
}

/// `embed.json` or `part-IIII-of-NNNN.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model_fingerprint: String,
    pub dim: u32,
    pub max_tokens: u32,
    pub fields: Vec<String>,
    pub input_xxh3: String,
    pub input_bytes: u64,
    pub documents: u64,
    pub batch: u32,
    pub window: u32,
    pub part: u32,
    pub parts: u32,
    pub rows_start: u64,
    pub rows_end: u64,
    pub truncated: u64,
    pub vectors: FileSum,
    pub ids: FileSum,
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn fields_hash(fields: &[String]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(fields.join("\0").as_bytes())
}

/// File names of a run: whole, or part i of n.
struct Names {
    vectors: String,
    ids: String,
    manifest: String,
    journal: String,
}

fn names(part: Option<(usize, usize)>) -> Names {
    match part {
        None => Names {
            vectors: VECTORS_FILE.into(),
            ids: IDS_FILE.into(),
            manifest: MANIFEST_FILE.into(),
            journal: JOURNAL_FILE.into(),
        },
        Some((i, n)) => {
            let stem = part_stem(i, n);
            Names {
                vectors: format!("{stem}.fbin"),
                ids: format!("{stem}.ids.jsonl"),
                manifest: format!("{stem}.json"),
                journal: format!("{stem}.journal"),
            }
        }
    }
}

/// `part-0003-of-0008` (0-based index).
pub fn part_stem(i: usize, n: usize) -> String {
    format!("part-{i:04}-of-{n:04}")
}

/// Writes a file by streaming into `name.tmp`, fsync, rename: readers see
/// the old file or the whole new one. Returns its size and XXH3-64.
fn write_file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<FileSum> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    struct Hashing<W> {
        w: W,
        h: xxhash_rust::xxh3::Xxh3,
        n: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.w.write(b)?;
            self.h.update(&b[..n]);
            self.n += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.w.flush()
        }
    }
    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = Hashing {
        w: std::io::BufWriter::with_capacity(1 << 20, f),
        h: xxhash_rust::xxh3::Xxh3::new(),
        n: 0,
    };
    fill(&mut w).map_err(|e| Error::io(&tmp, e))?;
    let (h, n) = (w.h.digest(), w.n);
    let f =
        w.w.into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(FileSum {
        file: name.into(),
        bytes: n,
        xxh3: hex(h),
    })
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&b).map_err(|e| {
        Error::embed(
            path,
            EmbedError::Corrupt {
                why: format!("not an embed manifest: {e}"),
            },
        )
    })
}

/// Checks that a file is the one a manifest names (size, then XXH3).
fn verify_file(dir: &Path, sum: &FileSum) -> Result<()> {
    let path = dir.join(&sum.file);
    let (h, n) = crate::fs::hash_file(&path)?;
    if n != sum.bytes || hex(h) != sum.xxh3 {
        return Err(Error::embed(
            &path,
            EmbedError::Corrupt {
                why: format!(
                    "{n} bytes hashing to {}, but the manifest says {} bytes hashing to {}",
                    hex(h),
                    sum.bytes,
                    sum.xxh3
                ),
            },
        ));
    }
    Ok(())
}

impl Manifest {
    fn key(&self) -> std::result::Result<RunKey, EmbedError> {
        let parse = |s: &str| {
            u64::from_str_radix(s, 16).map_err(|_| EmbedError::Corrupt {
                why: format!("malformed checksum {s:?}"),
            })
        };
        Ok(RunKey {
            dim: self.dim,
            model: parse(&self.model_fingerprint)?,
            input_xxh3: parse(&self.input_xxh3)?,
            input_len: self.input_bytes,
            total: self.documents,
            start: self.rows_start,
            end: self.rows_end,
            batch: self.batch,
            window: self.window,
            max_tokens: self.max_tokens,
            part: self.part,
            parts: self.parts,
            fields: fields_hash(&self.fields),
        })
    }
}

/// Runs (or resumes, or finds finished) the job `spec` with `enc`, on the
/// calling thread's rayon pool. Progress counts documents.
pub fn run(enc: &Encoder, spec: &JobSpec, progress: &dyn Progress) -> Result<JobReport> {
    if spec.batch == 0 || spec.window == 0 {
        return Err(Error::InvalidParameter(
            "batch and window must be at least 1".into(),
        ));
    }
    if spec.fields.is_empty() {
        return Err(Error::InvalidParameter(
            "name at least one field to embed".into(),
        ));
    }
    let (part, parts) = spec.part.unwrap_or((0, 1));
    if parts == 0 || part >= parts {
        return Err(Error::InvalidParameter(format!(
            "part {part}/{parts}: parts are numbered 0 to N-1"
        )));
    }
    let window = spec.window;
    let info = enc.info().clone();
    let input = input::read(&spec.input, &spec.fields, |total| {
        plan::part_rows(total, part, parts, window)
    })?;
    let rows = plan::part_rows(input.total, part, parts, window);
    let key = RunKey {
        dim: info.dim as u32,
        model: info.fingerprint,
        input_xxh3: input.xxh3,
        input_len: input.len,
        total: input.total as u64,
        start: rows.start as u64,
        end: rows.end as u64,
        batch: spec.batch as u32,
        window: window as u32,
        max_tokens: info.max_tokens as u32,
        part: part as u32,
        parts: parts as u32,
        fields: fields_hash(&spec.fields),
    };
    std::fs::create_dir_all(&spec.out).map_err(|e| Error::io(&spec.out, e))?;
    let n = names(spec.part);
    let out = |name: &str| spec.out.join(name);
    let mut report = JobReport {
        total: input.total,
        rows: rows.clone(),
        resumed: 0,
        embedded: 0,
        truncated: 0,
        tokens: 0,
        slots: 0,
        already_done: false,
        vectors: out(&n.vectors),
        ids: out(&n.ids),
        manifest: out(&n.manifest),
    };

    // Finished already? Then the manifest names this run and its files hash.
    if report.manifest.exists() {
        let m = read_manifest(&report.manifest)?;
        let found = m.key().map_err(|e| Error::embed(&report.manifest, e))?;
        found
            .check_same(&key)
            .map_err(|e| Error::embed(&report.manifest, e))?;
        verify_file(&spec.out, &m.vectors)?;
        verify_file(&spec.out, &m.ids)?;
        report.truncated = m.truncated as usize;
        report.already_done = true;
        return Ok(report);
    }

    progress.stage("tokenizing", rows.len() as u64);
    let tokens: Vec<Tokens> = input
        .texts
        .par_iter()
        .zip(input.lines.par_iter())
        .map(|(text, &line)| {
            let t = enc.tokenize(text).map_err(|e| {
                let e = match e {
                    EmbedError::EmptyText { .. } => EmbedError::EmptyText {
                        what: format!("line {line}: the text of {:?}", spec.fields),
                    },
                    e => e,
                };
                Error::embed(&spec.input, e)
            });
            progress.inc(1);
            t
        })
        .collect::<Result<_>>()?;
    progress.finish_stage();
    report.truncated = tokens.iter().filter(|t| t.truncated).count();
    let lens: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
    let batches = plan::batches(rows.clone(), &lens, window, spec.batch);

    let journal_path = out(&n.journal);
    let (mut journal, done) = Journal::open(&journal_path, &key)?;
    let dim = info.dim;
    let mut vectors = vec![0f32; rows.len() * dim];
    let mut finished = vec![false; batches.len()];
    let place = |vectors: &mut [f32], r: &Record| {
        for (k, &row) in r.rows.iter().enumerate() {
            let at = (row as usize - rows.start) * dim;
            vectors[at..at + dim].copy_from_slice(&r.vectors[k * dim..(k + 1) * dim]);
        }
    };
    for r in &done {
        let planned = batches.get(r.batch as usize);
        if planned != Some(&r.rows) {
            return Err(Error::embed(
                &journal_path,
                EmbedError::Corrupt {
                    why: format!("batch {} holds rows other than the plan's", r.batch),
                },
            ));
        }
        place(&mut vectors, r);
        if !finished[r.batch as usize] {
            finished[r.batch as usize] = true;
            report.resumed += r.rows.len();
        }
    }

    progress.stage("embedding", rows.len() as u64);
    progress.inc(report.resumed as u64);
    for (b, batch) in batches.iter().enumerate() {
        if finished[b] {
            continue;
        }
        let toks: Vec<&Tokens> = batch
            .iter()
            .map(|&r| &tokens[r as usize - rows.start])
            .collect();
        let v = enc
            .embed_tokens(&toks)
            .map_err(|e| Error::embed(&spec.input, e))?;
        let rec = Record {
            batch: b as u32,
            rows: batch.clone(),
            vectors: v,
        };
        journal.append(&rec)?;
        place(&mut vectors, &rec);
        report.embedded += batch.len();
        report.tokens += toks.iter().map(|t| t.ids.len() as u64).sum::<u64>();
        report.slots += (toks.len() * toks.iter().map(|t| t.ids.len()).max().unwrap_or(0)) as u64;
        progress.inc(batch.len() as u64);
    }
    progress.finish_stage();
    drop(journal);

    let vsum = write_file(&spec.out, &n.vectors, |w| {
        w.write_all(&(rows.len() as u32).to_le_bytes())?;
        w.write_all(&(dim as u32).to_le_bytes())?;
        for x in &vectors {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    })?;
    let isum = write_file(&spec.out, &n.ids, |w| {
        for id in &input.ids {
            serde_json::to_writer(&mut *w, id)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        model_fingerprint: hex(info.fingerprint),
        dim: dim as u32,
        max_tokens: info.max_tokens as u32,
        fields: spec.fields.clone(),
        input_xxh3: hex(input.xxh3),
        input_bytes: input.len,
        documents: input.total as u64,
        batch: spec.batch as u32,
        window: window as u32,
        part: part as u32,
        parts: parts as u32,
        rows_start: rows.start as u64,
        rows_end: rows.end as u64,
        truncated: report.truncated as u64,
        vectors: vsum,
        ids: isum,
    };
    write_manifest(&report.manifest, &manifest)?;
    std::fs::remove_file(&journal_path).map_err(|e| Error::io(&journal_path, e))?;
    crate::fs::fsync_path(&spec.out)?;
    Ok(report)
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<()> {
    let mut text = serde_json::to_string_pretty(m)
        .map_err(|e| Error::InvalidParameter(format!("manifest: {e}")))?;
    text.push('\n');
    crate::fs::write_atomic(path, text.as_bytes())
}

/// What [`merge`] joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub parts: usize,
    pub documents: usize,
    pub truncated: usize,
    pub manifest: PathBuf,
}

/// Joins the parts in `dir` (`part-IIII-of-NNNN.json` and their files) into
/// `vectors.fbin`, `ids.jsonl` and `embed.json`, the same bytes one run
/// writes. Refuses unless every part of one split is there, finished
/// (manifest present, files hashing as it says), made from the same input
/// with the same model and settings, and the parts' rows tile the input.
pub fn merge(dir: &Path) -> Result<MergeReport> {
    let parts_err = |why: String| Error::embed(dir, EmbedError::Parts { why });
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some(rest) = stem.strip_prefix("part-") else {
            continue;
        };
        let Some((i, n)) = rest.split_once("-of-") else {
            continue;
        };
        if let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) {
            found.push((i, n, entry.path()));
        }
    }
    if found.is_empty() {
        return Err(parts_err(
            "no part manifests (part-IIII-of-NNNN.json): run `embed --part i/N` first".into(),
        ));
    }
    found.sort();
    let n = found[0].1;
    if let Some((_, other, p)) = found.iter().find(|(_, m, _)| *m != n) {
        return Err(parts_err(format!(
            "parts of two splits: {} says {other} parts, {} says {n}",
            p.display(),
            found[0].2.display()
        )));
    }
    let have: Vec<usize> = found.iter().map(|(i, _, _)| *i).collect();
    let missing: Vec<String> = (0..n)
        .filter(|i| !have.contains(i))
        .map(|i| format!("{}.json", part_stem(i, n)))
        .collect();
    if !missing.is_empty() {
        return Err(parts_err(format!(
            "{} of {n} parts are missing or unfinished: {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    let mut manifests = Vec::with_capacity(n);
    for (i, _, path) in &found {
        let m = read_manifest(path)?;
        if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION {
            return Err(Error::embed(
                path,
                EmbedError::Corrupt {
                    why: format!("format {:?} version {}", m.format, m.version),
                },
            ));
        }
        if m.part as usize != *i || m.parts as usize != n {
            return Err(Error::embed(
                path,
                EmbedError::Corrupt {
                    why: format!("says part {} of {}", m.part, m.parts),
                },
            ));
        }
        verify_file(dir, &m.vectors)?;
        verify_file(dir, &m.ids)?;
        manifests.push(m);
    }
    let first = manifests[0].clone();
    let mut next = 0u64;
    for (m, (_, _, path)) in manifests.iter().zip(&found) {
        let same = |field: &str, a: String, b: String| -> Result<()> {
            if a == b {
                Ok(())
            } else {
                Err(Error::embed(
                    path,
                    EmbedError::OtherRun {
                        field: field.into(),
                        found: a,
                        expected: b,
                        hint: "parts of different runs cannot be merged",
                    },
                ))
            }
        };
        same(
            "model fingerprint",
            m.model_fingerprint.clone(),
            first.model_fingerprint.clone(),
        )?;
        same(
            "input checksum",
            m.input_xxh3.clone(),
            first.input_xxh3.clone(),
        )?;
        same(
            "input length",
            m.input_bytes.to_string(),
            first.input_bytes.to_string(),
        )?;
        same(
            "documents",
            m.documents.to_string(),
            first.documents.to_string(),
        )?;
        same(
            "fields",
            format!("{:?}", m.fields),
            format!("{:?}", first.fields),
        )?;
        same("dimension", m.dim.to_string(), first.dim.to_string())?;
        same(
            "max tokens",
            m.max_tokens.to_string(),
            first.max_tokens.to_string(),
        )?;
        same("batch size", m.batch.to_string(), first.batch.to_string())?;
        same("window", m.window.to_string(), first.window.to_string())?;
        same("first row", m.rows_start.to_string(), next.to_string())?;
        next = m.rows_end;
    }
    if next != first.documents {
        return Err(parts_err(format!(
            "the parts end at row {next}, the input has {} documents",
            first.documents
        )));
    }
    let dim = first.dim as usize;
    let vsum = write_file(dir, VECTORS_FILE, |w| {
        w.write_all(&(first.documents as u32).to_le_bytes())?;
        w.write_all(&(dim as u32).to_le_bytes())?;
        for m in &manifests {
            let mut f = std::fs::File::open(dir.join(&m.vectors.file))?;
            // Each part starts with its own 8-byte header; skip it.
            let mut head = [0u8; 8];
            std::io::Read::read_exact(&mut f, &mut head)?;
            std::io::copy(&mut f, w)?;
        }
        Ok(())
    })?;
    let isum = write_file(dir, IDS_FILE, |w| {
        for m in &manifests {
            let mut f = std::fs::File::open(dir.join(&m.ids.file))?;
            std::io::copy(&mut f, w)?;
        }
        Ok(())
    })?;
    let truncated: u64 = manifests.iter().map(|m| m.truncated).sum();
    let merged = Manifest {
        part: 0,
        parts: 1,
        rows_start: 0,
        rows_end: first.documents,
        truncated,
        vectors: vsum,
        ids: isum,
        ..first.clone()
    };
    let path = dir.join(MANIFEST_FILE);
    write_manifest(&path, &merged)?;
    Ok(MergeReport {
        parts: n,
        documents: first.documents as usize,
        truncated: truncated as usize,
        manifest: path,
    })
}
