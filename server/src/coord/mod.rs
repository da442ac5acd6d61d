//! The control plane on etcd: a node's registration, its view of the
//! cluster, and the versions it publishes.
//!
//! A node configured with `etcd = [...]` and `cluster = "name"` (instead of
//! `[[peers]]`) runs two threads beside its executors, both blocking on
//! etcd's JSON gateway ([`crate::etcd`]), never on the threads that serve
//! queries:
//!
//! ```text
//!  keeper  ── every tick: lease alive (grant + register when it lapsed),
//!             registration rewritten when what the node serves changed,
//!             a local version newer than the published one published (CAS)
//!  watcher ── range the cluster's prefix, then watch it: every change
//!             ─► ClusterView ─► Node::set_peers (routing, peers' versions)
//!                            ─► Status::published (the follower pulls it)
//!                            ─► Status::placed (the follower joins a shard
//!                               placed here, drops one taken off)
//! ```
//!
//! A node that dies stops renewing its lease; etcd deletes its
//! registration when the lease expires, every watcher sees the delete and
//! takes the node out of routing at once. A version is published by the
//! node that has it (a local build), and every replica's follower sees it
//! within a tick (`replication::follow`) and pulls it from a node that
//! registered it. When etcd cannot be reached the node keeps its last
//! routing and versions, changes nothing, and says so (`/healthz`,
//! `shardann_coordination_available`); when etcd is back, the keeper
//! registers again (under a new lease if the old one lapsed) and the
//! watcher reads the whole prefix again, so the state converges.
//!
//! Keys: [`keys`] (spec: `format-spec/etcd.md`).

pub mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::NodeConfig;
use crate::etcd::{Compare, Credentials, Etcd, EtcdError, WatchUpdate};
use crate::node::Node;
pub use keys::{ClusterView, Keys, Registration};

/// How often the keeper looks at what the node serves (a registration
/// rewrite and a publish follow a change within this), and how often the
/// follower looks at published versions.
pub const TICK: Duration = Duration::from_millis(100);
/// A unary etcd call gives up after this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed call, the wait before the next attempt.
const RETRY: Duration = Duration::from_millis(500);

/// Why a node could not join its cluster at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Name(#[from] keys::BadName),
    #[error("cluster {cluster:?} has no cluster.json in etcd (key {key}): publish an index with `shardann cluster init` first")]
    NotInitialised { cluster: String, key: String },
    #[error("{}: differs from cluster {cluster:?}'s cluster.json in etcd: this index is not that cluster's", path.display())]
    OtherCluster {
        cluster: String,
        path: std::path::PathBuf,
    },
    #[error("cluster {cluster:?}: the cluster.json in etcd is not readable: {why}")]
    BadManifest { cluster: String, why: String },
    #[error("the local cluster.json cannot be read to compare with etcd's: {0}")]
    LocalManifest(#[source] Box<shardann_engine::Error>),
    #[error("starting the etcd threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error("{}: writing cluster.json from etcd: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A client for the etcd of `config` (its endpoints and credentials).
/// Its calls give up after a quarter of the lease's TTL (within 250 ms and
/// [`CALL_TIMEOUT`]): one hung endpoint must leave time to renew the lease
/// through another before it lapses.
pub fn client(config: &NodeConfig) -> Result<Etcd, EtcdError> {
    let timeout = (Duration::from_secs(config.lease_ttl_s) / 4)
        .clamp(Duration::from_millis(250), CALL_TIMEOUT);
    let credentials = config.etcd_user.as_ref().map(|user| Credentials {
        user: user.clone(),
        password: config.etcd_password.clone().unwrap_or_default(),
    });
    Etcd::new(
        config.etcd.as_deref().unwrap_or_default(),
        timeout,
        credentials,
    )
}

/// Before a coordinated node opens its index: the cluster's `cluster.json`
/// from etcd, written into `index_dir` when it has none (a node that
/// starts with an empty disk), or checked against the one there.
pub fn prepare(config: &NodeConfig) -> Result<(), CoordError> {
    let cluster = config.cluster.clone().unwrap_or_default();
    let keys = Keys::new(&cluster)?;
    let etcd = client(config)?;
    let key = keys.cluster();
    let Some(kv) = etcd.get(&key)? else {
        return Err(CoordError::NotInitialised { cluster, key });
    };
    let theirs: shardann_engine::cluster::ClusterManifest = serde_json::from_slice(&kv.value)
        .map_err(|e| CoordError::BadManifest {
            cluster: cluster.clone(),
            why: e.to_string(),
        })?;
    let path = config.index_dir.join(shardann_engine::layout::CLUSTER_FILE);
    if path.exists() {
        let ours = shardann_engine::cluster::read_manifest(&config.index_dir)
            .map_err(|e| CoordError::LocalManifest(Box::new(e)))?;
        if ours != theirs {
            return Err(CoordError::OtherCluster { cluster, path });
        }
        return Ok(());
    }
    let write = |source| CoordError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&config.index_dir).map_err(write)?;
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, &kv.value).map_err(write)?;
    std::fs::rename(&tmp, &path).map_err(write)?;
    Ok(())
}

