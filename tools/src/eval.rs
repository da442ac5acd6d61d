//! `eval`: answer quality (nDCG, recall, MRR against relevance judgments)
//! of retrieval methods on a data set in the BEIR layout.
//!
//! ```text
//!  --dataset DIR ──► engine::eval::BeirSet (corpus ids, judged queries, qrels, query.fbin)
//!                                │
//!  --methods dense,bm25,rrf,…    ▼  per method, per judged query, timed:
//!     dense ─────────────────► Retriever::dense(query row, depth)
//!     bm25  ─────────────────► Retriever::text(query text, depth)
//!     rrf, weighted:α, dbsf ─► dense(row, candidates) + text(text, candidates)
//!                                 └─ engine::fusion::Fusion::fuse ─► first `depth`
//!                                │
//!                                ▼  rankings of user ids (= corpus `_id`s)
//!                 engine::eval::evaluate ─► table on stdout, --report FILE.json
//! ```
//!
//! Every method reaches the index through the [`Retriever`] trait: one
//! implementation per place an index lives ([`LocalIndex`]: an index
//! directory in this process). Fused methods are computed here from the two
//! signals, so every retriever fuses alike.

use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use shardann_engine::docs::UserId;
use shardann_engine::eval::{evaluate, BeirSet, Cutoffs, Evaluation, Scores};
use shardann_engine::fusion::{Fusion, Normalize, DEFAULT_ALPHA, DEFAULT_RRF_K};
use shardann_engine::index::{DiskIndex, SearchScratch};
use shardann_engine::search::SearchParams;

use crate::cli::EvalArgs;
use crate::search::check_queries;
use crate::util::git_commit;

/// A place to search: the two signals every method is made of. Hits are
/// best first, as `(user id, score)`.
pub trait Retriever {
    /// The dense (vector) top `k` of query row `query_row` of the data set's
    /// `query.fbin`; scores are distances, smaller is closer.
    fn dense(&mut self, query_row: usize, k: usize) -> anyhow::Result<Vec<(UserId, f32)>>;
    /// The BM25 top `k` of a query text; scores are BM25, larger is better.
    fn text(&mut self, text: &str, k: usize) -> anyhow::Result<Vec<(UserId, f32)>>;
    /// Whether `signal` can be searched at all: checked for every method
    /// before any query runs, so a missing text index is reported at once.
    fn check(&self, signal: Signal) -> anyhow::Result<()>;
    /// The fused ranking of a hybrid query, when the retriever fuses
    /// itself (a node does); `None`: `eval` fuses [`Self::dense`] and
    /// [`Self::text`] with `engine::fusion`.
    fn fused(
        &mut self,
        _query_row: usize,
        _text: &str,
        _fusion: &Fusion,
        _candidates: usize,
        _k: usize,
    ) -> anyhow::Result<Option<Vec<UserId>>> {
        Ok(None)
    }
    /// The time the last query took where it was answered (a node's
    /// `took_us`), when the retriever knows it; `eval` then reports it
    /// instead of the time it waited (which adds a connection and HTTP).
    fn answered_in_us(&self) -> Option<u64> {
        None
    }
}

/// One of the two signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Dense,
    Text,
}

/// A retrieval method of `--methods`.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Vector search alone.
    Dense,
    /// BM25 alone.
    Bm25,
    /// Both signals, fused.
    Fused(Fusion),
}

impl Method {
    fn signals(&self) -> &'static [Signal] {
        match self {
            Method::Dense => &[Signal::Dense],
            Method::Bm25 => &[Signal::Text],
            Method::Fused(_) => &[Signal::Dense, Signal::Text],
        }
    }
}

impl FromStr for Method {
    type Err = String;

