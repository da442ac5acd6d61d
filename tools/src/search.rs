//! `search`: the top-k of each query in a file.

use std::io::Write;

use shardann_engine::data::VectorFile;
use shardann_engine::index::{DiskIndex, SearchScratch};
use std::sync::Arc;

use shardann_engine::docs::Include;
use shardann_engine::search::SearchParams;

use crate::cli::SearchArgs;
use crate::util::load_filters;
use crate::with_elem;

pub fn search(a: &SearchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let idx = a.read.open(&a.index)?;
    let Some(queries) = &a.queries else {
        return search_text(a, &idx, a.text.as_deref().unwrap_or_default(), out);
    };
    let queries = VectorFile::open(queries)?;
    check_queries(&idx, &queries)?;
    let params = SearchParams {
        k: a.k,
        list: a.list,
        beam: a.beam,
    };
    params.validate()?;
    let n = a.limit.unwrap_or(queries.len()).min(queries.len());
    let filters = load_filters(a.filter.as_deref(), a.filters.as_deref(), n)?;
    let include = Include::from_names(&a.include);
    let docs = idx.documents();
    if docs.is_none() && (filters.iter().any(Option::is_some) || include != Include::Nothing) {
        anyhow::bail!(
            "{} has no documents: --filter and --include need an index built with --docs",
            idx.dir().display()
        );
    }
    with_elem!(idx.elem(), T => {
        let qv = queries.vectors::<T>()?;
        let mut scratch = SearchScratch::<T>::default();
        for (qi, filter) in filters.iter().enumerate() {
            let matches = match (docs, filter) {
                (Some(_), Some(f)) => Some(idx.evaluate(f)?),
                _ => None,
            };
            let (mut hits, stats, plan) = idx.search_local(&mut scratch, qv.row(qi), params, matches.as_ref())?;
            let Some(d) = docs else {
                idx.map_to_global(&mut hits);
                if a.json {
                    let line = serde_json::json!({ "query": qi, "hits": hits, "ios": stats.ios, "hops": stats.hops });
                    writeln!(out, "{line}")?;
                } else {
                    let list: Vec<String> = hits.iter().map(|h| format!("{}:{}", h.id, h.distance)).collect();
                    writeln!(out, "q{qi}\t{}", list.join(" "))?;
                }
                continue;
            };
            let locals: Vec<u32> = hits.iter().map(|h| h.id).collect();
            let fields = d.fetch(&locals, &include)?;
            let hits: Vec<serde_json::Value> = hits
                .iter()
                .zip(fields)
                .map(|(h, f)| {
                    let mut hit = serde_json::json!({ "id": d.keys().key(h.id), "distance": h.distance });
                    if include != Include::Nothing {
                        hit["fields"] = serde_json::Value::Object(f);
                    }
                    hit
                })
                .collect();
            if a.json {
                let line = serde_json::json!({ "query": qi, "hits": hits, "ios": stats.ios, "hops": stats.hops, "plan": plan });
                writeln!(out, "{line}")?;
            } else {
                let list: Vec<String> = hits.iter().map(|h| format!("{}:{}", h["id"], h["distance"])).collect();
                writeln!(out, "q{qi}\t{}", list.join(" "))?;
                if include != Include::Nothing {
                    for h in &hits {
                        writeln!(out, "  {}\t{}", h["id"], h["fields"])?;
                    }
                }
            }
        }
    });
    Ok(())
}

/// `search --text`: one BM25 query.
fn search_text(
    a: &SearchArgs,
    idx: &DiskIndex,
    text: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let docs = idx.documents();
    let Some(index) = docs.and_then(|d| d.text()) else {
        anyhow::bail!(
            "{}: {}",
            idx.dir().display(),
            shardann_engine::TextError::NoTextIndex
        );
    };
    let Some(docs) = docs else { unreachable!() };
    let filter = load_filters(a.filter.as_deref(), a.filters.as_deref(), 1)?;
    let allowed = match filter.first() {
        Some(Some(f)) => Some(Arc::new(docs.evaluate(f)?)),
        _ => None,
    };
    let query = index.analyze(text);
    let hits = index.search(&query, None, a.k, allowed)?;
    let include = Include::from_names(&a.include);
    let locals: Vec<u32> = hits.iter().map(|h| h.0).collect();
    let fields = docs.fetch(&locals, &include)?;
    let hits: Vec<serde_json::Value> = hits
        .iter()
        .zip(fields)
        .map(|(&(local, score), f)| {
            let mut hit = serde_json::json!({ "id": docs.keys().key(local), "score": score });
            if include != Include::Nothing {
                hit["fields"] = serde_json::Value::Object(f);
            }
            hit
        })
        .collect();
    if a.json {
        let line = serde_json::json!({ "text": text, "terms": query.terms, "hits": hits });
        writeln!(out, "{line}")?;
    } else {
        let list: Vec<String> = hits
            .iter()
            .map(|h| format!("{}:{}", h["id"], h["score"]))
            .collect();
        writeln!(out, "terms {}\t{}", query.terms.join(" "), list.join(" "))?;
        if include != Include::Nothing {
            for h in &hits {
                writeln!(out, "  {}\t{}", h["id"], h["fields"])?;
            }
        }
    }
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
