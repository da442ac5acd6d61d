//! Writes through the HTTP API (issue 14, first part: one node): upserts
//! visible at once by vector, filter and id; replacements; deletes by id
//! and by filter never returned again; bad writes refused whole; a write
//! token; and kill -9 during a stream of acknowledged writes, after which
//! every acknowledged write is back and no shard holds part of a batch.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use shardann_server::client::Request;

use crate::cluster::{free_addrs, NodeProc};
use crate::{call, cli_ok, p};

const N: usize = 600;
const DIM: usize = 16;
const TOKEN: &str = "s3cret";

fn vector(next: &mut impl FnMut() -> u64) -> Vec<u8> {
    (0..DIM).map(|_| (next() % 256) as u8).collect()
}

fn build(d: &Path) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let mut next = crate::xorshift(0x051a_b1e5_50dd_ba11);
    let mut jsonl = String::new();
    let mut docs = Vec::new();
    for i in 0..N {
        let v = vector(&mut next);
        let lang = ["fr", "en", "de"][i % 3];
        let line = json!({"id": format!("doc-{i}"), "vector": v,
            "lang": lang, "year": 2015 + (i % 10)});
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
        docs.push((format!("doc-{i}"), v));
    }
    let path = d.join("docs.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    let out = d.join("index");
    crate::build_small_docs(&path, "lang,year", &out);
    (out, docs)
}

struct Client {
    addr: SocketAddr,
    token: Option<&'static str>,
}

impl Client {
    fn write(&self, r: Request) -> (u16, Value) {
        call(self.addr, r.with_bearer(self.token))
    }
    fn upsert(&self, docs: &[Value]) -> (u16, Value) {
        self.write(Request::post(
            "/v1/documents",
            json!({ "documents": docs }).to_string(),
        ))
    }
    fn get(&self, id: &str) -> (u16, Value) {
        call(self.addr, Request::get(&format!("/v1/documents/{id}")))
    }
    /// The ids of the k nearest, with their distances.
    fn nearest(&self, v: &[u8], k: usize, filter: Option<Value>) -> Vec<(String, f32)> {
        let mut body = json!({"vector": v, "k": k, "list": k.max(64)});
        if let Some(f) = filter {
            body["filter"] = f;
        }
        let (status, r) = call(self.addr, Request::post("/v1/search", body.to_string()));
        assert_eq!(status, 200, "{r}");
        crate::hit_pairs(&r)
            .into_iter()
            .map(|(id, d)| (id, d as f32))
            .collect()
    }
}

fn start(d: &Path, index: &Path, name: &'static str, addr: SocketAddr) -> NodeProc {
    let toml = format!(
        "node_id = \"{name}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nexecutors = 2\n\
         write_token = \"{TOKEN}\"\n[writes]\nmax_batch = 100\nmerge_fraction = 0.0\n",
        p(index)
    );
    let path = d.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let mut node = NodeProc::start(name, addr, &path);
    node.wait_ready();
    node
}

