//! Three nodes coordinated through a real etcd (Debian's etcd-server, on a
//! loopback port with a temporary data directory; started and stopped by
//! the test): routing from registrations under leases, a version published
//! by the node that has it and pulled by its replica at once (polling off),
//! a node killed and dropped from routing when its lease expires, etcd
//! itself killed and restarted.
//!
//! The etcd binary: the one on PATH, else `bench-datasets/fetch_etcd.sh`
//! fetches Debian's package (no root needed) the first time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardann_server::client::{exchange, search_many, HttpParams, Outcome, Request, Version};
use shardann_server::etcd::Etcd;

use crate::cluster::{free_addrs, NodeProc};
use crate::{build_small, cli, cli_ok, copy_all, generated, p, query_rows};

fn etcd_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new("bash")
            .arg(root.join("bench-datasets/fetch_etcd.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run bash bench-datasets/fetch_etcd.sh");
        assert!(
            out.status.success(),
            "the coordination tests need etcd, and bench-datasets/fetch_etcd.sh failed"
        );
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("a path").trim())
    })
    .clone()
}

/// An etcd server on loopback, killed when dropped.
pub(crate) struct EtcdProc {
    child: Option<Child>,
    pub(crate) url: String,
    args: Vec<String>,
}

impl EtcdProc {
    pub(crate) fn start(data: &Path) -> Self {
        let [client, peer]: [SocketAddr; 2] = free_addrs(2).try_into().unwrap();
        let url = format!("http://{client}");
        let args = vec![
            "--name".into(),
            "t".into(),
            "--data-dir".into(),
            p(data).into(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url.clone(),
            "--listen-peer-urls".into(),
            format!("http://{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://{peer}"),
            "--initial-cluster".into(),
            format!("t=http://{peer}"),
        ];
        let mut e = EtcdProc {
            child: None,
            url,
            args,
        };
        e.restart();
        e
    }

    /// Starts (again, on the same data) and waits until it answers.
    fn restart(&mut self) {
        let log = std::fs::File::create(format!("{}.log", self.args[3])).unwrap();
        self.child = Some(
            Command::new(etcd_binary())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd"),
        );
        let etcd = self.client();
        let until = Instant::now() + Duration::from_secs(30);
        while etcd.get("/probe").is_err() {
            assert!(Instant::now() < until, "etcd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> Etcd {
        Etcd::new(
            std::slice::from_ref(&self.url),
            Duration::from_secs(2),
            None,
        )
        .unwrap()
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn node_toml(
    id: &str,
    addr: SocketAddr,
    dir: &Path,
    shards: &[u32],
    etcd: &str,
) -> String {
    format!(
        "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nshards = {shards:?}\n\
         executors = 1\ncluster_token = \"s3cret\"\nfollow_ms = 0\n\
         etcd = [\"{etcd}\"]\ncluster = \"t\"\nlease_ttl_s = 2\n",
        p(dir)
    )
}

/// `shardann cluster init` of cluster "t" on the etcd at `url` from `index`.
pub(crate) fn cluster_init(url: &str, index: &Path) -> String {
    cli_ok(&[
        "cluster",
        "init",
        "--etcd",
        url,
        "--name",
        "t",
        "--index",
        p(index),
    ])
}

pub(crate) fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = exchange(addr, Version::Http1, vec![Request::get(path)]).unwrap();
    let (_, body) = r.into_iter().next().unwrap().unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn get_text(addr: SocketAddr, path: &str) -> String {
    let r = exchange(addr, Version::Http1, vec![Request::get(path)]).unwrap();
    let (_, body) = r.into_iter().next().unwrap().unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The peers a node's `/healthz` lists (live in its routing).
fn peers_of(addr: SocketAddr) -> Vec<String> {
    let h = get_json(addr, "/healthz");
    h["peers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn version_served(addr: SocketAddr, shard: usize) -> Option<u64> {
    get_json(addr, "/v1/shards")["shards"][shard]["version"].as_u64()
}

pub(crate) fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn peer_calls(metrics: &str, peer: &str) -> u64 {
    let prefix = format!("shardann_peer_calls_total{{node=\"n1\",peer=\"{peer}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

/// Every outcome answered, and whole.
fn all_whole(outcomes: &[Outcome]) -> usize {
    for (i, o) in outcomes.iter().enumerate() {
        let r = o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("query {i} failed: {e}"));
        assert!(
            !r.partial && r.missing_shards.is_empty(),
            "query {i}: a partial answer (missing {:?})",
            r.missing_shards
        );
    }
    outcomes.len()
}

/// Queries sent through one node, batch after batch, each checked whole,
/// until stopped.
struct QueryLoop {
    stop: Arc<AtomicBool>,
    runner: std::thread::JoinHandle<usize>,
}

impl QueryLoop {
    fn start(entry: SocketAddr, vectors: Arc<Vec<Vec<f64>>>, params: HttpParams) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0;
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    n +=
                        all_whole(&search_many(entry, Arc::clone(&vectors), params, 4, 1).unwrap());
                }
                n
            })
        };
        QueryLoop { stop, runner }
    }

    /// Stops the loop; the number of queries answered (all whole).
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.runner
            .join()
            .expect("a query failed or came back partial")
    }
}

#[test]
fn nodes_coordinated_by_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "4000", "40", "33", "l2", "10");
    let idx = [d.join("n1"), d.join("n2"), d.join("n3")];
    build_small(&base, &idx[0], 2, "16");
    copy_all(&idx[0], &idx[1]);
    // n3 starts with an empty index directory but cluster.json comes from
    // etcd; its shards are copied in (pulling unplaced shards comes later).
    copy_all(&idx[0].join("shard-0"), &idx[2].join("shard-0"));
    copy_all(&idx[0].join("shard-1"), &idx[2].join("shard-1"));

