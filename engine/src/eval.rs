//! Answer quality: relevance judgments, the standard ranking metrics, and
//! data sets in the BEIR layout.
//!
//! ```text
//!  DIR/corpus.jsonl ─┐
//!  DIR/queries.jsonl ├─ BeirSet::open ──► corpus ids, queries, Qrels (+ base.fbin, query.fbin)
//!  DIR/qrels/test.tsv┘                              │
//!  ranked doc ids per query ───────────────────────┴─► evaluate ──► Evaluation { mean, per query }
//! ```
//!
//! The metrics are those of `pytrec_eval` (trec_eval), which BEIR reports;
//! `bench-datasets/eval_check.py` computes them with pytrec_eval on a small
//! case and `tests::matches_pytrec_eval` holds its numbers:
//!
//! | metric | definition | pytrec_eval |
//! |---|---|---|
//! | nDCG@k | `DCG/IDCG`, `DCG = Σ_{i ≤ k} gain(dᵢ) / log2(i + 1)` (i 1-based), gain = the judged score (0 for unjudged or ≤ 0); IDCG the same over the judged scores > 0 of the query sorted descending, cut at k; 0 when IDCG is 0 | `ndcg_cut.k` |
//! | recall@k | relevant (score ≥ 1) among the first k / relevant judged for the query; 0 when none is | `recall.k` |
//! | MRR@k | 1 / rank of the first relevant (score ≥ 1) document among the first k; 0 if none | `recip_rank` on the run cut to k |
//!
//! **Order.** A ranking here is a list of document ids, best first, in the
//! order the system returned them. pytrec_eval takes scores instead and
//! sorts them itself: score descending, then document id *descending*. The
//! two agree whenever scores are distinct; when a caller has scores with
//! ties and wants pytrec_eval's exact numbers, [`rank_by_score`] sorts as
//! pytrec_eval does. `shardann eval` passes each method's own order (for
//! dense search: distance, then the engine's id), which is what a user of
//! the system sees.
//!
//! **Which queries count.** A query without judgments is skipped (as
//! pytrec_eval skips run queries missing from the qrels): it is not in the
//! mean and [`Evaluation::skipped`] counts it. A judged query counts even
//! when its ranking is empty or none of its judgments is relevant (both
//! score 0, as in pytrec_eval). Queries with judgments but no ranking at all
//! are not seen by [`evaluate`]: give them an empty ranking to count them
//! (`shardann eval` searches every judged query).
//!
//! A document repeated in a ranking counts at its first position only; the
//! repeat takes no rank.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::VectorFile;
use crate::error::{BeirError, Error, Result};

/// Judged scores of one query's documents: document id → score.
pub type Judgments = HashMap<String, i32>;

/// Relevance judgments: for each query, its judged documents and their
/// scores (graded: 0 not relevant, 1, 2, … more relevant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qrels {
    queries: BTreeMap<String, Judgments>,
}

impl Qrels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges `doc` for `query`; returns the score it replaced, if any.
    pub fn insert(&mut self, query: &str, doc: &str, score: i32) -> Option<i32> {
        self.queries
            .entry(query.to_string())
            .or_default()
            .insert(doc.to_string(), score)
    }

    /// The judgments of `query`, if it has any.
    pub fn get(&self, query: &str) -> Option<&Judgments> {
        self.queries.get(query)
    }

    /// Queries with at least one judgment, in id order.
    pub fn queries(&self) -> impl Iterator<Item = (&str, &Judgments)> {
        self.queries.iter().map(|(q, j)| (q.as_str(), j))
    }

    /// Number of judged queries.
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// Number of judgments over all queries.
    pub fn num_judgments(&self) -> usize {
        self.queries.values().map(HashMap::len).sum()
    }
}

/// The cut-offs of the three metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutoffs {
    pub ndcg: usize,
    pub recall: usize,
    pub mrr: usize,
}

impl Default for Cutoffs {
    /// nDCG@10, recall@100, MRR@10: what BEIR and the data sets' READMEs
    /// report.
    fn default() -> Self {
        Cutoffs {
            ndcg: 10,
            recall: 100,
            mrr: 10,
        }
    }
}

impl Cutoffs {
    /// The longest ranking any metric looks at.
    pub fn depth(&self) -> usize {
        self.ndcg.max(self.recall).max(self.mrr)
    }
}

