//! Version 2's node order: which nodes share a sector, and the slot table
//! that says where each node's record is. Spec: `format-spec/index.md`,
//! "Version 2".
//!
//! A search reads a whole sector to visit one node; in version 1 the other
//! records of that sector are whatever nodes have the neighbouring ids, of
//! no use to the query. Here a sector is filled with a node and its graph
//! neighbours (a greedy form of Starling's block shuffling), so that the
//! records a read brings along are likely to be ones the search wants
//! next: it uses them without reading them ([`crate::search::BeamSearch`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{IndexHeader, SECTOR};
use crate::error::{Error, FormatError, Result};
use crate::vamana::Graph;

/// The node of every slot, `rps` slots to a sector. Each sector starts
/// from the lowest unplaced id and grows by the unplaced node that the
/// most of its nodes point to (ties: the one met first, so a node's
/// nearer neighbours, listed first, win). When no node of the sector
/// points to an unplaced one, the lowest unplaced id joins. Every sector
/// but the last is full.
///
/// The first version grew each sector breadth-first (a node, then its
/// first neighbours): a star whose leaves are rarely each other's
/// neighbours. Counting the links into the sector makes it denser: on 1M
/// sift-like points 36 % of a node's sector mates are its neighbours
/// instead of 25 %, and a search at recall@10 0.95 reads about 3 % fewer
/// sectors. Counting links out of the candidate too (a reverse graph,
/// 4 bytes per edge) gave 37 % and under 1 % fewer reads: not worth the
/// memory.
pub fn locality_order(graph: &Graph, rps: usize) -> Vec<u32> {
    let n = graph.len();
    let rps = rps.max(1);
    let mut placed = vec![false; n];
    let mut order: Vec<u32> = Vec::with_capacity(n);
    let mut next_seed = 0usize;
    // Unplaced candidate → (links from the sector, order met).
    let mut pool: FxHashMap<u32, (u32, u32)> = FxHashMap::default();
    while order.len() < n {
        let end = (order.len() + rps).min(n);
        pool.clear();
        let mut met = 0u32;
        while order.len() < end {
            let best = pool
                .iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
                .map(|(&v, _)| v as usize);
            let u = match best {
                Some(v) => v,
                None => {
                    while placed.get(next_seed).copied().unwrap_or(false) {
                        next_seed += 1;
                    }
                    next_seed
                }
            };
            match placed.get_mut(u) {
                Some(p) => *p = true,
                None => break,
            }
            pool.remove(&(u as u32));
            order.push(u as u32);
            for &v in graph.neighbors(u) {
                if placed.get(v as usize).copied().unwrap_or(true) {
                    continue;
                }
                pool.entry(v)
                    .or_insert_with(|| {
                        met += 1;
                        (0, met)
                    })
                    .0 += 1;
            }
        }
    }
    order
}

/// Of the other records in a node's sector, the mean share that are its
/// graph neighbours: 0 for unrelated neighbours, 1 when every sector is a
/// clique. `order` lists the node of every slot ([`locality_order`]);
/// `None` is version 1's identity order (nothing is allocated for it).
pub fn sector_overlap(graph: &Graph, order: Option<&[u32]>, rps: usize) -> f64 {
    let n = graph.len();
    if rps < 2 || n == 0 {
        return 0.0;
    }
    let node_at = |slot: usize| order.map_or(slot as u32, |o| o.get(slot).copied().unwrap_or(0));
    let mut sum = 0.0;
    for first in (0..n).step_by(rps) {
        let last = (first + rps).min(n);
        if last - first < 2 {
            continue;
        }
        for u in (first..last).map(node_at) {
            let nbrs = graph.neighbors(u as usize);
            let hits = (first..last)
                .map(node_at)
                .filter(|&v| v != u && nbrs.contains(&v))
                .count();
            sum += hits as f64 / (last - first - 1) as f64;
        }
    }
    sum / n as f64
}

/// The slot table as stored: `slots[i]`, the slot of node `i`, for every
/// node (little-endian u32), then the XXH3-64 of those bytes, zero-padded
/// to a whole sector.
pub(crate) fn slot_table_bytes(order: &[u32]) -> Vec<u8> {
    let mut slots = vec![0u32; order.len()];
    for (slot, &node) in order.iter().enumerate() {
        if let Some(s) = slots.get_mut(node as usize) {
            *s = slot as u32;
        }
    }
    let mut bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    bytes.resize(bytes.len().div_ceil(SECTOR) * SECTOR, 0);
    bytes
}

