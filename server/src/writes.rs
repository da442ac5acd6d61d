//! Writes by id: upserts and deletes of documents, into the mutable part
//! of the shard that owns each id (`engine::mutable`).
//!
//! ```text
//!  POST /v1/documents {"documents": [...]}      ─┐ authorize (write_token, or loopback only)
//!  DELETE /v1/documents/{id}                     ├─► parse, check ─► owner shard per id
//!  POST /v1/documents/delete {"ids"|"filter"}   ─┘        │
//!                                                        ▼  (on the executor's blocking thread)
//!                               MutablePart::upsert / delete ─► Wal::sync (group commit)
//!                                                        │
//!                                              acknowledged: searchable, durable
//! ```
//!
//! The owner of an id: the shard that holds it now (so an upsert replaces
//! and a delete finds it); for a new id, by the partition's rule: the
//! nearest centroid of a k-means partition (where searches with
//! `probe_shards` look for it), a hash of the id for a random one. Without
//! etcd this node must serve the owner (a 421 names the nodes that do);
//! with etcd any node takes any write: the holder is looked up across the
//! cluster, and each shard's part goes to the shard's elected write
//! primary, which applies it on every live replica ([`crate::primary`]).
//!
//! A write is acknowledged once its record is durable in the shard's log
//! (`[writes] durability`). A batch spanning shards is one record per
//! shard: durable per shard, not across shards.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shardann_engine::docs::UserId;
use shardann_engine::filter::Filter;
use shardann_engine::index::DiskIndex;
use shardann_engine::merge::MergeReport;
use shardann_engine::metric::Element;
use shardann_engine::mutable::{MutableOptions, MutablePart, NewDocument};
use shardann_engine::partition::PartitionKind;
use shardann_engine::progress::NoProgress;
use shardann_engine::wal::Durability;

use crate::api::{check_vector, ApiError, WireElem};
use crate::error::{Result, ServerError};
use crate::node::{Executor, Node};

/// `[writes]` in `node.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WritesConfig {
    /// "fsync" (default): acknowledged writes survive a machine crash;
    /// "buffered": they survive a process crash only.
    pub durability: Durability,
    /// Documents (or ids) in one write request, at most.
    pub max_batch: usize,
    /// Points a shard's mutable part may hold before writes are refused
    /// (503) until a merge.
    pub max_points: usize,
    /// On a node with a model: a document without a "vector" has this
    /// field's text embedded (default "text").
    pub embed_field: String,
    /// A merge of a shard's writes into its next version starts by itself
    /// once the writes since its version (documents written, plus the
    /// version's documents deleted or replaced) reach this share of the
    /// version's points. 0 turns automatic merges off
    /// (`POST /v1/shards/{shard}/merge` still merges).
    pub merge_fraction: f64,
    /// ... or once the shard's mutable part holds this many points.
    pub merge_points: usize,
}

impl Default for WritesConfig {
    fn default() -> Self {
        let o = MutableOptions::default();
        WritesConfig {
            durability: o.durability,
            max_batch: o.max_batch,
            max_points: o.max_points,
            embed_field: "text".into(),
            merge_fraction: 0.1,
            merge_points: 1_000_000,
        }
    }
}

impl WritesConfig {
    pub fn options(&self) -> MutableOptions {
        MutableOptions {
            durability: self.durability,
            max_batch: self.max_batch,
            max_points: self.max_points,
            ..MutableOptions::default()
        }
    }
}

