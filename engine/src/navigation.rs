//! Entry points from RAM: a small Vamana graph over a sample of an index's
//! points, held in memory with their full vectors.
//!
//! A disk search that starts at the medoid spends its first rounds of reads
//! walking from the middle of the data towards the query. Searching this
//! graph first (exact distances in RAM, no IO, a few tens of microseconds)
//! hands the disk search entries that are already near the query, so those
//! rounds are never read. Starling (Wang et al., SIGMOD'24) calls it the
//! navigation graph.
//!
//! It is built at open from node records read off the index (one read per
//! sampled node), so it needs no file of its own and works on every index
//! already written. It is built on one thread, so that every replica of a
//! segment builds the same graph and answers a query alike: about a second
//! for ten thousand points. Its RAM ([`Navigation::memory_bytes`]) is the sample's
//! vectors, ids and edges.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cache::read_records;
use crate::data::Vectors;
use crate::element::ElemType;
use crate::error::{Error, Result};
use crate::io::SectorReader;
use crate::layout::SectorGeometry;
use crate::metric::{Element, Metric};
use crate::progress::NoProgress;
use crate::vamana::{self, VamanaParams};

/// Out-degree of the navigation graph. A sample is sparse, so the graph
/// needs fewer edges than the index's to stay navigable.
const DEGREE: usize = 32;
/// Candidate list of the navigation graph's build.
const BUILD_LIST: usize = 64;
/// Seed of the sample and of the build's insertion order: the same index
/// opened twice gets the same graph.
const SEED: u64 = 0x6e61_7669;

/// The most points [`NavPoints::Percent`] asks for: building takes about
/// ten seconds on one core at this size.
pub const PERCENT_MAX_POINTS: usize = 100_000;
/// The fewest points a non-zero [`NavPoints::Percent`] asks for: on a small
/// index a larger share pays (MNIST, 9,000 points, reads per query at
/// recall@10 0.95: 22.0 from the medoid, 18.5 with 1 %, 15.2 with 10 %)
/// and costs little (900 points of 784 bytes: 0.1 s at open, 0.8 MiB).
pub const PERCENT_MIN_POINTS: usize = 1_000;

/// How many points the navigation graph holds: a count, or a share of the
/// index's points (at least [`PERCENT_MIN_POINTS`], at most
/// [`PERCENT_MAX_POINTS`]). Written `10000` or `1%`; `0` builds none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NavPoints {
    Count(usize),
    Percent(f64),
}

impl NavPoints {
    /// None: searches start at the medoid.
    pub const NONE: NavPoints = NavPoints::Count(0);

    /// The points for an index of `total` points.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            NavPoints::Count(n) => n.min(total),
            NavPoints::Percent(p) if p > 0.0 => {
                let n = (total as f64 * p / 100.0).round() as usize;
                n.clamp(PERCENT_MIN_POINTS, PERCENT_MAX_POINTS).min(total)
            }
            NavPoints::Percent(_) => 0,
        }
    }
}

/// 1 % of the points (within [`PERCENT_MIN_POINTS`] and
/// [`PERCENT_MAX_POINTS`]): on 1M sift-like
/// points, 10,000 of them cut the reads per query at recall@10 0.95 from
/// 37.9 to about 27 (30,000: a read fewer, for three times the open time).
impl Default for NavPoints {
    fn default() -> Self {
        NavPoints::Percent(1.0)
    }
}

/// A `--nav-points` value that is neither a count nor a percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "navigation points {0:?}: expected a count (10000) or a share of the points (1%, at most 100%)"
)]
pub struct BadNavPoints(pub String);

impl std::str::FromStr for NavPoints {
    type Err = BadNavPoints;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || BadNavPoints(s.to_string());
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad());
                }
                Ok(NavPoints::Percent(p))
            }
            None => s.trim().parse().map(NavPoints::Count).map_err(|_| bad()),
        }
    }
}

