//! The glommio path must answer exactly as the engine's synchronous search
//! does: same ids, same distances bit for bit, same IO counts. Anything else
//! means the async driver visits nodes differently.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use shardann_engine::data::Vectors;
use shardann_engine::index::{build_index, BuildParams, DiskIndex, OpenOptions, SearchScratch};
use shardann_engine::navigation::NavPoints;
use shardann_engine::pq::PqParams;
use shardann_engine::progress::NoProgress;
use shardann_engine::search::SearchParams;
use shardann_engine::shard;
use shardann_engine::synth::{generate_u8, Stream};
use shardann_engine::vamana::VamanaParams;
use shardann_engine::Metric;
use shardann_server::{run_queries, run_queries_on, QueryResult, RuntimeConfig, ServerError};

const DIM: usize = 128;
const POINTS: usize = 3000;
const QUERIES: usize = 50;
const PARAMS: SearchParams = SearchParams {
    k: 10,
    list: 40,
    beam: 4,
};

/// Built once per test binary into Cargo's per-target scratch directory
/// (overwritten on each run, so nothing accumulates in /tmp).
fn index_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-parity-index");
        let _ = std::fs::remove_dir_all(&dir);
        let data = generate_u8(POINTS, 5, Stream::Base);
        let params = BuildParams {
            metric: Metric::L2,
            vamana: VamanaParams {
                max_degree: 32,
                build_list: 50,
                ..Default::default()
            },
            pq: PqParams {
                num_chunks: 16,
                train_sample: POINTS,
                iterations: 6,
                seed: 5,
            },
            order: shardann_engine::layout::NodeOrder::Locality,
        };
        build_index(Vectors::new(&data[..], DIM), &params, &dir, &NoProgress)
            .expect("building the test index");
        dir
    })
}

/// Executor pools started by tests running in parallel would share the two
/// CPUs and the 8 MiB memlock budget; one pool at a time keeps both honest.
fn one_pool_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn queries() -> Vec<u8> {
    generate_u8(QUERIES, 5, Stream::Query)
}

fn sync_results(dir: &Path, queries: &[u8]) -> Vec<QueryResult> {
    sync_results_on(&shard::open(dir, OpenOptions::buffered()).unwrap(), queries)
}

fn sync_results_on(idx: &DiskIndex, queries: &[u8]) -> Vec<QueryResult> {
    let mut scratch = SearchScratch::<u8>::default();
    Vectors::new(queries, DIM)
        .iter()
        .map(|q| {
            let (hits, stats) = idx.search(&mut scratch, q, PARAMS).unwrap();
            QueryResult {
                ids: hits.iter().map(|h| h.id).collect(),
                distances: hits.iter().map(|h| h.distance).collect(),
                micros: 0,
                stats,
            }
        })
        .collect()
}

fn assert_same(what: &str, got: &[QueryResult], want: &[QueryResult]) {
    assert_eq!(got.len(), want.len(), "{what}: result count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.ids, w.ids, "{what}: ids of query {i}");
        let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&g.distances),
            bits(&w.distances),
            "{what}: distances of query {i}"
        );
        assert_eq!(g.stats, w.stats, "{what}: stats of query {i}");
    }
}

#[test]
fn glommio_search_matches_the_synchronous_engine() {
    let dir = index_dir();
    let queries = queries();
    let want = sync_results(dir, &queries);
    assert!(want.iter().all(|r| r.ids.len() == PARAMS.k));

    let _pool = one_pool_at_a_time();
    let got = run_queries(dir, Vectors::new(&queries[..], DIM), PARAMS, 2, 8).unwrap();
    assert_same("2 executors × 8 tasks", &got, &want);
    assert!(got.iter().all(|r| r.stats.ios > 0));

    // Queue depth 1: no overlap at all, still the same answers.
    let got = run_queries(dir, Vectors::new(&queries[..], DIM), PARAMS, 1, 1).unwrap();
    assert_same("1 executor × 1 task", &got, &want);

    // More tasks than queries: most find nothing to do and must exit cleanly.
    let got = run_queries(dir, Vectors::new(&queries[..], DIM), PARAMS, 2, 64).unwrap();
    assert_same("2 executors × 64 tasks", &got, &want);
}

