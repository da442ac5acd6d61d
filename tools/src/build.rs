//! `build`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use shardann_engine::data::VectorFile;
use shardann_engine::index::{BuildParams, BuildReport};
use shardann_engine::pq::PqParams;
use shardann_engine::shard::build_version;
use shardann_engine::vamana::VamanaParams;
use shardann_engine::Metric;

use crate::cli::{BuildArgs, GraphArgs};
use crate::progress::Bars;
use crate::util::{human_bytes, peak_rss_bytes, with_threads};
use crate::with_elem;

impl GraphArgs {
    pub fn to_params(&self, metric: Metric) -> BuildParams {
        BuildParams {
            metric,
            vamana: VamanaParams {
                max_degree: self.max_degree,
                build_list: self.build_list,
                alpha: self.alpha,
                seed: self.seed,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: self.pq_bytes,
                train_sample: self.pq_sample,
                seed: self.seed,
                ..PqParams::default()
            },
        }
    }
}

/// Builds the next version of the index in `out_dir` (version 1 in a new
/// directory) and returns its report, version and wall time.
pub fn run_build(
    base_path: &std::path::Path,
    metric: Metric,
    graph: &GraphArgs,
    out_dir: &std::path::Path,
    threads: usize,
    quiet: bool,
) -> anyhow::Result<(BuildReport, u64, f64)> {
    let base = VectorFile::open(base_path)?;
    let params = graph.to_params(metric);
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let (report, version) = with_threads(threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(build_version(base.vectors::<T>()?, &params, out_dir, 0, &bars, |_| Ok(()))?)
        })
    })?
    .with_context(|| {
        format!(
            "building an index of {} into {}",
            base_path.display(),
            out_dir.display()
        )
    })?;
    Ok((report, version, t.elapsed().as_secs_f64()))
}

pub fn build(a: &BuildArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.shards > 1 {
        return build_shards(a, quiet, out);
    }
    let (r, version, secs) = run_build(&a.base, a.metric, &a.graph, &a.out, a.threads, quiet)?;
    writeln!(
        out,
        "built {} version {version} ({} points, {}-d {}, {}): R={} L={} alpha={} pq-bytes={}",
        a.out.display(),
        r.num_points,
        r.dim,
        r.elem,
        r.metric,
        r.max_degree,
        r.build_list,
        r.alpha,
        r.pq_bytes
    )?;
    writeln!(
        out,
        "wall time {secs:.1}s (PQ {:.1}s, graph {:.1}s, write {:.1}s); peak memory {}; index {} on disk + {} PQ in RAM; mean degree {:.1}",
        r.pq_seconds,
        r.graph_seconds,
        r.write_seconds,
        peak_rss_bytes().map_or("unknown".into(), human_bytes),
        human_bytes(r.index_bytes),
        human_bytes(r.pq_file_bytes),
        r.mean_degree
    )?;
    Ok(())
}

/// `build --shards N`: partition, then one index per shard.
fn build_shards(a: &BuildArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let base = VectorFile::open(&a.base)?;
    let params = a.graph.to_params(a.metric);
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let manifest = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(shardann_engine::cluster::build_sharded(
                base.vectors::<T>()?, &params, a.shards, a.partition, &a.out, &bars,
            )?)
        })
    })?
    .with_context(|| {
        format!(
            "building {} shards of {} into {}",
            a.shards,
            a.base.display(),
            a.out.display()
        )
    })?;
    let sizes: Vec<String> = manifest
        .shards
        .iter()
        .map(|s| s.num_points.to_string())
        .collect();
    writeln!(
        out,
        "built {} shards ({:?} partition) of {} points into {} in {:.1}s; shard sizes {}; peak memory {}",
        manifest.shards.len(),
        manifest.partition,
        manifest.num_points,
        a.out.display(),
        t.elapsed().as_secs_f64(),
        sizes.join(", "),
        peak_rss_bytes().map_or("unknown".into(), human_bytes)
    )?;
    Ok(())
}
