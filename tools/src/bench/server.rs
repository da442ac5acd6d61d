//! `bench --server URL`: the same runs as in process, sent to a node's
//! HTTP/2 endpoint (`/v1/search`, or `/v1/search/batch` with `--batch N`)
//! from client executors with several requests in flight each.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use shardann_engine::data::{GroundTruth, VectorFile};
use shardann_engine::docs::UserId;
use shardann_engine::search::SearchStats;
use shardann_engine::Element;
use shardann_server::client::{
    exchange, parse_url, search_queries, HttpParams, QueryInput, Request, Version,
};

use super::report::{BenchReport, Execution, NodeTimes, QueryOutcome, Searched};
use super::{check_gt, run_lists};
use crate::cli::BenchArgs;
use crate::eval::Method;
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
    let texts = match &a.texts {
        Some(path) => Some(load_texts(path, queries.len())?),
        None => None,
    };
    if let Some(m) = a.methods.iter().find(|m| m.method != Method::Dense) {
        if texts.is_none() {
            bail!("--methods {}: needs the query texts (--texts FILE)", m.name);
        }
    }
    let rows = match &a.corpus {
        Some(path) => Some(load_rows(path)?),
        None => None,
    };
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
    let runs = run_lists(a, &gt, out, |list, method| {
        let fusion = match method.method {
            Method::Fused(f) => Some(f),
            _ => None,
        };
        let params = HttpParams {
            k: a.k,
            list: Some(list),
            beam: Some(a.beam),
            probe_shards: (a.probe_shards > 0).then_some(a.probe_shards),
            timeout_ms: None,
            fusion,
            candidates: a.candidates.filter(|_| fusion.is_some()),
            // BM25 stays BM25 on a node with a model.
            embed: match method.method {
                Method::Bm25 => Some(false),
                _ => a.embed.then_some(true),
            },
        };
        // With --embed the node makes the vector from the text.
        let (dense, text) = match method.method {
            Method::Dense => (!a.embed, a.embed),
            Method::Bm25 => (false, true),
            Method::Fused(_) => (!a.embed, true),
        };
        let inputs: Vec<QueryInput> = (0..vectors.len())
            .map(|i| QueryInput {
                vector: dense.then(|| vectors[i].clone()),
                text: text
                    .then(|| texts.as_ref().and_then(|t| t.get(i)).cloned())
                    .flatten(),
            })
            .collect();
        let start = Instant::now();
        let results = search_queries(
            addr,
            std::sync::Arc::new(inputs),
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
                    ids: r
                        .hits
                        .iter()
                        .map(|h| match &rows {
                            Some(rows) => rows.get(&h.id).copied().unwrap_or(u32::MAX),
                            None => h.global_id(),
                        })
                        .collect(),
                    micros: o.micros as f64,
                    stats: r.stats.to_search_stats(),
                    failed: false,
                    partial: r.partial,
                    filtered: None,
                    doc_blocks: None,
                    node_us: Some(NodeTimes {
                        dense: r.stats.dense_us as f64,
                        text: r.stats.text_us as f64,
                        text_stats: r.stats.text_stats_us as f64,
                        embed: r.stats.embed_us as f64,
                    }),
                },
                Err(_) => QueryOutcome {
                    ids: Vec::new(),
                    micros: o.micros as f64,
                    stats: SearchStats::default(),
                    failed: true,
                    partial: false,
                    filtered: None,
                    doc_blocks: None,
                    node_us: None,
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
            nav_points: pick("nav_points").unwrap_or(0.0) as usize,
            nav_bytes: None,
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

/// The query texts of `path`, the first `n` of them (one per query
/// vector): JSON Lines whose lines have a "text" (a BEIR `queries.jsonl`),
/// or plain text, one query a line. A line without text is an error that
/// names it.
fn load_texts(path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let body = std::fs::read_to_string(path)
        .with_context(|| format!("reading query texts from {}", path.display()))?;
    let json = body.trim_start().starts_with('{');
    let mut texts = Vec::with_capacity(n);
    for (i, line) in body.lines().enumerate().take(n) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let text = if json {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
            v.get("text")
                .and_then(serde_json::Value::as_str)
                .with_context(|| format!("{}: no \"text\" string", at()))?
                .to_string()
        } else {
            line.to_string()
        };
        if text.trim().is_empty() {
            bail!("{}: the query text is empty", at());
        }
        texts.push(text);
    }
    if texts.len() < n {
        bail!(
            "{} has {} query texts, but there are {n} query vectors: one text per query",
            path.display(),
            texts.len()
        );
    }
    Ok(texts)
}

/// Each document id of a JSON Lines documents file (its "id", or "_id" as
/// in a BEIR corpus) and its line number: the base row it was built from.
fn load_rows(path: &Path) -> anyhow::Result<HashMap<UserId, u32>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading document ids from {}", path.display()))?;
    let mut rows = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let line = line.with_context(at)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
        let id = v
            .get("id")
            .or_else(|| v.get("_id"))
            .and_then(UserId::from_json)
            .with_context(|| {
                format!(
                    "{}: no \"id\" (or \"_id\"): a string or an unsigned integer",
                    at()
                )
            })?;
        let row = u32::try_from(i).with_context(|| format!("{}: more rows than u32 ids", at()))?;
        if rows.insert(id.clone(), row).is_some() {
            bail!("{}: the id {id} was already used", at());
        }
    }
    Ok(rows)
}
