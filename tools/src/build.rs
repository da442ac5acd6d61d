//! `build`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use std::path::{Path, PathBuf};

use shardann_engine::data::VectorFile;
use shardann_engine::docs::{Documents, IndexedFields, Ingested, VectorSource};
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
                num_chunks: self.pq_bytes.unwrap_or(DEFAULT_PQ_BYTES),
                train_sample: self.pq_sample,
                seed: self.seed,
                ..PqParams::default()
            },
            order: self.layout.order(),
        }
    }
}

/// Builds the next version of the index in `out_dir` (version 1 in a new
/// directory) and returns its report, version and wall time. With
/// `documents`, the segment gets them too (row i of the base = document i).
#[allow(clippy::too_many_arguments)]
pub fn run_build(
    base_path: &std::path::Path,
    metric: Metric,
    graph: &GraphArgs,
    out_dir: &std::path::Path,
    threads: usize,
    quiet: bool,
    documents: Option<&Ingested>,
) -> anyhow::Result<(BuildReport, u64, f64)> {
    let base = open_base(base_path, documents)?;
    let params = fit_pq(graph.to_params(metric), base.dim(), graph.pq_bytes);
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let (report, version) = with_threads(threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(build_version(base.vectors::<T>()?, &params, out_dir, 0, &bars, |seg| match documents {
                Some(d) => Documents::install(d, seg),
                None => Ok(()),
            })?)
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

/// `build --memory-budget`: plans the build against the budget first (a
/// budget too small fails here, before any work), says what it will do,
/// then builds the next version as [`run_build`] does.
fn run_budgeted_build(
    a: &BuildArgs,
    base_path: &Path,
    budget: u64,
    quiet: bool,
    out: &mut dyn Write,
    documents: Option<&Ingested>,
) -> anyhow::Result<(BuildReport, u64, f64)> {
    use shardann_engine::budget::{build_within, BudgetPlan, MemoryModel};
    use shardann_engine::error::fmt_bytes;
    let base = open_base(base_path, documents)?;
    let params = fit_pq(a.graph.to_params(a.metric), base.dim(), a.graph.pq_bytes);
    let row = base.dim() * base.elem().size();
    let plan = BudgetPlan::new(base.len(), row, &params, budget, MemoryModel::MEASURED)?;
    if plan.partitions == 1 {
        writeln!(
            out,
            "memory budget {}: the whole graph fits (estimated peak {})",
            fmt_bytes(budget),
            fmt_bytes(plan.estimated_peak)
        )?;
    } else {
        writeln!(
            out,
            "memory budget {}: {} cells of at most {} points (each point in 2), R' = {} per cell, merged to R = {}; layout v{}; estimated peak {}",
            fmt_bytes(budget),
            plan.partitions,
            plan.partition_points,
            plan.partition_degree,
            params.vamana.max_degree,
            plan.order.major(),
            fmt_bytes(plan.estimated_peak)
        )?;
    }
    let bars = Bars::with_memory(quiet);
    let t = Instant::now();
    let (report, version) = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(shardann_engine::shard::build_version_with(
                a.out_dir(),
                0,
                |seg| build_within::<T>(&base, &params, &plan, seg, &bars),
                |seg| match documents {
                    Some(d) => Documents::install(d, seg),
                    None => Ok(()),
                },
            )?)
        })
    })?
    .with_context(|| {
        format!(
            "building an index of {} into {} within {}",
            base_path.display(),
            a.out_dir().display(),
            fmt_bytes(budget)
        )
    })?;
    Ok((report, version, t.elapsed().as_secs_f64()))
}

/// PQ bytes per point when `--pq-bytes` is not given.
const DEFAULT_PQ_BYTES: usize = 32;

/// PQ codes cannot have more bytes than the vectors have dimensions: for
/// small vectors the default becomes the dimension, with a note (a value
/// given with --pq-bytes is kept, and refused by the build if too large).
fn fit_pq(mut params: BuildParams, dim: usize, given: Option<usize>) -> BuildParams {
    if given.is_none() && params.pq.num_chunks > dim {
        eprintln!(
            "note: {}-d vectors: using {dim} PQ bytes per point instead of {}",
            dim, params.pq.num_chunks
        );
        params.pq.num_chunks = dim;
    }
    params
}

