//! Issue 10, items 1 and 3: a node under far more concurrent searches than
//! it can serve, and clients that are slow, idle or never answer.
//!
//! Nodes are processes (see `cluster::NodeProc`), on 127.0.0.1, each with
//! one executor; every client loop here is bounded in requests and time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardann_server::client::{exchange, Request, Version};
use shardann_server::http;

use crate::cluster::{free_addrs, NodeProc};
use crate::{build_small, generated, p};

/// One answer of the storm, as the client saw it.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: serde_json::Value,
}

/// `conns` HTTP/2 connections to `addr` with `streams` requests in flight on
/// each, every one of them sending `rounds` searches in turn (the i-th
/// request takes vector i mod `vectors.len()`).
fn storm(
    addr: SocketAddr,
    vectors: Vec<Vec<f64>>,
    extra: serde_json::Value,
    conns: usize,
    streams: usize,
    rounds: usize,
) -> Vec<Answer> {
    shardann_server::rt::block_on("storm", move || async move {
        let mut senders = Vec::new();
        for _ in 0..conns {
            senders.push(
                http::connect(addr, Duration::from_secs(5))
                    .await
                    .expect("connect"),
            );
        }
        let vectors = &vectors;
        let extra = &extra;
        let tasks = (0..conns * streams).map(|i| {
            let mut sender = senders[i % conns].clone();
            async move {
                let mut out = Vec::new();
                for r in 0..rounds {
                    let mut body = extra.clone();
                    body["vector"] = vectors[(i * rounds + r) % vectors.len()].clone().into();
                    let req = http::post_json(addr, "/v1/search", &body).unwrap();
                    let one = async {
                        let resp = http::send(&mut sender, req).await?;
                        let retry_after = resp
                            .headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                        let (status, bytes) = http::collect(resp).await?;
                        Ok::<_, http::PeerError>((status.as_u16(), retry_after, bytes))
                    };
                    let until = Instant::now() + Duration::from_secs(20);
                    let (status, retry_after, bytes) = shardann_server::rt::until(until, one)
                        .await
                        .expect("an answer within 20 s")
                        .expect("an answer");
                    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
                    });
                    out.push(Answer {
                        status,
                        retry_after,
                        body,
                    });
                }
                out
            }
        });
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    })
    .unwrap()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = exchange(addr, Version::Http1, vec![Request::get("/metrics")]).unwrap();
    let (_, body) = r[0].clone().unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// Issue 10, item 1: 3,000 searches, 1,000 at a time over 8 HTTP/2
/// connections, to a node with one executor that serves one shard itself
/// and the other through a peer. It used to start every search at once,
/// so all of them missed the deadline together: 200s with `partial: true`
/// and no hits from its own shard. Now every answer is either complete
/// (within its deadline) or a 503 with `Retry-After` naming the limit;
/// `/healthz` answers throughout, and no local search times out.
/// How far past its deadline a complete answer may arrive (see its use).
const DEADLINE_SLACK_MS: u64 = 50;

