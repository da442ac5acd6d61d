//! Errors: one enum per concern, and the engine's [`Error`], which adds
//! *where* (the file) to *what* went wrong.
//!
//! | enum | concern | raised by |
//! |---|---|---|
//! | [`DataError`] | the bytes of a vector or ground-truth file | `data` |
//! | [`FormatError`] | the bytes of `disk.index`, `pq.bin`, `ids.bin` | `layout` |
//! | [`ManifestError`] | a segment's `segment.json` | `layout::manifest` |
//! | [`SegmentError`] | a segment or shard directory whose files, pointer or versions disagree | `segment`, `shard` |
//! | [`ClusterFileError`] | a sharded index's `cluster.json` | `cluster` |
//! | [`PlanError`] | a sharded build's plan (`plan.json`, the shards' id lists) | `shard_plan` |
//! | [`DocsError`] | documents in JSON Lines: ids, vectors, payloads | `docs` |
//! | [`FilterError`] | a filter, or a payload the filter index cannot hold | `filter` |
//! | [`BeirError`] | a data set in the BEIR layout: corpus, queries, judgments | `eval` |
//! | [`FusionError`] | a fusion of two ranked lists asked with values out of range | `fusion` |
//! | [`BudgetError`] | a memory budget a build cannot meet, a budgeted build's scratch files | `budget` |
//! | [`EmbedError`] | a model folder, a text to embed, an embed run's input, checkpoint or parts | `embed` |
//!
//! This module is a leaf (it names only [`ElemType`]), so every other module
//! can return these errors without a dependency cycle.

use std::path::PathBuf;

use crate::element::ElemType;

/// What a JSON value is, as an error message says it ("got a string"):
/// what the document and embed-input parsers both report.
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the engine returns. Each variant names the file involved, so
/// a message printed to a user says which file to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A vector or ground-truth file whose contents are not what they claim.
    #[error("{}: {source}", path.display())]
    Data {
        path: PathBuf,
        #[source]
        source: DataError,
    },
    /// An index file that is not a valid shardann index.
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// A segment manifest that does not parse or contradicts itself.
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    /// A segment or shard directory whose manifest, pointer or files do not
    /// agree (see `format-spec/segment-v1.md`).
    #[error("{}: {source}", path.display())]
    Segment {
        path: PathBuf,
        #[source]
        source: SegmentError,
    },
    /// A `cluster.json` that does not parse, contradicts itself, or does not
    /// match the shards it describes (see `format-spec/cluster.md`).
    #[error("{}: {source}", path.display())]
    ClusterFile {
        path: PathBuf,
        #[source]
        source: ClusterFileError,
    },
    /// A sharded build's plan that is missing, does not parse, or does not
    /// fit the base vectors or shard it is used with.
    #[error("{}: {source}", path.display())]
    Plan {
        path: PathBuf,
        #[source]
        source: Box<PlanError>,
    },
    /// A documents file with a bad line (the error names the line).
    #[error("{}: {source}", path.display())]
    Docs {
        path: PathBuf,
        #[source]
        source: Box<DocsError>,
    },
    /// A file of a data set in the BEIR layout that is missing or has a bad
    /// line (the error names the line).
    #[error("{}: {source}", path.display())]
    Beir {
        path: PathBuf,
        #[source]
        source: Box<BeirError>,
    },
    /// A filter that does not parse or does not fit the indexed fields.
    #[error("filter: {0}")]
    Filter(#[source] Box<FilterError>),
    #[error("{}: {source}", path.display())]
    Text {
        path: PathBuf,
        #[source]
        source: Box<TextError>,
    },
    /// A model folder, an input line or a checkpoint of an embed run that
    /// is wrong (the error names the field, line or record).
    #[error("{}: {source}", path.display())]
    Embed {
        path: PathBuf,
        #[source]
        source: Box<EmbedError>,
    },
    /// A query or data set whose dimension differs from the index's.
    #[error(
        "dimension mismatch: {what} has dimension {got}, but the index has dimension {expected}"
    )]
    DimensionMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A query or data set whose element type differs from the index's.
    #[error("element type mismatch: {what} holds {got} values, but the index holds {expected}")]
    ElementMismatch {
        what: String,
        expected: &'static str,
        got: &'static str,
    },
    /// A memory budget a build cannot meet, or a scratch file of a
    /// budgeted build that is not what it wrote.
    #[error("{0}")]
    Budget(#[source] BudgetError),
    /// A parameter outside the range the engine supports.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A write-ahead log whose header is not one this build reads, or that
    /// belongs to another index (`format-spec/wal.md`).
    #[error("{}: {source}", path.display())]
    Wal {
        path: PathBuf,
        #[source]
        source: Box<WalError>,
    },
    /// A write refused before any of it was logged or applied.
    #[error("{0}")]
    Write(#[source] Box<WriteError>),
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        Error::Write(Box::new(e))
    }
}

