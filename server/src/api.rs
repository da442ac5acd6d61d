//! The JSON API: request and response bodies, and the checks that turn a
//! bad request into a 400 that says what is wrong.
//!
//! The same `/v1/search` body serves clients and peers: a peer adds
//! `"shards": [..]`, which means "search exactly these of your local shards
//! and do not fan out". Documented for users in `server/openapi.yaml`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shardann_engine::docs::UserId;
use shardann_engine::filter::Filter;
use shardann_engine::fusion::Fusion;
use shardann_engine::search::{SearchParams, SearchStats};
use shardann_engine::text::TextStats;
use shardann_engine::Element;

/// Largest `k` a request may ask for.
pub const MAX_K: usize = 1000;
/// Most ids in one `/v1/documents/get` request, and the most queries any
/// configuration lets a batch hold (the body limit bounds it too).
pub const MAX_BATCH: usize = 10_000;

/// What one request may ask of a node: `[limits]` in `node.toml`.
///
/// A search's work grows with its list size (sectors read, candidates
/// scored), and a batch's with the sum over its queries: one request with
/// `list = 10000` ran 7.3 s and raised other searches' p50 from 6 ms to
/// 76 ms. The defaults admit every ordinary search (L up to 2,000; a batch
/// of 1,000 queries at L = 256) and refuse, with a 400 naming the limit, what
/// would hold an executor for seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest `list` of one query.
    pub max_list: usize,
    /// Most queries in one `/v1/search/batch` request.
    pub max_batch: usize,
    /// Largest sum of `list` over a batch's queries.
    pub max_batch_work: usize,
    /// Longest `timeout_ms` a request may set.
    pub max_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_list: 2_000,
            max_batch: 1_000,
            max_batch_work: 256_000,
            max_timeout_ms: 60_000,
        }
    }
}
/// The list size when a request names none: the larger of this and `k`.
pub const DEFAULT_LIST: usize = 64;
/// The beam width when a request names none.
pub const DEFAULT_BEAM: usize = 4;

fn default_k() -> usize {
    10
}

/// `POST /v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query vector, as JSON numbers (integers for u8/i8 indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f64>>,
    /// A text query. With `vector` too: a hybrid query, the vector's list
    /// fused with BM25 over the index's text fields (`build --text-fields`).
    /// Alone, on a node with a model (`serve --model`): embedded, and
    /// searched as a vector (hybrid with BM25 too when `fusion` is given);
    /// on a node without one, or with `"embed": false`: BM25 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether a `text` without `vector` is embedded by the node's model:
    /// by default when the node has one. `true` on a node without a model
    /// is a 400; `false` asks for BM25 alone. Ignored with a `vector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<bool>,
    /// How a hybrid query fuses its two lists: `{"method": "rrf", "k": 60}`
    /// (the default) or `{"method": "weighted", "alpha": 0.7, "normalize":
    /// "minmax" | "zscore" | "dbsf"}`. Peers are never sent it (`None`):
    /// they return both lists, and the node that asked fuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<Fusion>,
    /// How many hits each signal contributes to a hybrid query before
    /// fusion (at least k; default `DEFAULT_CANDIDATES`, or k if larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    /// Peer-to-peer: BM25 statistics of `text` summed over every shard, so
    /// that the peer's scores are global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_stats: Option<TextStats>,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beam: Option<usize>,
    /// Search only the P shards whose partition centroids are nearest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_shards: Option<usize>,
    /// The deadline for the whole request; the node's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Peer-to-peer: search exactly these local shards, no fan-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<u32>>,
    /// Only documents matching this filter (indexes built with documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<serde_json::Value>,
    /// Payload fields to return with each hit (`"*"`: all); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

/// `POST /v1/text/stats` (peer-to-peer): the BM25 statistics of `text` in
/// the local `shards`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextStatsRequest {
    pub text: String,
    pub shards: Vec<u32>,
}

/// The answer to `POST /v1/text/stats`: the statistics summed over the
/// shards that answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextStatsResponse {
    pub stats: TextStats,
    pub missing_shards: Vec<u32>,
}

/// `POST /v1/search/batch`: many vectors, one set of parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The query vectors; with `texts` too, query i is hybrid
    /// (`vectors[i]` and `texts[i]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vectors: Vec<Vec<f64>>,
    /// Text queries, or the text halves of hybrid queries; without
    /// `vectors`, embedded by the node's model as in `/v1/search`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
    /// As in `/v1/search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<bool>,
    /// As in `/v1/search`: hybrid batches only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<Fusion>,
    /// As in `/v1/search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default)]
    pub list: Option<usize>,
    #[serde(default)]
    pub beam: Option<usize>,
    #[serde(default)]
    pub probe_shards: Option<usize>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Only documents matching this filter, for every vector.
    #[serde(default)]
    pub filter: Option<serde_json::Value>,
    /// Payload fields to return with each hit (`"*"`: all).
    #[serde(default)]
    pub include: Vec<String>,
}

