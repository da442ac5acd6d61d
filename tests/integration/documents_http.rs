//! Documents through the HTTP API (issue 11): a 2-shard index built from
//! JSON Lines with string ids, each shard on its own node, so every answer
//! needs the other node. Filtered search with `include`, documents by id,
//! and bad filters answered with a 400 naming the fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli_ok, l2, p};

const N: usize = 600;
const DIM: usize = 16;
const LANGS: [&str; 3] = ["fr", "en", "de"];

/// A document: id, vector, payload (without id and vector).
type Doc = (String, Vec<u8>, serde_json::Map<String, Value>);

/// A deterministic document set.
fn documents() -> Vec<Doc> {
    let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
    (0..N)
        .map(|i| {
            let vector: Vec<u8> = (0..DIM).map(|_| (next() % 256) as u8).collect();
            let mut payload = serde_json::Map::new();
            payload.insert("lang".into(), json!(LANGS[(next() % 3) as usize]));
            payload.insert("year".into(), json!(2015 + (next() % 10)));
            payload.insert("text".into(), json!(format!("document number {i}")));
            (format!("doc-{i}"), vector, payload)
        })
        .collect()
}

fn search(addr: SocketAddr, body: Value) -> (u16, Value) {
    call(addr, Request::post("/v1/search", body.to_string()))
}

