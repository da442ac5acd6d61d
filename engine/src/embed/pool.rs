//! From a transformer's token vectors to one sentence vector: the mean over
//! the text's own tokens (padding excluded), then L2 normalisation, as
//! sentence-transformers' `Pooling(mean)` and `Normalize` modules do.
//!
//! Sums run in f64 over the text's tokens in order, so a text's vector does
//! not depend on how much padding its batch added after it.

/// `hidden` is `lens.len() × len × dim` floats (batch, position, feature);
/// row `r` has `lens[r]` real tokens at its start. Returns
/// `lens.len() × dim` floats, each row of unit length (a zero row stays
/// zero, as `F.normalize` with its 1e-12 floor leaves it).
pub fn mean_normalized(hidden: &[f32], len: usize, dim: usize, lens: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(lens.len() * dim);
    let mut acc = vec![0f64; dim];
    for (r, &n) in lens.iter().enumerate() {
        acc.fill(0.0);
        let row = &hidden[r * len * dim..(r * len + n) * dim];
        for tok in row.chunks_exact(dim) {
            for (a, &x) in acc.iter_mut().zip(tok) {
                *a += f64::from(x);
            }
        }
        let count = n.max(1) as f64;
        let mean: Vec<f64> = acc.iter().map(|a| a / count).collect();
        let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        out.extend(mean.iter().map(|x| (x / norm) as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_left_out_and_rows_have_unit_length() {
        // Two texts of 2 and 1 tokens, padded to 3, dim 2; padding holds
        // garbage that must not count.
        let hidden = [
            1.0, 0.0, 3.0, 0.0, 99.0, 99.0, //
            0.0, 2.0, -7.0, 5.0, 42.0, 1.0,
        ];
        let v = mean_normalized(&hidden, 3, 2, &[2, 1]);
        assert_eq!(v, vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn a_text_padded_more_gets_the_same_bits() {
        let tok = [0.25f32, -1.5, 3.0, 0.125];
        let alone = mean_normalized(&tok, 2, 2, &[2]);
        let padded = mean_normalized(&[0.25, -1.5, 3.0, 0.125, 7.0, 7.0, 7.0, 7.0], 4, 2, &[2]);
        assert_eq!(alone, padded);
    }
}
