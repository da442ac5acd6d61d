//! `shardann churn`: FreshDiskANN's churn experiment against a serving node.
//!
//! ```text
//!  node serving an index built from --base (gen --docs: document i = row i)
//!    cycle × N:  delete F of the live points ─► insert F·n new points ─► merge each shard ─► idle
//!                 (POST /v1/documents/delete)   (POST /v1/documents,      (POST /v1/shards/S/merge)
//!                                                same clusters, new stream)
//!                ─► recall@k of the live set (ground truth recomputed by brute force) and QPS
//!    meanwhile: one search every 1/rate s on a kept-alive HTTP/1.1 connection, its latency
//!               filed under the phase it started in (writes, merge, idle)
//!  --compare-build: the final live set built from scratch in process, for the merges' ratio
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use shardann_engine::data::{VectorFile, Vectors};
use shardann_engine::groundtruth::brute_force;
use shardann_engine::index::{build_index, BuildParams};
use shardann_engine::metric::Metric;
use shardann_engine::pq::PqParams;
use shardann_engine::progress::NoProgress;
use shardann_engine::synth::{generate_payloads, generate_u8, Stream};
use shardann_engine::vamana::VamanaParams;
use shardann_engine::ElemType;
use shardann_server::client::{exchange, parse_url, search_many, HttpParams, Request, Version};

use crate::cli::ChurnArgs;

/// What the background searcher's query was running beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Writes = 0,
    Merge = 1,
    Idle = 2,
    /// The recall run: its own load; not counted.
    Measure = 3,
}

/// Latency percentiles of the searches started in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub searches: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One cycle's numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cycle {
    pub cycle: usize,
    pub live: usize,
    pub deleted: usize,
    pub deletes_per_s: f64,
    pub inserted: usize,
    pub inserts_per_s: f64,
    /// Wall time of the merges of every shard, one after the other.
    pub merge_seconds: f64,
    pub recall: f64,
    pub qps: f64,
    pub during_writes: Latency,
    pub during_merge: Latency,
    pub idle: Latency,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    pub server: String,
    pub initial_points: usize,
    pub fraction: f64,
    pub k: usize,
    pub list: usize,
    pub search_rate: f64,
    pub cycles: Vec<Cycle>,
    /// `--compare-build`: a build of the final live set from scratch.
    pub build_seconds: Option<f64>,
}

/// A kept-alive HTTP/1.1 connection for the background searcher: one
/// request at a time, so a search's latency is the node's and the
/// network's, not a connection's setup.
struct H1 {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl H1 {
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<u16> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let r = self.exchange(path, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange(&mut self, path: &str, body: &str) -> std::io::Result<u16> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let conn = self.conn.as_mut().ok_or_else(|| bad("not connected"))?;
        write!(
            conn.get_mut(),
            "POST {path} HTTP/1.1\r\nhost: shardann\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut len = None;
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or_else(|| bad("no content-length"))?;
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)?;
        Ok(status)
    }
}

/// One request over HTTP/2; the answer as JSON, an error naming the status.
fn call(addr: SocketAddr, req: Request) -> anyhow::Result<Value> {
    let (status, body) = exchange(addr, Version::Http2, vec![req])?
        .pop()
        .context("no answer")??;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        bail!("status {status}: {}", v["error"].as_str().unwrap_or("?"));
    }
    Ok(v)
}