    /// `dense`, `bm25`, `rrf` or `rrf:K`, `weighted:ALPHA` or
    /// `weighted:ALPHA:NORM` (NORM: minmax, zscore, dbsf), `dbsf`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let number = |what: &str, v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .map_err(|_| format!("{s:?}: {what} {v:?} is not a number"))
        };
        let fused = |f: Result<Fusion, shardann_engine::FusionError>| {
            f.map(Method::Fused).map_err(|e| format!("{s:?}: {e}"))
        };
        match parts[..] {
            ["dense"] => Ok(Method::Dense),
            ["bm25"] => Ok(Method::Bm25),
            ["rrf"] => fused(Fusion::rrf(DEFAULT_RRF_K)),
            ["rrf", k] => fused(Fusion::rrf(number("k", k)?)),
            ["weighted"] => fused(Fusion::weighted(DEFAULT_ALPHA, Normalize::MinMax)),
            ["weighted", a] => fused(Fusion::weighted(number("alpha", a)?, Normalize::MinMax)),
            ["weighted", a, norm] => {
                let norm = norm.parse::<Normalize>().map_err(|e| format!("{s:?}: {e}"))?;
                fused(Fusion::weighted(number("alpha", a)?, norm))
            }
            ["dbsf"] => fused(Fusion::weighted(DEFAULT_ALPHA, Normalize::Dbsf)),
            _ => Err(format!(
                "unknown method {s:?}: dense, bm25, rrf[:K], weighted[:ALPHA[:minmax|zscore|dbsf]], dbsf"
            )),
        }
    }
}

/// A method as given on the command line, with its name kept for the
/// report.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMethod {
    pub name: String,
    pub method: Method,
}

impl FromStr for NamedMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(NamedMethod {
            name: s.to_string(),
            method: s.parse()?,
        })
    }
}

/// What `eval` needs of each method's run.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    pub cutoffs: Cutoffs,
    /// Hits each signal contributes to a fused method.
    pub candidates: usize,
    /// Only the first this many judged queries.
    pub limit: Option<usize>,
}

impl RunConfig {
    /// Hits a ranking needs: the largest cut-off.
    pub fn depth(&self) -> usize {
        self.cutoffs.depth()
    }