/// The control plane's state as the node reports it.
#[derive(Debug, Default)]
pub struct Status {
    enabled: bool,
    /// The keeper's last round reached etcd.
    keeper_ok: AtomicBool,
    /// The watcher holds a current view (its last range read succeeded and
    /// its watch has not broken since).
    watcher_ok: AtomicBool,
    /// The lease the registration is under (0: none yet).
    lease: AtomicI64,
    /// The last error, while unavailable.
    error: Mutex<Option<String>>,
    /// Per shard: the published version and its key's mod revision.
    published: Mutex<BTreeMap<u32, (u64, i64)>>,
    /// When the routing last changed, and how many times it has.
    changes: Mutex<(Option<Instant>, u64)>,
    /// The shards placed on this node (`placement/<s>/<this node>`); None
    /// before the first view.
    placed: Mutex<Option<BTreeSet<u32>>>,
    /// Local shards whose placement was removed: left out of the
    /// registration at once, dropped [`LEAVE_GRACE`] after a registration
    /// without them was written.
    leaving: Mutex<BTreeSet<u32>>,
    /// The shards of the registration last written to etcd, and when.
    registered: Mutex<Option<(Vec<u32>, Instant)>>,
    /// Per shard: its write primary, as last seen.
    primaries: Mutex<BTreeMap<u32, String>>,
}

/// How long a shard whose placement here was removed is still served
/// after a registration without it was written: time for every watcher to
/// take it out of routing and for queries already sent to finish.
pub const LEAVE_GRACE: Duration = Duration::from_secs(1);

impl Status {
    pub fn new(enabled: bool) -> Self {
        Status {
            enabled,
            ..Default::default()
        }
    }

    /// Whether the node is coordinated through etcd.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether etcd can be reached (always true in static mode).
    pub fn available(&self) -> bool {
        !self.enabled
            || (self.keeper_ok.load(Ordering::Relaxed) && self.watcher_ok.load(Ordering::Relaxed))
    }