/// Opens the base vectors, checking them against the documents' count.
fn open_base(path: &Path, documents: Option<&Ingested>) -> anyhow::Result<VectorFile> {
    let base = VectorFile::open(path)?;
    if let Some(d) = documents {
        if d.count != base.len() {
            anyhow::bail!(
                "{} has {} rows but the documents are {}: row i of the vectors is document i",
                path.display(),
                base.len(),
                d.count
            );
        }
    }
    Ok(base)
}

/// Reads `--docs` (if given) into a staging directory inside the output
/// directory, so that a bad line fails before any version is built.
fn read_documents(a: &BuildArgs, quiet: bool) -> anyhow::Result<Option<(Ingested, PathBuf)>> {
    let Some(docs) = &a.docs else {
        if !a.filter_fields.is_empty() || !a.text_fields.is_empty() {
            anyhow::bail!(
                "--filter-fields and --text-fields name fields of documents: give them with --docs FILE.jsonl"
            );
        }
        return Ok(None);
    };
    let source = match &a.base {
        Some(b) => VectorSource::Base {
            name: b.display().to_string(),
        },
        None => VectorSource::Inline {
            elem: a.vector_type,
            dim: None,
        },
    };
    let staging = match a.shard {
        // Shard builds of one plan may run at once: one staging folder each.
        Some(i) if a.plan.is_some() => a.out_dir().join(format!(".staging-shard-{i}")),
        _ => a.out_dir().join(".staging"),
    };
    let bars = Bars::new(quiet);
    let fields = IndexedFields {
        filter: a.filter_fields.clone(),
        text: a.text_fields.clone(),
        analyzer: a.text_analyzer,
    };
    let ingested = shardann_engine::docs::ingest(docs, source, &fields, &staging, &bars)
        .with_context(|| format!("reading documents from {}", docs.display()));
    match ingested {
        Ok(i) => Ok(Some((i, staging))),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

pub fn build(a: &BuildArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    // Checked first: every later step creates something below --out, and
    // the OS error for that ("Not a directory", "File exists") names a path
    // the user never gave.
    if a.out.is_none() && a.plan.is_none() {
        anyhow::bail!("give --out DIR (or --plan DIR --shard i)");
    }
    if a.out_dir().exists() && !a.out_dir().is_dir() {
        anyhow::bail!(
            "--out {} exists and is not a directory; give a new path, or an index directory to add a version to",
            a.out_dir().display()
        );
    }
    let embedded;
    let a = match &a.embed_model {
        Some(model) => {
            embedded = embed_documents(a, model, quiet, out)?;
            &embedded
        }
        None => a,
    };
    let documents = read_documents(a, quiet)?;
    let result = build_with(a, quiet, out, documents.as_ref().map(|d| &d.0));
    if let Some((_, staging)) = &documents {
        let _ = std::fs::remove_dir_all(staging);
    }
    if result.is_ok() && a.embed_model.is_some() {
        if let Some(dir) = a.base.as_deref().and_then(Path::parent) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

/// `--embed-model`: the documents' vectors, made by the embed job under
/// OUT/.embed (its checkpoint there makes a second run resume, not start
/// over); the arguments to build with, `--base` set to them.
fn embed_documents(
    a: &BuildArgs,
    model: &Path,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<BuildArgs> {
    use shardann_engine::embed::{self, JobSpec};
    let docs = a.docs.as_ref().context("--embed-model embeds --docs")?;
    let spec = JobSpec {
        input: docs.clone(),
        fields: a.embed_field.clone(),
        out: a.out_dir().join(".embed"),
        batch: a.embed_batch,
        part: None,
        window: embed::plan::WINDOW,
    };
    let started = std::time::Instant::now();
    let (r, _, _) = crate::embed::run_job(model, None, &spec, a.threads, quiet)?;
    writeln!(
        out,
        "embedded {} documents in {:.1} s ({} resumed from an earlier run; {} truncated)",
        r.embedded,
        started.elapsed().as_secs_f64(),
        r.resumed,
        r.truncated
    )?;
    let mut with_base = a.clone();
    with_base.base = Some(r.vectors);
    Ok(with_base)
}

fn build_with(
    a: &BuildArgs,
    quiet: bool,
    out: &mut dyn Write,
    documents: Option<&Ingested>,
) -> anyhow::Result<()> {
    let base_path = match (&a.base, documents.and_then(|d| d.vectors.as_ref())) {
        (Some(b), _) => b.clone(),
        (None, Some(staged)) => staged.clone(),
        (None, None) => anyhow::bail!("give the vectors: --base VECTORS, or --docs FILE.jsonl with a \"vector\" in every line"),
    };
    if let (Some(dir), Some(shard)) = (&a.plan, a.shard) {
        return build_planned_shard(a, dir, shard, &base_path, quiet, out, documents);
    }
    if a.plan_only {
        return plan_shards(a, &base_path, quiet, out, documents);
    }
    if a.shards > 1 {
        if a.memory_budget.is_some() {
            anyhow::bail!(
                "--memory-budget builds one index; with --shards N, make a plan (--plan-only) and \
                 build each shard with `build --plan DIR --shard i` on a machine that holds it"
            );
        }
        return build_shards(a, &base_path, quiet, out, documents);
    }
    let (r, version, secs) = match a.memory_budget {
        Some(budget) => run_budgeted_build(a, &base_path, budget, quiet, out, documents)?,
        None => run_build(
            &base_path,
            a.metric,
            &a.graph,
            a.out_dir(),
            a.threads,
            quiet,
            documents,
        )?,
    };
    writeln!(
        out,
        "built {} version {version} ({} points, {}-d {}, {}): R={} L={} alpha={} pq-bytes={}",
        a.out_dir().display(),
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
    writeln!(
        out,
        "layout v{}: {:.0} % of each sector's other records are graph neighbours",
        r.order.major(),
        100.0 * r.sector_overlap
    )?;
    if let Some(d) = documents {
        writeln!(
            out,
            "documents: {} ({} ids; filter fields: {}; text fields: {})",
            d.count,
            if d.keys.is_empty() { "no" } else { "user" },
            list_or_none(&d.fields.filter),
            if d.fields.text.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({})", d.fields.text.join(", "), d.fields.analyzer)
            }
        )?;
    }
    Ok(())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `build --shards N`: partition, then one index per shard.
fn build_shards(
    a: &BuildArgs,
    base_path: &Path,
    quiet: bool,
    out: &mut dyn Write,
    documents: Option<&Ingested>,
) -> anyhow::Result<()> {
    let base = open_base(base_path, documents)?;
    let params = fit_pq(a.graph.to_params(a.metric), base.dim(), a.graph.pq_bytes);
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let manifest = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(shardann_engine::shard_plan::build_sharded(
                base.vectors::<T>()?, &params, a.shards, a.partition, a.out_dir(), &bars, documents,
            )?)
        })
    })?
    .with_context(|| {
        format!(
            "building {} shards of {} into {}",
            a.shards,
            base_path.display(),
            a.out_dir().display()
        )
    })?;
    writeln!(
        out,
        "{}",
        shards_summary("built", &manifest, a.out_dir(), t)
    )?;
    Ok(())
}

/// "built 4 shards (KMeans partition) of N points into DIR in 12.3s; shard
/// sizes …; peak memory …", the last line of a sharded build or plan.
fn shards_summary(
    verb: &str,
    manifest: &shardann_engine::cluster::ClusterManifest,
    dir: &Path,
    t: Instant,
) -> String {
    let sizes: Vec<String> = manifest
        .shards
        .iter()
        .map(|s| s.num_points.to_string())
        .collect();
    format!(
        "{verb} {} shards ({:?} partition) of {} points into {} in {:.1}s; shard sizes {}; peak memory {}",
        manifest.shards.len(),
        manifest.partition,
        manifest.num_points,
        dir.display(),
        t.elapsed().as_secs_f64(),
        sizes.join(", "),
        peak_rss_bytes().map_or("unknown".into(), human_bytes)
    )
}

/// `build --shards N --plan-only`: the partition and the plan, no shard.
fn plan_shards(
    a: &BuildArgs,
    base_path: &Path,
    quiet: bool,
    out: &mut dyn Write,
    documents: Option<&Ingested>,
) -> anyhow::Result<()> {
    if a.shards < 2 {
        anyhow::bail!("--plan-only plans a sharded build: give --shards N with N ≥ 2");
    }
    let base = open_base(base_path, documents)?;
    let params = fit_pq(a.graph.to_params(a.metric), base.dim(), a.graph.pq_bytes);
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let manifest = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(shardann_engine::shard_plan::plan(
                base.vectors::<T>()?, &params, a.shards, a.partition, a.out_dir(), &bars,
            )?)
        })
    })?
    .with_context(|| format!("planning {} shards of {}", a.shards, base_path.display()))?;
    writeln!(
        out,
        "{}",
        shards_summary("planned", &manifest, a.out_dir(), t)
    )?;
    writeln!(
        out,
        "build each shard, anywhere, in any order: shardann build --plan {} --shard I --base {}   (I = 0..{})",
        a.out_dir().display(),
        base_path.display(),
        manifest.shards.len() - 1
    )?;
    Ok(())
}

