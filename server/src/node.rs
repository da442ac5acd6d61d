//! A node: the shards it serves, its peers, and scatter-gather.
//!
//! ```text
//!  query ─► Executor::search
//!             ├─ local shards ──► shard::search_one (O_DIRECT reads) ─┐
//!             └─ other shards ──► one replica each, grouped by peer,   ├─► merge by distance
//!                                 POST /v1/search {"shards": [..]}    ─┘   (top k)
//!                                 failed / timed out ─► next replica
//!                                 no replica left    ─► missing_shards, partial: true
//! ```
//!
//! [`Node`] is what all executors share, read-only: the cluster manifest, the
//! opened local shards (their PQ codes and node caches live once in RAM),
//! the peers and their outstanding-request counters, the metrics.
//! [`Executor`] is one executor's own state: an `O_DIRECT` file handle per
//! local shard (an `IndexFile` belongs to the executor that opened it), reusable search
//! scratch, and pooled HTTP/2 connections to peers.
//!
//! Every executor can search every local shard: connections are spread over
//! executors by the kernel (`SO_REUSEPORT`), and handing a query to the
//! executor that "owns" a shard would add a cross-thread hop per shard per
//! query while saving nothing: the shared state is immutable.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Weak;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::{join, join_all};
use futures::stream::{FuturesUnordered, StreamExt};
use shardann_engine::cluster::ClusterManifest;
use shardann_engine::docs::{Include, UserId};
use shardann_engine::element::ElemType;
use shardann_engine::embed::{Encoder, Workload};
use shardann_engine::filter::RoaringBitmap;
use shardann_engine::fusion::Fusion;
use shardann_engine::index::{DiskIndex, Matches, OpenOptions};
use shardann_engine::mutable::{
    Location, MutableOptions, MutablePart, MutableStats, Replayed, WAL_FILE,
};
use shardann_engine::search::{BeamSearch, Plan, SearchStats};
use shardann_engine::text::{TextIndex, TextStats};
use shardann_engine::Element;

use crate::api::{
    ApiError, DocumentsRequest, DocumentsResponse, Query, SearchRequest, SearchResponse,
    TextStatsRequest, TextStatsResponse, WireDocument, WireElem, WireHit, WireStats,
};
use crate::config::{resolve, NodeConfig};
use crate::error::{Result, ServerError, StartError};
use crate::http::{self, PeerError, Sender};
use crate::metrics::Metrics;
use crate::rt::file::IndexFile;
use crate::rt::until;
use crate::shard::{open_index_file, search_one_filtered};

/// HTTP/2 connections from each executor to each peer. The peer's kernel
/// hands each connection to one of its executors (`SO_REUSEPORT` hashes the
/// addresses), so one connection would put all of this executor's requests
/// on one core of the peer; a few spread them.
const PEER_CONNECTIONS: usize = 4;

/// How long a peer that refused a connection is passed over when another
/// replica can answer.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// The mutable part of shard `s` if its directory holds a log: opened
/// and replayed (at start, or when the shard is placed here again), so
/// that searches see the logged writes before any new one.
fn replay_log(
    config: &NodeConfig,
    shard_dir: &Path,
    s: u32,
    index: &DiskIndex,
) -> Result<Option<Arc<dyn Any + Send + Sync>>> {
    if !shard_dir.join(WAL_FILE).exists() {
        return Ok(None);
    }
    let opts = config.writes.options();
    let t = Instant::now();
    let (part, replayed) = match index.header().elem {
        ElemType::U8 => open_part::<u8>(shard_dir, index, opts)?,
        ElemType::I8 => open_part::<i8>(shard_dir, index, opts)?,
        ElemType::F32 => open_part::<f32>(shard_dir, index, opts)?,
    };
    eprintln!(
        "node {}: shard {s}: replayed {} logged write(s) ({} document op(s)) in {} ms{}",
        config.node_id,
        replayed.records,
        replayed.ops,
        t.elapsed().as_millis(),
        if replayed.dropped_bytes > 0 {
            format!(
                "; dropped a torn tail of {} byte(s) (never acknowledged)",
                replayed.dropped_bytes
            )
        } else {
            String::new()
        }
    );
    Ok(Some(part))
}

/// Opens the mutable part of a shard whose log exists.
fn open_part<T: Element>(
    shard_dir: &Path,
    index: &DiskIndex,
    opts: MutableOptions,
) -> Result<(Arc<dyn Any + Send + Sync>, Replayed)> {
    let (part, replayed) = MutablePart::<T>::open(shard_dir, index, opts)?;
    Ok((Arc::new(part), replayed))
}

/// The model of `model_dir`, if its vectors can be searched in `manifest`'s
/// index: as wide as the index's, and float (the model writes f32).
fn open_encoder(
    dir: &Path,
    manifest: &ClusterManifest,
) -> std::result::Result<Encoder, StartError> {
    let model = |why: String| StartError::Model {
        dir: dir.to_path_buf(),
        why,
    };
    let enc = Encoder::open_for(dir, None, Workload::Queries).map_err(|e| model(e.to_string()))?;
    if enc.info().dim != manifest.dim {
        return Err(model(format!(
            "it writes {}-d vectors; the index holds {}-d vectors",
            enc.info().dim,
            manifest.dim
        )));
    }
    if manifest.elem != ElemType::F32 {
        return Err(model(format!(
            "it writes float32 vectors; the index holds {} vectors",
            manifest.elem
        )));
    }
    Ok(enc)
}

/// Whether shard `s` of `manifest` is on disk under `dir`: a versioned
/// shard (`CURRENT`) or a plain index file.
pub fn on_disk(dir: &Path, manifest: &ClusterManifest, s: u32) -> bool {
    manifest.shards.get(s as usize).is_some_and(|info| {
        let d = dir.join(&info.dir);
        d.join(shardann_engine::layout::CURRENT_FILE).exists()
            || d.join(shardann_engine::layout::INDEX_FILE).exists()
    })
}

/// Another node, as this node sees it.
#[derive(Debug)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
    /// The shards it serves, as last configured or registered.
    shards: Mutex<Vec<u32>>,
    /// Requests in flight to it from this node (all executors).
    outstanding: AtomicUsize,
    /// Until when (ms since the node started) to prefer other replicas.
    down_until_ms: AtomicU64,
    /// Did the last call to it get an answer? Set by every call
    /// ([`Executor::call_json`]): false from a failed call until one gets an
    /// answer again. True before the first call (nothing has failed yet).
    /// What `/healthz`, `/v1/shards` and `shardann_peer_up` report.
    up: AtomicBool,
    /// Still part of the cluster: always in static mode; with etcd, while
    /// its registration (under its lease) exists. A peer that left keeps
    /// its slot (its counters stay readable) but serves no shard.
    present: AtomicBool,
}

impl Peer {
    fn new(id: String, addr: SocketAddr, shards: Vec<u32>) -> Self {
        Peer {
            id,
            addr,
            shards: Mutex::new(shards),
            outstanding: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
            up: AtomicBool::new(true),
            present: AtomicBool::new(true),
        }
    }

    /// Whether its last call got an answer (see `up`) and it is still
    /// part of the cluster.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.is_present()
    }

    /// Whether it is part of the cluster now (see `present`).
    pub fn is_present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }

    /// The shards it serves.
    pub fn shards(&self) -> Vec<u32> {
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Who serves what, as one immutable snapshot: a query takes the snapshot
/// current when it asks and keeps it (a routing change never pulls a
/// peer out from under a request in flight). Peers are only ever
/// appended, so a peer's index means the same peer in every later
/// snapshot (metrics, connection pools and version tables key on it).
#[derive(Debug, Default)]
pub struct Routing {
    pub peers: Vec<Arc<Peer>>,
    /// Indexed by shard id: the peers serving it.
    replicas: Vec<Vec<usize>>,
}

impl Routing {
    /// Indices of the peers serving shard `s`.
    pub fn replicas_of(&self, s: u32) -> &[usize] {
        self.replicas.get(s as usize).map_or(&[], Vec::as_slice)
    }
}

/// A peer as the coordination store registers it (`crate::coord`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEntry {
    pub id: String,
    pub addr: SocketAddr,
    /// Shard ids and the version served (0 for a plain index).
    pub shards: Vec<(u32, u64)>,
}