/// Why a write was refused before it was looked at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteRefusal {
    #[error("writes need \"authorization: Bearer <write_token>\"")]
    Unauthorized,
    #[error("this node has no write_token, so it takes writes only from loopback addresses, and {peer} is not one (set write_token in node.toml)")]
    NotLoopback { peer: SocketAddr },
    #[error("shard {shard} owns id {id}, and this node does not serve it; send the write to a node that does ({nodes}); routing writes between nodes is not built yet")]
    NotHere {
        shard: u32,
        id: String,
        nodes: String,
    },
    #[error("this node does not serve shard {shard}; merge it on a node that does")]
    NoLocalShard { shard: u32 },
    #[error("a merge of shard {shard} is running; ask again when it is done")]
    MergeRunning { shard: u32 },
    #[error("shard {shard} has no write primary yet (one is elected within a second of a node serving it); retry")]
    NoPrimary { shard: u32 },
    #[error("this node is not the write primary of shard {shard} ({primary} is); send its writes there, or to any node without naming a shard")]
    NotPrimary { shard: u32, primary: String },
    #[error("this node became the write primary of shard {shard} and is taking the other replicas' records first; retry")]
    PrimaryCatchingUp { shard: u32 },
    #[error(
        "this node is the write primary of shard {shard}: it takes no records from another node"
    )]
    IsPrimary { shard: u32 },
    #[error("shard {shard}'s write primary {primary} did not take the write: {why}; retry (an upsert or a delete may be repeated)")]
    Forward {
        shard: u32,
        primary: String,
        why: String,
    },
    #[error("shard {shard}: the write is durable on its primary but a replica did not apply it ({why}); retry (an upsert or a delete may be repeated)")]
    ReplicaFailed { shard: u32, why: String },
    #[error(
        "cannot tell which shard holds id {id}: no node answered for shard(s) {shards:?}; retry"
    )]
    OwnerUnknown { id: String, shards: Vec<u32> },
    #[error("this node cannot reach etcd, so it orders no writes for shard {shard} (another node may be its primary by now); retry")]
    NoCoordination { shard: u32 },
    /// The primary refused a shard's part of the write (the client's error).
    #[error("{message}")]
    AtPrimary { status: u16, message: String },
}

/// `POST /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// Documents: `"id"`, `"vector"`, and any other fields as the payload.
    pub documents: Vec<Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct UpsertResponse {
    pub upserted: usize,
    /// Per shard written: the log record's sequence number.
    pub lsn: BTreeMap<u32, u64>,
    pub took_us: u64,
}

/// `POST /v1/documents/delete`: `ids` or `filter`, not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[serde(default)]
    pub ids: Option<Vec<Value>>,
    #[serde(default)]
    pub filter: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct DeleteResponse {
    pub deleted: usize,
    /// Ids that named no document (nothing was logged for them).
    pub not_found: Vec<UserId>,
    /// Shards this node does not serve: a document there was not deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsearched_shards: Vec<u32>,
    pub took_us: u64,
}

/// Checks that the sender may write: with the node's `write_token`, or,
/// without one, from a loopback address.
pub fn authorize(
    token: Option<&str>,
    headers: &hyper::HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), WriteRefusal> {
    match token {
        Some(token) => {
            let given = headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given == Some(token) {
                Ok(())
            } else {
                Err(WriteRefusal::Unauthorized)
            }
        }
        None => match peer {
            Some(p) if p.ip().is_loopback() => Ok(()),
            // No address known (not a TCP client): not a remote one.
            None => Ok(()),
            Some(peer) => Err(WriteRefusal::NotLoopback { peer }),
        },
    }
}

/// A request document → an engine document, or, without a vector, the
/// text to embed for it (`embed`: the field to take it from, on a node
/// with a model). Errors name its position.
fn parse_document<T: WireElem>(
    pos: usize,
    mut doc: Map<String, Value>,
    dim: usize,
    embed: Option<&str>,
) -> Result<(NewDocument<T>, Option<String>), ApiError> {
    let bad = |why: String| ApiError::Document { pos, why };
    let id = match doc.remove("id") {
        None => return Err(bad("no \"id\"".into())),
        Some(v) => UserId::from_json(&v).ok_or_else(|| {
            bad(format!(
                "\"id\" must be a non-negative integer or a string, got {v}"
            ))
        })?,
    };
    let (vector, text) = match doc.remove("vector") {
        None => match embed {
            Some(field) => match doc.get(field) {
                Some(Value::String(t)) if !t.trim().is_empty() => (Vec::new(), Some(t.clone())),
                _ => {
                    return Err(bad(format!(
                        "id {id}: no \"vector\", and no text in {field:?} to embed"
                    )))
                }
            },
            None => {
                return Err(bad(format!(
                    "id {id}: no \"vector\" (this node has no model to embed text with)"
                )))
            }
        },
        Some(Value::Array(items)) => {
            let mut xs = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                xs.push(x.as_f64().ok_or_else(|| {
                    bad(format!("id {id}: \"vector\"[{i}] is {x}, not a number"))
                })?);
            }
            (
                check_vector::<T>(&format!("documents[{pos}].vector"), &xs, dim)?,
                None,
            )
        }
        Some(other) => {
            return Err(bad(format!(
                "id {id}: \"vector\" must be an array of numbers, got {other}"
            )))
        }
    };
    Ok((
        NewDocument {
            id,
            vector,
            payload: doc,
        },
        text,
    ))
}