/// One query's metrics, or a mean of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub ndcg: f64,
    pub recall: f64,
    pub mrr: f64,
}

/// The first `k` distinct documents of a ranking, with their 0-based ranks.
fn distinct_top<S: AsRef<str>>(ranking: &[S], k: usize) -> impl Iterator<Item = (usize, &str)> {
    let mut seen = HashSet::new();
    ranking
        .iter()
        .map(AsRef::as_ref)
        .filter(move |d| seen.insert(*d))
        .take(k)
        .enumerate()
}

fn gain(judged: &Judgments, doc: &str) -> f64 {
    judged.get(doc).map_or(0.0, |&s| f64::from(s.max(0)))
}

fn relevant(judged: &Judgments, doc: &str) -> bool {
    judged.get(doc).is_some_and(|&s| s >= 1)
}

/// `1 / log2(rank + 1)` for a 0-based `i` (rank `i + 1`).
fn discount(i: usize) -> f64 {
    1.0 / ((i + 2) as f64).log2()
}

/// nDCG@k with graded gains (pytrec_eval's `ndcg_cut.k`).
pub fn ndcg_at<S: AsRef<str>>(judged: &Judgments, ranking: &[S], k: usize) -> f64 {
    let mut ideal: Vec<f64> = judged
        .values()
        .filter(|&&s| s > 0)
        .map(|&s| f64::from(s))
        .collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| g * discount(i))
        .sum();
    if idcg <= 0.0 {
        return 0.0;
    }
    let dcg: f64 = distinct_top(ranking, k)
        .map(|(i, d)| gain(judged, d) * discount(i))
        .sum();
    dcg / idcg
}

/// recall@k, relevant meaning a score ≥ 1 (pytrec_eval's `recall.k`).
pub fn recall_at<S: AsRef<str>>(judged: &Judgments, ranking: &[S], k: usize) -> f64 {
    let total = judged.values().filter(|&&s| s >= 1).count();
    if total == 0 {
        return 0.0;
    }
    let found = distinct_top(ranking, k)
        .filter(|(_, d)| relevant(judged, d))
        .count();
    found as f64 / total as f64
}

/// MRR@k: the reciprocal rank of the first relevant document among the
/// first k, 0 if there is none (pytrec_eval's `recip_rank` on the ranking
/// cut to k).
pub fn mrr_at<S: AsRef<str>>(judged: &Judgments, ranking: &[S], k: usize) -> f64 {
    distinct_top(ranking, k)
        .find(|(_, d)| relevant(judged, d))
        .map_or(0.0, |(i, _)| 1.0 / (i + 1) as f64)
}

/// All three metrics of one query.
pub fn score_query<S: AsRef<str>>(judged: &Judgments, ranking: &[S], cut: Cutoffs) -> Scores {
    Scores {
        ndcg: ndcg_at(judged, ranking, cut.ndcg),
        recall: recall_at(judged, ranking, cut.recall),
        mrr: mrr_at(judged, ranking, cut.mrr),
    }
}

/// Orders a scored run as pytrec_eval (trec_eval) does before measuring:
/// score descending, then document id descending (byte order).
pub fn rank_by_score<S: AsRef<str>>(mut run: Vec<(S, f64)>) -> Vec<S> {
    run.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.0.as_ref().cmp(a.0.as_ref()))
    });
    run.into_iter().map(|(d, _)| d).collect()
}

/// The metrics of a set of rankings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    pub cutoffs: Cutoffs,
    /// Queries measured (those with judgments).
    pub queries: usize,
    /// Rankings given for queries without judgments, left out.
    pub skipped: usize,
    /// The mean over the measured queries (0 when there are none).
    pub mean: Scores,
    /// Each measured query's metrics.
    pub per_query: BTreeMap<String, Scores>,
}

/// Measures each `(query id, ranking)` against `qrels`; see the module
/// documentation for which queries count.
pub fn evaluate<Q, S, R>(qrels: &Qrels, runs: R, cut: Cutoffs) -> Evaluation
where
    Q: AsRef<str>,
    S: AsRef<str>,
    R: IntoIterator<Item = (Q, Vec<S>)>,
{
    let mut e = Evaluation {
        cutoffs: cut,
        ..Evaluation::default()
    };
    let mut sum = Scores::default();
    for (query, ranking) in runs {
        let Some(judged) = qrels.get(query.as_ref()) else {
            e.skipped += 1;
            continue;
        };
        let s = score_query(judged, &ranking, cut);
        sum.ndcg += s.ndcg;
        sum.recall += s.recall;
        sum.mrr += s.mrr;
        e.per_query.insert(query.as_ref().to_string(), s);
    }
    e.queries = e.per_query.len();
    if e.queries > 0 {
        let n = e.queries as f64;
        e.mean = Scores {
            ndcg: sum.ndcg / n,
            recall: sum.recall / n,
            mrr: sum.mrr / n,
        };
    }
    e
}

