//! `serve`: run one node (see `shardann_server::serve`).

use std::io::Write;

use anyhow::Context;
use shardann_server::NodeConfig;

use crate::cli::ServeArgs;

pub fn serve(a: &ServeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut config = match (&a.config, &a.index) {
        (Some(path), _) => NodeConfig::from_file(path)?,
        (None, Some(dir)) => NodeConfig::single(dir, &a.listen),
        (None, None) => anyhow::bail!("serve needs --config node.toml or --index DIR"),
    };
    if let Some(e) = a.executors {
        config.executors = Some(e);
    }
    if let Some(c) = a.cache_nodes {
        config.cache_nodes = c;
    }
    if let Some(d) = a.deadline_ms {
        config.deadline_ms = d;
    }
    config.check().map_err(anyhow::Error::msg)?;
    let node_id = config.node_id.clone();
    let running =
        shardann_server::start(config).with_context(|| format!("starting node {node_id}"))?;
    let node = &running.node;
    writeln!(
        out,
        "node {node_id} listening on http://{} (HTTP/2 prior knowledge and HTTP/1.1)\n\
         serving shard(s) {:?} of {} ({} points, {}-d {}, {}); peers: {}",
        running.addr,
        node.local_shards(),
        node.manifest.shards.len(),
        node.manifest.num_points,
        node.manifest.dim,
        node.manifest.elem,
        node.manifest.metric,
        if node.peers.is_empty() {
            "none".to_string()
        } else {
            node.peers
                .iter()
                .map(|p| format!("{} at {} {:?}", p.id, p.addr, p.shards))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )?;
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