/// Who orders a shard's writes ([`Node::write_role`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRole {
    /// No coordination: this node applies the writes of its local shards
    /// alone (static peers do not replicate writes).
    Alone,
    /// This node is the shard's write primary; `ready` once it has caught
    /// up with the other replicas' logs.
    Primary { ready: bool },
    /// Another node is (or none is yet: `None`).
    Replica { primary: Option<String> },
}

/// A running merge of one shard ([`Node::start_merge`]).
pub struct MergeGuard<'a>(&'a AtomicBool);

impl Drop for MergeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What every executor of a node shares.
pub struct Node {
    pub config: NodeConfig,
    pub manifest: ClusterManifest,
    /// Indexed by shard id; `Some` for the shards this node serves. The
    /// version being served can be swapped while queries run: each query
    /// clones the `Arc` it started with and finishes on that version.
    /// Shards can be added and dropped while serving when etcd places them
    /// ([`Node::add_local`], [`Node::drop_local`]).
    local: Vec<RwLock<Option<Arc<DiskIndex>>>>,
    /// Versions replaced by a newer one, kept until no query holds them;
    /// then their segment directories are removed (see [`Node::collect`]).
    retired: Mutex<Vec<Arc<DiskIndex>>>,
    /// Per peer and shard: the version that peer last said it serves.
    pub peer_versions: Mutex<BTreeMap<(usize, u32), u64>>,
    /// The peers and which of them serve each shard; replaced whole when
    /// the coordination store reports a change ([`Node::set_peers`]).
    routing: RwLock<Arc<Routing>>,
    pub metrics: Metrics,
    /// The control plane's state: static, or etcd and whether it is
    /// reachable (`/healthz`, `/metrics`).
    pub coordination: crate::coord::Status,
    /// The sentence encoder of `model_dir`: text queries without a vector
    /// are embedded with it (on an executor's blocking thread, see
    /// `serve::embed_queries`). Checked at start against the index: same
    /// width, float vectors.
    pub encoder: Option<Arc<Encoder>>,
    /// Per shard: its mutable part (the writes since its segment), once a
    /// write made one or a log was found at start. Held type-erased
    /// because the node is not generic over the element type; see
    /// [`Node::mutable_part`].
    mutable: Vec<Mutex<Option<Arc<dyn Any + Send + Sync>>>>,
    /// Per shard: a merge of its writes is running (one at a time).
    merging: Vec<AtomicBool>,
    /// Shards whose write primary this node is and has caught up as (its
    /// log holds every record the other live replicas hold): only then
    /// does it order writes (`crate::primary`).
    primary_ready: Mutex<std::collections::BTreeSet<u32>>,
    started: Instant,
}

impl Node {
    /// Reads the manifest, opens the local shards, checks the peers' shard
    /// ids against the manifest.
    pub fn open(config: NodeConfig) -> Result<Self> {
        let start_err = |source: StartError| ServerError::Start {
            node: config.node_id.clone(),
            source,
        };
        let dir: &Path = &config.index_dir;
        let manifest = ClusterManifest::of_dir(dir)?;
        let n = manifest.shards.len();
        let mine: Vec<u32> = config
            .shards
            .clone()
            .unwrap_or_else(|| (0..n as u32).collect());
        let mut local: Vec<RwLock<Option<Arc<DiskIndex>>>> =
            (0..n).map(|_| RwLock::new(None)).collect();
        for &s in &mine {
            let slot = local.get_mut(s as usize).ok_or_else(|| {
                start_err(StartError::NoSuchShard {
                    shard: s,
                    dir: dir.to_path_buf(),
                    shards: n,
                })
            })?;
            if config.etcd.is_some() && !on_disk(dir, &manifest, s) {
                // Coordinated: placed here, and pulled by the follower
                // from a peer that serves it (`replication::follow`).
                continue;
            }
            let opts = OpenOptions {
                cache_nodes: config.cache_nodes,
                nav_points: config.nav_points,
                ..OpenOptions::buffered()
            };
            let mut index = manifest.open_shard(dir, s as usize, opts)?;
            index.cluster_codes(&config.cluster_codes)?;
            *slot = RwLock::new(Some(Arc::new(index)));
        }
        let mut replicas = vec![Vec::new(); n];
        let mut peers = Vec::with_capacity(config.peers.len());
        for (i, p) in config.peers.iter().enumerate() {
            for &s in &p.shards {
                replicas
                    .get_mut(s as usize)
                    .ok_or_else(|| {
                        start_err(StartError::PeerShard {
                            peer: p.id.clone(),
                            shard: s,
                            shards: n,
                        })
                    })?
                    .push(i);
            }
            let addr = resolve(&p.address).map_err(|source| {
                start_err(StartError::PeerAddress {
                    peer: p.id.clone(),
                    address: p.address.clone(),
                    source,
                })
            })?;
            peers.push(Arc::new(Peer::new(p.id.clone(), addr, p.shards.clone())));
        }
        let encoder = match &config.model_dir {
            None => None,
            Some(model) => Some(Arc::new(open_encoder(model, &manifest).map_err(start_err)?)),
        };
        // The writes logged before a restart: replayed now, so that the
        // node serves them from its first query.
        let mutable: Vec<Mutex<Option<Arc<dyn Any + Send + Sync>>>> =
            (0..n).map(|_| Mutex::new(None)).collect();
        for (s, slot) in local.iter().enumerate() {
            let index = slot.read().unwrap_or_else(|p| p.into_inner()).clone();
            let (Some(index), Some(info)) = (index, manifest.shards.get(s)) else {
                continue;
            };
            let part = replay_log(&config, &dir.join(&info.dir), s as u32, &index)?;
            let Some(part) = part else { continue };
            if let Some(m) = mutable.get(s) {
                *m.lock().unwrap_or_else(|p| p.into_inner()) = Some(part);
            }
        }
        Ok(Node {
            merging: (0..n).map(|_| AtomicBool::new(false)).collect(),
            primary_ready: Mutex::new(std::collections::BTreeSet::new()),
            mutable,
            encoder,
            metrics: Metrics::new(peers.len()),
            coordination: crate::coord::Status::new(config.etcd.is_some()),
            config,
            manifest,
            local,
            retired: Mutex::new(Vec::new()),
            peer_versions: Mutex::new(BTreeMap::new()),
            routing: RwLock::new(Arc::new(Routing { peers, replicas })),
            started: Instant::now(),
        })
    }

    /// Shards no node of the configuration serves: every query will be
    /// partial. Reported at startup.
    pub fn unserved_shards(&self) -> Vec<u32> {
        (0..self.manifest.shards.len())
            .filter(|&s| {
                self.local_shard(s as u32).is_none() && self.replica_indices(s as u32).is_empty()
            })
            .map(|s| s as u32)
            .collect()
    }

    /// Shards that no live node serves: not local, and every peer serving
    /// it failed its last call. Queries for them come back partial until a
    /// peer answers again (a query still tries it).
    pub fn unavailable_shards(&self) -> Vec<u32> {
        (0..self.manifest.shards.len() as u32)
            .filter(|&s| self.live_nodes_of(s).is_empty())
            .collect()
    }

    /// The nodes serving shard `s` that are live as far as this node knows:
    /// itself when local, then the peers serving it that are up.
    pub fn live_nodes_of(&self, s: u32) -> Vec<String> {
        let mut live = Vec::new();
        if self.local_shard(s).is_some() {
            live.push(self.config.node_id.clone());
        }
        let routing = self.routing();
        live.extend(
            routing
                .replicas_of(s)
                .iter()
                .map(|&p| &routing.peers[p])
                .filter(|p| p.is_up())
                .map(|p| p.id.clone()),
        );
        live
    }

    /// The shards this node serves.
    pub fn local_shards(&self) -> Vec<u32> {
        (0..self.local.len() as u32)
            .filter(|&s| self.local_shard(s).is_some())
            .collect()
    }

