//! Writes in a coordinated cluster (issue 14, item 4): three nodes on a
//! real etcd, each serving both shards. Writes go through any node, are
//! ordered by each shard's elected primary and applied on every live
//! replica before they are acknowledged. A replica is killed -9 during the
//! writes and restarted; it catches up from its primary's log. One shard is
//! merged on its primary mid-stream, and its replicas switch to the merged
//! version. At the end every node holds every acknowledged write, and all
//! three answer searches identically.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardann_server::client::{exchange, Request, Version};

use crate::cluster::{free_addrs, NodeProc};
use crate::coordination::{get_json, node_toml, wait_for, EtcdProc};
use crate::copy_all;
use crate::merges::{build, doc, vector_of};

/// One request; `None` when the node could not be reached.
fn try_call(addr: SocketAddr, req: Request) -> Option<(u16, Value)> {
    let r = exchange(addr, Version::Http2, vec![req]).ok()?;
    let (status, body) = r.into_iter().next()?.ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Option<(u16, Value)> {
    try_call(addr, Request::post(path, body.to_string()))
}

/// The primary of each shard, once every shard has one.
fn primaries(addr: SocketAddr) -> Option<[String; 2]> {
    let h = get_json(addr, "/healthz");
    let p = &h["coordination"]["primaries"];
    Some([p["0"].as_str()?.to_string(), p["1"].as_str()?.to_string()])
}

/// Per shard: the last write record the node holds (0 before any).
fn last_lsns(addr: SocketAddr) -> [u64; 2] {
    let h = get_json(addr, "/healthz");
    [0, 1].map(|s| h["writes"][s.to_string()]["last_lsn"].as_u64().unwrap_or(0))
}

/// The hits of a search as (id, distance) pairs.
fn hits(addr: SocketAddr, v: &[u8]) -> Vec<(String, f64)> {
    let body = json!({"vector": v, "k": 10, "list": 64});
    let (status, r) = post(addr, "/v1/search", &body).expect("node answers");
    assert_eq!(status, 200, "{r}");
    crate::hit_pairs(&r)
}

#[test]
fn writes_through_any_node_reach_every_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let index = build(d);
    let ids = ["w1", "w2", "w3"];
    let dirs: Vec<_> = ids.iter().map(|id| d.join(id)).collect();
    for dir in &dirs {
        copy_all(&index, dir);
    }
    let etcd = EtcdProc::start(&d.join("etcd"));
    crate::coordination::cluster_init(&etcd.url, &dirs[0]);
    let addrs = free_addrs(3);
    let tomls: Vec<_> = (0..3)
        .map(|i| {
            let toml = d.join(format!("{}.toml", ids[i]));
            let text = node_toml(ids[i], addrs[i], &dirs[i], &[0, 1], &etcd.url)
                + "[writes]\nmerge_fraction = 0.0\n";
            std::fs::write(&toml, text).unwrap();
            toml
        })
        .collect();
    let mut nodes: Vec<NodeProc> = (0..3)
        .map(|i| NodeProc::start(ids[i], addrs[i], &tomls[i]))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let mut prim = None;
    wait_for("a write primary for each shard", 20, || {
        prim = primaries(addrs[0]);
        prim.is_some()
    });
    let prim = prim.unwrap();
    // A node that orders no shard's writes: the replica to kill.
    let victim = (0..3)
        .find(|&i| !prim.contains(&ids[i].to_string()))
        .unwrap();
    let primary_of_0 = ids.iter().position(|id| *id == prim[0]).unwrap();

    let down: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; 3]));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let count = |acked: &Arc<Mutex<Vec<String>>>| acked.lock().unwrap().len();
    let writer = Writer::start("a", addrs.clone(), down.clone(), acked.clone());
    wait_for("writes acknowledged", 60, || count(&acked) >= 500);

    // Deletes through the victim, before it dies: every replica drops them.
    let gone: Vec<String> = (0..50).map(|i| format!("doc-{i}")).collect();
    let (status, r) = post(
        addrs[victim],
        "/v1/documents/delete",
        &json!({ "ids": gone }),
    )
    .unwrap();
    assert_eq!((status, r["deleted"].as_u64()), (200, Some(50)), "{r}");

    nodes[victim].kill();
    down.lock().unwrap()[victim] = true;
    let at_kill = count(&acked);
    wait_for("writes go on without the victim", 60, || {
        count(&acked) >= at_kill + 500
    });
    // Shard 0 merged on its primary while the victim is down and writes
    // go on; the victim pulls that version when it is back.
    let (status, r) = post(addrs[primary_of_0], "/v1/shards/0/merge", &json!({})).unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["version"], 2, "{r}");
    nodes[victim] = NodeProc::start(ids[victim], addrs[victim], &tomls[victim]);
    nodes[victim].wait_ready();
    down.lock().unwrap()[victim] = false;
    let at_restart = count(&acked);
    wait_for("writes go on through the restarted node", 60, || {
        count(&acked) >= at_restart + 500
    });
    let refused = writer.stop();
    eprintln!("{refused} write requests were refused before a retry took them");

    // Every replica converges on the primaries' logs and versions.
    wait_for("every replica holds every record", 60, || {
        let want = [0, 1].map(|s| {
            let at = ids.iter().position(|id| *id == prim[s]).unwrap();
            last_lsns(addrs[at])[s]
        });
        (0..3).all(|i| last_lsns(addrs[i]) == want)
    });
    wait_for("every replica serves shard 0's merged version", 60, || {
        (0..3).all(|i| get_json(addrs[i], "/v1/shards")["shards"][0]["version"] == 2)
    });
    let acked: Vec<String> = acked.lock().unwrap().clone();
    for i in 0..3 {
        let body = json!({ "ids": acked });
        let (status, r) = post(addrs[i], "/v1/documents/get", &body).unwrap();
        assert_eq!(status, 200, "{r}");
        let missing = r["missing"].as_array().unwrap();
        assert!(missing.is_empty(), "{}: lacks {missing:?}", ids[i]);
        for gone in ["doc-0", "doc-17", "doc-49"] {
            let (status, _) =
                try_call(addrs[i], Request::get(&format!("/v1/documents/{gone}"))).unwrap();
            assert_eq!(status, 404, "{}: {gone} is deleted", ids[i]);
        }
    }
    // The same answers from every node (each searches its own copies).
    for q in 0..20u64 {
        let v = vector_of(50_000 + q * 37);
        let first = hits(addrs[0], &v);
        assert_eq!(first.len(), 10);
        for i in 1..3 {
            assert_eq!(hits(addrs[i], &v), first, "query {q}: {} differs", ids[i]);
        }
    }
    // A replica refuses to merge on its own, naming the primary.
    let (status, r) = post(addrs[victim], "/v1/shards/0/merge", &json!({})).unwrap();
    assert_eq!(status, 421, "{r}");
    assert!(r["error"].as_str().unwrap().contains(&prim[0]), "{r}");
    // A write the primary refuses (a filter field of the wrong kind: only
    // the shard's part knows the kinds) is the client's error through any
    // node, with the primary's message, not a 503 to retry.
    let mut bad = doc("bad-kind", 1, "xx");
    bad["lang"] = json!(7);
    let (status, r) = post(addrs[victim], "/v1/documents", &json!({"documents": [bad]})).unwrap();
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("lang"), "{r}");
    // Read-your-writes on every replica: an acknowledged write is applied
    // on each before the answer.
    for (i, &addr) in addrs.iter().enumerate() {
        let body = json!({"documents": [doc(&format!("ryw-{i}"), 90_000 + i as u64, "xx")]});
        assert_eq!(post(addr, "/v1/documents", &body).unwrap().0, 200);
        for &other in &addrs {
            let (status, r) =
                try_call(other, Request::get(&format!("/v1/documents/ryw-{i}"))).unwrap();
            assert_eq!(status, 200, "{r}");
        }
    }

    // The primary of both shards dies mid-stream: once its lease lapses a
    // live replica is elected, takes the records the other holds beyond
    // its own log, and orders writes again. No acknowledged write is lost.
    let old_primary = primary_of_0;
    let acked2: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = Writer::start("b", addrs.clone(), down.clone(), acked2.clone());
    wait_for("writes acknowledged", 60, || count(&acked2) >= 300);
    nodes[old_primary].kill();
    down.lock().unwrap()[old_primary] = true;
    let at_kill = count(&acked2);
    let live: Vec<usize> = (0..3).filter(|&i| i != old_primary).collect();
    let failover = wait_for("writes acknowledged after the primary died", 60, || {
        count(&acked2) >= at_kill + 300
    });
    eprintln!("writes resumed {failover:?} after the primary was killed");
    writer.stop();
    let new_prim = primaries(addrs[live[0]]).expect("new primaries");
    assert!(
        new_prim.iter().all(|p| *p != ids[old_primary]),
        "{new_prim:?}"
    );
    wait_for("the live replicas hold the same records", 30, || {
        last_lsns(addrs[live[0]]) == last_lsns(addrs[live[1]])
    });
    let mut all = acked.clone();
    all.extend(acked2.lock().unwrap().iter().cloned());
    for &i in &live {
        let (status, r) = post(addrs[i], "/v1/documents/get", &json!({ "ids": all })).unwrap();
        assert_eq!(status, 200, "{r}");
        let missing = r["missing"].as_array().unwrap();
        assert!(missing.is_empty(), "{}: lacks {missing:?}", ids[i]);
    }
    for q in 0..10u64 {
        let v = vector_of(70_000 + q * 41);
        assert_eq!(
            hits(addrs[live[0]], &v),
            hits(addrs[live[1]], &v),
            "query {q}"
        );
    }
    for n in &mut nodes {
        n.kill();
    }
}