    let mut etcd = EtcdProc::start(&d.join("etcd"));
    let cluster_cli = |sub: &str, extra: &[&str]| {
        let mut args = vec!["cluster", sub, "--etcd", &etcd.url, "--name", "t"];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let status = cluster_cli("status", &[]).unwrap();
    assert!(status.contains("not initialised"), "{status}");
    // A node of a cluster that was never published is refused at start.
    let early = d.join("early.toml");
    let early_addr = free_addrs(1)[0];
    std::fs::write(
        &early,
        node_toml("n1", early_addr, &d.join("early"), &[0], &etcd.url),
    )
    .unwrap();
    let err = cli(&["serve", "--config", p(&early)]).unwrap_err();
    assert!(err.contains("shardann cluster init"), "{err}");
    let out = cluster_init(&etcd.url, &idx[0]);
    assert!(out.contains("shard 0: version 1 published"), "{out}");
    assert!(out.contains("shard 1: version 1 published"), "{out}");

    // Shard 0 on n1 and n3, shard 1 on n2 and n3.
    let addrs = free_addrs(3);
    let shards: [&[u32]; 3] = [&[0], &[1], &[0, 1]];
    let ids = ["n1", "n2", "n3"];
    let mut nodes: Vec<NodeProc> = (0..3)
        .map(|i| {
            let toml = d.join(format!("{}.toml", ids[i]));
            std::fs::write(
                &toml,
                node_toml(ids[i], addrs[i], &idx[i], shards[i], &etcd.url),
            )
            .unwrap();
            NodeProc::start(ids[i], addrs[i], &toml)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    assert!(
        idx[2].join("cluster.json").exists(),
        "n3 took cluster.json from etcd"
    );
    wait_for("n1 learns its peers from etcd", 10, || {
        peers_of(addrs[0]) == ["n2", "n3"]
    });
    let status: serde_json::Value = serde_json::from_str(&cli_ok(&[
        "cluster", "status", "--etcd", &etcd.url, "--name", "t", "--json",
    ]))
    .unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    for s in 0..2 {
        assert_eq!(status["shards"][s]["version"], 1, "{status}");
        assert_eq!(status["shards"][s]["replicas"].as_array().unwrap().len(), 2);
        assert_eq!(status["shards"][s]["under_replicated"], false);
    }

    let vectors = Arc::new(query_rows(&query));
    let params = HttpParams {
        k: 10,
        list: Some(24),
        beam: Some(4),
        ..Default::default()
    };
    let batch = |addr: SocketAddr| search_many(addr, Arc::clone(&vectors), params, 4, 1).unwrap();
    all_whole(&batch(addrs[0]));

    // A fourth node joins with an empty disk while queries run through n1:
    // its node.toml names shard 0, which becomes its placement; it takes
    // cluster.json from etcd, pulls shard 0 from a node that serves it,
    // and serves it. Then it is placed on shard 1 too, taken off it, and
    // drained. No query fails or comes back partial throughout.
    let queries = QueryLoop::start(addrs[0], Arc::clone(&vectors), params);
    let addr4 = free_addrs(1)[0];
    let idx4 = d.join("n4");
    let toml4 = d.join("n4.toml");
    std::fs::write(&toml4, node_toml("n4", addr4, &idx4, &[0], &etcd.url)).unwrap();
    let mut n4 = NodeProc::start("n4", addr4, &toml4);
    n4.wait_ready();
    wait_for(
        "n4 pulls and serves shard 0, its first placement",
        20,
        || version_served(addr4, 0) == Some(1),
    );
    let err = cluster_cli("place", &["--shard", "2", "--node", "n4"]).unwrap_err();
    assert!(err.contains("shard 2 does not exist"), "{err}");
    cluster_cli("place", &["--shard", "1", "--node", "n4"]).unwrap();
    let joined = wait_for("n4 serves shard 1 and n1 routes to it", 20, || {
        version_served(addr4, 1) == Some(1)
            && get_json(addrs[0], "/v1/shards")["shards"][1]["served_by"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "n4"))
    });
    eprintln!(
        "placed to served and routed: {:.0} ms",
        joined.as_secs_f64() * 1e3
    );
    wait_for("n1 sends n4 queries", 20, || {
        peer_calls(&get_text(addrs[0], "/metrics"), "n4") > 0
    });
    cluster_cli("place", &["--shard", "1", "--node", "n4", "--remove"]).unwrap();
    wait_for("n1 stops routing shard 1 to n4", 10, || {
        get_json(addrs[0], "/v1/shards")["shards"][1]["served_by"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|n| n == "n4"))
    });
    wait_for("n4 stops serving shard 1", 10, || {
        get_json(addr4, "/healthz")["local_shards"] == serde_json::json!([0])
    });
    let out = cluster_cli("drain", &["--node", "n4"]).unwrap();
    assert!(out.contains("n4 drained"), "{out}");
    wait_for("n4 stops serving shard 0", 10, || {
        get_json(addr4, "/healthz")["local_shards"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert!(queries.stop() > 0);
    n4.kill();
    wait_for("n4 leaves routing", 10, || {
        peers_of(addrs[0]) == ["n2", "n3"]
    });

    // A version built where n1 is: n1 serves and publishes it; n3 (shard
    // 0's other replica, following by polling turned off) pulls it when it
    // sees the publish.
    let watcher = etcd.client();
    let published = |s: u32| -> Option<u64> {
        let kv = watcher.get(&format!("/shardann/t/versions/{s}")).ok()??;
        serde_json::from_slice::<serde_json::Value>(&kv.value).ok()?["version"].as_u64()
    };
    build_small(&base, &idx[0], 2, "20");
    wait_for("n1 publishes shard 0 version 2", 10, || {
        published(0) == Some(2)
    });
    let t_publish = Instant::now();
    let lag = wait_for("n3 serves the published version", 10, || {
        version_served(addrs[2], 0) == Some(2)
    });
    eprintln!(
        "publish to last replica serving: {:.0} ms (at most; sampled every 10 ms)",
        lag.as_secs_f64() * 1e3
    );
    assert!(
        lag < Duration::from_secs(1),
        "n3 served version 2 {lag:?} after the publish"
    );
    let _ = t_publish;
    assert_eq!(
        published(1),
        Some(1),
        "nobody serving shard 1 has version 2"
    );

    // n3 killed (SIGKILL) while queries run through n1: none fails, none is
    // partial (shard 0 is local to n1, shard 1 falls back to n2); when n3's
    // lease expires it leaves n1's routing, and no call goes to it after.
    let queries = QueryLoop::start(addrs[0], Arc::clone(&vectors), params);
    std::thread::sleep(Duration::from_millis(300));
    nodes[2].kill();
    let gone = wait_for("n3 leaves n1's routing", 10, || {
        peers_of(addrs[0]) == ["n2"]
    });
    eprintln!(
        "SIGKILL to removal from routing: {:.0} ms (lease TTL 2 s)",
        gone.as_secs_f64() * 1e3
    );
    let calls = peer_calls(&get_text(addrs[0], "/metrics"), "n3");
    std::thread::sleep(Duration::from_millis(500));
    assert!(queries.stop() > 0);
    all_whole(&batch(addrs[0]));
    assert_eq!(
        peer_calls(&get_text(addrs[0], "/metrics"), "n3"),
        calls,
        "a call went to n3 after it left routing"
    );
    let status: serde_json::Value = serde_json::from_str(&cli_ok(&[
        "cluster", "status", "--etcd", &etcd.url, "--name", "t", "--json",
    ]))
    .unwrap();
    let live: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["n1", "n2"]);
    // With n3 gone, n2 is shard 1's only live replica: draining it is
    // refused, though n3's placement is still in etcd.
    let err = cluster_cli("drain", &["--node", "n2"]).unwrap_err();
    assert!(err.contains("leaves them unserved"), "{err}");

    // etcd killed: the nodes keep answering with what they knew, and say
    // coordination is unavailable; etcd back: they register again.
    etcd.kill();
    wait_for("n1 reports etcd unavailable", 10, || {
        get_json(addrs[0], "/healthz")["coordination"]["available"] == false
    });
    assert!(
        get_text(addrs[0], "/metrics").contains("shardann_coordination_available{node=\"n1\"} 0")
    );
    all_whole(&batch(addrs[0]));
    all_whole(&batch(addrs[1]));
    etcd.restart();
    wait_for("n1 and n2 see etcd again", 20, || {
        [addrs[0], addrs[1]].iter().all(|&a| {
            let h = get_json(a, "/healthz");
            let ok = h["coordination"]["available"] == true;
            if !ok && std::env::var("DEBUG_COORD").is_ok() {
                eprintln!("{}", h["coordination"]);
                std::thread::sleep(Duration::from_millis(500));
            }
            ok
        })
    });
    wait_for("both registered again", 20, || {
        cli(&[
            "cluster", "status", "--etcd", &etcd.url, "--name", "t", "--json",
        ])
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v["nodes"].as_array().map(Vec::len) == Some(2))
    });
    assert_eq!(peers_of(addrs[0]), ["n2"]);
    all_whole(&batch(addrs[0]));
}

/// Configuration mistakes of the coordinated mode are named at load.
#[test]
fn coordinated_config_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = "node_id = \"n1\"\nlisten = \"127.0.0.1:7001\"\nindex_dir = \"x\"\n";
    for (extra, want) in [
        ("etcd = [\"http://127.0.0.1:2379\"]\n", "without cluster"),
        ("cluster = \"t\"\n", "cluster is set without etcd"),
        ("etcd = [\"https://e:2379\"]\ncluster = \"t\"\n", "TLS"),
        ("etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"a/b\"\n", "cannot name an etcd key"),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"t\"\nlease_ttl_s = 1\n",
            "lease_ttl_s must be at least 2",
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"t\"\n[[peers]]\nid = \"n2\"\naddress = \"127.0.0.1:7002\"\nshards = [0]\n",
            "[[peers]] and etcd",
        ),
    ] {
        let path = dir.path().join("n.toml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let err = shardann_server::config::NodeConfig::from_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{extra:?}: {err} should say {want:?}");
    }
    // A wildcard listen address is what peers would be told to call.
    let coordinated = "node_id = \"n1\"\nindex_dir = \"x\"\netcd = [\"http://127.0.0.1:2379\"]\ncluster = \"t\"\n";
    let path = dir.path().join("w.toml");
    std::fs::write(&path, format!("{coordinated}listen = \"0.0.0.0:7001\"\n")).unwrap();
    let err = shardann_server::config::NodeConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("set advertise"), "{err}");
    std::fs::write(
        &path,
        format!("{coordinated}listen = \"0.0.0.0:7001\"\nadvertise = \"127.0.0.1:7001\"\n"),
    )
    .unwrap();
    shardann_server::config::NodeConfig::from_file(&path).unwrap();
}

