//! A shard's writes in a coordinated cluster: ordered by the shard's write
//! primary (elected through etcd, `crate::coord`), applied on every live
//! replica before they are acknowledged, and caught up from the primary's
//! log by a replica that missed some.
//!
//! ```text
//!  any node   POST /v1/documents ─► owner shard per id (crate::writes)
//!               └─► its primary: here (`primary_write`), or
//!                   POST /v1/shards/{s}/write to it (cluster_token)
//!  primary    MutablePart::upsert_record / delete_record ─► Wal::sync
//!               └─► POST /v1/shards/{s}/apply to every replica serving s,
//!                   together; one behind answers its last LSN and gets the
//!                   records it lacks from the primary's log ─► all applied
//!               └─► acknowledged
//!  replica    apply_replicated in LSN order (a gap is never filled out of
//!             order); every tick: GET /v1/shards/{s}/log?after=LAST from
//!             the primary (`catch_up`), so a replica that was down, or
//!             missed a push, converges
//! ```
//!
//! A replica that cannot be reached is not live: the write is acknowledged
//! without it, and it catches up from the primary's log when it is back.
//! One that lacks records a merge cut from the primary's log is
//! recovering, and is not waited for either: it pulls the merged version
//! as every replica does, and goes on from the version's LSN. A replica
//! that answers but does not apply fails the write (503: the primary holds
//! it; a retry is an upsert of the same documents again).
//!
//! A new primary (the old one's lease lapsed) first takes the records the
//! other live replicas hold beyond its own log (every replica's log is a
//! prefix of the old primary's: records are sent in order), and only then
//! orders writes (`catch_up`, `Node::set_primary_ready`).
//!
//! Only the primary merges; its merged version is published through etcd
//! and pulled by the replicas, which switch to it with the writes after
//! its LSN (`switch_version`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shardann_engine::docs::UserId;
use shardann_engine::index::DiskIndex;
use shardann_engine::metric::Element;
use shardann_engine::mutable::{MutablePart, NewDocument, Record};
use shardann_engine::wal::Op;
use shardann_engine::ElemType;

use crate::api::{ApiError, WireElem};
use crate::error::{Result, ServerError};
use crate::http::{self, PeerError};
use crate::node::{Executor, Node, WriteRole};
use crate::writes::WriteRefusal;

/// A call to another node about writes gives up after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Vectors and payloads in one answer to a replica catching up, about, as
/// raw bytes (as JSON, up to ~12 bytes per f32 value: within a node's
/// default 8 MiB body limit).
const LOG_BATCH_BYTES: usize = 512 << 10;
/// The largest body read from a peer's write answer.
const MAX_ANSWER: usize = 256 << 20;

/// One op of a logged record, on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WireOp {
    Upsert {
        id: UserId,
        vector: Vec<f32>,
        payload: Map<String, Value>,
    },
    Delete {
        id: UserId,
    },
}

/// A logged record on the wire: its LSN (the primary's) and its ops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRecord {
    pub lsn: u64,
    pub ops: Vec<WireOp>,
}

fn to_wire<T: Element>(r: &Record<T>) -> WireRecord {
    WireRecord {
        lsn: r.0,
        ops: r
            .1
            .iter()
            .map(|op| match op {
                Op::Upsert {
                    id,
                    vector,
                    payload,
                } => WireOp::Upsert {
                    id: id.clone(),
                    vector: vector.iter().map(|x| x.to_f32()).collect(),
                    payload: payload.clone(),
                },
                Op::Delete { id } => WireOp::Delete { id: id.clone() },
            })
            .collect(),
    }
}

/// A vector from the wire as the index's element type.
fn vector_from_wire<T: WireElem>(v: &[f32]) -> std::result::Result<Vec<T>, &'static str> {
    v.iter().map(|&x| T::from_wire(f64::from(x))).collect()
}

fn from_wire<T: WireElem>(w: WireRecord, dim: usize) -> Result<Record<T>, ApiError> {
    let mut ops = Vec::with_capacity(w.ops.len());
    for op in w.ops {
        ops.push(match op {
            WireOp::Upsert {
                id,
                vector,
                payload,
            } => {
                if vector.len() != dim {
                    return Err(ApiError::Document {
                        pos: ops.len(),
                        why: format!(
                            "record {}: id {id}: {} values, the index has {dim}",
                            w.lsn,
                            vector.len()
                        ),
                    });
                }
                let vector = vector_from_wire::<T>(&vector).map_err(|why| ApiError::Document {
                    pos: ops.len(),
                    why: format!("record {}: id {id}: a value {why}", w.lsn),
                })?;
                Op::Upsert {
                    id,
                    vector,
                    payload,
                }
            }
            WireOp::Delete { id } => Op::Delete { id },
        });
    }
    Ok((w.lsn, ops))
}