    /// The most dense hits any of `methods` asks one query for.
    pub fn dense_hits(&self, methods: &[(String, Method)]) -> usize {
        methods
            .iter()
            .map(|(_, m)| match m {
                Method::Dense => self.depth(),
                Method::Fused(_) => self.candidates,
                Method::Bm25 => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

/// The JSON report of one `eval` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub git_commit: String,
    pub dataset: String,
    pub index: String,
    pub corpus_documents: usize,
    /// Queries of `queries.jsonl` with judgments (the ones searched, up to
    /// --limit) and without (skipped).
    pub judged_queries: usize,
    pub skipped_queries: usize,
    pub judgments: usize,
    pub cutoffs: Cutoffs,
    /// Dense search: list size L and beam width W.
    pub list: usize,
    pub beam: usize,
    /// Hits each signal contributes to a fused method.
    pub candidates: usize,
    pub methods: Vec<MethodReport>,
}

/// One method's scores and latency.
#[derive(Debug, Clone, Serialize)]
pub struct MethodReport {
    /// The method as given in --methods (`dense`, `rrf`, `weighted:0.3`, …).
    pub method: String,
    /// The fusion it ran, for fused methods.
    pub fusion: Option<Fusion>,
    pub queries: usize,
    /// Means over the queries: nDCG@cutoffs.ndcg, recall@cutoffs.recall,
    /// MRR@cutoffs.mrr.
    pub ndcg: f64,
    pub recall: f64,
    pub mrr: f64,
    /// Time to retrieve one query's ranking (both signals and the fusion
    /// for fused methods), one query at a time, in microseconds.
    pub latency_us: Latency,
    /// Mean length of the rankings measured.
    pub mean_hits: f64,
    pub per_query: std::collections::BTreeMap<String, Scores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

/// A user id as the corpus spells it (`_id` strings; integer ids in
/// decimal).
fn id_text(id: &UserId) -> String {
    match id {
        UserId::Int(i) => i.to_string(),
        UserId::Str(s) => s.clone(),
    }
}

/// Runs every method over the judged queries of `set` through `r`.
pub fn run_methods(
    set: &BeirSet,
    r: &mut dyn Retriever,
    methods: &[(String, Method)],
    cfg: RunConfig,
) -> anyhow::Result<Vec<MethodReport>> {
    for (name, m) in methods {
        for &s in m.signals() {
            r.check(s).with_context(|| format!("method {name}"))?;
        }
    }
    let queries: Vec<_> = set
        .judged_queries()
        .take(cfg.limit.unwrap_or(usize::MAX))
        .collect();
    let depth = cfg.depth();
    let mut reports = Vec::new();
    for (name, method) in methods {
        let mut runs: Vec<(&str, Vec<String>)> = Vec::with_capacity(queries.len());
        let mut micros = Vec::with_capacity(queries.len());
        for &(row, q) in &queries {
            let t = Instant::now();
            let ranking: Vec<UserId> = match method {
                Method::Dense => r.dense(row, depth)?.into_iter().map(|(id, _)| id).collect(),
                Method::Bm25 => r
                    .text(&q.text, depth)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect(),
                Method::Fused(f) => {
                    if let Some(ranking) = r.fused(row, &q.text, f, cfg.candidates, depth)? {
                        micros.push(
                            r.answered_in_us()
                                .map_or(t.elapsed().as_secs_f64() * 1e6, |us| us as f64),
                        );
                        runs.push((q.id.as_str(), ranking.iter().map(id_text).collect()));
                        continue;
                    }
                    let dense = r.dense(row, cfg.candidates)?;
                    let text = r.text(&q.text, cfg.candidates)?;
                    f.fuse(&dense, &text)
                        .into_iter()
                        .take(depth)
                        .map(|x| x.key)
                        .collect()
                }
            };
            let waited = t.elapsed().as_secs_f64() * 1e6;
            micros.push(match method {
                Method::Fused(_) => waited,
                _ => r.answered_in_us().map_or(waited, |us| us as f64),
            });
            runs.push((q.id.as_str(), ranking.iter().map(id_text).collect()));
        }
        let mean_hits =
            runs.iter().map(|(_, r)| r.len()).sum::<usize>() as f64 / runs.len().max(1) as f64;
        let e: Evaluation = evaluate(&set.qrels, runs, cfg.cutoffs);
        micros.sort_by(f64::total_cmp);
        reports.push(MethodReport {
            method: name.clone(),
            fusion: match method {
                Method::Fused(f) => Some(*f),
                _ => None,
            },
            queries: e.queries,
            ndcg: e.mean.ndcg,
            recall: e.mean.recall,
            mrr: e.mean.mrr,
            latency_us: Latency {
                mean: micros.iter().sum::<f64>() / micros.len().max(1) as f64,
                p50: percentile(&micros, 50.0),
                p99: percentile(&micros, 99.0),
            },
            mean_hits,
            per_query: e.per_query,
        });
    }
    Ok(reports)
}

/// The nearest-rank percentile of sorted values (as `bench` reports it).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An index directory searched in this process: dense search through the
/// engine's blocking driver, one query at a time; hits mapped to the user
/// ids of the index's documents.
pub struct LocalIndex<'a> {
    idx: DiskIndex,
    set: &'a BeirSet,
    list: usize,
    beam: usize,
    scratch: SearchScratch<f32>,
}

impl<'a> LocalIndex<'a> {
    /// Opens `dir` for searching the queries of `set`, and checks that the
    /// index was built from the set's corpus (every user id of the index is
    /// a corpus id, and there are as many).
    pub fn open(
        dir: &Path,
        set: &'a BeirSet,
        read: &crate::cli::ReadArgs,
        list: usize,
        beam: usize,
    ) -> anyhow::Result<Self> {
        if dir.join(shardann_engine::layout::CLUSTER_FILE).exists() {
            bail!(
                "{} is a sharded index: eval searches an unsharded one (build without --shards)",
                dir.display()
            );
        }
        let idx = read.open(dir)?;
        let Some(docs) = idx.documents() else {
            bail!(
                "the index at {} has no documents, so its hits have no corpus ids: build it with \
                 --docs {}/corpus.jsonl --base {}/base.fbin",
                dir.display(),
                set.dir.display(),
                set.dir.display()
            );
        };
        let keys = docs.keys();
        if keys.len() != set.corpus_ids.len() {
            bail!(
                "the index at {} holds {} documents, but {} has {}: build it from this data set's corpus",
                dir.display(),
                keys.len(),
                set.dir.join("corpus.jsonl").display(),
                set.corpus_ids.len()
            );
        }
        let corpus: std::collections::HashSet<&str> =
            set.corpus_ids.iter().map(String::as_str).collect();
        for doc in 0..keys.len() as u32 {
            let id = id_text(&keys.key(doc));
            if !corpus.contains(id.as_str()) {
                bail!(
                    "the index at {} holds document {id:?}, which is not in {}: build it from this data set's corpus",
                    dir.display(),
                    set.dir.join("corpus.jsonl").display()
                );
            }
        }
        if let Some(qv) = &set.query_vectors {
            check_queries(&idx, qv)?;
        }
        Ok(LocalIndex {
            idx,
            set,
            list,
            beam,
            scratch: SearchScratch::default(),
        })
    }
}

impl Retriever for LocalIndex<'_> {
    fn dense(&mut self, query_row: usize, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
        let qv = self
            .set
            .query_vectors
            .as_ref()
            .context("the data set has no query.fbin")?
            .vectors::<f32>()?;
        let params = SearchParams {
            k,
            list: self.list,
            beam: self.beam,
        };
        let (hits, _, _) =
            self.idx
                .search_local(&mut self.scratch, qv.row(query_row), params, None)?;
        let keys = self
            .idx
            .documents()
            .context("the index has no documents")?
            .keys();
        Ok(hits.iter().map(|h| (keys.key(h.id), h.distance)).collect())
    }

    fn text(&mut self, text: &str, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
        self.check(Signal::Text)?;
        let docs = self.idx.documents().context("the index has no documents")?;
        let index = docs.text().context("the index has no text fields")?;
        let hits = index.search(&index.analyze(text), None, k, None)?;
        // Ties by user id, as the node breaks them.
        let mut hits: Vec<(UserId, f32)> = hits
            .into_iter()
            .map(|(local, score)| (docs.keys().key(local), score))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(hits)
    }

    fn check(&self, signal: Signal) -> anyhow::Result<()> {
        match signal {
            Signal::Dense => {
                if self.set.query_vectors.is_none() {
                    bail!(
                        "{} has no query.fbin: dense search needs the query vectors, row i for line i of queries.jsonl",
                        self.set.dir.display()
                    );
                }
                Ok(())
            }
            Signal::Text => {
                if self.idx.documents().and_then(|d| d.text()).is_none() {
                    bail!(
                        "the index at {} has no text fields; build with --text-fields",
                        self.idx.dir().display()
                    );
                }
                Ok(())
            }
        }
    }
}

/// A running node searched over HTTP/2: `POST /v1/search` per query, the
/// node fusing hybrid queries itself.
pub struct ServerIndex<'a> {
    /// `took_us` of the last answer.
    took_us: std::cell::Cell<Option<u64>>,
    addr: std::net::SocketAddr,
    url: String,
    set: &'a BeirSet,
    list: usize,
    beam: usize,
}

impl ServerIndex<'_> {
    /// One search; the hits' ids, and the scores under `field`.
    fn search(&self, body: serde_json::Value, field: &str) -> anyhow::Result<Vec<(UserId, f32)>> {
        use shardann_server::client::{exchange, Request, Version};
        let r = exchange(
            self.addr,
            Version::Http2,
            vec![Request::post("/v1/search", body.to_string())],
        )?;
        let (status, bytes) = r
            .into_iter()
            .next()
            .context("no response")?
            .with_context(|| format!("searching {}", self.url))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: the answer is not JSON", self.url))?;
        if status != 200 {
            bail!("{} answered {status}: {}", self.url, v["error"]);
        }
        if v["partial"] == true {
            bail!(
                "{} answered without shards {}: a partial answer would skew the scores",
                self.url,
                v["missing_shards"]
            );
        }
        self.took_us.set(v["took_us"].as_u64());
        let hits = v["hits"].as_array().context("no hits in the answer")?;
        hits.iter()
            .map(|h| {
                let id = UserId::from_json(&h["id"]).context("a hit without an id")?;
                let score = h[field].as_f64().unwrap_or(f64::NAN) as f32;
                Ok((id, score))
            })
            .collect()
    }