/// One hit: its id, the shard that holds it, and its scores. The id is
/// the global `u32` id for an index without documents, else the document's
/// id as the user gave it (a string or an integer).
///
/// A vector query's hits have `distance` (smaller is closer); a text
/// query's have `score` (BM25, larger is better); a hybrid query's have
/// `score` (fused, larger is better) and, from each list that held the
/// hit, `distance` and `text_score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireHit {
    pub id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_score: Option<f32>,
    pub shard: u32,
    /// The payload fields asked for with `include`; absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl WireHit {
    /// The id as a global `u32` id (an index without documents), or
    /// `u32::MAX` when it is not one.
    pub fn global_id(&self) -> u32 {
        match self.id {
            UserId::Int(i) => u32::try_from(i).unwrap_or(u32::MAX),
            UserId::Str(_) => u32::MAX,
        }
    }
}

/// What answering cost, summed over every shard searched (here and at peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStats {
    /// Sectors read from disk.
    pub ios: u64,
    /// Nodes served from a node cache.
    pub cache_hits: u64,
    /// Nodes whose record came in a sector read for another node.
    #[serde(default)]
    pub sector_mates: u64,
    /// Rounds of reads.
    pub hops: u64,
    /// Nodes whose full record was examined.
    pub visited: u64,
    /// Shards that answered.
    pub shards_searched: u32,
    /// Requests sent to peers, retries included.
    pub peer_calls: u32,
    /// Of those, the ones that failed or timed out.
    pub peer_failures: u32,
    /// Microseconds spent in vector searches, summed over shards.
    #[serde(default)]
    pub dense_us: u64,
    /// Microseconds spent in BM25 searches, summed over shards.
    #[serde(default)]
    pub text_us: u64,
    /// Microseconds (wall) spent collecting BM25 statistics from every
    /// shard before the search (text queries on more than one shard).
    #[serde(default)]
    pub text_stats_us: u64,
    /// Microseconds (wall) spent embedding the query's text with the
    /// node's model; in a batch, the batch's time divided among its queries.
    #[serde(default)]
    pub embed_us: u64,
    /// Shards whose search missed the deadline on the node that searched
    /// them (this one or a peer).
    #[serde(default)]
    pub shards_timed_out: u32,
}

impl WireStats {
    pub fn add_search(&mut self, s: &SearchStats) {
        self.ios += u64::from(s.ios);
        self.cache_hits += u64::from(s.cache_hits);
        self.sector_mates += u64::from(s.sector_mates);
        self.hops += u64::from(s.hops);
        self.visited += u64::from(s.visited_nodes);
        self.shards_searched += 1;
    }

    /// As the engine's per-query stats (counts saturate at `u32::MAX`).
    pub fn to_search_stats(&self) -> SearchStats {
        let c = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        SearchStats {
            ios: c(self.ios),
            hops: c(self.hops),
            visited_nodes: c(self.visited),
            cache_hits: c(self.cache_hits),
            sector_mates: c(self.sector_mates),
            pq_distances: 0,
        }
    }

    pub fn add(&mut self, o: &WireStats) {
        self.ios += o.ios;
        self.cache_hits += o.cache_hits;
        self.sector_mates += o.sector_mates;
        self.hops += o.hops;
        self.visited += o.visited;
        self.shards_searched += o.shards_searched;
        self.peer_calls += o.peer_calls;
        self.peer_failures += o.peer_failures;
        self.dense_us += o.dense_us;
        self.text_us += o.text_us;
        self.text_stats_us += o.text_stats_us;
        self.embed_us += o.embed_us;
        self.shards_timed_out += o.shards_timed_out;
    }
}

/// The answer to `/v1/search`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub hits: Vec<WireHit>,
    /// Peer-to-peer, hybrid queries: the text list (the vector list is
    /// `hits`), fused by the node that asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_hits: Vec<WireHit>,
    /// True when some shard asked for did not answer; see `missing_shards`.
    pub partial: bool,
    pub missing_shards: Vec<u32>,
    /// Of `missing_shards`, the ones this node serves itself whose search
    /// missed the deadline (the node is overloaded or its disk stalls), as
    /// opposed to shards no peer answered for. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timed_out_shards: Vec<u32>,
    pub took_us: u64,
    #[serde(default)]
    pub stats: WireStats,
    /// Per shard searched (key: the shard id), the plan its search took
    /// (`{"plan": "graph"}`, `{"plan": "flat", "rerank": 40}`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, serde_json::Value>,
}

/// The answer to `/v1/search/batch`: one response per vector, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<SearchResponse>,
    pub took_us: u64,
}

/// The body of every 4xx/5xx.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A query checked against the index: what the search code works with.
#[derive(Debug, Clone)]
pub struct Query<T> {
    /// The vector, for vector and hybrid queries.
    pub vector: Option<Vec<T>>,
    /// The text, for text and hybrid queries.
    pub text: Option<TextPart>,
    pub params: SearchParams,
    pub probe_shards: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// The filter, parsed, and as the request gave it (passed to peers).
    pub filter: Option<(Arc<Filter>, serde_json::Value)>,
    /// Payload fields to return (as the request gave them).
    pub include: Vec<String>,
    /// A text to embed with the node's model into `vector` before the
    /// search (`serve::embed_queries`); `None` once embedded, and always
    /// in what peers are sent.
    pub embed: Option<String>,
}