/// `POST /v1/shards/{shard}/apply`: records from the shard's primary.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The sender: the replica applies records only from the node it sees
    /// as the shard's primary (a primary whose lease lapsed, and that does
    /// not know yet, is refused by every replica that saw the change).
    pub primary: String,
    pub records: Vec<WireRecord>,
}

/// A replica's answer: the last record it holds now (below the records
/// sent: it lacks some before them, and applied none past the gap).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub last_lsn: u64,
}

/// `GET /v1/shards/{shard}/log?after=LSN`: the records after `LSN`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogResponse {
    /// The last record the node holds.
    pub last_lsn: u64,
    /// The log no longer holds the records right after `after` (a merge
    /// folded them into a version): pull the version.
    pub cut: bool,
    pub records: Vec<WireRecord>,
}

/// A document of a forwarded upsert, its vector as `f32`s (exact for every
/// element type, and printed as short as the value allows).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireDocument {
    pub id: UserId,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

impl WireDocument {
    pub fn of<T: Element>(d: NewDocument<T>) -> Self {
        WireDocument {
            id: d.id,
            vector: d.vector.iter().map(|x| x.to_f32()).collect(),
            payload: d.payload,
        }
    }

    fn into_document<T: WireElem>(self, pos: usize) -> Result<NewDocument<T>, ApiError> {
        let vector = vector_from_wire::<T>(&self.vector).map_err(|why| ApiError::Document {
            pos,
            why: format!("id {}: a value of \"vector\" {why}", self.id),
        })?;
        Ok(NewDocument {
            id: self.id,
            vector,
            payload: self.payload,
        })
    }
}

/// `POST /v1/shards/{shard}/write`: one shard's part of a client's write,
/// sent to the shard's primary by the node the client asked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ShardWrite {
    /// Documents with their vectors (checked at the primary).
    Upsert(Vec<WireDocument>),
    Delete(Vec<UserId>),
    /// Every document of the shard the filter matches.
    DeleteMatching(Value),
}

/// What the primary did with a [`ShardWrite`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardWriteResponse {
    /// Documents upserted or deleted.
    pub count: usize,
    /// The last record logged (none: nothing was).
    pub lsn: Option<u64>,
    /// Ids of a delete that named no document.
    pub not_found: Vec<UserId>,
}

/// Checks a peer's call: with the cluster's token, or, without one, from
/// a loopback address (as writes are: these routes change what is served).
pub fn authorize(
    node: &Node,
    headers: &hyper::HeaderMap,
    client: Option<SocketAddr>,
) -> Result<()> {
    crate::replication::authorize(node, headers)?;
    if node.config.cluster_token.is_none() {
        if let Some(peer) = client.filter(|p| !p.ip().is_loopback()) {
            return Err(WriteRefusal::NotLoopback { peer }.into());
        }
    }
    Ok(())
}

/// One JSON call to the node at `addr` with the cluster's token.
async fn call<R: serde::de::DeserializeOwned>(
    node: &Node,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> std::result::Result<R, PeerError> {
    let exchange = async {
        let mut sender = http::connect(addr, CALL_TIMEOUT).await?;
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| PeerError::Encode(Arc::new(e)))?,
            None => Vec::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = &node.config.cluster_token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| PeerError::Request(Arc::new(e)))?;
        let resp = http::send(&mut sender, req).await?;
        let body = http::read_limited(resp, "write answer", MAX_ANSWER).await?;
        serde_json::from_slice(&body).map_err(|e| PeerError::Decode(Arc::new(e)))
    };
    crate::rt::until(Instant::now() + CALL_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(PeerError::Timeout {
            what: "answer",
            after: CALL_TIMEOUT,
        }))
}

/// The address of node `id`, as the routing knows it.
fn address_of(node: &Node, id: &str) -> Option<SocketAddr> {
    node.routing()
        .peers
        .iter()
        .rev()
        .find(|p| p.id == id)
        .map(|p| p.addr)
}