/// Embeds the texts of documents that came without a vector.
async fn embed_missing<T: WireElem>(
    exec: &Executor<T>,
    parsed: Vec<(NewDocument<T>, Option<String>)>,
) -> Result<Vec<NewDocument<T>>> {
    let texts: Vec<String> = parsed.iter().filter_map(|(_, t)| t.clone()).collect();
    if texts.is_empty() {
        return Ok(parsed.into_iter().map(|(d, _)| d).collect());
    }
    let mut vectors = crate::serve::embed_texts(exec, texts).await?.into_iter();
    let mut docs = Vec::with_capacity(parsed.len());
    for (mut d, text) in parsed {
        if text.is_some() {
            // A node starts with a model only over an f32 index of its
            // width (`node::open_encoder`): every value converts.
            let v = vectors.next().unwrap_or_default();
            d.vector = v
                .iter()
                .map(|&x| T::from_wire(f64::from(x)))
                .collect::<std::result::Result<Vec<T>, _>>()
                .map_err(|why| {
                    ServerError::InvalidParameter(format!("an embedded vector {why}"))
                })?;
        }
        docs.push(d);
    }
    Ok(docs)
}

/// The local shard whose live documents hold `id`, if any.
fn holder<T: WireElem>(exec: &Executor<T>, id: &UserId) -> Option<u32> {
    let node = &exec.node;
    node.local_shards().into_iter().find(|&s| {
        node.local_shard(s)
            .is_some_and(|index| node.locate::<T>(s, &index, id).is_some())
    })
}

/// The shard that owns `id`: the local shard holding it, else the
/// partition's choice for a new id.
fn owner<T: WireElem>(exec: &Executor<T>, id: &UserId, vector: Option<&[T]>) -> u32 {
    let node = &exec.node;
    if let Some(s) = holder(exec, id) {
        return s;
    }
    let n = node.manifest.shards.len().max(1);
    match (node.manifest.partition, vector) {
        (PartitionKind::KMeans, Some(v)) => node
            .manifest
            .route(v, 1)
            .first()
            .map(|&s| s as u32)
            .unwrap_or(0),
        _ => {
            // A fixed hash (not the std one, whose keys vary by process):
            // every node, every run, sends an id to the same shard.
            let mut h = Fnv(0xcbf2_9ce4_8422_2325);
            id.hash(&mut h);
            (h.finish() % n as u64) as u32
        }
    }
}

/// FNV-1a, for a hash that never changes between builds or processes.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The segment served for `s` and its mutable part (opened, its log
/// created, on the first write).
fn shard_for_write<T: WireElem>(
    exec: &Executor<T>,
    s: u32,
    id: &UserId,
) -> Result<(Arc<DiskIndex>, Arc<MutablePart<T>>)> {
    let node = &exec.node;
    let Some(index) = node.local_shard(s) else {
        let nodes = node.replicas_of(s);
        return Err(WriteRefusal::NotHere {
            shard: s,
            id: id.to_string(),
            nodes: if nodes.is_empty() {
                "none is known".into()
            } else {
                nodes.join(", ")
            },
        }
        .into());
    };
    let part = node.mutable_part_or_open::<T>(s, &index)?;
    Ok((index, part))
}

