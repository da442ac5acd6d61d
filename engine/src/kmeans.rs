//! k-means: k-means++ seeding and Lloyd iterations over f32 rows.
//!
//! Used by PQ training (one run per chunk of the PQ space, k = 256) and by
//! the k-means partition of a sharded build (k = shards): one home for both.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::metric::l2sq_f32;

/// Clusters the rows of `data` (`n × d`, row-major) into `k` centroids with
/// k-means++ seeding and `iters` Lloyd iterations. Returns `k × d` centroids;
/// if there are fewer than `k` distinct rows, the surplus centroids repeat
/// existing ones (encoding picks the first of equal candidates, so they are
/// simply never used).
pub fn kmeans(data: &[f32], d: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    let n = data.len() / d;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let row = |i: usize| &data[i * d..(i + 1) * d];
    if n == 0 {
        return vec![0.0; k * d];
    }

    // k-means++: each next seed is drawn with probability ∝ D(x)².
    let mut centroids = Vec::with_capacity(k * d);
    centroids.extend_from_slice(row(rng.random_range(0..n as u64) as usize));
    let mut best: Vec<f32> = (0..n).map(|i| l2sq_f32(row(i), &centroids[..d])).collect();
    for _ in 1..k {
        let total: f64 = best.iter().map(|&x| x as f64).sum();
        let pick = if total <= 0.0 {
            rng.random_range(0..n as u64) as usize
        } else {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &b) in best.iter().enumerate() {
                target -= b as f64;
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        let start = centroids.len();
        centroids.extend_from_slice(row(pick));
        let c = &centroids[start..start + d];
        for (i, b) in best.iter_mut().enumerate() {
            let dist = l2sq_f32(row(i), c);
            if dist < *b {
                *b = dist;
            }
        }
    }

    let mut assign = vec![0u32; n];
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0usize; k];
    let mut dists = Vec::with_capacity(k);
    for _ in 0..iters {
        let t = Transposed::new(&centroids, d);
        for (i, a) in assign.iter_mut().enumerate() {
            *a = t.nearest(row(i), &mut dists).0 as u32;
        }
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for (i, &a) in assign.iter().enumerate() {
            let a = a as usize;
            counts[a] += 1;
            for (s, &x) in sums[a * d..(a + 1) * d].iter_mut().zip(row(i)) {
                *s += x as f64;
            }
        }
        for c in 0..k {
            let dst = &mut centroids[c * d..(c + 1) * d];
            if counts[c] == 0 {
                // An empty cluster restarts on a random point.
                dst.copy_from_slice(row(rng.random_range(0..n as u64) as usize));
            } else {
                for (x, s) in dst.iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                    *x = (*s / counts[c] as f64) as f32;
                }
            }
        }
    }
    centroids
}

/// Centroids of one chunk stored dimension-major (`d × k`): the loop over
/// centroids then runs over contiguous memory and vectorizes (16 lanes with
/// AVX-512), where the row-major loop over a 4-wide chunk cannot.
pub struct Transposed {
    d: usize,
    k: usize,
    cols: Vec<f32>,
}

impl Transposed {
    pub fn new(centroids: &[f32], d: usize) -> Self {
        let k = centroids.len() / d;
        let mut cols = vec![0f32; d * k];
        for (c, row) in centroids.chunks_exact(d).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                cols[j * k + c] = v;
            }
        }
        Transposed { d, k, cols }
    }

    /// Index and squared distance of the centroid nearest `x` (first on ties).
    #[inline]
    pub fn nearest(&self, x: &[f32], dists: &mut Vec<f32>) -> (usize, f32) {
        dists.clear();
        dists.resize(self.k, 0.0);
        for (j, col) in self.cols.chunks_exact(self.k).enumerate().take(self.d) {
            let xj = x[j];
            for (acc, &c) in dists.iter_mut().zip(col) {
                let t = xj - c;
                *acc += t * t;
            }
        }
        let mut best = (0, f32::INFINITY);
        for (c, &v) in dists.iter().enumerate() {
            if v < best.1 {
                best = (c, v);
            }
        }
        best
    }
}

/// Index and squared distance of the centroid nearest `x` (first on ties).
#[inline]
pub fn nearest(centroids: &[f32], d: usize, x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (c, cent) in centroids.chunks_exact(d).enumerate() {
        let dist: f32 = cent.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if dist < best.1 {
            best = (c, dist);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_well_separated_clusters() {
        // Three tight blobs in 2-d.
        let mut data = Vec::new();
        for c in [[0.0f32, 0.0], [10.0, 10.0], [-10.0, 10.0]] {
            for i in 0..50 {
                data.push(c[0] + (i % 5) as f32 * 0.01);
                data.push(c[1] + (i / 5) as f32 * 0.01);
            }
        }
        let cents = kmeans(&data, 2, 3, 10, 1);
        for c in [[0.0f32, 0.0], [10.0, 10.0], [-10.0, 10.0]] {
            let (_, d) = nearest(&cents, 2, &c);
            assert!(d < 0.1, "no centroid near {c:?}: {cents:?}");
        }
    }

    #[test]
    fn transposed_search_agrees_with_row_major() {
        let cents: Vec<f32> = (0..256 * 3)
            .map(|i| ((i * 7919) % 1000) as f32 / 10.0)
            .collect();
        let t = Transposed::new(&cents, 3);
        let mut scratch = Vec::new();
        for x in [[0.0f32, 0.0, 0.0], [50.0, 20.0, 99.0], [3.3, 77.7, 12.1]] {
            let (a, da) = nearest(&cents, 3, &x);
            let (b, db) = t.nearest(&x, &mut scratch);
            assert_eq!(a, b);
            assert!((da - db).abs() < 1e-3);
        }
    }

    #[test]
    fn fewer_points_than_centroids() {
        let data = vec![1.0f32, 2.0, 3.0, 4.0];
        let cents = kmeans(&data, 2, 256, 5, 1);
        assert_eq!(cents.len(), 512);
        assert_eq!(nearest(&cents, 2, &[3.0, 4.0]).1, 0.0);
    }
}
