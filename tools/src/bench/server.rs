//! `bench --server URL`: the same runs as in process, sent to a node's
//! HTTP/2 endpoint (`/v1/search`, or `/v1/search/batch` with `--batch N`)
//! from client executors with several requests in flight each.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use shardann_engine::data::{GroundTruth, VectorFile};
use shardann_engine::search::SearchStats;
use shardann_engine::Element;
use shardann_server::client::{
    exchange, parse_url, search_many_batched, HttpParams, Request, Version,
};

use super::report::{BenchReport, Execution, QueryOutcome, Searched};
use super::{check_gt, run_lists};
use crate::cli::BenchArgs;
use crate::with_elem;

/// `bench --server URL`: the same runs through a node's HTTP/2 endpoint.
pub(super) fn bench(a: &BenchArgs, url: &str, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    let addr = parse_url(url)?;
    let t = Instant::now();
    let shards = exchange(addr, Version::Http2, vec![Request::get("/v1/shards")])?
        .pop()
        .context("no answer to GET /v1/shards")?
        .map_err(|e| anyhow::anyhow!("GET {url}/v1/shards: {e}"))?;
    if shards.0 != 200 {
        bail!(
            "GET {url}/v1/shards: status {}: {}",
            shards.0,
            String::from_utf8_lossy(&shards.1)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&shards.1)
        .with_context(|| format!("GET {url}/v1/shards: not JSON"))?;
    let num = |key: &str| info.get(key).and_then(serde_json::Value::as_u64);
    let text = |key: &str| {
        info.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let (num_points, dim) = (
        num("num_points").context("/v1/shards has no num_points")? as usize,
        num("dim").context("/v1/shards has no dim")? as usize,
    );
    let num_shards = num("num_shards").unwrap_or(1) as usize;
    // Build parameters of the entry node's first local shard (all shards of
    // one build share them).
    let first_index = info
        .get("shards")
        .and_then(|s| s.as_array())
        .and_then(|s| {
            s.iter()
                .find_map(|s| s.get("index").filter(|i| !i.is_null()))
        })
        .cloned();
    let pick = |key: &str| {
        first_index
            .as_ref()
            .and_then(|i| i.get(key))
            .and_then(|v| v.as_f64())
    };
    let open_seconds = t.elapsed().as_secs_f64();

    let queries = VectorFile::open(&a.queries)?;
    if queries.dim() != dim {
        bail!(
            "{} holds {}-d vectors; the index at {url} is {dim}-d",
            a.queries.display(),
            queries.dim()
        );
    }
    let gt = GroundTruth::read(&a.gt)?;
    check_gt(a, &gt, queries.len(), num_points)?;
    let vectors: Vec<Vec<f64>> = with_elem!(queries.elem(), T => queries
        .vectors::<T>()?
        .iter()
        .map(|row| row.iter().map(|x| f64::from(x.to_f32())).collect())
        .collect());
    let vectors = std::sync::Arc::new(vectors);
    let clients = a.threads.max(1);
    let concurrency = a.concurrency.max(1);
    writeln!(
        out,
        "server {url} ({num_points} points in {num_shards} shard(s), {dim}-d {}, {}), {} queries, k={}, beam={}, {clients} client executor(s) × {concurrency} requests in flight × {} vector(s) per request, HTTP/2",
        text("elem"),
        text("metric"),
        queries.len(),
        a.k,
        a.beam,
        a.batch,
    )?;
    let runs = run_lists(a, &gt, out, |list| {
        let params = HttpParams {
            k: a.k,
            list: Some(list),
            beam: Some(a.beam),
            probe_shards: (a.probe_shards > 0).then_some(a.probe_shards),
            timeout_ms: None,
        };
        let start = Instant::now();
        let results = search_many_batched(
            addr,
            std::sync::Arc::clone(&vectors),
            params,
            a.batch,
            concurrency,
            clients,
        )?;
        let wall = start.elapsed().as_secs_f64();
        if let Some(err) = results.iter().find_map(|o| o.result.as_ref().err()) {
            if results.iter().all(|o| o.result.is_err()) {
                bail!("every request to {url} failed; the first: {err}");
            }
            eprintln!("note: some requests failed; the first: {err}");
        }
        let outcomes = results
            .into_iter()
            .map(|o| match o.result {
                Ok(r) => QueryOutcome {
                    ids: r.hits.iter().map(|h| h.global_id()).collect(),
                    micros: o.micros as f64,
                    stats: r.stats.to_search_stats(),
                    failed: false,
                    partial: r.partial,
                    filtered: None,
                    doc_blocks: None,
                },
                Err(_) => QueryOutcome {
                    ids: Vec::new(),
                    micros: o.micros as f64,
                    stats: SearchStats::default(),
                    failed: true,
                    partial: false,
                    filtered: None,
                    doc_blocks: None,
                },
            })
            .collect();
        Ok((outcomes, wall))
    })?;
    let report = BenchReport::new(
        a,
        queries.len(),
        open_seconds,
        Searched {
            server: Some(url.to_string()),
            index: url.to_string(),
            num_points: num_points as u64,
            shards: num_shards,
            probe_shards: if a.probe_shards == 0 {
                num_shards
            } else {
                a.probe_shards.min(num_shards)
            },
            dim: dim as u32,
            elem: text("elem"),
            metric: text("metric"),
            max_degree: pick("max_degree").map(|v| v as u32),
            build_list: pick("build_list").map(|v| v as u32),
            alpha: pick("alpha").map(|v| v as f32),
            pq_bytes: pick("pq_bytes").map(|v| v as u32),
            index_bytes_on_disk: None,
            pq_ram_bytes: None,
            cache_nodes: pick("cache_nodes").unwrap_or(0.0) as usize,
            cache_bytes: None,
        },
        Execution {
            runtime: "http2-client",
            io_backend: "http2".into(),
            threads: clients,
            concurrency,
            batch: a.batch,
        },
        runs,
    );
    report.write_json(a, out)?;
    Ok(report)
}
