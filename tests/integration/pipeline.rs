//! gen → groundtruth → build → search/bench, on generated and real data.

use crate::{bench_json, cli, cli_ok, generated, mnist_t10k, p, recall_at, report};

fn build_and_bench(
    dir: &std::path::Path,
    base: &str,
    queries: &str,
    gt: &str,
    metric: &str,
    extra: &[&str],
) -> serde_json::Value {
    let index = dir.join("index");
    let mut args = vec![
        "build",
        "--base",
        base,
        "--metric",
        metric,
        "--out",
        p(&index),
        "--max-degree",
        "32",
        "--build-list",
        "64",
        "--pq-bytes",
        "16",
    ];
    args.extend_from_slice(extra);
    cli_ok(&args);
    let json = dir.join("bench.json");
    let table = cli_ok(&[
        "bench",
        "--index",
        p(&index),
        "--queries",
        queries,
        "--gt",
        gt,
        "--k",
        "10",
        "--list",
        "10,40,100",
        "--beam",
        "4",
        "--threads",
        "2",
        "--json",
        p(&json),
    ]);
    assert!(table.contains("recall@k"), "{table}");
    report(&json)
}

#[test]
fn l2_pipeline_on_generated_data_reaches_recall_floor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, gt] = generated(d, "sift-like", "6000", "200", "7", "l2", "20");
    let r = build_and_bench(d, p(&base), p(&query), p(&gt), "l2", &[]);
    assert!(
        recall_at(&r, 40) >= 0.95,
        "recall@10 at L=40: {}",
        recall_at(&r, 40)
    );
    assert!(recall_at(&r, 100) >= recall_at(&r, 10));
    let run = &r["runs"][1];
    for key in ["qps", "mean_ios", "mean_hops"] {
        assert!(run[key].as_f64().unwrap() > 0.0, "{key} in {run}");
    }
    assert!(
        run["latency_us"]["p99"].as_f64().unwrap() >= run["latency_us"]["p50"].as_f64().unwrap()
    );
    assert_eq!(r["num_points"], 6000);
    assert!(
        r["io_backend"].as_str().unwrap().ends_with("-direct"),
        "{}",
        r["io_backend"]
    );
}

#[test]
fn inner_product_pipeline_reaches_recall_floor() {
    let dir = tempfile::tempdir().unwrap();
    let [base, query, gt] = generated(dir.path(), "deep-like", "6000", "200", "9", "ip", "10");
    let r = build_and_bench(dir.path(), p(&base), p(&query), p(&gt), "ip", &[]);
    assert!(
        recall_at(&r, 100) >= 0.95,
        "ip recall@10 at L=100: {}",
        recall_at(&r, 100)
    );
    assert_eq!(r["metric"], "ip");
}

#[test]
fn cosine_pipeline_reaches_recall_floor() {
    let dir = tempfile::tempdir().unwrap();
    let [base, query, gt] = generated(dir.path(), "deep-like", "4000", "100", "3", "cosine", "10");
    let r = build_and_bench(dir.path(), p(&base), p(&query), p(&gt), "cosine", &[]);
    assert!(
        recall_at(&r, 100) >= 0.95,
        "cosine recall@10 at L=100: {}",
        recall_at(&r, 100)
    );
}

/// Real, non-synthetic, high-dimensional data: MNIST digits with exact
/// ground truth computed independently of shardann.
#[test]
fn mnist_real_data_reaches_recall_floor() {
    let m = mnist_t10k();
    let dir = tempfile::tempdir().unwrap();
    let r = build_and_bench(
        dir.path(),
        p(&m.join("base.u8bin")),
        p(&m.join("query.u8bin")),
        p(&m.join("gt100.bin")),
        "l2",
        &["--pq-sample", "9000"],
    );
    assert!(
        recall_at(&r, 40) >= 0.95,
        "MNIST recall@10 at L=40: {}",
        recall_at(&r, 40)
    );
    assert_eq!(r["dim"], 784);
}

