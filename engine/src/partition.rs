//! Splitting a data set into shards that are built and served separately.
//!
//! With `KMeans`, shards are the cells of a k-means clustering of a sample,
//! filled to a capacity so none is more than 10% above the mean size: a
//! query's neighbours then concentrate in few shards (which routing by
//! nearest centroid can exploit). `Random` spreads points uniformly, so every
//! shard must be asked.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::Vectors;
use crate::error::{Error, Result};
use crate::metric::{l2sq_f32, Element};

/// How points are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    KMeans,
    Random,
}

impl std::str::FromStr for PartitionKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kmeans" => Ok(PartitionKind::KMeans),
            "random" => Ok(PartitionKind::Random),
            _ => Err(format!(
                "unknown partition {s:?}: expected kmeans or random"
            )),
        }
    }
}

/// The shard of every point, and the centroids that chose them.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub kind: PartitionKind,
    pub num_shards: usize,
    pub dim: usize,
    /// `num_shards × dim` (k-means only; empty for random).
    pub centroids: Vec<f32>,
    /// Shard of each point.
    pub assignment: Vec<u32>,
}

/// Rows sampled to train the k-means partition.
const SAMPLE: usize = 50_000;

impl Partition {
    /// Partitions `data` into `shards` shards.
    pub fn compute<T: Element>(
        data: Vectors<'_, T>,
        shards: usize,
        kind: PartitionKind,
        seed: u64,
    ) -> Result<Self> {
        let n = data.len();
        if shards == 0 || shards > n.max(1) {
            return Err(Error::InvalidParameter(format!(
                "shard count must be between 1 and the number of points ({n}), got {shards}"
            )));
        }
        let dim = data.dim();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng);
        let mut assignment = vec![0u32; n];
        if kind == PartitionKind::Random {
            for (i, &p) in order.iter().enumerate() {
                assignment[p as usize] = (i % shards) as u32;
            }
            return Ok(Partition {
                kind,
                num_shards: shards,
                dim,
                centroids: Vec::new(),
                assignment,
            });
        }
        let sample: Vec<f32> = order
            .iter()
            .take(SAMPLE.min(n))
            .flat_map(|&p| data.row(p as usize).iter().map(|x| x.to_f32()))
            .collect();
        let centroids = crate::kmeans::kmeans(&sample, dim, shards, 15, seed);
        // Nearest-first preferences of every point, in parallel.
        let prefs: Vec<Vec<u32>> = (0..n)
            .into_par_iter()
            .map(|p| {
                let x: Vec<f32> = data.row(p).iter().map(|v| v.to_f32()).collect();
                let mut d: Vec<(f32, u32)> = centroids
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(c, cent)| (l2sq_f32(&x, cent), c as u32))
                    .collect();
                d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                d.into_iter().map(|x| x.1).collect()
            })
            .collect();
        // Fill in a random order; a full shard passes the point on to the
        // next nearest. Capacity 1.1 × the mean keeps shards balanced.
        let cap = (n as f64 / shards as f64 * 1.1).ceil() as usize;
        let mut sizes = vec![0usize; shards];
        for &p in &order {
            let s = prefs[p as usize]
                .iter()
                .copied()
                .find(|&s| sizes[s as usize] < cap)
                .unwrap_or(0);
            sizes[s as usize] += 1;
            assignment[p as usize] = s;
        }
        Ok(Partition {
            kind,
            num_shards: shards,
            dim,
            centroids,
            assignment,
        })
    }

    /// Global ids of the points of `shard`, ascending.
    pub fn members(&self, shard: usize) -> Vec<u32> {
        (0..self.assignment.len() as u32)
            .filter(|&p| self.assignment[p as usize] as usize == shard)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate_u8, Stream};

    #[test]
    fn shards_are_balanced_and_cover_everything() {
        let data = generate_u8(5000, 4, Stream::Base);
        let v = Vectors::new(&data[..], 128);
        for kind in [PartitionKind::KMeans, PartitionKind::Random] {
            let p = Partition::compute(v, 6, kind, 1).unwrap();
            let sizes: Vec<usize> = (0..6).map(|s| p.members(s).len()).collect();
            assert_eq!(sizes.iter().sum::<usize>(), 5000);
            assert!(
                sizes.iter().all(|&s| s as f64 <= 5000.0 / 6.0 * 1.1 + 1.0),
                "{kind:?}: {sizes:?}"
            );
            assert!(sizes.iter().all(|&s| s > 0), "{kind:?}: {sizes:?}");
        }
        assert!(Partition::compute(v, 0, PartitionKind::Random, 1).is_err());
    }
}
