//! Deadlines and retries against a peer that accepts connections and never
//! answers (a hung process, a black-holed network): the node must retry the
//! other replica in time, and report a shard whose only replica hangs as
//! missing when the deadline comes, instead of hanging with it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardann_engine::data::Vectors;
use shardann_engine::index::BuildParams;
use shardann_engine::partition::PartitionKind;
use shardann_engine::pq::PqParams;
use shardann_engine::progress::NoProgress;
use shardann_engine::shard_plan::build_sharded;
use shardann_engine::synth::{generate_u8, Stream};
use shardann_engine::vamana::VamanaParams;
use shardann_engine::Metric;
use shardann_server::client::{exchange, search_many, HttpParams, Request, Version};
use shardann_server::config::PeerConfig;
use shardann_server::NodeConfig;

const DIM: usize = 128;

fn build(dir: &Path) {
    let data = generate_u8(4000, 9, Stream::Base);
    let params = BuildParams {
        metric: Metric::L2,
        vamana: VamanaParams {
            max_degree: 24,
            build_list: 40,
            ..Default::default()
        },
        pq: PqParams {
            num_chunks: 16,
            train_sample: 4000,
            iterations: 4,
            seed: 9,
        },
        order: shardann_engine::layout::NodeOrder::Locality,
    };
    build_sharded(
        Vectors::new(&data[..], DIM),
        &params,
        4,
        PartitionKind::Random,
        dir,
        &NoProgress,
        None,
    )
    .expect("building the test index");
}

/// Accepts connections and holds them open without reading or answering.
fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(64) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(600));
    });
    addr
}

fn node(dir: &Path, id: &str, shards: Vec<u32>, peers: Vec<PeerConfig>) -> SocketAddr {
    let mut c = NodeConfig::single(dir, "127.0.0.1:0");
    c.node_id = id.into();
    c.shards = Some(shards);
    c.peers = peers;
    c.executors = Some(1);
    // Lives until the test process ends.
    let running = shardann_server::start(c).expect("start a node");
    let addr = running.addr;
    std::mem::forget(running);
    addr
}

fn peer(id: &str, addr: SocketAddr, shards: Vec<u32>) -> PeerConfig {
    PeerConfig {
        id: id.into(),
        address: addr.to_string(),
        shards,
    }
}

#[test]
fn a_hung_replica_is_retried_and_a_hung_shard_is_reported_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir);
    let hole = black_hole();
    // b serves shards 2 and 3; the hole claims 2 and 3 as well, and alone
    // serves nothing else. a serves 0 and 1 and asks either for 2 and 3.
    let b = node(dir, "b", vec![2, 3], vec![]);
    let a = node(
        dir,
        "a",
        vec![0, 1],
        vec![peer("hole", hole, vec![2, 3]), peer("b", b, vec![2, 3])],
    );
    let queries: Vec<Vec<f64>> = generate_u8(12, 9, Stream::Query)
        .chunks_exact(DIM)
        .map(|r| r.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let queries = Arc::new(queries);
    let params = HttpParams {
        k: 10,
        list: Some(30),
        timeout_ms: Some(600),
        ..Default::default()
    };
    let out = search_many(a, Arc::clone(&queries), params, 4, 1).unwrap();
    for (i, o) in out.iter().enumerate() {
        let r = o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("query {i}: {e}"));
        assert!(!r.partial, "query {i}: {:?} missing", r.missing_shards);
        assert_eq!(r.stats.shards_searched, 4);
        assert!(o.micros < 5_000_000, "query {i} took {} µs", o.micros);
    }
    let metrics = exchange(a, Version::Http2, vec![Request::get("/metrics")]).unwrap();
    let text = String::from_utf8_lossy(&metrics[0].as_ref().unwrap().1).into_owned();
    assert!(
        !text.contains("shardann_peer_failures_total{node=\"a\",peer=\"hole\"} 0\n"),
        "the hole was never tried, so the retry path was not exercised:\n{text}"
    );

    // Shard 3 served only by the hole: the answer comes at the deadline,
    // partial, naming shard 3, with the other shards' hits.
    let c = node(
        dir,
        "c",
        vec![0, 1],
        vec![peer("hole", hole, vec![3]), peer("b", b, vec![2])],
    );
    let start = Instant::now();
    let out = search_many(c, Arc::new(queries[..2].to_vec()), params, 2, 1).unwrap();
    let waited = start.elapsed();
    for o in &out {
        let r = o.result.as_ref().unwrap();
        assert!(r.partial);
        assert_eq!(r.missing_shards, vec![3]);
        // A peer that did not answer, not a local search out of time.
        assert!(r.timed_out_shards.is_empty());
        assert_eq!(r.hits.len(), 10);
        assert!(r.hits.iter().all(|h| h.shard != 3));
    }
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

/// The follower's question to a peer ("which version of shard S?") gives
/// up on one that never answers, instead of stalling following for good.
#[test]
fn asking_a_hung_peer_for_its_version_gives_up() {
    let hole = black_hole();
    let start = Instant::now();
    let answer = shardann_server::rt::block_on("version-probe", move || async move {
        shardann_server::replication::remote_version(hole, None, 0).await
    })
    .unwrap();
    let e = answer.unwrap_err().to_string();
    assert!(e.contains("no manifest within"), "{e}");
    assert!(start.elapsed() < shardann_server::replication::VERSION_TIMEOUT * 4);
}
