//! Following newer versions while serving.

use std::net::SocketAddr;
use std::sync::Arc;
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
    // With etcd, the published versions are in memory (the watcher keeps
    // them): looking at them often costs nothing and asks no peer.
    let interval = if node.coordination.enabled() {
        crate::coord::TICK
    } else {
        std::time::Duration::from_millis(node.config.follow_ms.max(1))
    };
    let mut backoff: std::collections::BTreeMap<u32, (Instant, std::time::Duration)> =
        std::collections::BTreeMap::new();
    let mut quiet: std::collections::BTreeMap<u32, Instant> = std::collections::BTreeMap::new();
    loop {
        crate::rt::sleep(interval).await;
        if !node.coordination.available() {
            // etcd away: no placement or version changes until it is back
            // (the last known ones may be stale; serving goes on).
            continue;
        }
        let local = node.local_shards();
        // With etcd: shards placed here and not served yet are joined
        // (pulled, opened, added); served ones no longer placed here leave.
        let placed = node.coordination.placed();
        let mut wanted = local.clone();
        if let Some(placed) = &placed {
            for &s in &local {
                if placed.contains(&s) {
                    node.coordination.stay(s);
                } else if node.coordination.leave(s) && node.drop_local(s) {
                    node.coordination.stay(s);
                    eprintln!(
                        "node {}: shard {s} is no longer placed here; stopped serving it",
                        node.config.node_id
                    );
                }
            }
            wanted.extend(placed.iter().filter(|s| !local.contains(s)));
        }
        for s in wanted {
            if backoff
                .get(&s)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            let step = if local.contains(&s) {
                follow_shard(&node, s).await
            } else {
                join_shard(&node, s).await
            };
            if step.is_ok() && local.contains(&s) {
                // Writes: every tick (no backoff: a new primary orders no
                // writes until this has run); an error is said at most
                // every 10 s per shard.
                if let Err(e) = crate::primary::catch_up(&node, s).await {
                    let say = quiet.get(&s).is_none_or(|t: &Instant| {
                        t.elapsed() >= std::time::Duration::from_secs(10)
                    });
                    if say {
                        eprintln!(
                            "node {}: shard {s}: catching up its writes: {e}",
                            node.config.node_id
                        );
                        quiet.insert(s, Instant::now());
                    }
                }
            }
            match step {
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

/// Starts serving shard `s`, placed on this node while it serves: the
/// published version (or, with none published, what a peer serves) from
/// local disk when it is there, else pulled from a peer that registered it
/// (verified before `CURRENT` switches); then opened and added. The keeper
/// registers it on its next tick, so no peer routes a query here before
/// it can answer.
async fn join_shard(node: &Node, s: u32) -> Result<()> {
    let Some(dir) = node.shard_dir(s) else {
        return Ok(());
    };
    let on_disk = if dir.join(layout::CURRENT_FILE).exists() {
        Some(shard::current(&dir)?.0)
    } else {
        None
    };
    let want = node.coordination.published(s);
    let fresh = match (on_disk, want) {
        (Some(have), Some(want)) => have >= want,
        (Some(_), None) => true,
        (None, _) => dir.join(layout::INDEX_FILE).exists(),
    };
    if !fresh {
        let source = {
            let routing = node.routing();
            let known = node.peer_versions.lock().unwrap_or_else(|e| e.into_inner());
            routing
                .replicas_of(s)
                .iter()
                .copied()
                .filter(|&p| want.is_none_or(|w| known.get(&(p, s)) == Some(&w)))
                // A peer whose last call failed is asked only when no
                // other has the version.
                .max_by_key(|&p| routing.peers[p].is_up())
                .map(|p| Arc::clone(&routing.peers[p]))
        };
        let Some(peer) = source else {
            return Ok(()); // nobody serves it yet: the next tick looks again
        };
        let r = pull(
            peer.addr,
            node.config.cluster_token.as_deref(),
            s,
            &node.config.index_dir,
            &node.config.pull_limits(),
        )
        .await?;
        node.metrics.add(&node.metrics.pulls, 1);
        eprintln!(
            "node {}: pulled shard {s} version {} from {} ({} bytes in {:.2}s) to serve it",
            node.config.node_id,
            r.version,
            peer.id,
            r.raw_bytes(),
            r.seconds
        );
    }
    let index = node.open_current(s)?;
    let version = index.segment().map_or(0, |m| m.version);
    if node.add_local(s, index) {
        eprintln!(
            "node {}: shard {s} placed here; serving version {version}",
            node.config.node_id
        );
    }
    Ok(())
}

/// The newest version newer than `on_disk` that a peer serving `s` says
/// it serves, and that peer (static mode: every replica is asked).
async fn newest_at_peers(node: &Node, s: u32, on_disk: u64) -> Option<(u64, usize)> {
    let token = node.config.cluster_token.as_deref();
    let routing = node.routing();
    let mut newest: Option<(u64, usize)> = None;
    for &p in routing.replicas_of(s) {
        let Ok(v) = remote_version(routing.peers[p].addr, token, s).await else {
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
    newest
}

async fn follow_shard(node: &Arc<Node>, s: u32) -> Result<()> {
    let Some(dir) = node.shard_dir(s) else {
        return Ok(());
    };
    if !dir.join(layout::CURRENT_FILE).exists() {
        return Ok(()); // a plain index has no versions to follow
    }
    let (mut on_disk, _) = shard::current(&dir)?;
    let token = node.config.cluster_token.as_deref();
    let newest = if node.coordination.enabled() {
        // The published version, from a peer that registered it: known
        // from etcd's watch, no peer is asked.
        node.coordination
            .published(s)
            .filter(|&want| want > on_disk)
            .and_then(|want| {
                let routing = node.routing();
                let known = node.peer_versions.lock().unwrap_or_else(|e| e.into_inner());
                routing
                    .replicas_of(s)
                    .iter()
                    .copied()
                    .filter(|&p| known.get(&(p, s)) == Some(&want))
                    .max_by_key(|&p| routing.peers[p].is_up())
                    .map(|p| (want, p))
            })
    } else {
        newest_at_peers(node, s, on_disk).await
    };
    if let Some((_, p)) = newest {
        let peer = node.peer(p);
        let limits = node.config.pull_limits();
        let r = pull(peer.addr, token, s, &node.config.index_dir, &limits).await?;
        node.metrics.add(&node.metrics.pulls, 1);
        eprintln!(
            "node {}: pulled shard {s} version {} from {} ({} bytes in {:.2}s)",
            node.config.node_id,
            r.version,
            peer.id,
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
    let index = node.open_current(s)?;
    let now = index.segment().map(|m| m.version);
    crate::primary::switch_version(node, s, index).await;
    eprintln!(
        "node {}: shard {s} now serves version {} (was {})",
        node.config.node_id,
        now.unwrap_or(0),
        serving.unwrap_or(0)
    );
    Ok(())
}