/// Upserts a batch: checked whole, split by owner shard, each shard's part
/// logged as one record and synced, then acknowledged.
pub async fn upsert<T: WireElem>(
    exec: &Executor<T>,
    request: UpsertRequest,
) -> Result<UpsertResponse> {
    let start = Instant::now();
    let node = &exec.node;
    let max = node.config.writes.max_batch;
    if request.documents.is_empty() {
        return Err(ServerError::Engine(
            shardann_engine::WriteError::Empty.into(),
        ));
    }
    if request.documents.len() > max {
        return Err(ServerError::Engine(
            shardann_engine::WriteError::TooMany {
                count: request.documents.len(),
                max,
            }
            .into(),
        ));
    }
    let dim = node.manifest.dim;
    let embed = node
        .encoder
        .as_ref()
        .map(|_| node.config.writes.embed_field.as_str());
    let parsed = request
        .documents
        .into_iter()
        .enumerate()
        .map(|(pos, d)| parse_document::<T>(pos, d, dim, embed))
        .collect::<Result<Vec<_>, _>>()?;
    // A duplicate id in the batch is refused before routing (two shards
    // could otherwise each take one copy).
    let mut seen: BTreeMap<&UserId, usize> = BTreeMap::new();
    for (pos, (d, _)) in parsed.iter().enumerate() {
        if let Some(&first) = seen.get(&d.id) {
            return Err(ServerError::Engine(
                shardann_engine::WriteError::DuplicateInBatch {
                    pos,
                    id: d.id.to_string(),
                    first,
                }
                .into(),
            ));
        }
        seen.insert(&d.id, pos);
    }
    let docs = embed_missing(exec, parsed).await?;
    if node.coordination.enabled() {
        return upsert_through_primaries(exec, docs, start).await;
    }
    let mut by_shard: BTreeMap<u32, Vec<NewDocument<T>>> = BTreeMap::new();
    for d in docs {
        let s = owner(exec, &d.id, Some(&d.vector));
        by_shard.entry(s).or_default().push(d);
    }
    // Every owner must be here before anything is written.
    let mut targets = Vec::with_capacity(by_shard.len());
    for (s, batch) in by_shard {
        let (_, part) = shard_for_write(exec, s, &batch[0].id)?;
        targets.push((s, part, batch));
    }
    let mut resp = UpsertResponse::default();
    for (s, part, batch) in targets {
        let n = batch.len();
        // Graph inserts and the fsync: off the executor, whose searches go on.
        let lsn = crate::rt::spawn_blocking(move || -> shardann_engine::Result<u64> {
            let lsn = part.upsert(batch)?;
            part.sync(lsn)?;
            Ok(lsn)
        })
        .await?;
        resp.upserted += n;
        resp.lsn.insert(s, lsn);
        merge_if_due::<T>(node, s);
    }
    let m = &node.metrics;
    m.add(&m.documents_upserted, resp.upserted as u64);
    resp.took_us = start.elapsed().as_micros() as u64;
    Ok(resp)
}

/// In a coordinated cluster: each document to the primary of the shard
/// that owns it (the shard holding the id anywhere in the cluster, else
/// the partition's rule), one request per shard.
async fn upsert_through_primaries<T: WireElem>(
    exec: &Executor<T>,
    docs: Vec<NewDocument<T>>,
    start: Instant,
) -> Result<UpsertResponse> {
    let node = &exec.node;
    let ids: Vec<UserId> = docs.iter().map(|d| d.id.clone()).collect();
    let (held, _) = holders_anywhere(exec, &ids).await?;
    let mut by_shard: BTreeMap<u32, Vec<crate::primary::WireDocument>> = BTreeMap::new();
    for d in docs {
        let s = match held.get(&d.id) {
            Some(&s) => s,
            None => owner(exec, &d.id, Some(&d.vector)),
        };
        by_shard
            .entry(s)
            .or_default()
            .push(crate::primary::WireDocument::of(d));
    }
    let mut resp = UpsertResponse::default();
    for (s, batch) in by_shard {
        let r =
            crate::primary::write_shard(exec, s, crate::primary::ShardWrite::Upsert(batch)).await?;
        resp.upserted += r.count;
        if let Some(lsn) = r.lsn {
            resp.lsn.insert(s, lsn);
        }
    }
    let m = &node.metrics;
    m.add(&m.documents_upserted, resp.upserted as u64);
    resp.took_us = start.elapsed().as_micros() as u64;
    Ok(resp)
}

/// The shard holding each of `ids` that some shard of the cluster holds
/// (local shards first, the others asked at a replica), and the shards
/// no node answered for. An id not found while a shard did not answer is
/// refused ([`WriteRefusal::OwnerUnknown`]): a write must not create a
/// second copy of a document it could not see.
async fn holders_anywhere<T: WireElem>(
    exec: &Executor<T>,
    ids: &[UserId],
) -> Result<(BTreeMap<UserId, u32>, Vec<u32>)> {
    let mut held = BTreeMap::new();
    let mut rest = Vec::new();
    for id in ids {
        match holder(exec, id) {
            Some(s) => {
                held.insert(id.clone(), s);
            }
            None => rest.push(id.clone()),
        }
    }
    let n = exec.node.manifest.shards.len() as u32;
    let remote: Vec<u32> = (0..n)
        .filter(|&s| exec.node.local_shard(s).is_none())
        .collect();
    if rest.is_empty() || remote.is_empty() {
        return Ok((held, Vec::new()));
    }
    let mut unanswered = Vec::new();
    for chunk in rest.chunks(crate::api::MAX_BATCH) {
        let found = exec.documents(chunk, Some(&remote)).await?;
        for d in found.documents {
            held.insert(d.id, d.shard);
        }
        if !found.missing_shards.is_empty() {
            if let Some(id) = chunk.iter().find(|id| !held.contains_key(id)) {
                return Err(WriteRefusal::OwnerUnknown {
                    id: id.to_string(),
                    shards: found.missing_shards,
                }
                .into());
            }
            unanswered.extend(found.missing_shards);
        }
    }
    unanswered.sort_unstable();
    unanswered.dedup();
    Ok((held, unanswered))
}

