//! The keys a cluster keeps in etcd, and the view of the cluster they give.
//! Normative description: `format-spec/etcd.md`.
//!
//! ```text
//! /shardann/<cluster>/cluster              cluster.json, byte for byte
//! /shardann/<cluster>/versions/<shard>     {"version": 2}            the published version
//! /shardann/<cluster>/nodes/<node id>      {"id", "address", "shards": [{"id", "version"}]}
//!                                          under the node's lease: gone when it stops renewing
//! /shardann/<cluster>/placement/<shard>/<node id>   {}               the desired placement
//! /shardann/<cluster>/primary/<shard>      {"node": "<node id>"}     the shard's write primary,
//!                                          under its lease: gone when it stops renewing
//! ```
//!
//! Shard ids in keys are plain decimal (`versions/12`), so a prefix range
//! lists them in string order; the view sorts them as numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shardann_engine::cluster::ClusterManifest;

use crate::etcd::{Event, KeyValue};
use crate::node::PeerEntry;

/// The root of every shardann cluster's keys.
pub const ROOT: &str = "/shardann/";

/// Why a cluster or node name cannot be part of a key.
#[derive(Debug, thiserror::Error)]
#[error("{what} {name:?} cannot name an etcd key: use 1-64 of A-Z a-z 0-9 . _ -")]
pub struct BadName {
    pub what: &'static str,
    pub name: String,
}

/// Checks a cluster or node name: it becomes one segment of a key.
pub fn check_name(what: &'static str, name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Result<Self, BadName> {
        check_name("cluster name", cluster)?;
        Ok(Keys {
            prefix: format!("{ROOT}{cluster}/"),
        })
    }

    /// Every key of the cluster starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn cluster(&self) -> String {
        format!("{}cluster", self.prefix)
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    pub fn version(&self, shard: u32) -> String {
        format!("{}versions/{shard}", self.prefix)
    }

    pub fn placement(&self, shard: u32, node: &str) -> String {
        format!("{}placement/{shard}/{node}", self.prefix)
    }

    pub fn primary(&self, shard: u32) -> String {
        format!("{}primary/{shard}", self.prefix)
    }
}

/// A shard's write primary: the node that orders its writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primary {
    pub node: String,
}

/// One shard a node serves, and the version it serves (0: a plain index,
/// which has no versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardVersion {
    pub id: u32,
    pub version: u64,
}

/// A node's registration: what it serves now, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    /// `host:port` of its listener.
    pub address: String,
    pub shards: Vec<ShardVersion>,
}

/// A published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub version: u64,
}

/// A registered node and the lease it is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub registration: Registration,
    pub lease: i64,
}

/// What the keys of one cluster say, built from a range read and kept
/// current by a watch's events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// `cluster.json`'s bytes, once `cluster init` wrote them.
    pub cluster: Option<Vec<u8>>,
    /// Live nodes by id (a key exists only while its lease lives).
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Per shard: the published version and the key's mod revision (for a
    /// compare-and-set publish).
    pub versions: BTreeMap<u32, (u64, i64)>,
    /// Per shard: the nodes it is placed on.
    pub placement: BTreeMap<u32, BTreeSet<String>>,
    /// Per shard: its write primary (a key under the primary's lease).
    pub primaries: BTreeMap<u32, String>,
    /// Values that could not be read, by key (reported by `cluster status`).
    pub unreadable: BTreeMap<String, String>,
}

impl ClusterView {
    /// The view of `kvs`, the keys under `keys.prefix()`.
    pub fn from_kvs(keys: &Keys, kvs: &[KeyValue]) -> Self {
        let mut view = ClusterView::default();
        for kv in kvs {
            view.put(keys, kv);
        }
        view
    }

