//! Merges of logged writes into new segment versions (issue 14, item 3):
//! searches and writes go on during a merge and see every acknowledged
//! write before, during and after the switch; the merged version holds the
//! writes in its graph, documents and filter index, verifies, and its log
//! is cut; kill -9 at any moment of a merge loses no acknowledged write and
//! leaves a sealed version current.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli_ok, p};

const N: usize = 3000;
const DIM: usize = 16;

pub(crate) fn vector_of(seed: u64) -> Vec<u8> {
    let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491));
    (0..DIM).map(|_| (next() % 256) as u8).collect()
}

pub(crate) fn build(d: &Path) -> std::path::PathBuf {
    let mut jsonl = String::new();
    for i in 0..N {
        let lang = ["fr", "en", "de"][i % 3];
        let line = json!({"id": format!("doc-{i}"), "vector": vector_of(i as u64), "lang": lang});
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    let path = d.join("docs.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    let out = d.join("index");
    crate::build_small_docs(&path, "lang", &out);
    out
}

fn start(d: &Path, index: &Path, addr: SocketAddr) -> NodeProc {
    start_with(d, index, addr, 0.0)
}

/// A node whose shards merge by themselves past `merge_fraction` (0: never).
fn start_with(d: &Path, index: &Path, addr: SocketAddr, merge_fraction: f64) -> NodeProc {
    let toml = format!(
        "node_id = \"m1\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nexecutors = 2\n\
         [writes]\nmerge_fraction = {merge_fraction:?}\n",
        p(index)
    );
    let path = d.join("m1.toml");
    std::fs::write(&path, toml).unwrap();
    let mut node = NodeProc::start("m1", addr, &path);
    node.wait_ready();
    node
}

fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    call(addr, Request::post(path, body.to_string()))
}

fn upsert(addr: SocketAddr, docs: Vec<Value>) -> u16 {
    let (status, r) = post(addr, "/v1/documents", json!({ "documents": docs }));
    assert!(status == 200 || status >= 500, "{status} {r}");
    status
}

/// The nearest document to `v` and its distance.
fn nearest(addr: SocketAddr, v: &[u8], filter: Option<Value>) -> Option<(String, f64)> {
    let mut body = json!({"vector": v, "k": 1, "list": 64});
    if let Some(f) = filter {
        body["filter"] = f;
    }
    let (status, r) = post(addr, "/v1/search", body);
    assert_eq!(status, 200, "{r}");
    let h = r["hits"].as_array()?.first()?;
    Some((h["id"].as_str()?.to_string(), h["distance"].as_f64()?))
}

pub(crate) fn doc(id: &str, seed: u64, lang: &str) -> Value {
    json!({"id": id, "vector": vector_of(seed), "lang": lang})
}

#[test]
fn merges_fold_writes_in_while_serving_and_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let index = build(d);
    let addr = free_addrs(1)[0];
    let mut node = start(d, &index, addr);

    // Writes to fold in: 200 new documents, 10 replaced, 100 deleted.
    for b in 0..4 {
        let docs = (0..50)
            .map(|i| doc(&format!("new-{}", b * 50 + i), 10_000 + b * 50 + i, "xx"))
            .collect();
        assert_eq!(upsert(addr, docs), 200);
    }
    let replaced: Vec<Value> = (0..10)
        .map(|i| doc(&format!("doc-{i}"), 20_000 + i, "xx"))
        .collect();
    assert_eq!(upsert(addr, replaced), 200);
    let gone: Vec<String> = (100..200).map(|i| format!("doc-{i}")).collect();
    let (status, r) = post(addr, "/v1/documents/delete", json!({ "ids": gone }));
    assert_eq!((status, r["deleted"].as_u64()), (200, Some(100)), "{r}");

    // Searches and writes run throughout the merge; each search checks what
    // every acknowledged write promises.
    let stop = Arc::new(AtomicBool::new(false));
    let searched = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked_late: Arc<Mutex<Vec<u64>>> = Arc::default();
    let searcher = {
        let (stop, searched, failures) = (stop.clone(), searched.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = i % 200;
                let got = nearest(addr, &vector_of(10_000 + n), None);
                if got != Some((format!("new-{n}"), 0.0)) {
                    failures.lock().unwrap().push(format!("new-{n}: {got:?}"));
                }
                let r = i % 10;
                let got = nearest(addr, &vector_of(20_000 + r), None);
                if got != Some((format!("doc-{r}"), 0.0)) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("doc-{r} replaced: {got:?}"));
                }
                let del = 100 + i % 100;
                let got = nearest(addr, &vector_of(del), None);
                if got.as_ref().is_some_and(|g| g.0 == format!("doc-{del}")) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("doc-{del} deleted: {got:?}"));
                }
                searched.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let writer = {
        let (stop, acked) = (stop.clone(), acked_late.clone());
        std::thread::spawn(move || {
            let mut b = 0u64;
            while !stop.load(Ordering::Relaxed) && b < 400 {
                if upsert(addr, vec![doc(&format!("late-{b}"), 30_000 + b, "en")]) == 200 {
                    acked.lock().unwrap().push(b);
                }
                b += 1;
            }
        })
    };
    while searched.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in 0..2 {
        let (status, r) = post(addr, &format!("/v1/shards/{s}/merge"), json!({}));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["version"], 2, "{r}");
        assert!(r["log_bytes_cut"].as_u64().unwrap() > 0, "{r}");
        let m = &r["merge"];
        assert_eq!(m["parent"], 1, "{r}");
        assert!(m["inserted"].as_u64().unwrap() >= 80, "{r}");
    }
    let before = searched.load(Ordering::Relaxed);
    while searched.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    searcher.join().unwrap();
    writer.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} bad answers: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The merged versions hold the writes: documents, filter index, graph.
    for s in 0..2 {
        let current = std::fs::read_to_string(index.join(format!("shard-{s}/CURRENT"))).unwrap();
        assert_eq!(current, "v0000000002\n");
    }
    // What stays in the mutable parts is the writes made during the merge.
    let (_, h) = call(addr, Request::get("/healthz"));
    let late = acked_late.lock().unwrap().len() as u64;
    let points: u64 = (0..2)
        .map(|s| h["writes"][s.to_string()]["points"].as_u64().unwrap())
        .sum();
    assert!(points <= late, "{points} points, {late} late writes: {h}");
    let (status, r) = call(addr, Request::get("/v1/documents/new-17"));
    assert_eq!(
        (status, r["fields"]["lang"].as_str()),
        (200, Some("xx")),
        "{r}"
    );
    assert_eq!(call(addr, Request::get("/v1/documents/doc-150")).0, 404);
    let xx = json!({"lang": "xx"});
    for n in [3u64, 77, 150] {
        let got = nearest(addr, &vector_of(10_000 + n), Some(xx.clone()));
        assert_eq!(got, Some((format!("new-{n}"), 0.0)));
    }
    let acked = acked_late.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for &b in &acked {
        let got = nearest(addr, &vector_of(30_000 + b), None);
        assert_eq!(got, Some((format!("late-{b}"), 0.0)), "late write {b}");
    }
    // Nothing left to merge for a shard merged twice in a row.
    let (status, r) = post(addr, "/v1/shards/0/merge", json!({}));
    assert_eq!(status, 200, "{r}");
    let (status, r) = post(addr, "/v1/shards/7/merge", json!({}));
    assert_eq!(status, 404, "{r}");

    // kill -9 while a merge runs (at a few moments of it): after the
    // restart every acknowledged write is there and the current versions
    // verify.
    let mut seq = 0u64;
    for (round, delay_ms) in [0u64, 15, 40, 120].into_iter().enumerate() {
        let first_del = 1000 + round * 20;
        for b in 0..3 {
            let docs = (0..40)
                .map(|_| {
                    seq += 1;
                    doc(
                        &format!("k-{seq}"),
                        40_000 + seq,
                        if b % 2 == 0 { "fr" } else { "xx" },
                    )
                })
                .collect();
            assert_eq!(upsert(addr, docs), 200);
        }
        let dels: Vec<String> = (0..20).map(|i| format!("doc-{}", first_del + i)).collect();
        post(addr, "/v1/documents/delete", json!({ "ids": dels }));
        let merging = std::thread::spawn(move || {
            for s in 0..2 {
                let _ = shardann_server::client::exchange(
                    addr,
                    shardann_server::client::Version::Http2,
                    vec![Request::post(&format!("/v1/shards/{s}/merge"), "{}")],
                );
            }
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill();
        merging.join().unwrap();
        let current: Vec<String> = (0..2)
            .map(|s| std::fs::read_to_string(index.join(format!("shard-{s}/CURRENT"))).unwrap())
            .collect();
        let leftovers = (0..2)
            .flat_map(|s| std::fs::read_dir(index.join(format!("shard-{s}"))).unwrap())
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('v')
            })
            .count();
        eprintln!(
            "killed {delay_ms} ms into the merges: CURRENT {current:?}, {leftovers} version dirs"
        );
        cli_ok(&["verify", p(&index)]);
        node = start(d, &index, addr);
        for k in (1..=seq).step_by(7) {
            let got = nearest(addr, &vector_of(40_000 + k), None);
            assert_eq!(
                got,
                Some((format!("k-{k}"), 0.0)),
                "after kill at {delay_ms} ms"
            );
        }
        for i in 0..20 {
            let id = format!("doc-{}", first_del + i);
            assert_eq!(
                call(addr, Request::get(&format!("/v1/documents/{id}"))).0,
                404
            );
        }
        let got = nearest(addr, &vector_of(30_000 + acked[0]), None);
        assert_eq!(got, Some((format!("late-{}", acked[0]), 0.0)));
    }
    node.kill();
}

