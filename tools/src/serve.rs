//! `serve`: run one node (see `shardann_server::serve`).

use std::io::Write;

use anyhow::Context;
use shardann_server::NodeConfig;

use crate::cli::{ReplicateArgs, ServeArgs};
use crate::util::human_bytes;

pub fn serve(a: &ServeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut config = match (&a.config, &a.index) {
        (Some(path), _) => NodeConfig::from_file(path)?,
        (None, Some(dir)) => NodeConfig::single(dir, &a.listen),
        (None, None) => anyhow::bail!("serve needs --config node.toml or --index DIR"),
    };
    if let Some(e) = a.executors {
        config.executors = Some(e);
    }
    if let Some(fields) = &a.cluster_codes {
        config.cluster_codes = fields.clone();
    }
    if let Some(r) = a.runtime {
        config.runtime = r;
    }
    if let Some(c) = a.cache_nodes {
        config.cache_nodes = c;
    }
    if let Some(n) = a.nav_points {
        config.nav_points = n;
    }
    if let Some(d) = a.deadline_ms {
        config.deadline_ms = d;
    }
    if let Some(m) = &a.model {
        config.model_dir = Some(m.clone());
    }
    config.check().map_err(anyhow::Error::msg)?;
    let node_id = config.node_id.clone();
    let running =
        shardann_server::start(config).with_context(|| format!("starting node {node_id}"))?;
    let node = &running.node;
    writeln!(
        out,
        "node {node_id} listening on http://{} (HTTP/2 prior knowledge and HTTP/1.1, {} runtime)\n\
         serving shard(s) {:?} of {} ({} points, {}-d {}, {}); peers: {}",
        running.addr,
        running.backend.name(),
        node.local_shards(),
        node.manifest.shards.len(),
        node.manifest.num_points,
        node.manifest.dim,
        node.manifest.elem,
        node.manifest.metric,
        {
            let routing = node.routing();
            let peers: Vec<String> = routing
                .peers
                .iter()
                .filter(|p| p.is_present())
                .map(|p| format!("{} at {} {:?}", p.id, p.addr, p.shards()))
                .collect();
            match (&node.config.cluster, peers.is_empty()) {
                (Some(c), true) => format!("none yet (cluster {c:?} in etcd)"),
                (Some(c), false) => format!("{} (cluster {c:?} in etcd)", peers.join(", ")),
                (None, true) => "none".to_string(),
                (None, false) => peers.join(", "),
            }
        }
    )?;
    writeln!(
        out,
        "writes (POST /v1/documents, deletes): {}, durability {:?}",
        match &node.config.write_token {
            Some(_) => "with the write_token only".to_string(),
            None => "from loopback addresses only (no write_token is set)".to_string(),
        },
        node.config.writes.durability
    )?;
    if let Some(enc) = &node.encoder {
        writeln!(
            out,
            "text queries are embedded with the model in {} ({}-d, up to {} word pieces)",
            node.config
                .model_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display(),
            enc.info().dim,
            enc.info().max_tokens
        )?;
    }
    let unserved = node.unserved_shards();
    if !unserved.is_empty() {
        writeln!(
            out,
            "warning: no node in this configuration serves shard(s) {unserved:?}; every answer will be partial"
        )?;
    }
    out.flush()?;
    running.wait()?;
    Ok(())
}

/// `replicate`: pull one shard from a node, with retries.
pub fn replicate(a: &ReplicateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let addr = shardann_server::client::parse_url(&a.from)?;
    let attempts = a.attempts.max(1);
    let mut wait = std::time::Duration::from_millis(500);
    for attempt in 1..=attempts {
        match shardann_server::replication::pull_blocking(
            addr,
            a.token.clone(),
            a.shard,
            &a.index_dir,
            &shardann_server::replication::PullLimits::default(),
        ) {
            Ok(r) if r.up_to_date => {
                writeln!(out, "shard {} is already at version {}", r.shard, r.version)?;
                return Ok(());
            }
            Ok(r) => {
                let (raw, wire) = (r.raw_bytes(), r.wire_bytes());
                writeln!(
                    out,
                    "shard {} version {}: {} received in {:.2}s ({:.1} MiB/s), {} on the wire (zstd {:.2}x)",
                    r.shard,
                    r.version,
                    human_bytes(raw),
                    r.seconds,
                    raw as f64 / (1 << 20) as f64 / r.seconds.max(1e-9),
                    human_bytes(wire),
                    raw as f64 / wire.max(1) as f64
                )?;
                for (name, raw, wire) in &r.files {
                    if *raw > 0 {
                        writeln!(
                            out,
                            "  {name}: {} -> {} (zstd {:.2}x)",
                            human_bytes(*raw),
                            human_bytes(*wire),
                            *raw as f64 / (*wire).max(1) as f64
                        )?;
                    }
                }
                return Ok(());
            }
            Err(e) if attempt < attempts => {
                eprintln!("attempt {attempt} of {attempts} failed: {e}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "replicating shard {} from {} ({attempts} attempts)",
                    a.shard, a.from
                )))
            }
        }
    }
    Ok(())
}