/// Deletes the documents with `ids` from the local shards that hold them;
/// ids found nowhere here are listed, not an error.
pub async fn delete_ids<T: WireElem>(
    exec: &Executor<T>,
    ids: Vec<UserId>,
) -> Result<DeleteResponse> {
    let start = Instant::now();
    let node = &exec.node;
    let max = node.config.writes.max_batch;
    if ids.is_empty() {
        return Err(ServerError::Engine(
            shardann_engine::WriteError::Empty.into(),
        ));
    }
    if ids.len() > max {
        return Err(ServerError::Engine(
            shardann_engine::WriteError::TooMany {
                count: ids.len(),
                max,
            }
            .into(),
        ));
    }
    let mut resp = DeleteResponse::default();
    if node.coordination.enabled() {
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if seen.insert(id.clone()) {
                unique.push(id);
            }
        }
        let (held, unanswered) = holders_anywhere(exec, &unique).await?;
        let mut by_shard: BTreeMap<u32, Vec<UserId>> = BTreeMap::new();
        for id in unique {
            match held.get(&id) {
                Some(&s) => by_shard.entry(s).or_default().push(id),
                None => resp.not_found.push(id),
            }
        }
        for (s, ids) in by_shard {
            let r = crate::primary::write_shard(exec, s, crate::primary::ShardWrite::Delete(ids))
                .await?;
            resp.deleted += r.count;
            resp.not_found.extend(r.not_found);
        }
        resp.unsearched_shards = unanswered;
        let m = &node.metrics;
        m.add(&m.documents_deleted, resp.deleted as u64);
        resp.took_us = start.elapsed().as_micros() as u64;
        return Ok(resp);
    }
    let mut by_shard: BTreeMap<u32, Vec<UserId>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for id in ids {
        if !seen.insert(id.clone()) {
            continue;
        }
        let holder = holder(exec, &id);
        match holder {
            Some(s) => by_shard.entry(s).or_default().push(id),
            None => resp.not_found.push(id),
        }
    }
    resp.unsearched_shards = (0..node.manifest.shards.len() as u32)
        .filter(|&s| node.local_shard(s).is_none())
        .collect();
    for (s, ids) in by_shard {
        let (index, part) = shard_for_write(exec, s, &ids[0])?;
        let (deleted, missing) = delete_durably(index, part, ids).await?;
        resp.deleted += deleted;
        // Deleted by another writer between the lookup and the delete.
        resp.not_found.extend(missing);
        merge_if_due::<T>(node, s);
    }
    let m = &node.metrics;
    m.add(&m.documents_deleted, resp.deleted as u64);
    resp.took_us = start.elapsed().as_micros() as u64;
    Ok(resp)
}

/// Deletes `ids` from one shard, durably, off the executor: how many were
/// deleted, and the ids that named no live document.
async fn delete_durably<T: WireElem>(
    index: Arc<DiskIndex>,
    part: Arc<MutablePart<T>>,
    ids: Vec<UserId>,
) -> Result<(usize, Vec<UserId>)> {
    let out = crate::rt::spawn_blocking(move || -> shardann_engine::Result<_> {
        let n = ids.len();
        let (lsn, missing) = part.delete(&index, ids)?;
        if let Some(lsn) = lsn {
            part.sync(lsn)?;
        }
        Ok((n - missing.len(), missing))
    })
    .await?;
    Ok(out)
}