/// `build --plan DIR --shard i`: one shard of a plan.
#[allow(clippy::too_many_arguments)]
fn build_planned_shard(
    a: &BuildArgs,
    dir: &Path,
    shard: usize,
    base_path: &Path,
    quiet: bool,
    out: &mut dyn Write,
    documents: Option<&Ingested>,
) -> anyhow::Result<()> {
    let plan = shardann_engine::shard_plan::ShardPlan::open(dir)?;
    let base = open_base(base_path, documents)?;
    let conflicts = plan_conflicts(a, &plan.params());
    if !conflicts.is_empty() {
        anyhow::bail!(
            "the plan in {} fixes the build parameters; given with other values: {}. Drop these flags, or give the plan's values",
            dir.display(),
            conflicts.join(", ")
        );
    }
    let bars = Bars::new(quiet);
    let t = Instant::now();
    let (report, version) = with_threads(a.threads, || -> anyhow::Result<_> {
        with_elem!(base.elem(), T => {
            Ok(plan.build_shard_from_file::<T>(&base, shard, &bars, documents)?)
        })
    })?
    .with_context(|| {
        format!(
            "building shard {shard} of the plan in {} from {}",
            dir.display(),
            base_path.display()
        )
    })?;
    let info = &plan.manifest().shards[shard];
    writeln!(
        out,
        "built shard {shard} of {} ({} points) into {} version {version} in {:.1}s; peak memory {}",
        plan.manifest().shards.len(),
        report.num_points,
        dir.join(&info.dir).display(),
        t.elapsed().as_secs_f64(),
        peak_rss_bytes().map_or("unknown".into(), human_bytes)
    )?;
    Ok(())
}