/// Our brute force agrees with the independently computed MNIST ground truth.
#[test]
fn groundtruth_matches_published_mnist_truth() {
    let m = mnist_t10k();
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gt.bin");
    cli_ok(&[
        "groundtruth",
        "--base",
        p(&m.join("base.u8bin")),
        "--queries",
        p(&m.join("query.u8bin")),
        "--k",
        "100",
        "--out",
        p(&gt),
    ]);
    let ours = shardann_engine::data::GroundTruth::read(&gt).unwrap();
    let theirs = shardann_engine::data::GroundTruth::read(m.join("gt100.bin")).unwrap();
    assert_eq!((ours.nq, ours.k), (theirs.nq, theirs.k));
    // Distances must match exactly (integers below 2^24 are exact in f32);
    // ids may differ only where distances tie.
    assert_eq!(ours.distances, theirs.distances);
    let differing = ours
        .ids
        .iter()
        .zip(&theirs.ids)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "ids differ in {differing} places");
}

/// Both IO backends and the in-memory reader return the same results.
#[test]
fn uring_pread_and_memory_readers_agree() {
    use shardann_engine::index::{OpenOptions, SearchScratch};
    use shardann_engine::io::{IoBackend, MemReader};
    use shardann_engine::navigation::NavPoints;
    use shardann_engine::search::SearchParams;
    use shardann_engine::shard;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli_ok(&[
        "gen",
        "--n",
        "3000",
        "--queries",
        "50",
        "--seed",
        "5",
        "--out",
        p(d),
    ]);
    let index = d.join("index");
    cli_ok(&[
        "build",
        "--base",
        p(&d.join("base.u8bin")),
        "--out",
        p(&index),
        "--max-degree",
        "24",
        "--pq-bytes",
        "16",
        "--layout",
        "v1",
    ]);
    let queries = shardann_engine::data::VectorFile::open(d.join("query.u8bin")).unwrap();
    let q = queries.vectors::<u8>().unwrap();
    let params = SearchParams {
        k: 10,
        list: 30,
        beam: 4,
    };
    let mut results = Vec::new();
    for (name, idx) in [
        (
            "pread",
            shard::open(
                &index,
                OpenOptions {
                    direct_io: true,
                    io: IoBackend::Pread,
                    cache_nodes: 0,
                    nav_points: NavPoints::NONE,
                },
            )
            .unwrap(),
        ),
        (
            "auto",
            shard::open(
                &index,
                OpenOptions {
                    direct_io: true,
                    io: IoBackend::Auto,
                    cache_nodes: 0,
                    nav_points: NavPoints::NONE,
                },
            )
            .unwrap(),
        ),
        (
            "memory",
            shard::open_with_reader(
                &index,
                Box::new(
                    MemReader::load(
                        &shardann_engine::shard::resolve(&index)
                            .unwrap()
                            .join("disk.index"),
                    )
                    .unwrap(),
                ),
            )
            .unwrap(),
        ),
    ] {
        let mut s = SearchScratch::<u8>::default();
        let all: Vec<_> = (0..q.len())
            .map(|i| idx.search(&mut s, q.row(i), params).unwrap())
            .collect();
        results.push((name, idx.io_backend(), all));
    }
    for (name, backend, r) in &results[1..] {
        assert_eq!(r, &results[0].2, "{name} ({backend}) differs from pread");
    }
    // A node cache of any size returns the same hits; only IO differs. In
    // layout v2 the cache keeps whole sectors, so a cached node brings its
    // sector mates as a read one does: the search takes the same path.
    let index_v2 = d.join("index-v2");
    cli_ok(&["relayout", "--index", p(&index), "--out", p(&index_v2)]);
    for (layout, dir) in [("v1", &index), ("v2", &index_v2)] {
        let open = |cache_nodes| {
            let opts = OpenOptions {
                direct_io: true,
                io: IoBackend::Auto,
                cache_nodes,
                nav_points: NavPoints::NONE,
            };
            shard::open(dir, opts).unwrap()
        };
        let idx = open(0);
        let mut s = SearchScratch::<u8>::default();
        let base: Vec<_> = (0..q.len())
            .map(|i| idx.search(&mut s, q.row(i), params).unwrap())
            .collect();
        let base_ios: u32 = base.iter().map(|(_, st)| st.ios).sum();
        let base_mates: u32 = base.iter().map(|(_, st)| st.sector_mates).sum();
        let base_visited: u32 = base.iter().map(|(_, st)| st.visited_nodes).sum();
        for cache_nodes in [1, 10, 300, 5000] {
            let idx = open(cache_nodes);
            let cached = idx.node_cache().len();
            let want = cache_nodes.min(3000);
            if layout == "v1" {
                assert_eq!(cached, want);
            } else {
                // Whole sectors: the last one may overshoot by its mates.
                let rps = idx.geometry().records_per_sector;
                assert!(
                    cached >= want && cached < want + rps,
                    "{layout}: {cached} cached for a budget of {cache_nodes}"
                );
            }
            let (mut ios, mut hits, mut mates) = (0, 0, 0);
            let mut visited = 0;
            for (i, (want, base_stats)) in base.iter().enumerate() {
                let (found, stats) = idx.search(&mut s, q.row(i), params).unwrap();
                assert_eq!(&found, want, "{layout}, cache {cache_nodes}, query {i}");
                assert_eq!(
                    stats.hops, base_stats.hops,
                    "{layout}, cache {cache_nodes}, query {i}: same rounds"
                );
                ios += stats.ios;
                hits += stats.cache_hits;
                mates += stats.sector_mates;
                visited += stats.visited_nodes;
            }
            // Same path: the same nodes visited, each read, cached or
            // brought by a sector read for another node. (A cached node no
            // longer shares its sector's read with a node of its round.)
            assert_eq!(visited, base_visited, "{layout}, cache {cache_nodes}");
            assert_eq!(
                ios + hits + mates,
                base_ios + base_mates,
                "{layout}: every visited node is read, cached or a sector mate, cache {cache_nodes}"
            );
            assert_eq!(base_ios + base_mates, base_visited, "{layout}");
            assert!(hits > 0);
        }
    }
    // The search command prints the same for both backends.
    let a = cli_ok(&[
        "search",
        "--index",
        p(&index),
        "--queries",
        p(&d.join("query.u8bin")),
        "--io",
        "pread",
        "--limit",
        "20",
    ]);
    let b = cli_ok(&[
        "search",
        "--index",
        p(&index),
        "--queries",
        p(&d.join("query.u8bin")),
        "--io",
        "auto",
        "--limit",
        "20",
    ]);
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 20);
    let _ = cli(&["inspect", "--index", p(&index), "--node", "3"]).unwrap();
}

