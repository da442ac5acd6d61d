//! Documents and their ids round-trip through build, replication and a
//! 3-node cluster (issue 11), once with integer ids and once with string
//! ids.
//!
//! A 3-shard index is built from JSON Lines whose payloads hold a keyword,
//! a number, a text, a nested object and (on most documents) an array of
//! strings. Each node serves one shard; n3 starts with an empty index dir
//! and pulls its shard from n1, after which n1 serves only its own shard,
//! so every answer needs all three nodes and n3's pulled copy. Through
//! every node:
//!
//! - a filtered search with `include` returns exactly the user's ids with
//!   their JSON type (`42` stays a number in one build, `"42"` a string in
//!   the other; an id near `u64::MAX` and non-ASCII ids survive), the
//!   stored payload's fields, and brute force's distances over the
//!   matching documents;
//! - `GET /v1/documents/{id}` (URL-encoded) finds every kind of id, and an
//!   unknown id is a 404;
//! - `POST /v1/documents/get` returns the documents found and lists the
//!   unknown ids, as given, in `missing`.
//!
//! The pulled shard holds the documents files and verifies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Map, Value};
use shardann_engine::layout::{self, Manifest};
use shardann_engine::shard;
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli_ok, l2, p};

const N: usize = 300;
const DIM: usize = 16;
const SHARDS: u32 = 3;
const LANGS: [&str; 3] = ["fr", "en", "de"];
const TAGS: [&str; 4] = ["red", "green", "blue", "black"];
/// The largest integer id: near `u64::MAX`, beyond what an f64 holds exactly.
const BIG: u64 = 18_446_744_073_709_551_000;

/// A document: id (as JSON), vector, payload (without id and vector).
type Doc = (Value, Vec<u8>, Map<String, Value>);

/// Integer ids `1000 + 7i`, with `42` and [`BIG`] among them; or string
/// ids `doc-i`, with `"42"`, non-ASCII ids and one needing URL escapes.
fn id_of(i: usize, integers: bool) -> Value {
    match (integers, i) {
        (true, 5) => json!(42),
        (true, 6) => json!(BIG),
        (true, _) => json!(1000 + 7 * i as u64),
        (false, 5) => json!("42"),
        (false, 6) => json!("a/b c?d#e%f+g"),
        (false, i) if i % 10 == 7 => json!(format!("dökümän-{i}-日本")),
        (false, _) => json!(format!("doc-{i}")),
    }
}

/// A deterministic document set.
fn documents(integers: bool) -> Vec<Doc> {
    let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
    (0..N)
        .map(|i| {
            let vector: Vec<u8> = (0..DIM).map(|_| (next() % 256) as u8).collect();
            let mut payload = Map::new();
            payload.insert("lang".into(), json!(LANGS[(next() % 3) as usize]));
            payload.insert("year".into(), json!(2015 + (next() % 10)));
            payload.insert("text".into(), json!(format!("passage «{i}» of {N}")));
            payload.insert(
                "nested".into(),
                json!({"n": i, "inner": {"even": i % 2 == 0, "list": [i, "x"]}}),
            );
            if i % 4 != 0 {
                let (a, b) = (next() as usize % 4, next() as usize % 4);
                payload.insert("tags".into(), json!([TAGS[a], TAGS[b]]));
            }
            (id_of(i, integers), vector, payload)
        })
        .collect()
}

/// Every byte but the unreserved ones as `%XX`.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The id as it goes in a URL path.
fn id_path(id: &Value) -> String {
    match id {
        Value::String(s) => url_encode(s),
        other => other.to_string(),
    }
}

/// A node's config; `extra`: more top-level keys.
fn node_toml(
    id: &str,
    addr: SocketAddr,
    dir: &Path,
    shards: &[u32],
    extra: &str,
    peers: &str,
) -> String {
    format!(
        "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nshards = {shards:?}\n\
         executors = 1\ncluster_token = \"s3cret\"\nfollow_ms = 0\n{extra}{peers}",
        p(dir)
    )
}

fn peer(id: &str, addr: SocketAddr, shards: &[u32]) -> String {
    format!("[[peers]]\nid = \"{id}\"\naddress = \"{addr}\"\nshards = {shards:?}\n")
}

fn start(d: &Path, id: &'static str, addr: SocketAddr, toml: String) -> NodeProc {
    let path = d.join(format!("{id}.toml"));
    std::fs::write(&path, toml).unwrap();
    let mut n = NodeProc::start(id, addr, &path);
    n.wait_ready();
    n
}

/// A filter, and which payloads it admits.
type Filter = (Value, fn(&Map<String, Value>) -> bool);

fn filters() -> [Filter; 3] {
    fn has_tag(p: &Map<String, Value>, tag: &str) -> bool {
        p.get("tags")
            .is_some_and(|t| t.as_array().unwrap().iter().any(|x| x == tag))
    }
    [
        (json!({"lang": "fr"}), |p| p["lang"] == "fr"),
        (
            json!({"$and": [{"year": {"$gte": 2019}}, {"tags": "blue"}]}),
            |p| p["year"].as_u64().unwrap() >= 2019 && has_tag(p, "blue"),
        ),
        (
            json!({"lang": {"$in": ["en", "de"]}, "year": {"$lt": 2019}}),
            |p| p["lang"] != "fr" && p["year"].as_u64().unwrap() < 2019,
        ),
    ]
}