#[test]
fn documents_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = documents();
    let mut jsonl = String::new();
    for (id, v, payload) in &docs {
        let mut line = payload.clone();
        line.insert("id".into(), json!(id));
        line.insert("vector".into(), json!(v));
        jsonl.push_str(&Value::Object(line).to_string());
        jsonl.push('\n');
    }
    let docs_path = d.join("docs.jsonl");
    std::fs::write(&docs_path, jsonl).unwrap();
    let (whole, sharded) = (d.join("whole"), d.join("sharded"));
    for (out, shards) in [(&whole, 1), (&sharded, 2)] {
        crate::build_small_docs_in(&docs_path, "lang,year", out, shards);
    }
    let queries: Vec<Vec<u8>> = (0..5).map(|q| docs[q * 37 + 3].1.clone()).collect();
    let qpath = d.join("q.u8bin");
    shardann_engine::data::write_vectors(&qpath, DIM, &queries.concat()).unwrap();

    // Shard 0 on n1, shard 1 on n2: every answer needs both nodes.
    let addrs = free_addrs(2);
    let ids = ["n1", "n2"];
    let mut nodes: Vec<NodeProc> = (0..2)
        .map(|i| {
            let j = 1 - i;
            let toml = format!(
                "node_id = \"{}\"\nlisten = \"{}\"\nindex_dir = \"{}\"\nshards = [{i}]\nexecutors = 1\n\
                 [[peers]]\nid = \"{}\"\naddress = \"{}\"\nshards = [{j}]\n",
                ids[i],
                addrs[i],
                p(&sharded),
                ids[j],
                addrs[j],
            );
            let path = d.join(format!("{}.toml", ids[i]));
            std::fs::write(&path, toml).unwrap();
            NodeProc::start(ids[i], addrs[i], &path)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let by_id: BTreeMap<&str, &Doc> = docs.iter().map(|doc| (doc.0.as_str(), doc)).collect();

    // Filtered search: only matching documents, user ids, the fields asked
    // for; the same distances as brute force over the matches and as the
    // CLI on the unsharded build.
    let filters = [
        json!({"lang": "fr"}),
        json!({"year": {"$gte": 2022}}),
        json!({"$and": [{"lang": {"$in": ["en", "de"]}}, {"year": {"$lt": 2018}}]}),
    ];
    let matches = |f: &Value, payload: &serde_json::Map<String, Value>| -> bool {
        let lang = payload["lang"].as_str().unwrap();
        let year = payload["year"].as_u64().unwrap();
        match f.to_string().as_str() {
            s if s.contains("\"fr\"") && !s.contains("$in") => lang == "fr",
            s if s.contains("$gte") => year >= 2022,
            _ => lang != "fr" && year < 2018,
        }
    };
    for filter in &filters {
        let cli = cli_ok(&[
            "search",
            "--index",
            p(&whole),
            "--queries",
            p(&qpath),
            "--filter",
            &filter.to_string(),
            "--list",
            "300",
            "--json",
        ]);
        let cli: Vec<Value> = cli
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for (qi, q) in queries.iter().enumerate() {
            let mut truth: Vec<(f32, &str)> = docs
                .iter()
                .filter(|(_, _, payload)| matches(filter, payload))
                .map(|(id, v, _)| (l2(q, v), id.as_str()))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            truth.truncate(10);
            for node in &nodes {
                let (status, r) = search(
                    node.addr,
                    json!({"vector": q, "k": 10, "list": 300, "filter": filter, "include": ["text", "lang"]}),
                );
                assert_eq!(status, 200, "{r}");
                assert_eq!(r["partial"], false, "{r}");
                let hits = r["hits"].as_array().unwrap();
                assert_eq!(hits.len(), truth.len(), "{filter} q{qi}: {r}");
                for (h, (dist, _)) in hits.iter().zip(&truth) {
                    let id = h["id"].as_str().expect("a string id");
                    let (_, v, payload) = by_id[id];
                    assert!(matches(filter, payload), "{filter}: {id} does not match");
                    assert_eq!(
                        h["distance"].as_f64().unwrap() as f32,
                        *dist,
                        "{filter} q{qi}"
                    );
                    assert_eq!(l2(q, v), *dist);
                    let fields = h["fields"].as_object().unwrap();
                    assert_eq!(fields.len(), 2, "{h}");
                    assert_eq!(fields["text"], payload["text"]);
                    assert_eq!(fields["lang"], payload["lang"]);
                }
                let got: Vec<f64> = hits
                    .iter()
                    .map(|h| h["distance"].as_f64().unwrap())
                    .collect();
                let want: Vec<f64> = cli[qi]["hits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["distance"].as_f64().unwrap())
                    .collect();
                assert_eq!(got, want, "{filter} q{qi}: server vs CLI");
                let plans = r["plans"].as_object().expect("plans");
                assert_eq!(plans.len(), 2, "{r}");
            }
        }
    }
    // Without include: no fields; without filter: user ids still.
    let (status, r) = search(nodes[0].addr, json!({"vector": queries[0], "k": 3}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["hits"][0]["id"], "doc-3", "{r}");
    assert!(r["hits"][0].get("fields").is_none(), "{r}");
    // Batch takes filter and include too.
    let (status, r) = call(
        nodes[1].addr,
        Request::post(
            "/v1/search/batch",
            json!({"vectors": [queries[1], queries[2]], "k": 5, "filter": {"lang": "de"}, "include": ["*"]})
                .to_string(),
        ),
    );
    assert_eq!(status, 200, "{r}");
    for res in r["results"].as_array().unwrap() {
        for h in res["hits"].as_array().unwrap() {
            assert_eq!(h["fields"]["lang"], "de", "{h}");
            assert_eq!(h["fields"].as_object().unwrap().len(), 3, "{h}");
        }
    }

    // Documents by id, through either node, whichever shard holds them.
    for node in &nodes {
        for i in [0, 1, 2, 3, 299, 599] {
            let id = format!("doc-{i}");
            let (status, r) = call(node.addr, Request::get(&format!("/v1/documents/{id}")));
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["id"], json!(id));
            assert_eq!(
                r["fields"],
                Value::Object(by_id[id.as_str()].2.clone()),
                "{r}"
            );
            assert!(r["shard"].as_u64().unwrap() < 2);
        }
        let (status, r) = call(node.addr, Request::get("/v1/documents/doc%2D7"));
        assert_eq!((status, &r["id"]), (200, &json!("doc-7")), "{r}");
        let (status, r) = call(node.addr, Request::get("/v1/documents/nope"));
        assert_eq!(status, 404, "{r}");
        assert!(r["error"].as_str().unwrap().contains("no document"), "{r}");
        let (status, r) = call(
            node.addr,
            Request::post(
                "/v1/documents/get",
                json!({"ids": ["doc-10", "nope", "doc-11", 7]}).to_string(),
            ),
        );
        assert_eq!(status, 200, "{r}");
        let mut found: Vec<&str> = r["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        found.sort_unstable();
        assert_eq!(found, ["doc-10", "doc-11"], "{r}");
        assert_eq!(r["missing"], json!(["nope", 7]), "{r}");
    }

    // Bad filters: a 400 that names the fault.
    let bad = [
        (json!({"year": {"$foo": 1}}), "$foo"),
        (json!({"text": "x"}), "text"),
    ];
    for (filter, want) in bad {
        let (status, r) = search(
            nodes[0].addr,
            json!({"vector": queries[0], "filter": filter}),
        );
        assert_eq!(status, 400, "{filter}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(want), "{filter}: {e}");
    }
    for n in &mut nodes {
        n.kill();
    }
}
