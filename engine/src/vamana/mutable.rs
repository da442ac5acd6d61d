//! A Vamana graph that grows one point at a time, in RAM: the index of a
//! shard's mutable part (FreshDiskANN's RW index). An insert is what the
//! build does for each point — greedy search, RobustPrune, reverse edges —
//! against the graph as it stands, so the graph is searchable after every
//! insert. Points are never removed here: a deleted point stays a waypoint
//! (searches pass through it, `accept` keeps it out of answers) until a
//! merge writes a new segment without it.

use rustc_hash::FxHashSet;

use super::build::VamanaParams;
use super::prune::robust_prune;
use crate::metric::{Element, Metric};

/// Below this many points a search scans every point: exact, and faster
/// than a walk at that size.
const SCAN_BELOW: usize = 1024;

/// A growing in-memory Vamana graph over owned vectors.
#[derive(Debug, Clone)]
pub struct MutableGraph<T> {
    dim: usize,
    metric: Metric,
    max_degree: usize,
    list: usize,
    alpha: f32,
    slack: f32,
    vectors: Vec<T>,
    adj: Vec<Vec<u32>>,
    /// Where walks start: point 0, or the segment's medoid in a merge.
    entry: u32,
}

/// (distance, id) pairs.
type Scored = Vec<(f32, u32)>;

/// The pool RobustPrune chooses from, at most.
const MAX_POOL: usize = 750;

impl<T: Element> MutableGraph<T> {
    /// An empty graph. `params` are the build's (R, L, α, slack); the
    /// segment's own values keep the two parts' graphs alike.
    pub fn new(dim: usize, metric: Metric, params: &VamanaParams) -> Self {
        MutableGraph {
            dim,
            metric,
            max_degree: params.max_degree.max(1),
            list: params.build_list.max(1),
            alpha: params.alpha,
            slack: params.slack.max(1.0),
            vectors: Vec::new(),
            adj: Vec::new(),
            entry: 0,
        }
    }

    /// A graph over existing points (`vectors`, `adj` of one list per
    /// point) whose walks start at `entry`: a segment's graph, which a
    /// merge grows with the new points. Lists may hold up to R·slack ids
    /// until [`MutableGraph::into_parts`].
    pub fn from_parts(
        dim: usize,
        metric: Metric,
        params: &VamanaParams,
        vectors: Vec<T>,
        adj: Vec<Vec<u32>>,
        entry: u32,
    ) -> Self {
        assert_eq!(vectors.len(), adj.len() * dim, "one vector per list");
        assert!(
            adj.is_empty() || (entry as usize) < adj.len(),
            "entry in the graph"
        );
        MutableGraph {
            vectors,
            adj,
            entry,
            ..Self::new(dim, metric, params)
        }
    }

    /// Makes walks start at `id` (a point of the graph).
    pub fn set_entry(&mut self, id: u32) {
        if (id as usize) < self.adj.len() {
            self.entry = id;
        }
    }

    /// The vectors and adjacency lists, every list pruned (RobustPrune)
    /// down to R: the bound a segment's records have.
    pub fn into_parts(mut self) -> (Vec<T>, Vec<Vec<u32>>) {
        let mut pruned = Vec::new();
        for p in 0..self.adj.len() as u32 {
            if self.adj[p as usize].len() <= self.max_degree {
                continue;
            }
            let mut pool: Vec<(f32, u32)> = self.adj[p as usize]
                .iter()
                .map(|&c| (self.dist(p, c), c))
                .collect();
            self.prune(p, &mut pool, &mut pruned);
            self.adj[p as usize] = pruned.clone();
        }
        (self.vectors, self.adj)
    }

