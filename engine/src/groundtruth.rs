//! Exact k-nearest neighbours by brute force.
//!
//! The base set is walked in blocks small enough to stay in cache while every
//! query of the current batch is compared against the block, in parallel over
//! queries. Memory is `queries × k` heap entries plus one block of the base:
//! 1M × 10K × k=100 needs about 8 MB of heaps.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::data::{GroundTruth, Vectors};
use crate::metric::{Element, Metric};
use crate::progress::Progress;

/// A candidate ordered by (distance, id), so ties resolve to the smaller id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cand {
    pub dist: f32,
    pub id: u32,
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.id.cmp(&other.id))
    }
}

const BLOCK_ROWS: usize = 16 * 1024;

/// Computes the exact `k` nearest base points of every query.
pub fn brute_force<T: Element>(
    base: Vectors<'_, T>,
    queries: Vectors<'_, T>,
    metric: Metric,
    k: usize,
    progress: &dyn Progress,
) -> GroundTruth {
    let k = k.min(base.len());
    let mut heaps: Vec<BinaryHeap<Cand>> = (0..queries.len())
        .map(|_| BinaryHeap::with_capacity(k + 1))
        .collect();
    progress.stage("ground truth", base.len() as u64);
    for start in (0..base.len()).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(base.len());
        heaps.par_iter_mut().enumerate().for_each(|(qi, heap)| {
            let q = queries.row(qi);
            for id in start..end {
                let c = Cand {
                    dist: metric.distance(q, base.row(id)),
                    id: id as u32,
                };
                if heap.len() < k {
                    heap.push(c);
                } else if let Some(top) = heap.peek() {
                    if c < *top {
                        heap.pop();
                        heap.push(c);
                    }
                }
            }
        });
        progress.inc((end - start) as u64);
    }
    progress.finish_stage();
    let mut ids = Vec::with_capacity(queries.len() * k);
    let mut distances = Vec::with_capacity(queries.len() * k);
    for heap in heaps {
        for c in heap.into_sorted_vec() {
            ids.push(c.id);
            distances.push(c.dist);
        }
    }
    GroundTruth {
        nq: queries.len(),
        k,
        ids,
        distances,
    }
}

/// The id a ground-truth row holds where a filtered query has fewer than
/// `k` matching points: no neighbour (its distance is +∞).
pub const NO_NEIGHBOR: u32 = u32::MAX;

/// Exact k-NN of each query among the points its filter admits (`None`:
/// all points), in parallel over queries. A row with fewer than `k`
/// matches is padded with [`NO_NEIGHBOR`] at distance +∞.
pub fn brute_force_filtered<T: Element>(
    base: Vectors<'_, T>,
    queries: Vectors<'_, T>,
    metric: Metric,
    k: usize,
    filters: &[Option<roaring::RoaringBitmap>],
    progress: &dyn Progress,
) -> GroundTruth {
    let k = k.min(base.len());
    progress.stage("filtered ground truth", queries.len() as u64);
    let rows: Vec<Vec<Cand>> = (0..queries.len())
        .into_par_iter()
        .map(|qi| {
            let q = queries.row(qi);
            let mut heap = BinaryHeap::with_capacity(k + 1);
            let mut offer = |id: u32| {
                if id as usize >= base.len() {
                    return;
                }
                let c = Cand {
                    dist: metric.distance(q, base.row(id as usize)),
                    id,
                };
                if heap.len() < k {
                    heap.push(c);
                } else if heap.peek().is_some_and(|top| c < *top) {
                    heap.pop();
                    heap.push(c);
                }
            };
            match filters.get(qi).and_then(Option::as_ref) {
                Some(f) => f.iter().for_each(&mut offer),
                None => (0..base.len() as u32).for_each(&mut offer),
            }
            progress.inc(1);
            heap.into_sorted_vec()
        })
        .collect();
    progress.finish_stage();
    let mut ids = Vec::with_capacity(queries.len() * k);
    let mut distances = Vec::with_capacity(queries.len() * k);
    for row in rows {
        let found = row.len();
        for c in row {
            ids.push(c.id);
            distances.push(c.dist);
        }
        for _ in found..k {
            ids.push(NO_NEIGHBOR);
            distances.push(f32::INFINITY);
        }
    }
    GroundTruth {
        nq: queries.len(),
        k,
        ids,
        distances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::scalar;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};

    #[test]
    fn filtered_truth_is_the_nearest_matches_padded() {
        let base = generate_u8(500, 3, Stream::Base);
        let queries = generate_u8(4, 3, Stream::Query);
        let (b, q) = (Vectors::new(&base, 128), Vectors::new(&queries, 128));
        let evens: roaring::RoaringBitmap = (0..500u32).filter(|i| i % 2 == 0).collect();
        let three: roaring::RoaringBitmap = [7u32, 9, 11].into_iter().collect();
        let filters = vec![
            Some(evens),
            Some(three),
            None,
            Some(roaring::RoaringBitmap::new()),
        ];
        let gt = brute_force_filtered(b, q, Metric::L2, 5, &filters, &NoProgress);
        let all = brute_force(b, q, Metric::L2, 5, &NoProgress);
        let mut want: Vec<(f64, u32)> = (0..500u32)
            .filter(|i| i % 2 == 0)
            .map(|i| (scalar::distance(Metric::L2, q.row(0), b.row(i as usize)), i))
            .collect();
        want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        assert_eq!(
            gt.row(0),
            want.iter().take(5).map(|w| w.1).collect::<Vec<_>>()
        );
        assert_eq!(&gt.row(1)[3..], &[NO_NEIGHBOR, NO_NEIGHBOR]);
        assert_eq!(gt.row(2), all.row(2));
        assert!(gt.row(3).iter().all(|&i| i == NO_NEIGHBOR));
    }

    /// An independent oracle: sort every base point by f64 scalar distance.
    fn oracle(base: Vectors<'_, u8>, q: &[u8], metric: Metric, k: usize) -> Vec<u32> {
        let mut all: Vec<(f64, u32)> = (0..base.len())
            .map(|i| (scalar::distance(metric, q, base.row(i)), i as u32))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|x| x.1).collect()
    }

    #[test]
    fn matches_independent_sort() {
        let b = generate_u8(BLOCK_ROWS + 500, 1, Stream::Base);
        let q = generate_u8(20, 1, Stream::Query);
        let base = Vectors::new(&b[..], 128);
        let queries = Vectors::new(&q[..], 128);
        for metric in [Metric::L2, Metric::InnerProduct] {
            let gt = brute_force(base, queries, metric, 10, &NoProgress);
            assert_eq!((gt.nq, gt.k), (20, 10));
            for qi in 0..20 {
                assert_eq!(
                    gt.row(qi),
                    &oracle(base, queries.row(qi), metric, 10)[..],
                    "{metric} q{qi}"
                );
                let d = &gt.distances[qi * 10..(qi + 1) * 10];
                assert!(d.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }
}
