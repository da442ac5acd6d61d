//! `gen` and `groundtruth`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use shardann_engine::data::VectorFile;
use shardann_engine::groundtruth::{brute_force, brute_force_filtered};
use shardann_engine::index::OpenOptions;
use shardann_engine::shard;
use shardann_engine::synth::{generate_payloads, generate_to_file, Stream};

use crate::cli::{GenArgs, GroundtruthArgs};
use crate::progress::Bars;
use crate::util::{load_filters, with_threads};
use crate::with_elem;

pub fn gen(a: &GenArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ext = a.preset.elem().extension();
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let base = a.out.join(format!("base.{ext}"));
    let query = a.out.join(format!("query.{ext}"));
    with_threads(a.threads, || -> anyhow::Result<()> {
        generate_to_file(a.preset, a.n, a.seed, Stream::Base, &base, &bars)?;
        if a.queries > 0 {
            generate_to_file(a.preset, a.queries, a.seed, Stream::Query, &query, &bars)?;
        }
        Ok(())
    })??;
    if a.docs {
        let path = a.out.join("docs.jsonl");
        write_synth_docs(&path, a.n, a.seed, a.threads)?;
        writeln!(
            out,
            "wrote {} ({} documents: id, label, ts)",
            path.display(),
            a.n
        )?;
    }
    writeln!(
        out,
        "wrote {} ({} × {}-d {}) and {} ({} queries) in {:.1}s; metric for this preset: {}",
        base.display(),
        a.n,
        a.preset.dim(),
        a.preset.elem(),
        query.display(),
        a.queries,
        t.elapsed().as_secs_f64(),
        a.preset.metric()
    )?;
    Ok(())
}

/// Writes the generated payloads of documents `0..n` as JSON Lines
/// (atomically: a reader never sees half a file).
pub fn write_synth_docs(path: &Path, n: usize, seed: u64, threads: usize) -> anyhow::Result<()> {
    let payloads = with_threads(threads, || generate_payloads(n, seed))?;
    let mut text = String::with_capacity(n * 40);
    for (i, p) in payloads.iter().enumerate() {
        text.push_str(&p.json_line(i as u64));
        text.push('\n');
    }
    shardann_engine::fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn groundtruth(a: &GroundtruthArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.k == 0 || a.k > 1000 {
        bail!("--k must be in 1..=1000, got {}", a.k);
    }
    let base = VectorFile::open(&a.base)?;
    let queries = VectorFile::open(&a.queries)?;
    if base.elem() != queries.elem() {
        bail!(
            "{} holds {} values but {} holds {}",
            a.base.display(),
            base.elem(),
            a.queries.display(),
            queries.elem()
        );
    }
    if base.dim() != queries.dim() {
        bail!(
            "dimension mismatch: {} has dimension {}, {} has {}",
            a.base.display(),
            base.dim(),
            a.queries.display(),
            queries.dim()
        );
    }
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let filters = load_filters(a.filter.as_deref(), a.filters.as_deref(), queries.len())?;
    let matches = match &a.index {
        Some(dir) if filters.iter().any(Option::is_some) => {
            let idx = shard::open(dir, OpenOptions::buffered())?;
            if idx.len() != base.len() {
                bail!(
                    "{} has {} points, {} has {}: the filters must be evaluated on an index of this base",
                    dir.display(),
                    idx.len(),
                    a.base.display(),
                    base.len()
                );
            }
            let docs = idx.documents().with_context(|| {
                format!(
                    "{} has no documents (build it with --docs and --filter-fields)",
                    dir.display()
                )
            })?;
            filters
                .iter()
                .map(|f| f.as_ref().map(|f| docs.evaluate(f)).transpose())
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => Vec::new(),
    };
    let gt = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            if matches.is_empty() {
                Ok(brute_force(base.vectors::<T>()?, queries.vectors::<T>()?, a.metric, a.k, &bars))
            } else {
                Ok(brute_force_filtered(base.vectors::<T>()?, queries.vectors::<T>()?, a.metric, a.k, &matches, &bars))
            }
        })
    })??;
    gt.write(&a.out)?;
    writeln!(
        out,
        "wrote {}: {} queries × {} neighbours ({}), {:.1}s",
        a.out.display(),
        gt.nq,
        gt.k,
        a.metric,
        t.elapsed().as_secs_f64()
    )?;
    Ok(())
}