#[test]
fn issue_10_an_overloaded_node_sheds_instead_of_answering_empty() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "10000", "100", "10", "l2", "10");
    let index = d.join("index");
    build_small(&base, &index, 2, "32");
    let addrs = free_addrs(2);
    let config = |id: &str, me: usize, shard: u32| {
        let other = 1 - me;
        let path = d.join(format!("{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "node_id = \"{id}\"\nlisten = \"{}\"\nindex_dir = \"{}\"\nshards = [{shard}]\nexecutors = 1\nfollow_ms = 0\n\
                 [[peers]]\nid = \"{}\"\naddress = \"{}\"\nshards = [{}]\n",
                addrs[me],
                p(&index),
                if me == 0 { "b" } else { "a" },
                addrs[other],
                1 - shard
            ),
        )
        .unwrap();
        path
    };
    let mut a = NodeProc::start("a", addrs[0], &config("a", 0, 0));
    let mut b = NodeProc::start("b", addrs[1], &config("b", 1, 1));
    a.wait_ready();
    b.wait_ready();

    let timeout_ms = 1000;
    let storming = Arc::new(AtomicBool::new(true));
    let health = {
        let storming = Arc::clone(&storming);
        let addr = a.addr;
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            let until = Instant::now() + Duration::from_secs(60);
            while storming.load(Ordering::Relaxed) && Instant::now() < until {
                let t = Instant::now();
                let r = exchange(addr, Version::Http1, vec![Request::get("/healthz")]).unwrap();
                assert!(
                    matches!(r.first(), Some(Ok((200, _)))),
                    "/healthz during the storm: {r:?}"
                );
                slowest = slowest.max(t.elapsed());
                answered += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (answered, slowest)
        })
    };
    let t = Instant::now();
    let answers = storm(
        a.addr,
        crate::query_rows(&query),
        serde_json::json!({"k": 10, "list": 200, "timeout_ms": timeout_ms}),
        8,
        125,
        3,
    );
    let took = t.elapsed();
    storming.store(false, Ordering::Relaxed);
    let (health_answers, health_slowest) = health.join().unwrap();

    let mut ok = 0;
    let mut shed = 0;
    for (i, r) in answers.iter().enumerate() {
        match r.status {
            200 => {
                ok += 1;
                assert_eq!(r.body["partial"], false, "answer {i}: {}", r.body);
                assert_eq!(
                    r.body["hits"].as_array().map(Vec::len),
                    Some(10),
                    "answer {i}: {}",
                    r.body
                );
                // The deadline bounds the wait for reads and peers; the
                // merge after the last check, and the executor's next turn
                // on a loaded 2-core machine, come after it (a pread run in
                // CI once answered in full 4 ms past it). A search that
                // ignored its deadline would be late by whole rounds.
                let took_us = r.body["took_us"].as_u64().unwrap();
                assert!(
                    took_us <= (timeout_ms + DEADLINE_SLACK_MS) * 1000,
                    "answer {i} took {took_us} µs, deadline {timeout_ms} ms"
                );
            }
            503 => {
                shed += 1;
                let secs: u64 = r
                    .retry_after
                    .as_deref()
                    .unwrap_or_else(|| panic!("answer {i}: a 503 without Retry-After"))
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(secs >= 1, "answer {i}: Retry-After {secs}");
                let limit = r.body["limit"].as_str().unwrap_or("");
                assert!(
                    limit.starts_with("admission."),
                    "answer {i}: a 503 for {limit:?}: {}",
                    r.body
                );
                let error = r.body["error"].as_str().unwrap_or("");
                assert!(error.contains(limit), "answer {i}: {error}");
            }
            s => panic!("answer {i}: status {s}: {}", r.body),
        }
    }
    eprintln!(
        "storm of {} searches: {ok} answered 200, {shed} shed (503) in {took:.2?}; \
         /healthz answered {health_answers} times, slowest {health_slowest:.2?}",
        answers.len()
    );
    assert!(ok >= 100, "only {ok} searches answered");
    assert!(shed > 0, "nothing shed: not an overload");
    assert!(
        health_answers >= 1,
        "/healthz was not tried during the storm"
    );
    assert!(
        health_slowest < Duration::from_secs(2),
        "/healthz took {health_slowest:?} during the storm"
    );
    for (node, name) in [(&a, "a"), (&b, "b")] {
        let failures = metric(node.addr, "shardann_shard_failures_total");
        assert_eq!(
            failures, 0.0,
            "node {name}: local searches failed or timed out"
        );
    }
    assert!(
        metric(
            a.addr,
            "shardann_shed_total{node=\"a\",reason=\"queue_full\"}"
        ) + metric(a.addr, "shardann_shed_total{node=\"a\",reason=\"busy\"}")
            + metric(
                a.addr,
                "shardann_shed_total{node=\"a\",reason=\"wait_timeout\"}"
            )
            == shed as f64
    );
    a.kill();
    b.kill();
}

