//! Plain-text queries (issue 15, item 7): manpages-mini in 2 shards on 2
//! nodes, one with the model (`model_dir`) and one without. The node with
//! the model embeds `{"text": ...}` and answers as the sentence-transformers
//! vector of the same question does; the other answers BM25, and a 400 when
//! told to embed. Embedding time is in the answer's stats and in /metrics.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli, cli_ok, p};

fn search(addr: SocketAddr, body: Value) -> (u16, Value) {
    call(addr, Request::post("/v1/search", body.to_string()))
}

/// The ids of a response's hits, in order.
fn ids(r: &Value) -> Vec<String> {
    r["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {r}"))
        .iter()
        .map(|h| h["id"].to_string())
        .collect()
}

fn overlap(a: &[String], b: &[String]) -> usize {
    let a: BTreeSet<_> = a.iter().collect();
    b.iter().filter(|x| a.contains(x)).count()
}

/// The `text` of each line of `queries.jsonl`.
fn questions(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn text_queries_are_embedded_by_a_node_with_a_model() {
    let model = crate::embed::model_dir();
    let mini = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/manpages-mini");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let idx = d.join("idx");
    cli_ok(&[
        "build",
        "--docs",
        p(&mini.join("corpus.jsonl")),
        "--base",
        p(&mini.join("base.fbin")),
        "--metric",
        "cosine",
        "--text-fields",
        "title,text",
        "--shards",
        "2",
        "--partition",
        "random",
        "--max-degree",
        "24",
        "--build-list",
        "48",
        "--pq-bytes",
        "32",
        "--threads",
        "2",
        "--out",
        p(&idx),
    ]);

    // n1 has the model and shard 0; n2 has shard 1 and no model.
    let addrs = free_addrs(2);
    let names = ["n1", "n2"];
    let mut nodes: Vec<NodeProc> = (0..2)
        .map(|i| {
            let j = 1 - i;
            let model_line = if i == 0 {
                format!("model_dir = \"{}\"\n", p(&model))
            } else {
                String::new()
            };
            let toml = format!(
                "node_id = \"{}\"\nlisten = \"{}\"\nindex_dir = \"{}\"\nshards = [{i}]\nexecutors = 1\n\
                 {model_line}[[peers]]\nid = \"{}\"\naddress = \"{}\"\nshards = [{j}]\n",
                names[i],
                addrs[i],
                p(&idx),
                names[j],
                addrs[j],
            );
            let path = d.join(format!("{}.toml", names[i]));
            std::fs::write(&path, toml).unwrap();
            NodeProc::start(names[i], addrs[i], &path)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let (with_model, without) = (addrs[0], addrs[1]);
    let texts = questions(&mini.join("queries.jsonl"));
    let vectors = crate::embed::fbin(&mini.join("query.fbin"));

    // A text alone, on the node with the model: embedded, searched as a
    // vector. The answer is the one the sentence-transformers vector of
    // the same question gets (cosine >= 0.999 between the two vectors; a
    // near tie may swap a neighbour, so 9 of 10 in common).
    let mut embed_us = 0;
    for (text, v) in texts.iter().zip(&vectors).take(12) {
        let (st, by_text) = search(with_model, json!({"text": text, "k": 10}));
        assert_eq!(st, 200, "{by_text}");
        let (st, by_vector) = search(with_model, json!({"vector": v, "k": 10}));
        assert_eq!(st, 200, "{by_vector}");
        let (a, b) = (ids(&by_text), ids(&by_vector));
        assert_eq!(a.len(), 10);
        assert!(overlap(&a, &b) >= 9, "{text:?}: {a:?} vs {b:?}");
        assert_eq!(a[0], b[0], "{text:?}");
        // A dense answer: distances, no BM25 scores, and both shards.
        let hit = &by_text["hits"][0];
        assert!(
            hit["distance"].is_number() && hit.get("score").is_none(),
            "{hit}"
        );
        assert_eq!(by_text["stats"]["shards_searched"], 2, "{by_text}");
        assert_eq!(by_text["partial"], false);
        let us = by_text["stats"]["embed_us"].as_u64().unwrap();
        assert!(us > 0, "{by_text}");
        assert_eq!(by_vector["stats"]["embed_us"], 0);
        embed_us += us;
    }

    let q = &texts[3];
    // `"embed": false` on the node with the model is BM25, as a text is on
    // the node without one.
    let (st, bm25_here) = search(with_model, json!({"text": q, "k": 10, "embed": false}));
    assert_eq!(st, 200, "{bm25_here}");
    let (st, bm25_there) = search(without, json!({"text": q, "k": 10}));
    assert_eq!(st, 200, "{bm25_there}");
    assert_eq!(ids(&bm25_here), ids(&bm25_there));
    assert!(bm25_here["hits"][0]["score"].is_number(), "{bm25_here}");
    assert_eq!(bm25_here["stats"]["embed_us"], 0);

    // With `fusion`: the embedded vector fused with BM25, as the same query
    // with the sentence-transformers vector given.
    let fusion = json!({"method": "rrf", "k": 60});
    let (st, hybrid_text) = search(with_model, json!({"text": q, "fusion": fusion, "k": 10}));
    assert_eq!(st, 200, "{hybrid_text}");
    let (st, hybrid_vec) = search(
        with_model,
        json!({"text": q, "vector": vectors[3], "fusion": fusion, "k": 10}),
    );
    assert_eq!(st, 200, "{hybrid_vec}");
    assert!(overlap(&ids(&hybrid_text), &ids(&hybrid_vec)) >= 9);
    assert!(
        hybrid_text["hits"][0]["text_score"].is_number()
            || hybrid_text["hits"][0]["distance"].is_number()
    );

    // A batch of texts: each as it is alone.
    let (st, batch) = call(
        with_model,
        Request::post(
            "/v1/search/batch",
            json!({"texts": &texts[..5], "k": 10}).to_string(),
        ),
    );
    assert_eq!(st, 200, "{batch}");
    for (i, r) in batch["results"].as_array().unwrap().iter().enumerate() {
        let (_, alone) = search(with_model, json!({"text": texts[i], "k": 10}));
        assert!(overlap(&ids(r), &ids(&alone)) >= 9, "batch query {i}");
        assert!(r["stats"]["embed_us"].as_u64().unwrap() > 0);
    }

    // The node without a model says so when told to embed.
    let (st, e) = search(without, json!({"text": q, "embed": true}));
    assert_eq!(st, 400, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("no model") && msg.contains("--model"), "{msg}");
    // Embedding counts against the deadline: one it uses up is a 503 that
    // names the embedding, not a search that blames the shards.
    let (st, e) = search(with_model, json!({"text": q, "timeout_ms": 1}));
    assert_eq!(st, 503, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("embedding the query text took"), "{msg}");
    // A text that has no word piece cannot be embedded: a 400.
    let (st, e) = search(with_model, json!({"text": "\u{200b}\u{200b}"}));
    assert_eq!(st, 400, "{e}");

    // Writes of documents without a vector (issue 14): the node with the
    // model embeds their "text"; the text as a query finds each at once.
    // Each id goes to its own shard (a hash of the id): those owned by
    // shard 1, served by n2 only, are refused with a 421 naming n2.
    let (mut taken, mut elsewhere) = (0, 0);
    for i in 0..10 {
        let text = format!("frobnicate the widget number {i} with the quux daemon");
        let (st, r) = call(
            with_model,
            Request::post(
                "/v1/documents",
                json!({"documents": [{"id": format!("fresh-{i}"), "text": text, "title": "new"}]})
                    .to_string(),
            ),
        );
        match st {
            200 => {
                taken += 1;
                let (st, found) = search(with_model, json!({"text": text, "k": 1}));
                assert_eq!(st, 200, "{found}");
                let hit = &found["hits"][0];
                assert_eq!(hit["id"], format!("fresh-{i}"), "{found}");
                assert!(hit["distance"].as_f64().unwrap() < 1e-3, "{found}");
            }
            421 => {
                elsewhere += 1;
                assert!(r["error"].as_str().unwrap().contains("n2"), "{r}");
            }
            _ => panic!("{st}: {r}"),
        }
    }
    assert!(
        taken > 0 && elsewhere > 0,
        "{taken} taken, {elsewhere} elsewhere"
    );
    // The node without a model wants a vector.
    let (st, r) = call(
        without,
        Request::post(
            "/v1/documents",
            json!({"documents": [{"id": "x", "text": "some text"}]}).to_string(),
        ),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("no model"), "{r}");

    // /metrics counts the texts embedded and the time.
    let (st, text) = get_text(with_model, "/metrics");
    assert_eq!(st, 200);
    let count: u64 = metric(&text, "shardann_embedded_texts_total");
    assert!(count >= 12 + 1 + 5 + 5, "{count}");
    let secs: f64 = metric(&text, "shardann_embed_seconds_total");
    assert!(secs >= embed_us as f64 / 1e6, "{secs} < {embed_us} us");
    // bench --embed: the node embeds each question; recall counts against
    // the exact neighbours of the sentence-transformers vectors.
    let gt = d.join("gt.bin");
    cli_ok(&[
        "groundtruth",
        "--base",
        p(&mini.join("base.fbin")),
        "--queries",
        p(&mini.join("query.fbin")),
        "--k",
        "10",
        "--metric",
        "cosine",
        "--out",
        p(&gt),
    ]);
    let report = d.join("bench.json");
    cli_ok(&[
        "bench",
        "--server",
        &format!("http://{with_model}"),
        "--queries",
        p(&mini.join("query.fbin")),
        "--gt",
        p(&gt),
        "--texts",
        p(&mini.join("queries.jsonl")),
        "--corpus",
        p(&mini.join("corpus.jsonl")),
        "--embed",
        "--methods",
        "dense,bm25",
        "--list",
        "48",
        "--json",
        p(&report),
    ]);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for run in r["runs"].as_array().unwrap() {
        let embed = run["node_us"]["embed"].as_f64().unwrap();
        match run["method"].as_str().unwrap() {
            "dense" => {
                assert!(embed > 0.0, "{run}");
                assert!(run["recall_at_k"].as_f64().unwrap() > 0.8, "{run}");
            }
            _ => assert_eq!(embed, 0.0, "{run}"),
        }
    }
    drop(nodes);

    // A model whose vectors the index cannot hold: the node does not start.
    let mut next = crate::xorshift(7);
    let rows: Vec<u8> = (0..200 * 16).map(|_| (next() % 256) as u8).collect();
    let base = d.join("small.u8bin");
    shardann_engine::data::write_vectors(&base, 16, &rows).unwrap();
    let small = d.join("small");
    crate::build_small(&base, &small, 1, "8");
    let e = cli(&[
        "serve",
        "--index",
        p(&small),
        "--listen",
        "127.0.0.1:0",
        "--model",
        p(&model),
    ])
    .unwrap_err();
    assert!(e.contains("384-d") && e.contains("16-d"), "{e}");
}

/// A GET's status and body as text.
fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    use shardann_server::client::{exchange, Version};
    let r = exchange(addr, Version::Http2, vec![Request::get(path)]).unwrap();
    let (status, body) = r.into_iter().next().unwrap().unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of an unlabelled-but-for-node metric in a Prometheus text.
fn metric<T: std::str::FromStr>(text: &str, name: &str) -> T {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}