/// `bench --concurrency`: many queries in flight per thread (glommio
/// executors over io_uring, or blocking pread threads where io_uring is
/// unavailable) gives exactly the recall and IO of the blocking path.
#[test]
fn concurrent_bench_matches_blocking_bench() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, gt] = generated(d, "sift-like", "4000", "100", "8", "l2", "10");
    let index = d.join("index");
    cli_ok(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&index),
        "--max-degree",
        "24",
        "--pq-bytes",
        "16",
    ]);
    let run = |extra: &[&str], name: &str| {
        let mut args = vec!["--list", "20,40"];
        args.extend_from_slice(extra);
        bench_json(&index, &query, &gt, &args, &d.join(name))
    };
    let blocking = run(&[], "a.json");
    for (extra, name) in [
        (&["--concurrency", "8"][..], "b.json"),
        (&["--concurrency", "4", "--io", "pread"][..], "c.json"),
        (
            &["--concurrency", "8", "--cache-nodes", "200"][..],
            "d.json",
        ),
    ] {
        let r = run(extra, name);
        for list in [20, 40] {
            assert_eq!(
                recall_at(&r, list),
                recall_at(&blocking, list),
                "{extra:?} L={list}"
            );
        }
        let visited = |r: &serde_json::Value| {
            r["runs"][0]["mean_ios"].as_f64().unwrap()
                + r["runs"][0]["mean_cache_hits"].as_f64().unwrap()
                + r["runs"][0]["mean_sector_mates"].as_f64().unwrap()
        };
        // Every visited node is read, cached or came in a sector read for
        // another node, whatever the runtime.
        assert!(
            (visited(&r) - visited(&blocking)).abs() < 1e-9,
            "{extra:?}: {} vs {}",
            visited(&r),
            visited(&blocking)
        );
        assert_eq!(r["concurrency"], extra[1].parse::<u64>().unwrap());
    }
    assert_eq!(
        run(&["--concurrency", "4", "--io", "pread"], "e.json")["runtime"],
        "threads"
    );
}
