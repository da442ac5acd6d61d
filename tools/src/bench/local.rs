//! `bench --index DIR`: searches in this process, on blocking threads (one
//! query each) or on glommio executors (many queries in flight each), over
//! one index, every shard of a sharded one, or a sharded one searched as a
//! node does.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use shardann_engine::data::{GroundTruth, VectorFile};
use shardann_engine::docs::Include;
use shardann_engine::filter::Filter;
use shardann_engine::index::{DiskIndex, SearchScratch};
use shardann_engine::io::IoBackend;
use shardann_engine::search::{Plan, SearchParams};
use shardann_engine::Element;

use super::report::{BenchReport, Execution, QueryOutcome, Searched};
use super::{check_gt, run_lists};
use crate::cli::BenchArgs;
use crate::search::check_queries;
use crate::util::{cores, dir_bytes, human_bytes, load_filters};
use crate::with_elem;

/// Runs every query once with `threads` workers, each one query at a time.
fn run_queries<T: Element>(
    target: &Target,
    queries: &VectorFile,
    params: SearchParams,
    threads: usize,
    probe: usize,
    filters: &[Option<Filter>],
    include: &Include,
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
                        let mut filtered = None;
                        let (hits, stats) = match target {
                            // A filter's evaluation is part of the query's time.
                            Target::Single(idx) if filters.get(qi).is_some_and(Option::is_some) => {
                                let filter =
                                    filters.get(qi).and_then(Option::as_ref).context("filter")?;
                                let matches = idx.evaluate(filter)?;
                                let count = matches.docs().len();
                                let (mut hits, stats, plan) = idx.search_local(
                                    &mut scratch,
                                    qv.row(qi),
                                    params,
                                    Some(&matches),
                                )?;
                                idx.map_to_global(&mut hits);
                                filtered = Some((count, plan_name(plan)));
                                (hits, stats)
                            }
                            Target::Single(idx) => idx.search(&mut scratch, qv.row(qi), params)?,
                            Target::Sharded(set) => {
                                set.search_probing(&mut scratch, qv.row(qi), params, probe)?
                            }
                            Target::Node(..) => {
                                bail!("internal error: a node target runs on glommio only")
                            }
                        };
                        let ids: Vec<u32> = hits.iter().map(|h| h.id).collect();
                        let mut doc_blocks = None;
                        if let (Target::Single(idx), false) = (target, *include == Include::Nothing)
                        {
                            let docs = idx.documents().context("the index has no documents")?;
                            std::hint::black_box(docs.fetch(&ids, include)?);
                            doc_blocks = Some(docs.store().blocks_of(&ids) as u32);
                        }
                        let micros = t.elapsed().as_secs_f64() * 1e6;
                        if let Ok(mut slot) = slots[qi].lock() {
                            *slot = Some(QueryOutcome {
                                ids,
                                micros,
                                stats,
                                failed: false,
                                partial: false,
                                filtered,
                                doc_blocks,
                                node_us: None,
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

fn plan_name(plan: Plan) -> &'static str {
    match plan {
        Plan::Graph => "graph",
        Plan::FilteredGraph { .. } => "filtered_graph",
        Plan::Flat { .. } => "flat",
        Plan::Clustered { .. } => "clustered",
        Plan::Empty => "empty",
    }
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
            filtered: None,
            doc_blocks: None,
            node_us: None,
        })
        .collect();
    Ok((outcomes, wall))
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

/// `bench --index DIR`.
pub(super) fn bench(a: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    let index_dir = a
        .index
        .as_ref()
        .context("bench needs --index DIR or --server URL")?;
    super::dense_only(a)?;
    let t = Instant::now();
    let open_sharded = || -> anyhow::Result<Target> {
        Ok(Target::Sharded(
            shardann_engine::cluster::ShardedIndex::open(index_dir, a.read.open_options())
                .with_context(|| format!("opening sharded index {}", index_dir.display()))?,
        ))
    };
    let sharded = index_dir
        .join(shardann_engine::layout::CLUSTER_FILE)
        .exists();
    let mut target = if sharded
        && a.concurrency > 0
        && !matches!(a.read.io, IoBackend::Pread)
        && shardann_engine::io::UringReader::usable()
    {
        let mut config = shardann_server::NodeConfig::single(index_dir, "127.0.0.1:0");
        config.cache_nodes = a.read.cache_nodes;
        config.nav_points = a.read.nav_points;
        config.cluster_codes = a.read.cluster_codes.clone();
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
        let mut single = a.read.open(index_dir)?;
        if let Some(n) = a.flat_max {
            single.set_flat_max_matches(n);
        }
        if let Some(n) = a.clustered_max {
            single.set_clustered_max_entries(n);
        }
        Target::Single(std::sync::Arc::new(single))
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
    let filters = load_filters(a.filter.as_deref(), a.filters.as_deref(), queries.len())?;
    let include = Include::from_names(&a.include);
    let filtered = filters.iter().any(Option::is_some) || include != Include::Nothing;
    if filtered {
        let Target::Single(single) = &target else {
            bail!("--filter/--filters/--include: this bench runs them on one (unsharded) index");
        };
        if single.documents().is_none() {
            bail!(
                "{} has no documents: filters and include need an index built with --docs (and --filter-fields)",
                index_dir.display()
            );
        }
    }
    let threads = if a.threads == 0 { cores() } else { a.threads };
    // How queries run: blocking threads, or glommio executors with many
    // queries each. pread has no completion queue to wait on, so more
    // queries in flight means more blocking threads.
    // Filtered searches run on the blocking driver (the glommio runner
    // does not take filters yet).
    let mut use_glommio = !filtered
        && a.concurrency > 0
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
    let runs = run_lists(a, &gt, out, |list, _dense| {
        let params = SearchParams {
            k: a.k,
            list,
            beam: a.beam,
        };
        params.validate()?;
        Ok(match &target {
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
                with_elem!(idx.elem(), T => run_queries::<T>(&target, &queries, params, worker_threads, probe, &filters, &include)?)
            }
        })
    })?;
    let shards = target.shards();
    let report = BenchReport::new(
        a,
        queries.len(),
        open_seconds,
        Searched {
            server: None,
            index: index_dir.display().to_string(),
            num_points: total_points as u64,
            shards: shards.len(),
            probe_shards: probe,
            dim: h.dim,
            elem: h.elem.to_string(),
            metric: h.metric.to_string(),
            max_degree: Some(h.max_degree),
            build_list: Some(h.build_list),
            alpha: Some(h.alpha),
            pq_bytes: Some(h.pq_bytes),
            index_bytes_on_disk: Some(shards.iter().map(|s| dir_bytes(s.dir())).sum()),
            pq_ram_bytes: Some(shards.iter().map(|s| s.memory_bytes()).sum()),
            cache_nodes: shards.iter().map(|s| s.node_cache().len()).sum(),
            cache_bytes: Some(shards.iter().map(|s| s.node_cache().memory_bytes()).sum()),
            nav_points: shards
                .iter()
                .filter_map(|s| s.navigation())
                .map(|n| n.len())
                .sum(),
            nav_bytes: Some(
                shards
                    .iter()
                    .filter_map(|s| s.navigation())
                    .map(|n| n.memory_bytes())
                    .sum(),
            ),
        },
        Execution {
            runtime,
            io_backend,
            threads,
            concurrency: a.concurrency,
            batch: 1,
        },
        runs,
    );
    writeln!(
        out,
        "index open {:.2}s (cache {} nodes, navigation graph {} points, {}); {} on disk, {} in RAM (PQ codes, cache, navigation graph, documents, clustered copies); peak RSS {}",
        open_seconds,
        report.cache_nodes,
        report.nav_points,
        human_bytes(report.nav_bytes.unwrap_or(0) as u64),
        human_bytes(report.index_bytes_on_disk.unwrap_or(0)),
        human_bytes(report.pq_ram_bytes.unwrap_or(0) as u64),
        report.peak_rss_bytes.map_or("unknown".into(), human_bytes)
    )?;
    report.write_json(a, out)?;
    Ok(report)
}