    /// The published version of shard `s`, as last seen.
    pub fn published(&self, s: u32) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&s)
            .map(|&(v, _)| v)
    }

    /// Per shard: its write primary, as last seen.
    pub fn primaries(&self) -> BTreeMap<u32, String> {
        self.primaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The write primary of shard `s`, as last seen.
    pub fn primary(&self, s: u32) -> Option<String> {
        self.primaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&s)
            .cloned()
    }

    fn set_primary(&self, s: u32, node: &str) {
        self.primaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s, node.to_string());
    }

    /// The shards placed on this node, once known.
    pub fn placed(&self) -> Option<BTreeSet<u32>> {
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks local shard `s` as leaving (if it is not already); returns
    /// whether a registration without it was written to etcd at least
    /// [`LEAVE_GRACE`] ago (only then may it stop being served: peers
    /// route by the registration).
    pub fn leave(&self, s: u32) -> bool {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s);
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(shards, at)| !shards.contains(&s) && at.elapsed() >= LEAVE_GRACE)
    }

    fn written(&self, shards: Vec<u32>) {
        *self.registered.lock().unwrap_or_else(|e| e.into_inner()) = Some((shards, Instant::now()));
    }

    /// Shard `s` is no longer leaving (dropped, or placed here again).
    pub fn stay(&self, s: u32) {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s);
    }

    fn is_leaving(&self, s: u32) -> bool {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&s)
    }

    fn set_error(&self, e: &dyn std::fmt::Display) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// `/healthz`'s `coordination` object.
    pub fn to_json(&self) -> serde_json::Value {
        if !self.enabled {
            return serde_json::json!({"mode": "static", "available": true});
        }
        let available = self.available();
        let (_, changes) = *self.changes.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "mode": "etcd",
            "available": available,
            "lease": self.lease.load(Ordering::Relaxed).to_string(),
            "primaries": self.primaries(),
            "routing_changes": changes,
            "error": if available { None } else {
                self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
            },
        })
    }
}

/// Starts the keeper and the watcher of a coordinated node that listens
/// at `addr`. Returns once the node is registered and its routing set
/// from etcd, or with the error of the first attempt (the node should not
/// serve a cluster it cannot see).
pub fn start(node: Arc<Node>, addr: SocketAddr) -> Result<(), CoordError> {
    let cluster = node.config.cluster.clone().unwrap_or_default();
    let keys = Keys::new(&cluster)?;
    let etcd = Arc::new(client(&node.config)?);
    let advertise = node
        .config
        .advertise
        .as_deref()
        .and_then(|a| crate::config::resolve(a).ok())
        .unwrap_or(addr);
    // The first view and registration before serving: a node comes up
    // knowing its peers, and known to them.
    let mut keeper = Keeper {
        node: Arc::clone(&node),
        etcd: Arc::clone(&etcd),
        keys: keys.clone(),
        advertise,
        lease: None,
        written: None,
        renewed: Instant::now(),
    };
    keeper.round()?;
    node.coordination.keeper_ok.store(true, Ordering::Relaxed);
    let (kvs, mut revision) = etcd.get_prefix(keys.prefix())?;
    let mut view = ClusterView::from_kvs(&keys, &kvs);
    let me = node.config.node_id.clone();
    if !view.placement.values().any(|nodes| nodes.contains(&me)) {
        // First start in this cluster: the shards of node.toml (all when
        // it names none) become this node's placement, and those not on
        // disk are pulled; from now on etcd's placement decides.
        let n = node.manifest.shards.len() as u32;
        let seed = node
            .config
            .shards
            .clone()
            .unwrap_or_else(|| (0..n).collect());
        for s in seed {
            etcd.put(&keys.placement(s, &me), b"{}", None)?;
        }
        let (kvs, r) = etcd.get_prefix(keys.prefix())?;
        view = ClusterView::from_kvs(&keys, &kvs);
        revision = r;
    }
    apply(&node, &view);
    node.coordination.watcher_ok.store(true, Ordering::Relaxed);

    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map(|_| ())
            .map_err(CoordError::Thread)
    };
    spawn("shardann-etcd-keep", Box::new(move || keeper.run()))?;
    let watcher = Watcher {
        node,
        etcd,
        keys,
        view,
        revision,
    };
    spawn("shardann-etcd-watch", Box::new(move || watcher.run()))?;
    Ok(())
}

/// Applies a view to the node: routing, peers' versions, published versions.
fn apply(node: &Node, view: &ClusterView) {
    let (entries, unresolved) = view.peer_entries();
    for id in unresolved {
        eprintln!(
            "node {}: peer {id}'s registered address does not resolve; left out of routing",
            node.config.node_id
        );
    }
    node.set_peers(&entries);
    // A view without the cluster key is not this cluster's state (an etcd
    // restored empty, or a prefix deleted by hand): its empty placement
    // would drop every shard, so the last placement stays.
    if view.cluster.is_some() {
        *node
            .coordination
            .placed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(
            view.placement
                .iter()
                .filter(|(_, nodes)| nodes.contains(&node.config.node_id))
                .map(|(&s, _)| s)
                .collect(),
        );
    }
    *node
        .coordination
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = view.versions.clone();
    *node
        .coordination
        .primaries
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = view.primaries.clone();
    let mut changes = node
        .coordination
        .changes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *changes = (Some(Instant::now()), changes.1 + 1);
}