/// One JSON POST to etcd's gateway, for what the client does not offer
/// (turning authentication on); the raw response.
fn etcd_post(url: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    out
}

/// With etcd's authentication on, the CLI and a node pass the configured
/// user and password; without them, the refusal is named.
#[test]
fn etcd_authentication_is_passed_through() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, _, _] = generated(d, "sift-like", "600", "5", "7", "l2", "10");
    let idx = d.join("idx");
    build_small(&base, &idx, 2, "12");
    let etcd = EtcdProc::start(&d.join("etcd"));
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        etcd_post(&etcd.url, path, body);
    }
    let init = |extra: &[&str]| {
        let mut args = vec![
            "cluster",
            "init",
            "--etcd",
            &etcd.url,
            "--name",
            "t",
            "--index",
            p(&idx),
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let err = init(&[]).unwrap_err();
    assert!(err.contains("/v3/kv/range answered"), "{err}");
    let err = init(&["--etcd-user", "root", "--etcd-password", "wrong"]).unwrap_err();
    assert!(err.contains("/v3/auth/authenticate answered"), "{err}");
    init(&["--etcd-user", "root", "--etcd-password", "pw"]).unwrap();

    let addr = free_addrs(1)[0];
    let toml = d.join("n1.toml");
    std::fs::write(
        &toml,
        format!(
            "{}etcd_user = \"root\"\netcd_password = \"pw\"\n",
            node_toml("n1", addr, &idx, &[0, 1], &etcd.url)
        ),
    )
    .unwrap();
    let mut n1 = NodeProc::start("n1", addr, &toml);
    n1.wait_ready();
    let status: serde_json::Value = serde_json::from_str(&cli_ok(&[
        "cluster",
        "status",
        "--etcd",
        &etcd.url,
        "--name",
        "t",
        "--json",
        "--etcd-user",
        "root",
        "--etcd-password",
        "pw",
    ]))
    .unwrap();
    assert_eq!(status["nodes"][0]["id"], "n1", "{status}");
    assert_eq!(status["shards"][1]["replicas"][0], "n1", "{status}");
}
