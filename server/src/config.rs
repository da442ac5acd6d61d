//! `node.toml`: what one node serves and who its peers are.
//!
//! ```toml
//! node_id = "n1"
//! listen = "127.0.0.1:7001"
//! index_dir = "/data/idx"        # holds shard-0 … shard-N-1 and cluster.json
//! shards = [0, 1, 2, 3]          # the shards this node serves
//! [[peers]]
//! id = "n2"
//! address = "127.0.0.1:7002"
//! shards = [2, 3, 4, 5]
//! ```
//!
//! Optional keys are documented on [`NodeConfig`] (e.g. `model_dir`, a
//! sentence-transformers folder: text queries are then embedded here).
//! Optional tables, after every top-level key: `[limits]` (what one
//! request may ask for), `[admission]` (searches each executor runs and
//! lets wait) and `[connections]` (connection cap, HTTP/2 streams, header,
//! body and idle timeouts, pings); see the README's node configuration.
//!
//! Every node of a cluster has its own file. In static mode (`[[peers]]`)
//! nothing is discovered at run time; with `etcd = [...]` and `cluster =
//! "name"` instead, the peers and the versions to serve come from etcd
//! ([`crate::coord`]). A node only opens the shards it serves, so
//! `index_dir` needs just those shard directories and `cluster.json` (which
//! a coordinated node takes from etcd when it has none).

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shardann_engine::navigation::NavPoints;

use crate::error::{Result, ServerError};

/// The default per-request deadline, for requests that name none.
pub const DEFAULT_DEADLINE_MS: u64 = 2000;
/// How often a node looks for newer versions of its shards, by default.
pub const DEFAULT_FOLLOW_MS: u64 = 5000;
/// A coordinated node's lease, by default, in seconds.
pub const DEFAULT_LEASE_TTL_S: u64 = 5;
/// The default limit on a request body.
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// One node's configuration. See the module docs for the file format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: String,
    /// `host:port` to listen on (HTTP/2 with prior knowledge and HTTP/1.1).
    pub listen: String,
    pub index_dir: PathBuf,
    /// The shards this node serves; every shard of `index_dir` if omitted.
    #[serde(default)]
    pub shards: Option<Vec<u32>>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// etcd endpoints (`["http://127.0.0.1:2379"]`): the node then finds
    /// its peers, and the versions to serve, in etcd under `cluster`
    /// (`crate::coord`) instead of `[[peers]]`.
    #[serde(default)]
    pub etcd: Option<Vec<String>>,
    /// The cluster's name in etcd (with `etcd`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// etcd's own authentication: user and password (with `etcd`).
    #[serde(default)]
    pub etcd_user: Option<String>,
    #[serde(default)]
    pub etcd_password: Option<String>,
    /// Seconds the node's registration outlives its last renewal: a node
    /// that dies leaves routing this long after (default 5; etcd's least is 2).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
    /// The `host:port` peers reach this node at, when not `listen` (a
    /// wildcard listen address, NAT).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Executors (one per core); the number of CPUs if omitted.
    #[serde(default)]
    pub executors: Option<usize>,
    /// `"auto"` (glommio where io_uring can be set up, else epoll, with one
    /// line on stderr), `"glommio"` or `"epoll"`: see [`crate::rt`].
    #[serde(default)]
    pub runtime: crate::rt::RuntimeChoice,
    /// Deadline for a request that names none, in milliseconds.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Nodes per local shard kept in RAM, nearest the entry point first.
    #[serde(default)]
    pub cache_nodes: usize,
    /// Points of each local shard's navigation graph, built at open: a
    /// count (`10000`) or a share (`"1%"`, the default); `0` = none
    /// (`shardann_engine::navigation`).
    #[serde(default)]
    pub nav_points: NavPoints,
    /// Filter fields whose value order each local shard keeps a copy of
    /// the PQ codes in (`DiskIndex::cluster_codes`): filters on them at
    /// 10-30 % selectivity score their matches as one contiguous run.
    #[serde(default)]
    pub cluster_codes: Vec<String>,
    /// A sentence-transformers model folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`): with one, a query may be
    /// plain text, embedded by this node (`serve --model`). Relative to the
    /// config file, as `index_dir` is.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// When set, the replication endpoints answer only requests carrying
    /// `authorization: Bearer <token>`, and this node sends it to peers.
    #[serde(default)]
    pub cluster_token: Option<String>,
    /// When set, writes (`POST /v1/documents`, deletes) are taken only
    /// with `authorization: Bearer <token>`; without it, only from
    /// loopback addresses (said at start).
    #[serde(default)]
    pub write_token: Option<String>,
    /// Every this many ms, check whether a newer version of a local shard
    /// is on local disk (a build) or at a peer serving it (then pull it),
    /// and switch to it while serving. 0 turns following off.
    #[serde(default = "default_follow")]
    pub follow_ms: u64,
    /// The largest file a peer's manifest may declare when this node pulls
    /// a shard, in bytes (default 1 TiB). Larger files are refused before
    /// anything is written, as are files the disk has no room for.
    #[serde(default = "default_pull_max_file")]
    pub pull_max_file_bytes: u64,
    /// The slowest transfer a pull accepts, in bytes per second (default
    /// 1 MiB/s): a file of `n` bytes must arrive within 30 s + `n` / this
    /// rate, so a peer trickling bytes cannot hold a pull forever.
    #[serde(default = "default_pull_min_rate")]
    pub pull_min_bytes_per_sec: u64,
    /// What one request may ask for (`[limits]`: max_list, max_batch,
    /// max_batch_work, max_timeout_ms); beyond it, a 400 naming the limit.
    /// A `[limits]` table goes after every top-level key (TOML's rule).
    #[serde(default)]
    pub limits: crate::api::Limits,
    /// How many searches each executor runs and lets wait (`[admission]`:
    /// max_running, max_queued, max_wait_ms, refusals_per_sec); beyond it,
    /// a 503 with `Retry-After` naming the limit.
    #[serde(default)]
    pub admission: crate::admission::AdmissionConfig,
    /// What the node accepts from client connections (`[connections]`:
    /// max_connections, max_streams, header_timeout_ms, body_timeout_ms,
    /// idle_timeout_ms, keepalive_ms, keepalive_timeout_ms).
    #[serde(default)]
    pub connections: crate::admission::ConnectionConfig,
    /// How writes are made durable and how much one may hold (`[writes]`:
    /// durability = "fsync" | "buffered", max_batch, max_points).
    #[serde(default)]
    pub writes: crate::writes::WritesConfig,
}