    /// Applies a watch's events, in order.
    pub fn apply(&mut self, keys: &Keys, events: &[Event]) {
        for e in events {
            match e {
                Event::Put(kv) => self.put(keys, kv),
                Event::Delete { key, .. } => self.delete(keys, key),
            }
        }
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) {
        self.unreadable.remove(&kv.key);
        let mut bad = |why: String| {
            self.unreadable.insert(kv.key.clone(), why);
        };
        match Key::parse(keys, &kv.key) {
            Some(Key::Cluster) => self.cluster = Some(kv.value.clone()),
            Some(Key::Node(id)) => match serde_json::from_slice::<Registration>(&kv.value) {
                Ok(r) if r.id == id => {
                    self.nodes.insert(
                        id,
                        NodeEntry {
                            registration: r,
                            lease: kv.lease,
                        },
                    );
                }
                Ok(r) => bad(format!(
                    "registration of {:?} under the key of {id:?}",
                    r.id
                )),
                Err(e) => bad(e.to_string()),
            },
            Some(Key::Version(s)) => match serde_json::from_slice::<Published>(&kv.value) {
                Ok(p) => {
                    self.versions.insert(s, (p.version, kv.mod_revision));
                }
                Err(e) => bad(e.to_string()),
            },
            Some(Key::Placement(s, node)) => {
                self.placement.entry(s).or_default().insert(node);
            }
            Some(Key::Primary(s)) => match serde_json::from_slice::<Primary>(&kv.value) {
                Ok(p) => {
                    self.primaries.insert(s, p.node);
                }
                Err(e) => bad(e.to_string()),
            },
            None => {} // another tool's key, or a reserved one
        }
    }

    fn delete(&mut self, keys: &Keys, key: &str) {
        self.unreadable.remove(key);
        match Key::parse(keys, key) {
            Some(Key::Cluster) => self.cluster = None,
            Some(Key::Node(id)) => {
                self.nodes.remove(&id);
            }
            Some(Key::Version(s)) => {
                self.versions.remove(&s);
            }
            Some(Key::Placement(s, node)) => {
                if let Some(set) = self.placement.get_mut(&s) {
                    set.remove(&node);
                    if set.is_empty() {
                        self.placement.remove(&s);
                    }
                }
            }
            Some(Key::Primary(s)) => {
                self.primaries.remove(&s);
            }
            None => {}
        }
    }

    /// The registered nodes as routing entries; a node whose address does
    /// not resolve is left out (and named in the returned list).
    pub fn peer_entries(&self) -> (Vec<PeerEntry>, Vec<String>) {
        let mut entries = Vec::new();
        let mut unresolved = Vec::new();
        for (id, n) in &self.nodes {
            match crate::config::resolve(&n.registration.address) {
                Ok(addr) => entries.push(PeerEntry {
                    id: id.clone(),
                    addr,
                    shards: n
                        .registration
                        .shards
                        .iter()
                        .map(|s| (s.id, s.version))
                        .collect(),
                }),
                Err(_) => unresolved.push(id.clone()),
            }
        }
        (entries, unresolved)
    }

    /// The cluster's `cluster.json`, parsed: None before `cluster init`.
    pub fn manifest(&self) -> Option<Result<ClusterManifest, serde_json::Error>> {
        self.cluster.as_deref().map(serde_json::from_slice)
    }

    /// Whether a live node other than `node` serves shard `s` at its
    /// published version (at any version when none is published): what
    /// must hold before `node` may stop serving it without leaving it
    /// unserved.
    pub fn served_elsewhere(&self, s: u32, node: &str) -> bool {
        let want = self.published(s);
        self.serving(s)
            .into_iter()
            .any(|(id, v)| id != node && want.is_none_or(|w| v == w))
    }

    /// The published version of shard `s`.
    pub fn published(&self, s: u32) -> Option<u64> {
        self.versions.get(&s).map(|&(v, _)| v)
    }

    /// The live nodes serving shard `s`, with the version each serves.
    pub fn serving(&self, s: u32) -> Vec<(&str, u64)> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| {
                n.registration
                    .shards
                    .iter()
                    .find(|sv| sv.id == s)
                    .map(|sv| (id.as_str(), sv.version))
            })
            .collect()
    }
}

/// A key of the layout, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Cluster,
    Node(String),
    Version(u32),
    Placement(u32, String),
    Primary(u32),
}

