//! The PQ codebook: chunk boundaries, centring, centroids; encode and decode.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::Vectors;
use crate::error::{Error, Result};
use crate::kmeans::{kmeans, nearest, Transposed};
use crate::metric::{normalize, Element, Metric};
use crate::progress::Progress;

/// Number of centroids per chunk: one code byte per chunk.
pub const CENTROIDS: usize = 256;

/// How to train a codebook.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PqParams {
    /// Bytes per code = number of chunks M.
    pub num_chunks: usize,
    /// Rows sampled for training.
    pub train_sample: usize,
    /// Lloyd iterations per chunk.
    pub iterations: usize,
    pub seed: u64,
}

impl Default for PqParams {
    fn default() -> Self {
        PqParams {
            num_chunks: 32,
            train_sample: 100_000,
            iterations: 12,
            seed: 0x9e37_79b9,
        }
    }
}

/// A trained product quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct PqCodebook {
    pub(crate) metric: Metric,
    pub(crate) dim: usize,
    /// `M + 1` chunk boundaries: chunk m covers dims `offsets[m]..offsets[m+1]`.
    pub(crate) offsets: Vec<u32>,
    /// The mean subtracted before quantizing, `dim` values.
    pub(crate) center: Vec<f32>,
    /// `CENTROIDS × dim` row-major: row c holds centroid c of every chunk.
    pub(crate) pivots: Vec<f32>,
    /// The same values `dim × CENTROIDS` (dimension-major), derived from
    /// `pivots`: building a query's table then runs over 256 contiguous
    /// floats per dimension, which vectorizes.
    pub(crate) pivots_by_dim: Vec<f32>,
}

/// Splits `dim` into `m` contiguous chunks whose sizes differ by at most one.
pub fn chunk_offsets(dim: usize, m: usize) -> Vec<u32> {
    let (base, extra) = (dim / m, dim % m);
    let mut offs = Vec::with_capacity(m + 1);
    let mut at = 0;
    offs.push(0);
    for i in 0..m {
        at += base + usize::from(i < extra);
        offs.push(at as u32);
    }
    offs
}