fn default_pull_max_file() -> u64 {
    crate::replication::DEFAULT_PULL_MAX_FILE_BYTES
}

fn default_pull_min_rate() -> u64 {
    crate::replication::DEFAULT_PULL_MIN_BYTES_PER_SEC
}

fn default_lease_ttl() -> u64 {
    DEFAULT_LEASE_TTL_S
}

fn default_follow() -> u64 {
    DEFAULT_FOLLOW_MS
}

fn default_deadline() -> u64 {
    DEFAULT_DEADLINE_MS
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}

/// Another node and the shards it serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: String,
    /// `host:port` of the peer's listener.
    pub address: String,
    pub shards: Vec<u32>,
}

impl NodeConfig {
    /// Reads and checks a `node.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config_err = |source: ConfigError| ServerError::Config {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_err(ConfigError::Read(e)))?;
        let mut config: NodeConfig =
            toml::from_str(&text).map_err(|e| config_err(ConfigError::Parse(e)))?;
        // A relative index directory is relative to the config file.
        if config.index_dir.is_relative() {
            if let Some(parent) = path.parent() {
                config.index_dir = parent.join(&config.index_dir);
            }
        }
        if let (Some(model), Some(parent)) = (&mut config.model_dir, path.parent()) {
            if model.is_relative() {
                *model = parent.join(&*model);
            }
        }
        config.check().map_err(config_err)?;
        Ok(config)
    }

    /// One node serving every shard of `index_dir`, without peers.
    pub fn single(index_dir: &Path, listen: &str) -> Self {
        NodeConfig {
            node_id: "local".into(),
            listen: listen.into(),
            index_dir: index_dir.to_path_buf(),
            shards: None,
            peers: Vec::new(),
            etcd: None,
            cluster: None,
            etcd_user: None,
            etcd_password: None,
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            advertise: None,
            executors: None,
            runtime: crate::rt::RuntimeChoice::Auto,
            deadline_ms: DEFAULT_DEADLINE_MS,
            cache_nodes: 0,
            nav_points: NavPoints::default(),
            cluster_codes: Vec::new(),
            model_dir: None,
            max_body_bytes: DEFAULT_MAX_BODY,
            cluster_token: None,
            write_token: None,
            follow_ms: DEFAULT_FOLLOW_MS,
            pull_max_file_bytes: crate::replication::DEFAULT_PULL_MAX_FILE_BYTES,
            pull_min_bytes_per_sec: crate::replication::DEFAULT_PULL_MIN_BYTES_PER_SEC,
            limits: crate::api::Limits::default(),
            admission: crate::admission::AdmissionConfig::default(),
            connections: crate::admission::ConnectionConfig::default(),
            writes: crate::writes::WritesConfig::default(),
        }
    }

    /// What a pull by this node accepts from a peer.
    pub fn pull_limits(&self) -> crate::replication::PullLimits {
        crate::replication::PullLimits {
            max_file_bytes: self.pull_max_file_bytes,
            min_bytes_per_sec: self.pull_min_bytes_per_sec,
            ..Default::default()
        }
    }

    /// The listen address, resolved.
    pub fn listen_addr(&self) -> std::result::Result<SocketAddr, ConfigError> {
        resolve(&self.listen).map_err(|source| ConfigError::Listen {
            listen: self.listen.clone(),
            source,
        })
    }

    /// Checks what can be checked without the index: ids, addresses,
    /// duplicates, limits. The shard ids are checked against the index when
    /// the node opens it.
    pub fn check(&self) -> std::result::Result<(), ConfigError> {
        if self.node_id.trim().is_empty() {
            return Err(ConfigError::EmptyNodeId);
        }
        let listen = self.listen_addr()?;
        if self
            .cluster_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            // Every request would have to carry `Bearer ` and nothing, which
            // no peer sends: the replication endpoints would refuse all.
            return Err(ConfigError::EmptyToken);
        }
        if self.deadline_ms == 0 {
            return Err(ConfigError::TooSmall {
                key: "deadline_ms",
                min: 1,
            });
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::TooSmall {
                key: "max_body_bytes",
                min: 1024,
            });
        }
        if self.pull_min_bytes_per_sec == 0 {
            return Err(ConfigError::TooSmall {
                key: "pull_min_bytes_per_sec",
                min: 1,
            });
        }
        if self.executors == Some(0) {
            return Err(ConfigError::TooSmall {
                key: "executors",
                min: 1,
            });
        }
        let c = &self.connections;
        for (key, value, min) in [
            ("connections.max_streams", u64::from(c.max_streams), 1),
            ("connections.header_timeout_ms", c.header_timeout_ms, 1),
            ("connections.body_timeout_ms", c.body_timeout_ms, 1),
            ("connections.idle_timeout_ms", c.idle_timeout_ms, 1),
            (
                "connections.keepalive_timeout_ms",
                c.keepalive_timeout_ms,
                1,
            ),
        ] {
            if value < min {
                return Err(ConfigError::TooSmall {
                    key,
                    min: min as usize,
                });
            }
        }
        if let Some(shards) = &self.shards {
            no_duplicates("shards", shards)?;
        }
        self.check_coordination()?;
        let mut ids = BTreeSet::from([self.node_id.as_str()]);
        for p in &self.peers {
            if !ids.insert(p.id.as_str()) {
                return Err(ConfigError::DuplicatePeer { id: p.id.clone() });
            }
            let peer_err = |source| ConfigError::PeerAddress {
                id: p.id.clone(),
                address: p.address.clone(),
                source,
            };
            let addrs: Vec<SocketAddr> = p
                .address
                .to_socket_addrs()
                .map_err(|e| peer_err(AddrError::Resolve(e)))?
                .collect();
            if addrs.is_empty() {
                return Err(peer_err(AddrError::NoAddress));
            }
            // The node would forward queries to itself (and pull its own
            // shards from itself); almost always a copied line.
            if addrs.iter().any(|a| is_same_listener(listen, *a)) {
                return Err(ConfigError::PeerIsSelf {
                    id: p.id.clone(),
                    address: p.address.clone(),
                    listen: self.listen.clone(),
                });
            }
            if p.shards.is_empty() {
                return Err(ConfigError::PeerWithoutShards { id: p.id.clone() });
            }
            no_duplicates(&format!("peer {:?} shards", p.id), &p.shards)?;
        }
        Ok(())
    }
}

