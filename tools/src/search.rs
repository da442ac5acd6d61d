//! `search`: the top-k of each query in a file.

use std::io::Write;

use shardann_engine::data::VectorFile;
use shardann_engine::index::{DiskIndex, SearchScratch};
use shardann_engine::search::SearchParams;

use crate::cli::SearchArgs;
use crate::with_elem;

pub fn search(a: &SearchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let idx = a.read.open(&a.index)?;
    let queries = VectorFile::open(&a.queries)?;
    check_queries(&idx, &queries)?;
    let params = SearchParams {
        k: a.k,
        list: a.list,
        beam: a.beam,
    };
    params.validate()?;
    let n = a.limit.unwrap_or(queries.len()).min(queries.len());
    with_elem!(idx.elem(), T => {
        let qv = queries.vectors::<T>()?;
        let mut scratch = SearchScratch::<T>::default();
        for qi in 0..n {
            let (hits, stats) = idx.search(&mut scratch, qv.row(qi), params)?;
            if a.json {
                let line = serde_json::json!({ "query": qi, "hits": hits, "ios": stats.ios, "hops": stats.hops });
                writeln!(out, "{line}")?;
            } else {
                let list: Vec<String> = hits.iter().map(|h| format!("{}:{}", h.id, h.distance)).collect();
                writeln!(out, "q{qi}\t{}", list.join(" "))?;
            }
        }
    });
    Ok(())
}

/// Checks that a query file fits an index: same element type and dimension.
pub fn check_queries(idx: &DiskIndex, queries: &VectorFile) -> anyhow::Result<()> {
    if queries.elem() != idx.elem() {
        anyhow::bail!(
            "{} holds {} vectors, but the index at {} holds {}",
            queries.path().display(),
            queries.elem(),
            idx.dir().display(),
            idx.elem()
        );
    }
    if queries.dim() != idx.dim() {
        anyhow::bail!(
            "dimension mismatch: {} has dimension {}, but the index at {} has dimension {}",
            queries.path().display(),
            queries.dim(),
            idx.dir().display(),
            idx.dim()
        );
    }
    Ok(())
}