    fn vector(&self, row: usize) -> anyhow::Result<Vec<f32>> {
        let qv = self
            .set
            .query_vectors
            .as_ref()
            .context("the data set has no query.fbin")?
            .vectors::<f32>()?;
        Ok(qv.row(row).to_vec())
    }
}

/// A fusion as the API spells it.
fn fusion_json(f: &Fusion) -> serde_json::Value {
    match *f {
        Fusion::Rrf { k } => serde_json::json!({"method": "rrf", "k": k}),
        Fusion::Weighted { alpha, normalize } => serde_json::json!({
            "method": "weighted", "alpha": alpha, "normalize": normalize.name()
        }),
    }
}

impl Retriever for ServerIndex<'_> {
    fn answered_in_us(&self) -> Option<u64> {
        self.took_us.get()
    }

    fn dense(&mut self, query_row: usize, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
        let body = serde_json::json!({
            "vector": self.vector(query_row)?, "k": k,
            "list": self.list.max(k), "beam": self.beam
        });
        self.search(body, "distance")
    }

    fn text(&mut self, text: &str, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
        self.search(serde_json::json!({"text": text, "k": k}), "score")
    }

    fn check(&self, signal: Signal) -> anyhow::Result<()> {
        if signal == Signal::Dense && self.set.query_vectors.is_none() {
            bail!(
                "{} has no query.fbin: dense search needs the query vectors",
                self.set.dir.display()
            );
        }
        Ok(())
    }

    fn fused(
        &mut self,
        query_row: usize,
        text: &str,
        fusion: &Fusion,
        candidates: usize,
        k: usize,
    ) -> anyhow::Result<Option<Vec<UserId>>> {
        let body = serde_json::json!({
            "vector": self.vector(query_row)?, "text": text, "k": k,
            "candidates": candidates, "list": self.list.max(candidates),
            "beam": self.beam, "fusion": fusion_json(fusion)
        });
        Ok(Some(
            self.search(body, "score")?
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
        ))
    }
}

