//! Replication: a node joins and pulls its shards; a pull killed at any
//! moment leaves the old or the new version, verified, never a mixture;
//! only files of a segment are served, and only with the cluster token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardann_engine::segment::{self, Manifest};
use shardann_server::client::{exchange, search_many, HttpParams, Request, Version};

use crate::cluster::{free_addrs, NodeProc};
use crate::{cli_ok, generated, p};

const REPLICATE_ENV: &str = "SHARDANN_TEST_REPLICATE_ARGS";

/// Not a test: `shardann replicate` in a child process that the crash test
/// kills. Without its environment variable it returns at once.
#[test]
#[ignore = "a replicate process, started by pulls_killed_at_any_moment_leave_a_whole_version"]
fn replicate_process() {
    let Ok(args) = std::env::var(REPLICATE_ENV) else {
        return;
    };
    let mut argv = vec!["shardann", "--quiet", "replicate"];
    argv.extend(args.split('\u{1f}'));
    let mut out = std::io::stdout();
    if let Err(e) = shardann::run(argv, &mut out) {
        eprintln!("replicate failed: {e:#}");
        std::process::exit(1);
    }
}

fn node_toml(
    id: &str,
    addr: std::net::SocketAddr,
    dir: &Path,
    shards: &[u32],
    peers: &[(&str, std::net::SocketAddr, &[u32])],
) -> String {
    let mut t = format!(
        "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nshards = {shards:?}\nexecutors = 1\ncluster_token = \"s3cret\"\n",
        p(dir)
    );
    for (pid, paddr, pshards) in peers {
        t.push_str(&format!(
            "[[peers]]\nid = \"{pid}\"\naddress = \"{paddr}\"\nshards = {pshards:?}\n"
        ));
    }
    t
}

#[test]
fn a_new_node_pulls_its_shards_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "4000", "50", "31", "l2", "10");
    let idx = d.join("idx");
    cli_ok(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&idx),
        "--shards",
        "4",
        "--max-degree",
        "24",
        "--build-list",
        "40",
        "--pq-bytes",
        "16",
    ]);
    let addrs = free_addrs(3);
    let all: &[u32] = &[0, 1, 2, 3];
    let empty = d.join("n3");
    std::fs::create_dir_all(&empty).unwrap();
    let tomls = [
        node_toml("n1", addrs[0], &idx, all, &[("n2", addrs[1], all)]),
        node_toml("n2", addrs[1], &idx, all, &[("n1", addrs[0], all)]),
        // n3 starts with nothing on disk and serves shards 2 and 3.
        node_toml(
            "n3",
            addrs[2],
            &empty,
            &[2, 3],
            &[("n1", addrs[0], all), ("n2", addrs[1], all)],
        ),
    ];
    let ids = ["n1", "n2", "n3"];
    let mut nodes = Vec::new();
    for i in 0..2 {
        let path = d.join(format!("{}.toml", ids[i]));
        std::fs::write(&path, &tomls[i]).unwrap();
        nodes.push(NodeProc::start(ids[i], addrs[i], &path));
    }
    for n in &mut nodes {
        n.wait_ready();
    }

    // Replication endpoints: the token is required, only segment files
    // are served.
    let get = |path: &str| {
        exchange(addrs[0], Version::Http2, vec![Request::get(path)])
            .unwrap()
            .remove(0)
            .unwrap()
    };
    let (status, body) = get("/v1/shards/2/manifest");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get("/v1/cluster").0, 401);
    let e = cli_ok_err(&[
        "replicate",
        "--from",
        &format!("http://{}", addrs[0]),
        "--shard",
        "2",
        "--index-dir",
        p(&d.join("x")),
        "--attempts",
        "1",
    ]);
    assert!(e.contains("401"), "{e}");

    let path = d.join("n3.toml");
    std::fs::write(&path, &tomls[2]).unwrap();
    let mut n3 = NodeProc::start("n3", addrs[2], &path);
    n3.wait_ready();
    // What n3 pulled verifies, and is what n1 serves.
    for s in [2, 3] {
        let mine = segment::verify(&empty.join(format!("shard-{s}"))).unwrap();
        let theirs =
            Manifest::read(&segment::resolve(&idx.join(format!("shard-{s}"))).unwrap()).unwrap();
        assert_eq!(mine.manifest, theirs);
    }
    assert!(
        !empty.join("shard-0").exists(),
        "n3 pulled a shard it does not serve"
    );

    let qf = shardann_engine::data::VectorFile::open(&query).unwrap();
    let vectors: Vec<Vec<f64>> = qf
        .vectors::<u8>()
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let vectors = Arc::new(vectors);
    let params = HttpParams {
        k: 10,
        list: Some(32),
        beam: Some(4),
        ..Default::default()
    };
    let via_n1 = search_many(addrs[0], Arc::clone(&vectors), params, 4, 1).unwrap();
    let via_n3 = search_many(addrs[2], Arc::clone(&vectors), params, 4, 1).unwrap();
    for (a, b) in via_n1.iter().zip(&via_n3) {
        let (a, b) = (a.result.as_ref().unwrap(), b.result.as_ref().unwrap());
        assert!(!a.partial && !b.partial);
        assert_eq!(a.hits, b.hits);
    }
    let m = exchange(addrs[2], Version::Http1, vec![Request::get("/metrics")]).unwrap();
    let text = String::from_utf8_lossy(&m[0].as_ref().unwrap().1).into_owned();
    assert!(
        text.contains("shardann_pulls_total{node=\"n3\"} 2"),
        "{text}"
    );
    drop(n3);
    drop(nodes);
}

