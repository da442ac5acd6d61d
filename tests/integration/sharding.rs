//! `build --shards`: shards keep global ids and merged results lose no recall.

use shardann_engine::cluster::{read_manifest, ShardedIndex};
use shardann_engine::data::{recall_at_k, GroundTruth, VectorFile};
use shardann_engine::index::{OpenOptions, SearchScratch};
use shardann_engine::layout::IDS_FILE;
use shardann_engine::search::SearchParams;
use shardann_engine::shard;

use crate::{bench_json, cli, cli_ok, generated, p, recall_at};

#[test]
fn sharded_build_merges_to_the_unsharded_recall() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, gt_path] = generated(d, "sift-like", "8000", "200", "12", "l2", "10");
    let graph = [
        "--max-degree",
        "32",
        "--build-list",
        "64",
        "--pq-bytes",
        "16",
    ];
    let whole = d.join("whole");
    let mut args = vec!["build", "--base", p(&base), "--out", p(&whole)];
    args.extend_from_slice(&graph);
    cli_ok(&args);

    let gt = GroundTruth::read(&gt_path).unwrap();
    let base_file = VectorFile::open(&base).unwrap();
    let b = base_file.vectors::<u8>().unwrap();
    let queries = VectorFile::open(&query).unwrap();
    let q = queries.vectors::<u8>().unwrap();
    let params = SearchParams {
        k: 10,
        list: 12,
        beam: 4,
    };
    let opts = OpenOptions {
        direct_io: false,
        ..Default::default()
    };
    let mut scratch = SearchScratch::<u8>::default();
    let idx = shard::open(&whole, opts).unwrap();
    let unsharded: f64 = (0..q.len())
        .map(|i| {
            let ids: Vec<u32> = idx
                .search(&mut scratch, q.row(i), params)
                .unwrap()
                .0
                .iter()
                .map(|h| h.id)
                .collect();
            recall_at_k(&ids, gt.row(i), 10)
        })
        .sum::<f64>()
        / q.len() as f64;

    for partition in ["kmeans", "random"] {
        let out = d.join(partition);
        let mut args = vec![
            "build",
            "--base",
            p(&base),
            "--out",
            p(&out),
            "--shards",
            "4",
            "--partition",
            partition,
        ];
        args.extend_from_slice(&graph);
        let msg = cli_ok(&args);
        assert!(msg.contains("built 4 shards"), "{msg}");

        // Every point is in exactly one shard, under its global id.
        let manifest = read_manifest(&out).unwrap();
        let mut seen = vec![0u8; 8000];
        for s in &manifest.shards {
            let segment = shardann_engine::shard::resolve(&out.join(&s.dir)).unwrap();
            for id in shardann_engine::layout::read_ids(&segment.join(IDS_FILE)).unwrap() {
                seen[id as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "{partition}: a point is missing or in two shards"
        );
        assert_eq!(
            manifest.centroids.len(),
            if partition == "kmeans" { 4 } else { 0 }
        );

        let sharded = ShardedIndex::open(&out, opts).unwrap();
        let recall: f64 = (0..q.len())
            .map(|i| {
                let (hits, _) = sharded.search(&mut scratch, q.row(i), params).unwrap();
                // Exact distances are right for the global ids returned.
                for h in &hits {
                    let want =
                        shardann_engine::metric::scalar::l2sq(q.row(i), b.row(h.id as usize));
                    assert_eq!(h.distance as f64, want);
                }
                recall_at_k(
                    &hits.iter().map(|h| h.id).collect::<Vec<_>>(),
                    gt.row(i),
                    10,
                )
            })
            .sum::<f64>()
            / q.len() as f64;
        eprintln!("{partition}: merged recall@10 {recall:.4}, unsharded {unsharded:.4} (L=12)");
        assert!(
            recall >= unsharded - 0.01,
            "{partition}: merged recall {recall} vs unsharded {unsharded}"
        );
    }

    // bench runs over every shard of a sharded index, in the same report shape.
    let r = bench_json(
        &d.join("random"),
        &query,
        &gt_path,
        &["--list", "12"],
        &d.join("bench.json"),
    );
    assert_eq!(
        (r["num_points"].as_u64(), r["shards"].as_u64()),
        (Some(8000), Some(4))
    );
    assert!(
        recall_at(&r, 12) >= unsharded - 0.01,
        "{}",
        recall_at(&r, 12)
    );
    // Probing the 2 nearest k-means shards reads less than probing all 4.
    let probe = |shards: &str, name: &str| {
        let extra = ["--list", "12", "--probe-shards", shards];
        bench_json(&d.join("kmeans"), &query, &gt_path, &extra, &d.join(name))
    };
    let (all, two) = (probe("0", "all.json"), probe("2", "two.json"));
    assert_eq!(
        (all["probe_shards"].as_u64(), two["probe_shards"].as_u64()),
        (Some(4), Some(2))
    );
    let ios = |r: &serde_json::Value| r["runs"][0]["mean_ios"].as_f64().unwrap();
    assert!(ios(&two) < ios(&all), "{} vs {}", ios(&two), ios(&all));
    eprintln!(
        "kmeans probe 2 of 4: recall {:.4}, reads {:.1}; all 4: recall {:.4}, reads {:.1}",
        recall_at(&two, 12),
        ios(&two),
        recall_at(&all, 12),
        ios(&all)
    );
    // With --concurrency the shards are searched as a node does (glommio,
    // a query's shards concurrently): the same answers as blocking threads.
    for (name, extra) in [("conc.json", "0"), ("conc-probe.json", "2")] {
        let args = [
            "--list",
            "12",
            "--probe-shards",
            extra,
            "--concurrency",
            "4",
        ];
        let r = bench_json(&d.join("kmeans"), &query, &gt_path, &args, &d.join(name));
        let blocking = if extra == "0" { &all } else { &two };
        // (CI also runs this with io_uring disabled: then blocking threads.)
        let want = if std::env::var_os("SHARDANN_DISABLE_URING").is_some() {
            "threads"
        } else {
            "glommio"
        };
        assert_eq!(r["runtime"], want, "{name}");
        assert_eq!(recall_at(&r, 12), recall_at(blocking, 12), "{name}");
        assert_eq!(ios(&r), ios(blocking), "{name}");
    }

    // A manifest that lies about its shards is refused with a message.
    let kmeans = d.join("kmeans");
    let text = std::fs::read_to_string(kmeans.join("cluster.json")).unwrap();
    std::fs::write(
        kmeans.join("cluster.json"),
        text.replace("\"dir\": \"shard-1\"", "\"dir\": \"../shard-1\""),
    )
    .unwrap();
    let e = ShardedIndex::open(&kmeans, opts)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(
        e.contains("cluster.json") && e.contains("plain name"),
        "{e}"
    );
    assert!(cli(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&d.join("x")),
        "--shards",
        "9000"
    ])
    .unwrap_err()
    .contains("shard count"));
}