pub fn eval(a: &EvalArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let cfg = RunConfig {
        cutoffs: Cutoffs {
            ndcg: a.k,
            recall: a.recall_at,
            mrr: a.k,
        },
        candidates: a.candidates,
        limit: a.limit,
    };
    let methods: Vec<(String, Method)> = a
        .methods
        .iter()
        .map(|m| (m.name.clone(), m.method.clone()))
        .collect();
    if methods.is_empty() {
        bail!("--methods names no method");
    }
    let needed = cfg.dense_hits(&methods);
    let list = match a.list {
        Some(l) if l < needed => bail!(
            "--list {l} is below the {needed} dense hits the methods need (the largest cut-off, \
             or --candidates for fused methods): give --list {needed} or more"
        ),
        Some(l) => l,
        None => needed.max(1),
    };
    let set = BeirSet::open(&a.dataset)
        .with_context(|| format!("reading the data set {}", a.dataset.display()))?;
    let (mut local, mut remote);
    let (index, where_): (&mut dyn Retriever, String) = match (&a.index, &a.server) {
        (Some(dir), _) => {
            local = LocalIndex::open(dir, &set, &a.read, list, a.beam)?;
            (&mut local, format!("index {}", dir.display()))
        }
        (None, Some(url)) => {
            remote = ServerIndex {
                took_us: std::cell::Cell::new(None),
                addr: shardann_server::client::parse_url(url)?,
                url: url.clone(),
                set: &set,
                list,
                beam: a.beam,
            };
            (&mut remote, format!("node {url}"))
        }
        (None, None) => bail!("give --index DIR or --server URL"),
    };
    let judged = set.judged_queries().count();
    writeln!(
        out,
        "{}: {} documents, {} queries with judgments ({} without, skipped), {} judgments",
        a.dataset.display(),
        set.corpus_ids.len(),
        judged,
        set.queries.len() - judged,
        set.qrels.num_judgments()
    )?;
    writeln!(
        out,
        "{where_}: L={list} W={} candidates={}",
        a.beam, a.candidates
    )?;
    let methods_report = run_methods(&set, index, &methods, cfg)?;
    let c = cfg.cutoffs;
    writeln!(
        out,
        "{:<20} {:>8} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "method",
        format!("nDCG@{}", c.ndcg),
        format!("recall@{}", c.recall),
        format!("MRR@{}", c.mrr),
        "queries",
        "p50_us",
        "p99_us"
    )?;
    for m in &methods_report {
        writeln!(
            out,
            "{:<20} {:>8.4} {:>10.4} {:>8.4} {:>8} {:>10.0} {:>10.0}",
            m.method, m.ndcg, m.recall, m.mrr, m.queries, m.latency_us.p50, m.latency_us.p99
        )?;
    }
    let report = EvalReport {
        tool: "shardann eval",
        version: env!("CARGO_PKG_VERSION"),
        git_commit: git_commit(),
        dataset: a.dataset.display().to_string(),
        index: where_.clone(),
        corpus_documents: set.corpus_ids.len(),
        judged_queries: judged,
        skipped_queries: set.queries.len() - judged,
        judgments: set.qrels.num_judgments(),
        cutoffs: c,
        list,
        beam: a.beam,
        candidates: a.candidates,
        methods: methods_report,
    };
    if let Some(path) = &a.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_bad_ones_are_named() {
        assert_eq!("dense".parse::<Method>(), Ok(Method::Dense));
        assert_eq!("bm25".parse::<Method>(), Ok(Method::Bm25));
        assert_eq!(
            "rrf".parse::<Method>(),
            Ok(Method::Fused(Fusion::Rrf { k: 60.0 }))
        );
        assert_eq!(
            "rrf:20".parse::<Method>(),
            Ok(Method::Fused(Fusion::Rrf { k: 20.0 }))
        );
        assert_eq!(
            "weighted:0.3".parse::<Method>(),
            Ok(Method::Fused(Fusion::Weighted {
                alpha: 0.3,
                normalize: Normalize::MinMax
            }))
        );
        assert_eq!(
            "weighted:0.7:zscore".parse::<Method>(),
            Ok(Method::Fused(Fusion::Weighted {
                alpha: 0.7,
                normalize: Normalize::ZScore
            }))
        );
        for (bad, want) in [
            ("splade", "unknown method \"splade\""),
            ("weighted:1.5", "alpha must be in [0, 1], got 1.5"),
            ("weighted:x", "alpha \"x\" is not a number"),
            ("rrf:0", "k must be a finite number above 0, got 0"),
            ("weighted:0.5:l2", "unknown normalize \"l2\""),
        ] {
            let e = bad.parse::<Method>().unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// A retriever over fixed lists, to check the runner's plumbing.
    struct Fixed;

    impl Retriever for Fixed {
        fn dense(&mut self, row: usize, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
            let ids = ["d0", "d1", "d2", "d3"];
            Ok(ids
                .iter()
                .cycle()
                .skip(row)
                .take(k.min(4))
                .enumerate()
                .map(|(i, d)| (UserId::Str(d.to_string()), i as f32))
                .collect())
        }
        fn text(&mut self, _: &str, k: usize) -> anyhow::Result<Vec<(UserId, f32)>> {
            Ok([("d3", 5.0), ("d2", 1.0)]
                .iter()
                .take(k)
                .map(|(d, s)| (UserId::Str(d.to_string()), *s))
                .collect())
        }
        fn check(&self, _: Signal) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn runs_each_method_through_the_retriever() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("qrels")).unwrap();
        let corpus: String = (0..4)
            .map(|i| format!("{{\"_id\": \"d{i}\", \"text\": \"t\"}}\n"))
            .collect();
        std::fs::write(d.path().join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(
            d.path().join("queries.jsonl"),
            "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \"y\"}\n{\"_id\": \"c\", \"text\": \"z\"}\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\na\td3\t1\nb\td1\t2\n",
        )
        .unwrap();
        let set = BeirSet::open(d.path()).unwrap();
        let methods: Vec<(String, Method)> = ["dense", "bm25", "rrf"]
            .iter()
            .map(|m| (m.to_string(), m.parse().unwrap()))
            .collect();
        let cfg = RunConfig {
            cutoffs: Cutoffs {
                ndcg: 2,
                recall: 4,
                mrr: 2,
            },
            candidates: 4,
            limit: None,
        };
        let r = run_methods(&set, &mut Fixed, &methods, cfg).unwrap();
        // Query a (row 0): dense d0 d1 | d2 d3, text d3 d2; b (row 1):
        // dense d1 d2 | d3 d0; c has no judgments.
        assert_eq!(r[0].queries, 2);
        assert_eq!(r[0].per_query["a"].mrr, 0.0);
        assert_eq!(r[0].per_query["a"].recall, 1.0);
        assert_eq!(r[0].per_query["b"].mrr, 1.0);
        assert_eq!(r[1].per_query["a"].mrr, 1.0);
        assert_eq!(r[1].per_query["b"].recall, 0.0);
        // RRF for a: d3 (4th dense, 1st text) beats d0 (1st dense only).
        assert_eq!(r[2].per_query["a"].mrr, 1.0);
        assert_eq!(r[2].mean_hits, 4.0);
        assert!(r.iter().all(|m| m.latency_us.p99 >= m.latency_us.p50));
    }
}
