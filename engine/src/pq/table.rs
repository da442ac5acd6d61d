//! Asymmetric distance computation: the query stays exact, the base is coded.

use super::encode::{PqCodebook, CENTROIDS};
use crate::metric::{Element, Metric};

/// Per-query lookup table: `M × 256` partial distances. Built once per query
/// (M·256·dim/M flops), then each coded point costs M lookups and adds.
#[derive(Debug, Clone, Default)]
pub struct QueryTable {
    table: Vec<f32>,
    m: usize,
    /// Added to every distance: `-⟨q, μ⟩` for inner product, 0 for L2.
    bias: f32,
    scratch: Vec<f32>,
}

impl QueryTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the table for `query` (reusing this table's memory).
    pub fn prepare<T: Element>(&mut self, pq: &PqCodebook, query: &[T]) {
        let m = pq.num_chunks();
        self.m = m;
        self.table.clear();
        self.table.resize(m * CENTROIDS, 0.0);
        let mut q = std::mem::take(&mut self.scratch);
        pq.prepare(query, &mut q);
        // Walk dimensions in order; each adds one term to the 256 entries of
        // its chunk's row, reading the 256 pivots of that dimension
        // contiguously (`pivots_by_dim`), so the inner loop vectorizes.
        let rows: &mut [[f32; CENTROIDS]] = bytemuck::cast_slice_mut(&mut self.table);
        let by_dim = pq.pivots_by_dim.chunks_exact(CENTROIDS);
        let l2 = pq.metric == Metric::L2;
        if l2 {
            q.iter_mut().zip(&pq.center).for_each(|(x, c)| *x -= c);
            self.bias = 0.0;
        } else {
            self.bias = -q.iter().zip(&pq.center).map(|(a, b)| a * b).sum::<f32>();
        }
        let mut d = 0;
        for (c, row) in rows.iter_mut().enumerate() {
            let hi = pq.offsets[c + 1] as usize;
            for col in by_dim.clone().take(hi).skip(d) {
                let qd = q[d];
                // The branch is per dimension, outside the 256-wide loop.
                if l2 {
                    row.iter_mut()
                        .zip(col)
                        .for_each(|(t, &p)| *t += (qd - p) * (qd - p));
                } else {
                    row.iter_mut().zip(col).for_each(|(t, &p)| *t -= qd * p);
                }
                d += 1;
            }
        }
        self.scratch = q;
    }

    /// Bytes per code this table was prepared for.
    pub fn num_chunks(&self) -> usize {
        self.m
    }

    /// The approximate distance of a coded point (`code.len() == M`).
    #[inline]
    pub fn distance(&self, code: &[u8]) -> f32 {
        // Rows typed as [f32; 256] so that indexing by a u8 needs no bounds check.
        let rows: &[[f32; CENTROIDS]] = bytemuck::cast_slice(&self.table);
        debug_assert_eq!(code.len(), rows.len());
        // Four running sums, not one: each add waits only on its own sum,
        // so four lookups are in flight at once instead of a chain of M
        // dependent adds (the flat plan scores up to ~10^5 codes a query).
        let mut acc = [0f32; 4];
        let (rows4, rows_rest) = rows.split_at(rows.len() / 4 * 4);
        let (code4, code_rest) = code.split_at(code.len().min(rows4.len()));
        for (r, c) in rows4.chunks_exact(4).zip(code4.chunks_exact(4)) {
            acc[0] += r[0][c[0] as usize];
            acc[1] += r[1][c[1] as usize];
            acc[2] += r[2][c[2] as usize];
            acc[3] += r[3][c[3] as usize];
        }
        for (row, &c) in rows_rest.iter().zip(code_rest) {
            acc[0] += row[c as usize];
        }
        let sum = self.bias + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
        // For cosine this is -⟨q̂, x̃⟩ with x̃ = μ + c the reconstruction of the
        // normalized point: about (1 - cos) - 1. Only the order matters here.
        sum
    }

    /// Approximate distances of many points whose codes sit in `codes`
    /// (`n × M`), for the ids given; an id without a code gets +∞.
    ///
    /// The codes of a node's neighbours are scattered over a table far
    /// larger than the CPU caches, so each is a cache miss. All of them are
    /// touched first, in a loop of independent loads the CPU overlaps, and
    /// only then summed: the misses are paid in parallel, not one by one.
    /// (perf on 1M points: 32% of search CPU was this function before.)
    pub fn distances(&self, codes: &[u8], ids: &[u32], out: &mut Vec<f32>) {
        let m = self.m;
        touch_codes(codes, m, ids);
        out.clear();
        out.extend(ids.iter().map(|&id| {
            let start = id as usize * m;
            codes
                .get(start..start + m)
                .map_or(f32::INFINITY, |c| self.distance(c))
        }));
    }
}

/// Loads the first byte of each id's code (`m` bytes each), in a loop of
/// independent loads that the CPU overlaps, so that the cache misses of
/// scattered codes are paid together before the codes are scored.
fn touch_codes(codes: &[u8], m: usize, ids: &[u32]) {
    let mut touch = 0u8;
    for &id in ids {
        touch ^= codes.get(id as usize * m).copied().unwrap_or(0);
    }
    std::hint::black_box(touch);
}

