//! `demo`: gen → groundtruth → build → bench on a sift-like set, the whole
//! pipeline on a laptop-sized example, reusing what an earlier run left.

use std::io::Write;
use std::path::Path;

use shardann_engine::data::VectorFile;
use shardann_engine::index::OpenOptions;
use shardann_engine::shard;

use crate::bench::bench;
use crate::cli::{BenchArgs, DemoArgs, GenArgs, GraphArgs, GroundtruthArgs};
use crate::util::human_bytes;

fn exists(p: &Path) -> bool {
    p.metadata().map(|m| m.len() > 0).unwrap_or(false)
}

/// gen → groundtruth → build → bench on a sift-like set, reusing what exists.
pub fn demo(a: &DemoArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let dir = a.dir.join(format!("sift-like-{}-seed{}", a.n, a.seed));
    let base = dir.join("base.u8bin");
    let query = dir.join("query.u8bin");
    let gt = dir.join("gt100.bin");
    let index = dir.join("index");
    let data_ok = VectorFile::open(&base).is_ok_and(|f| f.len() == a.n)
        && VectorFile::open(&query).is_ok_and(|f| f.len() == a.queries);
    if !data_ok {
        writeln!(
            out,
            "[1/4] generating {} sift-like points and {} queries (seed {})",
            a.n, a.queries, a.seed
        )?;
        crate::data::gen(
            &GenArgs {
                preset: shardann_engine::synth::Preset::SiftLike,
                n: a.n,
                queries: a.queries,
                seed: a.seed,
                out: dir.clone(),
                threads: a.threads,
            },
            quiet,
            out,
        )?;
        let _ = std::fs::remove_file(&gt);
        let _ = std::fs::remove_dir_all(&index);
    } else {
        writeln!(out, "[1/4] reusing data in {}", dir.display())?;
    }
    if !exists(&gt) {
        writeln!(out, "[2/4] computing exact ground truth")?;
        crate::data::groundtruth(
            &GroundtruthArgs {
                base: base.clone(),
                queries: query.clone(),
                k: 100,
                metric: shardann_engine::Metric::L2,
                out: gt.clone(),
                threads: a.threads,
                filter: None,
                filters: None,
                index: None,
            },
            quiet,
            out,
        )?;
    } else {
        writeln!(out, "[2/4] reusing ground truth {}", gt.display())?;
    }
    if shard::open(&index, OpenOptions::buffered()).is_err() {
        writeln!(
            out,
            "[3/4] building the index (R=64, L=100, alpha=1.2, 32-byte PQ)"
        )?;
        let graph = GraphArgs {
            max_degree: 64,
            build_list: 100,
            alpha: 1.2,
            pq_bytes: Some(32),
            pq_sample: 100_000,
            seed: 1,
        };
        // A leftover that does not open (an interrupted build, an index from
        // an older layout) is rebuilt from scratch.
        let _ = std::fs::remove_dir_all(&index);
        let (r, _, secs) = crate::build::run_build(
            &base,
            shardann_engine::Metric::L2,
            &graph,
            &index,
            a.threads,
            quiet,
            None,
        )?;
        writeln!(
            out,
            "built in {secs:.1}s: {} on disk, {} PQ in RAM, mean degree {:.1}",
            human_bytes(r.index_bytes),
            human_bytes(r.pq_file_bytes),
            r.mean_degree
        )?;
    } else {
        writeln!(out, "[3/4] reusing index {}", index.display())?;
    }
    writeln!(out, "[4/4] benchmarking (O_DIRECT reads, beam 4)")?;
    let report = bench(
        &BenchArgs {
            index: Some(index),
            server: None,
            batch: 1,
            queries: query,
            gt,
            k: 10,
            list: a.list.clone(),
            beam: 4,
            threads: a.threads,
            concurrency: 0,
            probe_shards: 0,
            json: Some(dir.join("bench.json")),
            read: crate::cli::ReadArgs::default(),
            filter: None,
            filters: None,
            flat_max: None,
        },
        out,
    )?;
    if let Some(best) = report.runs.iter().find(|r| r.recall_at_k >= 0.95) {
        writeln!(
            out,
            "recall@10 ≥ 0.95 first reached at L={}: recall {:.4}, {:.0} QPS",
            best.list, best.recall_at_k, best.qps
        )?;
    } else {
        writeln!(out, "recall@10 stayed below 0.95 at every list size tried")?;
    }
    Ok(())
}
