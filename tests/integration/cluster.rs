//! A 3-node cluster on 127.0.0.1: 6 shards, each on two nodes; scatter-
//! gather through every node, a node killed mid-run, both replicas of a
//! shard down, bad requests.
//!
//! Nodes are real processes (this test binary re-run as `node_process`), so
//! "killed" means SIGKILL: sockets reset, nothing said goodbye.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardann_engine::data::{recall_at_k, GroundTruth, VectorFile};
use shardann_server::api::SearchResponse;
use shardann_server::client::{exchange, search_many, HttpParams, Outcome, Request, Version};

use crate::{bench_json, build_small, generated, p, recall_at};

pub(crate) const NODE_ENV: &str = "SHARDANN_TEST_NODE_CONFIG";

/// Not a test: the body of a node process started by the cluster test.
/// Without its environment variable it returns at once.
#[test]
#[ignore = "a node process, started by cluster_of_three_nodes"]
fn node_process() {
    let Ok(config) = std::env::var(NODE_ENV) else {
        return;
    };
    // Never outlive a test that died without killing its nodes.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        std::process::exit(0);
    });
    let mut out = std::io::stdout();
    if let Err(e) = shardann::run(["shardann", "serve", "--config", &config], &mut out) {
        eprintln!("node failed: {e:#}");
        std::process::exit(1);
    }
}

/// A node process, killed when dropped.
pub struct NodeProc {
    pub id: &'static str,
    pub addr: SocketAddr,
    child: Child,
}

impl NodeProc {
    pub fn start(id: &'static str, addr: SocketAddr, config: &Path) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "cluster::node_process",
                "--nocapture",
            ])
            .env(NODE_ENV, config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start a node process");
        NodeProc { id, addr, child }
    }

    /// Waits until `/healthz` answers (bounded).
    pub fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node {} exited at startup: {status}", self.id);
            }
            let r = exchange(self.addr, Version::Http1, vec![Request::get("/healthz")]).unwrap();
            if matches!(r.first(), Some(Ok((200, _)))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node {} did not answer /healthz within 60 s", self.id);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    // Held together so they differ, released before the nodes bind them.
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn mean_recall(outcomes: &[Outcome], gt: &GroundTruth) -> f64 {
    outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let r = o.result.as_ref().expect("a failed query");
            recall_at_k(
                &r.hits.iter().map(|h| h.global_id()).collect::<Vec<_>>(),
                gt.row(i),
                10,
            )
        })
        .sum::<f64>()
        / outcomes.len() as f64
}

fn responses(outcomes: Vec<Outcome>) -> Vec<SearchResponse> {
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.result.unwrap_or_else(|e| panic!("query {i} failed: {e}")))
        .collect()
}

fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

