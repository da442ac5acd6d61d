//! `bench` and `demo`: recall, QPS, latency and IO per query.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use shardann_engine::data::{recall_at_k, GroundTruth, VectorFile};
use shardann_engine::index::{DiskIndex, OpenOptions, SearchScratch};
use shardann_engine::io::IoBackend;
use shardann_engine::search::{SearchParams, SearchStats};
use shardann_engine::Element;

use crate::cli::{BenchArgs, DemoArgs, GenArgs, GraphArgs, GroundtruthArgs};
use crate::search::check_queries;
use crate::util::{cores, dir_bytes, git_commit, human_bytes, peak_rss_bytes};
use crate::with_elem;

/// The JSON report of one `bench` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub tool: &'static str,
    pub version: &'static str,
    /// The node benchmarked over HTTP (`bench --server`); null in process.
    /// Fields the node does not report (bytes on disk, ...) are null then.
    pub server: Option<String>,
    pub git_commit: String,
    pub index: String,
    pub queries: String,
    pub ground_truth: String,
    pub num_points: u64,
    /// Shards in the index (1 for an unsharded index), and how many each
    /// query searched (the nearest by partition centroid).
    pub shards: usize,
    pub probe_shards: usize,
    pub num_queries: usize,
    pub dim: u32,
    pub elem: String,
    pub metric: String,
    pub max_degree: Option<u32>,
    pub build_list: Option<u32>,
    pub alpha: Option<f32>,
    pub pq_bytes: Option<u32>,
    pub index_bytes_on_disk: Option<u64>,
    pub pq_ram_bytes: Option<usize>,
    pub io_backend: String,
    /// Queries in flight per thread (0: one, blocking); with `server`,
    /// requests in flight per client executor.
    pub concurrency: usize,
    /// With `server`: vectors per request (1: `/v1/search`, more:
    /// `/v1/search/batch`). 1 in process.
    pub batch: usize,
    /// "threads" (blocking, one query per thread) or "glommio" (executors
    /// with many queries in flight each).
    pub runtime: String,
    /// Nodes held in the RAM cache, and the bytes they take.
    pub cache_nodes: usize,
    pub cache_bytes: Option<usize>,
    pub threads: usize,
    pub cores: usize,
    pub k: usize,
    pub beam: usize,
    pub open_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    pub runs: Vec<RunReport>,
}

/// One list size.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub list: usize,
    pub beam: usize,
    pub recall_at_k: f64,
    pub qps: f64,
    pub latency_us: Latency,
    pub mean_ios: f64,
    pub mean_hops: f64,
    pub mean_visited: f64,
    /// Visited nodes served from the node cache, per query.
    pub mean_cache_hits: f64,
    /// mean_cache_hits / mean_visited.
    pub cache_hit_rate: f64,
    pub wall_seconds: f64,
    /// Over HTTP: requests that failed, and answers marked partial.
    pub failed: usize,
    pub partial: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

struct QueryOutcome {
    ids: Vec<u32>,
    micros: f64,
    stats: SearchStats,
    failed: bool,
    partial: bool,
}

/// Runs every query once with `threads` workers, each one query at a time.
fn run_queries<T: Element>(
    target: &Target,
    queries: &VectorFile,
    params: SearchParams,
    threads: usize,
    probe: usize,
) -> anyhow::Result<(Vec<QueryOutcome>, f64)> {
    let qv = queries.vectors::<T>()?;
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<QueryOutcome>>> = (0..qv.len()).map(|_| Mutex::new(None)).collect();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let mut scratch = SearchScratch::<T>::default();
                    loop {
                        let qi = next.fetch_add(1, Ordering::Relaxed);
                        if qi >= qv.len() {
                            return Ok(());
                        }
                        let t = Instant::now();
                        let (hits, stats) = match target {
                            Target::Single(idx) => idx.search(&mut scratch, qv.row(qi), params)?,
                            Target::Sharded(set) => {
                                set.search_probing(&mut scratch, qv.row(qi), params, probe)?
                            }
                            Target::Node(..) => {
                                bail!("internal error: a node target runs on glommio only")
                            }
                        };
                        let micros = t.elapsed().as_secs_f64() * 1e6;
                        let ids = hits.iter().map(|h| h.id).collect();
                        if let Ok(mut slot) = slots[qi].lock() {
                            *slot = Some(QueryOutcome {
                                ids,
                                micros,
                                stats,
                                failed: false,
                                partial: false,
                            });
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a search thread panicked"))??;
        }
        Ok(())
    })?;
    let wall = start.elapsed().as_secs_f64();
    let outcomes = slots
        .into_iter()
        .map(|m| m.into_inner().ok().flatten())
        .collect::<Option<Vec<_>>>()
        .context("a query produced no result")?;
    Ok((outcomes, wall))
}