    pub fn len(&self) -> usize {
        self.adj.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Point `id`'s vector.
    pub fn vector(&self, id: u32) -> &[T] {
        let at = id as usize * self.dim;
        &self.vectors[at..at + self.dim]
    }

    pub fn neighbors(&self, id: u32) -> &[u32] {
        &self.adj[id as usize]
    }

    /// Bytes held: vectors and adjacency lists.
    pub fn memory_bytes(&self) -> usize {
        self.vectors.capacity() * std::mem::size_of::<T>()
            + self
                .adj
                .iter()
                .map(|a| a.capacity() * 4 + std::mem::size_of::<Vec<u32>>())
                .sum::<usize>()
    }

    fn dist(&self, a: u32, b: u32) -> f32 {
        self.metric.distance(self.vector(a), self.vector(b))
    }

    /// Greedy search from the entry point with list size `l`:
    /// the final list (distance, id) and the expanded nodes.
    fn walk(&self, query: &[T], l: usize) -> (Scored, Scored) {
        let mut visited = FxHashSet::default();
        let mut list: Vec<(f32, u32, bool)> = Vec::with_capacity(l + 1);
        let mut expanded = Vec::new();
        if self.adj.is_empty() {
            return (Vec::new(), expanded);
        }
        let entry = self.entry;
        visited.insert(entry);
        list.push((
            self.metric.distance(query, self.vector(entry)),
            entry,
            false,
        ));
        let mut cursor = 0;
        while cursor < list.len() {
            let (d, id, _) = list[cursor];
            list[cursor].2 = true;
            expanded.push((d, id));
            let mut next = cursor + 1;
            for &nb in &self.adj[id as usize] {
                if !visited.insert(nb) {
                    continue;
                }
                let dn = self.metric.distance(query, self.vector(nb));
                if list.len() >= l && dn >= list[l - 1].0 {
                    continue;
                }
                let pos = list.partition_point(|x| x.0 < dn);
                list.insert(pos, (dn, nb, false));
                list.truncate(l);
                next = next.min(pos);
            }
            cursor = next;
            while cursor < list.len() && list[cursor].2 {
                cursor += 1;
            }
        }
        (list.into_iter().map(|x| (x.0, x.1)).collect(), expanded)
    }

    fn prune(&self, p: u32, pool: &mut Vec<(f32, u32)>, out: &mut Vec<u32>) {
        pool.retain(|x| x.1 != p);
        pool.sort_unstable_by_key(|x| x.1);
        pool.dedup_by_key(|x| x.1);
        robust_prune(
            self.metric,
            pool,
            self.alpha,
            self.max_degree,
            MAX_POOL,
            |a, b| self.dist(a, b),
            out,
        );
    }

    /// Inserts `vector` (of the graph's dimension) and returns its id (the
    /// number of points before it).
    pub fn insert(&mut self, vector: &[T]) -> u32 {
        assert_eq!(vector.len(), self.dim, "vector of the graph's dimension");
        let p = self.adj.len() as u32;
        let (_, expanded) = self.walk(vector, self.list);
        self.vectors.extend_from_slice(vector);
        self.adj.push(Vec::new());
        let mut pool = expanded;
        let mut chosen = Vec::new();
        self.prune(p, &mut pool, &mut chosen);
        self.adj[p as usize] = chosen.clone();
        let limit = ((self.max_degree as f32) * self.slack) as usize;
        let mut pruned = Vec::new();
        for j in chosen {
            let list = &self.adj[j as usize];
            if list.contains(&p) {
                continue;
            }
            if list.len() < limit {
                self.adj[j as usize].push(p);
                continue;
            }
            let mut pool: Vec<(f32, u32)> = list
                .iter()
                .chain(std::iter::once(&p))
                .map(|&c| (self.dist(j, c), c))
                .collect();
            self.prune(j, &mut pool, &mut pruned);
            self.adj[j as usize] = pruned.clone();
        }
        p
    }

    /// The `k` nearest points to `query` that `accept` admits, nearest
    /// first, with exact distances; `list` is the walk's list size (at
    /// least `k`). Points `accept` refuses are walked through, never
    /// returned. If the walk finds fewer than `k` admitted points (a
    /// selective `accept`), every point is scanned, so the answer holds
    /// `min(k, admitted)` points.
    pub fn search(
        &self,
        query: &[T],
        k: usize,
        list: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(f32, u32)> {
        if k == 0 || self.adj.is_empty() {
            return Vec::new();
        }
        if self.adj.len() >= SCAN_BELOW {
            let (found, expanded) = self.walk(query, list.max(k));
            let mut hits: Vec<(f32, u32)> = found
                .into_iter()
                .chain(expanded)
                .filter(|&(_, id)| accept(id))
                .collect();
            hits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            hits.dedup_by_key(|x| x.1);
            if hits.len() >= k {
                hits.truncate(k);
                return hits;
            }
        }
        let mut hits: Vec<(f32, u32)> = (0..self.adj.len() as u32)
            .filter(|&id| accept(id))
            .map(|id| (self.metric.distance(query, self.vector(id)), id))
            .collect();
        hits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        hits.truncate(k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn grows_searchable_and_bounded() {
        let (n, dim) = (3000usize, 16usize);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let data: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let params = VamanaParams {
            max_degree: 24,
            build_list: 48,
            ..VamanaParams::default()
        };
        let mut g = MutableGraph::<f32>::new(dim, Metric::L2, &params);
        for i in 0..n {
            assert_eq!(g.insert(&data[i * dim..(i + 1) * dim]), i as u32);
        }
        for i in 0..n as u32 {
            let nb = g.neighbors(i);
            assert!(nb.len() <= (24.0 * params.slack) as usize);
            assert!(!nb.contains(&i));
        }
        // Recall@10 against brute force, and `accept` honoured.
        let mut found = 0;
        for q in 0..50 {
            let query = &data[q * 31 * dim..(q * 31 + 1) * dim];
            let exact = g.search(query, 10, 10, |_| true);
            let mut truth: Vec<(f32, u32)> = (0..n as u32)
                .map(|i| (Metric::L2.distance(query, g.vector(i)), i))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u32> = truth.iter().take(10).map(|x| x.1).collect();
            let got = g.search(query, 10, 64, |_| true);
            found += got.iter().filter(|h| truth.contains(&h.1)).count();
            assert_eq!(exact.len(), 10);
            let odd = g.search(query, 10, 64, |id| id % 2 == 1);
            assert!(odd.iter().all(|h| h.1 % 2 == 1) && odd.len() == 10);
            // A selective accept falls back to a scan: all 3 admitted.
            let few = g.search(query, 10, 64, |id| id < 3);
            assert_eq!(few.len(), 3);
        }
        let recall = found as f64 / 500.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
}
