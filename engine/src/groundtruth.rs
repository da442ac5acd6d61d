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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::scalar;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};

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