/// Deletes every document of the local shards that `filter` matches.
pub async fn delete_matching<T: WireElem>(
    exec: &Executor<T>,
    filter: &Value,
) -> Result<DeleteResponse> {
    let start = Instant::now();
    let node = &exec.node;
    let mut resp = DeleteResponse::default();
    if node.coordination.enabled() {
        Filter::parse(filter).map_err(|e| ApiError::Filter(e.to_string()))?;
        for s in 0..node.manifest.shards.len() as u32 {
            let write = crate::primary::ShardWrite::DeleteMatching(filter.clone());
            let r = crate::primary::write_shard(exec, s, write).await?;
            resp.deleted += r.count;
        }
        let m = &node.metrics;
        m.add(&m.documents_deleted, resp.deleted as u64);
        resp.took_us = start.elapsed().as_micros() as u64;
        return Ok(resp);
    }
    let max = node.config.writes.max_batch.max(1);
    for s in node.local_shards() {
        let Some(index) = node.local_shard(s) else {
            continue;
        };
        let ids = matching_ids::<T>(node, s, &index, filter)?;
        if ids.is_empty() {
            continue;
        }
        let (index, part) = shard_for_write(exec, s, &ids[0])?;
        for chunk in ids.chunks(max) {
            let chunk = chunk.to_vec();
            let (index, part) = (Arc::clone(&index), Arc::clone(&part));
            let (n, _) = delete_durably(index, part, chunk).await?;
            resp.deleted += n;
        }
        merge_if_due::<T>(node, s);
    }
    resp.unsearched_shards = (0..node.manifest.shards.len() as u32)
        .filter(|&s| node.local_shard(s).is_none())
        .collect();
    let m = &node.metrics;
    m.add(&m.documents_deleted, resp.deleted as u64);
    resp.took_us = start.elapsed().as_micros() as u64;
    Ok(resp)
}

/// The ids of the live documents of local shard `s` (served as `index`)
/// that `filter` matches, in the segment and in its mutable part.
pub(crate) fn matching_ids<T: Element>(
    node: &Node,
    s: u32,
    index: &DiskIndex,
    filter: &Value,
) -> Result<Vec<UserId>> {
    let filter = Filter::parse(filter).map_err(|e| ApiError::Filter(e.to_string()))?;
    let Some(docs) = index.documents() else {
        return Err(ApiError::NoDocuments(index.dir().display().to_string()).into());
    };
    let matched = index.evaluate(&filter).map_err(|e| match e {
        shardann_engine::Error::Filter(e) => ServerError::from(ApiError::Filter(e.to_string())),
        e => e.into(),
    })?;
    // Segment documents the part deleted or replaced are left out; the
    // part's own matches are added.
    let part = node.mutable_part::<T>(s);
    let deletes = part.as_ref().and_then(|p| p.segment_deletes(index));
    let mut ids: Vec<UserId> = matched
        .docs()
        .iter()
        .filter(|&local| !deletes.as_ref().is_some_and(|d| d.contains(local)))
        .map(|local| docs.keys().key(local))
        .collect();
    if let Some(part) = &part {
        ids.extend(part.matching_ids(index, &filter));
    }
    Ok(ids)
}

/// `POST /v1/shards/{shard}/merge`'s answer.
#[derive(Debug, Serialize)]
pub struct MergeResponse {
    pub shard: u32,
    /// The version served now.
    pub version: u64,
    /// What the merge did; null when the shard had no writes to fold in.
    pub merge: Option<MergeReport>,
    /// Bytes cut from the front of the shard's log once the new version
    /// was served.
    pub log_bytes_cut: u64,
}

/// Merges local shard `s`'s writes into its next version now, on a thread
/// of its own (minutes of CPU at a million points: not an executor's), and
/// answers when the new version is served.
pub async fn merge_now<T: WireElem>(exec: &Executor<T>, s: u32) -> Result<MergeResponse> {
    let node = Arc::clone(&exec.node);
    if node.local_shard(s).is_none() {
        return Err(WriteRefusal::NoLocalShard { shard: s }.into());
    }
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("merge-shard-{s}"))
        .spawn(move || {
            let _ = tx.send(run_merge::<T>(&node, s));
        })
        .map_err(|e| ServerError::InvalidParameter(format!("starting a merge thread: {e}")))?;
    rx.await
        .map_err(|_| ServerError::InvalidParameter(format!("the merge of shard {s} panicked")))?
}