    /// The directory of shard `s` (its versions and `CURRENT`).
    pub fn shard_dir(&self, s: u32) -> Option<std::path::PathBuf> {
        self.manifest
            .shards
            .get(s as usize)
            .map(|info| self.config.index_dir.join(&info.dir))
    }

    /// The version of local shard `s` being served now.
    pub fn local_shard(&self, s: u32) -> Option<Arc<DiskIndex>> {
        let slot = self.local.get(s as usize)?;
        // A poisoned lock only means a swap panicked; the Arc inside is whole.
        let current = slot.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(Arc::clone)
    }

    /// Serves `index` for local shard `s` from now on; the previous version
    /// is retired (queries running on it finish on it). False when `s` is
    /// not local.
    pub fn swap(&self, s: u32, index: DiskIndex) -> bool {
        let Some(slot) = self.local.get(s as usize) else {
            return false;
        };
        let old = {
            let mut current = slot.write().unwrap_or_else(|p| p.into_inner());
            if current.is_none() {
                return false;
            }
            current.replace(Arc::new(index))
        };
        if let Some(old) = old {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(old);
        }
        true
    }

    /// Starts serving shard `s` (placed here while serving, and pulled).
    /// False when it is served already or not a shard of the manifest.
    ///
    /// A log left in its directory (it served the shard before) is
    /// replayed first, so its writes are searchable from the start.
    pub fn add_local(&self, s: u32, index: DiskIndex) -> bool {
        let Some(slot) = self.local.get(s as usize) else {
            return false;
        };
        if let (Some(dir), Some(m)) = (self.shard_dir(s), self.mutable.get(s as usize)) {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            if m.is_none() {
                match replay_log(&self.config, &dir, s, &index) {
                    Ok(part) => *m = part,
                    Err(e) => {
                        // Serving without the logged writes would answer
                        // without them: refuse the shard instead.
                        eprintln!("node {}: shard {s}: {e}", self.config.node_id);
                        return false;
                    }
                }
            }
        }
        let mut current = slot.write().unwrap_or_else(|p| p.into_inner());
        if current.is_some() {
            return false;
        }
        *current = Some(Arc::new(index));
        true
    }

    /// Stops serving shard `s` (its placement here was removed). Queries
    /// running on it finish on it; its files stay on disk.
    pub fn drop_local(&self, s: u32) -> bool {
        self.local
            .get(s as usize)
            .and_then(|slot| slot.write().unwrap_or_else(|p| p.into_inner()).take())
            .is_some()
    }