/// Asks the CPU to bring each id's code (`m` bytes each) into the cache,
/// without waiting for it: the scoring of earlier codes then overlaps
/// these misses. Both ends of a code are asked for, as a code may cross a
/// cache line.
pub(crate) fn prefetch_codes(codes: &[u8], m: usize, ids: &[u32]) {
    for &id in ids {
        let start = id as usize * m;
        if let Some(code) = codes.get(start..start + m) {
            prefetch(code.as_ptr());
            prefetch(code[m - 1..].as_ptr());
        }
    }
}

#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and never reads into
    // a register; `p` points into a live slice besides.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Vectors;
    use crate::pq::PqParams;
    use crate::progress::NoProgress;
    use crate::synth::{generate_f32, generate_u8, Preset, Stream};
    use proptest::prelude::*;

    fn exact(metric: Metric, q: &[f32], x: &[f32]) -> f32 {
        match metric {
            Metric::L2 => q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum(),
            _ => -q.iter().zip(x).map(|(a, b)| a * b).sum::<f32>(),
        }
    }

    fn trained(metric: Metric) -> (PqCodebook, Vec<u8>, Vec<f32>, usize) {
        let (data, dim) = match metric {
            Metric::L2 => (
                generate_u8(1500, 5, Stream::Base)
                    .into_iter()
                    .map(f32::from)
                    .collect(),
                128,
            ),
            _ => (generate_f32(Preset::DeepLike, 1500, 5, Stream::Base), 96),
        };
        let v = Vectors::new(&data[..], dim);
        let p = PqParams {
            num_chunks: 16,
            train_sample: 1500,
            iterations: 4,
            seed: 2,
        };
        let pq = PqCodebook::train(v, metric, &p, &NoProgress).unwrap();
        let codes = pq.encode_all(v, &NoProgress);
        (pq, codes, data, dim)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The ADC value equals the exact distance to the decoded vector.
        #[test]
        fn adc_equals_distance_to_decoded(metric_i in 0usize..3, point in 0usize..1500, query in 0usize..1500) {
            let metric = [Metric::L2, Metric::InnerProduct, Metric::Cosine][metric_i];
            let (pq, codes, data, dim) = trained(metric);
            let m = pq.num_chunks();
            let mut q = data[query * dim..(query + 1) * dim].to_vec();
            let mut t = QueryTable::new();
            t.prepare(&pq, &q);
            let adc = t.distance(&codes[point * m..(point + 1) * m]);
            let dec = pq.decode(&codes[point * m..(point + 1) * m]);
            if metric == Metric::Cosine { crate::metric::normalize(&mut q); }
            let want = exact(metric, &q, &dec);
            prop_assert!((adc - want).abs() <= 1e-3 * want.abs().max(1.0), "{metric}: adc {adc} vs {want}");
        }
    }

    #[test]
    fn adc_ranks_like_exact_distance() {
        // The PQ nearest neighbour of a query is among the exact top 10 most of the time.
        let (pq, codes, data, dim) = trained(Metric::L2);
        let m = pq.num_chunks();
        let mut t = QueryTable::new();
        let mut good = 0;
        for qi in 0..50 {
            let q = &data[qi * dim..(qi + 1) * dim];
            t.prepare(&pq, q);
            let mut exact_d: Vec<(f32, usize)> = (0..1500)
                .filter(|&i| i != qi)
                .map(|i| (exact(Metric::L2, q, &data[i * dim..(i + 1) * dim]), i))
                .collect();
            exact_d.sort_by(|a, b| a.0.total_cmp(&b.0));
            let best_pq = (0..1500)
                .filter(|&i| i != qi)
                .min_by(|&a, &b| {
                    t.distance(&codes[a * m..(a + 1) * m])
                        .total_cmp(&t.distance(&codes[b * m..(b + 1) * m]))
                })
                .unwrap();
            good += usize::from(exact_d[..10].iter().any(|x| x.1 == best_pq));
        }
        assert!(
            good >= 40,
            "PQ nearest is in exact top-10 for only {good}/50 queries"
        );
    }

    proptest! {
        /// The unrolled sum equals the plain sum of the looked-up entries
        /// for every chunk count, multiples of four or not.
        #[test]
        fn distance_is_the_sum_of_the_looked_up_entries(
            entries in proptest::collection::vec(-100f32..100.0, 1..40usize * CENTROIDS),
            seed in any::<u64>(),
            bias in -10f32..10.0,
        ) {
            let m = entries.len() / CENTROIDS;
            prop_assume!(m > 0);
            let table = QueryTable {
                table: entries[..m * CENTROIDS].to_vec(),
                m,
                bias,
                scratch: Vec::new(),
            };
            let code: Vec<u8> = (0..m as u64)
                .map(|i| (seed.wrapping_mul(i + 1).rotate_left(17) >> 3) as u8)
                .collect();
            let plain: f32 = bias
                + code
                    .iter()
                    .enumerate()
                    .map(|(c, &x)| table.table[c * CENTROIDS + x as usize])
                    .sum::<f32>();
            let got = table.distance(&code);
            prop_assert!((got - plain).abs() <= 1e-3 * (1.0 + plain.abs()), "{got} vs {plain}");
        }
    }
}
