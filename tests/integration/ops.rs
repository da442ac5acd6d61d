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