/// Sends shard `s`'s part of a write to its primary (this node, or the one
/// etcd names), and returns what the primary did.
pub async fn write_shard<T: WireElem>(
    exec: &Executor<T>,
    s: u32,
    write: ShardWrite,
) -> Result<ShardWriteResponse> {
    let node = &exec.node;
    let primary = match node.write_role(s) {
        WriteRole::Alone | WriteRole::Primary { .. } => {
            return primary_write(exec, s, write).await;
        }
        WriteRole::Replica { primary } => primary,
    };
    let Some(primary) = primary else {
        return Err(WriteRefusal::NoPrimary { shard: s }.into());
    };
    let addr = address_of(node, &primary).ok_or(WriteRefusal::NoPrimary { shard: s })?;
    call(
        node,
        addr,
        Method::POST,
        &format!("/v1/shards/{s}/write"),
        Some(&write),
    )
    .await
    .map_err(|e| match e {
        // The primary refused the write itself (a bad document, a filter
        // kind): the client's error, passed on as the primary said it.
        PeerError::Status { status, body } if status.is_client_error() => {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(body);
            WriteRefusal::AtPrimary {
                status: status.as_u16(),
                message,
            }
            .into()
        }
        e => WriteRefusal::Forward {
            shard: s,
            primary,
            why: e.to_string(),
        }
        .into(),
    })
}

/// On the shard's primary: logs the write, makes it durable, applies it on
/// every live replica, and answers.
pub async fn primary_write<T: WireElem>(
    exec: &Executor<T>,
    s: u32,
    write: ShardWrite,
) -> Result<ShardWriteResponse> {
    let node = &exec.node;
    if !node.coordination.available() {
        // Its lease may lapse unseen and another node be elected: a node
        // that cannot reach etcd orders no writes.
        return Err(WriteRefusal::NoCoordination { shard: s }.into());
    }
    match node.write_role(s) {
        WriteRole::Alone | WriteRole::Primary { ready: true } => {}
        WriteRole::Primary { ready: false } => {
            return Err(WriteRefusal::PrimaryCatchingUp { shard: s }.into())
        }
        WriteRole::Replica { primary } => {
            return Err(WriteRefusal::NotPrimary {
                shard: s,
                primary: primary.unwrap_or_else(|| "none yet".into()),
            }
            .into())
        }
    }
    let index = node
        .local_shard(s)
        .ok_or(WriteRefusal::NoLocalShard { shard: s })?;
    let part = node.mutable_part_or_open::<T>(s, &index)?;
    let mut resp = ShardWriteResponse::default();
    let mut records = Vec::new();
    match write {
        ShardWrite::Upsert(docs) => {
            let docs = docs
                .into_iter()
                .enumerate()
                .map(|(pos, d)| d.into_document::<T>(pos))
                .collect::<Result<Vec<_>, _>>()?;
            resp.count = docs.len();
            let part = Arc::clone(&part);
            let record = crate::rt::spawn_blocking(move || {
                let r = part.upsert_record(docs)?;
                part.sync(r.0)?;
                Ok::<_, shardann_engine::Error>(r)
            })
            .await?;
            records.push(record);
        }
        ShardWrite::Delete(ids) => {
            let (n, mut recs, missing) = delete_logged(&index, &part, ids).await?;
            resp.count = n;
            resp.not_found = missing;
            records.append(&mut recs);
        }
        ShardWrite::DeleteMatching(filter) => {
            let ids = crate::writes::matching_ids::<T>(node, s, &index, &filter)?;
            let max = node.config.writes.max_batch.max(1);
            for chunk in ids.chunks(max) {
                let (n, mut recs, _) = delete_logged(&index, &part, chunk.to_vec()).await?;
                resp.count += n;
                records.append(&mut recs);
            }
        }
    }
    resp.lsn = records.last().map(|r| r.0);
    replicate(exec, s, &part, &records).await?;
    crate::writes::merge_if_due::<T>(node, s);
    Ok(resp)
}

/// Deletes `ids` from one shard, durably, off the executor: how many were
/// deleted, the record logged, and the ids that named no live document.
async fn delete_logged<T: WireElem>(
    index: &Arc<DiskIndex>,
    part: &Arc<MutablePart<T>>,
    ids: Vec<UserId>,
) -> Result<(usize, Vec<Record<T>>, Vec<UserId>)> {
    let (index, part) = (Arc::clone(index), Arc::clone(part));
    let out = crate::rt::spawn_blocking(move || -> shardann_engine::Result<_> {
        let n = ids.len();
        let (record, missing) = part.delete_record(&index, ids)?;
        if let Some((lsn, _)) = &record {
            part.sync(*lsn)?;
        }
        Ok((n - missing.len(), record.into_iter().collect(), missing))
    })
    .await?;
    Ok(out)
}