/// The text side of a query.
#[derive(Debug, Clone)]
pub struct TextPart {
    pub text: String,
    /// How to fuse with the vector list (hybrid queries).
    pub fusion: Fusion,
    /// Hits each list contributes before fusion (hybrid queries).
    pub candidates: usize,
    /// Global statistics, when a peer was given them.
    pub stats: Option<TextStats>,
}

impl<T> Query<T> {
    /// Both a vector and a text.
    pub fn is_hybrid(&self) -> bool {
        self.vector.is_some() && self.text.is_some()
    }
}

/// Each list's contribution to a hybrid query when the request names none:
/// the default list size, so a hybrid query's vector search does the work
/// of a vector query's. Measured on manpages-dev (one node, took_us p50 of
/// 500 queries, two interleaved rounds on a loaded machine): candidates 64
/// gives RRF nDCG@10 0.2896 (0.2918 at 100) at 0.9-1.15x the latency of a
/// vector-only query at L = 64; candidates 100 costs 1.2-1.9x.
pub const DEFAULT_CANDIDATES: usize = DEFAULT_LIST;

/// Element types that can be read from JSON numbers exactly.
pub trait WireElem: Element {
    /// `x` as `Self`, or why it cannot be one.
    fn from_wire(x: f64) -> Result<Self, &'static str>;
}

fn integral(x: f64, lo: f64, hi: f64) -> Result<f64, &'static str> {
    if !x.is_finite() {
        Err("is not a finite number")
    } else if x.fract() != 0.0 {
        Err("is not an integer (this index holds integer vectors)")
    } else if x < lo || x > hi {
        Err("is out of the element type's range")
    } else {
        Ok(x)
    }
}

impl WireElem for u8 {
    fn from_wire(x: f64) -> Result<Self, &'static str> {
        integral(x, 0.0, 255.0).map(|x| x as u8)
    }
}

impl WireElem for i8 {
    fn from_wire(x: f64) -> Result<Self, &'static str> {
        integral(x, -128.0, 127.0).map(|x| x as i8)
    }
}

impl WireElem for f32 {
    fn from_wire(x: f64) -> Result<Self, &'static str> {
        if !x.is_finite() {
            Err("is not a finite number")
        } else if x.abs() > f64::from(f32::MAX) {
            Err("is out of the range of a 32-bit float")
        } else {
            Ok(x as f32)
        }
    }
}

/// What is wrong with a request: the body of its 400 (or 404/405 for a
/// path or method the node does not serve). The messages name the field
/// and the value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("request body is {len} bytes; the limit is {max} (max_body_bytes)")]
    BodyTooLarge { len: u64, max: usize },
    #[error("request body exceeds the limit of {max} bytes (max_body_bytes)")]
    BodyOverLimit { max: usize },
    #[error("reading the request body: {0}")]
    ReadBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body did not arrive within {ms} ms (connections.body_timeout_ms)")]
    BodyTimeout { ms: u64 },
    #[error("the request body is empty; expected a JSON object")]
    EmptyBody,
    #[error("malformed request: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("{what} has {len} values; this index holds vectors of dimension {dim}")]
    Dimension {
        what: String,
        len: usize,
        dim: usize,
    },
    #[error("{what}[{index}] = {value} {why}")]
    Value {
        what: String,
        index: usize,
        value: f64,
        why: &'static str,
    },
    #[error("k must be in 1..={MAX_K}, got {0}")]
    K(usize),
    #[error("list must be at least k = {k}, got {list}")]
    ListBelowK { k: usize, list: usize },
    #[error("list must be at most {max} (limits.max_list), got {list}")]
    ListTooLarge { list: usize, max: usize },
    #[error("a batch of {queries} queries at list {list} is {work} of work; the limit is {max} (limits.max_batch_work: queries × list)")]
    BatchWork {
        queries: usize,
        list: usize,
        work: usize,
        max: usize,
    },
    #[error("timeout_ms must be in 1..={max} (limits.max_timeout_ms), got {got}")]
    Timeout { got: u64, max: u64 },
    #[error("beam must be in 1..=128, got {0}")]
    Beam(usize),
    #[error("probe_shards must be at least 1 (omit it to search every shard)")]
    ProbeShardsZero,
    #[error("the batch is empty: give \"vectors\", \"texts\", or both")]
    EmptyBatch,
    #[error("a batch holds at most {max} vectors (limits.max_batch), got {len}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("filter: {0}")]
    Filter(String),
    #[error("{0} has no documents: filter and include need an index built with --docs")]
    NoDocuments(String),
    #[error("ids is empty")]
    NoIds,
    #[error("ids[{index}] is {value}; an id is a non-negative integer or a string")]
    BadId { index: usize, value: String },
    #[error("shards names shard {shard}; the cluster has {shards}")]
    UnknownShard { shard: u32, shards: usize },
    #[error("{0:?} in the path is not a shard number")]
    ShardPath(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: hyper::Method, path: String },
    #[error(
        "no endpoint {path}; see /v1/search, /v1/search/batch, /v1/shards, /healthz, /metrics, /v1/documents/{{id}}, /v1/documents/get, /v1/documents, /v1/documents/delete"
    )]
    NoEndpoint { path: String },
    #[error("no document {0}")]
    NoDocument(String),
    #[error("documents[{pos}]: {why}")]
    Document { pos: usize, why: String },
    #[error("give \"ids\" or \"filter\" (one of them) to delete")]
    DeleteWhat,
    #[error("give \"vector\", \"text\", or both")]
    NoQuery,
    #[error("text is empty")]
    EmptyText,
    #[error("texts[{0}] is empty")]
    EmptyBatchText(usize),
    #[error(
        "a hybrid batch pairs vectors[i] with texts[i]: got {vectors} vectors and {texts} texts"
    )]
    BatchLengths { vectors: usize, texts: usize },
    #[error("\"fusion\" fuses a vector and a text list: give both \"vector\" and \"text\"")]
    FusionWithoutBoth,
    #[error("candidates must be in k = {k} ..= {max} (limits.max_list), got {got}")]
    Candidates { got: usize, k: usize, max: usize },
    #[error("probe_shards routes by the vector: a text-only query searches every shard")]
    ProbeWithoutVector,
    #[error("{0}: this index has no text fields: build it with --text-fields to search text with BM25, or start the node with a model (serve --model DIR) to embed it")]
    NoText(String),
    #[error("\"embed\": true, but this node has no model: start it with serve --model DIR (or model_dir in node.toml), or send a vector")]
    NoModel,
    #[error("the query text cannot be embedded: {0}")]
    Unembeddable(String),
}