/// Starts a merge of local shard `s` in the background if its writes
/// passed `[writes] merge_fraction` or `merge_points` and none is running.
pub fn merge_if_due<T: WireElem>(node: &Arc<Node>, s: u32) {
    let w = &node.config.writes;
    let (Some(index), Some(part)) = (node.local_shard(s), node.mutable_part::<T>(s)) else {
        return;
    };
    if node.is_merging(s) || matches!(node.write_role(s), crate::node::WriteRole::Replica { .. }) {
        return;
    }
    let st = part.stats();
    // The deletes as of now (the stats' count is as of the last search).
    let deleted = part.segment_deletes(&index).map_or(0, |b| b.len());
    let changes = (st.points + deleted) as f64;
    let by_share = w.merge_fraction > 0.0 && changes >= w.merge_fraction * index.len() as f64;
    let by_points = w.merge_fraction > 0.0 && st.points as usize >= w.merge_points;
    if !(by_share || by_points) || st.merging {
        return;
    }
    let name = node.config.node_id.clone();
    let node = Arc::clone(node);
    let spawned = std::thread::Builder::new()
        .name(format!("merge-shard-{s}"))
        .spawn(move || match run_merge::<T>(&node, s) {
            Ok(r) => {
                if let Some(m) = &r.merge {
                    eprintln!(
                        "node {}: shard {s}: merged {} write record(s) into version {} in {:.1} s \
                         ({} inserted, {} removed, {} points)",
                        node.config.node_id,
                        m.records,
                        m.version,
                        m.seconds,
                        m.inserted,
                        m.removed,
                        m.points_after
                    );
                }
            }
            Err(ServerError::Write(WriteRefusal::MergeRunning { .. })) => {}
            Err(e) => eprintln!("node {}: shard {s}: merge failed: {e}", node.config.node_id),
        });
    if let Err(e) = spawned {
        eprintln!("node {name}: shard {s}: starting a merge thread: {e}");
    }
}

/// How long a merge waits for searches still running on the version it
/// replaced before it drops the writes they see beside it. Searches end
/// long before (their deadline); this bounds a stuck one.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// The merge itself: fold the logged writes into the next version
/// (`engine::merge`), serve it, wait for the searches of the old version
/// to end, then drop the old view of the writes and cut the log.
fn run_merge<T: Element>(node: &Node, s: u32) -> Result<MergeResponse> {
    if let crate::node::WriteRole::Replica { primary } = node.write_role(s) {
        // Replicas take the primary's merged version (pulled, as every
        // version is), so that every replica serves the same bytes.
        return Err(WriteRefusal::NotPrimary {
            shard: s,
            primary: primary.unwrap_or_else(|| "none yet".into()),
        }
        .into());
    }
    let Some(_running) = node.start_merge(s) else {
        return Err(WriteRefusal::MergeRunning { shard: s }.into());
    };
    let index = node
        .local_shard(s)
        .ok_or(WriteRefusal::NoLocalShard { shard: s })?;
    let serving = index.segment().map_or(0, |m| m.version);
    let nothing = MergeResponse {
        shard: s,
        version: serving,
        merge: None,
        log_bytes_cut: 0,
    };
    let (Some(dir), Some(part)) = (node.shard_dir(s), node.mutable_part::<T>(s)) else {
        return Ok(nothing);
    };
    let Some(through) = part.begin_merge()? else {
        return Ok(nothing);
    };
    let report = match shardann_engine::merge::merge::<T>(&dir, &index, through, &NoProgress) {
        Ok(Some(r)) => r,
        Ok(None) => {
            part.finish_merge(through, false)?;
            return Ok(nothing);
        }
        Err(e) => {
            let _ = part.finish_merge(through, false);
            node.metrics.add(&node.metrics.merge_failures, 1);
            return Err(e.into());
        }
    };
    // Published: serve it. Should it not open, the node goes on serving
    // the old version with every write; a restart opens the new one and
    // replays only the writes after it.
    let new = match node.open_current(s) {
        Ok(i) => i,
        Err(e) => {
            node.metrics.add(&node.metrics.merge_failures, 1);
            return Err(e);
        }
    };
    node.swap(s, new);
    node.metrics.add(&node.metrics.version_switches, 1);
    let waited = Instant::now();
    // Ours, and the node's list of retired versions.
    while Arc::strong_count(&index) > 2 && waited.elapsed() < DRAIN_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(index);
    let cut = part.finish_merge(through, true)?;
    node.collect();
    node.metrics.add(&node.metrics.merges, 1);
    Ok(MergeResponse {
        shard: s,
        version: report.version,
        merge: Some(report),
        log_bytes_cut: cut,
    })
}