/// One of the server's glommio runners: `run_queries_on` over one index,
/// or `run_node_queries` over a node's shards.
type Runner<'a, T> = dyn Fn(
        shardann_engine::data::Vectors<'_, T>,
        SearchParams,
        &shardann_server::RuntimeConfig,
    ) -> Result<Vec<shardann_server::QueryResult>, shardann_server::ServerError>
    + 'a;

/// Starts the glommio runtime on the first query only. The outer error is
/// a bad query file; the inner one says the runtime cannot start here.
fn glommio_probe<T: Element>(
    queries: &VectorFile,
    k: usize,
    run: &Runner<'_, T>,
) -> anyhow::Result<Result<(), shardann_server::ServerError>> {
    let qv = queries.vectors::<T>()?;
    let Some(first) = qv.iter().next() else {
        return Ok(Ok(()));
    };
    let one = shardann_engine::data::Vectors::new(first, qv.dim());
    let params = SearchParams {
        k,
        list: k.max(10),
        beam: 1,
    };
    match run(one, params, &shardann_server::RuntimeConfig::new(1, 1)) {
        Ok(_) => Ok(Ok(())),
        Err(
            e @ (shardann_server::ServerError::Runtime { .. }
            | shardann_server::ServerError::Executor { .. }),
        ) => Ok(Err(e)),
        Err(e) => Err(e.into()),
    }
}

/// Runs every query on glommio executors, `concurrency` in flight on each.
fn run_glommio<T: Element>(
    queries: &VectorFile,
    params: SearchParams,
    executors: usize,
    concurrency: usize,
    run: &Runner<'_, T>,
) -> anyhow::Result<(Vec<QueryOutcome>, f64)> {
    let qv = queries.vectors::<T>()?;
    let config = shardann_server::RuntimeConfig::new(executors, concurrency);
    let start = Instant::now();
    let results = run(qv, params, &config)?;
    let wall = start.elapsed().as_secs_f64();
    let outcomes = results
        .into_iter()
        .map(|r| QueryOutcome {
            ids: r.ids,
            micros: r.micros as f64,
            stats: r.stats,
            failed: false,
            partial: false,
        })
        .collect();
    Ok((outcomes, wall))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One run's report from its outcomes.
fn summarize(
    list: usize,
    beam: usize,
    k: usize,
    outcomes: &[QueryOutcome],
    wall: f64,
    gt: &GroundTruth,
) -> RunReport {
    let nq = outcomes.len().max(1) as f64;
    let recall = outcomes
        .iter()
        .enumerate()
        .map(|(qi, o)| recall_at_k(&o.ids, gt.row(qi), k))
        .sum::<f64>()
        / nq;
    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.micros).collect();
    lat.sort_by(f64::total_cmp);
    let mean = |f: &dyn Fn(&SearchStats) -> u32| {
        outcomes.iter().map(|o| f(&o.stats) as f64).sum::<f64>() / nq
    };
    RunReport {
        list,
        beam,
        recall_at_k: recall,
        qps: outcomes.len() as f64 / wall,
        latency_us: Latency {
            mean: lat.iter().sum::<f64>() / nq,
            p50: percentile(&lat, 50.0),
            p99: percentile(&lat, 99.0),
        },
        mean_ios: mean(&|s| s.ios),
        mean_hops: mean(&|s| s.hops),
        mean_visited: mean(&|s| s.visited_nodes),
        mean_cache_hits: mean(&|s| s.cache_hits),
        cache_hit_rate: mean(&|s| s.cache_hits) / mean(&|s| s.visited_nodes).max(1.0),
        wall_seconds: wall,
        failed: outcomes.iter().filter(|o| o.failed).count(),
        partial: outcomes.iter().filter(|o| o.partial).count(),
    }
}