    /// Removes the segment directories of retired versions no query holds
    /// any more (never the current one). Returns the directories removed.
    pub fn collect(&self) -> Vec<std::path::PathBuf> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = Vec::new();
        retired.retain(|old| {
            if Arc::strong_count(old) > 1 {
                return true;
            }
            let dir = old.dir().to_path_buf();
            let is_current = old
                .segment()
                .and_then(|m| self.local_shard(m.shard_id))
                .is_some_and(|cur| cur.dir() == dir);
            if old.segment().is_some() && !is_current && std::fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
            false
        });
        removed
    }

    /// Opens local shard `s`'s current version as the node serves it (node
    /// cache, navigation graph, clustered codes).
    pub fn open_current(&self, s: u32) -> Result<DiskIndex> {
        let opts = OpenOptions {
            cache_nodes: self.config.cache_nodes,
            nav_points: self.config.nav_points,
            ..OpenOptions::buffered()
        };
        let mut index = self
            .manifest
            .open_shard(&self.config.index_dir, s as usize, opts)?;
        index.cluster_codes(&self.config.cluster_codes)?;
        Ok(index)
    }

    /// Whether local shard `s` can take writes (it has documents).
    pub fn takes_writes(&self, s: u32) -> bool {
        self.local_shard(s).is_some_and(|i| i.documents().is_some())
    }

    /// Who orders the writes of shard `s`, as this node sees it.
    pub fn write_role(&self, s: u32) -> WriteRole {
        if !self.coordination.enabled() {
            return WriteRole::Alone;
        }
        match self.coordination.primary(s) {
            Some(p) if p == self.config.node_id => WriteRole::Primary {
                ready: self
                    .primary_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&s),
            },
            other => WriteRole::Replica { primary: other },
        }
    }

    /// Marks this node caught up as the write primary of `s` (or not).
    pub fn set_primary_ready(&self, s: u32, ready: bool) {
        let mut set = self.primary_ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready {
            set.insert(s);
        } else {
            set.remove(&s);
        }
    }

    /// Marks a merge of shard `s` as running; false if one is already.
    /// Cleared by dropping the guard.
    pub fn start_merge(&self, s: u32) -> Option<MergeGuard<'_>> {
        let flag = self.merging.get(s as usize)?;
        if flag.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(MergeGuard(flag))
    }

    /// Whether a merge of shard `s` is running.
    pub fn is_merging(&self, s: u32) -> bool {
        self.merging
            .get(s as usize)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    /// Where the live document `id` of local shard `s` is, as searches of
    /// `index` (the shard's segment) see it: the writes since the segment
    /// decide first (a deleted id is nowhere, a replaced one is in the
    /// mutable part).
    pub fn locate<T: Element>(&self, s: u32, index: &DiskIndex, id: &UserId) -> Option<Location> {
        match self.mutable_part::<T>(s) {
            Some(part) => part.locate(index, id),
            None => index.documents()?.keys().lookup(id).map(Location::Segment),
        }
    }

    /// The fields `include` asks for of a document [`Node::locate`] found
    /// in shard `s`'s mutable part (`None`: deleted since).
    pub fn written_payload<T: Element>(
        &self,
        s: u32,
        index: &DiskIndex,
        id: &UserId,
        include: &Include,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.mutable_part::<T>(s)?.payload(index, id, include)
    }

    /// The mutable part of local shard `s`, if it has one.
    pub fn mutable_part<T: Element>(&self, s: u32) -> Option<Arc<MutablePart<T>>> {
        let slot = self.mutable.get(s as usize)?;
        let part = slot.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        part.downcast::<MutablePart<T>>().ok()
    }

    /// The mutable part of local shard `s`, opened (its log created) if it
    /// has none yet. `index` is the shard's segment being served.
    pub fn mutable_part_or_open<T: Element>(
        &self,
        s: u32,
        index: &DiskIndex,
    ) -> Result<Arc<MutablePart<T>>> {
        let slot = self
            .mutable
            .get(s as usize)
            .ok_or(ServerError::NotLocal { shard: s })?;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(part) = slot.clone() {
            return part.downcast::<MutablePart<T>>().map_err(|_| {
                ServerError::InvalidParameter("element type of the mutable part".into())
            });
        }
        let dir = self
            .shard_dir(s)
            .ok_or(ServerError::NotLocal { shard: s })?;
        let (part, _) = MutablePart::<T>::open(&dir, index, self.config.writes.options())?;
        let part = Arc::new(part);
        *slot = Some(Arc::clone(&part) as Arc<dyn Any + Send + Sync>);
        Ok(part)
    }

    /// What each local shard's mutable part holds (`/healthz`).
    pub fn mutable_stats(&self) -> BTreeMap<u32, MutableStats> {
        let mut out = BTreeMap::new();
        for s in self.local_shards() {
            let Some(index) = self.local_shard(s) else {
                continue;
            };
            let stats = match index.header().elem {
                ElemType::U8 => self.mutable_part::<u8>(s).map(|p| p.stats()),
                ElemType::I8 => self.mutable_part::<i8>(s).map(|p| p.stats()),
                ElemType::F32 => self.mutable_part::<f32>(s).map(|p| p.stats()),
            };
            if let Some(st) = stats {
                out.insert(s, st);
            }
        }
        out
    }

    /// The routing snapshot in force now.
    pub fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Peer `p` (an index from a routing snapshot: valid in every later one).
    pub fn peer(&self, p: usize) -> Arc<Peer> {
        Arc::clone(&self.routing().peers[p])
    }

    /// Indices (into the routing's peers) of the peers serving shard `s`.
    pub fn replica_indices(&self, s: u32) -> Vec<usize> {
        self.routing().replicas_of(s).to_vec()
    }

    /// Peer ids serving shard `s`.
    pub fn replicas_of(&self, s: u32) -> Vec<String> {
        let routing = self.routing();
        routing
            .replicas_of(s)
            .iter()
            .map(|&p| routing.peers[p].id.clone())
            .collect()
    }

    /// Each peer's id and whether it is up, in the order peers were first
    /// seen (a peer that left is listed as down).
    pub fn peer_states(&self) -> Vec<(String, bool)> {
        self.routing()
            .peers
            .iter()
            .map(|p| (p.id.clone(), p.is_up()))
            .collect()
    }

    /// Replaces the peers with `entries` (the coordination store's
    /// registrations, this node's own left out): a peer seen before keeps
    /// its index, and its state unless its address changed; a new one is
    /// appended, one no longer listed stays as an absent slot that serves
    /// nothing. Shards beyond the manifest's count are ignored. Queries
    /// already asking peers finish on the snapshot they took.
    pub fn set_peers(&self, entries: &[PeerEntry]) {
        let mut slot = self.routing.write().unwrap_or_else(|e| e.into_inner());
        let mut peers = slot.peers.clone();
        let mut replicas = vec![Vec::new(); self.manifest.shards.len()];
        let mut present = vec![false; peers.len()];
        let mut versions = Vec::new();
        for e in entries.iter().filter(|e| e.id != self.config.node_id) {
            let p = match peers.iter().position(|p| p.id == e.id) {
                Some(p) if peers[p].addr == e.addr => p,
                Some(p) => {
                    // The same node at a new address (restarted elsewhere):
                    // the slot (and its counters) stays, the state starts
                    // fresh, and executors reconnect (their pooled
                    // connections remember the address they reached).
                    peers[p] = Arc::new(Peer::new(e.id.clone(), e.addr, Vec::new()));
                    p
                }
                None => {
                    peers.push(Arc::new(Peer::new(e.id.clone(), e.addr, Vec::new())));
                    present.push(false);
                    peers.len() - 1
                }
            };
            present[p] = true;
            let shards: Vec<u32> = e
                .shards
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| (s as usize) < replicas.len())
                .collect();
            for &s in &shards {
                replicas[s as usize].push(p);
            }
            for &(s, v) in &e.shards {
                versions.push(((p, s), v));
            }
            *peers[p].shards.lock().unwrap_or_else(|e| e.into_inner()) = shards;
        }
        for (p, peer) in peers.iter().enumerate() {
            let was = peer.present.swap(present[p], Ordering::Relaxed);
            if present[p] && !was {
                // Back (a restart): nothing is known against it.
                peer.up.store(true, Ordering::Relaxed);
                peer.down_until_ms.store(0, Ordering::Relaxed);
            }
            if !present[p] {
                peer.shards
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
        }
        *slot = Arc::new(Routing { peers, replicas });
        // The routing lock is released before the versions' lock is taken:
        // readers hold `peer_versions` while they look at the routing, and
        // holding both here, in the other order, would deadlock with them.
        drop(slot);
        let mut known = self.peer_versions.lock().unwrap_or_else(|e| e.into_inner());
        known.clear();
        known.extend(versions.into_iter().filter(|&(_, v)| v > 0));
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_down(&self, peer: &Peer) -> bool {
        peer.down_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Peer `p` failed a call: down until a call gets an answer, and
    /// passed over for `DOWN_FOR` when another replica can answer.
    fn mark_down(&self, peer: &Peer) {
        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
        peer.down_until_ms.store(until, Ordering::Relaxed);
        peer.up.store(false, Ordering::Relaxed);
    }

    /// Peer `p` answered a call.
    fn mark_up(&self, peer: &Peer) {
        peer.down_until_ms.store(0, Ordering::Relaxed);
        peer.up.store(true, Ordering::Relaxed);
    }
}

/// Decrements a peer's outstanding count when the request ends, however it
/// ends (answered, failed, or dropped at the deadline).
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Outstanding(c)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An executor's handle on one version of a shard's node file.
type OpenFile = (Weak<DiskIndex>, Rc<IndexFile>);

/// A pooled connection to a peer, and the address it reached.
type Pooled = (SocketAddr, Sender);

/// One executor's view of the node.
pub struct Executor<T: WireElem> {
    pub node: Arc<Node>,
    /// Indexed by shard id, like `Node::local`: the `O_DIRECT` handle of the
    /// version last searched here, and which version that was (a `Weak`, so
    /// this cache does not keep a retired version alive).
    files: RefCell<Vec<Option<OpenFile>>>,
    scratch: RefCell<Vec<BeamSearch<T>>>,
    /// `PEER_CONNECTIONS` HTTP/2 connections per peer, used in turn, each
    /// multiplexing many requests.
    /// Each remembers the address it reached: a peer registered again at
    /// another address is reached there.
    pool: RefCell<Vec<[Option<Pooled>; PEER_CONNECTIONS]>>,
    /// Breaks ties between equally loaded replicas.
    turn: Cell<usize>,
    /// One forward pass of the model at a time per executor, as on glommio
    /// (one blocking thread each) so on epoll (a shared thread pool), where
    /// concurrent passes would fight the searches for the cores.
    pub embedding: futures::lock::Mutex<()>,
}

impl<T: WireElem> Executor<T> {
    /// Opens this executor's `O_DIRECT` handles on the local shards. Must run
    /// inside an executor ([`crate::rt`]).
    pub async fn open(node: Arc<Node>) -> Result<Self> {
        let mut files = Vec::with_capacity(node.local.len());
        for s in 0..node.local.len() as u32 {
            files.push(match node.local_shard(s) {
                Some(index) => Some((
                    Arc::downgrade(&index),
                    Rc::new(open_index_file(&index).await?),
                )),
                None => None,
            });
        }
        let peers = node.routing().peers.len();
        Ok(Executor {
            node,
            files: RefCell::new(files),
            scratch: RefCell::new(Vec::new()),
            pool: RefCell::new(vec![Default::default(); peers]),
            turn: Cell::new(0),
            embedding: futures::lock::Mutex::new(()),
        })
    }

    /// Answers one query. `only`: a peer's request for exactly these local
    /// shards (no fan-out); `None`: a client's request, answered for the
    /// whole index (or the `probe_shards` nearest shards).
    ///
    /// A filter or include that the local shards cannot answer (no
    /// documents, an unindexed field) is an error (a 400), not a partial
    /// answer.
    pub async fn search(&self, q: &Query<T>, only: Option<&[u32]>) -> Result<SearchResponse> {
        let start = Instant::now();
        let timeout = q.timeout_ms.unwrap_or(self.node.config.deadline_ms);
        let deadline = start + Duration::from_millis(timeout.max(1));
        let n = self.node.manifest.shards.len();
        let targets: Vec<u32> = match (only, &q.vector) {
            (Some(shards), _) => {
                let mut s = shards.to_vec();
                s.sort_unstable();
                s.dedup();
                s
            }
            (None, Some(vector)) => self
                .node
                .manifest
                .route(vector, q.probe_shards.unwrap_or(n))
                .into_iter()
                .map(|s| s as u32)
                .collect(),
            (None, None) => (0..n as u32).collect(),
        };
        let (local, remote): (Vec<u32>, Vec<u32>) = targets
            .iter()
            .partition(|&&s| self.node.local_shard(s).is_some());

        let mut missing = Vec::new();
        let mut remote = if only.is_some() {
            // A peer asked for shards this node does not serve: say so, do
            // not forward (the asking node picks another replica).
            missing.extend(remote);
            Vec::new()
        } else {
            remote
        };
        let mut stats = WireStats::default();
        // A hybrid query's payload fields are read after fusion, for the k
        // hits it returns, not by each shard for its 2 × candidates (a
        // peer is asked for none, `search_remote`): with include "*" on
        // manpages-dev that was 14-16 ms a query against 5-8 ms without.
        let defer_fields =
            only.is_none() && q.vector.is_some() && q.text.is_some() && !q.include.is_empty();
        // A text query's BM25 statistics, summed over every shard searched
        // (a peer is given them), so that scores compare across shards.
        // Only a query that needs them is copied to carry them: a vector
        // query goes through untouched.
        let with_stats;
        let q = match &q.text {
            // One shard in all: its own statistics are the global ones.
            Some(text) if text.stats.is_none() && !(remote.is_empty() && local.len() == 1) => {
                let t = Instant::now();
                let (global, unanswered) = self
                    .text_stats(&text.text, &local, &remote, deadline)
                    .await?;
                // A shard whose statistics are unknown cannot be scored
                // comparably: it is missing from this answer.
                remote.retain(|s| !unanswered.contains(s));
                missing.extend(unanswered);
                stats.text_stats_us = t.elapsed().as_micros() as u64;
                let mut copy = q.clone();
                if let Some(t) = copy.text.as_mut() {
                    t.stats = Some(global);
                }
                with_stats = copy;
                &with_stats
            }
            _ => q,
        };
        let mut prepared = Vec::with_capacity(local.len());
        for &s in &local {
            let Some(index) = self.node.local_shard(s) else {
                missing.push(s);
                continue;
            };
            // Writes since the segment: its deleted or replaced documents
            // are left out at every stage, the new ones searched beside it.
            let part = self
                .node
                .mutable_part::<T>(s)
                .filter(|p| !p.is_empty(&index));
            let deletes = part.as_ref().and_then(|p| {
                Some(match q.filter {
                    Some(_) => Deleted::Ids(p.segment_deletes(&index)?),
                    None => Deleted::Live(p.segment_live(&index)?),
                })
            });
            let matches = prepare_filter(&index, q, deletes)?;
            prepared.push((s, index, matches, part));
        }
        let local_part = join_all(prepared.into_iter().map(
            |(s, index, matches, part)| async move {
                (
                    s,
                    until(
                        deadline,
                        self.search_local(s, index, matches, part, q, !defer_fields),
                    )
                    .await,
                )
            },
        ));
        let (local_done, remote_done) =
            join(local_part, self.search_remote(remote, q, deadline)).await;

        let mut hits: Vec<WireHit> = Vec::with_capacity(q.params.k * (targets.len() + 1));
        let mut text_hits: Vec<WireHit> = Vec::new();
        let mut plans = BTreeMap::new();
        let mut timed_out = Vec::new();
        for (s, done) in local_done {
            match done {
                Some(Ok(found)) => {
                    if let Some(st) = &found.search {
                        stats.add_search(st);
                    } else {
                        stats.shards_searched += 1;
                    }
                    stats.dense_us += found.dense_us;
                    stats.text_us += found.text_us;
                    hits.extend(found.hits);
                    text_hits.extend(found.text_hits);
                    if q.filter.is_some() && q.vector.is_some() {
                        plans.insert(
                            s.to_string(),
                            serde_json::to_value(found.plan).unwrap_or_default(),
                        );
                    }
                }
                Some(Err(e)) => {
                    if let ServerError::Api(_) = e {
                        // The request's fault (text on a shard without a
                        // text index): a 400, not a missing shard.
                        return Err(e);
                    }
                    self.node.metrics.add(&self.node.metrics.shard_failures, 1);
                    eprintln!("node {}: shard {s}: {e}", self.node.config.node_id);
                    missing.push(s);
                }
                None => {
                    // Missed the deadline here: said apart from a peer
                    // that did not answer (`timed_out_shards`).
                    let m = &self.node.metrics;
                    m.add(&m.shard_failures, 1);
                    m.add(&m.shard_timeouts, 1);
                    stats.shards_timed_out += 1;
                    timed_out.push(s);
                    missing.push(s);
                }
            }
        }
        let remote = remote_done;
        hits.extend(remote.hits);
        text_hits.extend(remote.text_hits);
        missing.extend(remote.missing);
        stats.add(&remote.stats);
        plans.extend(remote.plans);
        missing.sort_unstable();
        // Each list merged globally by its own score, as one index would
        // rank it. No dedup: a user id lives in one shard.
        sort_by_distance(&mut hits);
        sort_by_score(&mut text_hits);
        let mut hits = match (&q.vector, &q.text) {
            (Some(_), Some(text)) if only.is_none() => {
                hits.truncate(text.candidates);
                text_hits.truncate(text.candidates);
                let fused = fuse(&text.fusion, hits, std::mem::take(&mut text_hits));
                fused.into_iter().take(q.params.k).collect()
            }
            (Some(_), Some(text)) => {
                // A peer's part of a hybrid query: both lists, unfused.
                hits.truncate(text.candidates);
                text_hits.truncate(text.candidates);
                hits
            }
            (None, Some(_)) => {
                text_hits.truncate(q.params.k);
                std::mem::take(&mut text_hits)
            }
            _ => {
                hits.truncate(q.params.k);
                hits
            }
        };
        if defer_fields {
            self.fill_fields(&mut hits, &q.include, &mut missing)
                .await?;
            missing.sort_unstable();
            missing.dedup();
        }
        Ok(SearchResponse {
            hits,
            text_hits,
            partial: !missing.is_empty(),
            missing_shards: missing,
            timed_out_shards: timed_out,
            took_us: start.elapsed().as_micros() as u64,
            stats,
            plans,
        })
    }

    /// The BM25 statistics of `text` summed over the `local` shards and
    /// the `remote` ones (one replica each, asked with
    /// `POST /v1/text/stats`), and the remote shards nobody answered for.
    async fn text_stats(
        &self,
        text: &str,
        local: &[u32],
        remote: &[u32],
        deadline: Instant,
    ) -> Result<(TextStats, Vec<u32>)> {
        let mut global = self.local_text_stats(text, local)?;
        let mut unanswered = Vec::new();
        if remote.is_empty() {
            return Ok((global, unanswered));
        }
        // Rounds, as the search itself does: a shard whose replica failed
        // (or did not have it) is asked of another, until none is left or
        // the deadline passes.
        let mut tried: Vec<(u32, usize)> = Vec::new();
        let mut pending = remote.to_vec();
        while !pending.is_empty() && Instant::now() < deadline {
            let groups = self.group_by_replica(&mut pending, &mut tried, &mut unanswered);
            let calls = groups.into_iter().map(|(p, shards)| async move {
                let body = TextStatsRequest {
                    text: text.to_string(),
                    shards: shards.clone(),
                };
                let out: std::result::Result<TextStatsResponse, PeerError> =
                    self.call_json(p, "/v1/text/stats", &body, deadline).await;
                (p, shards, out)
            });
            for (p, shards, out) in join_all(calls).await {
                self.node.metrics.peer_call(p, out.is_err());
                match out {
                    Ok(resp) => {
                        global.add(&resp.stats);
                        pending.extend(resp.missing_shards.iter().filter(|s| shards.contains(s)));
                    }
                    Err(PeerError::Status { status, body }) if status == 400 => {
                        // The peer's shards cannot answer text (no text
                        // index): the request's fault, as it would be here.
                        let msg = serde_json::from_str::<crate::api::ErrorBody>(&body)
                            .map(|b| b.error)
                            .unwrap_or(body);
                        return Err(ApiError::NoText(msg).into());
                    }
                    Err(_) => pending.extend(shards),
                }
            }
        }
        unanswered.append(&mut pending);
        Ok((global, unanswered))
    }

    /// The BM25 statistics of `text` summed over local `shards`: what
    /// `POST /v1/text/stats` answers.
    pub fn local_text_stats(&self, text: &str, shards: &[u32]) -> Result<TextStats> {
        let mut global = TextStats::default();
        for &s in shards {
            let Some(index) = self.node.local_shard(s) else {
                continue;
            };
            let t = text_index(&index)?;
            global
                .add(&t.stats(&t.analyze(text)).map_err(|e| {
                    ServerError::from(shardann_engine::Error::text(index.dir(), e))
                })?);
        }
        Ok(global)
    }

    /// Searches one local shard with a pooled scratch (`matches`: the
    /// segment-local ids the filter admits): the vector list and the text
    /// list the query asks for. Hits carry user ids (and the fields asked
    /// for) when the shard has documents, global ids otherwise.
    async fn search_local(
        &self,
        s: u32,
        // Held for the whole search: a swap to a newer version meanwhile
        // does not pull this version from under the query.
        index: Arc<DiskIndex>,
        matches: Option<Matches>,
        part: Option<Arc<MutablePart<T>>>,
        q: &Query<T>,
        fetch_fields: bool,
    ) -> Result<LocalFound> {
        let mut found = LocalFound::default();
        let include = if fetch_fields {
            Include::from_names(&q.include)
        } else {
            Include::Nothing
        };
        if let Some(vector) = &q.vector {
            let mut params = q.params;
            if let Some(text) = &q.text {
                params.k = text.candidates;
                params.list = params.list.max(text.candidates);
            }
            let t = Instant::now();
            let file = self.file_for(s, &index).await?;
            let mut scratch = self.scratch.borrow_mut().pop().unwrap_or_default();
            let out = search_one_filtered(
                &index,
                &file,
                &mut scratch,
                vector,
                params,
                matches.as_ref(),
            )
            .await;
            self.scratch.borrow_mut().push(scratch);
            let (mut hits, st, plan) = out?;
            found.dense_us = t.elapsed().as_micros() as u64;
            let m = &self.node.metrics;
            m.add(&m.shard_searches, 1);
            m.add(&m.sectors_read, u64::from(st.ios));
            m.add(&m.cache_hits, u64::from(st.cache_hits));
            found.search = Some(st);
            found.plan = Some(plan);
            found.hits = match index.documents() {
                None => {
                    index.map_to_global(&mut hits);
                    hits.iter()
                        .map(|h| WireHit {
                            id: UserId::Int(u64::from(h.id)),
                            distance: Some(h.distance),
                            score: None,
                            text_score: None,
                            shard: s,
                            fields: None,
                        })
                        .collect()
                }
                Some(docs) => {
                    let locals: Vec<u32> = hits.iter().map(|h| h.id).collect();
                    let fields = docs.fetch(&locals, &include)?;
                    hits.iter()
                        .zip(fields)
                        .map(|(h, f)| WireHit {
                            id: docs.keys().key(h.id),
                            distance: Some(h.distance),
                            score: None,
                            text_score: None,
                            shard: s,
                            fields: (include != Include::Nothing).then_some(f),
                        })
                        .collect()
                }
            };
            if let Some(part) = &part {
                // The mutable part's nearest, exact distances like the
                // segment's: one list by distance.
                let filter = q.filter.as_ref().map(|(f, _)| f.as_ref());
                let extra = part.search(&index, vector, params.k, params.list, filter, &include);
                found.hits.extend(extra.into_iter().map(|h| WireHit {
                    id: h.id,
                    distance: Some(h.distance),
                    score: None,
                    text_score: None,
                    shard: s,
                    fields: (include != Include::Nothing).then_some(h.fields),
                }));
                sort_by_distance(&mut found.hits);
                found.hits.truncate(params.k);
            }
        }
        if let Some(text) = &q.text {
            let t = Instant::now();
            let index_text = text_index(&index)?;
            let Some(docs) = index.documents() else {
                return Err(ApiError::NoText(index.dir().display().to_string()).into());
            };
            let want = if q.vector.is_some() {
                text.candidates
            } else {
                q.params.k
            };
            let terms = index_text.analyze(&text.text);
            let found_text = index_text
                .search(
                    &terms,
                    text.stats.as_ref(),
                    want,
                    matches.map(|m| m.docs().clone()),
                )
                .map_err(|e| ServerError::from(shardann_engine::Error::text(index.dir(), e)))?;
            let locals: Vec<u32> = found_text.iter().map(|h| h.0).collect();
            let fields = docs.fetch(&locals, &include)?;
            found.text_hits = found_text
                .iter()
                .zip(fields)
                .map(|(&(local, score), f)| WireHit {
                    id: docs.keys().key(local),
                    distance: None,
                    score: Some(score),
                    text_score: None,
                    shard: s,
                    fields: (include != Include::Nothing).then_some(f),
                })
                .collect();
            found.text_us = t.elapsed().as_micros() as u64;
            let m = &self.node.metrics;
            m.add(&m.text_searches, 1);
        }
        Ok(found)
    }

    /// Reads the payload fields `names` of `hits` (a hybrid query's final
    /// hits): local shards' from their document stores, one read per shard,
    /// others' with `/v1/documents/get` at a replica. A shard whose fields
    /// could not be had is added to `missing` (the answer is partial).
    async fn fill_fields(
        &self,
        hits: &mut [WireHit],
        names: &[String],
        missing: &mut Vec<u32>,
    ) -> Result<()> {
        let include = Include::from_names(names);
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, h) in hits.iter().enumerate() {
            by_shard.entry(h.shard).or_default().push(i);
        }
        let mut remote: Vec<UserId> = Vec::new();
        for (shard, at) in by_shard {
            let index = self.node.local_shard(shard);
            let Some((index, docs)) = index
                .as_ref()
                .and_then(|index| Some((index, index.documents()?)))
            else {
                remote.extend(at.iter().filter_map(|&i| hits.get(i)).map(|h| h.id.clone()));
                continue;
            };
            let mut found: Vec<(usize, u32)> = Vec::with_capacity(at.len());
            for &i in &at {
                let Some(h) = hits.get_mut(i) else { continue };
                match self.node.locate::<T>(shard, index, &h.id) {
                    Some(Location::Segment(l)) => found.push((i, l)),
                    Some(Location::Mutable(_)) => {
                        h.fields = self
                            .node
                            .written_payload::<T>(shard, index, &h.id, &include);
                    }
                    None => {}
                }
            }
            let locals: Vec<u32> = found.iter().map(|&(_, l)| l).collect();
            for ((i, _), fields) in found.iter().zip(docs.fetch(&locals, &include)?) {
                if let Some(h) = hits.get_mut(*i) {
                    h.fields = Some(fields);
                }
            }
        }
        if !remote.is_empty() {
            let got = self.documents(&remote, None).await?;
            for d in got.documents {
                if let Some(h) = hits.iter_mut().find(|h| h.id == d.id && h.shard == d.shard) {
                    h.fields = Some(include.project(d.fields));
                }
            }
            missing.extend(hits.iter().filter(|h| h.fields.is_none()).map(|h| h.shard));
        }
        Ok(())
    }

    /// Looks `ids` up: in the local shards (`only`: exactly these, a peer's
    /// request), then, for a client's request, the ids not found here at one
    /// replica of each other shard.
    pub async fn documents(
        &self,
        ids: &[UserId],
        only: Option<&[u32]>,
    ) -> Result<DocumentsResponse> {
        let n = self.node.manifest.shards.len() as u32;
        let targets: Vec<u32> = match only {
            Some(s) => s.to_vec(),
            None => (0..n).collect(),
        };
        let mut resp = DocumentsResponse::default();
        let mut found = vec![false; ids.len()];
        let mut remote = Vec::new();
        let mut with_docs = 0;
        let mut local = 0;
        for &s in &targets {
            let Some(index) = self.node.local_shard(s) else {
                remote.push(s);
                continue;
            };
            local += 1;
            let Some(docs) = index.documents() else {
                continue;
            };
            with_docs += 1;
            for (i, id) in ids.iter().enumerate() {
                if found[i] {
                    continue;
                }
                let fields = match self.node.locate::<T>(s, &index, id) {
                    None => continue,
                    Some(Location::Segment(doc)) => docs
                        .fetch(&[doc], &Include::All)?
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    Some(Location::Mutable(_)) => {
                        match self.node.written_payload::<T>(s, &index, id, &Include::All) {
                            Some(f) => f,
                            // Deleted between the two reads.
                            None => continue,
                        }
                    }
                };
                found[i] = true;
                resp.documents.push(WireDocument {
                    id: id.clone(),
                    shard: s,
                    fields,
                });
            }
        }
        if local > 0 && with_docs == 0 {
            return Err(ApiError::NoDocuments(format!(
                "{} (shards {:?})",
                self.node.config.index_dir.display(),
                self.node.local_shards()
            ))
            .into());
        }
        let mut left: Vec<UserId> = ids
            .iter()
            .zip(&found)
            .filter(|(_, &f)| !f)
            .map(|(id, _)| id.clone())
            .collect();
        if only.is_some() {
            resp.missing_shards = remote;
        } else if !left.is_empty() && !remote.is_empty() {
            let deadline =
                Instant::now() + Duration::from_millis(self.node.config.deadline_ms.max(1));
            let mut groups: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for s in remote {
                match self.pick(s, &[]) {
                    Some(p) => groups.entry(p).or_default().push(s),
                    None => resp.missing_shards.push(s),
                }
            }
            let body_ids: Vec<serde_json::Value> = left.iter().map(UserId::to_json).collect();
            let answers = join_all(groups.into_iter().map(|(p, group)| {
                let body = DocumentsRequest {
                    ids: body_ids.clone(),
                    shards: Some(group.clone()),
                };
                async move {
                    let out = self
                        .call_json::<_, DocumentsResponse>(p, "/v1/documents/get", &body, deadline)
                        .await;
                    (p, group, out)
                }
            }))
            .await;
            for (p, group, out) in answers {
                self.node.metrics.peer_call(p, out.is_err());
                match out {
                    Ok(r) => {
                        resp.missing_shards.extend(r.missing_shards);
                        resp.documents.extend(r.documents);
                    }
                    Err(_) => resp.missing_shards.extend(group),
                }
            }
            left.retain(|id| !resp.documents.iter().any(|d| &d.id == id));
        }
        resp.missing_shards.sort_unstable();
        resp.missing = left;
        Ok(resp)
    }

    /// One JSON request to peer `p`, bounded by `deadline`.
    async fn call_json<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        p: usize,
        path: &str,
        body: &B,
        deadline: Instant,
    ) -> std::result::Result<R, PeerError> {
        let peer = self.node.peer(p);
        let _in_flight = Outstanding::new(&peer.outstanding);
        let req = http::post_json(peer.addr, path, body)?;
        let exchange = async {
            let slot = self.turn.get() % PEER_CONNECTIONS;
            let mut sender = self.connection(p, slot, deadline).await?;
            let resp = match http::send(&mut sender, req).await {
                Ok(r) => r,
                Err(e) => {
                    self.drop_connection(p, slot);
                    return Err(e);
                }
            };
            http::read_json::<R>(resp).await
        };
        match until(deadline, exchange).await {
            Some(Ok(resp)) => {
                self.node.mark_up(&peer);
                Ok(resp)
            }
            Some(Err(e)) => {
                if e.peer_answered() {
                    // An error status (a 400 for a filter it cannot
                    // evaluate, a 503): the peer is there.
                    self.node.mark_up(&peer);
                } else {
                    // Refused, reset, or the connection died mid-answer.
                    self.node.mark_down(&peer);
                }
                Err(e)
            }
            None => {
                // Hung or overloaded: prefer the other replicas for a while.
                self.node.mark_down(&peer);
                Err(PeerError::Deadline)
            }
        }
    }

    /// This executor's handle on `index`'s node file, reopened when the
    /// shard moved to a new version since the last search here.
    async fn file_for(&self, s: u32, index: &Arc<DiskIndex>) -> Result<Rc<IndexFile>> {
        if let Some(Some((version, file))) = self.files.borrow().get(s as usize) {
            // Identity of the version, without touching the weak count.
            if std::ptr::eq(version.as_ptr(), Arc::as_ptr(index)) {
                return Ok(Rc::clone(file));
            }
        }
        let file = Rc::new(open_index_file(index).await?);
        if let Some(slot) = self.files.borrow_mut().get_mut(s as usize) {
            *slot = Some((Arc::downgrade(index), Rc::clone(&file)));
        }
        Ok(file)
    }

    /// The replica of `s` to ask next: not yet tried for this query, up
    /// before down, fewest requests in flight, ties taken in turn.
    /// One round of asking peers: each shard of `pending` (emptied) given
    /// to a replica not yet `tried` for it (recorded there), grouped by
    /// peer so that each peer gets one request; a shard with no replica
    /// left goes to `none_left`. The search and the BM25 statistics round
    /// both retry this way.
    fn group_by_replica(
        &self,
        pending: &mut Vec<u32>,
        tried: &mut Vec<(u32, usize)>,
        none_left: &mut Vec<u32>,
    ) -> BTreeMap<usize, Vec<u32>> {
        let mut groups: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for s in pending.drain(..) {
            match self.pick(s, tried) {
                Some(p) => {
                    tried.push((s, p));
                    groups.entry(p).or_default().push(s);
                }
                None => none_left.push(s),
            }
        }
        groups
    }

    fn pick(&self, s: u32, tried: &[(u32, usize)]) -> Option<usize> {
        let routing = self.node.routing();
        let candidates = routing.replicas_of(s);
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let len = candidates.len().max(1);
        candidates
            .iter()
            .enumerate()
            .filter(|(_, &p)| !tried.contains(&(s, p)))
            .min_by_key(|&(i, &p)| {
                (
                    self.node.is_down(&routing.peers[p]),
                    routing.peers[p].outstanding.load(Ordering::Relaxed),
                    (i + len - turn % len) % len,
                )
            })
            .map(|(_, &p)| p)
    }

    /// Asks peers for `shards`, one replica per shard, grouped into one
    /// request per peer. A failed peer's shards go at once to their next
    /// replicas (other requests keep running), until the deadline. An
    /// attempt that has a replica to fall back on gets half the time left,
    /// so a peer that hangs still leaves time for the retry. Returns the
    /// hits, the shards nobody answered for, and the cost.
    async fn search_remote(
        &self,
        shards: Vec<u32>,
        q: &Query<T>,
        deadline: Instant,
    ) -> RemoteFound {
        let mut out = RemoteFound::default();
        if shards.is_empty() {
            // Every shard was local (or this is a peer's request): nothing
            // to convert or schedule on the per-query path.
            return out;
        }
        let RemoteFound {
            hits,
            text_hits,
            missing,
            stats,
            plans,
        } = &mut out;
        let mut tried: Vec<(u32, usize)> = Vec::new();
        let vector: Option<Vec<f64>> = q
            .vector
            .as_ref()
            .map(|v| v.iter().map(|x| f64::from(x.to_f32())).collect());
        let mut inflight = FuturesUnordered::new();
        let mut pending = shards;
        loop {
            if !pending.is_empty() {
                if Instant::now() >= deadline {
                    missing.append(&mut pending);
                } else {
                    let groups = self.group_by_replica(&mut pending, &mut tried, missing);
                    for (p, group) in groups {
                        let fallback = group.iter().all(|&s| self.has_untried(s, &tried));
                        let attempt = if fallback {
                            let now = Instant::now();
                            now + deadline.saturating_duration_since(now) / 2
                        } else {
                            deadline
                        };
                        inflight.push(self.attempt(p, group, vector.as_deref(), q, attempt));
                    }
                }
            }
            let Some((p, group, out)) = inflight.next().await else {
                break;
            };
            stats.peer_calls += 1;
            self.node.metrics.peer_call(p, out.is_err());
            match out {
                Ok(resp) => {
                    if q.vector.is_none() {
                        // A text query's answer: its hits are the text list.
                        text_hits.extend(resp.hits);
                    } else {
                        hits.extend(resp.hits);
                        text_hits.extend(resp.text_hits);
                    }
                    stats.add(&resp.stats);
                    plans.extend(resp.plans);
                    pending.extend(resp.missing_shards.iter().filter(|s| group.contains(s)));
                }
                Err(_) => {
                    stats.peer_failures += 1;
                    pending.extend(group);
                }
            }
        }
        missing.append(&mut pending);
        out
    }

    /// Does shard `s` have a replica not yet tried for this query?
    fn has_untried(&self, s: u32, tried: &[(u32, usize)]) -> bool {
        self.node
            .routing()
            .replicas_of(s)
            .iter()
            .any(|&p| !tried.contains(&(s, p)))
    }

    /// One attempt: [`Self::call_peer`], returning what it asked for.
    async fn attempt(
        &self,
        p: usize,
        group: Vec<u32>,
        vector: Option<&[f64]>,
        q: &Query<T>,
        deadline: Instant,
    ) -> (
        usize,
        Vec<u32>,
        std::result::Result<SearchResponse, PeerError>,
    ) {
        let out = self.call_peer(p, vector, q, &group, deadline).await;
        (p, group, out)
    }

    /// One request to peer `p` for `shards`, bounded by `deadline`.
    async fn call_peer(
        &self,
        p: usize,
        vector: Option<&[f64]>,
        q: &Query<T>,
        shards: &[u32],
        deadline: Instant,
    ) -> std::result::Result<SearchResponse, PeerError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = SearchRequest {
            vector: vector.map(<[f64]>::to_vec),
            text: q.text.as_ref().map(|t| t.text.clone()),
            // A peer never embeds a request from another node (it is BM25
            // there as here); the field is left out for older peers.
            embed: None,
            // Never sent: the peer returns both lists and this node fuses.
            fusion: None,
            candidates: q.text.as_ref().map(|t| t.candidates),
            text_stats: q.text.as_ref().and_then(|t| t.stats.clone()),
            k: q.params.k,
            list: Some(q.params.list),
            beam: Some(q.params.beam),
            probe_shards: None,
            timeout_ms: Some((left.as_millis() as u64).max(1)),
            shards: Some(shards.to_vec()),
            // As the client gave them: the peer parses and checks them.
            filter: q.filter.as_ref().map(|(_, json)| json.clone()),
            // A hybrid query's fields are read after fusion, for its final
            // hits only (`fill_fields`).
            include: if q.vector.is_some() && q.text.is_some() {
                Vec::new()
            } else {
                q.include.clone()
            },
        };
        self.call_json(p, "/v1/search", &body, deadline).await
    }

    /// Pooled connection `slot` to peer `p`, connecting if there is none or
    /// it closed.
    async fn connection(
        &self,
        p: usize,
        slot: usize,
        deadline: Instant,
    ) -> std::result::Result<Sender, PeerError> {
        let peer = self.node.peer(p);
        let addr = peer.addr;
        if let Some(Some((at, s))) = self.pool.borrow().get(p).and_then(|c| c.get(slot)) {
            if *at == addr && !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match http::connect(addr, left).await {
            Ok(sender) => {
                let mut pool = self.pool.borrow_mut();
                if pool.len() <= p {
                    // A peer that joined after this executor started.
                    pool.resize_with(p + 1, Default::default);
                }
                if let Some(c) = pool[p].get_mut(slot) {
                    *c = Some((addr, sender.clone()));
                }
                Ok(sender)
            }
            Err(e) => {
                self.node.mark_down(&peer);
                Err(e)
            }
        }
    }

    fn drop_connection(&self, p: usize, slot: usize) {
        if let Some(c) = self
            .pool
            .borrow_mut()
            .get_mut(p)
            .and_then(|c| c.get_mut(slot))
        {
            *c = None;
        }
    }
}

