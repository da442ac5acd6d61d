//! Fusing a dense (vector) and a text (BM25) ranked list into one.
//!
//! ```text
//!  dense: [(key, distance)] best first ──┐
//!                                        ├─ Fusion::fuse ──► [Fused { key, score, ranks }] best first
//!  text:  [(key, bm25)]     best first ──┘
//! ```
//!
//! Two families, as retrieval systems offer them:
//!
//! * **Reciprocal rank fusion** ([`Fusion::Rrf`], Cormack et al. 2009):
//!   `score(d) = Σ 1 / (k + rank(d))` over the lists that hold `d`, ranks
//!   1-based positions in the list as given; `k` defaults to 60. Scores are
//!   ignored, only order counts.
//! * **Weighted** ([`Fusion::Weighted`]):
//!   `score(d) = α · norm(dense)(d) + (1 − α) · norm(text)(d)`, each list
//!   normalised on its own ([`Normalize`]): min-max, z-score, or Qdrant's
//!   distribution-based fusion (DBSF: mean ± 3 σ mapped to [0, 1]).
//!
//! Conventions (the same for every caller, so a server and `shardann eval`
//! rank alike):
//!
//! * Dense scores are **distances** (smaller is closer, as every metric of
//!   the engine returns them); they are negated into similarities before
//!   normalising, so larger is better in both lists from there on. Text
//!   scores are BM25, larger is better.
//! * A key that appears twice in one list counts once, at its first (best)
//!   position. A score that is not finite (a padded `+∞` distance, say) makes
//!   its entry absent from that list.
//! * A document missing from a list gets from that list: 0 with min-max and
//!   DBSF (below every normalised score of the list but ties with its worst
//!   min-max one), and with z-score the list's lowest normalised score (a
//!   missing document is taken to be as weak as the weakest one retrieved;
//!   0, the list's mean, would put it above half the retrieved ones).
//! * Degenerate lists: a list whose scores are all equal (or has one entry)
//!   normalises to 1 with min-max (each entry is the list's best), 0 with
//!   z-score, 0.5 with DBSF (as Qdrant does).
//! * Output: descending fused score, ties by ascending key, so the result
//!   is a function of the inputs alone (not of hash order or input order).
//!
//! Generic over the key: `(shard, local id)` inside a node, user ids across
//! the API, strings in `shardann eval`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::FusionError;

/// RRF's `k` when none is given (Cormack et al.; Elasticsearch, OpenSearch
/// and Qdrant use it too).
pub const DEFAULT_RRF_K: f64 = 60.0;

/// α of [`Fusion::Weighted`] when none is given: both signals alike.
pub const DEFAULT_ALPHA: f64 = 0.5;

/// How [`Fusion::Weighted`] brings each list's scores to one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalize {
    /// `(s − min) / (max − min)` over the list: the best is 1, the worst 0.
    #[default]
    MinMax,
    /// `(s − mean) / σ` (population σ over the list).
    ZScore,
    /// Qdrant's distribution-based score fusion: `(s − (μ − 3σ)) / 6σ` with
    /// the sample σ, so most scores land in [0, 1] and an outlier does not
    /// squash the rest as it does with min-max.
    Dbsf,
}

impl Normalize {
    pub fn name(self) -> &'static str {
        match self {
            Normalize::MinMax => "minmax",
            Normalize::ZScore => "zscore",
            Normalize::Dbsf => "dbsf",
        }
    }

    fn parse(name: &str) -> Result<Self, FusionError> {
        match name {
            "minmax" => Ok(Normalize::MinMax),
            "zscore" => Ok(Normalize::ZScore),
            "dbsf" => Ok(Normalize::Dbsf),
            _ => Err(FusionError::UnknownNormalize {
                name: name.to_string(),
            }),
        }
    }
}

impl fmt::Display for Normalize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Normalize {
    type Err = FusionError;
    fn from_str(s: &str) -> Result<Self, FusionError> {
        Normalize::parse(s)
    }
}

