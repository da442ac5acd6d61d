//! `demo`: gen → groundtruth → build → bench on a sift-like set with
//! generated documents (a Zipf label and a number per point), then a
//! filtered bench on three labels, one per plan: the whole pipeline on a
//! laptop-sized example, reusing what an earlier run left.

use std::io::Write;
use std::path::{Path, PathBuf};

use shardann_engine::data::VectorFile;
use shardann_engine::index::OpenOptions;
use shardann_engine::shard;

use shardann_engine::docs::VectorSource;

use crate::bench::{bench, RunReport};
use crate::cli::{BenchArgs, DemoArgs, GenArgs, GraphArgs, GroundtruthArgs};
use crate::progress::Bars;
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
    let docs = dir.join("docs.jsonl");
    let data_ok = VectorFile::open(&base).is_ok_and(|f| f.len() == a.n)
        && VectorFile::open(&query).is_ok_and(|f| f.len() == a.queries)
        && exists(&docs);
    if !data_ok {
        writeln!(
            out,
            "[1/5] generating {} sift-like points with documents and {} queries (seed {})",
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
                docs: true,
            },
            quiet,
            out,
        )?;
        let _ = std::fs::remove_file(&gt);
        let _ = std::fs::remove_dir_all(&index);
    } else {
        writeln!(out, "[1/5] reusing data in {}", dir.display())?;
    }
    if !exists(&gt) {
        writeln!(out, "[2/5] computing exact ground truth")?;
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
        writeln!(out, "[2/5] reusing ground truth {}", gt.display())?;
    }
    let has_documents = shard::open(&index, OpenOptions::buffered())
        .is_ok_and(|i| i.documents().is_some_and(|d| d.filters().is_some()));
    if !has_documents {
        writeln!(
            out,
            "[3/5] building the index (R=64, L=100, alpha=1.2, 32-byte PQ) with documents, filter fields label and ts"
        )?;
        let graph = GraphArgs {
            max_degree: 64,
            build_list: 100,
            alpha: 1.2,
            pq_bytes: Some(32),
            pq_sample: 100_000,
            seed: 1,
            layout: crate::cli::Layout::V2,
        };
        // A leftover that does not open (an interrupted build, an index from
        // an older layout) is rebuilt from scratch.
        let _ = std::fs::remove_dir_all(&index);
        let staging = index.join(".staging");
        let fields = shardann_engine::docs::IndexedFields {
            filter: vec!["label".to_string(), "ts".to_string()],
            ..Default::default()
        };
        let source = VectorSource::Base {
            name: base.display().to_string(),
        };
        let built =
            shardann_engine::docs::ingest(&docs, source, &fields, &staging, &Bars::new(quiet))
                .map_err(anyhow::Error::from)
                .and_then(|ingested| {
                    crate::build::run_build(
                        &base,
                        shardann_engine::Metric::L2,
                        &graph,
                        &index,
                        a.threads,
                        quiet,
                        Some(&ingested),
                    )
                });
        let _ = std::fs::remove_dir_all(&staging);
        let (r, _, secs) = built?;
        writeln!(
            out,
            "built in {secs:.1}s: {} on disk, {} PQ in RAM, mean degree {:.1}",
            human_bytes(r.index_bytes),
            human_bytes(r.pq_file_bytes),
            r.mean_degree
        )?;
    } else {
        writeln!(out, "[3/5] reusing index {}", index.display())?;
    }
    writeln!(out, "[4/5] benchmarking (O_DIRECT reads, beam 4)")?;
    let bench_args =
        |gt: PathBuf, json: &str, filter: Option<String>, flat_max, cluster: &[&str]| BenchArgs {
            index: Some(index.clone()),
            server: None,
            batch: 1,
            queries: query.clone(),
            gt,
            k: 10,
            list: a.list.clone(),
            beam: 4,
            threads: a.threads,
            concurrency: 0,
            probe_shards: 0,
            json: Some(dir.join(json)),
            read: crate::cli::ReadArgs {
                cluster_codes: cluster.iter().map(|f| f.to_string()).collect(),
                ..crate::cli::ReadArgs::default()
            },
            filter,
            filters: None,
            flat_max,
            clustered_max: None,
            include: Vec::new(),
            methods: vec![crate::eval::NamedMethod {
                name: "dense".into(),
                method: crate::eval::Method::Dense,
            }],
            texts: None,
            embed: false,
            candidates: None,
            corpus: None,
        };
    let report = bench(&bench_args(gt, "bench.json", None, None, &[]), out)?;
    first_reaching(&report.runs, out)?;
    // Three labels of the generated Zipf law: l9 (about 1 % of the points),
    // scored flat; l1 (about half), on the filtered graph walk; l2 (about
    // 15 %) from a copy of the codes in label order (`--cluster-codes
    // label`). The report names the plan each query ran. At 100K points
    // every label has fewer matches than the default switch
    // (`FLAT_MAX_MATCHES`), so l1 is sent to the walk the way `bench
    // --flat-max` does, to show every plan.
    writeln!(
        out,
        "[5/5] filtered search: only documents with a given label"
    )?;
    for label in ["l9", "l1", "l2"] {
        let filter = format!(r#"{{"label": "{label}"}}"#);
        let gt = dir.join(format!("gt-{label}.bin"));
        if !exists(&gt) {
            crate::data::groundtruth(
                &GroundtruthArgs {
                    base: base.clone(),
                    queries: query.clone(),
                    k: 10,
                    metric: shardann_engine::Metric::L2,
                    out: gt.clone(),
                    threads: a.threads,
                    filter: Some(filter.clone()),
                    filters: None,
                    index: Some(index.clone()),
                },
                quiet,
                out,
            )?;
        }
        writeln!(out, "filter {filter}:")?;
        let json = format!("bench-{label}.json");
        let flat_max = (label == "l1").then_some(0);
        let cluster: &[&str] = if label == "l2" { &["label"] } else { &[] };
        let report = bench(&bench_args(gt, &json, Some(filter), flat_max, cluster), out)?;
        first_reaching(&report.runs, out)?;
    }
    writeln!(
        out,
        "try: shardann search --index {} --queries {} --k 3 --filter '{{\"ts\": {{\"$lt\": 1000}}}}' --include '*'",
        index.display(),
        query.display()
    )?;
    Ok(())
}

/// Says where recall@10 first reaches 0.95.
fn first_reaching(runs: &[RunReport], out: &mut dyn Write) -> anyhow::Result<()> {
    let reaching = runs
        .iter()
        .find_map(|r| r.recall_at_k.filter(|&x| x >= 0.95).map(|x| (r, x)));
    if let Some((best, recall)) = reaching {
        writeln!(
            out,
            "recall@10 ≥ 0.95 first reached at L={}: recall {recall:.4}, {:.0} QPS, {:.1} reads per query",
            best.list, best.qps, best.mean_ios
        )?;
    } else {
        writeln!(out, "recall@10 stayed below 0.95 at every list size tried")?;
    }
    Ok(())
}