/// What one local shard found.
#[derive(Default)]
struct LocalFound {
    hits: Vec<WireHit>,
    text_hits: Vec<WireHit>,
    /// The vector search's cost, when there was one.
    search: Option<SearchStats>,
    plan: Option<Plan>,
    dense_us: u64,
    text_us: u64,
}

/// What the peers found for the remote shards.
#[derive(Default)]
struct RemoteFound {
    hits: Vec<WireHit>,
    text_hits: Vec<WireHit>,
    missing: Vec<u32>,
    stats: WireStats,
    plans: BTreeMap<String, serde_json::Value>,
}

/// By distance; ties by id, then shard (ids are unique within a shard).
fn sort_by_distance(hits: &mut [WireHit]) {
    hits.sort_by(|a, b| {
        let d = |h: &WireHit| h.distance.unwrap_or(f32::INFINITY);
        d(a).total_cmp(&d(b))
            .then_with(|| a.id.cmp(&b.id))
            .then(a.shard.cmp(&b.shard))
    });
}

/// By BM25 score, best first; ties by id, then shard: the order one index
/// over the whole corpus gives, whatever the sharding.
fn sort_by_score(hits: &mut [WireHit]) {
    hits.sort_by(|a, b| {
        let s = |h: &WireHit| h.score.unwrap_or(f32::NEG_INFINITY);
        s(b).total_cmp(&s(a))
            .then_with(|| a.id.cmp(&b.id))
            .then(a.shard.cmp(&b.shard))
    });
}

