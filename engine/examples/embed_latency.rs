//! Query embedding latency at batch 1: each line's `text` of a JSON Lines
//! file embedded alone, after a warm-up, on a rayon pool of N threads;
//! prints p50, p99 and the mean.
//!
//!     cargo run --release -p shardann-engine --example embed_latency -- \
//!         models/all-MiniLM-L6-v2 queries.jsonl [threads]

use std::time::Instant;

use shardann_engine::embed::Encoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, input) = match (args.get(1), args.get(2)) {
        (Some(m), Some(i)) => (m, i),
        _ => return Err("usage: embed_latency MODEL_DIR QUERIES.jsonl [threads]".into()),
    };
    let threads: usize = args.get(3).map_or(Ok(1), |t| t.parse())?;
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
    pool.install(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let enc = Encoder::open(std::path::Path::new(model), None)?;
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
            "{} queries, batch 1, {threads} thread(s): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
            us.len(),
            at(0.50) as f64 / 1000.0,
            at(0.99) as f64 / 1000.0,
            us.iter().sum::<u128>() as f64 / us.len() as f64 / 1000.0
        );
        Ok(())
    })
    .map_err(|e| e as Box<dyn std::error::Error>)
}
