//! Running a batch of queries on glommio executors, one per core.
//!
//! ```text
//!                 next: AtomicUsize (the only shared mutable state)
//!                   │ fetch_add(1)                │ fetch_add(1)
//!   executor 0 (CPU a) ───────────┐   executor 1 (CPU b) ───────────┐
//!   │ DmaFile (its own fd)        │   │ DmaFile (its own fd)        │
//!   │ task 0 … task C-1           │   │ task 0 … task C-1           │
//!   │  each: take query i,        │   │                             │
//!   │  search_one (W reads/round) │   │                             │
//!   └── Vec<(i, QueryResult)> ────┘   └── Vec<(i, QueryResult)> ────┘
//!                         └──── merged by query index ────┘
//! ```
//!
//! The index (header, geometry, PQ codebook and codes) is opened once and
//! shared read-only through an [`Arc`]; each executor opens its own
//! [`glommio::io::DmaFile`] because glommio files belong to one executor.
//! With `C` tasks per executor and beam width `W`, up to `C × W` reads are in
//! flight per core: the disk needs a deep queue to reach its IOPS, which a
//! thread-per-query design can only get with many threads.

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use shardann_engine::data::Vectors;
use shardann_engine::index::{DiskIndex, OpenOptions};
use shardann_engine::search::{BeamSearch, SearchParams, SearchStats};
use shardann_engine::Element;

use crate::error::{Result, ServerError};
use crate::rt::file::IndexFile;
use crate::shard::{open_index_file, search_one};

/// io_uring buffer memory per executor. glommio locks it in RAM, and this
/// machine's memlock limit is 8 MiB for all executors together, so 2 MiB
/// leaves room for two executors' rings and buffers (512 in-flight 4 KiB
/// reads each, more than the ring holds).
pub const DEFAULT_IO_MEMORY: usize = 2 << 20;

/// The answer to one query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Nearest first; at most `k`.
    pub ids: Vec<u32>,
    /// Distances matching `ids`, in the metric's convention.
    pub distances: Vec<f32>,
    /// Latency from the moment a task took the query to its last visit,
    /// including time spent waiting for the executor while other queries ran.
    pub micros: u64,
    /// What the search cost (sectors read, rounds, nodes visited).
    pub stats: SearchStats,
}

/// How to run a batch: how many executors, how many queries in flight on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Executors (threads). Each is pinned to its own CPU when there are at
    /// least this many CPUs online; otherwise they are left unpinned.
    pub executors: usize,
    /// Tasks per executor, each running one query at a time.
    pub concurrency: usize,
    /// glommio's io_uring buffer memory per executor, in bytes.
    pub io_memory: usize,
}

