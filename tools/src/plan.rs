//! `plan`: a deployment's shards, nodes and rates, from `engine::capacity`.

use std::io::Write;

use shardann_engine::capacity::{Machine, Rates, Workload};

use crate::cli::{Layout, PlanArgs};
use crate::util::{cores, human_bytes};

pub fn plan(a: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let w = Workload {
        points: a.points,
        dim: a.dim,
        elem: a.elem,
        metric: a.metric,
        pq_bytes: a.pq_bytes,
        max_degree: a.max_degree,
        build_list: a.build_list,
        order: a.layout.order(),
        replicas: a.replicas,
        cache_nodes: a.cache_nodes,
        docs_bytes_per_point: a.docs_bytes_per_point,
    };
    if a.dim == 0 {
        anyhow::bail!("--dim must be at least 1");
    }
    if a.pq_bytes == 0 || a.pq_bytes > a.dim {
        anyhow::bail!("--pq-bytes must be in 1..={} (the dimension)", a.dim);
    }
    let machine = Machine {
        ram_bytes: a.ram_per_node,
        disk_bytes: a.disk_per_node,
        cores: a.cores.unwrap_or(cores() as u32).max(1),
    };
    let measured = Rates::MEASURED;
    let given = |v: Option<f64>, what: &str| -> anyhow::Result<Option<f64>> {
        match v {
            Some(x) if !(x.is_finite() && x > 0.0) => {
                anyhow::bail!("{what} must be a positive number, got {x}")
            }
            v => Ok(v),
        }
    };
    let rates = Rates {
        disk_reads_per_s: given(a.disk_iops, "--disk-iops")?.unwrap_or(measured.disk_reads_per_s),
        reads_per_query_1m: given(a.reads_per_query, "--reads-per-query")?
            .unwrap_or(measured.reads_per_query_1m),
        build_us_per_point_core: given(a.build_us_per_point, "--build-us-per-point")?
            .unwrap_or(measured.build_us_per_point_core),
        ..measured
    };
    let p = w.plan(&machine, &rates, a.shards)?;
    if a.json {
        let v = serde_json::json!({
            "plan": p,
            "rates": {
                "build_us_per_point_core": rates.build_us_per_point_core,
                "build_bytes_per_point": "row + 1.3·R·4 + extra",
                "build_extra_bytes_per_point": rates.build_extra_bytes_per_point,
                "build_fixed_bytes": rates.build_fixed_bytes,
                "reads_per_query_1m": rates.reads_per_query_1m,
                "disk_reads_per_s": rates.disk_reads_per_s,
                "cpu_us_per_query": rates.cpu_us_per_query,
                "runtime_bytes": rates.runtime_bytes,
            },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let source = |v: Option<f64>| {
        if v.is_some() {
            "given"
        } else {
            "measured here"
        }
    };
    let layout = match a.layout {
        Layout::V1 => "v1",
        Layout::V2 => "v2",
    };
    let s = &p.shard;
    writeln!(
        out,
        "plan for {} points of {}-d {} ({}), R {}, L {}, {} PQ bytes, layout {}, {} replica(s), on nodes of {} RAM{} and {} cores",
        a.points,
        a.dim,
        a.elem,
        a.metric.name(),
        a.max_degree,
        a.build_list,
        a.pq_bytes,
        layout,
        a.replicas,
        human_bytes(a.ram_per_node),
        a.disk_per_node.map_or(String::new(), |d| format!(", {} disk", human_bytes(d))),
        machine.cores
    )?;
    writeln!(
        out,
        "shards     {} of {} points (set by {})",
        p.shards, s.points, p.limited_by
    )?;
    writeln!(
        out,
        "nodes      {}, each serving {} shard cop{}",
        p.nodes,
        p.shards_per_node,
        if p.shards_per_node == 1 { "y" } else { "ies" }
    )?;
    writeln!(
        out,
        "per shard  disk {}; RAM at search {} (PQ codes, ids, slot table, navigation graph, cache{}); \
         build peak {}, build time {} on one node",
        human_bytes(s.disk_bytes),
        human_bytes(s.search_ram_bytes),
        if a.docs_bytes_per_point > 0 { ", document ids" } else { "" },
        human_bytes(s.build_ram_bytes),
        human_duration(s.build_seconds)
    )?;
    writeln!(
        out,
        "per node   RAM {} at search (with {} of runtime), disk {}",
        human_bytes(p.node_ram_bytes),
        human_bytes(rates.runtime_bytes),
        human_bytes(p.node_disk_bytes)
    )?;
    writeln!(
        out,
        "queries/s  {:.0} per node at recall@10 0.95 ({:.1} reads per query per shard, {} shard(s) per node, {:.0} reads/s); \
         {:.0} for the cluster (every query asks all {} shards)",
        p.node_qps,
        s.reads_per_query,
        p.shards_per_node,
        rates.disk_reads_per_s,
        p.cluster_qps,
        p.shards
    )?;
    writeln!(
        out,
        "rates      build {:.0} µs per point per core at 1M, grown as n·log n ({}); build memory {} + (row + 1.3·R·4 + {:.0}) B per point \
         (measured here); {:.1} reads per query at 1M, grown as log n ({}); disk {:.0} reads/s ({}); {:.0} µs CPU per query and shard \
         at 1M (measured here). A build needs a machine with the build peak in RAM: shards are sized so that one node can build one. \
         bench-datasets/CAPACITY.md compares these predictions with measurements.",
        rates.build_us_per_point_core,
        source(a.build_us_per_point),
        human_bytes(rates.build_fixed_bytes),
        rates.build_extra_bytes_per_point,
        rates.reads_per_query_1m,
        source(a.reads_per_query),
        rates.disk_reads_per_s,
        source(a.disk_iops),
        rates.cpu_us_per_query
    )?;
    Ok(())
}

/// `42 s`, `17 min`, `3.2 h`.
fn human_duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
