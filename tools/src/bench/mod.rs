//! `bench`: recall, QPS, latency and IO per query, in process or through a
//! node's HTTP/2 endpoint.
//!
//! ```text
//!              ┌─ --index DIR ──► local::bench  (blocking threads, or glommio executors)
//!  bench(a) ───┤                                        │
//!              └─ --server URL ─► server::bench (HTTP/2 client)
//!                                                       │ per list size: one pass over
//!                                                       ▼ every query (run_lists)
//!                  QueryOutcome per query ─► RunReport per list ─► BenchReport::new
//!                                                       │
//!                                         stdout table, --json file
//! ```
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | [`bench`] (picks local or server), the loop over list sizes, ground-truth checks |
//! | `local.rs` | in process: opens the index (single, sharded, or as a node), runs queries on threads or glommio |
//! | `server.rs` | `bench --server URL`: reads `/v1/shards`, sends the queries over HTTP/2 |
//! | `report.rs` | [`BenchReport`] and [`RunReport`]: built in one place, the table on stdout, the JSON |
//!
//! `shardann demo` (gen → groundtruth → build → bench) is in `crate::demo`.

mod local;
mod report;
mod server;

use std::io::Write;

use anyhow::bail;
use shardann_engine::data::GroundTruth;

use crate::cli::BenchArgs;
use crate::eval::{Method, NamedMethod};
use report::{print_header, print_row, summarize, QueryOutcome};
pub use report::{BenchReport, RunReport};

/// `shardann bench`: over `--server URL` if given, else in process.
pub fn bench(a: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    match &a.server {
        Some(url) => server::bench(a, url, out),
        None => local::bench(a, out),
    }
}

/// Runs each list size of `--list` in turn, and at each every method of
/// `--methods`: `run(list, method)` searches every query once and returns
/// the outcomes and the wall time. Prints the table header, then a row per
/// run. The methods' order turns by one at each list size (`--list 64,64,64`
/// with three methods runs each first, second and third once), so that no
/// method always runs in the same place of a round while the machine's load
/// drifts.
fn run_lists(
    a: &BenchArgs,
    gt: &GroundTruth,
    out: &mut dyn Write,
    mut run: impl FnMut(usize, &NamedMethod) -> anyhow::Result<(Vec<QueryOutcome>, f64)>,
) -> anyhow::Result<Vec<RunReport>> {
    print_header(out)?;
    let mut runs = Vec::new();
    for (round, &list) in a.list.iter().enumerate() {
        let turn = round % a.methods.len().max(1);
        for method in a.methods[turn..].iter().chain(&a.methods[..turn]) {
            let (outcomes, wall) = run(list, method)?;
            let run = summarize(list, a.beam, a.k, method, &outcomes, wall, gt);
            print_row(out, &run)?;
            runs.push(run);
        }
    }
    Ok(runs)
}

/// In process, only vector search runs (text and fusion live in the
/// node): anything else in `--methods` is an error that says so.
fn dense_only(a: &BenchArgs) -> anyhow::Result<()> {
    if let Some(m) = a.methods.iter().find(|m| m.method != Method::Dense) {
        bail!(
            "--methods {}: text and hybrid runs go through a node (bench --server URL); in process only dense runs",
            m.name
        );
    }
    Ok(())
}

/// Checks ground truth against a query set and the index size.
fn check_gt(a: &BenchArgs, gt: &GroundTruth, nq: usize, points: usize) -> anyhow::Result<()> {
    gt.check_ids(&a.gt, points)?;
    if gt.nq < nq {
        bail!(
            "{} has ground truth for {} queries, but {} has {nq}",
            a.gt.display(),
            gt.nq,
            a.queries.display(),
        );
    }
    if gt.k < a.k {
        bail!(
            "{} has {} neighbours per query, fewer than k = {}",
            a.gt.display(),
            gt.k,
            a.k
        );
    }
    if a.list.is_empty() {
        bail!("--list needs at least one list size");
    }
    if a.methods.is_empty() {
        bail!("--methods needs at least one method");
    }
    Ok(())
}