/// Checks a vector's length and values; the error names the first bad value.
pub fn check_vector<T: WireElem>(what: &str, v: &[f64], dim: usize) -> Result<Vec<T>, ApiError> {
    if v.len() != dim {
        return Err(ApiError::Dimension {
            what: what.to_string(),
            len: v.len(),
            dim,
        });
    }
    v.iter()
        .enumerate()
        .map(|(index, &value)| {
            T::from_wire(value).map_err(|why| ApiError::Value {
                what: what.to_string(),
                index,
                value,
                why,
            })
        })
        .collect()
}

/// Checks `k`, `list`, `beam` and `probe_shards` against `limits`; fills
/// in the defaults.
pub fn check_params(
    k: usize,
    list: Option<usize>,
    beam: Option<usize>,
    probe_shards: Option<usize>,
    limits: &Limits,
) -> Result<SearchParams, ApiError> {
    if k == 0 || k > MAX_K {
        return Err(ApiError::K(k));
    }
    let list = list.unwrap_or(DEFAULT_LIST.max(k));
    if list < k {
        return Err(ApiError::ListBelowK { k, list });
    }
    if list > limits.max_list {
        return Err(ApiError::ListTooLarge {
            list,
            max: limits.max_list,
        });
    }
    let beam = beam.unwrap_or(DEFAULT_BEAM);
    if beam == 0 || beam > 128 {
        return Err(ApiError::Beam(beam));
    }
    if probe_shards == Some(0) {
        return Err(ApiError::ProbeShardsZero);
    }
    Ok(SearchParams { k, list, beam })
}

/// Checks a request's `timeout_ms` (none: the node's default deadline).
pub fn check_timeout(timeout_ms: Option<u64>, limits: &Limits) -> Result<Option<u64>, ApiError> {
    match timeout_ms {
        Some(t) if t == 0 || t > limits.max_timeout_ms => Err(ApiError::Timeout {
            got: t,
            max: limits.max_timeout_ms,
        }),
        t => Ok(t),
    }
}

/// Parses a request's filter; the error names what is wrong (an unknown
/// operator, a value of the wrong type, ...).
pub fn check_filter(
    filter: Option<&serde_json::Value>,
) -> Result<Option<(Arc<Filter>, serde_json::Value)>, ApiError> {
    filter
        .map(|v| {
            Filter::parse(v)
                .map(|f| (Arc::new(f), v.clone()))
                .map_err(|e| ApiError::Filter(e.to_string()))
        })
        .transpose()
}

/// `POST /v1/documents/get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentsRequest {
    pub ids: Vec<serde_json::Value>,
    /// Peer-to-peer: look only in these local shards, do not forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<u32>>,
}