/// A node of one executor over `index` with `extra` lines in its config.
fn node(d: &Path, index: &Path, id: &'static str, extra: &str) -> NodeProc {
    let addr = free_addrs(1)[0];
    let path = d.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "node_id = \"{id}\"\nlisten = \"{addr}\"\nindex_dir = \"{}\"\nexecutors = 1\nfollow_ms = 0\n{extra}",
            p(index)
        ),
    )
    .unwrap();
    let mut n = NodeProc::start(id, addr, &path);
    n.wait_ready();
    n
}

/// Writes `bytes` one at a time, `every` apart, until the node closes the
/// connection or `give_up` passes; returns when it closed (`None`: open
/// at `give_up`).
fn trickle(
    s: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(every)).unwrap();
    let mut i = 0;
    let mut buf = [0u8; 4096];
    while t.elapsed() < give_up {
        if i < bytes.len() && s.write_all(&bytes[i..=i]).is_err() {
            return Some(t.elapsed());
        }
        i += 1;
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// Everything the node sends until it closes the connection or `give_up`
/// passes; and when it closed.
fn read_until_closed(s: &mut TcpStream, give_up: Duration) -> (Vec<u8>, Option<Duration>) {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < give_up {
        match s.read(&mut buf) {
            Ok(0) => return (out, Some(t.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (out, Some(t.elapsed())),
        }
    }
    (out, None)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `POST /v1/search` (indexed method and scheme, literal path
/// and authority, no Huffman coding).
fn post_search_headers(authority: &str) -> Vec<u8> {
    let mut h = vec![0x83, 0x86, 0x04, 10];
    h.extend_from_slice(b"/v1/search");
    h.push(0x01);
    h.push(authority.len() as u8);
    h.extend_from_slice(authority.as_bytes());
    h
}

/// The frames in `bytes`: (type, flags, stream, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

const GOAWAY: u8 = 7;
const PING: u8 = 6;
const SETTINGS: u8 = 4;
const HEADERS: u8 = 1;
const DATA: u8 = 0;

/// Issue 10, item 3: headers trickled a byte at a time, a body that stops,
/// an HTTP/2 connection that sends no request, and one that goes idle are
/// all cut after their bounds (configured short here), on HTTP/1.1 and
/// HTTP/2 alike; they used to stay open for as long as the client liked
/// (70 s and counting). HTTP/2 connections are offered 128 streams.
#[test]
fn issue_10_slow_and_idle_clients_are_cut_after_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, _, _] = generated(d, "sift-like", "1000", "10", "3", "l2", "10");
    let index = d.join("index");
    build_small(&base, &index, 2, "16");
    let mut n = node(
        d,
        &index,
        "slow",
        "[connections]\nheader_timeout_ms = 500\nbody_timeout_ms = 500\nidle_timeout_ms = 800\nkeepalive_ms = 0\n",
    );
    let addr = n.addr;
    let authority = addr.to_string();
    let give_up = Duration::from_secs(5);
    let bound = Duration::from_millis(2500);

    // HTTP/1.1 headers, a byte every 100 ms.
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!("POST /v1/search HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n");
    let closed = trickle(&mut s, head.as_bytes(), Duration::from_millis(100), give_up);
    assert!(
        closed.is_some_and(|t| t < bound),
        "HTTP/1.1 headers trickled: closed after {closed:?}"
    );

    // HTTP/1.1 headers whole, then 5 bytes of a 100-byte body and nothing.
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!("POST /v1/search HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"vec");
    s.write_all(head.as_bytes()).unwrap();
    let (answer, closed) = read_until_closed(&mut s, give_up);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that stopped: {answer}"
    );
    assert!(answer.contains("body_timeout_ms"), "{answer}");
    assert!(
        closed.is_some_and(|t| t < bound),
        "a body that stopped: closed after {closed:?}"
    );

    // HTTP/2: the preface and SETTINGS, then no request.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    let (got, closed) = read_until_closed(&mut s, give_up);
    let got = frames(&got);
    assert!(
        closed.is_some_and(|t| t < bound),
        "HTTP/2 without a request: closed after {closed:?}"
    );
    assert!(got.iter().any(|f| f.0 == GOAWAY), "no GOAWAY: {got:?}");
    // SETTINGS_MAX_CONCURRENT_STREAMS (id 3) = 128.
    let settings = got
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 & 1 == 0)
        .expect("the node's SETTINGS");
    let streams = settings
        .3
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(streams, Some(128), "{settings:?}");

    // HTTP/2: a request whose body stops after 5 bytes: a 408 on its
    // stream within the body bound.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s.write_all(&frame(HEADERS, 0x4, 1, &post_search_headers(&authority)))
        .unwrap();
    s.write_all(&frame(DATA, 0, 1, b"{\"vec")).unwrap();
    let t = Instant::now();
    let (got, _) = read_until_closed(&mut s, give_up);
    let got = frames(&got);
    let answered = got.iter().any(|f| f.0 == HEADERS && f.2 == 1);
    let body: Vec<u8> = got
        .iter()
        .filter(|f| f.0 == DATA && f.2 == 1)
        .flat_map(|f| f.3.clone())
        .collect();
    assert!(
        answered,
        "no answer on the stream within {:?}: {got:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&body).contains("body_timeout_ms"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // HTTP/2 through hyper: one request, then idle: closed after the idle
    // bound.
    let closed = shardann_server::rt::block_on("idle", move || async move {
        let mut sender = http::connect(addr, Duration::from_secs(5)).await.unwrap();
        let req = http::get(addr, None, "/healthz").unwrap();
        let (status, _) = http::collect(http::send(&mut sender, req).await.unwrap())
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200);
        let t = Instant::now();
        while !sender.is_closed() && t.elapsed() < Duration::from_secs(5) {
            let nap = Instant::now() + Duration::from_millis(50);
            shardann_server::rt::until(nap, futures::future::pending::<()>()).await;
        }
        sender.is_closed().then(|| t.elapsed())
    })
    .unwrap();
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(700) && t < bound),
        "an idle HTTP/2 connection: closed after {closed:?}"
    );

    let m = |reason: &str| {
        metric(
            addr,
            &format!("shardann_connections_closed_total{{node=\"slow\",reason=\"{reason}\"}}"),
        )
    };
    assert!(m("header_timeout") >= 2.0);
    assert!(m("body_timeout") >= 2.0);
    assert!(m("idle") >= 1.0);
    n.kill();
}