impl std::fmt::Display for NavPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NavPoints::Count(n) => write!(f, "{n}"),
            NavPoints::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// From a count (`10000`) or a string (`"10000"`, `"1%"`): how node.toml
/// writes it.
impl<'de> serde::Deserialize<'de> for NavPoints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(NavPoints::Count(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The navigation graph of one index (segment-local ids).
pub struct Navigation {
    /// The index's id of each sampled point, in graph order.
    ids: Vec<u32>,
    /// The sample's vectors, row-major, as raw little-endian elements.
    /// Stored in `u32` words so every element type's slice is aligned.
    vectors: Vec<u32>,
    vector_bytes: usize,
    elem: ElemType,
    metric: Metric,
    /// Node `i`'s out-neighbours are `edges[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    edges: Vec<u32>,
    medoid: u32,
}

impl std::fmt::Debug for Navigation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Navigation")
            .field("points", &self.ids.len())
            .field("edges", &self.edges.len())
            .finish_non_exhaustive()
    }
}

impl Navigation {
    /// Samples `points` of the index's nodes, reads
    /// their records through `reader` and builds the graph over their
    /// vectors. `path` names the index file in errors. `None` when there is
    /// nothing to build (no points asked for, or an empty index).
    pub fn load(
        path: &Path,
        reader: &dyn SectorReader,
        geometry: &SectorGeometry,
        elem: ElemType,
        metric: Metric,
        points: NavPoints,
    ) -> Result<Option<Self>> {
        let total = geometry.num_points as usize;
        let points = points.resolve(total);
        if points == 0 {
            return Ok(None);
        }
        let mut ids: Vec<u32> = if points == total {
            (0..total as u32).collect()
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(SEED);
            rand::seq::index::sample(&mut rng, total, points)
                .into_iter()
                .map(|i| i as u32)
                .collect()
        };
        // In file order: neighbouring samples may share a sector.
        ids.sort_unstable();
        let vector_bytes = geometry.vector_bytes;
        let mut bytes: Vec<u8> = Vec::with_capacity(points * vector_bytes);
        read_records(reader, geometry, &ids, |id, sectors| {
            let rec = geometry.decode(id, sectors)?;
            bytes.extend_from_slice(rec.vector);
            Ok(())
        })
        .map_err(|e| e.at(path))?;
        let mut vectors = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut vectors)[..bytes.len()].copy_from_slice(&bytes);
        drop(bytes);
        let mut nav = Navigation {
            ids,
            vectors,
            vector_bytes,
            elem,
            metric,
            offsets: Vec::new(),
            edges: Vec::new(),
            medoid: 0,
        };
        // On one thread: a parallel build races its insertions, and two
        // replicas opening the same segment must answer a query alike.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        let graph = pool.install(|| match elem {
            ElemType::U8 => nav.build::<u8>(),
            ElemType::I8 => nav.build::<i8>(),
            ElemType::F32 => nav.build::<f32>(),
        })?;
        nav.offsets.reserve(graph.len() + 1);
        nav.offsets.push(0);
        for i in 0..graph.len() {
            nav.edges.extend_from_slice(graph.neighbors(i));
            nav.offsets.push(nav.edges.len() as u32);
        }
        nav.medoid = graph.medoid();
        Ok(Some(nav))
    }

    fn build<T: Element>(&self) -> Result<vamana::Graph> {
        let rows = self.rows::<T>().ok_or_else(|| {
            Error::InvalidParameter(format!(
                "navigation graph: vectors are not {} elements",
                T::TYPE
            ))
        })?;
        let dim = self.vector_bytes / std::mem::size_of::<T>();
        let params = VamanaParams {
            max_degree: DEGREE,
            build_list: BUILD_LIST,
            alpha: 1.2,
            slack: 1.3,
            seed: SEED,
        };
        vamana::build(Vectors::new(rows, dim), self.metric, &params, &NoProgress)
    }

    /// The sample's vectors as `T`, or `None` when `T` is not their type.
    fn rows<T: Element>(&self) -> Option<&[T]> {
        if T::TYPE != self.elem {
            return None;
        }
        let bytes = bytemuck::cast_slice::<u32, u8>(&self.vectors);
        bytemuck::try_cast_slice(bytes.get(..self.ids.len() * self.vector_bytes)?).ok()
    }

    /// Points in the graph.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of RAM the graph holds: vectors, ids and edges.
    pub fn memory_bytes(&self) -> usize {
        (self.vectors.len() + self.ids.len() + self.offsets.len() + self.edges.len()) * 4
    }

    /// Greedy search for `query` with a candidate list of `list`; puts the
    /// index ids of the `seeds` nearest points it found into `out`, nearest
    /// first. Leaves `out` empty when `query` is not of the index's type or
    /// dimension (the disk search then starts at the medoid).
    pub fn entries<T: Element>(&self, query: &[T], list: usize, seeds: usize, out: &mut Vec<u32>) {
        out.clear();
        let Some(rows) = self.rows::<T>() else {
            return;
        };
        let dim = query.len();
        let n = self.ids.len();
        if n == 0 || std::mem::size_of_val(query) != self.vector_bytes {
            return;
        }
        let list = list.max(1);
        let row = |i: u32| &rows[i as usize * dim..(i as usize + 1) * dim];
        // A bitset of n bits: a few KiB, cheaper to zero per query than a
        // hash set is to fill.
        let mut visited = vec![0u64; n.div_ceil(64)];
        let mut mark = |i: u32| {
            let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
            let fresh = visited[w] & b == 0;
            visited[w] |= b;
            fresh
        };
        let mut cands: Vec<(f32, u32, bool)> = Vec::with_capacity(list + 1);
        mark(self.medoid);
        cands.push((
            self.metric.distance(query, row(self.medoid)),
            self.medoid,
            false,
        ));
        let mut cursor = 0;
        while cursor < cands.len() {
            cands[cursor].2 = true;
            let node = cands[cursor].1 as usize;
            let mut next = cursor + 1;
            let (from, to) = (self.offsets[node] as usize, self.offsets[node + 1] as usize);
            for &nb in &self.edges[from..to] {
                if !mark(nb) {
                    continue;
                }
                let d = self.metric.distance(query, row(nb));
                if cands.len() >= list && d >= cands[list - 1].0 {
                    continue;
                }
                let pos = cands.partition_point(|c| c.0 < d);
                cands.insert(pos, (d, nb, false));
                cands.truncate(list);
                next = next.min(pos);
            }
            cursor = next;
            while cursor < cands.len() && cands[cursor].2 {
                cursor += 1;
            }
        }
        out.extend(
            cands
                .iter()
                .take(seeds)
                .map(|&(_, i, _)| self.ids[i as usize]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{build_index, BuildParams, DiskIndex, OpenOptions};
    use crate::pq::PqParams;
    use crate::synth::{generate_f32, generate_u8, Preset, Stream};

    fn build<T: Element>(base: &[T], dim: usize, metric: Metric) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let params = BuildParams {
            metric,
            vamana: VamanaParams {
                max_degree: 24,
                build_list: 48,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: 8,
                ..PqParams::default()
            },
            order: crate::layout::NodeOrder::Locality,
        };
        build_index(Vectors::new(base, dim), &params, dir.path(), &NoProgress).unwrap();
        dir
    }

    /// With a list as long as the sample, the greedy search sees every
    /// sampled point: its entries are the sample's nearest by brute force.
    fn entries_equal_brute_force<T: Element>(
        base: &[T],
        queries: &[T],
        dim: usize,
        metric: Metric,
    ) {
        let dir = build(base, dim, metric);
        let sample = 200;
        let opts = OpenOptions {
            nav_points: NavPoints::Count(sample),
            ..OpenOptions::buffered()
        };
        let index = DiskIndex::open(dir.path(), opts).unwrap();
        let nav = index.navigation().unwrap();
        assert_eq!(nav.len(), sample);
        let mut out = Vec::new();
        for q in queries.chunks_exact(dim) {
            nav.entries(q, sample, 5, &mut out);
            let mut truth: Vec<(f32, u32)> = nav
                .ids
                .iter()
                .map(|&id| (metric.distance(q, &base[id as usize * dim..][..dim]), id))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<u32> = truth.iter().take(5).map(|t| t.1).collect();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn entries_are_the_sample_nearest_u8() {
        let base = generate_u8(1500, 5, Stream::Base);
        let queries = generate_u8(10, 5, Stream::Query);
        entries_equal_brute_force(&base, &queries, 128, Metric::L2);
    }

    #[test]
    fn entries_are_the_sample_nearest_f32_inner_product() {
        let base = generate_f32(Preset::DeepLike, 1500, 6, Stream::Base);
        let queries = generate_f32(Preset::DeepLike, 10, 6, Stream::Query);
        entries_equal_brute_force(&base, &queries, 96, Metric::InnerProduct);
    }

    #[test]
    fn sample_is_reproducible_and_bounded_by_the_index() {
        let base = generate_u8(500, 8, Stream::Base);
        let dir = build(&base, 128, Metric::L2);
        let open = |n| {
            let opts = OpenOptions {
                nav_points: NavPoints::Count(n),
                ..OpenOptions::buffered()
            };
            DiskIndex::open(dir.path(), opts).unwrap()
        };
        let (a, b) = (open(100), open(100));
        let (a, b) = (a.navigation().unwrap(), b.navigation().unwrap());
        // Built on one thread: the same graph every time.
        assert_eq!((&a.ids, &a.edges), (&b.ids, &b.edges));
        assert!(a.ids.windows(2).all(|w| w[0] < w[1]), "sampled twice");
        // More points than the index holds: every point, once.
        let all = open(10_000);
        assert_eq!(
            all.navigation().unwrap().ids,
            (0..500).collect::<Vec<u32>>()
        );
        assert!(open(0).navigation().is_none());
        assert_eq!(NavPoints::Percent(10.0).resolve(500), 500);
        assert_eq!(NavPoints::Percent(10.0).resolve(50_000), 5_000);
        assert_eq!(NavPoints::Percent(1.0).resolve(50_000), PERCENT_MIN_POINTS);
        assert_eq!(NavPoints::Percent(0.0).resolve(50_000), 0);
        assert_eq!(
            NavPoints::Percent(1.0).resolve(100_000_000),
            PERCENT_MAX_POINTS
        );
        assert_eq!(NavPoints::Count(700).resolve(500), 500);
        // A query of another type or dimension finds no entries (the
        // search then starts at the medoid).
        let mut out = vec![7];
        a.entries(&[0.5f32; 128], 16, 4, &mut out);
        assert!(out.is_empty());
        a.entries(&[1u8; 64], 16, 4, &mut out);
        assert!(out.is_empty());
    }
}

#[cfg(test)]
mod parse_tests {
    use super::NavPoints;

    #[test]
    fn nav_points_parse_counts_and_shares() {
        assert_eq!("10000".parse(), Ok(NavPoints::Count(10_000)));
        assert_eq!("0".parse(), Ok(NavPoints::NONE));
        assert_eq!(" 2.5% ".parse(), Ok(NavPoints::Percent(2.5)));
        for bad in ["", "-1", "1e4x", "101%", "%", "ten"] {
            let err = bad.parse::<NavPoints>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let toml: NavPoints = serde_json::from_str("\"1%\"").unwrap();
        assert_eq!(toml, NavPoints::Percent(1.0));
        let toml: NavPoints = serde_json::from_str("300").unwrap();
        assert_eq!(toml, NavPoints::Count(300));
        assert!(serde_json::from_str::<NavPoints>("\"x\"").is_err());
    }
}
