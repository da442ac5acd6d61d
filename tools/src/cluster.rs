//! `cluster init` and `cluster status`: a cluster's keys in etcd.

use std::io::Write;

use anyhow::{bail, Context};
use shardann_engine::cluster::{read_manifest, ClusterManifest};
use shardann_engine::layout::CURRENT_FILE;
use shardann_server::coord::keys::Published;
use shardann_server::coord::{read_view, ClusterView, Keys, CALL_TIMEOUT};
use shardann_server::etcd::{Compare, Credentials, Etcd};

use crate::cli::{
    ClusterDrainArgs, ClusterInitArgs, ClusterPlaceArgs, ClusterStatusArgs, EtcdArgs,
};

fn client(a: &EtcdArgs) -> anyhow::Result<(Etcd, Keys)> {
    let keys = Keys::new(&a.name)?;
    if let Some(e) = a.etcd.iter().find(|e| !e.starts_with("http://")) {
        bail!("--etcd {e:?}: give http://HOST:PORT (TLS is not supported yet)");
    }
    let credentials = a.etcd_user.as_ref().map(|user| Credentials {
        user: user.clone(),
        password: a.etcd_password.clone().unwrap_or_default(),
    });
    Ok((Etcd::new(&a.etcd, CALL_TIMEOUT, credentials)?, keys))
}

/// `cluster init`: cluster.json and the shards' current versions.
pub fn init(a: &ClusterInitArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let manifest = read_manifest(&a.index).with_context(|| {
        format!(
            "{}: not a sharded index (cluster init publishes what `build --shards N` writes)",
            a.index.display()
        )
    })?;
    let bytes = std::fs::read(a.index.join(shardann_engine::layout::CLUSTER_FILE))?;
    let (etcd, keys) = client(&a.etcd)?;
    let view = read_view(&etcd, &a.etcd.name)?;
    if let Some(theirs) = view.manifest() {
        let same = theirs.ok().as_ref() == Some(&manifest);
        if !same && !a.force {
            bail!(
                "cluster {:?} already holds another index's cluster.json; \
                 --force replaces it (its nodes would then refuse to start on their old index)",
                a.etcd.name
            );
        }
    }
    etcd.put(&keys.cluster(), &bytes, None)?;
    writeln!(
        out,
        "cluster {:?}: cluster.json published ({} shards, {} points, {}-d {}, {})",
        a.etcd.name,
        manifest.shards.len(),
        manifest.num_points,
        manifest.dim,
        manifest.elem,
        manifest.metric
    )?;
    for info in &manifest.shards {
        let dir = a.index.join(&info.dir);
        if !dir.join(CURRENT_FILE).exists() {
            writeln!(
                out,
                "shard {}: a plain index (no versions to publish)",
                info.id
            )?;
            continue;
        }
        let (version, _) = shardann_engine::shard::current(&dir)?;
        let cond = match view.versions.get(&info.id) {
            Some(&(v, _)) if v >= version => {
                writeln!(
                    out,
                    "shard {}: version {v} is published already (the index has {version}); left as it is",
                    info.id
                )?;
                continue;
            }
            Some(&(_, rev)) => Compare::ModRevision(rev),
            None => Compare::Absent,
        };
        let value = serde_json::to_vec(&Published { version })?;
        if !etcd.put_if(&keys.version(info.id), cond, &value, None)? {
            bail!(
                "shard {}: the published version changed while this ran; run cluster init again",
                info.id
            );
        }
        writeln!(out, "shard {}: version {version} published", info.id)?;
    }
    Ok(())
}

/// One shard's line of `cluster status`.
#[derive(Debug, serde::Serialize)]
struct ShardStatus {
    id: u32,
    /// The published version (null: none published, e.g. a plain index).
    version: Option<u64>,
    /// Live nodes serving it at the published version (any version when
    /// none is published).
    replicas: Vec<String>,
    /// Every live node serving it, with the version it serves.
    serving: std::collections::BTreeMap<String, u64>,
    placed: Vec<String>,
    under_replicated: bool,
    /// The node ordering its writes (null: none claimed it).
    primary: Option<String>,
}

fn shard_status(view: &ClusterView, id: u32) -> ShardStatus {
    let version = view.published(id);
    let serving: std::collections::BTreeMap<String, u64> = view
        .serving(id)
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let replicas: Vec<String> = serving
        .iter()
        .filter(|(_, &v)| version.is_none_or(|want| v == want))
        .map(|(n, _)| n.clone())
        .collect();
    let placed: Vec<String> = view
        .placement
        .get(&id)
        .map(|p| p.iter().cloned().collect())
        .unwrap_or_default();
    ShardStatus {
        id,
        version,
        under_replicated: replicas.len() < placed.len().max(1),
        primary: view.primaries.get(&id).cloned(),
        replicas,
        serving,
        placed,
    }
}