/// The fused list of a hybrid query: each hit with its fused score and the
/// scores it had in each list.
fn fuse(fusion: &Fusion, dense: Vec<WireHit>, text: Vec<WireHit>) -> Vec<WireHit> {
    let key = |h: &WireHit| (h.shard, h.id.clone());
    let d: Vec<_> = dense
        .iter()
        .map(|h| (key(h), h.distance.unwrap_or(f32::INFINITY)))
        .collect();
    let t: Vec<_> = text
        .iter()
        .map(|h| (key(h), h.score.unwrap_or(f32::NEG_INFINITY)))
        .collect();
    let mut by_key: BTreeMap<(u32, UserId), WireHit> = BTreeMap::new();
    for h in text {
        by_key.insert(key(&h), h);
    }
    for h in dense {
        let k = key(&h);
        match by_key.get_mut(&k) {
            Some(t) => {
                t.text_score = t.score;
                t.distance = h.distance;
                if t.fields.is_none() {
                    t.fields = h.fields;
                }
            }
            None => {
                by_key.insert(k, h);
            }
        }
    }
    for h in by_key.values_mut() {
        if h.distance.is_none() || h.text_score.is_none() {
            // In one list only: move a text score where hybrid hits keep it.
            if h.distance.is_none() {
                h.text_score = h.score;
            }
        }
    }
    fusion
        .fuse(&d, &t)
        .into_iter()
        .filter_map(|f| {
            let mut h = by_key.remove(&f.key)?;
            h.score = Some(f.score as f32);
            Some(h)
        })
        .collect()
}