#[test]
fn cluster_of_three_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, gt_path] = generated(d, "sift-like", "6000", "200", "21", "l2", "10");
    let (whole, sharded) = (d.join("whole"), d.join("sharded"));
    build_small(&base, &whole, 1, "32");
    build_small(&base, &sharded, 6, "32");
    let list = 48;
    let unsharded = recall_at(
        &bench_json(
            &whole,
            &query,
            &gt_path,
            &["--list", "48"],
            &d.join("whole.json"),
        ),
        list,
    );

    // Every shard on two nodes.
    let addrs = free_addrs(3);
    let ids = ["n1", "n2", "n3"];
    let shards: [&[u32]; 3] = [&[0, 1, 2, 3], &[2, 3, 4, 5], &[4, 5, 0, 1]];
    let mut nodes: Vec<NodeProc> = (0..3)
        .map(|i| {
            let mut toml = format!(
                "node_id = \"{}\"\nlisten = \"{}\"\nindex_dir = \"{}\"\nshards = {:?}\nexecutors = 1\n",
                ids[i],
                addrs[i],
                p(&sharded),
                shards[i]
            );
            // One node on the fallback runtime: its answers, and its calls
            // to and from glommio peers, must be the same.
            if i == 2 {
                toml.push_str("runtime = \"epoll\"\n");
            }
            for j in (0..3).filter(|&j| j != i) {
                toml.push_str(&format!(
                    "[[peers]]\nid = \"{}\"\naddress = \"{}\"\nshards = {:?}\n",
                    ids[j], addrs[j], shards[j]
                ));
            }
            let path = d.join(format!("{}.toml", ids[i]));
            std::fs::write(&path, toml).unwrap();
            NodeProc::start(ids[i], addrs[i], &path)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let health = exchange(
        nodes[2].addr,
        Version::Http1,
        vec![Request::get("/healthz")],
    )
    .unwrap();
    let health: serde_json::Value = serde_json::from_slice(&health[0].clone().unwrap().1).unwrap();
    assert_eq!(health["runtime"], "epoll", "{health}");

    let gt = GroundTruth::read(&gt_path).unwrap();
    let qf = VectorFile::open(&query).unwrap();
    let vectors = crate::query_rows(&query);
    let vectors = Arc::new(vectors);
    let params = HttpParams {
        k: 10,
        list: Some(list as usize),
        beam: Some(4),
        ..Default::default()
    };

    // The same answers through every node, with the unsharded recall.
    let mut first: Option<Vec<SearchResponse>> = None;
    for n in &nodes {
        let out = search_many(n.addr, Arc::clone(&vectors), params, 8, 1).unwrap();
        let recall = mean_recall(&out, &gt);
        eprintln!(
            "through {}: recall@10 {recall:.4} (unsharded {unsharded:.4}, L={list})",
            n.id
        );
        assert!(
            (recall - unsharded).abs() <= 0.01,
            "{}: {recall} vs {unsharded}",
            n.id
        );
        let resp = responses(out);
        assert!(resp
            .iter()
            .all(|r| !r.partial && r.stats.shards_searched == 6));
        match &first {
            None => first = Some(resp),
            Some(f) => {
                for (a, b) in f.iter().zip(&resp) {
                    assert_eq!(a.hits, b.hits, "nodes disagree");
                }
            }
        }
    }
    let reference = first.unwrap();
    // ... and exactly the in-process search of all six shards.
    let set = shardann_engine::cluster::ShardedIndex::open(&sharded, Default::default()).unwrap();
    let mut scratch = shardann_engine::index::SearchScratch::<u8>::default();
    let sp = shardann_engine::search::SearchParams {
        k: 10,
        list: list as usize,
        beam: 4,
    };
    for (i, r) in reference.iter().enumerate() {
        let (hits, _) = set
            .search(&mut scratch, qf.vectors::<u8>().unwrap().row(i), sp)
            .unwrap();
        let got: Vec<(u32, f32)> = r
            .hits
            .iter()
            .map(|h| (h.global_id(), h.distance.unwrap_or(f32::NAN)))
            .collect();
        let want: Vec<(u32, f32)> = hits.iter().map(|h| (h.id, h.distance)).collect();
        assert_eq!(got, want, "query {i}: HTTP and in-process searches differ");
    }

    // Batch: the same hits as one by one.
    let batch_body = serde_json::json!({"vectors": &vectors[..3], "k": 10, "list": list});
    let r = exchange(
        nodes[1].addr,
        Version::Http2,
        vec![Request::post("/v1/search/batch", batch_body.to_string())],
    )
    .unwrap();
    let (status, body) = r[0].clone().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let batch: shardann_server::api::BatchResponse = serde_json::from_slice(&body).unwrap();
    for (a, b) in batch.results.iter().zip(&reference) {
        assert_eq!(a.hits, b.hits);
    }

    // The client's batched path: 7 vectors a request, same answers.
    let batched = shardann_server::client::search_many_batched(
        nodes[2].addr,
        Arc::new(vectors[..20].to_vec()),
        params,
        7,
        2,
        1,
    )
    .unwrap();
    for (a, b) in batched.iter().zip(&reference) {
        assert_eq!(a.result.as_ref().unwrap().hits, b.hits);
    }

    // Who serves what.
    let r = exchange(
        nodes[0].addr,
        Version::Http2,
        vec![Request::get("/v1/shards")],
    )
    .unwrap();
    let shards_json: serde_json::Value = serde_json::from_slice(&r[0].as_ref().unwrap().1).unwrap();
    assert_eq!(shards_json["num_shards"], 6);
    assert_eq!(
        shards_json["shards"][4]["served_by"],
        serde_json::json!(["n2", "n3"])
    );
    assert_eq!(
        shards_json["shards"][0]["served_by"],
        serde_json::json!(["n1", "n3"])
    );

    bad_requests(nodes[0].addr, &vectors[0]);

    // Kill n3 while a bounded query loop runs through n1: n1 needs shards
    // 4 and 5 from n2 or n3. No query may fail or come back partial.
    let many: Vec<Vec<f64>> = (0..2000)
        .map(|i| vectors[i % vectors.len()].clone())
        .collect();
    let many = Arc::new(many);
    let entry = nodes[0].addr;
    let calls_to_n3 = || {
        let m = exchange(entry, Version::Http1, vec![Request::get("/metrics")]).unwrap();
        let text = String::from_utf8_lossy(&m[0].as_ref().unwrap().1).into_owned();
        metric_value(&text, "shardann_peer_calls_total{node=\"n1\",peer=\"n3\"}")
    };
    let before = calls_to_n3();
    let runner = {
        let many = Arc::clone(&many);
        std::thread::spawn(move || search_many(entry, many, params, 4, 1).unwrap())
    };
    // Kill once the loop is under way (n1 has sent n3 some of its queries).
    let until = Instant::now() + Duration::from_secs(60);
    while calls_to_n3() < before + 30.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes[2].kill();
    let out = runner.join().unwrap();
    let resp = responses(out);
    let partial = resp.iter().filter(|r| r.partial).count();
    assert_eq!(
        partial, 0,
        "{partial} answers were partial after losing one replica"
    );
    for (i, r) in resp.iter().enumerate() {
        assert_eq!(r.hits, reference[i % reference.len()].hits, "query {i}");
    }
    let metrics = exchange(entry, Version::Http1, vec![Request::get("/metrics")]).unwrap();
    let text = String::from_utf8_lossy(&metrics[0].as_ref().unwrap().1).into_owned();
    let failures = metric_value(
        &text,
        "shardann_peer_failures_total{node=\"n1\",peer=\"n3\"}",
    );
    let to_n3 = metric_value(&text, "shardann_peer_calls_total{node=\"n1\",peer=\"n3\"}");
    eprintln!("n1 → n3: {to_n3} calls, {failures} failed (the kill landed mid-run)");
    assert!(
        failures >= 1.0,
        "the kill did not land during the loop:\n{text}"
    );

    // Both replicas of shards 4 and 5 down: answers are partial and say so.
    nodes[1].kill();
    let out = search_many(entry, Arc::new(vectors[..20].to_vec()), params, 4, 1).unwrap();
    for r in responses(out) {
        assert!(r.partial);
        assert_eq!(r.missing_shards, vec![4, 5]);
        assert_eq!(r.hits.len(), 10, "the shards that answered still fill k");
        assert!(r.hits.iter().all(|h| h.shard < 4));
    }
}

/// Each bad request gets a 400 whose message says what is wrong, over both
/// HTTP versions, and the node keeps serving.
fn bad_requests(addr: SocketAddr, good: &[f64]) {
    let v = |vals: &[f64]| serde_json::to_string(vals).unwrap();
    let mut wrong_type = good.to_vec();
    wrong_type[3] = 2.5;
    let mut out_of_range = good.to_vec();
    out_of_range[0] = 300.0;
    let big = format!("{{\"vector\": [{}]}}", "1,".repeat(5 << 20));
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{{\"vector\": {}}}", v(&good[..100])),
            "dimension 128",
        ),
        (
            format!("{{\"vector\": {}, \"k\": 0}}", v(good)),
            "k must be",
        ),
        (
            format!("{{\"vector\": {}, \"k\": 5000}}", v(good)),
            "k must be",
        ),
        (
            format!("{{\"vector\": {}, \"k\": 20, \"list\": 10}}", v(good)),
            "list must be at least k",
        ),
        // Beyond the node's [limits] (defaults): named with their setting.
        (
            format!("{{\"vector\": {}, \"list\": 10000}}", v(good)),
            "limits.max_list",
        ),
        (
            format!("{{\"vector\": {}, \"timeout_ms\": 0}}", v(good)),
            "limits.max_timeout_ms",
        ),
        (
            format!("{{\"vector\": {}, \"timeout_ms\": 100000}}", v(good)),
            "limits.max_timeout_ms",
        ),
        (format!("{{\"vector\": {}}}", v(&wrong_type)), "vector[3]"),
        (format!("{{\"vector\": {}}}", v(&out_of_range)), "vector[0]"),
        (
            format!("{{\"vector\": {}}}", v(good)).replace("[", "[NaN, "),
            "malformed",
        ),
        (
            format!("{{\"vector\": {}}}", v(good)).replacen(",", ", 1e999,", 1),
            "malformed",
        ),
        ("{\"vector\": [1, 2".into(), "malformed"),
        ("".into(), "empty"),
        // This index was built without documents.
        (
            format!("{{\"vector\": {}, \"include\": [\"text\"]}}", v(good)),
            "has no documents",
        ),
        (
            format!(
                "{{\"vector\": {}, \"filter\": {{\"lang\": \"fr\"}}}}",
                v(good)
            ),
            "has no documents",
        ),
        (
            format!("{{\"vector\": {}, \"filter\": {{\"$bogus\": 1}}}}", v(good)),
            "$bogus",
        ),
        (big, "limit"),
    ];
    for version in [Version::Http2, Version::Http1] {
        // Over HTTP/1.1 the node answers an oversized body before reading
        // it and closes the connection, which a client still writing sees
        // as a write error; that case is checked on a raw socket below.
        let cases = match version {
            Version::Http2 => &cases[..],
            Version::Http1 => &cases[..cases.len() - 1],
        };
        let reqs = cases
            .iter()
            .map(|(body, _)| Request::post("/v1/search", body.clone()))
            .chain([Request::get("/healthz")])
            .collect();
        let answers = exchange(addr, version, reqs).unwrap();
        for ((body, want), answer) in cases.iter().zip(&answers) {
            let (status, text) = answer
                .as_ref()
                .unwrap_or_else(|e| panic!("{version:?}: no answer: {e}"));
            let text = String::from_utf8_lossy(text);
            let shown = &body[..body.len().min(60)];
            assert_eq!(*status, 400, "{version:?} {shown}: {text}");
            assert!(
                text.contains(want),
                "{version:?} {shown}: {text} should say {want}"
            );
        }
        assert!(
            matches!(answers.last(), Some(Ok((200, _)))),
            "node unhealthy after bad requests"
        );
    }
    // HTTP/1.1 announcing a body over the limit: a 400 at once, not a hang.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n{\"vector\": [",
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("limit is"), "{reply}");
}
