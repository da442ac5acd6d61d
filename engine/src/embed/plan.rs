//! Which texts go into which batch, fixed by the input alone.
//!
//! Rows are grouped into windows of [`WINDOW`] consecutive rows, counted
//! from row 0 of the input. Inside a window the rows are ordered by word
//! pieces, longest first (ties by row), and cut into batches of `batch`
//! rows: texts of similar length share a batch, so little of it is padding.
//!
//! Why fixed: a text's vector may differ in its last bits with the batch it
//! ran in (padding changes the shapes the matrix kernels see), so a resumed
//! run, a run split into parts and an uninterrupted run must form exactly
//! the same batches to write the same bytes. Windows start at multiples of
//! [`WINDOW`], and parts ([`part_rows`]) are made of whole windows, so a
//! batch never depends on where a run started or stopped.

use std::ops::Range;

/// Rows per window. Large enough that sorting inside it removes most
/// padding (manpages-dev: texts of 5 to 256 word pieces), small enough that
/// a window's batches finish in seconds.
pub const WINDOW: usize = 1024;

/// Rows of part `index` of `parts` over `total` rows: whole windows,
/// contiguous, as even as windows allow (a part may be empty when there are
/// more parts than windows).
pub fn part_rows(total: usize, index: usize, parts: usize, window: usize) -> Range<usize> {
    let windows = total.div_ceil(window);
    let first = index * windows / parts;
    let end = (index + 1) * windows / parts;
    (first * window).min(total)..(end * window).min(total)
}

/// Batches over `rows` (which starts on a window boundary), given each
/// row's word-piece count (`lens[i]` is row `rows.start + i`). Each batch
/// lists global row numbers.
pub fn batches(rows: Range<usize>, lens: &[usize], window: usize, batch: usize) -> Vec<Vec<u32>> {
    debug_assert_eq!(rows.len(), lens.len());
    let mut out = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let end = ((start / window + 1) * window).min(rows.end);
        let mut w: Vec<usize> = (start..end).collect();
        w.sort_by_key(|&r| (std::cmp::Reverse(lens[r - rows.start]), r));
        for chunk in w.chunks(batch) {
            out.push(chunk.iter().map(|&r| r as u32).collect());
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_windows_covering_every_row_once() {
        for total in [0, 1, 9, 10, 11, 100, 1023] {
            for parts in 1..=7 {
                let ranges: Vec<_> = (0..parts).map(|i| part_rows(total, i, parts, 10)).collect();
                let mut next = 0;
                for r in &ranges {
                    assert_eq!(r.start, next);
                    assert!(r.start % 10 == 0 || r.start == total);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn batches_sort_by_length_inside_windows_only() {
        let lens = [3, 9, 1, 9, 5, 2, 8];
        let b = batches(0..7, &lens, 4, 2);
        assert_eq!(b, vec![vec![1, 3], vec![0, 2], vec![6, 4], vec![5]]);
        // A part starting at window 1 forms the same batches there.
        assert_eq!(batches(4..7, &lens[4..], 4, 2), vec![vec![6, 4], vec![5]]);
    }
}