/// The text index of a shard, or the request's fault (a 400) if it has
/// none.
fn text_index(index: &DiskIndex) -> Result<&TextIndex> {
    index
        .documents()
        .and_then(|d| d.text())
        .ok_or_else(|| ApiError::NoText(index.dir().display().to_string()).into())
}

/// The segment-local ids of `index` that `q`'s filter admits (`None`: no
/// filter). A filter or include on a shard without documents, or a filter
/// naming a field the shard does not index, is the request's fault (a 400).
///
/// `deletes`: segment-local ids deleted or replaced by writes since the
/// segment; they never match, so no stage returns them or counts them
/// toward k.
fn prepare_filter<T>(
    index: &DiskIndex,
    q: &Query<T>,
    deletes: Option<Deleted>,
) -> Result<Option<Matches>> {
    if index.documents().is_none() {
        if q.filter.is_some() || !q.include.is_empty() {
            return Err(ApiError::NoDocuments(index.dir().display().to_string()).into());
        }
        return Ok(None);
    }
    let filtered = match &q.filter {
        None => None,
        Some((filter, _)) => match index.evaluate(filter) {
            Ok(m) => Some(m),
            Err(shardann_engine::Error::Filter(e)) => {
                return Err(ApiError::Filter(e.to_string()).into())
            }
            Err(e) => return Err(e.into()),
        },
    };
    Ok(match (filtered, deletes) {
        (m, None) => m,
        (Some(m), Some(Deleted::Ids(d))) => {
            Some(Matches::new(Arc::new(m.docs().as_ref() - d.as_ref())))
        }
        (Some(m), Some(Deleted::Live(live))) => {
            Some(Matches::new(Arc::new(m.docs().as_ref() & live.as_ref())))
        }
        (None, Some(Deleted::Live(live))) => Some(Matches::new(live)),
        (None, Some(Deleted::Ids(d))) => {
            let mut live = RoaringBitmap::new();
            live.insert_range(0..index.len() as u32);
            live -= d.as_ref();
            Some(Matches::new(Arc::new(live)))
        }
    })
}

/// A shard's segment documents deleted by writes, as the search needs
/// them: the deleted ids (to take from a filter's matches) or the live
/// ones (what a search without a filter matches; cached by the part).
enum Deleted {
    Ids(Arc<RoaringBitmap>),
    Live(Arc<RoaringBitmap>),
}
