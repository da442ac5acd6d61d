//! Embedding speed of a model folder on the `text` of each line of a JSON
//! Lines file, on a rayon pool of N threads, with the weights laid out for
//! a workload (`queries` or `batches`, see `embed::Workload`):
//!
//! * batch 1 (the default): each text alone, after 20 warm-up texts;
//!   prints p50, p99 and the mean latency;
//! * batch B > 1: every text, B at a time in order of length
//!   (`Encoder::embed_batched`); prints texts per second.
//!
//! Run: `cargo run --release -p shardann-engine --example embed_latency --
//! models/all-MiniLM-L6-v2 queries.jsonl [threads] [queries|batches] [batch]`

use std::time::Instant;

use shardann_engine::embed::{Encoder, Workload};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().collect();
    let (model, input) =
        match (args.get(1), args.get(2)) {
            (Some(m), Some(i)) => (m, i),
            _ => return Err(
                "usage: embed_latency MODEL_DIR TEXTS.jsonl [threads] [queries|batches] [batch]"
                    .into(),
            ),
        };
    let threads: usize = args.get(3).map_or(Ok(1), |t| t.parse())?;
    let workload = match args.get(4).map(String::as_str) {
        None | Some("queries") => Workload::Queries,
        Some("batches") => Workload::Batches,
        Some(other) => return Err(format!("{other:?}: expected queries or batches").into()),
    };
    let batch: usize = args.get(5).map_or(Ok(1), |b| b.parse())?;
    let texts: Vec<String> = std::fs::read_to_string(input)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"].as_str().unwrap_or_default().to_string())
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| -> Result<(), AnyError> {
        let enc = Encoder::open_for(std::path::Path::new(model), None, workload)?;
        if batch > 1 {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let s = Instant::now();
            enc.embed_batched(&refs, batch)?;
            let secs = s.elapsed().as_secs_f64();
            println!(
                "{} texts, batch {batch}, {threads} thread(s), {workload:?}: {secs:.1} s, {:.1} texts/s",
                texts.len(),
                texts.len() as f64 / secs
            );
            return Ok(());
        }
        for t in texts.iter().take(20) {
            enc.embed_texts(&[t])?;
        }
        let mut us: Vec<u128> = Vec::with_capacity(texts.len());
        for t in &texts {
            let s = Instant::now();
            enc.embed_texts(&[t])?;
            us.push(s.elapsed().as_micros());
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
        println!(
            "{} queries, batch 1, {threads} thread(s), {workload:?}: p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
            us.len(),
            at(0.50) as f64 / 1000.0,
            at(0.99) as f64 / 1000.0,
            us.iter().sum::<u128>() as f64 / us.len() as f64 / 1000.0
        );
        Ok(())
    })
}