impl PqCodebook {
    /// Trains a codebook on a seeded sample of `data`.
    pub fn train<T: Element>(
        data: Vectors<'_, T>,
        metric: Metric,
        params: &PqParams,
        progress: &dyn Progress,
    ) -> Result<Self> {
        let dim = data.dim();
        let m = params.num_chunks;
        if m == 0 || m > dim {
            return Err(Error::InvalidParameter(format!(
                "PQ bytes must be between 1 and the dimension ({dim}), got {m}"
            )));
        }
        if data.is_empty() {
            return Err(Error::InvalidParameter(
                "cannot train PQ on an empty data set".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let take = params.train_sample.clamp(1, data.len());
        let mut rows = sample(&mut rng, data.len(), take).into_vec();
        rows.sort_unstable();

        let mut train: Vec<f32> = Vec::with_capacity(take * dim);
        for &r in &rows {
            let start = train.len();
            train.extend(data.row(r).iter().map(|x| x.to_f32()));
            if metric == Metric::Cosine {
                normalize(&mut train[start..]);
            }
        }
        let mut center = vec![0f32; dim];
        let mut sums = vec![0f64; dim];
        for row in train.chunks_exact(dim) {
            sums.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
        }
        center
            .iter_mut()
            .zip(&sums)
            .for_each(|(c, s)| *c = (*s / take as f64) as f32);
        for row in train.chunks_exact_mut(dim) {
            row.iter_mut().zip(&center).for_each(|(x, c)| *x -= c);
        }

        let offsets = chunk_offsets(dim, m);
        progress.stage("PQ training", m as u64);
        let per_chunk: Vec<Vec<f32>> = (0..m)
            .into_par_iter()
            .map(|c| {
                let (lo, hi) = (offsets[c] as usize, offsets[c + 1] as usize);
                let sub: Vec<f32> = train
                    .chunks_exact(dim)
                    .flat_map(|r| r[lo..hi].iter().copied())
                    .collect();
                let cents = kmeans(
                    &sub,
                    hi - lo,
                    CENTROIDS,
                    params.iterations,
                    params.seed ^ c as u64,
                );
                progress.inc(1);
                cents
            })
            .collect();
        progress.finish_stage();

        let mut pivots = vec![0f32; CENTROIDS * dim];
        for (c, cents) in per_chunk.iter().enumerate() {
            let (lo, hi) = (offsets[c] as usize, offsets[c + 1] as usize);
            for (k, cent) in cents.chunks_exact(hi - lo).enumerate() {
                pivots[k * dim + lo..k * dim + hi].copy_from_slice(cent);
            }
        }
        Ok(PqCodebook::from_parts(metric, dim, offsets, center, pivots))
    }

    /// Assembles a codebook from its stored parts (see `format-spec/pq.md`).
    pub(crate) fn from_parts(
        metric: Metric,
        dim: usize,
        offsets: Vec<u32>,
        center: Vec<f32>,
        pivots: Vec<f32>,
    ) -> Self {
        let mut pivots_by_dim = vec![0f32; pivots.len()];
        for (k, row) in pivots.chunks_exact(dim).enumerate() {
            for (d, &v) in row.iter().enumerate() {
                pivots_by_dim[d * CENTROIDS + k] = v;
            }
        }
        PqCodebook {
            metric,
            dim,
            offsets,
            center,
            pivots,
            pivots_by_dim,
        }
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Bytes per code.
    pub fn num_chunks(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The f32 form of a vector in which the codebook works: normalized for
    /// cosine, as is otherwise.
    pub(crate) fn prepare<T: Element>(&self, v: &[T], out: &mut Vec<f32>) {
        out.clear();
        out.extend(v.iter().map(|x| x.to_f32()));
        if self.metric == Metric::Cosine {
            normalize(out);
        }
    }

    /// Encodes one vector into `code` (`num_chunks()` bytes).
    pub fn encode_one<T: Element>(&self, v: &[T], scratch: &mut Vec<f32>, code: &mut [u8]) {
        self.prepare(v, scratch);
        scratch
            .iter_mut()
            .zip(&self.center)
            .for_each(|(x, c)| *x -= c);
        let mut sub = Vec::new();
        for (m, out) in code.iter_mut().enumerate() {
            let (lo, hi) = (self.offsets[m] as usize, self.offsets[m + 1] as usize);
            // The plain row-major search: a reference for the vectorized,
            // transposed path of `encode_all` (a test checks they agree).
            sub.clear();
            for k in 0..CENTROIDS {
                sub.extend_from_slice(&self.pivots[k * self.dim + lo..k * self.dim + hi]);
            }
            *out = nearest(&sub, hi - lo, &scratch[lo..hi]).0 as u8;
        }
    }

    /// Encodes every row of `data`, in parallel: `len × num_chunks` bytes.
    pub fn encode_all<T: Element>(&self, data: Vectors<'_, T>, progress: &dyn Progress) -> Vec<u8> {
        let m = self.num_chunks();
        let mut codes = vec![0u8; data.len() * m];
        let per_chunk: Vec<Transposed> = self
            .chunk_major()
            .iter()
            .enumerate()
            .map(|(mm, c)| Transposed::new(c, (self.offsets[mm + 1] - self.offsets[mm]) as usize))
            .collect();
        progress.stage("PQ encoding", data.len() as u64);
        codes
            .par_chunks_mut(m * 4096)
            .enumerate()
            .for_each(|(block, out)| {
                let mut scratch = Vec::with_capacity(self.dim);
                let mut dists = Vec::with_capacity(CENTROIDS);
                for (i, code) in out.chunks_exact_mut(m).enumerate() {
                    self.prepare(data.row(block * 4096 + i), &mut scratch);
                    scratch
                        .iter_mut()
                        .zip(&self.center)
                        .for_each(|(x, c)| *x -= c);
                    for (mm, byte) in code.iter_mut().enumerate() {
                        let (lo, hi) = (self.offsets[mm] as usize, self.offsets[mm + 1] as usize);
                        *byte = per_chunk[mm].nearest(&scratch[lo..hi], &mut dists).0 as u8;
                    }
                }
                progress.inc((out.len() / m) as u64);
            });
        progress.finish_stage();
        codes
    }

    /// The centroids regrouped per chunk: `per_chunk[m]` is `CENTROIDS × len(m)`.
    fn chunk_major(&self) -> Vec<Vec<f32>> {
        (0..self.num_chunks())
            .map(|m| {
                let (lo, hi) = (self.offsets[m] as usize, self.offsets[m + 1] as usize);
                (0..CENTROIDS)
                    .flat_map(|k| {
                        self.pivots[k * self.dim + lo..k * self.dim + hi]
                            .iter()
                            .copied()
                    })
                    .collect()
            })
            .collect()
    }

    /// The vector a code stands for, in the codebook's space (normalized for cosine).
    pub fn decode(&self, code: &[u8]) -> Vec<f32> {
        let mut out = self.center.clone();
        for (m, &c) in code.iter().enumerate() {
            let (lo, hi) = (self.offsets[m] as usize, self.offsets[m + 1] as usize);
            let row = &self.pivots[c as usize * self.dim..(c as usize + 1) * self.dim];
            out[lo..hi]
                .iter_mut()
                .zip(&row[lo..hi])
                .for_each(|(o, p)| *o += p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::synth::{generate_f32, generate_u8, Preset, Stream};

    #[test]
    fn chunks_cover_the_dimension() {
        assert_eq!(chunk_offsets(10, 3), vec![0, 4, 7, 10]);
        assert_eq!(chunk_offsets(128, 32).last(), Some(&128));
        assert_eq!(chunk_offsets(5, 5), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn rejects_bad_chunk_counts() {
        let d = [0u8; 64];
        let v = Vectors::new(&d[..], 8);
        for m in [0, 9] {
            let p = PqParams {
                num_chunks: m,
                ..Default::default()
            };
            assert!(PqCodebook::train(v, Metric::L2, &p, &NoProgress).is_err());
        }
    }

    #[test]
    fn reconstruction_error_is_bounded() {
        let data = generate_u8(4000, 3, Stream::Base);
        let v = Vectors::new(&data[..], 128);
        let p = PqParams {
            num_chunks: 32,
            train_sample: 4000,
            iterations: 8,
            seed: 1,
        };
        let pq = PqCodebook::train(v, Metric::L2, &p, &NoProgress).unwrap();
        let codes = pq.encode_all(v, &NoProgress);
        let (mut err, mut energy) = (0f64, 0f64);
        for i in 0..v.len() {
            let dec = pq.decode(&codes[i * 32..(i + 1) * 32]);
            for (d, &x) in dec.iter().zip(v.row(i)) {
                err += ((*d - x as f32) as f64).powi(2);
                energy += ((x as f32 - pq.center[0]) as f64).powi(2);
            }
        }
        // Relative error of the reconstruction: a few percent of the energy.
        assert!(err / energy < 0.1, "relative PQ error {}", err / energy);
        // Encoding one at a time agrees with the parallel path.
        let mut code = vec![0u8; 32];
        let mut scratch = Vec::new();
        pq.encode_one(v.row(17), &mut scratch, &mut code);
        assert_eq!(&code[..], &codes[17 * 32..18 * 32]);
    }

    #[test]
    fn cosine_codebook_lives_on_the_sphere() {
        let data = generate_f32(Preset::DeepLike, 2000, 3, Stream::Base);
        let v = Vectors::new(&data[..], 96);
        let p = PqParams {
            num_chunks: 24,
            train_sample: 2000,
            iterations: 6,
            seed: 1,
        };
        let pq = PqCodebook::train(v, Metric::Cosine, &p, &NoProgress).unwrap();
        let codes = pq.encode_all(v, &NoProgress);
        let dec = pq.decode(&codes[..24]);
        let norm: f32 = dec.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 0.2, "decoded norm {norm}");
    }
}