/// How to fuse a dense and a text list. Build it with [`Fusion::rrf`] or
/// [`Fusion::weighted`], or deserialize it from the API's shape:
///
/// ```json
/// {"method": "rrf", "k": 60}
/// {"method": "weighted", "alpha": 0.7, "normalize": "minmax"}
/// {"method": "dbsf"}
/// ```
///
/// `k` defaults to 60, `alpha` to 0.5, `normalize` to `"minmax"`;
/// `{"method": "dbsf"}` is short for `weighted` with α = 0.5 and
/// `"normalize": "dbsf"`, which ranks as Qdrant's DBSF does (its plain sum of
/// the two normalised lists is twice this). Values out of range, unknown
/// methods, unknown normalisations and fields that do not belong to the
/// method are errors that name them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "RawFusion")]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k` (> 0).
    Rrf { k: f64 },
    /// `alpha · dense + (1 − alpha) · text` after normalising each list;
    /// `alpha` in [0, 1] (1: dense alone, 0: text alone).
    Weighted { alpha: f64, normalize: Normalize },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: DEFAULT_RRF_K }
    }
}

/// One fused result.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    pub key: K,
    /// The fused score: larger is better.
    pub score: f64,
    /// 1-based position in the dense list, if the key is in it.
    pub dense_rank: Option<u32>,
    /// 1-based position in the text list, if the key is in it.
    pub text_rank: Option<u32>,
}

impl Fusion {
    /// RRF with constant `k`, checked.
    pub fn rrf(k: f64) -> Result<Self, FusionError> {
        let f = Fusion::Rrf { k };
        f.validate()?;
        Ok(f)
    }

    /// Weighted fusion, checked.
    pub fn weighted(alpha: f64, normalize: Normalize) -> Result<Self, FusionError> {
        let f = Fusion::Weighted { alpha, normalize };
        f.validate()?;
        Ok(f)
    }

    /// Checks `k > 0` (finite) and `alpha` in [0, 1].
    pub fn validate(&self) -> Result<(), FusionError> {
        match *self {
            Fusion::Rrf { k } if !(k.is_finite() && k > 0.0) => Err(FusionError::BadK { k }),
            Fusion::Weighted { alpha, .. } if !(0.0..=1.0).contains(&alpha) => {
                Err(FusionError::BadAlpha { alpha })
            }
            _ => Ok(()),
        }
    }

    /// Fuses `dense` (key, distance: smaller is better) and `text` (key,
    /// BM25: larger is better), both best first, into one list, best first.
    /// Every key of either list appears once. See the module's conventions.
    pub fn fuse<K: Ord + Clone>(&self, dense: &[(K, f32)], text: &[(K, f32)]) -> Vec<Fused<K>> {
        // Dense distances become similarities: larger is better in both.
        let dense = Ranked::new(dense, true);
        let text = Ranked::new(text, false);
        let mut fused: BTreeMap<&K, Fused<K>> = BTreeMap::new();
        for (list, is_dense) in [(&dense, true), (&text, false)] {
            for (rank, (key, _)) in list.entries.iter().enumerate() {
                let e = fused.entry(*key).or_insert_with(|| Fused {
                    key: (*key).clone(),
                    score: 0.0,
                    dense_rank: None,
                    text_rank: None,
                });
                let rank = Some(rank as u32 + 1);
                if is_dense {
                    e.dense_rank = rank;
                } else {
                    e.text_rank = rank;
                }
            }
        }
        match *self {
            Fusion::Rrf { k } => {
                let term = |rank: Option<u32>| rank.map_or(0.0, |r| 1.0 / (k + f64::from(r)));
                for e in fused.values_mut() {
                    e.score = term(e.dense_rank) + term(e.text_rank);
                }
            }
            Fusion::Weighted { alpha, normalize } => {
                let nd = Normalized::of(&dense, normalize);
                let nt = Normalized::of(&text, normalize);
                for e in fused.values_mut() {
                    e.score = alpha * nd.get(e.dense_rank) + (1.0 - alpha) * nt.get(e.text_rank);
                }
            }
        }
        let mut out: Vec<Fused<K>> = fused.into_values().collect();
        // BTreeMap order is ascending key; a stable sort by score keeps it
        // for ties.
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }
}

impl fmt::Display for Fusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fusion::Rrf { k } => write!(f, "rrf(k={k})"),
            Fusion::Weighted { alpha, normalize } => {
                write!(f, "weighted(alpha={alpha}, {normalize})")
            }
        }
    }
}

