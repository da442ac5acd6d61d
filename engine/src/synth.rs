//! Reproducible synthetic data for development and tests.
//!
//! Each preset is a mixture of clusters; inside a cluster a point is a
//! low-rank Gaussian "shape" around the cluster centre plus isotropic noise,
//! which gives the moderate intrinsic dimension of real descriptor data
//! (pure isotropic noise in 128 dimensions would be unrealistically hard).
//!
//! Same seed, same bytes, on any machine: the random stream is ChaCha8,
//! Gaussians are approximated by the sum of four uniforms (only additions and
//! multiplications, which IEEE 754 makes exact across platforms, no libm
//! transcendental functions), and rows are generated in fixed-size chunks
//! whose streams depend on the chunk index only, so the thread count does not
//! change the output.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::VectorWriter;
use crate::element::ElemType;
use crate::error::Result;
use crate::metric::{normalize, Metric};
use crate::progress::Progress;

/// A synthetic data-set recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 128-d u8, a clustered mixture; searched with L2 (like BIGANN/SIFT).
    SiftLike,
    /// 96-d f32, unit-normalized; searched with inner product (like DEEP).
    DeepLike,
}

impl Preset {
    pub const fn dim(self) -> usize {
        match self {
            Preset::SiftLike => 128,
            Preset::DeepLike => 96,
        }
    }
    pub const fn elem(self) -> ElemType {
        match self {
            Preset::SiftLike => ElemType::U8,
            Preset::DeepLike => ElemType::F32,
        }
    }
    pub const fn metric(self) -> Metric {
        match self {
            Preset::SiftLike => Metric::L2,
            Preset::DeepLike => Metric::InnerProduct,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Preset::SiftLike => "sift-like",
            Preset::DeepLike => "deep-like",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sift-like" | "sift" => Ok(Preset::SiftLike),
            "deep-like" | "deep" => Ok(Preset::DeepLike),
            _ => Err(format!(
                "unknown preset {s:?}: expected sift-like or deep-like"
            )),
        }
    }
}

/// Which independent stream of a seed to draw: base points, queries, or
/// more points of the same distribution (the same clusters) that are in
/// neither: `More(i)` for the i-th batch of new points a churn inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Base,
    Query,
    More(u32),
}

const CLUSTERS: usize = 100;
const LATENT: usize = 16;
const CHUNK_ROWS: usize = 4096;

struct Cluster {
    center: Vec<f32>,
    /// `dim × LATENT`, row-major.
    basis: Vec<f32>,
}

struct Mixture {
    preset: Preset,
    clusters: Vec<Cluster>,
    noise: f32,
}

/// An approximately standard normal sample from four uniforms.
#[inline]
fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
    s * 1.732_050_8
}

impl Mixture {
    fn new(preset: Preset, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_edc1_u64);
        let dim = preset.dim();
        let (center_scale, shape_scale, noise) = match preset {
            // Skewed towards small values like SIFT histograms.
            Preset::SiftLike => (70.0f32, 5.0f32, 3.0f32),
            Preset::DeepLike => (1.0, 0.25, 0.05),
        };
        let clusters = (0..CLUSTERS)
            .map(|_| {
                let center = (0..dim)
                    .map(|_| match preset {
                        Preset::SiftLike => {
                            let u: f32 = rng.random();
                            u * u * center_scale + 4.0
                        }
                        Preset::DeepLike => gauss(&mut rng) * center_scale,
                    })
                    .collect();
                let basis = (0..dim * LATENT)
                    .map(|_| gauss(&mut rng) * shape_scale)
                    .collect();
                Cluster { center, basis }
            })
            .collect();
        Mixture {
            preset,
            clusters,
            noise,
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        let c = &self.clusters[rng.random_range(0..self.clusters.len() as u32) as usize];
        let mut z = [0f32; LATENT];
        z.iter_mut().for_each(|v| *v = gauss(rng));
        for (d, o) in out.iter_mut().enumerate() {
            let row = &c.basis[d * LATENT..(d + 1) * LATENT];
            let mut acc = c.center[d];
            for (b, zz) in row.iter().zip(&z) {
                acc += b * zz;
            }
            *o = acc + gauss(rng) * self.noise;
        }
        if self.preset == Preset::DeepLike {
            normalize(out);
        }
    }

    /// Rows `[chunk*CHUNK_ROWS, ...)` of a stream, as f32.
    fn chunk(&self, seed: u64, stream: Stream, chunk: usize, rows: usize) -> Vec<f32> {
        let stream_id: u64 = match stream {
            Stream::Base => 1,
            Stream::Query => 2,
            // Above the payload stream (3).
            Stream::More(i) => 16 + u64::from(i),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream_id);
        rng.set_word_pos((chunk as u128) << 40);
        let dim = self.preset.dim();
        let mut out = vec![0f32; rows * dim];
        for row in out.chunks_exact_mut(dim) {
            self.sample(&mut rng, row);
        }
        out
    }
}

