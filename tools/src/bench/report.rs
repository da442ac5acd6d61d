//! What a bench reports: per-query outcomes → one [`RunReport`] per list
//! size → the [`BenchReport`], its table on stdout and its JSON file.
//!
//! The JSON field names and the table's columns are read by tests and
//! scripts: change them only on purpose.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;
use shardann_engine::data::{recall_at_k, GroundTruth};
use shardann_engine::search::SearchStats;

use crate::cli::BenchArgs;
use crate::eval::{Method, NamedMethod};
use crate::util::{cores, git_commit, peak_rss_bytes};

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
    /// `--texts`: the query texts of bm25 and fused runs.
    pub texts: Option<String>,
    /// Fused runs: hits each signal contributed (null: the node's default).
    pub candidates: Option<usize>,
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
    /// Points in the navigation graphs, and the bytes they take (counted
    /// in `pq_ram_bytes` too).
    pub nav_points: usize,
    pub nav_bytes: Option<usize>,
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
    /// As `--methods` spelled it: dense, bm25, rrf, weighted:0.5, ...
    pub method: String,
    /// Of the exact nearest neighbours (the ground truth); null for bm25
    /// and fused runs, whose answers are not meant to be those (their
    /// quality is `eval`'s nDCG).
    pub recall_at_k: Option<f64>,
    pub qps: f64,
    pub latency_us: Latency,
    pub mean_ios: f64,
    pub mean_hops: f64,
    pub mean_visited: f64,
    /// Visited nodes served from the node cache, per query.
    pub mean_cache_hits: f64,
    /// mean_cache_hits / mean_visited.
    pub cache_hit_rate: f64,
    /// Visited nodes whose record came in a sector read for another node
    /// (version 2 layout), per query.
    pub mean_sector_mates: f64,
    pub wall_seconds: f64,
    /// Over HTTP: requests that failed, and answers marked partial.
    pub failed: usize,
    pub partial: usize,
    /// Filtered runs: the mean number of matching points per query and how
    /// many queries ran each plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered: Option<FilteredRun>,
    /// With --include: mean `docs.bin` blocks read per query to fetch the
    /// hits' payloads (beside `mean_ios`, the index's sector reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_doc_blocks: Option<f64>,
    /// Over HTTP: the node's time per query in each signal (summed over
    /// shards), and collecting BM25 statistics across shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_us: Option<NodeTimes>,
}

/// Mean microseconds per query the node reported in each part of a search.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct NodeTimes {
    pub dense: f64,
    pub text: f64,
    pub text_stats: f64,
    /// Embedding the query's text (`bench --server --embed`).
    pub embed: f64,
}

/// What the filters of a run selected and how they were searched.
#[derive(Debug, Clone, Serialize)]
pub struct FilteredRun {
    pub mean_matches: f64,
    pub min_matches: u64,
    pub max_matches: u64,
    pub plans: std::collections::BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

/// What was searched: the report fields that come from the index headers
/// in process, and from the node's `/v1/shards` over HTTP (`None` where
/// the node does not say).
pub(super) struct Searched {
    pub server: Option<String>,
    pub index: String,
    pub num_points: u64,
    pub shards: usize,
    pub probe_shards: usize,
    pub dim: u32,
    pub elem: String,
    pub metric: String,
    pub max_degree: Option<u32>,
    pub build_list: Option<u32>,
    pub alpha: Option<f32>,
    pub pq_bytes: Option<u32>,
    pub index_bytes_on_disk: Option<u64>,
    pub pq_ram_bytes: Option<usize>,
    pub cache_nodes: usize,
    pub cache_bytes: Option<usize>,
    pub nav_points: usize,
    pub nav_bytes: Option<usize>,
}

/// How the queries ran: the runtime and IO path, and how many queries
/// were in flight.
pub(super) struct Execution {
    pub runtime: &'static str,
    pub io_backend: String,
    pub threads: usize,
    pub concurrency: usize,
    pub batch: usize,
}

impl BenchReport {
    /// The one place a report is put together, in process or over HTTP:
    /// the invocation's own settings come from `a`, what differs from
    /// `searched` and `execution`. Reads the commit and the peak RSS now,
    /// so call it after the runs.
    pub(super) fn new(
        a: &BenchArgs,
        num_queries: usize,
        open_seconds: f64,
        searched: Searched,
        execution: Execution,
        runs: Vec<RunReport>,
    ) -> Self {
        let Searched {
            server,
            index,
            num_points,
            shards,
            probe_shards,
            dim,
            elem,
            metric,
            max_degree,
            build_list,
            alpha,
            pq_bytes,
            index_bytes_on_disk,
            pq_ram_bytes,
            cache_nodes,
            cache_bytes,
            nav_points,
            nav_bytes,
        } = searched;
        let Execution {
            runtime,
            io_backend,
            threads,
            concurrency,
            batch,
        } = execution;
        BenchReport {
            tool: "shardann",
            version: env!("CARGO_PKG_VERSION"),
            server,
            git_commit: git_commit(),
            index,
            queries: a.queries.display().to_string(),
            ground_truth: a.gt.display().to_string(),
            texts: a.texts.as_ref().map(|p| p.display().to_string()),
            candidates: a.candidates,
            num_points,
            shards,
            probe_shards,
            num_queries,
            dim,
            elem,
            metric,
            max_degree,
            build_list,
            alpha,
            pq_bytes,
            index_bytes_on_disk,
            pq_ram_bytes,
            io_backend,
            concurrency,
            batch,
            runtime: runtime.to_string(),
            cache_nodes,
            cache_bytes,
            nav_points,
            nav_bytes,
            threads,
            cores: cores(),
            k: a.k,
            beam: a.beam,
            open_seconds,
            peak_rss_bytes: peak_rss_bytes(),
            runs,
        }
    }