/// A list with repeats and non-finite scores removed, scores oriented so
/// that larger is better.
struct Ranked<'a, K> {
    entries: Vec<(&'a K, f64)>,
}

impl<'a, K: Ord> Ranked<'a, K> {
    fn new(list: &'a [(K, f32)], negate: bool) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        let entries = list
            .iter()
            .filter(|(_, s)| s.is_finite())
            .filter(|(k, _)| seen.insert(k))
            .map(|(k, s)| {
                (
                    k,
                    if negate {
                        -f64::from(*s)
                    } else {
                        f64::from(*s)
                    },
                )
            })
            .collect();
        Ranked { entries }
    }
}

/// A list's normalised scores by 1-based rank, and what an absent key gets.
struct Normalized {
    scores: Vec<f64>,
    absent: f64,
}

impl Normalized {
    fn of<K>(list: &Ranked<'_, K>, how: Normalize) -> Self {
        let s: Vec<f64> = list.entries.iter().map(|(_, s)| *s).collect();
        if s.is_empty() {
            return Normalized {
                scores: s,
                absent: 0.0,
            };
        }
        let n = s.len() as f64;
        let min = s.iter().copied().fold(f64::INFINITY, f64::min);
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = s.iter().sum::<f64>() / n;
        let ss = s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
        match how {
            Normalize::MinMax => {
                let scores = if max > min {
                    s.iter().map(|x| (x - min) / (max - min)).collect()
                } else {
                    vec![1.0; s.len()]
                };
                Normalized {
                    scores,
                    absent: 0.0,
                }
            }
            Normalize::ZScore => {
                let sd = (ss / n).sqrt();
                if sd > 0.0 {
                    Normalized {
                        scores: s.iter().map(|x| (x - mean) / sd).collect(),
                        absent: (min - mean) / sd,
                    }
                } else {
                    Normalized {
                        scores: vec![0.0; s.len()],
                        absent: 0.0,
                    }
                }
            }
            Normalize::Dbsf => {
                let sd = if s.len() > 1 {
                    (ss / (n - 1.0)).sqrt()
                } else {
                    0.0
                };
                let scores = if sd > 0.0 {
                    let low = mean - 3.0 * sd;
                    s.iter().map(|x| (x - low) / (6.0 * sd)).collect()
                } else {
                    vec![0.5; s.len()]
                };
                Normalized {
                    scores,
                    absent: 0.0,
                }
            }
        }
    }

    fn get(&self, rank: Option<u32>) -> f64 {
        rank.and_then(|r| self.scores.get(r as usize - 1))
            .copied()
            .unwrap_or(self.absent)
    }
}

/// The API's JSON shape, before it is checked.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFusion {
    method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalize: Option<String>,
}

impl TryFrom<RawFusion> for Fusion {
    type Error = FusionError;
    fn try_from(r: RawFusion) -> Result<Self, FusionError> {
        let not_for = |field: &str, method: &str| FusionError::Malformed {
            why: format!("{field:?} does not apply to method {method:?}"),
        };
        match r.method.as_str() {
            "rrf" => {
                if r.alpha.is_some() {
                    return Err(not_for("alpha", "rrf"));
                }
                if r.normalize.is_some() {
                    return Err(not_for("normalize", "rrf"));
                }
                Fusion::rrf(r.k.unwrap_or(DEFAULT_RRF_K))
            }
            "weighted" | "dbsf" => {
                if r.k.is_some() {
                    return Err(not_for("k", &r.method));
                }
                let normalize = match (r.method.as_str(), r.normalize) {
                    ("dbsf", Some(_)) => return Err(not_for("normalize", "dbsf")),
                    ("dbsf", None) => Normalize::Dbsf,
                    (_, Some(n)) => Normalize::parse(&n)?,
                    (_, None) => Normalize::MinMax,
                };
                Fusion::weighted(r.alpha.unwrap_or(DEFAULT_ALPHA), normalize)
            }
            _ => Err(FusionError::UnknownMethod { method: r.method }),
        }
    }
}