/// Keeps the node's registration alive and current, and publishes the
/// versions it has first.
struct Keeper {
    node: Arc<Node>,
    etcd: Arc<Etcd>,
    keys: Keys,
    advertise: SocketAddr,
    lease: Option<i64>,
    /// The registration as last written under the current lease.
    written: Option<Registration>,
    renewed: Instant,
}

impl Keeper {
    fn run(mut self) {
        loop {
            std::thread::sleep(TICK);
            match self.round() {
                Ok(()) => {
                    let was = self
                        .node
                        .coordination
                        .keeper_ok
                        .swap(true, Ordering::Relaxed);
                    if !was {
                        eprintln!(
                            "node {}: etcd reachable again; registered",
                            self.node.config.node_id
                        );
                    }
                }
                Err(e) => {
                    let was = self
                        .node
                        .coordination
                        .keeper_ok
                        .swap(false, Ordering::Relaxed);
                    self.node.coordination.set_error(&e);
                    if was {
                        eprintln!(
                            "node {}: {e}; serving with the last known routing and versions",
                            self.node.config.node_id
                        );
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn registration(&self) -> Registration {
        let shards: Vec<(u32, u64)> = self
            .node
            .local_shards()
            .into_iter()
            .filter(|&s| !self.node.coordination.is_leaving(s))
            .map(|s| {
                let v = self
                    .node
                    .local_shard(s)
                    .and_then(|i| i.segment().map(|m| m.version))
                    .unwrap_or(0);
                (s, v)
            })
            .collect();
        keys::registration(&self.node.config.node_id, self.advertise, &shards)
    }

    /// One round: lease, registration, publishes.
    fn round(&mut self) -> Result<(), CoordError> {
        let ttl = self.node.config.lease_ttl_s;
        let now = Instant::now();
        if let Some(lease) = self.lease {
            if now.duration_since(self.renewed) >= Duration::from_millis(ttl * 1000 / 3) {
                if self.etcd.keep_alive(lease)? == 0 {
                    // Lapsed (etcd was away longer than the TTL): our
                    // registration is gone; register anew.
                    self.lease = None;
                    self.written = None;
                } else {
                    self.renewed = now;
                }
            }
        }
        let lease = match self.lease {
            Some(l) => l,
            None => {
                let l = self.etcd.grant(ttl)?;
                self.lease = Some(l);
                self.written = None;
                self.renewed = now;
                self.node.coordination.lease.store(l, Ordering::Relaxed);
                l
            }
        };
        let reg = self.registration();
        if self.written.as_ref() != Some(&reg) {
            let value = serde_json::to_vec(&reg).unwrap_or_default();
            self.etcd
                .put(&self.keys.node(&reg.id), &value, Some(lease))?;
            self.node
                .coordination
                .written(reg.shards.iter().map(|sv| sv.id).collect());
            self.written = Some(reg.clone());
        }
        self.publish(&reg)?;
        self.elect(&reg, lease)
    }

    /// Claims the write primary of each shard this node registered that
    /// has none (create-if-absent under the node's lease: one node wins,
    /// and the key goes when its lease does), and gives up the primary of
    /// a shard it no longer serves.
    fn elect(&self, reg: &Registration, lease: i64) -> Result<(), CoordError> {
        if !self.node.coordination.watcher_ok.load(Ordering::Relaxed) {
            return Ok(()); // decide only on a current view
        }
        let me = &self.node.config.node_id;
        let primaries = self.node.coordination.primaries();
        for sv in &reg.shards {
            if primaries.contains_key(&sv.id) || !self.node.takes_writes(sv.id) {
                continue;
            }
            let value = serde_json::to_vec(&keys::Primary { node: me.clone() }).unwrap_or_default();
            if self.etcd.put_if(
                &self.keys.primary(sv.id),
                Compare::Absent,
                &value,
                Some(lease),
            )? {
                eprintln!("node {me}: write primary of shard {}", sv.id);
                self.node.coordination.set_primary(sv.id, me);
            }
        }
        for (s, node) in primaries {
            if node == *me && !reg.shards.iter().any(|sv| sv.id == s) {
                self.etcd.delete(&self.keys.primary(s))?;
                eprintln!(
                    "node {me}: gave up the write primary of shard {s}, no longer served here"
                );
            }
        }
        Ok(())
    }

    /// Publishes each local version newer than the published one, by
    /// compare-and-set on the key's revision (two nodes never overwrite
    /// each other's publish with an older version).
    fn publish(&self, reg: &Registration) -> Result<(), CoordError> {
        for sv in reg.shards.iter().filter(|sv| sv.version > 0) {
            let known = self
                .node
                .coordination
                .published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&sv.id)
                .copied();
            if known.is_some_and(|(v, _)| v >= sv.version) {
                continue;
            }
            if !self.node.coordination.watcher_ok.load(Ordering::Relaxed) {
                continue; // decide only on a current view
            }
            let cond = match known {
                None => Compare::Absent,
                Some((_, rev)) => Compare::ModRevision(rev),
            };
            let value = serde_json::to_vec(&keys::Published {
                version: sv.version,
            })
            .unwrap_or_default();
            if self
                .etcd
                .put_if(&self.keys.version(sv.id), cond, &value, None)?
            {
                eprintln!(
                    "node {}: published shard {} version {}",
                    self.node.config.node_id, sv.id, sv.version
                );
            }
            // Lost the race, or done: the watcher brings the new value.
        }
        Ok(())
    }
}

/// Keeps the node's view of the cluster current.
struct Watcher {
    node: Arc<Node>,
    etcd: Arc<Etcd>,
    keys: Keys,
    view: ClusterView,
    revision: i64,
}

impl Watcher {
    fn run(mut self) {
        loop {
            match self.etcd.get_prefix(self.keys.prefix()) {
                Ok((kvs, revision)) => {
                    let view = ClusterView::from_kvs(&self.keys, &kvs);
                    self.revision = revision;
                    if view != self.view {
                        self.view = view;
                        apply(&self.node, &self.view);
                    }
                    self.node
                        .coordination
                        .watcher_ok
                        .store(true, Ordering::Relaxed);
                    // Until the stream breaks (etcd gone, or silent for
                    // WATCH_IDLE) or is cancelled; then read it all again.
                    let opened = Instant::now();
                    if let Err(e) = self.watch() {
                        if opened.elapsed() < RETRY {
                            // Refused at once (not a stream that ran and
                            // broke): do not spin on range + watch.
                            self.node.coordination.set_error(&e);
                            std::thread::sleep(RETRY);
                        }
                    }
                }
                Err(e) => {
                    self.node
                        .coordination
                        .watcher_ok
                        .store(false, Ordering::Relaxed);
                    self.node.coordination.set_error(&e);
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    /// Follows changes from the revision after the last read until the
    /// stream breaks or is cancelled.
    fn watch(&mut self) -> Result<(), EtcdError> {
        let mut w = self
            .etcd
            .watch_prefix(self.keys.prefix(), self.revision + 1)?;
        loop {
            match w.next_update()? {
                WatchUpdate::Events(events, revision) => {
                    self.view.apply(&self.keys, &events);
                    self.revision = self.revision.max(revision);
                    apply(&self.node, &self.view);
                }
                WatchUpdate::Cancelled => return Ok(()),
            }
        }
    }
}

/// The cluster's view as etcd holds it now (`shardann cluster status`).
pub fn read_view(etcd: &Etcd, cluster: &str) -> Result<ClusterView, CoordError> {
    let keys = Keys::new(cluster)?;
    let (kvs, _) = etcd.get_prefix(keys.prefix())?;
    Ok(ClusterView::from_kvs(&keys, &kvs))
}
