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
use crate::progress::Progress;

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

/// Points are dealt in blocks of this many consecutive ids, the blocks in a
/// seeded random order and the points of a block in a seeded random order.
/// Why blocks: a random order over all points is a `u32` per point and reads
/// the base file at random; block by block, the order costs a `u32` per
/// block and each block is one sequential stretch of the file (the points of
/// a billion-point base are read once, in 64K-row runs). Why shuffled: a
/// base sorted by anything (date, source) would otherwise fill the first
/// shards with its first points and push its last points into far cells.
const BLOCK: usize = 1 << 16;

/// Nearest centroids remembered per point while dealing a block; a point
/// whose nearest `PREFS` shards are all full (rare: shards fill only near
/// the end) has its distances computed again in full.
const PREFS: usize = 8;

impl Partition {
    /// Partitions `data` into `shards` shards. The nearest centroids of a
    /// block's points are found on all threads; the (cheap) filling of
    /// shards up to their capacity is serial, so the result does not depend
    /// on the number of threads.
    pub fn compute<T: Element>(
        data: Vectors<'_, T>,
        shards: usize,
        kind: PartitionKind,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Self> {
        let n = data.len();
        if shards == 0 || shards > n.max(1) {
            return Err(Error::InvalidParameter(format!(
                "shard count must be between 1 and the number of points ({n}), got {shards}"
            )));
        }
        let dim = data.dim();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centroids = match kind {
            PartitionKind::Random => Vec::new(),
            PartitionKind::KMeans => {
                let mut sample = rand::seq::index::sample(&mut rng, n, SAMPLE.min(n)).into_vec();
                sample.sort_unstable();
                let rows: Vec<f32> = sample
                    .iter()
                    .flat_map(|&p| data.row(p).iter().map(|x| x.to_f32()))
                    .collect();
                crate::kmeans::kmeans(&rows, dim, shards, 15, seed)
            }
        };
        let mut blocks: Vec<u32> = (0..n.div_ceil(BLOCK) as u32).collect();
        blocks.shuffle(&mut rng);
        let cap = (n as f64 / shards as f64 * 1.1).ceil() as usize;
        let mut sizes = vec![0usize; shards];
        let mut assignment = vec![0u32; n];
        let mut dealt = 0usize;
        progress.stage("assigning points to shards", n as u64);
        for b in blocks {
            let start = b as usize * BLOCK;
            let mut points: Vec<u32> = (start as u32..(start + BLOCK).min(n) as u32).collect();
            points.shuffle(&mut rng);
            if kind == PartitionKind::Random {
                for &p in &points {
                    assignment[p as usize] = (dealt % shards) as u32;
                    dealt += 1;
                }
                progress.inc(points.len() as u64);
                continue;
            }
            let prefs: Vec<Prefs> = points
                .par_iter()
                .map_init(Vec::new, |x, &p| {
                    nearest(&centroids, dim, data.row(p as usize), x)
                })
                .collect();
            // A full shard passes the point on to the next nearest; capacity
            // 1.1 × the mean keeps shards balanced.
            for (&p, pref) in points.iter().zip(&prefs) {
                let s = match pref.iter().find(|&&s| sizes[s as usize] < cap) {
                    Some(&s) => s,
                    None => {
                        let all = ranked(&centroids, dim, data.row(p as usize));
                        all.into_iter()
                            .find(|&s| sizes[s as usize] < cap)
                            .unwrap_or(0)
                    }
                };
                sizes[s as usize] += 1;
                assignment[p as usize] = s;
            }
            progress.inc(points.len() as u64);
        }
        progress.finish_stage();
        Ok(Partition {
            kind,
            num_shards: shards,
            dim,
            centroids,
            assignment,
        })
    }

    /// Global ids of the points of every shard, ascending: one pass over
    /// the assignment (calling [`Partition::members`] per shard would scan
    /// it once per shard).
    pub fn all_members(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.num_shards];
        for (p, &s) in self.assignment.iter().enumerate() {
            out[s as usize].push(p as u32);
        }
        out
    }

    /// Global ids of the points of `shard`, ascending.
    pub fn members(&self, shard: usize) -> Vec<u32> {
        (0..self.assignment.len() as u32)
            .filter(|&p| self.assignment[p as usize] as usize == shard)
            .collect()
    }
}

/// The `PREFS` nearest centroids of one point, nearest first.
type Prefs = Vec<u32>;

fn nearest<T: Element>(centroids: &[f32], dim: usize, row: &[T], x: &mut Vec<f32>) -> Prefs {
    x.clear();
    x.extend(row.iter().map(|v| v.to_f32()));
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(PREFS + 1);
    for (c, cent) in centroids.chunks_exact(dim).enumerate() {
        let d = (l2sq_f32(x, cent), c as u32);
        if best.len() == PREFS && !closer(d, best[PREFS - 1]) {
            continue;
        }
        let at = best
            .iter()
            .position(|&b| closer(d, b))
            .unwrap_or(best.len());
        best.insert(at, d);
        best.truncate(PREFS);
    }
    best.into_iter().map(|b| b.1).collect()
}

/// Every shard, nearest centroid first.
fn ranked<T: Element>(centroids: &[f32], dim: usize, row: &[T]) -> Vec<u32> {
    let x: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
    let mut d: Vec<(f32, u32)> = centroids
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, cent)| (l2sq_f32(&x, cent), c as u32))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    d.into_iter().map(|x| x.1).collect()
}

/// Nearer, ties to the lower shard: the order `ranked` sorts by.
fn closer(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).is_lt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};

    #[test]
    fn shards_are_balanced_and_cover_everything() {
        let data = generate_u8(5000, 4, Stream::Base);
        let v = Vectors::new(&data[..], 128);
        for kind in [PartitionKind::KMeans, PartitionKind::Random] {
            let p = Partition::compute(v, 6, kind, 1, &NoProgress).unwrap();
            let sizes: Vec<usize> = (0..6).map(|s| p.members(s).len()).collect();
            assert_eq!(sizes.iter().sum::<usize>(), 5000);
            assert!(
                sizes.iter().all(|&s| s as f64 <= 5000.0 / 6.0 * 1.1 + 1.0),
                "{kind:?}: {sizes:?}"
            );
            assert!(sizes.iter().all(|&s| s > 0), "{kind:?}: {sizes:?}");
        }
        assert!(Partition::compute(v, 0, PartitionKind::Random, 1, &NoProgress).is_err());
    }
}
