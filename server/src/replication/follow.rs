//! Following newer versions while serving.

use std::net::SocketAddr;
use std::time::Instant;

use shardann_engine::layout;
use shardann_engine::shard;

use super::pull::{get_bytes, pull, remote_manifest, MANIFEST_LIMIT};
use super::VERSION_TIMEOUT;
use crate::error::{Result, ServerError};
use crate::http::{self, PeerError};
use crate::node::Node;
use crate::rt::until;

/// The version of shard `shard` the node at `addr` serves now.
/// Gives up after [`VERSION_TIMEOUT`]: the follower asks every peer in
/// turn, and one that hangs must not stall the others.
pub async fn remote_version(addr: SocketAddr, token: Option<&str>, shard: u32) -> Result<u64> {
    // The deadline below decides; the connection's and the request's own
    // timeouts are longer, so that a hung peer always gets the same error
    // (with equal timeouts, whichever timer fired first named it).
    let inner = VERSION_TIMEOUT * 2;
    let ask = async {
        let mut sender = http::connect(addr, inner)
            .await
            .map_err(|source| ServerError::Peer { addr, source })?;
        get_bytes(
            &mut sender,
            addr,
            token,
            &format!("/v1/shards/{shard}/manifest"),
            MANIFEST_LIMIT,
            inner,
        )
        .await
    };
    let bytes = until(Instant::now() + VERSION_TIMEOUT, ask)
        .await
        .unwrap_or_else(|| {
            Err(ServerError::Peer {
                addr,
                source: PeerError::Timeout {
                    what: "manifest",
                    after: VERSION_TIMEOUT,
                },
            })
        })?;
    Ok(remote_manifest(addr, shard, &bytes)?.version)
}

/// Follows newer versions of the node's shards while it serves: every
/// `follow_ms`, for each local shard, pulls a newer version from a peer
/// that has one, and switches to the newest version on disk (pulled, or
/// built locally). A failed pull leaves the old version serving and is
/// retried after a backoff that doubles up to a minute. Retired versions
/// are removed once no query holds them.
pub async fn follow(node: std::sync::Arc<Node>) {
    let interval = std::time::Duration::from_millis(node.config.follow_ms.max(1));
    let mut backoff: std::collections::BTreeMap<u32, (Instant, std::time::Duration)> =
        std::collections::BTreeMap::new();
    loop {
        crate::rt::sleep(interval).await;
        for s in node.local_shards() {
            if backoff
                .get(&s)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            match follow_shard(&node, s).await {
                Ok(()) => {
                    backoff.remove(&s);
                }
                Err(e) => {
                    node.metrics.add(&node.metrics.pull_failures, 1);
                    let wait = backoff.get(&s).map_or(interval, |(_, w)| {
                        (*w * 2).min(std::time::Duration::from_secs(60))
                    });
                    eprintln!(
                        "node {}: shard {s}: {e}; still serving the current version, retrying in {wait:?}",
                        node.config.node_id
                    );
                    backoff.insert(s, (Instant::now() + wait, wait));
                }
            }
        }
        for dir in node.collect() {
            eprintln!(
                "node {}: removed retired version {}",
                node.config.node_id,
                dir.display()
            );
        }
    }
}

async fn follow_shard(node: &Node, s: u32) -> Result<()> {
    let Some(dir) = node.shard_dir(s) else {
        return Ok(());
    };
    if !dir.join(layout::CURRENT_FILE).exists() {
        return Ok(()); // a plain index has no versions to follow
    }
    let (mut on_disk, _) = shard::current(&dir)?;
    let token = node.config.cluster_token.as_deref();
    let mut newest: Option<(u64, usize)> = None;
    for &p in node.replica_indices(s) {
        let Ok(v) = remote_version(node.peers[p].addr, token, s).await else {
            continue; // a peer that is down is the searches' concern
        };
        node.peer_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((p, s), v);
        if v > on_disk && newest.is_none_or(|(best, _)| v > best) {
            newest = Some((v, p));
        }
    }
    if let Some((_, p)) = newest {
        let limits = node.config.pull_limits();
        let r = pull(
            node.peers[p].addr,
            token,
            s,
            &node.config.index_dir,
            &limits,
        )
        .await?;
        node.metrics.add(&node.metrics.pulls, 1);
        eprintln!(
            "node {}: pulled shard {s} version {} from {} ({} bytes in {:.2}s)",
            node.config.node_id,
            r.version,
            node.peers[p].id,
            r.raw_bytes(),
            r.seconds
        );
        on_disk = r.version;
    }
    let serving = node
        .local_shard(s)
        .and_then(|i| i.segment().map(|m| m.version));
    if serving.is_some_and(|v| v >= on_disk) {
        return Ok(());
    }
    let opts = shardann_engine::index::OpenOptions {
        cache_nodes: node.config.cache_nodes,
        nav_points: node.config.nav_points,
        ..shardann_engine::index::OpenOptions::buffered()
    };
    let mut index = node
        .manifest
        .open_shard(&node.config.index_dir, s as usize, opts)?;
    index.cluster_codes(&node.config.cluster_codes)?;
    let now = index.segment().map(|m| m.version);
    node.swap(s, index);
    node.metrics.add(&node.metrics.version_switches, 1);
    eprintln!(
        "node {}: shard {s} now serves version {} (was {})",
        node.config.node_id,
        now.unwrap_or(0),
        serving.unwrap_or(0)
    );
    Ok(())
}