impl From<FilterError> for Error {
    fn from(e: FilterError) -> Self {
        Error::Filter(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, source: DataError) -> Self {
        Error::Data {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, source: FormatError) -> Self {
        Error::Format {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn manifest(path: impl Into<PathBuf>, source: ManifestError) -> Self {
        Error::Manifest {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn segment(path: impl Into<PathBuf>, source: SegmentError) -> Self {
        Error::Segment {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn docs(path: impl Into<PathBuf>, source: DocsError) -> Self {
        Error::Docs {
            path: path.into(),
            source: Box::new(source),
        }
    }

    /// A text-index error about the file or segment at `path`.
    pub fn text(path: impl Into<PathBuf>, source: TextError) -> Self {
        Error::Text {
            path: path.into(),
            source: Box::new(source),
        }
    }

    /// An embedding error about the file at `path` (a model file, the input,
    /// a checkpoint or a part).
    pub fn embed(path: impl Into<PathBuf>, source: EmbedError) -> Self {
        Error::Embed {
            path: path.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn beir(path: impl Into<PathBuf>, source: BeirError) -> Self {
        Error::Beir {
            path: path.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn plan(path: impl Into<PathBuf>, source: PlanError) -> Self {
        Error::Plan {
            path: path.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn cluster_file(path: impl Into<PathBuf>, source: ClusterFileError) -> Self {
        Error::ClusterFile {
            path: path.into(),
            source,
        }
    }
}

/// What can be wrong with a write-ahead log (`wal.log`). A record cut
/// short or failing its checksum is not an error: it is the torn tail of
/// a crash, and recovery drops it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("bad magic bytes {found:02x?}: not a shardann write-ahead log")]
    BadMagic { found: [u8; 8] },
    #[error("log format version {major}.{minor} is not supported (this build reads 1.x)")]
    Version { major: u16, minor: u16 },
    #[error("header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    HeaderChecksum { stored: u64, computed: u64 },
    #[error("the log holds {what} {log}, but the index has {index}: it belongs to another index")]
    Mismatch {
        what: &'static str,
        log: String,
        index: String,
    },
    #[error("a batch of {len} bytes is larger than a log record may be ({max} bytes)")]
    RecordTooLarge { len: usize, max: usize },
    #[error(
        "cannot cut the log through LSN {applied}: it ends at {last}, and the {checked} record(s) \
         after the cut do not all check"
    )]
    CutMismatch {
        applied: u64,
        last: u64,
        checked: u64,
    },
}

/// A write (an upsert or a delete) that is refused. Nothing of a refused
/// batch is logged or applied. Positions are 0-based within the batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("the shard has no documents (built without --docs): it cannot take writes by id")]
    NoDocuments,
    #[error("the writes delete every document of the shard; a segment holds at least one")]
    WouldEmpty,
    #[error("the batch is empty")]
    Empty,
    #[error("the batch holds {count} documents; at most {max} are taken in one request")]
    TooMany { count: usize, max: usize },
    #[error(
        "document {pos} (id {id}): \"vector\" has {got} values, the index has dimension {expected}"
    )]
    Dimension {
        pos: usize,
        id: String,
        got: usize,
        expected: usize,
    },
    #[error("document {pos} (id {id}): \"vector\": {why}")]
    BadVector { pos: usize, id: String, why: String },
    #[error(
        "document {pos}: id {id} is also document {first} of this batch; a batch names an id once"
    )]
    DuplicateInBatch {
        pos: usize,
        id: String,
        first: usize,
    },
    #[error("document {pos}: id {id} is {got}, but this index's ids are {expected}s")]
    IdKind {
        pos: usize,
        id: String,
        got: &'static str,
        expected: &'static str,
    },
    #[error("document {pos} (id {id}): {source}")]
    Filter {
        pos: usize,
        id: String,
        #[source]
        source: FilterError,
    },
    #[error("document {pos} (id {id}): the payload is {len} bytes, more than {max}")]
    PayloadTooLarge {
        pos: usize,
        id: String,
        len: usize,
        max: usize,
    },
    #[error("the mutable part holds {points} points, its limit; wait for a merge")]
    Full { points: usize },
    #[error("record {got} cannot follow record {last}: records {from} to {to} are missing here (a replica catches up from its primary's log first)", from = last + 1, to = got - 1)]
    Gap { last: u64, got: u64 },
}

/// What can be wrong with the bytes of a data file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error(
        "unknown extension {ext:?}: expected .u8bin, .i8bin, .fbin, .npy, .fvecs or .bvecs \
         (ground truth: .bin or .ivecs)"
    )]
    UnknownExtension { ext: String },
    /// A path that names a directory or a special file where a file's bytes
    /// are to be mapped.
    #[error("is {kind}, not a file")]
    NotAFile { kind: &'static str },
    #[error("file is {len} bytes, too short for the 8-byte header (u32 count, u32 dim)")]
    MissingHeader { len: u64 },
    #[error("header says dimension 0")]
    ZeroDimension,
    #[error("not a usable .npy file: {why}")]
    Npy { why: String },
    #[error("not a usable TEXMEX file: {why}")]
    Texmex { why: String },
    #[error(
        "header says {count} × {dim} {elem} values = {expected} bytes after the header, \
         but the file has {actual}{hint}"
    )]
    SizeMismatch {
        count: u64,
        dim: u64,
        elem: ElemType,
        expected: u64,
        actual: u64,
        hint: &'static str,
    },
    #[error(
        "ground truth header says nq = {nq}, k = {k}: {expected} bytes expected, file has {actual}"
    )]
    GroundTruthSize {
        nq: u64,
        k: u64,
        expected: u64,
        actual: u64,
    },
    #[error("ground truth row {row} has id {id}, but the base set has only {count} points")]
    GroundTruthId { row: usize, id: u32, count: usize },
}

