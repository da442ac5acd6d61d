//! Throughput and recall of the glommio path, against the engine's
//! synchronous path on the same machine in the same run.
//!
//! ```text
//! cargo run --release -p shardann-server --example qps -- \
//!     --index /tmp/shardann-1m/idx-v1 \
//!     --queries /tmp/shardann-1m/data/query.u8bin \
//!     --gt /tmp/shardann-1m/data/gt100.bin \
//!     --list 24 --beam 4 --executors 2 --concurrency 1,4,16 --sync-threads 2
//! ```
//!
//! Both paths read node sectors with `O_DIRECT`, so the numbers measure the
//! device, not the page cache. Results go to stdout, one line per run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use shardann_engine::data::{recall_at_k, GroundTruth, VectorFile, Vectors};
use shardann_engine::index::{OpenOptions, SearchScratch};
use shardann_engine::search::SearchParams;
use shardann_engine::shard;
use shardann_engine::ElemType;
use shardann_engine::Element;
use shardann_server::{run_queries_on, QueryResult, RuntimeConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Index directory (disk.index + pq.bin).
    #[arg(long)]
    index: PathBuf,
    /// Query vectors (.u8bin, .i8bin or .fbin).
    #[arg(long)]
    queries: PathBuf,
    /// Ground truth (.bin); recall is reported when given.
    #[arg(long)]
    gt: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 24)]
    list: usize,
    #[arg(long, default_value_t = 4)]
    beam: usize,
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Queries in flight per executor; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Also run the engine's synchronous search on this many threads (0: skip).
    #[arg(long, default_value_t = 0)]
    sync_threads: usize,
    /// Nodes nearest the medoid to keep in RAM (both paths).
    #[arg(long, default_value_t = 0)]
    cache_nodes: usize,
    /// Use only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = VectorFile::open(&args.queries)?;
    match file.elem() {
        ElemType::U8 => run::<u8>(&args, &file),
        ElemType::I8 => run::<i8>(&args, &file),
        ElemType::F32 => run::<f32>(&args, &file),
    }
}

/// Summary of one run.
struct Line {
    what: String,
    secs: f64,
    results: Vec<QueryResult>,
}

fn run<T: Element>(args: &Args, file: &VectorFile) -> anyhow::Result<()> {
    let all = file.vectors::<T>()?;
    let n = args.limit.unwrap_or(all.len()).min(all.len());
    let queries = Vectors::new(&all.as_slice()[..n * all.dim()], all.dim());
    let gt = args.gt.as_ref().map(GroundTruth::read).transpose()?;
    if let Some(gt) = &gt {
        if gt.nq < n || gt.k < args.k {
            bail!(
                "ground truth has {} × {}, need {n} × {}",
                gt.nq,
                gt.k,
                args.k
            );
        }
    }
    let params = SearchParams {
        k: args.k,
        list: args.list,
        beam: args.beam,
    };
    let index = Arc::new(
        shard::open(
            &args.index,
            OpenOptions {
                cache_nodes: args.cache_nodes,
                ..OpenOptions::buffered()
            },
        )
        .with_context(|| format!("opening {}", args.index.display()))?,
    );
    eprintln!(
        "{} queries, {} points, dim {}, k {} L {} W {}, {} cached nodes",
        n,
        index.len(),
        index.dim(),
        args.k,
        args.list,
        args.beam,
        index.node_cache().len()
    );

    let mut lines = Vec::new();
    if args.sync_threads > 0 {
        let opts = OpenOptions {
            cache_nodes: args.cache_nodes,
            ..OpenOptions::default()
        };
        lines.push(sync_run(
            &args.index,
            opts,
            queries,
            params,
            args.sync_threads,
        )?);
    }
    for &c in &args.concurrency {
        let config = RuntimeConfig::new(args.executors, c);
        let t = Instant::now();
        let results = run_queries_on(&index, queries, params, &config)?;
        lines.push(Line {
            what: format!("glommio {} exec × {c} tasks", args.executors),
            secs: t.elapsed().as_secs_f64(),
            results,
        });
    }
    for line in &lines {
        print_line(line, gt.as_ref(), args.k);
    }
    Ok(())
}

/// The engine's own path: blocking reads, one query per thread at a time.
fn sync_run<T: Element>(
    dir: &std::path::Path,
    opts: OpenOptions,
    queries: Vectors<'_, T>,
    params: SearchParams,
    threads: usize,
) -> anyhow::Result<Line> {
    let index = shard::open(dir, opts)?;
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    let parts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<(usize, QueryResult)>> {
                    let mut scratch = SearchScratch::<T>::default();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= queries.len() {
                            return Ok(out);
                        }
                        let q0 = Instant::now();
                        let (hits, stats) = index.search(&mut scratch, queries.row(i), params)?;
                        out.push((
                            i,
                            QueryResult {
                                ids: hits.iter().map(|h| h.id).collect(),
                                distances: hits.iter().map(|h| h.distance).collect(),
                                micros: q0.elapsed().as_micros() as u64,
                                stats,
                            },
                        ));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("search thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let secs = t.elapsed().as_secs_f64();
    let mut all: Vec<(usize, QueryResult)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    Ok(Line {
        what: format!("sync {threads} threads ({})", index.io_backend()),
        secs,
        results: all.into_iter().map(|(_, r)| r).collect(),
    })
}

fn print_line(line: &Line, gt: Option<&GroundTruth>, k: usize) {
    let n = line.results.len().max(1) as f64;
    let recall = gt.map(|gt| {
        line.results
            .iter()
            .enumerate()
            .map(|(i, r)| recall_at_k(&r.ids, gt.row(i), k))
            .sum::<f64>()
            / n
    });
    let mut lat: Vec<u64> = line.results.iter().map(|r| r.micros).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    // Summed as u64: u32 per-query counters over many queries can overflow.
    let ios: u64 = line.results.iter().map(|r| u64::from(r.stats.ios)).sum();
    let hops: u64 = line.results.iter().map(|r| u64::from(r.stats.hops)).sum();
    let hits: u64 = line
        .results
        .iter()
        .map(|r| u64::from(r.stats.cache_hits))
        .sum();
    println!(
        "{:<30} QPS {:>8.0}  recall@{k} {}  ios/q {:>5.1}  hops/q {:>5.1}  cached/q {:>4.1}  IOPS {:>7.0}  p50 {:>6} us  p99 {:>6} us",
        line.what,
        line.results.len() as f64 / line.secs,
        recall.map_or("-".into(), |r| format!("{r:.4}")),
        ios as f64 / n,
        hops as f64 / n,
        hits as f64 / n,
        ios as f64 / line.secs,
        pct(0.5),
        pct(0.99),
    );
}