impl RuntimeConfig {
    pub fn new(executors: usize, concurrency: usize) -> Self {
        RuntimeConfig {
            executors,
            concurrency,
            io_memory: DEFAULT_IO_MEMORY,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.executors == 0 {
            return Err(ServerError::InvalidParameter(
                "executors must be at least 1".into(),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Err(ServerError::InvalidParameter(format!(
                "concurrency (queries in flight per executor) must be in 1..=4096, got {}",
                self.concurrency
            )));
        }
        Ok(())
    }
}

/// Opens the index at `index_dir` and searches every query in `queries` on
/// `executors` glommio executors running `concurrency` queries each.
///
/// Node sectors are read with `O_DIRECT` through io_uring, so the numbers
/// measure the device, not the page cache. Results come back in query order
/// and are identical to the engine's synchronous `DiskIndex::search`.
/// `queries` is copied once so executor threads can share it.
///
/// # Errors
/// A bad parameter, a query set whose type or dimension differs from the
/// index, an index that does not open, glommio failing to start (io_uring
/// unavailable, memlock too low), or any query's read or decode failing
/// (reported with its query index; the remaining queries are abandoned).
pub fn run_queries<T: Element>(
    index_dir: &Path,
    queries: Vectors<'_, T>,
    params: SearchParams,
    executors: usize,
    concurrency: usize,
) -> Result<Vec<QueryResult>> {
    let config = RuntimeConfig::new(executors, concurrency);
    config.validate()?;
    // The engine's own reader is never used for node reads here, so the
    // cheapest one will do: it only reads the header sector.
    let index = Arc::new(shardann_engine::shard::open(
        index_dir,
        OpenOptions::buffered(),
    )?);
    run_queries_on(&index, queries, params, &config)
}

/// [`run_queries`] on an index that is already open, so a benchmark can time
/// the searches without the open, and reuse the index across runs. Open it
/// with `OpenOptions::cache_nodes` to serve the nodes nearest the medoid from
/// RAM; [`run_queries`] opens without a cache.
pub fn run_queries_on<T: Element>(
    index: &Arc<DiskIndex>,
    queries: Vectors<'_, T>,
    params: SearchParams,
    config: &RuntimeConfig,
) -> Result<Vec<QueryResult>> {
    config.validate()?;
    params.validate()?;
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    // Checked once here rather than failing the same way on every query.
    index.check_query("query set", queries.row(0))?;

    let n = queries.len();
    let shared = Shared {
        index: Arc::clone(index),
        queries: queries.as_slice().into(),
        dim: queries.dim(),
        params,
        next: Arc::new(AtomicUsize::new(0)),
    };
    let concurrency = config.concurrency;
    let handles = LocalExecutorPoolBuilder::new(placement(config.executors))
        .name("shardann-search")
        .io_memory(config.io_memory)
        .on_all_shards(move || executor_main(shared, concurrency))
        .map_err(|e| ServerError::Runtime {
            executors: config.executors,
            source: e.into(),
        })?;

    gather(handles, n)
}

/// Joins the executors and puts their `(query index, result)` pairs in
/// query order; the first executor error (or panic) fails the run.
fn gather(
    handles: glommio::PoolThreadHandles<Result<Vec<(usize, QueryResult)>>>,
    n: usize,
) -> Result<Vec<QueryResult>> {
    let mut results: Vec<Option<QueryResult>> = vec![None; n];
    let mut first_error = None;
    for (executor, joined) in handles.join_all().into_iter().enumerate() {
        match joined {
            Ok(Ok(done)) => {
                for (i, result) in done {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(result);
                    }
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ServerError::Executor {
                    executor,
                    source: e.into(),
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            // Every index below n is taken by exactly one task, and a task
            // that fails makes the run fail above; a gap is a bug here.
            r.ok_or_else(|| ServerError::Query {
                query: i,
                source: Box::new(ServerError::InvalidParameter(
                    "no executor returned a result for this query (internal error)".into(),
                )),
            })
        })
        .collect()
}

/// One executor per CPU, spread across cores, as thread-per-core wants. With
/// more executors than CPUs pinning would fail (`MaxSpread` refuses), so they
/// run unpinned: slower, but a run on a smaller machine still works.
pub(crate) fn placement(executors: usize) -> PoolPlacement {
    let cpus = CpuSet::online().map(|set| set.len()).unwrap_or(0);
    if executors <= cpus {
        PoolPlacement::MaxSpread(executors, None)
    } else {
        PoolPlacement::Unbound(executors)
    }
}

/// What every executor and task reads; cloned into each (cheap: `Arc`s).
struct Shared<T> {
    index: Arc<DiskIndex>,
    queries: Arc<[T]>,
    dim: usize,
    params: SearchParams,
    /// The next query to take. `Relaxed` is enough: it only hands out
    /// distinct indices; the queries themselves were written before the
    /// executor threads were spawned.
    next: Arc<AtomicUsize>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            index: Arc::clone(&self.index),
            queries: Arc::clone(&self.queries),
            dim: self.dim,
            params: self.params,
            next: Arc::clone(&self.next),
        }
    }
}

impl<T> Shared<T> {
    fn len(&self) -> usize {
        self.queries.len() / self.dim
    }

    /// Makes every task stop taking queries after its current one.
    fn stop(&self) {
        self.next.store(self.len(), Ordering::Relaxed);
    }
}

/// Runs on one executor: opens its file, runs `concurrency` tasks, gathers
/// their results.
async fn executor_main<T: Element>(
    shared: Shared<T>,
    concurrency: usize,
) -> Result<Vec<(usize, QueryResult)>> {
    let file = match open_index_file(&shared.index).await {
        Ok(file) => Rc::new(file),
        Err(e) => {
            shared.stop();
            return Err(e);
        }
    };
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| glommio::spawn_local(worker(shared.clone(), Rc::clone(&file))))
        .collect();
    let mut done = Vec::new();
    let mut first_error = None;
    // Every task is awaited even after an error: dropping a glommio task
    // cancels it, and the others stop by themselves once `stop` is called.
    for task in tasks {
        match task.await {
            Ok(mut part) => done.append(&mut part),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Ok(file) = Rc::try_unwrap(file) {
        // A close error after every read succeeded changes no result.
        let _ = file.close().await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// One task: takes queries until none are left, one at a time.
async fn worker<T: Element>(
    shared: Shared<T>,
    file: Rc<IndexFile>,
) -> Result<Vec<(usize, QueryResult)>> {
    let n = shared.len();
    let mut scratch = BeamSearch::<T>::new();
    let mut done = Vec::new();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let Some(query) = shared.queries.get(i * shared.dim..(i + 1) * shared.dim) else {
            break;
        };
        let start = Instant::now();
        match search_one(&shared.index, &file, &mut scratch, query, shared.params).await {
            Ok((hits, stats)) => done.push((
                i,
                QueryResult {
                    ids: hits.iter().map(|h| h.id).collect(),
                    distances: hits.iter().map(|h| h.distance).collect(),
                    micros: start.elapsed().as_micros() as u64,
                    stats,
                },
            )),
            Err(e) => {
                shared.stop();
                return Err(ServerError::Query {
                    query: i,
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(done)
}

/// Searches every query on a node's local shards, in process: the node's
/// own search path (each query searches its shards concurrently and merges
/// their top-k) on `config.executors` executors with `config.concurrency`
/// queries in flight each, without HTTP. This is the baseline that
/// `bench --server` is compared with. `probe`: search only the nearest
/// `probe` shards. Results come back in query order.
///
/// # Errors
/// As [`run_queries_on`]; a query that cannot search one of its shards
/// fails the run (an in-process bench has no other replica to ask).
pub fn run_node_queries<T: crate::api::WireElem>(
    node: &Arc<crate::node::Node>,
    queries: Vectors<'_, T>,
    params: SearchParams,
    probe: Option<usize>,
    config: &RuntimeConfig,
) -> Result<Vec<QueryResult>> {
    config.validate()?;
    params.validate()?;
    if queries.dim() != node.manifest.dim || T::TYPE != node.manifest.elem {
        return Err(ServerError::InvalidParameter(format!(
            "queries are {}-d {}; the index holds {}-d {}",
            queries.dim(),
            T::TYPE,
            node.manifest.dim,
            node.manifest.elem
        )));
    }
    let n = queries.len();
    let rows: Arc<[T]> = queries.as_slice().into();
    let dim = queries.dim();
    let next = Arc::new(AtomicUsize::new(0));
    let shared_node = Arc::clone(node);
    let concurrency = config.concurrency;
    let handles = LocalExecutorPoolBuilder::new(placement(config.executors))
        .name("shardann-node-bench")
        .io_memory(config.io_memory)
        .on_all_shards(move || async move {
            let exec = Rc::new(crate::node::Executor::<T>::open(shared_node).await?);
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (exec, rows, next) =
                        (Rc::clone(&exec), Arc::clone(&rows), Arc::clone(&next));
                    glommio::spawn_local(async move {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(row) = rows.get(i * dim..(i + 1) * dim) else {
                                break;
                            };
                            let q = crate::api::Query {
                                vector: Some(row.to_vec()),
                                text: None,
                                params,
                                probe_shards: probe,
                                // No deadline worth the name: a bench measures.
                                timeout_ms: Some(3_600_000),
                                filter: None,
                                include: Vec::new(),
                                embed: None,
                            };
                            let start = Instant::now();
                            let r = match exec.search(&q, None).await {
                                Ok(r) => r,
                                Err(e) => {
                                    next.store(n, Ordering::Relaxed);
                                    return Err(ServerError::Query {
                                        query: i,
                                        source: Box::new(e),
                                    });
                                }
                            };
                            if r.partial {
                                next.store(n, Ordering::Relaxed);
                                return Err(ServerError::Query {
                                    query: i,
                                    source: Box::new(ServerError::InvalidParameter(format!(
                                        "shard(s) {:?} failed (see the log above)",
                                        r.missing_shards
                                    ))),
                                });
                            }
                            done.push((
                                i,
                                QueryResult {
                                    ids: r.hits.iter().map(|h| h.global_id()).collect(),
                                    distances: r
                                        .hits
                                        .iter()
                                        .map(|h| h.distance.unwrap_or(f32::INFINITY))
                                        .collect(),
                                    micros: start.elapsed().as_micros() as u64,
                                    stats: r.stats.to_search_stats(),
                                },
                            ));
                        }
                        Ok(done)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut first_error = None;
            for t in tasks {
                match t.await {
                    Ok(mut part) => all.append(&mut part),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(all),
            }
        })
        .map_err(|e| ServerError::Runtime {
            executors: config.executors,
            source: e.into(),
        })?;
    gather(handles, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits() {
        assert!(RuntimeConfig::new(1, 1).validate().is_ok());
        assert!(RuntimeConfig::new(0, 1).validate().is_err());
        assert!(RuntimeConfig::new(1, 0).validate().is_err());
        assert!(RuntimeConfig::new(1, 4097).validate().is_err());
    }

    #[test]
    fn pins_only_when_there_are_enough_cpus() {
        assert!(matches!(placement(1), PoolPlacement::MaxSpread(1, None)));
        assert!(matches!(
            placement(100_000),
            PoolPlacement::Unbound(100_000)
        ));
    }
}