/// Reads and checks the slot table of a version 2 index at `path`: its
/// checksum, and that it is a permutation of `0..n` (every node in exactly
/// one slot). The file's length is checked before anything is allocated.
pub fn read_slot_table(path: &Path, header: &IndexHeader) -> Result<Arc<[u32]>> {
    let n = header.num_points as usize;
    let offset = header.num_sectors() * SECTOR as u64;
    let want = 4 * header.num_points + 8;
    let io = |e| Error::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < offset.saturating_add(want) {
        return Err(Error::format(
            path,
            FormatError::Truncated {
                what: "slot table",
                offset,
                end: offset.saturating_add(want),
                file_len,
            },
        ));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = vec![0u8; 4 * n + 8];
    file.read_exact(&mut bytes).map_err(io)?;
    parse_slot_table(&bytes, n).map_err(|e| Error::format(path, e))
}

/// Checks and decodes a slot table for `n` nodes from `bytes` (the file
/// from the table's first byte on; only its first `4·n + 8` bytes are read).
pub fn parse_slot_table(bytes: &[u8], n: usize) -> std::result::Result<Arc<[u32]>, FormatError> {
    let len = n.saturating_mul(4);
    let (table, sum) = match (bytes.get(..len), bytes.get(len..len.saturating_add(8))) {
        (Some(t), Some(s)) => (t, s),
        _ => {
            return Err(FormatError::Truncated {
                what: "slot table",
                offset: 0,
                end: len as u64 + 8,
                file_len: bytes.len() as u64,
            })
        }
    };
    let stored = u64::from_le_bytes(sum.try_into().unwrap_or([0; 8]));
    let computed = xxhash_rust::xxh3::xxh3_64(table);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch {
            what: "slot table",
            stored,
            computed,
        });
    }
    let slots: Arc<[u32]> = super::le_u32s(table).collect();
    let mut taken = vec![false; n];
    for (node, &slot) in slots.iter().enumerate() {
        match taken.get_mut(slot as usize) {
            Some(t) if !*t => *t = true,
            _ => {
                return Err(FormatError::Invalid {
                    field: "slot",
                    value: slot.into(),
                    why: format!("node {node}'s slot is out of range or taken twice (n = {n})"),
                })
            }
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn graph(n: usize, r: usize, seed: u64) -> Graph {
        let adj = (0..n)
            .map(|i| {
                (0..r)
                    .map(|j| ((i as u64 * 31 + j as u64 * 17 + seed) % n as u64) as u32)
                    .filter(|&v| v as usize != i)
                    .collect()
            })
            .collect();
        Graph::from_parts(adj, r, 0)
    }

    proptest! {
        /// Whatever the graph, the order places every node exactly once.
        #[test]
        fn order_is_a_permutation(n in 1usize..600, r in 0usize..12, rps in 1usize..20, seed in any::<u64>()) {
            let g = graph(n, r, seed);
            let order = locality_order(&g, rps);
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n as u32).collect::<Vec<_>>());
            let table = slot_table_bytes(&order);
            prop_assert_eq!(table.len() % SECTOR, 0);
            for (slot, &node) in order.iter().enumerate() {
                let at = 4 * node as usize;
                prop_assert_eq!(u32::from_le_bytes(table[at..at + 4].try_into().unwrap()), slot as u32);
            }
        }
    }

    /// On a graph made of cliques of one sector's size, every sector is a
    /// clique: the order finds the locality there is.
    #[test]
    fn cliques_fill_whole_sectors() {
        let (n, rps) = (400usize, 8usize);
        // Clique c is the ids ≡ c (mod 50): far apart in id order.
        let adj = (0..n)
            .map(|i| {
                (0..n)
                    .filter(|&j| j != i && j % 50 == i % 50)
                    .map(|j| j as u32)
                    .collect()
            })
            .collect();
        let g = Graph::from_parts(adj, rps, 0);
        let order = locality_order(&g, rps);
        assert!((sector_overlap(&g, Some(&order), rps) - 1.0).abs() < 1e-9);
        assert_eq!(sector_overlap(&g, None, rps), 0.0);
    }
}