/// Issue 13: `build --shards N --plan-only`, then one `build --plan DIR
/// --shard i` per shard in any order, leaves the directory `build --shards N`
/// writes: the same files byte for byte (with one thread each, where the
/// graph build is deterministic) and the same answers.
#[test]
fn shards_built_apart_from_a_plan_match_the_one_process_build() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "3000", "30", "5", "l2", "10");
    let graph = [
        "--max-degree",
        "16",
        "--build-list",
        "32",
        "--pq-bytes",
        "8",
        "--threads",
        "1",
    ];
    let together = d.join("together");
    let mut args = vec![
        "build",
        "--base",
        p(&base),
        "--out",
        p(&together),
        "--shards",
        "3",
    ];
    args.extend_from_slice(&graph);
    cli_ok(&args);

    let apart = d.join("apart");
    let mut args = vec![
        "build",
        "--base",
        p(&base),
        "--out",
        p(&apart),
        "--shards",
        "3",
        "--plan-only",
    ];
    args.extend_from_slice(&graph);
    let msg = cli_ok(&args);
    assert!(
        msg.contains("planned 3 shards") && msg.contains("--plan"),
        "{msg}"
    );
    assert!(!apart.join("shard-0").exists(), "the plan builds no shard");
    for shard in ["2", "0", "1"] {
        // The graph flags are the plan's: given again (equal) they are accepted.
        let msg = cli_ok(&[
            "build",
            "--plan",
            p(&apart),
            "--shard",
            shard,
            "--base",
            p(&base),
            "--threads",
            "1",
            "--max-degree",
            "16",
        ]);
        assert!(msg.contains(&format!("built shard {shard} of 3")), "{msg}");
    }
    for name in [
        "cluster.json",
        "plan.json",
        "plan/shard-0.ids",
        "plan/shard-2.ids",
    ] {
        let read = |root: &std::path::Path| std::fs::read(root.join(name)).unwrap();
        assert_eq!(read(&together), read(&apart), "{name}");
    }
    for s in 0..3 {
        for file in ["disk.index", "pq.bin", IDS_FILE] {
            let path = format!("shard-{s}/v0000000001/{file}");
            let read = |root: &std::path::Path| std::fs::read(root.join(&path)).unwrap();
            assert!(read(&together) == read(&apart), "{path} differs");
        }
    }
    let queries = VectorFile::open(&query).unwrap();
    let q = queries.vectors::<u8>().unwrap();
    let opts = OpenOptions {
        direct_io: false,
        ..Default::default()
    };
    let (one, two) = (
        ShardedIndex::open(&together, opts).unwrap(),
        ShardedIndex::open(&apart, opts).unwrap(),
    );
    let params = SearchParams {
        k: 10,
        list: 20,
        beam: 4,
    };
    let mut scratch = SearchScratch::<u8>::default();
    for i in 0..q.len() {
        let hits = one.search(&mut scratch, q.row(i), params).unwrap().0;
        assert_eq!(hits.len(), 10);
        assert_eq!(
            hits,
            two.search(&mut scratch, q.row(i), params).unwrap().0,
            "query {i}"
        );
    }

    // What a shard build refuses, each with a message that says why.
    let other = d.join("other.u8bin");
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[8] ^= 1; // first element of row 0, always among the fingerprinted rows
    std::fs::write(&other, &bytes).unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--plan", p(&apart), "--base", p(&base)];
        args.extend_from_slice(extra);
        cli(&args).unwrap_err()
    };
    let e = cli(&[
        "build",
        "--plan",
        p(&apart),
        "--shard",
        "0",
        "--base",
        p(&other),
    ])
    .unwrap_err();
    assert!(e.contains("not the ones the plan was made from"), "{e}");
    let e = build(&["--shard", "3"]);
    assert!(e.contains("no shard 3") && e.contains("3 shard"), "{e}");
    let e = build(&["--shard", "0", "--max-degree", "24"]);
    assert!(
        e.contains("fixes the build parameters")
            && e.contains("--max-degree 24 (the plan's is 16)"),
        "{e}"
    );
    let e = build(&["--shard", "0", "--shards", "3"]);
    assert!(e.contains("--shards") && e.contains("--plan"), "{e}");
    let e = cli(&[
        "build",
        "--plan",
        p(&d.join("together/shard-0")),
        "--shard",
        "0",
        "--base",
        p(&base),
    ])
    .unwrap_err();
    assert!(e.contains("cluster.json"), "{e}");
    std::fs::remove_file(apart.join("plan.json")).unwrap();
    let e = build(&["--shard", "0"]);
    assert!(
        e.contains("no plan here") && e.contains("--plan-only"),
        "{e}"
    );
    let e = cli(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&d.join("one")),
        "--plan-only",
    ])
    .unwrap_err();
    assert!(e.contains("--shards N"), "{e}");
}