fn print_header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:>7}",
        "L", "recall@k", "QPS", "mean_us", "p50_us", "p99_us", "ios", "hops", "cached"
    )
}

fn print_row(out: &mut dyn Write, run: &RunReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6} {:>9.4} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.1} {:>7.1} {:>7.1}",
        run.list,
        run.recall_at_k,
        run.qps,
        run.latency_us.mean,
        run.latency_us.p50,
        run.latency_us.p99,
        run.mean_ios,
        run.mean_hops,
        run.mean_cache_hits
    )?;
    if run.failed > 0 || run.partial > 0 {
        writeln!(
            out,
            "       {} request(s) failed, {} answer(s) partial",
            run.failed, run.partial
        )?;
    }
    Ok(())
}

/// What a bench searches: one index, or every shard of a sharded one.
enum Target {
    Single(std::sync::Arc<DiskIndex>),
    Sharded(shardann_engine::cluster::ShardedIndex),
    /// A sharded index searched as a node does (glommio, every shard of a
    /// query concurrently), without HTTP: the baseline of `--server`.
    /// The shards as opened (the node could swap versions; a bench's node
    /// never does).
    Node(
        std::sync::Arc<shardann_server::node::Node>,
        Vec<std::sync::Arc<DiskIndex>>,
    ),
}

impl Target {
    /// The index whose header describes them all (shard 0 of a sharded one).
    fn first(&self) -> &DiskIndex {
        match self {
            Target::Single(idx) => idx,
            Target::Sharded(set) => &set.shards()[0],
            Target::Node(_, shards) => &shards[0],
        }
    }
    fn shards(&self) -> Vec<&DiskIndex> {
        match self {
            Target::Single(idx) => vec![idx],
            Target::Sharded(set) => set.shards().iter().collect(),
            Target::Node(_, shards) => shards.iter().map(|s| &**s).collect(),
        }
    }
}