/// Applies `records` (just logged here) on every live replica of shard
/// `s`, together. A replica that cannot be reached is skipped (it catches
/// up when back); one that answers but does not apply fails the write.
async fn replicate<T: WireElem>(
    exec: &Executor<T>,
    s: u32,
    part: &Arc<MutablePart<T>>,
    records: &[Record<T>],
) -> Result<()> {
    let node = &exec.node;
    let Some(last) = records.last().map(|r| r.0) else {
        return Ok(());
    };
    if node.write_role(s) == WriteRole::Alone {
        return Ok(());
    }
    let routing = node.routing();
    let body = ApplyRequest {
        primary: node.config.node_id.clone(),
        records: records.iter().map(to_wire).collect(),
    };
    let pushes = routing.replicas_of(s).iter().map(|&p| {
        let peer = Arc::clone(&routing.peers[p]);
        let body = &body;
        async move {
            let r = push(node, s, peer.addr, part, body, last).await;
            (peer.id.clone(), r)
        }
    });
    let mut failed = Vec::new();
    for (id, r) in futures::future::join_all(pushes).await {
        match r {
            Ok(()) => {}
            // Not reached: not live; it catches up from the log when back.
            Err(Push::Peer(e)) if !e.peer_answered() => {
                node.metrics.add(&node.metrics.replica_push_skipped, 1);
            }
            Err(Push::Peer(e)) => failed.push(format!("{id}: {e}")),
            // Recovering: it pulls the merged version, then the log after it.
            Err(Push::Cut) => node.metrics.add(&node.metrics.replica_push_skipped, 1),
            Err(Push::Behind(why)) => failed.push(format!("{id}: {why}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(WriteRefusal::ReplicaFailed {
            shard: s,
            why: failed.join("; "),
        }
        .into())
    }
}

enum Push {
    Peer(PeerError),
    /// The replica lacks records this node's log no longer holds (a merge
    /// cut them): it is recovering, and takes the merged version first.
    Cut,
    Behind(String),
}

/// Sends records to one replica until it holds `last`: when it answers
/// that it lacks earlier ones, those follow from this node's log.
async fn push<T: WireElem>(
    node: &Node,
    s: u32,
    addr: SocketAddr,
    part: &Arc<MutablePart<T>>,
    first: &ApplyRequest,
    last: u64,
) -> std::result::Result<(), Push> {
    let path = format!("/v1/shards/{s}/apply");
    let mut resp: ApplyResponse = call(node, addr, Method::POST, &path, Some(first))
        .await
        .map_err(Push::Peer)?;
    for _ in 0..64 {
        if resp.last_lsn >= last {
            return Ok(());
        }
        let (p, after) = (Arc::clone(part), resp.last_lsn);
        let missing = crate::rt::spawn_blocking(move || p.records_after(after, LOG_BATCH_BYTES))
            .await
            .map_err(|e| Push::Behind(format!("reading the log after {after}: {e}")))?;
        let Some(missing) = missing.filter(|m| !m.is_empty()) else {
            return Err(Push::Cut);
        };
        let body = ApplyRequest {
            primary: node.config.node_id.clone(),
            records: missing.iter().map(to_wire).collect(),
        };
        resp = call(node, addr, Method::POST, &path, Some(&body))
            .await
            .map_err(Push::Peer)?;
    }
    Err(Push::Behind(format!(
        "still at record {} after 64 rounds",
        resp.last_lsn
    )))
}

/// `POST /v1/shards/{shard}/apply` on a replica.
pub async fn apply<T: WireElem>(
    exec: &Executor<T>,
    s: u32,
    request: ApplyRequest,
) -> Result<ApplyResponse> {
    let node = &exec.node;
    match node.write_role(s) {
        // A primary that lost its lease and does not know yet: its writes
        // must not land here.
        WriteRole::Primary { .. } => return Err(WriteRefusal::IsPrimary { shard: s }.into()),
        WriteRole::Replica { primary } if primary.as_deref() != Some(&request.primary) => {
            return Err(WriteRefusal::NotPrimary {
                shard: s,
                primary: primary.unwrap_or_else(|| "none yet".into()),
            }
            .into())
        }
        _ => {}
    }
    let index = node
        .local_shard(s)
        .ok_or(WriteRefusal::NoLocalShard { shard: s })?;
    let part = node.mutable_part_or_open::<T>(s, &index)?;
    let dim = node.manifest.dim;
    let records = request
        .records
        .into_iter()
        .map(|r| from_wire::<T>(r, dim))
        .collect::<Result<Vec<_>, _>>()?;
    let before = part.last_lsn();
    let last = apply_records(&part, records).await?;
    let m = &node.metrics;
    m.add(&m.records_replicated, last.saturating_sub(before));
    Ok(ApplyResponse { last_lsn: last })
}

/// Applies records in order up to the first gap, durably; returns the
/// last record held.
async fn apply_records<T: WireElem>(
    part: &Arc<MutablePart<T>>,
    records: Vec<Record<T>>,
) -> Result<u64> {
    let part = Arc::clone(part);
    let last = crate::rt::spawn_blocking(move || -> shardann_engine::Result<u64> {
        for (lsn, ops) in records {
            if lsn > part.last_lsn() + 1 {
                break; // a gap: the sender fills it first
            }
            match part.apply_replicated(lsn, ops) {
                Ok(_) => {}
                Err(shardann_engine::Error::Write(e))
                    if matches!(*e, shardann_engine::WriteError::Gap { .. }) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        let last = part.last_lsn();
        part.sync(last)?;
        Ok(last)
    })
    .await?;
    Ok(last)
}

/// `GET /v1/shards/{shard}/log?after=LSN`.
pub async fn log<T: WireElem>(exec: &Executor<T>, s: u32, after: u64) -> Result<LogResponse> {
    let node = &exec.node;
    let index = node
        .local_shard(s)
        .ok_or(WriteRefusal::NoLocalShard { shard: s })?;
    let part = node.mutable_part_or_open::<T>(s, &index)?;
    let p = Arc::clone(&part);
    let records =
        crate::rt::spawn_blocking(move || p.records_after(after, LOG_BATCH_BYTES)).await?;
    Ok(LogResponse {
        last_lsn: part.last_lsn(),
        cut: records.is_none(),
        records: records.unwrap_or_default().iter().map(to_wire).collect(),
    })
}

/// The query string's `after`.
pub fn parse_after(query: Option<&str>) -> Result<u64> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .unwrap_or("0");
    raw.parse()
        .map_err(|_| ServerError::InvalidParameter(format!("after={raw:?} is not an LSN")))
}

/// One tick of a coordinated node's writes for local shard `s`: a replica
/// takes what it lacks from its primary's log; a new primary takes what
/// the other live replicas hold beyond its own log, then orders writes.
pub async fn catch_up(node: &Arc<Node>, s: u32) -> Result<()> {
    let Some(index) = node.local_shard(s) else {
        return Ok(());
    };
    if !node.coordination.enabled() || index.documents().is_none() {
        return Ok(());
    }
    match index.header().elem {
        ElemType::U8 => catch_up_as::<u8>(node, s, &index).await,
        ElemType::I8 => catch_up_as::<i8>(node, s, &index).await,
        ElemType::F32 => catch_up_as::<f32>(node, s, &index).await,
    }
}

async fn catch_up_as<T: WireElem>(node: &Arc<Node>, s: u32, index: &DiskIndex) -> Result<()> {
    match node.write_role(s) {
        WriteRole::Alone | WriteRole::Primary { ready: true } => Ok(()),
        WriteRole::Replica { primary } => {
            node.set_primary_ready(s, false);
            let Some(addr) = primary.and_then(|p| address_of(node, &p)) else {
                return Ok(());
            };
            let part = node.mutable_part_or_open::<T>(s, index)?;
            take_from(node, s, addr, &part).await.map(|_| ())
        }
        WriteRole::Primary { ready: false } => {
            let part = node.mutable_part_or_open::<T>(s, index)?;
            let routing = node.routing();
            for &p in routing.replicas_of(s) {
                let peer = &routing.peers[p];
                match take_from(node, s, peer.addr, &part).await {
                    Ok((n, _)) if n > 0 => eprintln!(
                        "node {}: shard {s}: took {n} record(s) from {} before ordering writes",
                        node.config.node_id, peer.id
                    ),
                    Ok((_, true)) => {
                        // Its log starts past ours: it serves a newer
                        // version than this node. Take that first (the
                        // follower pulls it), then look again.
                        return Ok(());
                    }
                    Ok(_) => {}
                    // Not reached: not live; what it holds beyond this log
                    // was never acknowledged (acknowledged writes are on
                    // every live replica).
                    Err(ServerError::Peer { source, .. }) if !source.peer_answered() => {}
                    // It answered, but not with records (a node still
                    // joining the shard): ordering goes on without it.
                    Err(e) => eprintln!(
                        "node {}: shard {s}: {} did not give its log records: {e}",
                        node.config.node_id, peer.id
                    ),
                }
            }
            node.set_primary_ready(s, true);
            eprintln!(
                "node {}: shard {s}: ordering writes from record {}",
                node.config.node_id,
                part.last_lsn() + 1
            );
            Ok(())
        }
    }
}

/// Applies the records the node at `addr` holds after this part's last
/// one; returns how many were applied, and whether that node's log no
/// longer holds the records right after this part's (it serves a version
/// newer than this node's).
async fn take_from<T: WireElem>(
    node: &Node,
    s: u32,
    addr: SocketAddr,
    part: &Arc<MutablePart<T>>,
) -> Result<(u64, bool)> {
    let mut applied = 0;
    loop {
        let before = part.last_lsn();
        let path = format!("/v1/shards/{s}/log?after={before}");
        let resp: LogResponse = call(node, addr, Method::GET, &path, None::<&()>)
            .await
            .map_err(|source| ServerError::Peer { addr, source })?;
        if resp.cut || resp.records.is_empty() {
            return Ok((applied, resp.cut));
        }
        let dim = node.manifest.dim;
        let records = resp
            .records
            .into_iter()
            .map(|r| from_wire::<T>(r, dim))
            .collect::<Result<Vec<_>, _>>()?;
        let last = apply_records(part, records).await?;
        applied += last.saturating_sub(before);
        let m = &node.metrics;
        m.add(&m.records_replicated, last.saturating_sub(before));
        if last <= before || last >= resp.last_lsn {
            return Ok((applied, false));
        }
    }
}

/// Switches local shard `s` to `new`, a version pulled from a peer: the
/// shard's writes after the version's LSN get a view of their own first
/// (`MutablePart::begin_rebase`), and the older views and the log's
/// records the version holds go once no search holds the old version.
pub async fn switch_version(node: &Arc<Node>, s: u32, new: DiskIndex) {
    let applied = new.segment().and_then(|m| m.applied_lsn).unwrap_or(0);
    let elem = new.header().elem;
    // A replay of the log's tail, and below a cut with an fsync: blocking
    // work, off the executor.
    let n = Arc::clone(node);
    let rebased = crate::rt::spawn_blocking(move || match elem {
        ElemType::U8 => begin::<u8>(&n, s, applied),
        ElemType::I8 => begin::<i8>(&n, s, applied),
        ElemType::F32 => begin::<f32>(&n, s, applied),
    })
    .await;
    let old = node.local_shard(s);
    node.swap(s, new);
    node.metrics.add(&node.metrics.version_switches, 1);
    if !rebased {
        return;
    }
    if let Some(old) = old {
        let waited = Instant::now();
        // Ours, and the node's list of retired versions.
        while Arc::strong_count(&old) > 2 && waited.elapsed() < Duration::from_secs(60) {
            crate::rt::sleep(Duration::from_millis(5)).await;
        }
    }
    let n = Arc::clone(node);
    let done = crate::rt::spawn_blocking(move || match elem {
        ElemType::U8 => finish::<u8>(&n, s, applied),
        ElemType::I8 => finish::<i8>(&n, s, applied),
        ElemType::F32 => finish::<f32>(&n, s, applied),
    })
    .await;
    if let Err(e) = done {
        eprintln!(
            "node {}: shard {s}: cutting the log through {applied}: {e}",
            node.config.node_id
        );
    }
}

fn begin<T: Element>(node: &Node, s: u32, applied: u64) -> bool {
    let Some(part) = node.mutable_part::<T>(s) else {
        return false;
    };
    match part.begin_rebase(applied) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "node {}: shard {s}: the writes after record {applied}: {e}",
                node.config.node_id
            );
            false
        }
    }
}

fn finish<T: Element>(node: &Node, s: u32, applied: u64) -> shardann_engine::Result<u64> {
    match node.mutable_part::<T>(s) {
        Some(part) => part.finish_merge(applied, true),
        None => Ok(0),
    }
}