impl NodeConfig {
    /// `etcd` and `cluster` go together, replace `[[peers]]`, and need
    /// names that can be keys.
    fn check_coordination(&self) -> std::result::Result<(), ConfigError> {
        let Some(endpoints) = &self.etcd else {
            for (key, set) in [
                ("cluster", self.cluster.is_some()),
                ("etcd_user", self.etcd_user.is_some()),
                ("advertise", self.advertise.is_some()),
            ] {
                if set {
                    return Err(ConfigError::Coordination(format!(
                        "{key} is set without etcd"
                    )));
                }
            }
            return Ok(());
        };
        let bad = |why: String| Err(ConfigError::Coordination(why));
        if endpoints.is_empty() {
            return bad("etcd lists no endpoint".into());
        }
        if let Some(e) = endpoints.iter().find(|e| !e.starts_with("http://")) {
            return bad(format!(
                "etcd endpoint {e:?}: give http://host:port (TLS is not supported yet)"
            ));
        }
        if !self.peers.is_empty() {
            return bad("[[peers]] and etcd are both set: with etcd, peers come from etcd".into());
        }
        let Some(cluster) = &self.cluster else {
            return bad("etcd is set without cluster = \"name\"".into());
        };
        crate::coord::keys::check_name("cluster", cluster)
            .and_then(|()| crate::coord::keys::check_name("node_id", &self.node_id))
            .or_else(|e| bad(e.to_string()))?;
        if self.lease_ttl_s < 2 {
            return Err(ConfigError::TooSmall {
                key: "lease_ttl_s",
                min: 2,
            });
        }
        match &self.advertise {
            Some(a) => {
                let addr = resolve(a).map_err(|source| ConfigError::Listen {
                    listen: a.clone(),
                    source,
                })?;
                if addr.ip().is_unspecified() {
                    return bad(format!(
                        "advertise = {a:?} is a wildcard address: give one peers can reach"
                    ));
                }
            }
            None => {
                // Peers reach a node at the address it registers; a
                // wildcard listen address reaches no one.
                if self.listen_addr()?.ip().is_unspecified() {
                    return bad(format!(
                        "listen = {:?} is a wildcard address: set advertise = \"host:port\" to the address peers reach this node at",
                        self.listen
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with a `node.toml`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Parse(#[source] toml::de::Error),
    #[error("node_id is empty")]
    EmptyNodeId,
    #[error("listen = {listen:?}: {source}")]
    Listen {
        listen: String,
        #[source]
        source: AddrError,
    },
    #[error("{key} must be at least {min}")]
    TooSmall { key: &'static str, min: usize },
    #[error("{what}: shard {shard} is listed twice")]
    DuplicateShard { what: String, shard: u32 },
    #[error("peer id {id:?} appears twice (or is this node's id)")]
    DuplicatePeer { id: String },
    #[error("peer {id:?}: address {address:?}: {source}")]
    PeerAddress {
        id: String,
        address: String,
        #[source]
        source: AddrError,
    },
    #[error("peer {id:?} serves no shards")]
    PeerWithoutShards { id: String },
    #[error("{0}")]
    Coordination(String),
    #[error("cluster_token is empty: give a secret, or leave the key out to turn the check off")]
    EmptyToken,
    #[error("peer {id:?}: address {address:?} is this node's own address (listen = {listen:?})")]
    PeerIsSelf {
        id: String,
        address: String,
        listen: String,
    },
}

/// Whether a connection to `peer` would reach a node listening on
/// `listen`: the same address, or the same port when `listen` is a
/// wildcard (`0.0.0.0`, `::`) and `peer` is a loopback address. Port 0
/// (any free port) is never a peer's.
fn is_same_listener(listen: SocketAddr, peer: SocketAddr) -> bool {
    if listen.port() == 0 || listen.port() != peer.port() {
        return false;
    }
    listen.ip() == peer.ip() || (listen.ip().is_unspecified() && peer.ip().is_loopback())
}

/// Why a `host:port` is not an address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    #[error("{0}")]
    Resolve(#[source] std::io::Error),
    #[error("resolves to no address")]
    NoAddress,
}

fn no_duplicates(what: &str, ids: &[u32]) -> std::result::Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    match ids.iter().find(|s| !seen.insert(**s)) {
        Some(&shard) => Err(ConfigError::DuplicateShard {
            what: what.to_string(),
            shard,
        }),
        None => Ok(()),
    }
}

/// `host:port` to a socket address (the first one it resolves to).
pub fn resolve(addr: &str) -> std::result::Result<SocketAddr, AddrError> {
    addr.to_socket_addrs()
        .map_err(AddrError::Resolve)?
        .next()
        .ok_or(AddrError::NoAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
node_id = "n1"
listen = "127.0.0.1:7001"
index_dir = "/data/idx"        # holds shard-0 … shard-N-1 and cluster.json
shards = [0, 1, 2, 3]          # the shards this node serves
[[peers]]
id = "n2"
address = "127.0.0.1:7002"
shards = [2, 3, 4, 5]
"#;

    #[test]
    fn the_readme_example_parses() {
        let c: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        c.check().unwrap();
        assert_eq!(c.shards, Some(vec![0, 1, 2, 3]));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].shards, vec![2, 3, 4, 5]);
        assert_eq!(c.deadline_ms, DEFAULT_DEADLINE_MS);
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str, want: &str| {
            let err = match toml::from_str::<NodeConfig>(text) {
                Err(e) => e.to_string(),
                Ok(c) => c.check().unwrap_err().to_string(),
            };
            assert!(err.contains(want), "{err} should mention {want}");
        };
        bad(&EXAMPLE.replace("7001\"", "notaport\""), "listen");
        bad(
            &EXAMPLE.replace("[0, 1, 2, 3]", "[0, 1, 1]"),
            "shard 1 is listed twice",
        );
        bad(
            &EXAMPLE.replace("id = \"n2\"", "id = \"n1\""),
            "appears twice",
        );
        bad(&EXAMPLE.replace("node_id", "nodeid"), "nodeid");
        bad(&EXAMPLE.replace("[2, 3, 4, 5]", "[]"), "serves no shards");
    }

    /// `[admission]` and `[connections]` parse with every key optional;
    /// an unknown key or a zero bound is refused with its name.
    #[test]
    fn admission_and_connection_tables() {
        let text = format!(
            "{}[admission]\nmax_running = 8\nmax_wait_ms = 100\n[connections]\nmax_connections = 50\nbody_timeout_ms = 250\n",
            EXAMPLE.split("[[peers]]").next().unwrap()
        );
        let c: NodeConfig = toml::from_str(&text).unwrap();
        c.check().unwrap();
        assert_eq!(c.admission.max_running, 8);
        assert_eq!(c.admission.max_queued, crate::admission::DEFAULT_MAX_QUEUED);
        assert_eq!(c.connections.max_connections(), 50);
        assert_eq!(
            c.connections.body_timeout(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            c.connections.max_streams,
            crate::admission::DEFAULT_MAX_STREAMS
        );
        let bad = |text: &str, want: &str| {
            let err = match toml::from_str::<NodeConfig>(text) {
                Err(e) => e.to_string(),
                Ok(c) => c.check().unwrap_err().to_string(),
            };
            assert!(err.contains(want), "{err} should mention {want}");
        };
        bad(&text.replace("max_wait_ms", "max_wiat_ms"), "max_wiat_ms");
        bad(
            &text.replace("body_timeout_ms = 250", "body_timeout_ms = 0"),
            "connections.body_timeout_ms",
        );
        bad(
            &text.replace("max_connections = 50", "max_streams = 0"),
            "connections.max_streams",
        );
    }

    /// An empty token would lock every peer out of the replication
    /// endpoints (no request can carry it), and a peer at this node's own
    /// address would have the node call itself: both refused at load.
    #[test]
    fn an_empty_token_and_a_peer_at_our_own_address_are_refused() {
        let bad = |text: &str, want: &str| {
            let c: NodeConfig = toml::from_str(text).unwrap();
            let err = c.check().unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        };
        bad(
            &EXAMPLE.replace(
                "shards = [0, 1, 2, 3]",
                "shards = [0]\ncluster_token = \"\"",
            ),
            "cluster_token",
        );
        bad(
            &EXAMPLE.replace(
                "shards = [0, 1, 2, 3]",
                "shards = [0]\ncluster_token = \"  \"",
            ),
            "cluster_token",
        );
        bad(
            &EXAMPLE.replace("127.0.0.1:7002", "127.0.0.1:7001"),
            "own address",
        );
        bad(
            &EXAMPLE.replace("127.0.0.1:7002", "localhost:7001"),
            "own address",
        );
        let ok: NodeConfig = toml::from_str(&EXAMPLE.replace(
            "shards = [0, 1, 2, 3]",
            "shards = [0]\ncluster_token = \"s3cret\"",
        ))
        .unwrap();
        ok.check().unwrap();
    }
}
