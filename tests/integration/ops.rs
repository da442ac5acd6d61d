//! Operating a node: a second node on a taken port, a dead peer seen as
//! down.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardann_server::client::{exchange, Request, Version};

use crate::cluster::{free_addrs, NodeProc, NODE_ENV};
use crate::{build_small, generated, p};

/// Runs a node process for `config` until it exits (at most 60 s); returns
/// its exit status and stderr.
fn run_node_to_exit(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "cluster::node_process",
            "--nocapture",
        ])
        .env(NODE_ENV, config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a node process");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the second node is still running after 60 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = exchange(addr, Version::Http1, vec![Request::get(path)]).unwrap();
    let (status, body) = r[0].clone().unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A node started on the address another node listens on refuses to start
/// (it used to join the first one's `SO_REUSEPORT` group and take part of
/// its connections); the first keeps answering alone.
#[test]
fn a_second_node_on_a_taken_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, _, _] = generated(d, "sift-like", "1000", "10", "5", "l2", "10");
    // A node serves a sharded index (its cluster.json says what it holds).
    let index = d.join("index");
    build_small(&base, &index, 2, "16");
    let addr = free_addrs(1)[0];
    let config = |id: &str| {
        let path = d.join(format!("{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nexecutors = 1\nfollow_ms = 0\n",
                p(&index)
            ),
        )
        .unwrap();
        path
    };
    let mut first = NodeProc::start("first", addr, &config("first"));
    first.wait_ready();

    let (status, stderr) = run_node_to_exit(&config("second"));
    assert!(!status.success(), "the second node exited {status}");
    assert!(
        stderr.to_lowercase().contains("address already in use"),
        "stderr does not say the address is in use:\n{stderr}"
    );
    for _ in 0..20 {
        let (status, body) = get(addr, "/healthz");
        assert_eq!(status, 200);
        assert!(body.contains("\"node_id\":\"first\""), "{body}");
    }
}

/// With its peer killed, a node says so once a call to the peer failed: the
/// peer is down in `/healthz` (with the shard nobody live serves), in
/// `/v1/shards` (not among the shard's live nodes) and in `/metrics`
/// (`shardann_peer_up` 0). Before, both still listed the dead peer as
/// serving.
#[test]
fn a_dead_peer_is_shown_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "2000", "10", "6", "l2", "10");
    let index = d.join("sharded");
    build_small(&base, &index, 2, "16");
    let addrs = free_addrs(2);
    let ids = ["n1", "n2"];
    let mut nodes: Vec<NodeProc> = (0..2)
        .map(|i| {
            let j = 1 - i;
            let path = d.join(format!("{}.toml", ids[i]));
            std::fs::write(
                &path,
                format!(
                    "node_id = \"{}\"\nlisten = \"{}\"\nindex_dir = \"{}\"\nshards = [{i}]\nexecutors = 1\nfollow_ms = 0\n\
                     [[peers]]\nid = \"{}\"\naddress = \"{}\"\nshards = [{j}]\n",
                    ids[i],
                    addrs[i],
                    p(&index),
                    ids[j],
                    addrs[j]
                ),
            )
            .unwrap();
            NodeProc::start(ids[i], addrs[i], &path)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let vector = crate::query_rows(&query).swap_remove(0);
    let body = serde_json::json!({"vector": vector, "k": 5}).to_string();
    let search = || {
        let r = exchange(
            addrs[0],
            Version::Http1,
            vec![Request::post("/v1/search", body.clone())],
        )
        .unwrap();
        let (status, body) = r[0].clone().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let json =
        |path: &str| serde_json::from_str::<serde_json::Value>(&get(addrs[0], path).1).unwrap();

    assert_eq!(search()["partial"], false);
    let health = json("/healthz");
    assert_eq!(health["peers"], serde_json::json!({"n2": "up"}), "{health}");
    assert_eq!(
        health["unavailable_shards"],
        serde_json::json!([]),
        "{health}"
    );
    let (_, metrics) = get(addrs[0], "/metrics");
    assert!(
        metrics.contains("shardann_peer_up{node=\"n1\",peer=\"n2\"} 1"),
        "{metrics}"
    );

    nodes[1].kill();
    assert_eq!(search()["partial"], true);
    let health = json("/healthz");
    assert_eq!(
        health["peers"],
        serde_json::json!({"n2": "down"}),
        "{health}"
    );
    assert_eq!(
        health["unavailable_shards"],
        serde_json::json!([1]),
        "{health}"
    );
    let shards = json("/v1/shards");
    assert_eq!(shards["shards"][1]["served_by"], serde_json::json!(["n2"]));
    assert_eq!(
        shards["shards"][1]["live"],
        serde_json::json!([]),
        "{shards}"
    );
    assert_eq!(
        shards["shards"][0]["live"],
        serde_json::json!(["n1"]),
        "{shards}"
    );
    assert_eq!(
        shards["peers"],
        serde_json::json!([{"id": "n2", "address": addrs[1].to_string(), "up": false}]),
        "{shards}"
    );
    let (_, metrics) = get(addrs[0], "/metrics");
    assert!(
        metrics.contains("shardann_peer_up{node=\"n1\",peer=\"n2\"} 0"),
        "{metrics}"
    );
}
