//! Measures `docs.bin` block sizes on a real corpus: bytes on disk and the
//! cost of fetching the k payloads of a search answer, with the blocks in
//! the page cache and with them dropped from it before every fetch.
//!
//! ```text
//! cargo run --release -p shardann-engine --example doc_blocks -- CORPUS.jsonl [FETCHES]
//! ```
//!
//! Each line's JSON object is stored as a document payload, as `build
//! --docs` stores it. A fetch is `get_many` of 10 documents chosen uniformly,
//! the work of one k = 10 answer with `include`.

use std::os::fd::AsRawFd;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use shardann_engine::docs::{DocStore, DocStoreWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let corpus = args
        .get(1)
        .ok_or("usage: doc_blocks CORPUS.jsonl [FETCHES]")?;
    let fetches: usize = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let text = std::fs::read_to_string(corpus)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let raw: usize = lines.iter().map(|l| l.len()).sum();
    println!(
        "{} documents, {} bytes of JSON ({:.0} B mean); {fetches} fetches of 10 documents",
        lines.len(),
        raw,
        raw as f64 / lines.len() as f64
    );
    println!("| block | file bytes | ratio | blocks | warm µs/fetch | cold µs/fetch | cold KiB read/fetch |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir()?;
    for block in [4usize << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10] {
        let path = dir.path().join(format!("docs-{block}.bin"));
        let mut w = DocStoreWriter::create(&path, block)?;
        for l in &lines {
            w.add(l.as_bytes())?;
        }
        let bytes = w.finish()?;
        let store = DocStore::open(&path)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let picks: Vec<Vec<u32>> = (0..fetches)
            .map(|_| {
                (0..10)
                    .map(|_| rng.random_range(0..lines.len() as u32))
                    .collect()
            })
            .collect();
        // Warm: every block in the page cache.
        for p in &picks {
            store.get_many(p)?;
        }
        let t = Instant::now();
        for p in &picks {
            std::hint::black_box(store.get_many(p)?);
        }
        let warm = t.elapsed().as_secs_f64() * 1e6 / fetches as f64;
        // Cold: the file dropped from the page cache before each fetch, so
        // each block is a device read.
        let file = std::fs::File::open(&path)?;
        let mut cold = 0.0;
        let cold_n = fetches.min(500);
        let mut blocks_read = 0usize;
        for p in picks.iter().take(cold_n) {
            drop_cache(&file);
            let t = Instant::now();
            std::hint::black_box(store.get_many(p)?);
            cold += t.elapsed().as_secs_f64();
            let mut ids = p.clone();
            ids.sort_unstable();
            ids.dedup();
            blocks_read += ids.len();
        }
        let per_block = bytes as f64 / store.num_blocks() as f64;
        println!(
            "| {} KiB | {} | {:.2} | {} | {:.1} | {:.1} | ≤ {:.1} |",
            block >> 10,
            bytes,
            raw as f64 / bytes as f64,
            store.num_blocks(),
            warm,
            cold * 1e6 / cold_n as f64,
            per_block * blocks_read as f64 / cold_n as f64 / 1024.0
        );
    }
    Ok(())
}

/// Asks the kernel to drop `file`'s cached pages (the one unsafe call of
/// this measurement; the library itself reads blocks with safe `pread`).
#[allow(unsafe_code)]
fn drop_cache(file: &std::fs::File) {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor
    // is open for the duration of the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}