    /// Writes the JSON report to `--json PATH`, if given.
    pub(super) fn write_json(&self, a: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
        if let Some(path) = &a.json {
            let json = serde_json::to_string_pretty(self)?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            writeln!(out, "wrote {}", path.display())?;
        }
        Ok(())
    }
}

/// One query's answer, however it was searched.
pub(super) struct QueryOutcome {
    pub ids: Vec<u32>,
    pub micros: f64,
    pub stats: SearchStats,
    pub failed: bool,
    pub partial: bool,
    /// A filtered query: how many points matched, and the plan run.
    pub filtered: Option<(u64, &'static str)>,
    /// With --include: document blocks the fetch of the hits' payloads read.
    pub doc_blocks: Option<u32>,
    /// Over HTTP: what the node reported spending in each signal.
    pub node_us: Option<NodeTimes>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One run's report from its outcomes.
pub(super) fn summarize(
    list: usize,
    beam: usize,
    k: usize,
    method: &NamedMethod,
    outcomes: &[QueryOutcome],
    wall: f64,
    gt: &GroundTruth,
) -> RunReport {
    let nq = outcomes.len().max(1) as f64;
    let recall = (method.method == Method::Dense).then(|| {
        outcomes
            .iter()
            .enumerate()
            .map(|(qi, o)| recall_at_k(&o.ids, gt.row(qi), k))
            .sum::<f64>()
            / nq
    });
    let node_us = outcomes
        .iter()
        .map(|o| o.node_us)
        .sum::<Option<NodeTimes>>()
        .map(|t| NodeTimes {
            dense: t.dense / nq,
            text: t.text / nq,
            text_stats: t.text_stats / nq,
            embed: t.embed / nq,
        });
    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.micros).collect();
    lat.sort_by(f64::total_cmp);
    let mean = |f: &dyn Fn(&SearchStats) -> u32| {
        outcomes.iter().map(|o| f(&o.stats) as f64).sum::<f64>() / nq
    };
    RunReport {
        list,
        beam,
        method: method.name.clone(),
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
        mean_sector_mates: mean(&|s| s.sector_mates),
        wall_seconds: wall,
        failed: outcomes.iter().filter(|o| o.failed).count(),
        partial: outcomes.iter().filter(|o| o.partial).count(),
        filtered: filtered_run(outcomes),
        mean_doc_blocks: outcomes
            .iter()
            .map(|o| o.doc_blocks.map(f64::from))
            .sum::<Option<f64>>()
            .map(|s| s / nq),
        node_us,
    }
}

impl std::iter::Sum for NodeTimes {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(NodeTimes::default(), |a, b| NodeTimes {
            dense: a.dense + b.dense,
            text: a.text + b.text,
            text_stats: a.text_stats + b.text_stats,
            embed: a.embed + b.embed,
        })
    }
}

fn filtered_run(outcomes: &[QueryOutcome]) -> Option<FilteredRun> {
    let filtered: Vec<(u64, &'static str)> = outcomes.iter().filter_map(|o| o.filtered).collect();
    if filtered.is_empty() {
        return None;
    }
    let mut plans = std::collections::BTreeMap::new();
    for (_, plan) in &filtered {
        *plans.entry(*plan).or_insert(0) += 1;
    }
    Some(FilteredRun {
        mean_matches: filtered.iter().map(|f| f.0 as f64).sum::<f64>() / filtered.len() as f64,
        min_matches: filtered.iter().map(|f| f.0).min().unwrap_or(0),
        max_matches: filtered.iter().map(|f| f.0).max().unwrap_or(0),
        plans,
    })
}

/// The table's column names.
pub(super) fn print_header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:>7}  method",
        "L", "recall@k", "QPS", "mean_us", "p50_us", "p99_us", "ios", "hops", "cached"
    )
}

/// One table row per run, plus a line when requests failed.
pub(super) fn print_row(out: &mut dyn Write, run: &RunReport) -> std::io::Result<()> {
    let recall = match run.recall_at_k {
        Some(r) => format!("{r:.4}"),
        None => "-".into(),
    };
    writeln!(
        out,
        "{:>6} {:>9} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.1} {:>7.1} {:>7.1}  {}",
        run.list,
        recall,
        run.qps,
        run.latency_us.mean,
        run.latency_us.p50,
        run.latency_us.p99,
        run.mean_ios,
        run.mean_hops,
        run.mean_cache_hits,
        run.method
    )?;
    if let Some(t) = run
        .node_us
        .filter(|t| t.text > 0.0 || t.text_stats > 0.0 || t.embed > 0.0)
    {
        writeln!(
            out,
            "       node: {:.0} µs embedding, {:.0} µs dense, {:.0} µs BM25, {:.0} µs BM25 statistics per query",
            t.embed, t.dense, t.text, t.text_stats
        )?;
    }
    if let Some(f) = &run.filtered {
        let plans: Vec<String> = f.plans.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
        writeln!(
            out,
            "       filter: {:.0} matching points per query ({}..={}); plans {}",
            f.mean_matches,
            f.min_matches,
            f.max_matches,
            plans.join(", ")
        )?;
    }
    if let Some(b) = run.mean_doc_blocks {
        writeln!(out, "       include: {b:.2} document blocks read per query")?;
    }
    if run.failed > 0 || run.partial > 0 {
        writeln!(
            out,
            "       {} request(s) failed, {} answer(s) partial",
            run.failed, run.partial
        )?;
    }
    Ok(())
}