/// Sends `bodies` to `path` from `threads` threads; returns the wall time.
fn send_all(
    addr: SocketAddr,
    path: &str,
    bodies: Vec<String>,
    threads: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let queue = Arc::new(Mutex::new(bodies));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (queue, path) = (Arc::clone(&queue), path.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let Some(body) = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop()
                    else {
                        return Ok(());
                    };
                    call(addr, Request::post(&path, body))
                        .with_context(|| format!("POST {path}"))?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn percentiles(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * p).round() as usize]
        }
    };
    Latency {
        searches: ms.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

pub fn churn(a: &ChurnArgs, out: &mut dyn Write) -> anyhow::Result<ChurnReport> {
    let addr = parse_url(&a.server)?;
    let info = call(addr, Request::get("/v1/shards")).context("GET /v1/shards")?;
    let n0 = info["num_points"]
        .as_u64()
        .context("/v1/shards: no num_points")? as usize;
    let dim = info["dim"].as_u64().context("/v1/shards: no dim")? as usize;
    let shards: Vec<u64> = info["shards"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["id"].as_u64()).collect())
        .unwrap_or_default();
    let index = info["shards"][0]["index"].clone();
    let base = VectorFile::open(&a.base)?;
    if base.elem() != ElemType::U8 || base.dim() != dim || base.len() != n0 {
        bail!(
            "{} holds {} × {}-d {}; the node serves {n0} × {dim}-d points: give the sift-like \
             base (u8) the index was built from, on a node that has taken no writes",
            a.base.display(),
            base.len(),
            base.dim(),
            base.elem()
        );
    }
    let queries = VectorFile::open(&a.queries)?;
    let qv = queries.vectors::<u8>()?;
    let qf: Arc<Vec<Vec<f64>>> = Arc::new(
        qv.iter()
            .map(|r| r.iter().map(|&x| f64::from(x)).collect())
            .collect(),
    );
    // The live set, kept beside the node's: ids and vectors, in one order.
    let mut ids: Vec<u64> = (0..n0 as u64).collect();
    let mut vecs: Vec<u8> = base.vectors::<u8>()?.as_slice().to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut next_id = n0 as u64;

    // The background searcher.
    let phase = Arc::new(AtomicU8::new(Phase::Idle as u8));
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(u8, f64)>>> = Arc::default();
    let searcher = {
        let (phase, stop, samples, qf) = (phase.clone(), stop.clone(), samples.clone(), qf.clone());
        let (k, list, rate) = (a.k, a.list, a.search_rate);
        std::thread::spawn(move || {
            let mut h = H1 { addr, conn: None };
            let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
            let mut next = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next += period;
                let p = phase.load(Ordering::Relaxed);
                let body = json!({"vector": &qf[i % qf.len()], "k": k, "list": list}).to_string();
                i += 1;
                let t = Instant::now();
                if let Ok(200) = h.post("/v1/search", &body) {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if let Ok(mut s) = samples.lock() {
                        s.push((p, ms));
                    }
                }
            }
        })
    };
    let set_phase = |p: Phase| phase.store(p as u8, Ordering::Relaxed);
    let take = |p: Phase, from: usize, s: &[(u8, f64)]| {
        percentiles(
            s[from..]
                .iter()
                .filter(|x| x.0 == p as u8)
                .map(|x| x.1)
                .collect(),
        )
    };

    writeln!(
        out,
        "churn: {n0} points of {}, {} cycle(s) of {:.1} % deletes + {:.1} % inserts, merge each; \
         searches at {} /s (k={}, L={}) throughout",
        a.server,
        a.cycles,
        a.fraction * 100.0,
        a.fraction * 100.0,
        a.search_rate,
        a.k,
        a.list
    )?;
    writeln!(
        out,
        "{:>5} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>15} {:>15} {:>15}",
        "cycle",
        "live",
        "del/s",
        "ins/s",
        "merge s",
        "recall",
        "QPS",
        "",
        "p50/p99 writes",
        "p50/p99 merge",
        "p50/p99 idle"
    )?;
    let mut report = ChurnReport {
        server: a.server.clone(),
        initial_points: n0,
        fraction: a.fraction,
        k: a.k,
        list: a.list,
        search_rate: a.search_rate,
        ..ChurnReport::default()
    };
    for cycle in 0..a.cycles {
        let from = samples.lock().map(|s| s.len()).unwrap_or(0);
        set_phase(Phase::Writes);
        // Deletes: a fraction of the live points, at random.
        let nd = ((ids.len() as f64) * a.fraction).round() as usize;
        let mut gone = Vec::with_capacity(nd);
        for _ in 0..nd {
            let at = rng.random_range(0..ids.len());
            let id = ids.swap_remove(at);
            let last = ids.len();
            // Vectors: the same swap_remove.
            if at != last {
                let (head, tail) = vecs.split_at_mut(last * dim);
                head[at * dim..(at + 1) * dim].copy_from_slice(&tail[..dim]);
            }
            vecs.truncate(last * dim);
            gone.push(id);
        }
        let bodies = gone
            .chunks(1000)
            .map(|c| json!({ "ids": c }).to_string())
            .collect();
        let del_s = send_all(addr, "/v1/documents/delete", bodies, 2)?;
        // Inserts: new points of the same clusters (a stream of the seed
        // the base was generated with that holds neither it nor queries).
        let ni = ((n0 as f64) * a.fraction).round() as usize;
        let new = generate_u8(ni, a.data_seed, Stream::More(cycle as u32));
        let payloads = generate_payloads(ni, a.data_seed ^ (0x5eed + cycle as u64));
        let mut docs = Vec::with_capacity(ni);
        for (j, (v, p)) in new.chunks_exact(dim).zip(&payloads).enumerate() {
            let id = next_id + j as u64;
            let mut d: Value = serde_json::from_str(&p.json_line(id))?;
            d["vector"] = json!(v);
            docs.push(d);
            ids.push(id);
        }
        vecs.extend_from_slice(&new);
        next_id += ni as u64;
        let bodies = docs
            .chunks(500)
            .map(|c| json!({ "documents": c }).to_string())
            .collect();
        let ins_s = send_all(addr, "/v1/documents", bodies, 4)?;
        // Merges, one shard after the other.
        set_phase(Phase::Merge);
        let t = Instant::now();
        for s in &shards {
            let req = Request::post(&format!("/v1/shards/{s}/merge"), "{}")
                .with_timeout(Duration::from_secs(6 * 3600));
            call(addr, req).with_context(|| format!("merging shard {s}"))?;
        }
        let merge_s = t.elapsed().as_secs_f64();
        set_phase(Phase::Idle);
        std::thread::sleep(Duration::from_secs_f64(a.idle_seconds));
        set_phase(Phase::Measure);
        // Recall of the live set at the list size, against brute force.
        let gt = brute_force(Vectors::new(&vecs, dim), qv, Metric::L2, a.k, &NoProgress);
        let params = HttpParams {
            k: a.k,
            list: Some(a.list),
            beam: Some(a.beam),
            probe_shards: None,
            timeout_ms: None,
            fusion: None,
            candidates: None,
            embed: None,
        };
        let t = Instant::now();
        let outcomes = search_many(addr, Arc::clone(&qf), params, 8, 1)?;
        let qps = outcomes.len() as f64 / t.elapsed().as_secs_f64();
        let mut found = 0usize;
        for (q, o) in outcomes.iter().enumerate() {
            let Ok(r) = &o.result else { continue };
            let truth: Vec<u64> = gt.row(q)[..a.k]
                .iter()
                .map(|&row| ids[row as usize])
                .collect();
            found += r
                .hits
                .iter()
                .filter(
                    |h| matches!(&h.id, shardann_engine::docs::UserId::Int(i) if truth.contains(i)),
                )
                .count();
        }
        let recall = found as f64 / (outcomes.len() * a.k).max(1) as f64;
        let s = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let c = Cycle {
            cycle: cycle + 1,
            live: ids.len(),
            deleted: nd,
            deletes_per_s: nd as f64 / del_s,
            inserted: ni,
            inserts_per_s: ni as f64 / ins_s,
            merge_seconds: merge_s,
            recall,
            qps,
            during_writes: take(Phase::Writes, from, &s),
            during_merge: take(Phase::Merge, from, &s),
            idle: take(Phase::Idle, from, &s),
        };
        let lat = |l: &Latency| format!("{:.1}/{:.1} ms", l.p50_ms, l.p99_ms);
        writeln!(
            out,
            "{:>5} {:>9} {:>9.0} {:>9.0} {:>8.1} {:>8.4} {:>8.0} {:>7} {:>15} {:>15} {:>15}",
            c.cycle,
            c.live,
            c.deletes_per_s,
            c.inserts_per_s,
            c.merge_seconds,
            c.recall,
            c.qps,
            "",
            lat(&c.during_writes),
            lat(&c.during_merge),
            lat(&c.idle)
        )?;
        report.cycles.push(c);
    }
    stop.store(true, Ordering::Relaxed);
    searcher
        .join()
        .map_err(|_| anyhow::anyhow!("the searcher panicked"))?;
    if a.compare_build {
        let num = |k: &str| index[k].as_u64().map(|x| x as usize);
        let params = BuildParams {
            metric: Metric::L2,
            vamana: VamanaParams {
                max_degree: num("max_degree").unwrap_or(64),
                build_list: num("build_list").unwrap_or(100),
                alpha: index["alpha"].as_f64().unwrap_or(1.2) as f32,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: num("pq_bytes").unwrap_or(32),
                ..PqParams::default()
            },
            order: shardann_engine::layout::NodeOrder::Locality,
        };
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        build_index(Vectors::new(&vecs, dim), &params, dir.path(), &NoProgress)?;
        let b = t.elapsed().as_secs_f64();
        writeln!(
            out,
            "a build of the final {} live points from scratch: {b:.1} s; merges took {:.2}–{:.2}× of it",
            ids.len(),
            report.cycles.iter().map(|c| c.merge_seconds).fold(f64::INFINITY, f64::min) / b,
            report.cycles.iter().map(|c| c.merge_seconds).fold(0.0, f64::max) / b,
        )?;
        report.build_seconds = Some(b);
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