pub fn bench(a: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    if let Some(url) = &a.server {
        return bench_server(a, url, out);
    }
    let index_dir = a
        .index
        .as_ref()
        .context("bench needs --index DIR or --server URL")?;
    let t = Instant::now();
    let open_sharded = || -> anyhow::Result<Target> {
        Ok(Target::Sharded(
            shardann_engine::cluster::ShardedIndex::open(index_dir, a.read.open_options())
                .with_context(|| format!("opening sharded index {}", index_dir.display()))?,
        ))
    };
    let sharded = index_dir
        .join(shardann_engine::cluster::CLUSTER_FILE)
        .exists();
    let mut target = if sharded
        && a.concurrency > 0
        && !matches!(a.read.io, IoBackend::Pread)
        && shardann_engine::io::UringReader::usable()
    {
        let mut config = shardann_server::NodeConfig::single(index_dir, "127.0.0.1:0");
        config.cache_nodes = a.read.cache_nodes;
        let node = shardann_server::node::Node::open(config)
            .with_context(|| format!("opening sharded index {}", index_dir.display()))?;
        let shards = node
            .local_shards()
            .into_iter()
            .filter_map(|s| node.local_shard(s))
            .collect();
        Target::Node(std::sync::Arc::new(node), shards)
    } else if sharded {
        open_sharded()?
    } else {
        Target::Single(std::sync::Arc::new(a.read.open(index_dir)?))
    };
    let idx = target.first();
    let probe = match a.probe_shards {
        0 => target.shards().len(),
        p => p.min(target.shards().len()),
    };
    let total_points: usize = target.shards().iter().map(|s| s.len()).sum();
    let open_seconds = t.elapsed().as_secs_f64();
    let queries = VectorFile::open(&a.queries)?;
    check_queries(idx, &queries)?;
    let gt = GroundTruth::read(&a.gt)?;
    check_gt(a, &gt, queries.len(), total_points)?;
    let threads = if a.threads == 0 { cores() } else { a.threads };
    // How queries run: blocking threads, or glommio executors with many
    // queries each. pread has no completion queue to wait on, so more
    // queries in flight means more blocking threads.
    let mut use_glommio = a.concurrency > 0
        && !matches!(a.read.io, IoBackend::Pread)
        && (matches!(target, Target::Node(..)) || idx.io_backend().starts_with("uring"));
    if use_glommio {
        // io_uring worked for the engine, but glommio also needs locked
        // memory and pinned executors: try it on one query before relying
        // on it, and fall back to blocking threads (once, with a note).
        let probe = match &target {
            Target::Single(single) => with_elem!(idx.elem(), T => glommio_probe::<T>(
                &queries,
                a.k,
                &|q, p, c| shardann_server::run_queries_on(single, q, p, c),
            ))?,
            Target::Node(node, _) => with_elem!(idx.elem(), T => glommio_probe::<T>(
                &queries,
                a.k,
                &|q, p, c| shardann_server::runtime::run_node_queries(node, q, p, None, c),
            ))?,
            Target::Sharded(_) => Ok(()),
        };
        if let Err(e) = probe {
            eprintln!(
                "note: glommio runtime unavailable ({e}); using {} blocking threads instead",
                threads * a.concurrency
            );
            use_glommio = false;
        }
    }
    if !use_glommio && matches!(target, Target::Node(..)) {
        target = open_sharded()?;
    }
    let idx = target.first();
    let (runtime, io_backend, worker_threads) = if use_glommio {
        ("glommio", "glommio-dma".to_string(), threads)
    } else {
        (
            "threads",
            idx.io_backend().to_string(),
            threads * a.concurrency.max(1),
        )
    };
    let h = *idx.header();
    writeln!(
        out,
        "index {} ({} points, {}-d {}, {}), {} queries, k={}, beam={}, {} threads, io {}",
        index_dir.display(),
        total_points,
        h.dim,
        h.elem,
        h.metric,
        queries.len(),
        a.k,
        a.beam,
        threads,
        if use_glommio {
            format!(
                "glommio ({} queries in flight per executor, O_DIRECT io_uring)",
                a.concurrency
            )
        } else {
            format!("{} ({worker_threads} blocking threads)", idx.io_backend())
        }
    )?;
    print_header(out)?;
    let mut runs = Vec::new();
    for &list in &a.list {
        let params = SearchParams {
            k: a.k,
            list,
            beam: a.beam,
        };
        params.validate()?;
        let (outcomes, wall) = match &target {
            Target::Single(single) if use_glommio => {
                with_elem!(idx.elem(), T => run_glommio::<T>(&queries, params, threads, a.concurrency,
                    &|q, p, c| shardann_server::run_queries_on(single, q, p, c))?)
            }
            Target::Node(node, _) => {
                let probe = (probe < target.shards().len()).then_some(probe);
                with_elem!(idx.elem(), T => run_glommio::<T>(&queries, params, threads, a.concurrency,
                    &|q, p, c| shardann_server::runtime::run_node_queries(node, q, p, probe, c))?)
            }
            _ => {
                with_elem!(idx.elem(), T => run_queries::<T>(&target, &queries, params, worker_threads, probe)?)
            }
        };
        let run = summarize(list, a.beam, a.k, &outcomes, wall, &gt);
        print_row(out, &run)?;
        runs.push(run);
    }
    let report = BenchReport {
        tool: "shardann",
        version: env!("CARGO_PKG_VERSION"),
        git_commit: git_commit(),
        server: None,
        index: index_dir.display().to_string(),
        queries: a.queries.display().to_string(),
        ground_truth: a.gt.display().to_string(),
        num_points: total_points as u64,
        shards: target.shards().len(),
        probe_shards: probe,
        num_queries: queries.len(),
        dim: h.dim,
        elem: h.elem.to_string(),
        metric: h.metric.to_string(),
        max_degree: Some(h.max_degree),
        build_list: Some(h.build_list),
        alpha: Some(h.alpha),
        pq_bytes: Some(h.pq_bytes),
        index_bytes_on_disk: Some(target.shards().iter().map(|s| dir_bytes(s.dir())).sum()),
        pq_ram_bytes: Some(target.shards().iter().map(|s| s.memory_bytes()).sum()),
        io_backend: io_backend.clone(),
        concurrency: a.concurrency,
        batch: 1,
        runtime: runtime.to_string(),
        cache_nodes: target.shards().iter().map(|s| s.node_cache().len()).sum(),
        cache_bytes: Some(
            target
                .shards()
                .iter()
                .map(|s| s.node_cache().memory_bytes())
                .sum(),
        ),
        threads,
        cores: cores(),
        k: a.k,
        beam: a.beam,
        open_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        runs,
    };
    writeln!(
        out,
        "index open {:.2}s (cache {} nodes); {} on disk, {} in RAM (PQ + cache); peak RSS {}",
        open_seconds,
        report.cache_nodes,
        human_bytes(report.index_bytes_on_disk.unwrap_or(0)),
        human_bytes(report.pq_ram_bytes.unwrap_or(0) as u64),
        report.peak_rss_bytes.map_or("unknown".into(), human_bytes)
    )?;
    write_json(a, &report, out)?;
    Ok(report)
}

