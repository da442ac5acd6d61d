//! Text and hybrid search across a cluster (issue 12): the same corpus as
//! one index and as 4 shards on 2 nodes gives the same BM25 top-k, with the
//! same scores, through either node, because every shard scores with the
//! statistics summed over all shards (`POST /v1/text/stats`). Hybrid
//! queries fuse the two lists after each was merged across shards, as one
//! index would; filters apply to the text list; bad requests are 400s that
//! name the problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use shardann_engine::docs::UserId;
use shardann_engine::fusion::Fusion;
use shardann_engine::index::OpenOptions;
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli_ok, l2, p};

const N: usize = 400;
const DIM: usize = 16;
/// A vocabulary whose words occur with very different frequencies, so that
/// shard-local document frequencies differ from the global ones.
const WORDS: [&str; 24] = [
    "file", "open", "read", "write", "socket", "memory", "page", "cache", "signal", "thread",
    "mutex", "clock", "timer", "pipe", "fork", "exec", "mmap", "o_direct", "inode", "quota",
    "epoll", "futex", "prctl", "ptrace",
];

struct Doc {
    id: String,
    vector: Vec<u8>,
    payload: Map<String, Value>,
}

fn documents() -> Vec<Doc> {
    let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
    (0..N)
        .map(|i| {
            let vector: Vec<u8> = (0..DIM).map(|_| (next() % 256) as u8).collect();
            // Word r with weight ~1/(r+1): skewed frequencies; lengths vary.
            let len = 3 + (next() % 20) as usize;
            let text: Vec<&str> = (0..len)
                .map(|_| {
                    let x = (next() % 1000) as f64 / 1000.0;
                    let r = ((WORDS.len() as f64 + 1.0).powf(x) - 1.0) as usize;
                    WORDS[r.min(WORDS.len() - 1)]
                })
                .collect();
            let mut payload = Map::new();
            payload.insert("title".into(), json!(format!("page {i}")));
            payload.insert("text".into(), json!(text.join(" ")));
            payload.insert("lang".into(), json!(["fr", "en"][i % 2]));
            Doc {
                id: format!("d{i}"),
                vector,
                payload,
            }
        })
        .collect()
}

pub(crate) fn node_toml(
    id: &str,
    addr: SocketAddr,
    dir: &Path,
    shards: &[u32],
    peers: &str,
) -> String {
    format!(
        "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nshards = {shards:?}\n\
         executors = 1\ncluster_token = \"s3cret\"\nfollow_ms = 0\n{peers}",
        p(dir)
    )
}

pub(crate) fn peer(id: &str, addr: SocketAddr, shards: &[u32]) -> String {
    format!("[[peers]]\nid = \"{id}\"\naddress = \"{addr}\"\nshards = {shards:?}\n")
}

pub(crate) fn start(d: &Path, id: &'static str, addr: SocketAddr, toml: String) -> NodeProc {
    let path = d.join(format!("{id}.toml"));
    std::fs::write(&path, toml).unwrap();
    let mut n = NodeProc::start(id, addr, &path);
    n.wait_ready();
    n
}

fn build(docs_path: &Path, out: &Path, shards: usize, text: bool) {
    let shards = shards.to_string();
    let mut args = vec![
        "build",
        "--docs",
        p(docs_path),
        "--vector-type",
        "u8",
        "--filter-fields",
        "lang",
        "--out",
        p(out),
        "--max-degree",
        "16",
        "--build-list",
        "32",
        "--pq-bytes",
        "8",
        "--threads",
        "2",
    ];
    if text {
        args.extend(["--text-fields", "title,text"]);
    }
    if shards != "1" {
        args.extend(["--shards", &shards, "--partition", "random"]);
    }
    cli_ok(&args);
}