/// One document found: its id, the shard holding it, its whole payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireDocument {
    pub id: UserId,
    pub shard: u32,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The answer to `POST /v1/documents/get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocumentsResponse {
    pub documents: Vec<WireDocument>,
    pub missing: Vec<UserId>,
    /// Shards no node answered for (a missing id may be in one of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<u32>,
}

impl DocumentsRequest {
    /// The ids, or the first that is not one.
    pub fn check(&self) -> Result<Vec<UserId>, ApiError> {
        if self.ids.is_empty() {
            return Err(ApiError::NoIds);
        }
        if self.ids.len() > MAX_BATCH {
            return Err(ApiError::BatchTooLarge {
                len: self.ids.len(),
                max: MAX_BATCH,
            });
        }
        parse_ids(&self.ids)
    }
}

/// Ids given as JSON, checked; an error names the first bad one's position.
pub fn parse_ids(ids: &[serde_json::Value]) -> Result<Vec<UserId>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(index, v)| {
            UserId::from_json(v).ok_or_else(|| ApiError::BadId {
                index,
                value: v.to_string(),
            })
        })
        .collect()
}

impl SearchRequest {
    /// The typed query, or what is wrong with the request.
    /// `can_embed`: the node has a model, so a text without a vector is
    /// embedded (unless the request says `"embed": false`).
    pub fn check<T: WireElem>(
        &self,
        dim: usize,
        limits: &Limits,
        can_embed: bool,
    ) -> Result<Query<T>, ApiError> {
        let params = check_params(self.k, self.list, self.beam, self.probe_shards, limits)?;
        let vector = self
            .vector
            .as_ref()
            .map(|v| check_vector("vector", v, dim))
            .transpose()?;
        let embed = to_embed(
            self.text.as_deref(),
            vector.is_some(),
            self.embed,
            can_embed,
        )?;
        let text = check_text(
            self.text.as_deref(),
            self.vector.is_some() || embed.is_some(),
            self.fusion,
            self.candidates,
            self.probe_shards,
            params.k,
            limits,
        )?
        .map(|mut t| {
            t.stats = self.text_stats.clone();
            t
        });
        Ok(Query {
            vector,
            text: bm25_half(text, &embed, self.fusion.is_some()),
            params,
            probe_shards: self.probe_shards,
            timeout_ms: check_timeout(self.timeout_ms, limits)?,
            filter: check_filter(self.filter.as_ref())?,
            include: self.include.clone(),
            embed,
        })
    }
}

/// The text a query's vector is to be embedded from, if any: a text
/// without a vector, on a node with a model, unless the request says
/// `"embed": false`. `"embed": true` on a node without one is an error (a
/// text-only query there is BM25, as it is with `false`).
fn to_embed(
    text: Option<&str>,
    has_vector: bool,
    embed: Option<bool>,
    can_embed: bool,
) -> Result<Option<String>, ApiError> {
    match (text, has_vector, embed) {
        (None, _, _) | (_, true, _) | (_, _, Some(false)) => Ok(None),
        (Some(t), false, _) if can_embed => Ok(Some(t.to_string())),
        (Some(_), false, Some(true)) => Err(ApiError::NoModel),
        (Some(_), false, None) => Ok(None),
    }
}

/// The BM25 half of a query: its checked text part, except for an
/// embedded text without `fusion`, which is searched as a vector alone.
fn bm25_half(text: Option<TextPart>, embed: &Option<String>, fusion: bool) -> Option<TextPart> {
    text.filter(|_| embed.is_none() || fusion)
}

/// Checks the text side of a query (`text`, and `fusion` and `candidates`,
/// which only make sense with it): what [`SearchRequest::check`] and
/// [`BatchRequest::check`] share.
fn check_text(
    text: Option<&str>,
    has_vector: bool,
    fusion: Option<Fusion>,
    candidates: Option<usize>,
    probe_shards: Option<usize>,
    k: usize,
    limits: &Limits,
) -> Result<Option<TextPart>, ApiError> {
    let Some(t) = text else {
        if !has_vector {
            return Err(ApiError::NoQuery);
        }
        if fusion.is_some() {
            return Err(ApiError::FusionWithoutBoth);
        }
        return Ok(None);
    };
    if t.trim().is_empty() {
        return Err(ApiError::EmptyText);
    }
    if !has_vector && fusion.is_some() {
        return Err(ApiError::FusionWithoutBoth);
    }
    if !has_vector && probe_shards.is_some() {
        return Err(ApiError::ProbeWithoutVector);
    }
    let candidates = candidates.unwrap_or(DEFAULT_CANDIDATES.max(k));
    if candidates < k || candidates > limits.max_list {
        return Err(ApiError::Candidates {
            got: candidates,
            k,
            max: limits.max_list,
        });
    }
    Ok(Some(TextPart {
        text: t.to_string(),
        fusion: fusion.unwrap_or_default(),
        candidates,
        stats: None,
    }))
}

impl BatchRequest {
    /// The typed queries, or what is wrong, naming the first bad one.
    pub fn check<T: WireElem>(
        &self,
        dim: usize,
        limits: &Limits,
        can_embed: bool,
    ) -> Result<Vec<Query<T>>, ApiError> {
        let (nv, nt) = (self.vectors.len(), self.texts.len());
        if nv == 0 && nt == 0 {
            return Err(ApiError::EmptyBatch);
        }
        if nv > 0 && nt > 0 && nv != nt {
            return Err(ApiError::BatchLengths {
                vectors: nv,
                texts: nt,
            });
        }
        let n = nv.max(nt);
        let max = limits.max_batch.min(MAX_BATCH);
        if n > max {
            return Err(ApiError::BatchTooLarge { len: n, max });
        }
        let params = check_params(self.k, self.list, self.beam, self.probe_shards, limits)?;
        let work = n.saturating_mul(params.list);
        if work > limits.max_batch_work {
            return Err(ApiError::BatchWork {
                queries: n,
                list: params.list,
                work,
                max: limits.max_batch_work,
            });
        }
        let timeout_ms = check_timeout(self.timeout_ms, limits)?;
        let filter = check_filter(self.filter.as_ref())?;
        (0..n)
            .map(|i| {
                let vector = self
                    .vectors
                    .get(i)
                    .map(|v| check_vector(&format!("vectors[{i}]"), v, dim))
                    .transpose()?;
                let embed = to_embed(
                    self.texts.get(i).map(String::as_str),
                    vector.is_some(),
                    self.embed,
                    can_embed,
                )?;
                let text = check_text(
                    self.texts.get(i).map(String::as_str),
                    vector.is_some() || embed.is_some(),
                    self.fusion,
                    self.candidates,
                    self.probe_shards,
                    params.k,
                    limits,
                )
                .map_err(|e| match e {
                    ApiError::EmptyText => ApiError::EmptyBatchText(i),
                    e => e,
                })?;
                Ok(Query {
                    vector,
                    text: bm25_half(text, &embed, self.fusion.is_some()),
                    params,
                    probe_shards: self.probe_shards,
                    timeout_ms,
                    filter: filter.clone(),
                    include: self.include.clone(),
                    embed,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<SearchRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// What a text without a vector becomes: embedded on a node with a
    /// model (fused with BM25 only when `fusion` asks), BM25 otherwise or
    /// when the request says `"embed": false`, a 400 when it says `true` to
    /// a node without one; a vector given is used as is.
    #[test]
    fn a_text_is_embedded_only_where_a_model_is() {
        let check = |json: &str, model: bool| {
            req(json)
                .unwrap()
                .check::<f32>(2, &Limits::default(), model)
        };
        let q = check(r#"{"text":"ls"}"#, true).unwrap();
        assert_eq!(q.embed.as_deref(), Some("ls"));
        assert!(q.text.is_none() && q.vector.is_none());
        let q = check(r#"{"text":"ls","fusion":{"method":"rrf"}}"#, true).unwrap();
        assert_eq!(q.embed.as_deref(), Some("ls"));
        assert_eq!(q.text.unwrap().text, "ls");
        // Routing by vector needs one: an embedded text will have it.
        assert!(check(r#"{"text":"ls","probe_shards":1}"#, true).is_ok());
        assert!(matches!(
            check(r#"{"text":"ls","probe_shards":1}"#, false),
            Err(ApiError::ProbeWithoutVector)
        ));
        for (json, model) in [
            (r#"{"text":"ls","embed":false}"#, true),
            (r#"{"text":"ls"}"#, false),
            (r#"{"text":"ls","embed":false}"#, false),
        ] {
            let q = check(json, model).unwrap();
            assert!(q.embed.is_none() && q.vector.is_none(), "{json}");
            assert_eq!(q.text.unwrap().text, "ls");
        }
        assert!(matches!(
            check(r#"{"text":"ls","embed":true}"#, false),
            Err(ApiError::NoModel)
        ));
        let q = check(r#"{"text":"ls","vector":[1,2],"embed":true}"#, true).unwrap();
        assert!(q.embed.is_none() && q.vector.is_some() && q.text.is_some());
        // Fusion without anything to fuse is still refused.
        assert!(matches!(
            check(
                r#"{"text":"ls","fusion":{"method":"rrf"},"embed":false}"#,
                true
            ),
            Err(ApiError::FusionWithoutBoth)
        ));
        let b: BatchRequest = serde_json::from_str(r#"{"texts":["a","b"]}"#).unwrap();
        let qs = b.check::<f32>(2, &Limits::default(), true).unwrap();
        assert_eq!(
            qs.iter().map(|q| q.embed.as_deref()).collect::<Vec<_>>(),
            [Some("a"), Some("b")]
        );
        assert!(qs.iter().all(|q| q.text.is_none()));
    }

    #[test]
    fn defaults_fill_in() {
        let q: Query<f32> = req(r#"{"vector":[1,2,3]}"#)
            .unwrap()
            .check(3, &Limits::default(), false)
            .unwrap();
        assert_eq!(
            q.params,
            SearchParams {
                k: 10,
                list: 64,
                beam: 4
            }
        );
        let q: Query<f32> = req(r#"{"vector":[1,2,3],"k":100}"#)
            .unwrap()
            .check(3, &Limits::default(), false)
            .unwrap();
        assert_eq!(q.params.list, 100);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            (r#"{"vector":[1,2]}"#, "dimension 3"),
            (r#"{"vector":[1,2,3],"k":0}"#, "k must be"),
            (r#"{"vector":[1,2,3],"k":1001}"#, "k must be"),
            (
                r#"{"vector":[1,2,3],"k":20,"list":10}"#,
                "list must be at least",
            ),
            (r#"{"vector":[1,2,3],"beam":0}"#, "beam"),
            (r#"{"vector":[1,2,3],"probe_shards":0}"#, "probe_shards"),
            (r#"{"vector":[1,2,1e39]}"#, "vector[2]"),
        ];
        for (json, want) in cases {
            let err = req(json)
                .unwrap()
                .check::<f32>(3, &Limits::default(), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let err = req(r#"{"vector":[1,2.5,3]}"#)
            .unwrap()
            .check::<u8>(3, &Limits::default(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vector[1]") && err.contains("integer"),
            "{err}"
        );
        let err = req(r#"{"vector":[1,256,3]}"#)
            .unwrap()
            .check::<u8>(3, &Limits::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("range"), "{err}");
        let err = req(r#"{"vector":[-129,0,3]}"#)
            .unwrap()
            .check::<i8>(3, &Limits::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vector[0]"), "{err}");
        // Not JSON numbers at all: the parser refuses them.
        assert!(req(r#"{"vector":[NaN,1,2]}"#).is_err());
        assert!(req(r#"{"vector":[1e999,1,2]}"#).is_err());
        assert!(req(r#"{"vector":[1,2,3],"lsit":64}"#).is_err());
    }

    #[test]
    fn batch_names_the_bad_vector() {
        let b: BatchRequest = serde_json::from_str(r#"{"vectors":[[1,2],[1]]}"#).unwrap();
        let err = b
            .check::<f32>(2, &Limits::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vectors[1]"), "{err}");
        let b: BatchRequest = serde_json::from_str(r#"{"vectors":[]}"#).unwrap();
        assert!(b.check::<f32>(2, &Limits::default(), false).is_err());
    }

    /// The work a request may ask for is bounded, and the refusal names
    /// the limit and its setting.
    #[test]
    fn limits_bound_the_work_of_a_request() {
        let limits = Limits {
            max_list: 100,
            max_batch: 4,
            max_batch_work: 250,
            max_timeout_ms: 1000,
        };
        let one = |json: &str| {
            req(json)
                .unwrap()
                .check::<f32>(1, &limits, false)
                .map(|_| ())
        };
        assert!(one(r#"{"vector":[1],"list":100,"timeout_ms":1000}"#).is_ok());
        for (json, want) in [
            (r#"{"vector":[1],"list":101}"#, "limits.max_list"),
            (r#"{"vector":[1],"timeout_ms":0}"#, "limits.max_timeout_ms"),
            (
                r#"{"vector":[1],"timeout_ms":1001}"#,
                "limits.max_timeout_ms",
            ),
        ] {
            let err = one(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let batch = |json: &str| {
            serde_json::from_str::<BatchRequest>(json)
                .unwrap()
                .check::<f32>(1, &limits, false)
                .map(|_| ())
        };
        assert!(batch(r#"{"vectors":[[1],[2]],"list":100}"#).is_ok());
        for (json, want) in [
            (
                r#"{"vectors":[[1],[2],[3]],"list":100}"#,
                "limits.max_batch_work",
            ),
            (
                r#"{"vectors":[[1],[2],[3],[4],[5]],"list":10}"#,
                "limits.max_batch",
            ),
            (r#"{"vectors":[[1]],"timeout_ms":0}"#, "timeout_ms"),
        ] {
            let err = batch(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        // The file form: a [limits] table, every key optional.
        let l: Limits = toml::from_str("max_list = 50").unwrap();
        assert_eq!(l.max_list, 50);
        assert_eq!(l.max_batch, Limits::default().max_batch);
        assert!(toml::from_str::<Limits>("max_lsit = 50").is_err());
    }

    /// Issue 10: the request parser and every check behind it, fed
    /// arbitrary bytes and request-shaped JSON with hostile values
    /// (extreme numbers, wrong types, deep and unknown filter operators),
    /// must answer `Ok` or an `ApiError`, never panic.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Any JSON value, biased toward what the checks look at.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                prop_oneof![
                    Just(0i64),
                    Just(-1),
                    Just(1),
                    Just(i64::MIN),
                    Just(i64::MAX),
                    Just(u32::MAX as i64 + 1),
                    any::<i64>()
                ]
                .prop_map(Value::from),
                Just(Value::from(u64::MAX)),
                prop_oneof![
                    Just(1e308f64),
                    Just(-1e308),
                    Just(f64::MIN_POSITIVE),
                    Just(0.5),
                    any::<f64>().prop_filter("finite", |f| f.is_finite())
                ]
                .prop_map(Value::from),
                "[a-z$]{0,6}".prop_map(Value::from),
                "\\PC{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Keys of requests, of filters (operators), and anything else.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "vector",
                    "vectors",
                    "text",
                    "texts",
                    "fusion",
                    "method",
                    "alpha",
                    "normalize",
                    "candidates",
                    "k",
                    "list",
                    "beam",
                    "probe_shards",
                    "timeout_ms",
                    "shards",
                    "filter",
                    "include",
                    "ids",
                    "$and",
                    "$or",
                    "$not",
                    "$in",
                    "$nin",
                    "$ne",
                    "$gt",
                    "$gte",
                    "$lt",
                    "$lte",
                    "$exists",
                    "lang",
                    "year",
                ])
                .prop_map(String::from),
                "[a-z$]{1,5}",
            ]
        }

        const SEARCH_KEYS: &[&str] = &[
            "text",
            "fusion",
            "candidates",
            "k",
            "list",
            "beam",
            "probe_shards",
            "timeout_ms",
            "shards",
            "filter",
            "include",
        ];
        const BATCH_KEYS: &[&str] = &[
            "texts",
            "fusion",
            "candidates",
            "k",
            "list",
            "beam",
            "probe_shards",
            "timeout_ms",
            "filter",
            "include",
        ];

        /// A small number, of the size the fields take.
        fn number() -> impl Strategy<Value = Value> {
            prop_oneof![
                12 => (0u64..3000).prop_map(Value::from),
                1 => Just(Value::from(u64::MAX)),
                1 => Just(Value::from(-1)),
                1 => Just(Value::from(0.5)),
            ]
        }

        /// A search (`batch` false) or batch request: its own keys with
        /// numbers or any values, a vector of the right length most of the
        /// time, and a filter made of operators and values; so that most
        /// bodies parse and reach the checks.
        fn request(batch: bool) -> impl Strategy<Value = Vec<u8>> {
            let keys = if batch { BATCH_KEYS } else { SEARCH_KEYS };
            let field = prop::sample::select(keys).prop_flat_map(|k| {
                let typed = match k {
                    "text" => "\\PC{0,12}".prop_map(Value::from).boxed(),
                    "texts" => prop::collection::vec("\\PC{0,8}", 2)
                        .prop_map(Value::from)
                        .boxed(),
                    "include" => prop::collection::vec("[a-z*]{0,4}", 0..3)
                        .prop_map(Value::from)
                        .boxed(),
                    "shards" => prop::collection::vec(0u32..5, 0..3)
                        .prop_map(Value::from)
                        .boxed(),
                    "fusion" => (
                        prop::sample::select(vec!["rrf", "weighted", "x"]),
                        number(),
                        number(),
                    )
                        .prop_map(|(m, a, b)| serde_json::json!({"method": m, "k": a, "alpha": b}))
                        .boxed(),
                    _ => number().boxed(),
                };
                (Just(k), prop_oneof![6 => typed, 1 => value()])
            });
            (
                prop::collection::vec(field, 0..5),
                prop_oneof![
                    4 => prop::collection::vec(-300.0f64..300.0, 3),
                    1 => prop::collection::vec(-1e300f64..1e300, 0..5),
                ],
                prop::option::of(value()),
            )
                .prop_map(move |(fields, v, filter)| {
                    let mut m = serde_json::Map::new();
                    for (k, val) in fields {
                        m.insert(k.to_string(), val);
                    }
                    if batch {
                        m.insert("vectors".into(), Value::from(vec![v.clone(), v]));
                    } else {
                        m.insert("vector".into(), Value::from(v));
                    }
                    if let Some(f) = filter {
                        m.insert("filter".into(), f);
                    }
                    serde_json::to_vec(&m).unwrap_or_default()
                })
        }

        fn any_request() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![request(false), request(true)]
        }

        /// The strategies are worth something only if bodies get past
        /// serde to the checks: most of them must.
        #[test]
        fn most_bodies_reach_the_checks() {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let mut parsed = 0;
            for _ in 0..200 {
                let body = any_request().new_tree(&mut runner).unwrap().current();
                if crate::http::parse_json::<SearchRequest>(&body).is_ok()
                    || crate::http::parse_json::<BatchRequest>(&body).is_ok()
                {
                    parsed += 1;
                }
            }
            assert!(parsed > 100, "{parsed} of 200 bodies parsed");
        }

        fn every_check(body: &[u8]) {
            let limits = Limits::default();
            if let Ok(r) = crate::http::parse_json::<SearchRequest>(body) {
                let _ = r.check::<f32>(3, &limits, false);
                let _ = r.check::<u8>(3, &limits, false);
                let _ = r.check::<i8>(3, &limits, false);
            }
            if let Ok(r) = crate::http::parse_json::<BatchRequest>(body) {
                let _ = r.check::<f32>(3, &limits, false);
                let _ = r.check::<u8>(3, &limits, false);
            }
            if let Ok(r) = crate::http::parse_json::<DocumentsRequest>(body) {
                let _ = r.check();
            }
            let _ = crate::http::parse_json::<TextStatsRequest>(body);
        }

        proptest! {
            // 256 cases (SHARDANN_FUZZ_CASES to fuzz longer), seeded.
            #![proptest_config(ProptestConfig {
                cases: std::env::var("SHARDANN_FUZZ_CASES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(256),
                rng_seed: proptest::test_runner::RngSeed::Fixed(10),
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
                every_check(&body);
            }

            #[test]
            fn request_shaped_json(body in any_request()) {
                every_check(&body);
            }

            /// A valid request with a few bytes changed.
            #[test]
            fn damaged_requests(
                body in any_request(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            ) {
                let mut b = body;
                for (at, byte) in edits {
                    if !b.is_empty() {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                }
                every_check(&b);
            }
        }
    }
}