/// Past `[writes] merge_fraction`, a shard merges by itself: its next
/// version holds the writes, and its mutable part empties.
#[test]
fn a_shard_merges_by_itself_past_merge_fraction() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let index = build(d);
    let addr = free_addrs(1)[0];
    // 1500 points a shard: 0.05 is 75 changes.
    let mut node = start_with(d, &index, addr, 0.05);
    let docs = (0..100)
        .map(|i| doc(&format!("auto-{i}"), 60_000 + i, "en"))
        .collect();
    assert_eq!(upsert(addr, docs), 200);
    let dels: Vec<String> = (0..200).map(|i| format!("doc-{i}")).collect();
    post(addr, "/v1/documents/delete", json!({ "ids": dels }));
    let merged = |s: usize| {
        std::fs::read_to_string(index.join(format!("shard-{s}/CURRENT"))).unwrap()
            != "v0000000001\n"
    };
    let mut waited = 0;
    while !(merged(0) && merged(1)) && waited < 600 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert!(merged(0) && merged(1), "no automatic merge within 30 s");
    // Wait for the switch to finish, then every write is still served.
    for _ in 0..600 {
        let (_, h) = call(addr, Request::get("/healthz"));
        if (0..2).all(|s| h["writes"][s.to_string()]["merging"] == false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in [0u64, 50, 99] {
        let got = nearest(addr, &vector_of(60_000 + i), None);
        assert_eq!(got, Some((format!("auto-{i}"), 0.0)));
    }
    assert_eq!(call(addr, Request::get("/v1/documents/doc-7")).0, 404);
    node.kill();
    cli_ok(&["verify", p(&index)]);
}