fn round_trip(integers: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = documents(integers);
    let mut jsonl = String::new();
    for (id, v, payload) in &docs {
        let mut line = payload.clone();
        line.insert("id".into(), id.clone());
        line.insert("vector".into(), json!(v));
        jsonl.push_str(&Value::Object(line).to_string());
        jsonl.push('\n');
    }
    let docs_path = d.join("docs.jsonl");
    std::fs::write(&docs_path, jsonl).unwrap();
    let idx = d.join("idx");
    crate::build_small_docs_in(&docs_path, "lang,year,tags", &idx, SHARDS as usize);

    // With integer ids the nodes also keep clustered copies of the codes
    // (by lang and by year): the answers must not change, and the plans say
    // the runs were scanned, on n3's pulled shard too.
    let extra = if integers {
        "cluster_codes = [\"lang\", \"year\"]\n"
    } else {
        ""
    };
    // n1 serves shard 0 (and first shard 2, for n3 to pull), n2 shard 1,
    // n3 shard 2 from an empty index dir.
    let addrs = free_addrs(3);
    let empty = d.join("n3");
    std::fs::create_dir_all(&empty).unwrap();
    let n1_peers = peer("n2", addrs[1], &[1]) + &peer("n3", addrs[2], &[2]);
    let n1_seed = node_toml("n1", addrs[0], &idx, &[0, 2], extra, &n1_peers);
    let mut n1 = start(d, "n1", addrs[0], n1_seed);
    let n3_peers = peer("n1", addrs[0], &[0, 2]) + &peer("n2", addrs[1], &[1]);
    let n3 = start(
        d,
        "n3",
        addrs[2],
        node_toml("n3", addrs[2], &empty, &[2], extra, &n3_peers),
    );
    // Pulled: what n1 serves, with the documents files, and it verifies.
    let pulled = empty.join("shard-2");
    let mine = shard::verify(&pulled).unwrap();
    let theirs = Manifest::read(&shard::resolve(&idx.join("shard-2")).unwrap()).unwrap();
    assert_eq!(mine.manifest, theirs);
    let current = shard::resolve(&pulled).unwrap();
    for name in [layout::KEYS_FILE, layout::DOCS_FILE, layout::FILTERS_FILE] {
        assert!(mine.manifest.file(name).is_some(), "{name} not in manifest");
        let (a, b) = (
            std::fs::read(current.join(name)).unwrap(),
            std::fs::read(shard::resolve(&idx.join("shard-2")).unwrap().join(name)).unwrap(),
        );
        assert!(a == b && !a.is_empty(), "{name} differs from the source's");
    }
    let out = cli_ok(&["verify", p(&pulled)]);
    assert!(out.starts_with("ok "), "{out}");
    assert!(!empty.join("shard-0").exists() && !empty.join("shard-1").exists());

    // From now on shard 2 lives on n3 only.
    n1.kill();
    let n1 = start(
        d,
        "n1",
        addrs[0],
        node_toml("n1", addrs[0], &idx, &[0], extra, &n1_peers),
    );
    let n2_peers = peer("n1", addrs[0], &[0]) + &peer("n3", addrs[2], &[2]);
    let n2 = start(
        d,
        "n2",
        addrs[1],
        node_toml("n2", addrs[1], &idx, &[1], extra, &n2_peers),
    );
    let nodes = [n1, n2, n3];

    let by_id: BTreeMap<String, &Doc> = docs.iter().map(|doc| (doc.0.to_string(), doc)).collect();
    // Which shard holds each id, as the search answers say.
    let mut shard_of: BTreeMap<String, u64> = BTreeMap::new();
    let queries: Vec<&[u8]> = (0..4).map(|q| docs[q * 71 + 5].1.as_slice()).collect();
    for (fi, (filter, admits)) in filters().into_iter().enumerate() {
        let matching: Vec<&Doc> = docs.iter().filter(|doc| admits(&doc.2)).collect();
        assert!(matching.len() >= 10, "{filter}: {} matches", matching.len());
        for (qi, q) in queries.iter().enumerate() {
            let mut truth: Vec<f32> = matching.iter().map(|doc| l2(q, &doc.1)).collect();
            truth.sort_by(f32::total_cmp);
            truth.truncate(10);
            for (ni, node) in nodes.iter().enumerate() {
                let include = if (qi + ni) % 2 == 0 {
                    json!(["text", "nested"])
                } else {
                    json!(["*"])
                };
                let (status, r) = call(
                    node.addr,
                    Request::post(
                        "/v1/search",
                        json!({"vector": q, "k": 10, "list": 300, "filter": filter, "include": include})
                            .to_string(),
                    ),
                );
                let at = format!("{} {filter} q{qi} include {include}", node.id);
                assert_eq!(status, 200, "{at}: {r}");
                assert_eq!(r["partial"], false, "{at}: {r}");
                let plans = r["plans"].as_object().unwrap();
                assert_eq!(plans.len(), 3, "{at}: {r}");
                // `{"lang": "fr"}` is a run of the lang order; the others
                // hold a year range, a checked run of the year order, taken
                // only when nearly all its entries match.
                for (shard, plan) in plans {
                    let plan = plan["plan"].as_str().unwrap();
                    let ok = match (integers, fi) {
                        (false, _) => plan == "flat",
                        (true, 0) => plan == "clustered",
                        (true, _) => plan == "clustered" || plan == "flat",
                    };
                    assert!(ok, "{at}: shard {shard}: plan {plan}: {r}");
                }
                let hits = r["hits"].as_array().unwrap();
                let got: Vec<f32> = hits
                    .iter()
                    .map(|h| h["distance"].as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got, truth, "{at}: not brute force's distances");
                for h in hits {
                    let id = &h["id"];
                    assert_eq!(id.is_u64(), integers, "{at}: id {id} of the wrong type");
                    let (_, v, payload) = by_id
                        .get(&id.to_string())
                        .unwrap_or_else(|| panic!("{at}: {id} is not a user id"));
                    assert!(admits(payload), "{at}: {id} does not match");
                    assert_eq!(h["distance"].as_f64().unwrap() as f32, l2(q, v), "{at}");
                    let want = if include == json!(["*"]) {
                        payload.clone()
                    } else {
                        ["text", "nested"]
                            .iter()
                            .map(|&f| (f.to_string(), payload[f].clone()))
                            .collect()
                    };
                    assert_eq!(h["fields"], Value::Object(want), "{at}: {id}");
                    let s = h["shard"].as_u64().unwrap();
                    assert_eq!(*shard_of.entry(id.to_string()).or_insert(s), s, "{at}");
                }
            }
        }
    }
    // Hits came from every shard, n3's pulled one included.
    let mut seen: Vec<u64> = shard_of.values().copied().collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1, 2]);

    // Documents by id through every node: 42 / "42", the big or oddly
    // spelled ids, a non-ASCII one.
    let wanted: Vec<usize> = vec![0, 5, 6, 7, 17, 150, N - 1];
    let (unknown, other_kind) = if integers {
        (json!(999_999), json!("42"))
    } else {
        (json!("doc-x"), json!(42))
    };
    for node in &nodes {
        for &i in &wanted {
            let (id, _, payload) = &docs[i];
            let (status, r) = call(
                node.addr,
                Request::get(&format!("/v1/documents/{}", id_path(id))),
            );
            assert_eq!(status, 200, "{} GET {id}: {r}", node.id);
            assert_eq!(&r["id"], id, "{}: {r}", node.id);
            assert_eq!(r["fields"], Value::Object(payload.clone()), "{}", node.id);
            let s = r["shard"].as_u64().unwrap();
            if let Some(&t) = shard_of.get(&id.to_string()) {
                assert_eq!(s, t, "{}: {id} in two shards", node.id);
            }
        }
        for missing in [&unknown, &json!("nope%2Fnot-here")] {
            let (status, r) = call(
                node.addr,
                Request::get(&format!("/v1/documents/{}", id_path(missing))),
            );
            assert_eq!(status, 404, "{} GET {missing}: {r}", node.id);
            assert!(r["error"].as_str().unwrap().contains("no document"), "{r}");
        }
        // Many: found ones in any order, unknown ones as given, in order.
        let ask: Vec<Value> = vec![
            docs[5].0.clone(),
            unknown.clone(),
            docs[6].0.clone(),
            other_kind.clone(),
            docs[7].0.clone(),
            docs[N - 1].0.clone(),
        ];
        let (status, r) = call(
            node.addr,
            Request::post("/v1/documents/get", json!({ "ids": ask }).to_string()),
        );
        assert_eq!(status, 200, "{}: {r}", node.id);
        let mut found: Vec<String> = r["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|doc| {
                let id = doc["id"].to_string();
                assert_eq!(doc["fields"], Value::Object(by_id[&id].2.clone()));
                id
            })
            .collect();
        found.sort();
        let mut want: Vec<String> = [5, 6, 7, N - 1]
            .iter()
            .map(|&i| docs[i].0.to_string())
            .collect();
        want.sort();
        assert_eq!(found, want, "{}: {r}", node.id);
        assert_eq!(
            r["missing"],
            json!([unknown, other_kind]),
            "{}: {r}",
            node.id
        );
        assert!(r.get("missing_shards").is_none(), "{}: {r}", node.id);
    }
    drop(nodes);
}

#[test]
fn integer_ids_round_trip_through_replication_and_three_nodes() {
    round_trip(true);
}

#[test]
fn string_ids_round_trip_through_replication_and_three_nodes() {
    round_trip(false);
}