/// File names of the BEIR layout.
pub const CORPUS_FILE: &str = "corpus.jsonl";
pub const QUERIES_FILE: &str = "queries.jsonl";
pub const QRELS_FILE: &str = "qrels/test.tsv";
pub const BASE_FILE: &str = "base.fbin";
pub const QUERY_VECTORS_FILE: &str = "query.fbin";

/// A query of a BEIR set.
#[derive(Debug, Clone, PartialEq)]
pub struct BeirQuery {
    pub id: String,
    pub text: String,
}

/// A data set in the BEIR layout, checked: `corpus.jsonl` (`_id`, `title`,
/// `text`, one document per line), `queries.jsonl` (`_id`, `text`),
/// `qrels/test.tsv` (header `query-id corpus-id score`, tab-separated, then one
/// tab-separated judgment per line, integer scores), and optionally
/// `base.fbin` / `query.fbin` whose row i is the vector of the i-th
/// corpus / query line.
///
/// Only the corpus ids are kept (the index holds the texts); ids are
/// strings (a JSON integer `_id` is taken as its decimal text). Every
/// judgment must name a query of `queries.jsonl` and a document of the
/// corpus.
#[derive(Debug)]
pub struct BeirSet {
    pub dir: PathBuf,
    /// Corpus ids in line order (row i of `base.fbin`).
    pub corpus_ids: Vec<String>,
    /// Queries in line order (row i of `query.fbin`).
    pub queries: Vec<BeirQuery>,
    pub qrels: Qrels,
    /// `base.fbin`, if the set has it.
    pub base: Option<VectorFile>,
    /// `query.fbin`, if the set has it.
    pub query_vectors: Option<VectorFile>,
}

impl BeirSet {
    /// Reads and checks the set in `dir`. Errors name the file, and the line
    /// for a bad line.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let corpus_path = dir.join(CORPUS_FILE);
        let queries_path = dir.join(QUERIES_FILE);
        let qrels_path = dir.join(QRELS_FILE);
        // Name every missing file before reading any.
        for p in [&corpus_path, &queries_path, &qrels_path] {
            if !p.is_file() {
                return Err(Error::beir(p, BeirError::Missing));
            }
        }
        let corpus_ids: Vec<String> = read_jsonl(&corpus_path, false)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if corpus_ids.is_empty() {
            return Err(Error::beir(
                &corpus_path,
                BeirError::Empty { what: "documents" },
            ));
        }
        let queries: Vec<BeirQuery> = read_jsonl(&queries_path, true)?
            .into_iter()
            .map(|(id, text)| BeirQuery {
                id,
                text: text.unwrap_or_default(),
            })
            .collect();
        if queries.is_empty() {
            return Err(Error::beir(
                &queries_path,
                BeirError::Empty { what: "queries" },
            ));
        }
        let qrels = {
            let docs: HashSet<&str> = corpus_ids.iter().map(String::as_str).collect();
            let qs: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
            read_qrels(&qrels_path, &qs, &docs)?
        };
        let base = open_rows(&dir.join(BASE_FILE), CORPUS_FILE, corpus_ids.len())?;
        let query_vectors = open_rows(&dir.join(QUERY_VECTORS_FILE), QUERIES_FILE, queries.len())?;
        Ok(BeirSet {
            dir,
            corpus_ids,
            queries,
            qrels,
            base,
            query_vectors,
        })
    }

    /// The queries that have judgments, with their line index (row of
    /// `query.fbin`), in line order: the ones an evaluation searches.
    pub fn judged_queries(&self) -> impl Iterator<Item = (usize, &BeirQuery)> {
        self.queries
            .iter()
            .enumerate()
            .filter(|(_, q)| self.qrels.get(&q.id).is_some())
    }
}