impl Key {
    fn parse(keys: &Keys, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(keys.prefix())?;
        if rest == "cluster" {
            return Some(Key::Cluster);
        }
        let shard = |s: &str| -> Option<u32> {
            // One canonical decimal form: `07` names no shard.
            let n: u32 = s.parse().ok()?;
            (n.to_string() == s).then_some(n)
        };
        let mut parts = rest.split('/');
        let key = match (parts.next()?, parts.next()?, parts.next()) {
            ("nodes", id, None) if check_name("node id", id).is_ok() => Key::Node(id.to_string()),
            ("versions", s, None) => Key::Version(shard(s)?),
            ("primary", s, None) => Key::Primary(shard(s)?),
            ("placement", s, Some(node)) if check_name("node id", node).is_ok() => {
                Key::Placement(shard(s)?, node.to_string())
            }
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

/// The registration a node writes: its id, the address peers reach it at,
/// and the version of each shard it serves.
pub fn registration(id: &str, address: SocketAddr, shards: &[(u32, u64)]) -> Registration {
    Registration {
        id: id.to_string(),
        address: address.to_string(),
        shards: shards
            .iter()
            .map(|&(id, version)| ShardVersion { id, version })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: 7,
        }
    }

    #[test]
    fn names_that_would_break_a_key_are_refused() {
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Keys::new("prod-1.a_b").unwrap().node("n1"),
            "/shardann/prod-1.a_b/nodes/n1"
        );
    }

    #[test]
    fn the_view_follows_puts_and_deletes() {
        let keys = Keys::new("c").unwrap();
        let reg = r#"{"id":"n1","address":"127.0.0.1:7001","shards":[{"id":0,"version":3}]}"#;
        let mut view = ClusterView::from_kvs(
            &keys,
            &[
                kv("/shardann/c/cluster", "{}", 1),
                kv("/shardann/c/nodes/n1", reg, 2),
                kv("/shardann/c/versions/0", r#"{"version":3}"#, 3),
                kv("/shardann/c/versions/07", r#"{"version":9}"#, 3),
                kv("/shardann/c/placement/0/n1", "{}", 4),
                kv("/shardann/c/nodes/n2", "not json", 5),
                kv("/shardann/other/nodes/n9", reg, 6),
            ],
        );
        assert_eq!(view.cluster.as_deref(), Some(&b"{}"[..]));
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.nodes["n1"].lease, 7);
        assert_eq!(view.published(0), Some(3));
        assert_eq!(view.versions.len(), 1, "07 is not a shard id");
        assert_eq!(view.serving(0), vec![("n1", 3)]);
        assert!(view.served_elsewhere(0, "n2"));
        assert!(!view.served_elsewhere(0, "n1"), "n1 is the only one");
        assert!(view.unreadable.contains_key("/shardann/c/nodes/n2"));
        let (entries, unresolved) = view.peer_entries();
        assert_eq!(entries[0].shards, vec![(0, 3)]);
        assert!(unresolved.is_empty());

        view.apply(
            &keys,
            &[
                Event::Delete {
                    key: "/shardann/c/nodes/n1".into(),
                    mod_revision: 8,
                },
                Event::Put(kv("/shardann/c/versions/0", r#"{"version":4}"#, 9)),
                Event::Delete {
                    key: "/shardann/c/placement/0/n1".into(),
                    mod_revision: 10,
                },
            ],
        );
        assert!(view.nodes.is_empty());
        assert!(!view.served_elsewhere(0, "n2"), "n1 is gone");
        assert_eq!(view.versions[&0], (4, 9));
        assert!(view.placement.is_empty());
    }

    #[test]
    fn the_view_holds_each_shards_write_primary() {
        let keys = Keys::new("c").unwrap();
        assert_eq!(keys.primary(3), "/shardann/c/primary/3");
        let mut view = ClusterView::from_kvs(
            &keys,
            &[
                kv("/shardann/c/primary/0", r#"{"node":"n2"}"#, 1),
                kv("/shardann/c/primary/1", "n3", 2),
                kv("/shardann/c/primary/01", r#"{"node":"n9"}"#, 3),
            ],
        );
        assert_eq!(view.primaries.len(), 1, "{:?}", view.primaries);
        assert_eq!(view.primaries[&0], "n2");
        assert!(view.unreadable.contains_key("/shardann/c/primary/1"));
        view.apply(
            &keys,
            &[
                Event::Delete {
                    key: "/shardann/c/primary/0".into(),
                    mod_revision: 4,
                },
                Event::Put(kv("/shardann/c/primary/1", r#"{"node":"n1"}"#, 5)),
            ],
        );
        assert_eq!(view.primaries.get(&0), None, "its lease lapsed");
        assert_eq!(view.primaries[&1], "n1");
        assert!(view.unreadable.is_empty());
    }

    #[test]
    fn a_registration_under_another_nodes_key_is_not_believed() {
        let keys = Keys::new("c").unwrap();
        let reg = r#"{"id":"n2","address":"127.0.0.1:7001","shards":[]}"#;
        let view = ClusterView::from_kvs(&keys, &[kv("/shardann/c/nodes/n1", reg, 2)]);
        assert!(view.nodes.is_empty());
        assert_eq!(view.unreadable.len(), 1);
    }
}