impl Serialize for Fusion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = match *self {
            Fusion::Rrf { k } => RawFusion {
                method: "rrf".into(),
                k: Some(k),
                alpha: None,
                normalize: None,
            },
            Fusion::Weighted { alpha, normalize } => RawFusion {
                method: "weighted".into(),
                k: None,
                alpha: Some(alpha),
                normalize: Some(normalize.name().into()),
            },
        };
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys<K: Clone>(f: &[Fused<K>]) -> Vec<K> {
        f.iter().map(|x| x.key.clone()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn rrf_by_hand() {
        // dense: a, b, c; text: c, d, a.
        let dense = [("a", 0.1), ("b", 0.2), ("c", 0.3)];
        let text = [("c", 9.0), ("d", 5.0), ("a", 1.0)];
        let f = Fusion::rrf(60.0).unwrap().fuse(&dense, &text);
        let want = |key: &str| match key {
            "a" => 1.0 / 61.0 + 1.0 / 63.0,
            "b" => 1.0 / 62.0,
            "c" => 1.0 / 63.0 + 1.0 / 61.0,
            "d" => 1.0 / 62.0,
            _ => unreachable!(),
        };
        for x in &f {
            assert!(close(x.score, want(x.key)), "{x:?}");
        }
        // a and c tie (1/61 + 1/63), as do b and d: ascending key.
        assert_eq!(keys(&f), ["a", "c", "b", "d"]);
        assert_eq!(f[1].dense_rank, Some(3));
        assert_eq!(f[1].text_rank, Some(1));
        assert_eq!(f[3].dense_rank, None);
    }

    #[test]
    fn rrf_ignores_scores_and_counts_repeats_once() {
        let dense = [(1u32, 5.0), (2, 5.0), (1, 6.0), (3, f32::INFINITY)];
        let f = Fusion::rrf(1.0).unwrap().fuse(&dense, &[]);
        assert_eq!(keys(&f), [1, 2]);
        assert!(close(f[0].score, 0.5));
        assert!(close(f[1].score, 1.0 / 3.0));
    }

    #[test]
    fn weighted_minmax_by_hand() {
        // Distances 0.25, 0.5, 1.25 → similarities −0.25, −0.5, −1.25 →
        // min-max 1, 0.75, 0. BM25 10, 6, 2 → 1, 0.5, 0.
        let dense = [("a", 0.25), ("b", 0.5), ("c", 1.25)];
        let text = [("b", 10.0), ("d", 6.0), ("a", 2.0)];
        let f = Fusion::weighted(0.7, Normalize::MinMax)
            .unwrap()
            .fuse(&dense, &text);
        let got: BTreeMap<&str, f64> = f.iter().map(|x| (x.key, x.score)).collect();
        assert!(close(got["a"], 0.7 * 1.0 + 0.3 * 0.0));
        assert!(close(got["b"], 0.7 * 0.75 + 0.3 * 1.0));
        assert!(close(got["c"], 0.0));
        assert!(close(got["d"], 0.3 * 0.5));
        assert_eq!(keys(&f), ["b", "a", "d", "c"]);
    }

    #[test]
    fn weighted_zscore_gives_a_missing_key_the_lowest_score_of_the_list() {
        let dense = [("a", 1.0), ("b", 2.0), ("c", 3.0)];
        let text = [("c", 3.0), ("b", 1.0)];
        let f = Fusion::weighted(0.5, Normalize::ZScore)
            .unwrap()
            .fuse(&dense, &text);
        let got: BTreeMap<&str, f64> = f.iter().map(|x| (x.key, x.score)).collect();
        // dense similarities −1, −2, −3: mean −2, σ = sqrt(2/3).
        let sd = (2.0f64 / 3.0).sqrt();
        // text 3, 1: mean 2, σ 1 → c: 1, b: −1; a is missing → −1.
        assert!(close(got["a"], 0.5 * (1.0 / sd) - 0.5));
        assert!(close(got["b"], 0.5 * 0.0 - 0.5));
        assert!(close(got["c"], 0.5 * (-1.0 / sd) + 0.5 * 1.0));
    }

    #[test]
    fn dbsf_as_qdrant_computes_it() {
        // Sample σ of 10, 6, 2 is 4: low = 6 − 12 = −6, high = 18.
        let text = [("a", 10.0), ("b", 6.0), ("c", 2.0)];
        let f = Fusion::weighted(0.0, Normalize::Dbsf)
            .unwrap()
            .fuse::<&str>(&[], &text);
        let got: Vec<f64> = f.iter().map(|x| x.score).collect();
        for (g, w) in got.iter().zip([16.0 / 24.0, 12.0 / 24.0, 8.0 / 24.0]) {
            assert!(close(*g, w), "{got:?}");
        }
    }

    #[test]
    fn degenerate_lists() {
        let one = [("a", 3.0)];
        for (how, want) in [
            (Normalize::MinMax, 1.0),
            (Normalize::ZScore, 0.0),
            (Normalize::Dbsf, 0.5),
        ] {
            let f = Fusion::weighted(1.0, how).unwrap().fuse(&one, &[]);
            assert_eq!(f.len(), 1);
            assert!(close(f[0].score, want), "{how}: {f:?}");
        }
        let none: [(u8, f32); 0] = [];
        assert!(Fusion::default().fuse(&none, &none).is_empty());
    }

    #[test]
    fn alpha_one_is_dense_alone_and_zero_text_alone() {
        // A key missing from the list that decides may tie with that
        // list's worst (min-max, z-score): ties go by key, 4 after 2, 5
        // after 3.
        let dense = [(3u32, 0.1), (5, 0.5), (2, 0.9)];
        let text = [(2u32, 7.0), (4, 3.0), (3, 1.0)];
        for how in [Normalize::MinMax, Normalize::ZScore, Normalize::Dbsf] {
            let d = Fusion::weighted(1.0, how).unwrap().fuse(&dense, &text);
            assert_eq!(&keys(&d)[..3], [3, 5, 2], "{how}");
            let t = Fusion::weighted(0.0, how).unwrap().fuse(&dense, &text);
            assert_eq!(&keys(&t)[..3], [2, 4, 3], "{how}");
        }
    }

    #[test]
    fn json_shapes_and_errors() {
        let parse = |s: &str| serde_json::from_str::<Fusion>(s).map_err(|e| e.to_string());
        assert_eq!(
            parse(r#"{"method": "rrf", "k": 60}"#),
            Ok(Fusion::Rrf { k: 60.0 })
        );
        assert_eq!(parse(r#"{"method": "rrf"}"#), Ok(Fusion::Rrf { k: 60.0 }));
        assert_eq!(
            parse(r#"{"method": "weighted", "alpha": 0.7, "normalize": "zscore"}"#),
            Ok(Fusion::Weighted {
                alpha: 0.7,
                normalize: Normalize::ZScore
            })
        );
        assert_eq!(
            parse(r#"{"method": "weighted", "alpha": 0.3}"#),
            Ok(Fusion::Weighted {
                alpha: 0.3,
                normalize: Normalize::MinMax
            })
        );
        assert_eq!(
            parse(r#"{"method": "dbsf"}"#),
            Ok(Fusion::Weighted {
                alpha: 0.5,
                normalize: Normalize::Dbsf
            })
        );
        let errors = [
            (r#"{"method": "borda"}"#, "unknown method \"borda\""),
            (
                r#"{"method": "rrf", "k": 0}"#,
                "k must be a finite number above 0, got 0",
            ),
            (r#"{"method": "rrf", "k": -5}"#, "got -5"),
            (
                r#"{"method": "weighted", "alpha": 1.5}"#,
                "alpha must be in [0, 1], got 1.5",
            ),
            (r#"{"method": "weighted", "alpha": -0.1}"#, "got -0.1"),
            (
                r#"{"method": "weighted", "normalize": "l2"}"#,
                "unknown normalize \"l2\"",
            ),
            (
                r#"{"method": "rrf", "alpha": 0.5}"#,
                "\"alpha\" does not apply to method \"rrf\"",
            ),
            (r#"{"method": "weighted", "k": 60}"#, "\"k\" does not apply"),
            (r#"{"method": "rrf", "kk": 60}"#, "unknown field `kk`"),
            (r#"{"k": 60}"#, "missing field `method`"),
        ];
        for (json, want) in errors {
            let e = parse(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e:?} should contain {want:?}");
        }
        // Serialize gives back the shape it reads.
        for f in [
            Fusion::rrf(60.0).unwrap(),
            Fusion::weighted(0.3, Normalize::ZScore).unwrap(),
        ] {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(parse(&json), Ok(f), "{json}");
        }
    }

    fn list() -> impl Strategy<Value = Vec<(u16, f32)>> {
        prop::collection::vec((0u16..40, -50.0f32..50.0), 0..30)
    }

    fn fusion() -> impl Strategy<Value = Fusion> {
        prop_oneof![
            (0.5f64..100.0).prop_map(|k| Fusion::Rrf { k }),
            (
                0.0f64..=1.0,
                prop_oneof![
                    Just(Normalize::MinMax),
                    Just(Normalize::ZScore),
                    Just(Normalize::Dbsf)
                ]
            )
                .prop_map(|(alpha, normalize)| Fusion::Weighted { alpha, normalize }),
        ]
    }

    proptest! {
        /// Every key of either list comes out exactly once, sorted by score
        /// descending then key ascending, with the ranks it had.
        #[test]
        fn output_is_the_union_sorted_and_deterministic(f in fusion(), dense in list(), text in list()) {
            let out = f.fuse(&dense, &text);
            let mut want: Vec<u16> = dense.iter().chain(&text).map(|(k, _)| *k).collect();
            want.sort_unstable();
            want.dedup();
            let mut got = keys(&out);
            got.sort_unstable();
            prop_assert_eq!(got, want);
            for w in out.windows(2) {
                prop_assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].key < w[1].key));
            }
            for x in &out {
                prop_assert!(x.score.is_finite());
                let first = |l: &[(u16, f32)]| l.iter().position(|(k, _)| *k == x.key).map(|p| p as u32 + 1);
                // Ranks count distinct keys before: at most the first position.
                prop_assert_eq!(x.dense_rank.is_some(), first(&dense).is_some());
                prop_assert!(x.dense_rank <= first(&dense));
                prop_assert_eq!(x.text_rank.is_some(), first(&text).is_some());
            }
            prop_assert_eq!(&out, &f.fuse(&dense, &text));
        }

        /// RRF scores lie in (0, 2/(k+1)]; weighted scores with min-max in
        /// [0, 1].
        #[test]
        fn score_ranges(k in 0.5f64..100.0, alpha in 0.0f64..=1.0, dense in list(), text in list()) {
            for x in (Fusion::Rrf { k }).fuse(&dense, &text) {
                prop_assert!(x.score > 0.0 && x.score <= 2.0 / (k + 1.0) + 1e-12);
            }
            for x in (Fusion::Weighted { alpha, normalize: Normalize::MinMax }).fuse(&dense, &text) {
                prop_assert!((-1e-12..=1.0 + 1e-12).contains(&x.score), "{:?}", x);
            }
        }

        /// A key strictly best in both lists has the best fused score (with
        /// z-score a one-entry list cannot tell its entry from an absent
        /// key, so "has the best score", not "comes first").
        #[test]
        fn first_in_both_is_first(f in fusion(), dense in list(), text in list()) {
            let mut dense = dense;
            let mut text = text;
            dense.retain(|(k, _)| *k != 999);
            text.retain(|(k, _)| *k != 999);
            let best_d = dense.iter().map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
            let best_t = text.iter().map(|(_, s)| *s).fold(f32::NEG_INFINITY, f32::max);
            dense.insert(0, (999, if best_d.is_finite() { best_d - 1.0 } else { 0.0 }));
            text.insert(0, (999, if best_t.is_finite() { best_t + 1.0 } else { 0.0 }));
            let out = f.fuse(&dense, &text);
            let mine = out.iter().find(|x| x.key == 999).map(|x| x.score);
            prop_assert_eq!(mine, Some(out[0].score));
        }

        /// Weighted fusion with α = 1 keeps the dense order (distances
        /// strictly increasing) among the dense list's keys.
        #[test]
        fn alpha_one_keeps_the_dense_order(n in 2usize..20, text in list()) {
            let dense: Vec<(u16, f32)> = (0..n).map(|i| (100 + i as u16, i as f32)).collect();
            for how in [Normalize::MinMax, Normalize::ZScore, Normalize::Dbsf] {
                let out = (Fusion::Weighted { alpha: 1.0, normalize: how }).fuse(&dense, &text);
                let got: Vec<u16> = keys(&out).into_iter().filter(|k| *k >= 100).collect();
                let want: Vec<u16> = dense.iter().map(|(k, _)| *k).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