fn cli_ok_err(args: &[&str]) -> String {
    crate::cli(args).expect_err("must fail")
}

/// A tiny deterministic generator for kill times.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn pulls_killed_at_any_moment_leave_a_whole_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, ..] = generated(d, "sift-like", "30000", "5", "32", "l2", "10");
    let cluster = d.join("cluster");
    cli_ok(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&cluster),
        "--shards",
        "2",
        "--max-degree",
        "24",
        "--build-list",
        "32",
        "--pq-bytes",
        "16",
    ]);
    // The destination has version 1 of shard 0; the source moves on to 2.
    let dst = d.join("dst");
    std::fs::create_dir_all(dst.join("shard-0")).unwrap();
    std::fs::copy(cluster.join("cluster.json"), dst.join("cluster.json")).unwrap();
    let v1 = segment::version_dir_name(1);
    copy_tree(
        &cluster.join("shard-0").join(&v1),
        &dst.join("shard-0").join(&v1),
    );
    segment::publish(&dst.join("shard-0"), 1).unwrap();
    let v1_manifest = Manifest::read(&dst.join("shard-0").join(&v1)).unwrap();
    cli_ok(&[
        "build",
        "--base",
        p(&base),
        "--out",
        p(&cluster),
        "--shards",
        "2",
        "--max-degree",
        "28",
        "--build-list",
        "32",
        "--pq-bytes",
        "16",
    ]);
    let v2_manifest = Manifest::read(&segment::resolve(&cluster.join("shard-0")).unwrap()).unwrap();
    assert_eq!(v2_manifest.version, 2);

    let addr = free_addrs(1)[0];
    let toml = d.join("src.toml");
    std::fs::write(
        &toml,
        format!(
            "node_id = \"src\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nexecutors = 1\n",
            p(&cluster)
        ),
    )
    .unwrap();
    let mut source = NodeProc::start("src", addr, &toml);
    source.wait_ready();

    let args = [
        "--from",
        &format!("http://{addr}"),
        "--shard",
        "0",
        "--index-dir",
        p(&dst),
        "--attempts",
        "1",
    ]
    .join("\u{1f}");
    let mut rng = 7u64;
    let (mut interrupted, mut completed) = (0, 0);
    let shard = dst.join("shard-0");
    let staging = shard.join(format!("{}.partial", segment::version_dir_name(2)));
    for round in 0..16 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "replication::replicate_process",
                "--nocapture",
            ])
            .env(REPLICATE_ENV, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(lcg(&mut rng) % 60);
        let start = Instant::now();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever the moment: the current version is whole and verifies,
        // and it is exactly version 1 or exactly version 2.
        let v = segment::verify(&shard)
            .unwrap_or_else(|e| panic!("round {round}, killed after {:?}: {e}", start.elapsed()));
        assert!(
            v.manifest == v1_manifest || v.manifest == v2_manifest,
            "round {round}"
        );
        if staging.exists() {
            interrupted += 1;
        }
        if v.manifest.version == 2 {
            completed += 1;
            // Back to version 1 for the next round (a test-only rewind:
            // publish never goes backwards).
            std::fs::write(
                shard.join("CURRENT"),
                format!("{}\n", segment::version_dir_name(1)),
            )
            .unwrap();
            std::fs::remove_dir_all(shard.join(segment::version_dir_name(2))).unwrap();
        }
    }
    eprintln!(
        "16 killed pulls: {interrupted} left a staged partial copy, {completed} had finished"
    );
    assert!(interrupted >= 1, "no kill landed during a transfer");
    // A last, uninterrupted pull finishes (resuming what is staged).
    let out = cli_ok(&[
        "replicate",
        "--from",
        &format!("http://{addr}"),
        "--shard",
        "0",
        "--index-dir",
        p(&dst),
    ]);
    assert!(out.contains("version 2"), "{out}");
    let v = segment::verify(&dst.join("shard-0")).unwrap();
    assert_eq!(v.manifest, v2_manifest);
    // Nothing staged is left behind, and the old version is still there.
    let names: Vec<String> = std::fs::read_dir(dst.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    drop(source);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