fn open_rows(path: &Path, lines_of: &'static str, lines: usize) -> Result<Option<VectorFile>> {
    if !path.exists() {
        return Ok(None);
    }
    let f = VectorFile::open(path)?;
    if f.len() != lines {
        return Err(Error::beir(
            path,
            BeirError::RowCount {
                rows: f.len(),
                lines_of,
                lines,
            },
        ));
    }
    Ok(Some(f))
}

/// One line of `corpus.jsonl` or `queries.jsonl`: only what is read.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "_id")]
    id: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
}

/// `(id, text)` of every non-blank line; `text` is required when
/// `want_text`. Ids must be unique.
fn read_jsonl(path: &Path, want_text: bool) -> Result<Vec<(String, Option<String>)>> {
    let bad = |e: BeirError| Error::beir(path, e);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let text = line.map_err(|e| Error::io(path, e))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&text).map_err(|source| {
            bad(BeirError::NotJson {
                line: line_no,
                source,
            })
        })?;
        let id = match parsed.id {
            None => return Err(bad(BeirError::MissingId { line: line_no })),
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) if n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(bad(BeirError::BadId {
                    line: line_no,
                    got: other.to_string(),
                }))
            }
        };
        if let Some(&first) = first_line.get(&id) {
            return Err(bad(BeirError::DuplicateId {
                line: line_no,
                id,
                first,
            }));
        }
        let text = match parsed.text {
            Some(serde_json::Value::String(s)) => Some(s),
            _ if want_text => return Err(bad(BeirError::MissingText { line: line_no, id })),
            _ => None,
        };
        first_line.insert(id.clone(), line_no);
        out.push((id, text));
    }
    Ok(out)
}