/// (id, score) of a JSON hit list.
fn scored(hits: &Value, field: &str) -> Vec<(String, f32)> {
    hits.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h[field].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

/// The two lists agree: the same scores in order (to float rounding), and
/// the same ids wherever the score is not tied with a neighbour.
fn assert_same_ranking(got: &[(String, f32)], want: &[(String, f32)], at: &str) {
    assert_eq!(got.len(), want.len(), "{at}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.1 - w.1).abs() <= 1e-5 * w.1.abs().max(1.0),
            "{at}: rank {i}: {got:?} vs {want:?}"
        );
        let tied = |j: usize| want.get(j).is_some_and(|o| (o.1 - w.1).abs() <= 1e-5);
        let tied_with_neighbour = (i > 0 && tied(i - 1)) || tied(i + 1);
        if !tied_with_neighbour {
            assert_eq!(g.0, w.0, "{at}: rank {i}: {got:?} vs {want:?}");
        }
    }
}

/// `docs` as a JSON Lines file in `d` (id, vector, payload per line).
fn write_documents(d: &Path, docs: &[Doc]) -> PathBuf {
    let mut jsonl = String::new();
    for doc in docs {
        let mut line = doc.payload.clone();
        line.insert("id".into(), json!(doc.id));
        line.insert("vector".into(), json!(doc.vector));
        jsonl.push_str(&Value::Object(line).to_string());
        jsonl.push('\n');
    }
    let path = d.join("docs.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    path
}

#[test]
fn bm25_and_hybrid_rank_as_one_index_across_shards_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = documents();
    let docs_path = write_documents(d, &docs);
    let one = d.join("one");
    let four = d.join("four");
    build(&docs_path, &one, 1, true);
    build(&docs_path, &four, 4, true);

    // The reference: one index over the whole corpus, its own statistics.
    let whole = shardann_engine::shard::open(&one, OpenOptions::buffered()).unwrap();
    let whole_docs = whole.documents().unwrap();
    let whole_text = whole_docs.text().unwrap();
    let reference = |text: &str, k: usize, only_fr: bool| -> Vec<(String, f32)> {
        let allowed = only_fr.then(|| {
            let f = shardann_engine::filter::Filter::parse(&json!({"lang": "fr"})).unwrap();
            Arc::new(whole_docs.evaluate(&f).unwrap())
        });
        // Every match, so that ties at the cut are broken as the node
        // breaks them: by user id.
        let mut all: Vec<(String, f32)> = whole_text
            .search(&whole_text.analyze(text), None, N, allowed)
            .unwrap()
            .into_iter()
            .map(|(local, score)| match whole_docs.keys().key(local) {
                UserId::Str(s) => (s, score),
                other => panic!("{other:?}"),
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    };

    let addrs = free_addrs(2);
    let n1 = start(
        d,
        "n1",
        addrs[0],
        node_toml(
            "n1",
            addrs[0],
            &four,
            &[0, 1],
            &peer("n2", addrs[1], &[2, 3]),
        ),
    );
    let n2 = start(
        d,
        "n2",
        addrs[1],
        node_toml(
            "n2",
            addrs[1],
            &four,
            &[2, 3],
            &peer("n1", addrs[0], &[0, 1]),
        ),
    );
    let nodes = [&n1, &n2];
    let queries = [
        "file",
        "o_direct page cache",
        "futex prctl ptrace",
        "open read write file",
        "epoll socket signal quota",
        "Page 7",
    ];
    for q in queries {
        for only_fr in [false, true] {
            let want = reference(q, 10, only_fr);
            assert!(!want.is_empty(), "{q}");
            for node in nodes {
                let mut body = json!({"text": q, "k": 10});
                if only_fr {
                    body["filter"] = json!({"lang": "fr"});
                }
                let (status, r) = call(node.addr, Request::post("/v1/search", body.to_string()));
                let at = format!("{} {q:?} fr={only_fr}", node.id);
                assert_eq!(status, 200, "{at}: {r}");
                assert_eq!(r["partial"], false, "{at}: {r}");
                assert_eq!(r["stats"]["shards_searched"], 4, "{at}: {r}");
                assert_same_ranking(&scored(&r["hits"], "score"), &want, &at);
            }
        }
    }

    // A batch of texts answers as the single requests do.
    let (status, r) = call(
        n2.addr,
        Request::post(
            "/v1/search/batch",
            json!({"texts": queries, "k": 10}).to_string(),
        ),
    );
    assert_eq!(status, 200, "{r}");
    for (i, q) in queries.iter().enumerate() {
        let want = reference(q, 10, false);
        assert_same_ranking(
            &scored(&r["results"][i]["hits"], "score"),
            &want,
            &format!("batch texts[{i}] {q:?}"),
        );
    }

    // Hybrid: each list merged across shards, then fused, as one index
    // would: dense exact (list ≥ corpus), BM25 with global statistics.
    let by_id: BTreeMap<&str, &Doc> = docs.iter().map(|d| (d.id.as_str(), d)).collect();
    for (qi, q) in queries.iter().enumerate() {
        let vector = &docs[qi * 37].vector;
        let mut dense: Vec<(String, f32)> = docs
            .iter()
            .map(|d| (d.id.clone(), l2(vector, &d.vector)))
            .collect();
        dense.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        dense.truncate(30);
        let text = reference(q, 30, false);
        for (fusion, spec) in [
            (Fusion::default(), json!({"method": "rrf", "k": 60})),
            (
                Fusion::weighted(0.7, shardann_engine::fusion::Normalize::MinMax).unwrap(),
                json!({"method": "weighted", "alpha": 0.7, "normalize": "minmax"}),
            ),
        ] {
            let fused = fusion.fuse(&dense, &text);
            let want: Vec<(String, f32)> = fused
                .iter()
                .take(10)
                .map(|f| (f.key.clone(), f.score as f32))
                .collect();
            for node in nodes {
                let body = json!({"vector": vector, "text": q, "k": 10, "list": 400,
                                  "candidates": 30, "fusion": spec});
                let (status, r) = call(node.addr, Request::post("/v1/search", body.to_string()));
                let at = format!("{} hybrid {q:?} {spec}", node.id);
                assert_eq!(status, 200, "{at}: {r}");
                assert_same_ranking(&scored(&r["hits"], "score"), &want, &at);
                for h in r["hits"].as_array().unwrap() {
                    let doc = by_id[h["id"].as_str().unwrap()];
                    if let Some(dist) = h["distance"].as_f64() {
                        assert_eq!(dist as f32, l2(vector, &doc.vector), "{at}");
                    }
                    assert!(
                        h["distance"].is_number() || h["text_score"].is_number(),
                        "{at}: {h}"
                    );
                }
                // With fields: the same hits, each with its own payload's
                // fields, read after fusion from local shards and peers.
                let mut body = body;
                body["include"] = json!(["title", "lang"]);
                let (status, with) = call(node.addr, Request::post("/v1/search", body.to_string()));
                assert_eq!(status, 200, "{at} include: {with}");
                assert_eq!(with["partial"], false, "{at} include: {with}");
                assert_same_ranking(&scored(&with["hits"], "score"), &want, &at);
                for h in with["hits"].as_array().unwrap() {
                    let doc = by_id[h["id"].as_str().unwrap()];
                    let want_fields =
                        json!({"title": doc.payload["title"], "lang": doc.payload["lang"]});
                    assert_eq!(h["fields"], want_fields, "{at}: {h}");
                }
            }
        }
    }

    // Bad requests: a 400 that names the problem.
    let vector = &docs[0].vector;
    let bad = [
        (json!({"k": 10}), "give \"vector\", \"text\", or both"),
        (json!({"text": "  "}), "text is empty"),
        (
            json!({"text": "file", "fusion": {"method": "rrf"}}),
            "give both \"vector\" and \"text\"",
        ),
        (
            json!({"vector": vector, "text": "file", "fusion": {"method": "weighted", "alpha": 2.0}}),
            "alpha",
        ),
        (
            json!({"vector": vector, "text": "file", "fusion": {"method": "borda"}}),
            "borda",
        ),
        (
            json!({"vector": vector, "text": "file", "k": 10, "candidates": 5}),
            "candidates",
        ),
        (json!({"text": "file", "probe_shards": 1}), "probe_shards"),
    ];
    let bad_batches = [
        (json!({"k": 10}), "give \"vectors\", \"texts\", or both"),
        (
            json!({"vectors": [vector], "texts": ["a", "b"]}),
            "got 1 vectors and 2 texts",
        ),
        (json!({"texts": ["file", ""]}), "texts[1] is empty"),
    ];
    for (body, says) in bad_batches {
        let (status, r) = call(n1.addr, Request::post("/v1/search/batch", body.to_string()));
        assert_eq!(status, 400, "{body}: {r}");
        let msg = r["error"].as_str().unwrap();
        assert!(
            msg.contains(says),
            "{body}: {msg:?} should mention {says:?}"
        );
    }
    for (body, says) in bad {
        let (status, r) = call(n1.addr, Request::post("/v1/search", body.to_string()));
        assert_eq!(status, 400, "{body}: {r}");
        let msg = r["error"].as_str().unwrap();
        assert!(
            msg.contains(says),
            "{body}: {msg:?} should mention {says:?}"
        );
    }
    bench_runs_every_method(d, &docs, &docs_path, n1.addr);
    drop((n1, n2));

    // An index built without --text-fields: text queries are a 400 that
    // says how to build one, from either node, for local and remote shards.
    let plain = d.join("plain");
    build(&docs_path, &plain, 4, false);
    let addrs = free_addrs(2);
    let m1 = start(
        d,
        "m1",
        addrs[0],
        node_toml(
            "m1",
            addrs[0],
            &plain,
            &[0, 1],
            &peer("m2", addrs[1], &[2, 3]),
        ),
    );
    let m2 = start(
        d,
        "m2",
        addrs[1],
        node_toml(
            "m2",
            addrs[1],
            &plain,
            &[2, 3],
            &peer("m1", addrs[0], &[0, 1]),
        ),
    );
    for node in [&m1, &m2] {
        let (status, r) = call(
            node.addr,
            Request::post("/v1/search", json!({"text": "file"}).to_string()),
        );
        assert_eq!(status, 400, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("--text-fields"),
            "{r}"
        );
    }
}

/// `bench --server --methods dense,bm25,rrf --texts`: one run per method at
/// each list size, in the report's shape for text and hybrid runs: recall
/// for the dense run only, and the node's time in each signal.
fn bench_runs_every_method(d: &Path, docs: &[Doc], corpus: &Path, node: SocketAddr) {
    let base: Vec<u8> = docs.iter().flat_map(|doc| doc.vector.clone()).collect();
    let queries: Vec<u8> = docs[..20]
        .iter()
        .flat_map(|doc| doc.vector.clone())
        .collect();
    let (base_path, query_path, gt) = (d.join("base.u8bin"), d.join("q.u8bin"), d.join("gt.bin"));
    shardann_engine::data::write_vectors(&base_path, DIM, &base).unwrap();
    shardann_engine::data::write_vectors(&query_path, DIM, &queries).unwrap();
    cli_ok(&[
        "groundtruth",
        "--base",
        p(&base_path),
        "--queries",
        p(&query_path),
        "--k",
        "10",
        "--out",
        p(&gt),
    ]);
    let texts = d.join("texts.jsonl");
    let lines: Vec<String> = docs[..20]
        .iter()
        .map(|doc| json!({"_id": doc.id, "text": doc.payload["text"]}).to_string())
        .collect();
    std::fs::write(&texts, lines.join("\n")).unwrap();
    let (url, report) = (format!("http://{node}"), d.join("bench.json"));
    cli_ok(&[
        "bench",
        "--server",
        &url,
        "--queries",
        p(&query_path),
        "--gt",
        p(&gt),
        "--texts",
        p(&texts),
        "--corpus",
        p(corpus),
        "--methods",
        "dense,bm25,rrf",
        "--list",
        "20,40",
        "--k",
        "10",
        "--concurrency",
        "4",
        "--json",
        p(&report),
    ]);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let runs = r["runs"].as_array().unwrap();
    let shape: Vec<(u64, &str)> = runs
        .iter()
        .map(|x| (x["list"].as_u64().unwrap(), x["method"].as_str().unwrap()))
        .collect();
    // The order turns by one at each list size.
    assert_eq!(
        shape,
        [
            (20, "dense"),
            (20, "bm25"),
            (20, "rrf"),
            (40, "bm25"),
            (40, "rrf"),
            (40, "dense")
        ]
    );
    for run in runs {
        let (method, t) = (run["method"].as_str().unwrap(), &run["node_us"]);
        assert_eq!(run["failed"], 0, "{run}");
        assert_eq!(run["partial"], 0, "{run}");
        // Each query is its own document's vector and text: found.
        match method {
            "dense" => assert!(run["recall_at_k"].as_f64().unwrap() > 0.9, "{run}"),
            _ => assert!(run["recall_at_k"].is_null(), "{run}"),
        }
        assert_eq!(
            t["dense"].as_f64().unwrap() > 0.0,
            method != "bm25",
            "{run}"
        );
        assert_eq!(
            t["text"].as_f64().unwrap() > 0.0,
            method != "dense",
            "{run}"
        );
        // Statistics are collected across the 4 shards of 2 nodes.
        assert_eq!(
            t["text_stats"].as_f64().unwrap() > 0.0,
            method != "dense",
            "{run}"
        );
    }
    assert_eq!(r["texts"].as_str().unwrap(), p(&texts));

    // Text runs without texts, and text runs in process: errors that say so.
    let err = crate::cli(&[
        "bench",
        "--server",
        &url,
        "--queries",
        p(&query_path),
        "--gt",
        p(&gt),
        "--methods",
        "bm25",
    ])
    .unwrap_err();
    assert!(err.contains("--texts"), "{err}");
    let err = crate::cli(&[
        "bench",
        "--index",
        p(&d.join("one")),
        "--queries",
        p(&query_path),
        "--gt",
        p(&gt),
        "--methods",
        "dense,rrf",
    ])
    .unwrap_err();
    assert!(err.contains("bench --server"), "{err}");
}

/// A text query on a node whose peer for some shards has died: the BM25
/// statistics of those shards are asked of their other replica, so the
/// answer stays whole and ranks as before.
#[test]
fn text_statistics_are_asked_of_another_replica_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs_path = write_documents(d, &documents());
    let four = d.join("four");
    build(&docs_path, &four, 4, true);
    let a = free_addrs(3);
    let replicas = format!("{}{}", peer("n2", a[1], &[2, 3]), peer("n3", a[2], &[2, 3]));
    let n1 = start(
        d,
        "n1",
        a[0],
        node_toml("n1", a[0], &four, &[0, 1], &replicas),
    );
    let mut n2 = start(
        d,
        "n2",
        a[1],
        node_toml("n2", a[1], &four, &[2, 3], &peer("n1", a[0], &[0, 1])),
    );
    let _n3 = start(
        d,
        "n3",
        a[2],
        node_toml("n3", a[2], &four, &[2, 3], &peer("n1", a[0], &[0, 1])),
    );
    let queries = [
        "file",
        "o_direct page cache",
        "futex prctl ptrace",
        "epoll socket",
    ];
    let ask = |q: &str| {
        let body = json!({"text": q, "k": 10}).to_string();
        let (status, r) = call(n1.addr, Request::post("/v1/search", body));
        assert_eq!(status, 200, "{q}: {r}");
        r
    };
    let before: Vec<Value> = queries.iter().map(|q| ask(q)).collect();
    n2.kill();
    // Several rounds, so that n2 is picked first at least once.
    for round in 0..3 {
        for (q, want) in queries.iter().zip(&before) {
            let r = ask(q);
            assert_eq!(r["partial"], false, "round {round} {q}: {r}");
            assert_same_ranking(
                &scored(&r["hits"], "score"),
                &scored(&want["hits"], "score"),
                &format!("round {round} {q}"),
            );
        }
    }
}