#[test]
fn cached_nodes_are_visited_without_io_and_change_no_answer() {
    let dir = index_dir();
    let queries = queries();
    let uncached = sync_results(dir, &queries);
    let opts = OpenOptions {
        cache_nodes: 300,
        ..OpenOptions::buffered()
    };
    let index = Arc::new(shard::open(dir, opts).unwrap());
    assert_eq!(index.node_cache().len(), 300);
    let want = sync_results_on(&index, &queries);

    let _pool = one_pool_at_a_time();
    let got = run_queries_on(
        &index,
        Vectors::new(&queries[..], DIM),
        PARAMS,
        &RuntimeConfig::new(2, 8),
    )
    .unwrap();
    assert_same("2 executors × 8 tasks, 300 cached nodes", &got, &want);
    for (i, g) in got.iter().enumerate() {
        // Every search starts at the medoid, which the cache always holds.
        assert!(g.stats.cache_hits >= 1, "query {i}: {:?}", g.stats);
    }
    // Fewer reads in all. Not for every query: on a v2 index a cached node
    // comes without the other records of its sector, so a query can take
    // another path and read a sector or two more than it would uncached.
    let reads = |r: &[QueryResult]| r.iter().map(|q| q.stats.ios as u64).sum::<u64>();
    assert!(
        reads(&got) < reads(&uncached),
        "{} sectors read with the cache, {} without",
        reads(&got),
        reads(&uncached)
    );
}

/// Searches that start from the navigation graph's entries answer alike
/// on both drivers: the server plans through `DiskIndex::start_search` too.
#[test]
fn navigation_entries_answer_alike_on_both_drivers() {
    let dir = index_dir();
    let queries = queries();
    let opts = OpenOptions {
        nav_points: NavPoints::Count(200),
        ..OpenOptions::buffered()
    };
    let index = Arc::new(shard::open(dir, opts).unwrap());
    assert_eq!(index.navigation().map(|n| n.len()), Some(200));
    let want = sync_results_on(&index, &queries);
    let from_medoid = sync_results(dir, &queries);
    assert_ne!(
        want.iter().map(|r| r.stats.ios).collect::<Vec<_>>(),
        from_medoid.iter().map(|r| r.stats.ios).collect::<Vec<_>>(),
        "the entries changed no search"
    );

    let _pool = one_pool_at_a_time();
    let got = run_queries_on(
        &index,
        Vectors::new(&queries[..], DIM),
        PARAMS,
        &RuntimeConfig::new(2, 8),
    )
    .unwrap();
    assert_same("2 executors × 8 tasks, navigation graph", &got, &want);
}

#[test]
fn bad_parameters_and_queries_are_refused_before_starting() {
    let dir = index_dir();
    let queries = queries();
    let q = Vectors::new(&queries[..], DIM);
    let invalid = |r: Result<Vec<QueryResult>, ServerError>| match r {
        Err(e @ ServerError::InvalidParameter(_)) => e.to_string(),
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    assert!(invalid(run_queries(dir, q, PARAMS, 0, 8)).contains("executors"));
    assert!(invalid(run_queries(dir, q, PARAMS, 2, 0)).contains("concurrency"));

    let bad = SearchParams { k: 50, ..PARAMS };
    let err = run_queries(dir, q, bad, 2, 8).unwrap_err();
    assert!(
        matches!(err, ServerError::Engine(_)) && err.to_string().contains("list size"),
        "{err}"
    );

    let half = Vectors::new(&queries[..], DIM / 2);
    let err = run_queries(dir, half, PARAMS, 2, 8).unwrap_err();
    assert!(err.to_string().contains("dimension mismatch"), "{err}");

    let floats = vec![0.5f32; 2 * DIM];
    let err = run_queries(dir, Vectors::new(&floats[..], DIM), PARAMS, 2, 8).unwrap_err();
    assert!(err.to_string().contains("element type mismatch"), "{err}");

    let none = run_queries(dir, Vectors::new(&queries[..0], DIM), PARAMS, 2, 8).unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_failed_read_names_the_query_node_and_file() {
    let src = index_dir();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["disk.index", "pq.bin"] {
        std::fs::copy(src.join(name), tmp.path().join(name)).unwrap();
    }
    let index = Arc::new(shard::open(tmp.path(), OpenOptions::buffered()).unwrap());
    // Cut the node file after opening it: the header sector stays, every
    // node read then hits end of file.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("disk.index"))
        .unwrap();
    file.set_len(4096).unwrap();
    drop(file);

    let queries = queries();
    let _pool = one_pool_at_a_time();
    let err = run_queries_on(
        &index,
        Vectors::new(&queries[..], DIM),
        PARAMS,
        &RuntimeConfig::new(2, 4),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ServerError::Query { source, .. } if matches!(**source, ServerError::ShortRead { got: 0, .. })),
        "{msg}"
    );
    assert!(
        msg.contains("disk.index") && msg.contains("short read of node"),
        "{msg}"
    );
}
