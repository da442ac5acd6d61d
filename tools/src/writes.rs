//! `shardann upsert` and `shardann delete`: bulk writes to a serving node
//! over its HTTP API (`POST /v1/documents`, `POST /v1/documents/delete`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use shardann_engine::docs::{DocReader, VectorSource};
use shardann_engine::progress::Progress;
use shardann_engine::ElemType;
use shardann_server::client::{exchange, parse_url, Request, Version};

use crate::cli::{DeleteArgs, MergeArgs, UpsertArgs};
use crate::progress::Bars;

fn token(given: &Option<String>) -> Option<String> {
    given
        .clone()
        .or_else(|| std::env::var("SHARDANN_WRITE_TOKEN").ok())
}

/// One request; the node's answer, or its error message with the status.
fn send(addr: SocketAddr, req: Request) -> anyhow::Result<Value> {
    let answer = exchange(addr, Version::Http2, vec![req])?
        .pop()
        .context("no answer")?;
    let (status, body) = answer.with_context(|| format!("sending to {addr}"))?;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&body).into_owned() }));
    if status != 200 {
        bail!(
            "the node answered {status}: {}",
            v["error"].as_str().unwrap_or("(no message)")
        );
    }
    Ok(v)
}

/// A batch of documents read from the file: its first and last line.
struct Batch {
    first: usize,
    last: usize,
    docs: Vec<Value>,
}