#[test]
fn writes_are_searchable_durable_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (index, docs) = build(d);
    let addr = free_addrs(1)[0];
    let mut node = start(d, &index, "w1", addr);
    let c = Client {
        addr,
        token: Some(TOKEN),
    };

    // Without the token: 401, and nothing written.
    let anon = Client { addr, token: None };
    let (status, r) = anon.upsert(&[json!({"id": "x", "vector": vec![0u8; DIM]})]);
    assert_eq!(status, 401, "{r}");
    assert_eq!(c.get("x").0, 404);

    // New documents: found at once, by vector (distance 0), filter and id.
    let mut next = crate::xorshift(77);
    let new: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("new-{i}"), vector(&mut next)))
        .collect();
    let batch: Vec<Value> = new
        .iter()
        .enumerate()
        .map(|(i, (id, v))| json!({"id": id, "vector": v, "lang": "new", "year": 3000 + i}))
        .collect();
    let (status, r) = c.upsert(&batch);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["upserted"], 40);
    for (id, v) in &new {
        let hits = c.nearest(v, 5, None);
        assert_eq!(hits[0], (id.clone(), 0.0), "{id}: {hits:?}");
    }
    let only_new = c.nearest(&new[0].1, 50, Some(json!({"lang": "new"})));
    assert_eq!(only_new.len(), 40);
    assert!(only_new.iter().all(|h| h.0.starts_with("new-")));
    let late = c.nearest(&new[0].1, 50, Some(json!({"year": {"$gte": 3030}})));
    assert_eq!(late.len(), 10, "{late:?}");
    let (status, doc) = c.get("new-7");
    assert_eq!(status, 200);
    assert_eq!(doc["fields"]["year"], 3007);

    // A replacement: the old vector no longer finds it, the new one does.
    let old = docs[3].1.clone();
    let moved = vec![1u8; DIM];
    let (status, r) = c.upsert(&[json!({"id": "doc-3", "vector": moved, "lang": "moved"})]);
    assert_eq!(status, 200, "{r}");
    assert!(c.nearest(&old, 10, None).iter().all(|h| h.0 != "doc-3"));
    assert_eq!(c.nearest(&moved, 1, None)[0], ("doc-3".to_string(), 0.0));
    assert_eq!(c.get("doc-3").1["fields"]["lang"], "moved");

    // Deletes: by id (404 after), by ids with an unknown one, by filter.
    let (status, r) = c.write(Request::delete("/v1/documents/doc-5"));
    assert_eq!(status, 200, "{r}");
    assert_eq!(c.get("doc-5").0, 404);
    assert!(c
        .nearest(&docs[5].1, 10, None)
        .iter()
        .all(|h| h.0 != "doc-5"));
    assert_eq!(c.write(Request::delete("/v1/documents/doc-5")).0, 404);
    let (status, r) = c.write(Request::post(
        "/v1/documents/delete",
        json!({"ids": ["doc-6", "new-1", "nobody"]}).to_string(),
    ));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted"], 2);
    assert_eq!(r["not_found"], json!(["nobody"]));
    assert!(c.nearest(&new[1].1, 5, None).iter().all(|h| h.0 != "new-1"));
    let gone = json!({"$and": [{"lang": "de"}, {"year": {"$lt": 2018}}]});
    let before = c.nearest(&docs[0].1, 100, Some(gone.clone())).len();
    assert!(before > 0);
    let (status, r) = c.write(Request::post(
        "/v1/documents/delete",
        json!({ "filter": gone }).to_string(),
    ));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted"].as_u64().unwrap() as usize, before);
    assert!(c.nearest(&docs[0].1, 100, Some(gone.clone())).is_empty());
    // k counts only live documents: 10 hits still come back.
    assert_eq!(c.nearest(&docs[5].1, 10, None).len(), 10);

    // Bad writes: refused whole, with the fault named.
    let good = json!({"id": "good", "vector": vec![2u8; DIM]});
    let bad: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![
                good.clone(),
                json!({"id": "b", "vector": vec![2u8; DIM - 1]}),
            ],
            "dimension",
        ),
        (vec![good.clone(), good.clone()], "also document 0"),
        (vec![json!({"id": 17, "vector": vec![2u8; DIM]})], "string"),
        (
            vec![
                good.clone(),
                json!({"id": "c", "vector": vec![2u8; DIM], "year": "old"}),
            ],
            "year",
        ),
        (vec![json!({"id": "d", "vector": vec![300; DIM]})], "range"),
        (vec![json!({"vector": vec![2u8; DIM]})], "no \"id\""),
        (
            (0..101)
                .map(|i| json!({"id": format!("m{i}"), "vector": vec![2u8; DIM]}))
                .collect(),
            "at most 100",
        ),
    ];
    for (batch, want) in bad {
        let (status, r) = c.upsert(&batch);
        assert_eq!(status, 400, "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    assert_eq!(c.get("good").0, 404, "a refused batch wrote nothing");

    // The CLI: a bulk load in batches, deletes by id; a bad line stops the
    // load with its number and where to resume.
    let url = format!("http://{addr}");
    let mut lines = String::new();
    for i in 0..30 {
        lines.push_str(
            &json!({"id": format!("cli-{i}"), "vector": vec![i as u8; DIM], "lang": "cli"})
                .to_string(),
        );
        lines.push('\n');
    }
    let file = d.join("cli.jsonl");
    std::fs::write(&file, &lines).unwrap();
    let out = cli_ok(&[
        "upsert",
        "--server",
        &url,
        "--docs",
        p(&file),
        "--batch",
        "7",
        "--token",
        TOKEN,
    ]);
    assert!(out.contains("upserted 30 documents"), "{out}");
    assert_eq!(
        c.nearest(&[9u8; DIM], 1, None)[0],
        ("cli-9".to_string(), 0.0)
    );
    let out = cli_ok(&[
        "delete", "--server", &url, "--id", "cli-0", "--id", "cli-1", "--id", "nobody", "--token",
        TOKEN,
    ]);
    assert!(out.contains("deleted 2 documents; 1 ids"), "{out}");
    assert_eq!(c.get("cli-1").0, 404);
    lines.push_str("{\"id\": \"cli-x\", \"vector\": [1, 2]}\n");
    std::fs::write(&file, &lines).unwrap();
    let e = crate::cli(&[
        "upsert",
        "--server",
        &url,
        "--docs",
        p(&file),
        "--batch",
        "10",
        "--token",
        TOKEN,
    ])
    .unwrap_err();
    assert!(e.contains("line 31"), "{e}");
    let good = d.join("good.jsonl");
    std::fs::write(&good, lines.lines().take(30).collect::<Vec<_>>().join("\n")).unwrap();
    let e = crate::cli(&["upsert", "--server", &url, "--docs", p(&good)]).unwrap_err();
    assert!(e.contains("401") && e.contains("--from-line 1"), "{e}");

    // What /healthz says about the writes.
    let (_, health) = call(addr, Request::get("/healthz"));
    let writes = health["writes"].as_object().unwrap();
    let live: u64 = writes.values().map(|w| w["live"].as_u64().unwrap()).sum();
    // 40 new, new-1 deleted, doc-3 replaced; the CLI's 30 (cli-0 and cli-1,
    // deleted, came back with the load that stopped at line 31).
    assert_eq!(live, 40 - 1 + 1 + 30, "{health}");

    // kill -9 during a stream of writes from 3 clients: every acknowledged
    // batch is back after the restart; a batch in flight is, per shard,
    // whole or absent.
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let c = Client {
                    addr,
                    token: Some(TOKEN),
                };
                for b in (w..).step_by(3) {
                    if stop.load(Ordering::Relaxed) || b > 3000 {
                        return;
                    }
                    let batch: Vec<Value> = (0..5)
                        .map(|i| json!({"id": format!("s{b}-{i}"), "vector": stream_vector(b, i)}))
                        .collect();
                    let r = shardann_server::client::exchange(
                        addr,
                        shardann_server::client::Version::Http2,
                        vec![Request::post(
                            "/v1/documents",
                            json!({ "documents": batch }).to_string(),
                        )
                        .with_bearer(c.token)],
                    );
                    match r.ok().and_then(|mut v| v.pop()) {
                        Some(Ok((200, _))) => acked.lock().unwrap().push(b),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    node.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut node = start(d, &index, "w1", addr);
    let present = |b: usize| -> Vec<bool> {
        (0..5)
            .map(|i| c.get(&format!("s{b}-{i}")).0 == 200)
            .collect()
    };
    for &b in &acked {
        assert_eq!(present(b), vec![true; 5], "acknowledged batch {b} lost");
        let hits = c.nearest(&stream_vector(b, 2), 3, None);
        assert!(
            hits.iter().any(|h| h == &(format!("s{b}-2"), 0.0)),
            "batch {b} not searchable: {hits:?}"
        );
    }
    // A batch spanning the two shards is one record per shard: an
    // unacknowledged one may be back for one shard and not the other, but
    // never in part for one shard.
    let last = acked.iter().max().copied().unwrap_or(0);
    for b in 0..last + 6 {
        let got = present(b);
        let all = got.iter().all(|&x| x);
        if !all && got.iter().any(|&x| x) {
            let shards: std::collections::BTreeSet<u64> = (0..5)
                .filter(|&i| got[i])
                .map(|i| c.get(&format!("s{b}-{i}")).1["shard"].as_u64().unwrap())
                .collect();
            assert_eq!(shards.len(), 1, "batch {b} in part on a shard: {got:?}");
        }
    }
    // The state after the restart is the state before the kill: the
    // earlier writes too.
    assert_eq!(c.get("doc-5").0, 404);
    assert_eq!(c.get("doc-3").1["fields"]["lang"], "moved");
    assert_eq!(c.nearest(&new[0].1, 1, None)[0], (new[0].0.clone(), 0.0));
    node.kill();

    // verify reads the logs too; a torn tail is reported, not an error.
    let out = cli_ok(&["verify", p(&index)]);
    assert_eq!(out.matches("wal.log: ").count(), 2, "{out}");
    assert!(!out.contains("torn"), "{out}");
    let log = index.join("shard-0").join("wal.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(&[9, 0, 0]);
    std::fs::write(&log, &bytes).unwrap();
    let out = cli_ok(&["verify", p(&index)]);
    assert!(out.contains("a torn tail of 3 byte(s)"), "{out}");
    bytes[3] ^= 1;
    std::fs::write(&log, &bytes).unwrap();
    let e = crate::cli(&["verify", p(&index)]).unwrap_err();
    assert!(e.contains("magic") && e.contains("wal.log"), "{e}");
}

/// The vector of stream batch `b`'s document `i`: distinct per document.
fn stream_vector(b: usize, i: usize) -> Vec<u8> {
    let mut next = crate::xorshift(0x1234_5678 + (b * 8 + i) as u64);
    vector(&mut next)
}