/// What can be wrong with the bytes of an index file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("bad magic bytes {found:02x?}: not a shardann {what} file")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("format version {major}.{minor} is not supported (this build reads {supported}.x)")]
    UnsupportedVersion {
        major: u16,
        minor: u16,
        supported: u16,
    },
    #[error("{what} checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        what: &'static str,
        stored: u64,
        computed: u64,
    },
    #[error("truncated: {what} needs bytes {offset}..{end}, but the file has {file_len}")]
    Truncated {
        what: &'static str,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("invalid {field} = {value}: {why}")]
    Invalid {
        field: &'static str,
        value: u64,
        why: String,
    },
    #[error("node {node} (sector {sector}): {why}")]
    CorruptNode { node: u64, sector: u64, why: String },
}

/// What can be wrong with a segment manifest (`segment.json`). Spec:
/// `format-spec/segment-v1.md`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("manifest is not UTF-8")]
    NotUtf8,
    #[error("manifest does not end with a newline (truncated?)")]
    NoFinalNewline,
    #[error("manifest has no checksum line (truncated?)")]
    NoChecksumLine,
    #[error("malformed checksum line {line:?}")]
    MalformedChecksumLine { line: String },
    #[error("manifest checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error("manifest does not parse: {0}")]
    Json(#[source] serde_json::Error),
    #[error("format {format:?} version {version} is not {expected} version {expected_version}")]
    WrongFormat {
        format: String,
        version: u32,
        expected: &'static str,
        expected_version: u32,
    },
    #[error("version 0 is not valid (versions start at 1)")]
    VersionZero,
    #[error(
        "{what} {version} is above {max}, the largest a 10-digit version directory name holds"
    )]
    VersionTooLarge {
        what: &'static str,
        version: u64,
        max: u64,
    },
    #[error("parent version {parent} is not older than version {version}")]
    ParentNotOlder { parent: u64, version: u64 },
    #[error("file name {name:?} is not allowed")]
    BadFileName { name: String },
    #[error("{name}: malformed checksum {xxh3:?}")]
    MalformedFileChecksum { name: String, xxh3: String },
    #[error("{name} is listed twice")]
    DuplicateFile { name: String },
    #[error("the manifest does not list {name}")]
    MissingFile { name: &'static str },
}