/// Issue 10, item 3: an HTTP/2 client that stops answering pings is cut
/// (a request in flight no longer keeps it open), and a node holds at most
/// `max_connections`: one more is refused at once with a 503, and taken
/// again once one closes. It used to accept 18,561 idle connections.
#[test]
fn issue_10_unanswered_pings_and_the_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, _, _] = generated(d, "sift-like", "1000", "10", "4", "l2", "10");
    let index = d.join("index");
    build_small(&base, &index, 2, "16");
    let mut n = node(
        d,
        &index,
        "capped",
        "[connections]\nmax_connections = 4\nkeepalive_ms = 300\nkeepalive_timeout_ms = 300\n",
    );
    let addr = n.addr;
    let give_up = Duration::from_secs(8);

    // A request whose body never comes, on a connection that acknowledges
    // nothing: pinged, then closed well before the 30 s body bound.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s.write_all(&frame(
        HEADERS,
        0x4,
        1,
        &post_search_headers(&addr.to_string()),
    ))
    .unwrap();
    let (got, closed) = read_until_closed(&mut s, give_up);
    let got = frames(&got);
    assert!(got.iter().any(|f| f.0 == PING), "no PING: {got:?}");
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(3)),
        "pings unanswered: closed after {closed:?}"
    );
    drop(s);

    // Four idle connections fill the node; a fifth is refused at once.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    let (answer, closed) = read_until_closed(&mut fifth, give_up);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        answer.contains(&format!("content-length: {}\r\n", body.len())),
        "{answer}"
    );
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["limit"], "connections.max_connections");
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(1)),
        "refused after {:?}, closed after {closed:?}",
        t.elapsed()
    );
    // One closes: the next connection is served.
    let mut held = held;
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let r = exchange(addr, Version::Http1, vec![Request::get("/healthz")]).unwrap();
    assert!(matches!(r.first(), Some(Ok((200, _)))), "{r:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(metric(addr, "shardann_connections_refused_total") >= 1.0);
    n.kill();
}