fn read_qrels(path: &Path, queries: &HashSet<&str>, docs: &HashSet<&str>) -> Result<Qrels> {
    let bad = |e: BeirError| Error::beir(path, e);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut qrels = Qrels::new();
    let mut first_line: HashMap<(String, String), usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        let line = line.trim_end_matches('\r');
        if line_no == 1 {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if fields != ["query-id", "corpus-id", "score"] {
                return Err(bad(BeirError::BadHeader {
                    got: line.to_string(),
                }));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [query, doc, score] = fields[..] else {
            return Err(bad(BeirError::BadJudgment {
                line: line_no,
                why: format!(
                    "expected 3 tab-separated fields (query-id, corpus-id, score), got {}",
                    fields.len()
                ),
            }));
        };
        let score: i32 = score.trim().parse().map_err(|_| {
            bad(BeirError::BadJudgment {
                line: line_no,
                why: format!("score {score:?} is not an integer"),
            })
        })?;
        if !queries.contains(query) {
            return Err(bad(BeirError::UnknownQuery {
                line: line_no,
                id: query.to_string(),
            }));
        }
        if !docs.contains(doc) {
            return Err(bad(BeirError::UnknownDoc {
                line: line_no,
                id: doc.to_string(),
            }));
        }
        let key = (query.to_string(), doc.to_string());
        if let Some(&first) = first_line.get(&key) {
            return Err(bad(BeirError::JudgedTwice {
                line: line_no,
                query: key.0,
                doc: key.1,
                first,
            }));
        }
        first_line.insert(key, line_no);
        qrels.insert(query, doc, score);
    }
    if qrels.is_empty() {
        return Err(bad(BeirError::Empty { what: "judgments" }));
    }
    Ok(qrels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qrels(entries: &[(&str, &[(&str, i32)])]) -> Qrels {
        let mut q = Qrels::new();
        for (query, docs) in entries {
            for (d, s) in *docs {
                q.insert(query, d, *s);
            }
        }
        q
    }

    fn xs(from: usize, to: usize) -> Vec<String> {
        (from..=to).map(|i| format!("x{i}")).collect()
    }

    /// The case of `bench-datasets/eval_check.py`, and the numbers it
    /// printed with pytrec_eval-terrier 0.5.11 (`ndcg_cut.k`, `recall.k`,
    /// `recip_rank` on runs cut to k). The runs' scores are distinct except
    /// q2's tie, ordered here as pytrec_eval orders it (id descending).
    #[test]
    fn matches_pytrec_eval() {
        let mut judged = qrels(&[
            (
                "q1",
                &[("d1", 2), ("d2", 1), ("d3", 1), ("d4", 0), ("d9", 1)],
            ),
            ("q2", &[("d5", 1), ("d6", 2)]),
            ("q3", &[("d7", 1)]),
            ("q4", &[("d8", 2), ("d1", 1)]),
            ("q5", &[("d2", 0), ("d3", 0)]),
            ("q7", &[("d1", 1)]),
        ]);
        for i in 0..7 {
            judged.insert("q8", &format!("r{i}"), if i < 3 { 2 } else { 1 });
        }
        judged.insert("q8", "x3", 0);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut q1 = s(&["x1", "d2", "x2", "d4"]);
        q1.extend(xs(3, 9));
        q1.extend(s(&["d1", "x10", "d3", "x11"]));
        let q2 = rank_by_score(vec![("x1", 3.0), ("d5", 2.0), ("d6", 2.0), ("x2", 1.0)]);
        assert_eq!(q2, ["x1", "d6", "d5", "x2"]);
        let mut q3 = xs(1, 11);
        q3.extend(s(&["d7", "x12", "x13"]));
        let runs: Vec<(&str, Vec<String>)> = vec![
            ("q1", q1),
            ("q2", s(&q2)),
            ("q3", q3),
            ("q4", s(&["x1", "x2", "x3", "d4"])),
            ("q5", s(&["d2", "d3", "x1"])),
            ("q6", s(&["d1", "d2"])),
            ("q7", vec![]),
            (
                "q8",
                s(&[
                    "r5", "x1", "r0", "r1", "x2", "x3", "r6", "x4", "x5", "x6", "r2", "x7", "r10",
                ]),
            ),
        ];
        // query, k, ndcg, recall, mrr — as printed by eval_check.py.
        #[rustfmt::skip]
        let want: &[(&str, usize, f64, f64, f64)] = &[
            ("q1", 5, 0.17714752793103522, 0.25, 0.5),
            ("q1", 10, 0.17714752793103522, 0.25, 0.5),
            ("q1", 100, 0.4007641390821534, 0.75, 0.5),
            ("q2", 5, 0.66967181649423, 1.0, 0.5),
            ("q2", 10, 0.66967181649423, 1.0, 0.5),
            ("q2", 100, 0.66967181649423, 1.0, 0.5),
            ("q3", 5, 0.0, 0.0, 0.0),
            ("q3", 10, 0.0, 0.0, 0.0),
            ("q3", 100, 0.27023815442731974, 1.0, 0.08333333333333333),
            ("q4", 100, 0.0, 0.0, 0.0),
            ("q5", 100, 0.0, 0.0, 0.0),
            ("q7", 100, 0.0, 0.0, 0.0),
            ("q8", 5, 0.563326255972632, 0.42857142857142855, 1.0),
            ("q8", 10, 0.5537745796327886, 0.5714285714285714, 1.0),
            ("q8", 100, 0.6504798525365655, 0.7142857142857143, 1.0),
        ];
        #[rustfmt::skip]
        let want_mean: &[(usize, f64, f64, f64)] = &[
            (5, 0.2014493714854139, 0.23979591836734696, 0.2857142857142857),
            (10, 0.2000848462940077, 0.2602040816326531, 0.2857142857142857),
            (100, 0.2844505660771812, 0.49489795918367346, 0.29761904761904756),
        ];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        for &(k, ndcg, recall, mrr) in want_mean {
            let cut = Cutoffs {
                ndcg: k,
                recall: k,
                mrr: k,
            };
            let e = evaluate(&judged, runs.clone(), cut);
            assert_eq!(e.queries, 7, "q6 has no judgments");
            assert_eq!(e.skipped, 1);
            assert!(
                close(e.mean.ndcg, ndcg),
                "nDCG@{k}: {} vs {ndcg}",
                e.mean.ndcg
            );
            assert!(
                close(e.mean.recall, recall),
                "recall@{k}: {}",
                e.mean.recall
            );
            assert!(close(e.mean.mrr, mrr), "MRR@{k}: {}", e.mean.mrr);
            for &(q, qk, ndcg, recall, mrr) in want {
                if qk == k {
                    let got = e.per_query[q];
                    assert!(close(got.ndcg, ndcg), "{q} nDCG@{k}: {got:?} vs {ndcg}");
                    assert!(close(got.recall, recall), "{q} recall@{k}: {got:?}");
                    assert!(close(got.mrr, mrr), "{q} MRR@{k}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn repeats_take_no_rank() {
        let j = qrels(&[("q", &[("a", 1), ("b", 1)])]);
        let j = j.get("q").unwrap();
        assert_eq!(mrr_at(j, &["x", "x", "a"], 2), 0.5);
        assert_eq!(recall_at(j, &["a", "a", "b"], 2), 1.0);
        assert_eq!(ndcg_at(j, &["a", "a", "b"], 2), 1.0);
    }

    fn case() -> impl Strategy<Value = (Judgments, Vec<String>, usize)> {
        let judged =
            prop::collection::hash_map((0u8..30).prop_map(|d| format!("d{d}")), -1i32..4, 0..15);
        let ranking = prop::collection::vec((0u8..40).prop_map(|d| format!("d{d}")), 0..40);
        (judged, ranking, 1usize..50)
    }

    proptest! {
        #[test]
        fn metrics_lie_in_zero_one((judged, ranking, k) in case()) {
            for m in [ndcg_at(&judged, &ranking, k), recall_at(&judged, &ranking, k), mrr_at(&judged, &ranking, k)] {
                prop_assert!((0.0..=1.0 + 1e-12).contains(&m), "{m}");
            }
        }

        /// The ideal ranking (judged documents by score, descending) scores
        /// nDCG 1 at every k and MRR 1 when anything is relevant; recall@k
        /// is 1 from k = number relevant on.
        #[test]
        fn a_perfect_ranking_scores_one((judged, _, k) in case()) {
            let mut ideal: Vec<(&String, i32)> = judged.iter().map(|(d, s)| (d, *s)).collect();
            ideal.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let ranking: Vec<&String> = ideal.iter().map(|(d, _)| *d).collect();
            let relevant = judged.values().filter(|&&s| s >= 1).count();
            if relevant > 0 {
                prop_assert!((ndcg_at(&judged, &ranking, k) - 1.0).abs() < 1e-12);
                prop_assert_eq!(mrr_at(&judged, &ranking, k), 1.0);
                prop_assert_eq!(recall_at(&judged, &ranking, relevant.max(1)), 1.0);
                prop_assert!((recall_at(&judged, &ranking, k) - (k.min(relevant) as f64 / relevant as f64)).abs() < 1e-12);
            } else {
                prop_assert_eq!(ndcg_at(&judged, &ranking, k), 0.0);
                prop_assert_eq!(recall_at(&judged, &ranking, k), 0.0);
                prop_assert_eq!(mrr_at(&judged, &ranking, k), 0.0);
            }
        }

        /// Recall grows with k; what lies past k changes nothing at k.
        #[test]
        fn cutoffs_behave((judged, ranking, k) in case(), tail in prop::collection::vec((0u8..40).prop_map(|d| format!("d{d}")), 0..10)) {
            prop_assert!(recall_at(&judged, &ranking, k) <= recall_at(&judged, &ranking, k + 1));
            let mut longer = ranking.clone();
            if distinct_top(&ranking, k).count() == k {
                longer.extend(tail);
                prop_assert_eq!(ndcg_at(&judged, &ranking, k), ndcg_at(&judged, &longer, k));
                prop_assert_eq!(recall_at(&judged, &ranking, k), recall_at(&judged, &longer, k));
                prop_assert_eq!(mrr_at(&judged, &ranking, k), mrr_at(&judged, &longer, k));
            }
        }

        /// Moving a relevant document up past an irrelevant one never lowers
        /// nDCG or MRR.
        #[test]
        fn promoting_a_relevant_document_helps((judged, ranking, k) in case(), at in 0usize..40) {
            let mut ranking = ranking;
            ranking.dedup();
            if at + 1 < ranking.len() {
                let (a, b) = (&ranking[at], &ranking[at + 1]);
                if gain(&judged, b) > gain(&judged, a) && !ranking[..at].contains(b) && !ranking[..at].contains(a) {
                    let mut better = ranking.clone();
                    better.swap(at, at + 1);
                    prop_assert!(ndcg_at(&judged, &better, k) >= ndcg_at(&judged, &ranking, k) - 1e-12);
                    prop_assert!(mrr_at(&judged, &better, k) >= mrr_at(&judged, &ranking, k));
                }
            }
        }
    }

    fn write_set(dir: &Path, corpus: &str, queries: &str, qrels: &str) {
        std::fs::create_dir_all(dir.join("qrels")).unwrap();
        std::fs::write(dir.join(CORPUS_FILE), corpus).unwrap();
        std::fs::write(dir.join(QUERIES_FILE), queries).unwrap();
        std::fs::write(dir.join(QRELS_FILE), qrels).unwrap();
    }

    const CORPUS: &str = "{\"_id\": \"d0\", \"title\": \"t\", \"text\": \"a\"}\n\
                          {\"_id\": \"d1\", \"title\": \"\", \"text\": \"b\"}\n\
                          \n\
                          {\"_id\": 7, \"text\": \"c\"}\n";
    const QUERIES: &str =
        "{\"_id\": \"q0\", \"text\": \"find a\"}\n{\"_id\": \"q1\", \"text\": \"find b\"}\n";
    const QRELS: &str = "query-id\tcorpus-id\tscore\nq0\td0\t2\nq0\t7\t1\r\nq1\td1\t0\n";

    #[test]
    fn reads_a_beir_set() {
        let d = tempfile::tempdir().unwrap();
        write_set(d.path(), CORPUS, QUERIES, QRELS);
        let set = BeirSet::open(d.path()).unwrap();
        assert_eq!(set.corpus_ids, ["d0", "d1", "7"]);
        assert_eq!(set.queries[1].text, "find b");
        assert_eq!(set.qrels.len(), 2);
        assert_eq!(set.qrels.num_judgments(), 3);
        assert_eq!(set.qrels.get("q0").unwrap()["7"], 1);
        assert!(set.base.is_none() && set.query_vectors.is_none());
        assert_eq!(set.judged_queries().count(), 2);

        // Vector files must have a row per line.
        crate::data::write_vectors(d.path().join(BASE_FILE), 2, &[0f32; 6]).unwrap();
        crate::data::write_vectors(d.path().join(QUERY_VECTORS_FILE), 2, &[0f32; 6]).unwrap();
        let e = BeirSet::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("query.fbin: has 3 rows, but queries.jsonl has 2 entries"),
            "{e}"
        );
        crate::data::write_vectors(d.path().join(QUERY_VECTORS_FILE), 2, &[0f32; 4]).unwrap();
        let set = BeirSet::open(d.path()).unwrap();
        assert_eq!(set.base.as_ref().map(VectorFile::len), Some(3));
    }

    #[test]
    fn bad_sets_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = BeirSet::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("corpus.jsonl: missing"), "{e}");
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\n",
                "test.tsv: line 1: the header must be",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\nq0\td0\n",
                "test.tsv: line 2: expected 3 tab-separated fields",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\nq0\td0\thigh\n",
                "line 2: score \"high\" is not an integer",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\nq0\td0\t1\nq9\td0\t1\n",
                "test.tsv: line 3: query id \"q9\" is not in queries.jsonl",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\nq0\td5\t1\n",
                "line 2: corpus id \"d5\" is not in corpus.jsonl",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td0\t2\n",
                "line 3: query \"q0\" judges \"d0\" again (first on line 2)",
            ),
            (
                CORPUS,
                QUERIES,
                "query-id\tcorpus-id\tscore\n",
                "test.tsv: has no judgments",
            ),
            (
                "{\"_id\": \"d0\"}\n{\"title\": \"x\"}\n",
                QUERIES,
                QRELS,
                "corpus.jsonl: line 2: no \"_id\"",
            ),
            (
                "{\"_id\": \"d0\"}\n{\"_id\": \"d0\"}\n",
                QUERIES,
                QRELS,
                "corpus.jsonl: line 2: id \"d0\" was already used on line 1",
            ),
            (
                "{\"_id\": [1]}\n",
                QUERIES,
                QRELS,
                "line 1: \"_id\" must be a string",
            ),
            (
                "{\"_id\": \"d0\"\n",
                QUERIES,
                QRELS,
                "corpus.jsonl: line 1: not JSON",
            ),
            ("\n", QUERIES, QRELS, "corpus.jsonl: has no documents"),
            (
                CORPUS,
                "{\"_id\": \"q0\"}\n",
                QRELS,
                "queries.jsonl: line 1: query \"q0\" has no \"text\"",
            ),
        ];
        for (corpus, queries, qrels, want) in cases {
            write_set(d.path(), corpus, queries, qrels);
            let e = BeirSet::open(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        std::fs::remove_file(d.path().join(QRELS_FILE)).unwrap();
        let e = BeirSet::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("qrels/test.tsv: missing: a BEIR data set has"),
            "{e}"
        );
    }
}