/// What can be wrong with a segment or a shard directory as a whole: its
/// `CURRENT` pointer, its versions, files that disagree with the manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("holds a plain (unversioned) index; build into a new directory")]
    PlainIndex,
    #[error(
        "is not a sealed version of a shard (no segment.json): there is nothing to merge into"
    )]
    NotAVersion,
    #[error("version {version} is not the shard's current one ({current}): merge into the current version")]
    NotCurrent { version: u64, current: u64 },
    /// A version directory without `segment.json`.
    #[error(
        "is not sealed (no segment.json): a build or copy that did not finish; it cannot be opened"
    )]
    Unsealed,
    #[error("does not end with a newline")]
    PointerNoNewline,
    #[error("{name:?} is not a version directory name")]
    PointerBadName { name: String },
    #[error("says version {manifest}, its directory {dir}")]
    VersionMismatch { manifest: u64, dir: u64 },
    #[error("version {version} is older than the current version {current}")]
    OlderVersion { version: u64, current: u64 },
    #[error(
        "version {version} is above {max}, the largest a 10-digit version directory name holds"
    )]
    VersionTooLarge { version: u64, max: u64 },
    #[error("is {size} bytes; the manifest says {expected}")]
    SizeMismatch { size: u64, expected: u64 },
    #[error("checksum mismatch: the manifest says {expected}, the file hashes to {computed}")]
    ChecksumMismatch { expected: String, computed: String },
}

/// What can be wrong with a `cluster.json`. Spec: `format-spec/cluster.md`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterFileError {
    #[error("not a cluster manifest: {0}")]
    Json(#[source] serde_json::Error),
    #[error("format {format:?} version {version} is not {expected} version {expected_version}")]
    WrongFormat {
        format: String,
        version: u32,
        expected: &'static str,
        expected_version: u32,
    },
    #[error("lists no shards (a cluster has at least one)")]
    NoShards,
    #[error("shard {index} of the list has id {id}; shard ids must be 0, 1, 2, … in order")]
    ShardIdOrder { index: usize, id: u32 },
    #[error("shards hold {total} points, the manifest says {stated}")]
    PointCount { total: u64, stated: u64 },
    #[error(
        "has {centroids} centroids for {shards} shards (k-means: one per shard; random: none)"
    )]
    CentroidCount { centroids: usize, shards: usize },
    #[error("shard directory {dir:?}: must be a plain name inside the cluster directory")]
    BadShardDir { dir: String },
    #[error("no shard {id}; the cluster has {count} shard(s)")]
    UnknownShard { id: usize, count: usize },
    #[error(
        "shard {id} has {points} points of dimension {dim} ({elem}, {metric}); \
         cluster.json says {want_points} of dimension {want_dim} ({want_elem}, {want_metric})"
    )]
    ShardMismatch {
        id: usize,
        points: u64,
        dim: usize,
        elem: ElemType,
        metric: &'static str,
        want_points: u64,
        want_dim: usize,
        want_elem: ElemType,
        want_metric: &'static str,
    },
    /// A segment (a peer's, or one on disk) that is not a segment of this
    /// cluster's shard `id`: `what` names the first field that disagrees.
    #[error("shard {id}: the segment's {what} is {got}; cluster.json says {want}")]
    SegmentMismatch {
        id: usize,
        what: &'static str,
        got: String,
        want: String,
    },
}

/// What can be wrong with the plan of a sharded build (`build --plan DIR
/// --shard i`; `format-spec/cluster.md`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("no plan here: make one with `build --shards N --plan-only --out DIR`")]
    Missing,
    #[error("not a plan: {0}")]
    Json(#[source] serde_json::Error),
    #[error("format {format:?} version {version} is not shardann-plan version 1")]
    WrongFormat { format: String, version: u32 },
    #[error("says the base is {plan} but cluster.json says {manifest}")]
    ManifestMismatch { plan: String, manifest: String },
    #[error(
        "the base vectors given are not the ones the plan was made from: \
         their {what} is {given}, the plan's is {plan}"
    )]
    BaseMismatch {
        what: &'static str,
        plan: String,
        given: String,
    },
    #[error("no shard {shard}: the plan has {shards} shard(s), numbered from 0")]
    NoShard { shard: usize, shards: usize },
    #[error("shard {shard} lists {count} points; cluster.json says {want}")]
    ShardSize {
        shard: usize,
        count: usize,
        want: usize,
    },
    #[error("lists point {id}, beyond the base's {points} points")]
    IdOutOfRange { id: u32, points: usize },
}

