//! RobustPrune: choose at most R diverse out-neighbours from a candidate pool.

use crate::metric::Metric;

/// Does the already chosen neighbour `i` make candidate `j` redundant?
///
/// `d_pj` is the distance from the node being pruned to `j`, `d_ij` the
/// distance between `i` and `j`. For L2 and cosine this is the α-rule of
/// DiskANN on the stored (squared for L2) distances: `α·d(i,j) ≤ d(p,j)`. For
/// inner product, where distances are negated dot products and may be
/// negative, the rule is stated on the dot products: `⟨i,j⟩ > α·⟨p,j⟩`.
#[inline]
pub(crate) fn occludes(metric: Metric, alpha: f32, d_pj: f32, d_ij: f32) -> bool {
    match metric {
        Metric::L2 | Metric::Cosine => alpha * d_ij <= d_pj,
        Metric::InnerProduct => -d_ij > alpha * -d_pj,
    }
}

/// Prunes `pool` (candidates with their distance to `p`, any order, no `p`,
/// no duplicates) down to at most `r` ids written to `out`.
/// `dist(a, b)` is the distance between two candidates.
pub(crate) fn robust_prune(
    metric: Metric,
    pool: &mut Vec<(f32, u32)>,
    alpha: f32,
    r: usize,
    max_pool: usize,
    mut dist: impl FnMut(u32, u32) -> f32,
    out: &mut Vec<u32>,
) {
    out.clear();
    pool.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    pool.truncate(max_pool);
    let mut alive = vec![true; pool.len()];
    for i in 0..pool.len() {
        if !alive[i] {
            continue;
        }
        let chosen = pool[i].1;
        out.push(chosen);
        if out.len() >= r {
            break;
        }
        for j in i + 1..pool.len() {
            if alive[j] && occludes(metric, alpha, pool[j].0, dist(chosen, pool[j].1)) {
                alive[j] = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_nearest_and_drops_occluded() {
        // Points on a line: p = 0; candidates at 1, 2, 10 (squared distances).
        let pos = [0.0f32, 1.0, 2.0, 10.0];
        let d = |a: u32, b: u32| (pos[a as usize] - pos[b as usize]).powi(2);
        let mut pool = vec![(d(0, 3), 3), (d(0, 1), 1), (d(0, 2), 2)];
        let mut out = Vec::new();
        robust_prune(Metric::L2, &mut pool, 1.2, 8, 100, d, &mut out);
        // 1 is nearest; 2 is closer to 1 than to p so it is occluded; 10 too.
        assert_eq!(out, vec![1]);
        let mut pool = vec![(d(0, 3), 3), (d(0, 1), 1), (d(0, 2), 2)];
        robust_prune(Metric::L2, &mut pool, 1.2, 1, 100, d, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn degree_never_exceeds_r() {
        let d = |a: u32, b: u32| ((a as f32) * 7.3 - (b as f32) * 1.1).abs() + 1.0;
        let mut pool: Vec<(f32, u32)> = (1..200).map(|i| (i as f32, i)).collect();
        let mut out = Vec::new();
        robust_prune(Metric::L2, &mut pool, 100.0, 5, 1000, d, &mut out);
        assert!(out.len() <= 5);
    }
}