/// Issue 10, item 1: a local shard that misses the deadline is said apart
/// from a peer that did not answer. A client's answer that lacks a
/// timed-out local shard is a 503 naming it (it used to be a 200 with an
/// empty list); a peer's request gets it in `timed_out_shards`, and a dead
/// peer's shard stays in `missing_shards` alone.
#[test]
fn issue_10_a_local_timeout_is_said_apart_from_a_missing_peer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "6000", "10", "6", "l2", "10");
    let index = d.join("index");
    build_small(&base, &index, 2, "32");
    // Shard 1's only replica is a port nobody listens on.
    let dead = free_addrs(1)[0];
    let mut n = node(
        d,
        &index,
        "half",
        &format!("shards = [0]\n[[peers]]\nid = \"dead\"\naddress = \"{dead}\"\nshards = [1]\n"),
    );
    let vector = crate::query_rows(&query)[0].clone();
    let search = |extra: serde_json::Value| {
        let mut body = extra;
        body["vector"] = vector.clone().into();
        let r = shardann_server::rt::block_on("one", {
            let addr = n.addr;
            move || async move {
                let mut sender = http::connect(addr, Duration::from_secs(5)).await.unwrap();
                let req = http::post_json(addr, "/v1/search", &body).unwrap();
                let resp = http::send(&mut sender, req).await.unwrap();
                let retry_after = resp.headers().get("retry-after").is_some();
                let (status, bytes) = http::collect(resp).await.unwrap();
                (status.as_u16(), retry_after, bytes)
            }
        })
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.2).unwrap();
        (r.0, r.1, body)
    };

    // The peer is missing; the local shard answered.
    let (status, _, body) = search(serde_json::json!({"k": 10}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing_shards"], serde_json::json!([1]), "{body}");
    assert!(body.get("timed_out_shards").is_none(), "{body}");
    assert_eq!(body["hits"].as_array().unwrap().len(), 10);

    // The local shard cannot finish a list of 2,000 in 1 ms: a 503 that
    // names the shard and the deadline.
    let (status, retry_after, body) =
        search(serde_json::json!({"k": 10, "list": 2000, "timeout_ms": 1}));
    assert_eq!(status, 503, "{body}");
    assert!(retry_after, "a 503 without Retry-After: {body}");
    assert_eq!(body["limit"], "timeout_ms", "{body}");
    assert_eq!(body["timed_out_shards"], serde_json::json!([0]), "{body}");

    // A peer's request for the local shard: the answer says it timed out.
    let (status, _, body) =
        search(serde_json::json!({"k": 10, "list": 2000, "timeout_ms": 1, "shards": [0]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing_shards"], serde_json::json!([0]), "{body}");
    assert_eq!(body["timed_out_shards"], serde_json::json!([0]), "{body}");
    assert_eq!(body["stats"]["shards_timed_out"], 1, "{body}");

    assert!(metric(n.addr, "shardann_shard_timeouts_total") >= 2.0);
    n.kill();
}