/// Why a build under a memory budget (`build --memory-budget`) cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    #[error(
        "a memory budget of {} is too small to build {points} points: at least {} is needed \
         (their PQ codes alone take {}, and one graph cell of {cell_points} points must fit); \
         give --memory-budget {} or more",
        fmt_bytes(*.budget), fmt_bytes(*.least), fmt_bytes(*.codes), fmt_bytes_up(*.least)
    )]
    TooSmall {
        budget: u64,
        points: usize,
        least: u64,
        codes: u64,
        cell_points: u64,
    },
    #[error("{}: scratch file, byte {offset}: {why}", path.display())]
    Scratch {
        path: PathBuf,
        offset: u64,
        why: String,
    },
}

/// Bytes as a person reads them: "1.5 GiB", "340 MiB", "12 KiB", "80 B".
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if b >= size {
            let x = b as f64 / size as f64;
            return if x < 10.0 {
                format!("{x:.1} {name}")
            } else {
                format!("{x:.0} {name}")
            };
        }
    }
    format!("{b} B")
}

/// A size at or above `b`, as a flag takes it ("1100MiB"): whole MiB.
fn fmt_bytes_up(b: u64) -> String {
    format!("{}MiB", b.div_ceil(1 << 20))
}

/// What can be wrong with documents given as JSON Lines (`build --docs`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocsError {
    #[error("line {line}: not JSON: {source}")]
    NotJson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: a document is a JSON object, got {got}")]
    NotObject { line: usize, got: &'static str },
    #[error("line {line}: no \"id\" field (nor a BEIR-style \"_id\")")]
    MissingId { line: usize },
    #[error("line {line}: both \"id\" and \"_id\" are given; a document has one id")]
    TwoIds { line: usize },
    #[error("line {line}: \"id\" must be a non-negative integer or a string, got {got}")]
    BadId { line: usize, got: String },
    #[error("line {line}: id {id} was already used on line {first}")]
    DuplicateId {
        line: usize,
        id: String,
        first: usize,
    },
    #[error(
        "line {line}: id {id} is a {got}, but the ids before it are {expected}s \
         (ids are all integers or all strings)"
    )]
    MixedIds {
        line: usize,
        id: String,
        got: &'static str,
        expected: &'static str,
    },
    #[error("line {line}: no \"vector\" field (or give the vectors with --base)")]
    MissingVector { line: usize },
    #[error("line {line}: field \"vector\": {why}")]
    BadVector { line: usize, why: String },
    #[error("line {line}: \"vector\" is given, but the vectors come from {base}")]
    VectorBesideBase { line: usize, base: String },
    #[error("{lines} documents, but the vector file has {rows} rows")]
    RowCount { lines: usize, rows: usize },
    #[error("line {line}: {source}")]
    Filter {
        line: usize,
        #[source]
        source: FilterError,
    },
    #[error("line {line}: {source}")]
    Text {
        line: usize,
        #[source]
        source: TextError,
    },
    #[error("line {line}: the payload cannot be stored: {why}")]
    BadPayload { line: usize, why: String },
    #[error("id {id} is used twice")]
    KeyTwice { id: String },
    #[error("id {id} is an integer among string ids (ids are all integers or all strings)")]
    MixedKeys { id: String },
    #[error("no documents")]
    Empty,
    #[error("more than {max} documents (segment-local ids are u32)")]
    TooMany { max: u64 },
}