fn to_u8(v: &[f32]) -> Vec<u8> {
    v.iter()
        .map(|x| x.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// Generates `n` rows of a preset in memory, as f32 (the u8 preset's values
/// are already rounded to integers).
pub fn generate_f32(preset: Preset, n: usize, seed: u64, stream: Stream) -> Vec<f32> {
    let mix = Mixture::new(preset, seed);
    let chunks = n.div_ceil(CHUNK_ROWS);
    (0..chunks)
        .into_par_iter()
        .flat_map_iter(|c| {
            let rows = CHUNK_ROWS.min(n - c * CHUNK_ROWS);
            let v = mix.chunk(seed, stream, c, rows);
            match preset.elem() {
                ElemType::U8 => to_u8(&v).into_iter().map(f32::from).collect(),
                _ => v,
            }
        })
        .collect()
}

/// Generates `n` rows of a sift-like (u8) preset in memory.
pub fn generate_u8(n: usize, seed: u64, stream: Stream) -> Vec<u8> {
    generate_f32(Preset::SiftLike, n, seed, stream)
        .into_iter()
        .map(|x| x as u8)
        .collect()
}

/// Generates `n` rows straight into a vector file, a batch of chunks at a
/// time, so memory stays bounded whatever `n` is.
pub fn generate_to_file(
    preset: Preset,
    n: usize,
    seed: u64,
    stream: Stream,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mix = Mixture::new(preset, seed);
    let dim = preset.dim();
    let chunks = n.div_ceil(CHUNK_ROWS);
    let batch = 64;
    progress.stage(&format!("generating {}", path.display()), n as u64);
    match preset.elem() {
        ElemType::U8 => {
            let mut w = VectorWriter::<u8>::create(path, dim, n)?;
            for start in (0..chunks).step_by(batch) {
                let parts: Vec<Vec<u8>> = (start..chunks.min(start + batch))
                    .into_par_iter()
                    .map(|c| to_u8(&mix.chunk(seed, stream, c, CHUNK_ROWS.min(n - c * CHUNK_ROWS))))
                    .collect();
                for p in parts {
                    progress.inc((p.len() / dim) as u64);
                    w.append(&p)?;
                }
            }
            w.finish()?;
        }
        ElemType::F32 | ElemType::I8 => {
            let mut w = VectorWriter::<f32>::create(path, dim, n)?;
            for start in (0..chunks).step_by(batch) {
                let parts: Vec<Vec<f32>> = (start..chunks.min(start + batch))
                    .into_par_iter()
                    .map(|c| mix.chunk(seed, stream, c, CHUNK_ROWS.min(n - c * CHUNK_ROWS)))
                    .collect();
                for p in parts {
                    progress.inc((p.len() / dim) as u64);
                    w.append(&p)?;
                }
            }
            w.finish()?;
        }
    }
    progress.finish_stage();
    Ok(())
}

/// Number of distinct labels of generated documents (`l1` … `l1000`).
pub const LABELS: u32 = 1000;
/// Generated documents' `ts` field is uniform in `0..TS_RANGE`, so a range
/// `ts < x` matches `x / TS_RANGE` of them.
pub const TS_RANGE: u32 = 1_000_000;
/// Stream id of the payload generator (vectors use 1 and 2).
const PAYLOAD_STREAM: u64 = 3;

/// The payload of a generated document: a label and a number, drawn
/// independently of its vector (as a tenant or a date usually is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthPayload {
    /// Label rank, 1-based: rank `r` is the string `l{r}`.
    pub label: u32,
    /// Uniform in `0..TS_RANGE`.
    pub ts: u32,
}

impl SynthPayload {
    /// The document's JSON line (without vector): `{"id":…,"label":"l3","ts":…}`.
    pub fn json_line(&self, id: u64) -> String {
        format!(
            "{{\"id\":{id},\"label\":\"l{}\",\"ts\":{}}}",
            self.label, self.ts
        )
    }
}

/// Expected share of each label rank (index 0 = rank 1): a Zipf law with
/// exponent 1.75 over [`LABELS`] ranks.
///
/// Why 1.75: single labels then cover the selectivities filtered search must
/// be measured at (rank 1 ≈ 51 %, 2 ≈ 15 %, 3 ≈ 7.5 %, 9 ≈ 1.1 %, 35 ≈ 0.1 %),
/// so the same workload runs on engines whose filters take one label only.
/// r^-1.75 = 1 / (r · √r · √√r) needs only `sqrt`, which IEEE 754 rounds
/// exactly: the same seed gives the same labels on any machine.
pub fn label_shares() -> Vec<f64> {
    let w: Vec<f64> = (1..=LABELS)
        .map(|r| {
            let r = f64::from(r);
            1.0 / (r * r.sqrt() * r.sqrt().sqrt())
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

/// Payloads of documents `0..n` for `seed`, independent of the thread count
/// (chunks draw from their own positions of one stream).
pub fn generate_payloads(n: usize, seed: u64) -> Vec<SynthPayload> {
    let mut cdf = label_shares();
    let mut acc = 0.0;
    for c in cdf.iter_mut() {
        acc += *c;
        *c = acc;
    }
    let chunks = n.div_ceil(CHUNK_ROWS);
    (0..chunks)
        .into_par_iter()
        .flat_map_iter(|c| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(PAYLOAD_STREAM);
            rng.set_word_pos((c as u128) << 40);
            let rows = CHUNK_ROWS.min(n - c * CHUNK_ROWS);
            let cdf = &cdf;
            (0..rows)
                .map(move |_| {
                    let u: f64 = rng.random();
                    let rank = cdf.partition_point(|&x| x <= u).min(cdf.len() - 1) as u32 + 1;
                    let ts = rng.random_range(0..TS_RANGE);
                    SynthPayload { label: rank, ts }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::VectorFile;
    use crate::progress::NoProgress;

    #[test]
    fn same_seed_same_bytes_and_streams_differ() {
        let a = generate_u8(5000, 42, Stream::Base);
        let b = generate_u8(5000, 42, Stream::Base);
        let q = generate_u8(5000, 42, Stream::Query);
        let c = generate_u8(5000, 43, Stream::Base);
        assert_eq!(a, b);
        assert_ne!(a, q);
        assert_ne!(a, c);
        let m0 = generate_u8(5000, 42, Stream::More(0));
        let m1 = generate_u8(5000, 42, Stream::More(1));
        assert!(m0 != a && m0 != q && m0 != m1);
        // A prefix of a longer run is the shorter run.
        assert_eq!(&generate_u8(10_000, 42, Stream::Base)[..a.len()], &a[..]);
    }

    /// Pins the generator's output: if this changes, every published
    /// checksum in bench-datasets/ is wrong. Update both together.
    #[test]
    fn golden_checksum() {
        let a = generate_u8(1000, 42, Stream::Base);
        let h = xxhash_rust::xxh3::xxh3_64(&a);
        let d = generate_f32(Preset::DeepLike, 1000, 42, Stream::Base);
        let hd = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&d));
        assert_eq!(
            (h, hd),
            GOLDEN,
            "generator output changed: got {h:#x}, {hd:#x}"
        );
    }
    const GOLDEN: (u64, u64) = (0x7f6b_e6dd_f0a0_cb53, 0x7a9f_dac0_898b_4f40);

    /// Pins the payload generator the same way (the filtered benchmarks'
    /// ground truth depends on it).
    #[test]
    fn golden_payloads() {
        let lines: String = generate_payloads(10_000, 42)
            .iter()
            .enumerate()
            .map(|(i, p)| p.json_line(i as u64) + "\n")
            .collect();
        let h = xxhash_rust::xxh3::xxh3_64(lines.as_bytes());
        assert_eq!(h, GOLDEN_PAYLOADS, "payload generator changed: got {h:#x}");
    }
    const GOLDEN_PAYLOADS: u64 = 0xb526_03b7_4df1_99cf;

    #[test]
    fn file_matches_memory_and_deep_is_normalized() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.u8bin");
        generate_to_file(Preset::SiftLike, 9000, 7, Stream::Base, &p, &NoProgress).unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert_eq!(
            f.vectors::<u8>().unwrap().as_slice(),
            &generate_u8(9000, 7, Stream::Base)[..]
        );
        let d = generate_f32(Preset::DeepLike, 100, 7, Stream::Base);
        for row in d.chunks_exact(96) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn payloads_follow_the_recipe_and_do_not_depend_on_threads() {
        let a = generate_payloads(100_000, 42);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| generate_payloads(100_000, 42)), a);
        assert_eq!(&generate_payloads(5000, 42)[..], &a[..5000]);
        assert_ne!(generate_payloads(5000, 43), a[..5000].to_vec());
        let shares = label_shares();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut counts = vec![0usize; LABELS as usize];
        for p in &a {
            assert!((1..=LABELS).contains(&p.label) && p.ts < TS_RANGE);
            counts[p.label as usize - 1] += 1;
        }
        // Within 5 standard deviations of the expected count, for the
        // ranks the benchmarks use.
        for r in [1usize, 2, 3, 9, 35] {
            let e = shares[r - 1] * a.len() as f64;
            let sd = (e * (1.0 - shares[r - 1])).sqrt();
            let got = counts[r - 1] as f64;
            assert!((got - e).abs() < 5.0 * sd, "rank {r}: {got} vs {e:.0}");
        }
        let low = a.iter().filter(|p| p.ts < TS_RANGE / 10).count() as f64;
        assert!((low / a.len() as f64 - 0.1).abs() < 0.005);
        assert_eq!(
            SynthPayload { label: 3, ts: 17 }.json_line(9),
            r#"{"id":9,"label":"l3","ts":17}"#
        );
    }
}