/// `cluster status`.
pub fn status(a: &ClusterStatusArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (etcd, _) = client(&a.etcd)?;
    let view = read_view(&etcd, &a.etcd.name)?;
    let manifest: Option<ClusterManifest> = view
        .manifest()
        .transpose()
        .context("the cluster.json in etcd is not readable")?;
    let shard_ids: Vec<u32> = match &manifest {
        Some(m) => m.shards.iter().map(|s| s.id).collect(),
        None => view.versions.keys().copied().collect(),
    };
    let shards: Vec<ShardStatus> = shard_ids.iter().map(|&s| shard_status(&view, s)).collect();
    let nodes: Vec<serde_json::Value> = view
        .nodes
        .values()
        .map(|n| {
            let r = &n.registration;
            serde_json::json!({
                "id": r.id,
                "address": r.address,
                "shards": r.shards.iter().map(|s| s.id).collect::<Vec<_>>(),
                "versions": r.shards.iter().map(|s| (s.id.to_string(), s.version.into()))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
                "lease": n.lease.to_string(),
            })
        })
        .collect();
    if a.json {
        let v = serde_json::json!({
            "cluster": a.etcd.name,
            "initialised": manifest.is_some(),
            "nodes": nodes,
            "shards": shards,
            "under_replicated": shards.iter().filter(|s| s.under_replicated).map(|s| s.id).collect::<Vec<_>>(),
            "unreadable": view.unreadable,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    match &manifest {
        None => writeln!(
            out,
            "cluster {:?}: not initialised (no cluster.json in etcd; run `shardann cluster init`)",
            a.etcd.name
        )?,
        Some(m) => writeln!(
            out,
            "cluster {:?}: {} shards, {} points, {}-d {}, {}",
            a.etcd.name,
            m.shards.len(),
            m.num_points,
            m.dim,
            m.elem,
            m.metric
        )?,
    }
    writeln!(out, "nodes ({} live):", view.nodes.len())?;
    for n in view.nodes.values() {
        let r = &n.registration;
        let served: Vec<String> = r
            .shards
            .iter()
            .map(|s| format!("{}@v{}", s.id, s.version))
            .collect();
        writeln!(
            out,
            "  {:<12} {:<22} lease {:<20} shards {}",
            r.id,
            r.address,
            n.lease,
            served.join(" ")
        )?;
    }
    writeln!(out, "shards:")?;
    for s in &shards {
        writeln!(
            out,
            "  {:<4} version {:<6} replicas [{}]{}{}",
            s.id,
            s.version.map_or("-".to_string(), |v| v.to_string()),
            s.replicas.join(", "),
            s.primary
                .as_ref()
                .map_or(String::new(), |p| format!("  primary {p}")),
            if s.under_replicated {
                "  UNDER-REPLICATED"
            } else {
                ""
            }
        )?;
    }
    for (key, why) in &view.unreadable {
        writeln!(out, "unreadable: {key}: {why}")?;
    }
    Ok(())
}

/// The cluster's view, refused when it was never initialised.
fn initialised(etcd: &Etcd, a: &EtcdArgs) -> anyhow::Result<(ClusterView, ClusterManifest)> {
    let view = read_view(etcd, &a.name)?;
    let Some(manifest) = view.manifest() else {
        bail!(
            "cluster {:?} is not initialised in etcd: run `shardann cluster init` first",
            a.name
        );
    };
    let manifest = manifest.context("the cluster.json in etcd is not readable")?;
    Ok((view, manifest))
}

/// `cluster place`.
pub fn place(a: &ClusterPlaceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (etcd, keys) = client(&a.etcd)?;
    shardann_server::coord::keys::check_name("node id", &a.node)?;
    let (view, manifest) = initialised(&etcd, &a.etcd)?;
    if a.shard as usize >= manifest.shards.len() {
        bail!(
            "shard {} does not exist: cluster {:?} has {} shards",
            a.shard,
            a.etcd.name,
            manifest.shards.len()
        );
    }
    let placed = view.placement.get(&a.shard).cloned().unwrap_or_default();
    let key = keys.placement(a.shard, &a.node);
    if a.remove {
        if !placed.contains(&a.node) {
            writeln!(
                out,
                "shard {} is not placed on {}; nothing to do",
                a.shard, a.node
            )?;
            return Ok(());
        }
        if !view.served_elsewhere(a.shard, &a.node) && !a.force {
            bail!(
                "no live node other than {} serves shard {} at its published version: \
                 removing it leaves the shard unserved (answers would be partial); \
                 place it elsewhere and wait until that node serves it (`cluster status`), or --force",
                a.node,
                a.shard
            );
        }
        etcd.delete(&key)?;
        writeln!(
            out,
            "shard {} taken off {}: it leaves routing now and stops serving it within about a second",
            a.shard, a.node
        )?;
        return Ok(());
    }
    etcd.put(&key, b"{}", None)?;
    let live = view.nodes.contains_key(&a.node);
    writeln!(
        out,
        "shard {} placed on {}{}",
        a.shard,
        a.node,
        if live {
            ": it pulls the shard if needed, then serves it (see `cluster status`)"
        } else {
            " (not live now: it serves the shard when it starts)"
        }
    )?;
    Ok(())
}

/// `cluster drain`.
pub fn drain(a: &ClusterDrainArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (etcd, keys) = client(&a.etcd)?;
    shardann_server::coord::keys::check_name("node id", &a.node)?;
    let (view, _) = initialised(&etcd, &a.etcd)?;
    let mine: Vec<u32> = view
        .placement
        .iter()
        .filter(|(_, nodes)| nodes.contains(&a.node))
        .map(|(&s, _)| s)
        .collect();
    let orphans: Vec<u32> = mine
        .iter()
        .copied()
        .filter(|&s| !view.served_elsewhere(s, &a.node))
        .collect();
    if !orphans.is_empty() && !a.force {
        bail!(
            "no live node other than {} serves shard(s) {orphans:?} at the published version: \
             draining it leaves them unserved; place them elsewhere and wait until they are served \
             (`cluster status`), or --force",
            a.node
        );
    }
    for &s in &mine {
        etcd.delete(&keys.placement(s, &a.node))?;
    }
    writeln!(
        out,
        "{} drained: shard(s) {mine:?} taken off; it leaves routing now and stops serving them within about a second",
        a.node
    )?;
    Ok(())
}