fn write_json(a: &BenchArgs, report: &BenchReport, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// Checks ground truth against a query set and the index size.
fn check_gt(a: &BenchArgs, gt: &GroundTruth, nq: usize, points: usize) -> anyhow::Result<()> {
    gt.check_ids(&a.gt, points)?;
    if gt.nq < nq {
        bail!(
            "{} has ground truth for {} queries, but {} has {nq}",
            a.gt.display(),
            gt.nq,
            a.queries.display(),
        );
    }
    if gt.k < a.k {
        bail!(
            "{} has {} neighbours per query, fewer than k = {}",
            a.gt.display(),
            gt.k,
            a.k
        );
    }
    if a.list.is_empty() {
        bail!("--list needs at least one list size");
    }
    Ok(())
}

/// `bench --server URL`: the same runs through a node's HTTP/2 endpoint.
fn bench_server(a: &BenchArgs, url: &str, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    use shardann_server::client::{
        exchange, parse_url, search_many_batched, HttpParams, Request, Version,
    };
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
    print_header(out)?;
    let mut runs = Vec::new();
    for &list in &a.list {
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
        let outcomes: Vec<QueryOutcome> = results
            .into_iter()
            .map(|o| match o.result {
                Ok(r) => QueryOutcome {
                    ids: r.hits.iter().map(|h| h.id).collect(),
                    micros: o.micros as f64,
                    stats: r.stats.to_search_stats(),
                    failed: false,
                    partial: r.partial,
                },
                Err(_) => QueryOutcome {
                    ids: Vec::new(),
                    micros: o.micros as f64,
                    stats: SearchStats::default(),
                    failed: true,
                    partial: false,
                },
            })
            .collect();
        let run = summarize(list, a.beam, a.k, &outcomes, wall, &gt);
        print_row(out, &run)?;
        runs.push(run);
    }
    let report = BenchReport {
        tool: "shardann",
        version: env!("CARGO_PKG_VERSION"),
        server: Some(url.to_string()),
        git_commit: git_commit(),
        index: url.to_string(),
        queries: a.queries.display().to_string(),
        ground_truth: a.gt.display().to_string(),
        num_points: num_points as u64,
        shards: num_shards,
        probe_shards: if a.probe_shards == 0 {
            num_shards
        } else {
            a.probe_shards.min(num_shards)
        },
        num_queries: queries.len(),
        dim: dim as u32,
        elem: text("elem"),
        metric: text("metric"),
        max_degree: pick("max_degree").map(|v| v as u32),
        build_list: pick("build_list").map(|v| v as u32),
        alpha: pick("alpha").map(|v| v as f32),
        pq_bytes: pick("pq_bytes").map(|v| v as u32),
        index_bytes_on_disk: None,
        pq_ram_bytes: None,
        io_backend: "http2".into(),
        concurrency,
        batch: a.batch,
        runtime: "http2-client".into(),
        cache_nodes: pick("cache_nodes").unwrap_or(0.0) as usize,
        cache_bytes: None,
        threads: clients,
        cores: cores(),
        k: a.k,
        beam: a.beam,
        open_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        runs,
    };
    write_json(a, &report, out)?;
    Ok(report)
}

fn exists(p: &Path) -> bool {
    p.metadata().map(|m| m.len() > 0).unwrap_or(false)
}

/// gen → groundtruth → build → bench on a sift-like set, reusing what exists.
pub fn demo(a: &DemoArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let dir = a.dir.join(format!("sift-like-{}-seed{}", a.n, a.seed));
    let base = dir.join("base.u8bin");
    let query = dir.join("query.u8bin");
    let gt = dir.join("gt100.bin");
    let index = dir.join("index");
    let data_ok = VectorFile::open(&base).is_ok_and(|f| f.len() == a.n)
        && VectorFile::open(&query).is_ok_and(|f| f.len() == a.queries);
    if !data_ok {
        writeln!(
            out,
            "[1/4] generating {} sift-like points and {} queries (seed {})",
            a.n, a.queries, a.seed
        )?;
        crate::data::gen(
            &GenArgs {
                preset: shardann_engine::synth::Preset::SiftLike,
                n: a.n,
                queries: a.queries,
                seed: a.seed,
                out: dir.clone(),
                threads: a.threads,
            },
            quiet,
            out,
        )?;
        let _ = std::fs::remove_file(&gt);
        let _ = std::fs::remove_dir_all(&index);
    } else {
        writeln!(out, "[1/4] reusing data in {}", dir.display())?;
    }
    if !exists(&gt) {
        writeln!(out, "[2/4] computing exact ground truth")?;
        crate::data::groundtruth(
            &GroundtruthArgs {
                base: base.clone(),
                queries: query.clone(),
                k: 100,
                metric: shardann_engine::Metric::L2,
                out: gt.clone(),
                threads: a.threads,
            },
            quiet,
            out,
        )?;
    } else {
        writeln!(out, "[2/4] reusing ground truth {}", gt.display())?;
    }
    if DiskIndex::open(&index, OpenOptions::buffered()).is_err() {
        writeln!(
            out,
            "[3/4] building the index (R=64, L=100, alpha=1.2, 32-byte PQ)"
        )?;
        let graph = GraphArgs {
            max_degree: 64,
            build_list: 100,
            alpha: 1.2,
            pq_bytes: 32,
            pq_sample: 100_000,
            seed: 1,
        };
        // A leftover that does not open (an interrupted build, an index from
        // an older layout) is rebuilt from scratch.
        let _ = std::fs::remove_dir_all(&index);
        let (r, _, secs) = crate::build::run_build(
            &base,
            shardann_engine::Metric::L2,
            &graph,
            &index,
            a.threads,
            quiet,
        )?;
        writeln!(
            out,
            "built in {secs:.1}s: {} on disk, {} PQ in RAM, mean degree {:.1}",
            human_bytes(r.index_bytes),
            human_bytes(r.pq_file_bytes),
            r.mean_degree
        )?;
    } else {
        writeln!(out, "[3/4] reusing index {}", index.display())?;
    }
    writeln!(out, "[4/4] benchmarking (O_DIRECT reads, beam 4)")?;
    let report = bench(
        &BenchArgs {
            index: Some(index),
            server: None,
            batch: 1,
            queries: query,
            gt,
            k: 10,
            list: a.list.clone(),
            beam: 4,
            threads: a.threads,
            concurrency: 0,
            probe_shards: 0,
            json: Some(dir.join("bench.json")),
            read: crate::cli::ReadArgs::default(),
        },
        out,
    )?;
    if let Some(best) = report.runs.iter().find(|r| r.recall_at_k >= 0.95) {
        writeln!(
            out,
            "recall@10 ≥ 0.95 first reached at L={}: recall {:.4}, {:.0} QPS",
            best.list, best.recall_at_k, best.qps
        )?;
    } else {
        writeln!(out, "recall@10 stayed below 0.95 at every list size tried")?;
    }
    Ok(())
}
