//! Cross-crate integration tests: the `shardann` CLI (through
//! `shardann::run`) over generated and real data, the golden v1 index, and
//! every bad input answered by a clear error.

mod bad_input;
mod cluster;
mod cluster_writes;
mod coordination;
mod documents;
mod documents_cluster;
mod documents_http;
mod embed;
mod eval;
mod golden;
mod merges;
mod ops;
mod overload;
mod pipeline;
mod replication;
mod segments;
mod sharding;
mod text_cluster;
mod text_queries;
mod writes;

use std::path::{Path, PathBuf};

/// Runs the CLI in-process; returns stdout or the error's full message.
pub fn cli(args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut argv = vec!["shardann", "--quiet"];
    argv.extend_from_slice(args);
    match shardann::run(argv, &mut out) {
        Ok(()) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Err(e) => Err(shardann::error_chain(&e)),
    }
}

/// Like [`cli`], but a failure fails the test with the message.
pub fn cli_ok(args: &[&str]) -> String {
    cli(args).unwrap_or_else(|e| panic!("shardann {args:?} failed: {e}"))
}

/// `build --docs` of a u8 JSON Lines file into a random 2-shard index with a
/// small graph (R 16, L 32, 8 PQ bytes, 2 threads): the index the write
/// tests start from. Returns the CLI's output.
pub fn build_small_docs(docs: &Path, filter_fields: &str, out: &Path) -> String {
    build_small_docs_in(docs, filter_fields, out, 2)
}

/// [`build_small_docs`] into `shards` shards.
pub fn build_small_docs_in(docs: &Path, filter_fields: &str, out: &Path, shards: usize) -> String {
    let shards = shards.to_string();
    cli_ok(&[
        "build",
        "--docs",
        p(docs),
        "--vector-type",
        "u8",
        "--filter-fields",
        filter_fields,
        "--out",
        p(out),
        "--shards",
        &shards,
        "--partition",
        "random",
        "--max-degree",
        "16",
        "--build-list",
        "32",
        "--pq-bytes",
        "8",
        "--threads",
        "2",
    ])
}

/// A search answer's hits as (id, distance) pairs (string ids).
pub fn hit_pairs(r: &serde_json::Value) -> Vec<(String, f64)> {
    r["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| {
            (
                h["id"].as_str().expect("a string id").to_string(),
                h["distance"].as_f64().expect("a distance"),
            )
        })
        .collect()
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A seeded xorshift64 generator: deterministic test data without a
/// dependency on rand's stream staying the same across versions.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Squared L2 distance between two u8 vectors, as the engine computes it.
pub fn l2(a: &[u8], b: &[u8]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f32::from(x) - f32::from(y);
            d * d
        })
        .sum()
}

/// One HTTP/2 request to a node; its status and JSON body.
pub fn call(
    addr: std::net::SocketAddr,
    req: shardann_server::client::Request,
) -> (u16, serde_json::Value) {
    use shardann_server::client::{exchange, Version};
    let r = exchange(addr, Version::Http2, vec![req]).unwrap();
    let (status, body) = r.into_iter().next().unwrap().unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// The MNIST t10k set (`base.u8bin`, `query.u8bin`, `gt100.bin`), from the
/// zstd files committed in `tests/data/mnist-t10k/` (origin, licence and
/// checksums: bench-datasets/README.md, section 6). Decompressed once per
/// test process into Cargo's temp dir for integration tests; each file is
/// written beside its final name and renamed, so concurrent test processes
/// never see a partial file. zstd checks each frame's checksum.
pub fn mnist_t10k() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-t10k");
        let to = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mnist-t10k");
        std::fs::create_dir_all(&to).unwrap();
        for name in ["base.u8bin", "query.u8bin", "gt100.bin"] {
            let zst = from.join(format!("{name}.zst"));
            let file = std::fs::File::open(&zst)
                .unwrap_or_else(|e| panic!("opening {}: {e}", zst.display()));
            let bytes = zstd::decode_all(file)
                .unwrap_or_else(|e| panic!("decompressing {}: {e}", zst.display()));
            let part = to.join(format!("{name}.{}.part", std::process::id()));
            std::fs::write(&part, bytes).unwrap();
            std::fs::rename(&part, to.join(name)).unwrap();
        }
        to
    })
    .clone()
}

/// Reads a bench JSON report.
pub fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("bench report")).expect("bench JSON")
}

/// recall@k of the run with list size `list` in a bench report.
pub fn recall_at(report: &serde_json::Value, list: u64) -> f64 {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["list"] == list)
        .and_then(|r| r["recall_at_k"].as_f64())
        .expect("run with that list size")
}

/// Generates a `preset` set and its ground truth (k neighbours under
/// `metric`) in `d`; returns the base, query and ground-truth paths.
pub fn generated(
    d: &std::path::Path,
    preset: &str,
    n: &str,
    queries: &str,
    seed: &str,
    metric: &str,
    k: &str,
) -> [std::path::PathBuf; 3] {
    cli_ok(&[
        "gen",
        "--preset",
        preset,
        "--n",
        n,
        "--queries",
        queries,
        "--seed",
        seed,
        "--out",
        p(d),
    ]);
    let ext = if preset == "sift-like" {
        "u8bin"
    } else {
        "fbin"
    };
    let (base, query, gt) = (
        d.join(format!("base.{ext}")),
        d.join(format!("query.{ext}")),
        d.join("gt.bin"),
    );
    cli_ok(&[
        "groundtruth",
        "--base",
        p(&base),
        "--queries",
        p(&query),
        "--k",
        k,
        "--metric",
        metric,
        "--out",
        p(&gt),
    ]);
    [base, query, gt]
}

/// Runs `shardann bench` on 2 threads with `extra` flags, writing and
/// returning its JSON report.
pub fn bench_json(
    index: &Path,
    queries: &Path,
    gt: &Path,
    extra: &[&str],
    json: &Path,
) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--index",
        p(index),
        "--queries",
        p(queries),
        "--gt",
        p(gt),
        "--threads",
        "2",
        "--json",
        p(json),
    ];
    args.extend_from_slice(extra);
    cli_ok(&args);
    report(json)
}

/// Copies a directory tree (files and subdirectories).
pub fn copy_all(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_all(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A u8 query file's rows as the JSON numbers the HTTP API takes.
pub fn query_rows(path: &Path) -> Vec<Vec<f64>> {
    shardann_engine::data::VectorFile::open(path)
        .unwrap()
        .vectors::<u8>()
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&x| f64::from(x)).collect())
        .collect()
}

/// `shardann build` of a small test index: `shards` shards (1: unsharded),
/// max degree `r`, build list 32, 16-byte PQ. Returns the CLI's output.
pub fn build_small(base: &Path, out: &Path, shards: usize, r: &str) -> String {
    let shards = shards.to_string();
    cli_ok(&[
        "build",
        "--base",
        p(base),
        "--out",
        p(out),
        "--shards",
        &shards,
        "--max-degree",
        r,
        "--build-list",
        "32",
        "--pq-bytes",
        "16",
    ])
}