pub fn upsert(a: &UpsertArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let addr = parse_url(&a.server)?;
    let token = token(&a.token);
    let open = || File::open(&a.docs).with_context(|| format!("opening {}", a.docs.display()));
    let total = BufReader::new(open()?)
        .lines()
        .enumerate()
        .filter(|(i, l)| i + 1 >= a.from_line && l.as_ref().is_ok_and(|l| !l.trim().is_empty()))
        .count() as u64;
    // Documents are checked as `build --docs` checks them (JSON, ids, one
    // vector width) before anything is sent; the node checks the rest.
    let mut reader = DocReader::new(
        BufReader::new(open()?),
        VectorSource::Inline {
            elem: ElemType::F32,
            dim: None,
        },
    );
    let bars = Bars::with_rate(quiet, "docs");
    bars.stage("upsert", total);
    let (tx, rx) = mpsc::sync_channel::<Batch>(a.concurrency * 2);
    let rx = Arc::new(Mutex::new(rx));
    let failed: Arc<Mutex<Option<(usize, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let written = std::thread::scope(|scope| -> anyhow::Result<u64> {
        let workers: Vec<_> = (0..a.concurrency)
            .map(|_| {
                let (rx, failed, stop, token, bars) = (
                    Arc::clone(&rx),
                    Arc::clone(&failed),
                    Arc::clone(&stop),
                    token.clone(),
                    &bars,
                );
                scope.spawn(move || {
                    let mut written = 0u64;
                    loop {
                        let Ok(batch) = rx
                            .lock()
                            .map_err(|_| ())
                            .and_then(|r| r.recv().map_err(|_| ()))
                        else {
                            return written;
                        };
                        if stop.load(Ordering::Relaxed) {
                            continue;
                        }
                        let n = batch.docs.len() as u64;
                        let body = json!({ "documents": batch.docs }).to_string();
                        let req =
                            Request::post("/v1/documents", body).with_bearer(token.as_deref());
                        match send(addr, req) {
                            Ok(_) => {
                                written += n;
                                bars.inc(n);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                                // The earliest failed batch is where to resume.
                                if f.as_ref().is_none_or(|(first, _)| batch.first < *first) {
                                    *f = Some((
                                        batch.first,
                                        format!("lines {}..={}: {e:#}", batch.first, batch.last),
                                    ));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut batch = Batch {
            first: 0,
            last: 0,
            docs: Vec::with_capacity(a.batch),
        };
        let mut read_error = None;
        while !stop.load(Ordering::Relaxed) {
            let doc = match reader.next_document() {
                Err(e) => {
                    read_error = Some(anyhow::Error::from(e).context(a.docs.display().to_string()));
                    break;
                }
                Ok(Err(e)) => {
                    read_error = Some(anyhow::anyhow!("{}: {e}", a.docs.display()));
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(d))) => d,
            };
            if doc.line < a.from_line {
                continue;
            }
            let mut obj = doc.payload;
            obj.insert("id".into(), doc.id.to_json());
            if let Some(v) = doc.vector {
                obj.insert("vector".into(), json!(v));
            }
            if batch.docs.is_empty() {
                batch.first = doc.line;
            }
            batch.last = doc.line;
            batch.docs.push(Value::Object(obj));
            if batch.docs.len() == a.batch {
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        first: 0,
                        last: 0,
                        docs: Vec::with_capacity(a.batch),
                    },
                );
                if tx.send(full).is_err() {
                    break;
                }
            }
        }
        if !batch.docs.is_empty() && !stop.load(Ordering::Relaxed) && read_error.is_none() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let mut written = 0;
        for w in workers {
            written += w.join().unwrap_or(0);
        }
        if let Some(e) = read_error {
            return Err(e.context(format!(
                "stopped reading; {written} documents before it were written"
            )));
        }
        Ok(written)
    })?;
    bars.finish_stage();
    if let Some((first, msg)) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!(
            "{msg}\n{written} documents were written; after fixing the input, resume with --from-line {first}"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(
        out,
        "upserted {written} documents in {secs:.2} s ({:.0} docs/s) to {addr}",
        written as f64 / secs.max(1e-9)
    )?;
    Ok(())
}

pub fn delete(a: &DeleteArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let addr = parse_url(&a.server)?;
    let token = token(&a.token);
    if let Some(filter) = &a.filter {
        let filter: Value = serde_json::from_str(filter).context("--filter is not JSON")?;
        let v = send(
            addr,
            Request::post(
                "/v1/documents/delete",
                json!({ "filter": filter }).to_string(),
            )
            .with_bearer(token.as_deref()),
        )?;
        writeln!(
            out,
            "deleted {} documents matching the filter",
            v["deleted"]
        )?;
        return Ok(());
    }
    let ids: Vec<Value> = match &a.ids_file {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut ids = Vec::new();
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                ids.push(match serde_json::from_str::<Value>(line) {
                    Ok(v @ (Value::String(_) | Value::Number(_))) => v,
                    _ => Value::from(line),
                });
            }
            ids
        }
        None => a
            .ids
            .iter()
            .map(|s| match s.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::from(s.as_str()),
            })
            .collect(),
    };
    if ids.is_empty() {
        bail!("nothing to delete: give --id, --ids-file or --filter");
    }
    let bars = Bars::with_rate(quiet, "ids");
    bars.stage("delete", ids.len() as u64);
    let (mut deleted, mut not_found) = (0u64, 0u64);
    for chunk in ids.chunks(a.batch) {
        let v = send(
            addr,
            Request::post("/v1/documents/delete", json!({ "ids": chunk }).to_string())
                .with_bearer(token.as_deref()),
        )
        .with_context(|| format!("after {deleted} deletes"))?;
        deleted += v["deleted"].as_u64().unwrap_or(0);
        not_found += v["not_found"].as_array().map_or(0, |a| a.len() as u64);
        bars.inc(chunk.len() as u64);
    }
    bars.finish_stage();
    writeln!(
        out,
        "deleted {deleted} documents; {not_found} ids named no document"
    )?;
    Ok(())
}

/// `shardann merge`: asks the node to merge each shard, one at a time.
pub fn merge(a: &MergeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let addr = parse_url(&a.server)?;
    let token = token(&a.token);
    let shards: Vec<u32> = if a.shards.is_empty() {
        let health = send(addr, Request::get("/healthz"))?;
        health["writes"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default()
    } else {
        a.shards.clone()
    };
    if shards.is_empty() {
        writeln!(out, "no shard of {} has writes to merge", a.server)?;
        return Ok(());
    }
    for s in shards {
        // A merge of a million points takes minutes.
        let req = Request::post(&format!("/v1/shards/{s}/merge"), b"{}".to_vec())
            .with_bearer(token.as_deref())
            .with_timeout(std::time::Duration::from_secs(6 * 3600));
        let v = send(addr, req).with_context(|| format!("merging shard {s}"))?;
        if a.json {
            writeln!(out, "{v}")?;
            continue;
        }
        let m = &v["merge"];
        if m.is_null() {
            writeln!(
                out,
                "shard {s}: nothing to merge (version {})",
                v["version"]
            )?;
            continue;
        }
        writeln!(
            out,
            "shard {s}: version {} from {} in {:.1} s: {} write record(s), {} inserted, {} removed, \
             {} points (was {}); log cut by {} bytes",
            m["version"],
            m["parent"],
            m["seconds"].as_f64().unwrap_or(0.0),
            m["records"],
            m["inserted"],
            m["removed"],
            m["points_after"],
            m["points_before"],
            v["log_bytes_cut"]
        )?;
    }
    Ok(())
}