/// Upserts of 10 documents at a time through every node not marked down,
/// each batch retried (through the next node) until it is acknowledged:
/// a 503 while a dead replica is noticed, or while a new primary catches
/// up, says to retry.
struct Writer {
    stop: Arc<AtomicBool>,
    runner: std::thread::JoinHandle<usize>,
}

impl Writer {
    fn start(
        prefix: &'static str,
        addrs: Vec<SocketAddr>,
        down: Arc<Mutex<Vec<bool>>>,
        acked: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut refused = 0;
                let mut batch = 0u64;
                let seed = if prefix == "a" { 100_000 } else { 200_000 };
                while !stop.load(Ordering::Relaxed) && batch < 5000 {
                    let names: Vec<String> =
                        (0..10).map(|i| format!("{prefix}-{batch}-{i}")).collect();
                    let docs: Vec<Value> = names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| doc(n, seed + batch * 10 + i as u64, "xx"))
                        .collect();
                    let body = json!({ "documents": docs });
                    let mut tries = 0usize;
                    loop {
                        let through = (batch as usize + tries) % addrs.len();
                        if !down.lock().unwrap()[through] {
                            match post(addrs[through], "/v1/documents", &body) {
                                Some((200, _)) => break,
                                Some((status, r)) => {
                                    assert!(status >= 500, "{status} {r}");
                                    refused += 1;
                                }
                                None => {}
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        tries += 1;
                        assert!(tries < 3000, "batch {batch} never acknowledged");
                    }
                    acked.lock().unwrap().extend(names);
                    batch += 1;
                }
                refused
            })
        };
        Writer { stop, runner }
    }

    /// Stops after the batch in flight; the requests refused on the way.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.runner.join().expect("the writer failed")
    }
}