/// The graph flags given with `--plan` whose values differ from the plan's,
/// as "--flag given (the plan's is planned)". A flag at its default value
/// counts as not given.
fn plan_conflicts(a: &BuildArgs, planned: &shardann_engine::index::BuildParams) -> Vec<String> {
    let defaults = GraphArgs::defaults();
    let g = &a.graph;
    let mut out = Vec::new();
    let mut check = |flag: &str, given: String, default: String, plan: String| {
        if given != default && given != plan {
            out.push(format!("{flag} {given} (the plan's is {plan})"));
        }
    };
    check(
        "--metric",
        a.metric.name().into(),
        Metric::L2.name().into(),
        planned.metric.name().into(),
    );
    let v = &planned.vamana;
    check(
        "--max-degree",
        g.max_degree.to_string(),
        defaults.max_degree.to_string(),
        v.max_degree.to_string(),
    );
    check(
        "--build-list",
        g.build_list.to_string(),
        defaults.build_list.to_string(),
        v.build_list.to_string(),
    );
    check(
        "--alpha",
        g.alpha.to_string(),
        defaults.alpha.to_string(),
        v.alpha.to_string(),
    );
    check(
        "--seed",
        g.seed.to_string(),
        defaults.seed.to_string(),
        v.seed.to_string(),
    );
    let pq = &planned.pq;
    let given_pq = g.pq_bytes.map_or("default".into(), |b| b.to_string());
    check(
        "--pq-bytes",
        given_pq,
        "default".into(),
        pq.num_chunks.to_string(),
    );
    check(
        "--pq-sample",
        g.pq_sample.to_string(),
        defaults.pq_sample.to_string(),
        pq.train_sample.to_string(),
    );
    let layout = |o| match o {
        shardann_engine::layout::NodeOrder::Identity => "v1".to_string(),
        shardann_engine::layout::NodeOrder::Locality => "v2".to_string(),
    };
    check(
        "--layout",
        layout(g.layout.order()),
        layout(defaults.layout.order()),
        layout(planned.order),
    );
    out
}