/// What can be wrong with a data set in the BEIR layout (`corpus.jsonl`,
/// `queries.jsonl`, `qrels/test.tsv`, and optionally `base.fbin` and
/// `query.fbin`). [`Error::Beir`] names the file; line numbers are 1-based
/// and count blank lines and the qrels header.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeirError {
    #[error("missing: a BEIR data set has corpus.jsonl, queries.jsonl and qrels/test.tsv")]
    Missing,
    #[error("line {line}: not JSON: {source}")]
    NotJson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: no \"_id\" field")]
    MissingId { line: usize },
    #[error("line {line}: \"_id\" must be a string or a non-negative integer, got {got}")]
    BadId { line: usize, got: String },
    #[error("line {line}: query {id:?} has no \"text\" string")]
    MissingText { line: usize, id: String },
    #[error("line {line}: id {id:?} was already used on line {first}")]
    DuplicateId {
        line: usize,
        id: String,
        first: usize,
    },
    #[error("line 1: the header must be \"query-id<TAB>corpus-id<TAB>score\", got {got:?}")]
    BadHeader { got: String },
    #[error("line {line}: {why}")]
    BadJudgment { line: usize, why: String },
    #[error("line {line}: query id {id:?} is not in queries.jsonl")]
    UnknownQuery { line: usize, id: String },
    #[error("line {line}: corpus id {id:?} is not in corpus.jsonl")]
    UnknownDoc { line: usize, id: String },
    #[error("line {line}: query {query:?} judges {doc:?} again (first on line {first})")]
    JudgedTwice {
        line: usize,
        query: String,
        doc: String,
        first: usize,
    },
    #[error("has {rows} rows, but {lines_of} has {lines} entries: row i is the vector of entry i")]
    RowCount {
        rows: usize,
        lines_of: &'static str,
        lines: usize,
    },
    #[error("has no {what}")]
    Empty { what: &'static str },
}

/// A fusion of two ranked lists asked with a value out of range, or a
/// method that does not exist. Messages name the value, for an API answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FusionError {
    #[error("fusion: unknown method {method:?} (methods: rrf, weighted, dbsf)")]
    UnknownMethod { method: String },
    #[error("fusion: rrf k must be a finite number above 0, got {k}")]
    BadK { k: f64 },
    #[error("fusion: alpha must be in [0, 1], got {alpha}")]
    BadAlpha { alpha: f64 },
    #[error("fusion: unknown normalize {name:?} (minmax or zscore)")]
    UnknownNormalize { name: String },
    #[error("fusion: {why}")]
    Malformed { why: String },
}

/// What can be wrong with a filter or with the payloads being indexed.
/// Every message names the field and the operator (or the document)
/// involved, so it can go back to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The filter, or an element of `$and`/`$or`, or the argument of
    /// `$not`, is not a JSON object.
    #[error("{what} must be a JSON object, got {found}")]
    NotAnObject { what: String, found: &'static str },
    /// A `$`-key that is not an operator (at the top level only `$and`,
    /// `$or` and `$not` are).
    #[error("unknown operator {op:?}{}", on_field(field))]
    UnknownOperator { field: Option<String>, op: String },
    /// An operator's argument has the wrong JSON type (`$gt` with a
    /// string, `$in` without an array, `$exists` with a number, …).
    #[error("{op}{} needs {expected}, got {found}", on_field(field))]
    WrongType {
        field: Option<String>,
        op: String,
        expected: &'static str,
        found: &'static str,
    },
    /// `$and` or `$or` with an empty list: refused rather than guessed.
    #[error("{op} needs at least one filter, got an empty list")]
    EmptyList { op: String },
    /// `{"field": {}}`.
    #[error(
        "field {field:?}: empty operator object (use {{\"$exists\": true}} to ask for the field)"
    )]
    NoOperators { field: String },
    /// Nesting beyond `filter::MAX_DEPTH`.
    #[error("filter nests deeper than {max} levels")]
    TooDeep { max: usize },
    /// More than `filter::MAX_TERMS` operators and list values.
    #[error("filter has more than {max} terms (operators and $in/$nin values)")]
    TooManyTerms { max: usize },
    /// The filter names a field the segment does not index.
    #[error(
        "field {field:?} is not indexed (indexed fields: {indexed}); index it with --filter-fields"
    )]
    NotIndexed { field: String, indexed: String },
    /// A keyword field compared with a number, a numeric field with a
    /// string, or a range on a keyword field.
    #[error("field {field:?} is a {kind} field; {op} compares it with a {found}")]
    KindMismatch {
        field: String,
        kind: &'static str,
        op: &'static str,
        found: &'static str,
    },
    /// A field name that cannot be indexed.
    #[error("cannot index field {field:?}: {why}")]
    BadFieldName { field: String, why: &'static str },
    /// The same field named twice in the list of fields to index.
    #[error("field {field:?} is listed twice")]
    DuplicateField { field: String },
    /// Documents must be added in order `0, 1, 2, …`.
    #[error("document {doc} added out of order: the next document is {expected}")]
    DocOutOfOrder { doc: u32, expected: u32 },
    /// Document ids are `u32` and `u32::MAX` documents fill them.
    #[error("a segment holds at most {max} documents")]
    TooManyDocs { max: u32 },
    /// A document of a type an indexed field cannot hold.
    #[error("document {doc}: field {field:?} holds {found}; an indexed field holds a string, an array of strings or a number")]
    UnsupportedValue {
        doc: u32,
        field: String,
        found: &'static str,
    },
    /// A field holding strings in one document and numbers in another.
    #[error("document {doc}: field {field:?} holds {found}, but document {first_doc} made it a {kind} field; a field must hold one type in every document")]
    MixedTypes {
        doc: u32,
        field: String,
        found: &'static str,
        kind: &'static str,
        first_doc: u32,
    },
    /// A keyword longer than `filter::MAX_KEYWORD_BYTES`.
    #[error("document {doc}: field {field:?} holds a string of {len} bytes; keywords are at most {max} bytes")]
    KeywordTooLong {
        doc: u32,
        field: String,
        len: usize,
        max: usize,
    },
}

fn on_field(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(" on field {f:?}"),
        None => String::new(),
    }
}

/// What can go wrong with a text index: building it, opening it, or asking
/// it something it cannot answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A text field holds something other than strings.
    #[error("field {field:?}: text fields hold a string or an array of strings, got {got}")]
    NotText { field: String, got: &'static str },
    /// A text query on a segment built without `--text-fields`.
    #[error("this index has no text fields: build it with --text-fields to search text")]
    NoTextIndex,
    /// Something the packed index must hold is not there.
    #[error("the text index has no {what}")]
    Missing { what: &'static str },
    /// tantivy failed; `what` is the step.
    #[error("{what}: {message}")]
    Tantivy { what: &'static str, message: String },
}

/// What can be wrong with a sentence-embedding model, a text to embed, or an
/// embed run (its input lines, its checkpoint, its parts). [`Error::Embed`]
/// adds the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// A file the model folder must hold is not there.
    #[error("missing: a model folder holds config.json, model.safetensors and tokenizer.json")]
    MissingFile,
    /// A model file that does not parse (JSON, safetensors, tokenizer).
    #[error("does not parse: {why}")]
    BadFile { why: String },
    /// Two files of a model folder that disagree, e.g. config.json's
    /// `hidden_size` against the shape of a weight.
    #[error("{field} is {found}, but {other} says {expected}")]
    Mismatch {
        field: String,
        found: String,
        other: String,
        expected: String,
    },
    /// A model this build cannot run (e.g. CLS pooling, or not BERT).
    #[error("{field} = {value}: {why}")]
    Unsupported {
        field: String,
        value: String,
        why: String,
    },
    /// A text with no word pieces (empty, blank, or only characters the
    /// tokenizer drops).
    #[error("{what} is empty: nothing to embed")]
    EmptyText { what: String },
    /// The tokenizer or the model failed at run time.
    #[error("{what}: {message}")]
    Inference { what: &'static str, message: String },
    /// An input line that is not a JSON object.
    #[error("line {line}: not a JSON object: {why}")]
    NotObject { line: usize, why: String },
    /// An input line without a field that is to be embedded.
    #[error("line {line}: no field {field:?} (every line needs each --field)")]
    MissingField { line: usize, field: String },
    /// An input line whose field to embed is not a string.
    #[error("line {line}: field {field:?} is {got}, not a string")]
    NotString {
        line: usize,
        field: String,
        got: &'static str,
    },
    /// An input line without an id.
    #[error("line {line}: no \"id\" field (nor a BEIR-style \"_id\")")]
    MissingId { line: usize },
    /// A checkpoint or part file that is not what it claims to be.
    #[error("{why}")]
    Corrupt { why: String },
    /// A checkpoint, or parts to merge, made with other inputs or settings.
    #[error("{field} is {found} here, but {expected} for this run: {hint}")]
    OtherRun {
        field: String,
        found: String,
        expected: String,
        hint: &'static str,
    },
    /// Parts to merge that are missing or do not fit together.
    #[error("{why}")]
    Parts { why: String },
}
