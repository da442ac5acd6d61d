//! A merge: the next version of a shard's segment, with the writes of its
//! log folded in (FreshDiskANN's StreamingMerge, over shardann's sealed,
//! versioned segments).
//!
//! ```text
//!  wal.log records (segment's applied LSN, through]
//!     │  net effect per id: the last upsert, or a delete
//!     ▼
//!  segment's disk.index, read whole ──► delete consolidation ──► inserts ──► renumber
//!                                       (repair the lists that       (walk + RobustPrune
//!                                        named a deleted node)        + reverse edges)
//!     ▼
//!  v(N+1)/ disk.index · pq.bin (same codebook) · keys/docs/filters/text · ids.bin
//!     ▼
//!  seal (manifest with applied_lsn) ─► verify ─► publish (CURRENT)
//! ```
//!
//! What a merge costs. The graph work grows with the changes: each delete
//! touches the lists that named the deleted node, each insert is one walk
//! and its reverse edges. The files do not: `disk.index` is read whole into
//! RAM and written whole (the locality order renumbers every node), and the
//! documents, filter index and text index are written anew; that is
//! sequential IO and no distance work, proportional to the segment. RAM
//! holds the segment's vectors and graph (as `relayout` does): a shard
//! bigger than RAM would need FreshDiskANN's streamed passes, not built.
//!
//! Delete consolidation keeps a node's surviving neighbours and fills the
//! slots its deleted neighbours leave from their own lists (nearest first,
//! under the α-rule against the kept ones), instead of FreshDiskANN's full
//! RobustPrune of the union: at 5 % deletes nearly every list names a
//! deleted node, and a full prune of every list cost as much as a build.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use roaring::RoaringBitmap;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{Map, Value};

use crate::data::Vectors;
use crate::docs::{Documents, UserId};
use crate::error::{Error, Result, SegmentError, WriteError};
use crate::index::{read_records, write_in_order, DiskIndex};
use crate::layout::{self, version_dir_name, IndexHeader, IDS_FILE, INDEX_FILE, PQ_FILE};
use crate::metric::{Element, Metric};
use crate::mutable::WAL_FILE;
use crate::progress::Progress;
use crate::segment;
use crate::shard;
use crate::vamana::{occludes, MutableGraph, VamanaParams};
use crate::wal::{self, Op};

/// The global id (`ids.bin`) of a document written after the build: it
/// has no row in the build's input; answers name it by its user id.
pub const WRITTEN_GLOBAL_ID: u32 = u32::MAX;

/// What a merge did and how long each stage took. The version's
/// `build.json` holds it as it stood before the seal (`seal_seconds` and
/// `seconds` 0 there); the returned report is whole.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MergeReport {
    /// The version written and published, and the one it replaced.
    pub version: u64,
    pub parent: u64,
    /// The last LSN folded in: records up to it may be cut from the log.
    pub applied_lsn: u64,
    /// Log records folded in, and their document ops.
    pub records: u64,
    pub ops: u64,
    pub points_before: u64,
    pub points_after: u64,
    /// Segment points removed (deleted, or replaced by a new copy).
    pub removed: u64,
    /// Points inserted (new documents and new copies).
    pub inserted: u64,
    /// Lists repaired by delete consolidation.
    pub repaired: u64,
    pub read_seconds: f64,
    pub consolidate_seconds: f64,
    pub insert_seconds: f64,
    pub write_seconds: f64,
    pub documents_seconds: f64,
    pub seal_seconds: f64,
    pub seconds: f64,
}

/// The net effect of log records on one segment: which of its points die,
/// and which documents are new (the last upsert of each id not deleted
/// after it), in the order their ids were first written.
struct NetWrites<T> {
    removed: RoaringBitmap,
    added: Vec<(UserId, Vec<T>, Map<String, Value>)>,
    records: u64,
    ops: u64,
    applied: u64,
}

/// An id's last write: its vector and payload, or `None` for a delete.
type Written<T> = Option<(Vec<T>, Map<String, Value>)>;

fn net_writes<T: Element>(
    records: Vec<(u64, Vec<Op<T>>)>,
    after: u64,
    through: u64,
    segment: &Documents,
) -> NetWrites<T> {
    let mut slot: FxHashMap<UserId, usize> = FxHashMap::default();
    let mut last: Vec<(UserId, Written<T>)> = Vec::new();
    let (mut n_records, mut n_ops, mut applied) = (0, 0, after);
    for (lsn, ops) in records {
        if lsn <= after || lsn > through {
            continue;
        }
        n_records += 1;
        applied = lsn;
        for op in ops {
            n_ops += 1;
            let (id, value) = match op {
                Op::Upsert {
                    id,
                    vector,
                    payload,
                } => (id, Some((vector, payload))),
                Op::Delete { id } => (id, None),
            };
            match slot.get(&id) {
                Some(&i) => {
                    if let Some(entry) = last.get_mut(i) {
                        entry.1 = value;
                    }
                }
                None => {
                    slot.insert(id.clone(), last.len());
                    last.push((id, value));
                }
            }
        }
    }
    let keys = segment.keys();
    let removed = last.iter().filter_map(|(id, _)| keys.lookup(id)).collect();
    let added = last
        .into_iter()
        .filter_map(|(id, v)| v.map(|(vector, payload)| (id, vector, payload)))
        .collect();
    NetWrites {
        removed,
        added,
        records: n_records,
        ops: n_ops,
        applied,
    }
}

/// Repairs the lists that name deleted nodes (see the module docs): for
/// each live node, its surviving neighbours, then the nearest candidates
/// from its deleted neighbours' lists that the kept ones do not occlude,
/// up to `r`. Returns how many lists changed.
fn consolidate<T: Element>(
    adj: &mut [Vec<u32>],
    vectors: &[T],
    dim: usize,
    removed: &RoaringBitmap,
    metric: Metric,
    alpha: f32,
    r: usize,
) -> u64 {
    let vec_of = |i: u32| {
        let at = i as usize * dim;
        vectors.get(at..at + dim).unwrap_or(&[])
    };
    let repaired: Vec<(usize, Vec<u32>)> = (0..adj.len())
        .into_par_iter()
        .filter(|&p| !removed.contains(p as u32) && adj[p].iter().any(|&v| removed.contains(v)))
        .map(|p| {
            let list = &adj[p];
            let mut kept: Vec<u32> = list
                .iter()
                .copied()
                .filter(|&v| !removed.contains(v))
                .collect();
            let mut seen: FxHashSet<u32> = kept.iter().copied().collect();
            seen.insert(p as u32);
            let mut cands: Vec<(f32, u32)> = Vec::new();
            for &v in list.iter().filter(|&&v| removed.contains(v)) {
                for &c in &adj[v as usize] {
                    if !removed.contains(c) && seen.insert(c) {
                        cands.push((metric.distance(vec_of(p as u32), vec_of(c)), c));
                    }
                }
            }
            let free = r.saturating_sub(kept.len());
            if free == 0 || cands.is_empty() {
                return (p, kept);
            }
            cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            cands.truncate(4 * free);
            let before = kept.len();
            for &(d_pc, c) in &cands {
                if kept.len() - before >= free {
                    break;
                }
                let occluded = kept
                    .iter()
                    .any(|&s| occludes(metric, alpha, d_pc, metric.distance(vec_of(s), vec_of(c))));
                if !occluded {
                    kept.push(c);
                }
            }
            if kept.len() == before {
                // Every candidate occluded: keep the nearest, so that the
                // paths through the deleted node keep one way on.
                if let Some(&(_, c)) = cands.first() {
                    kept.push(c);
                }
            }
            (p, kept)
        })
        .collect();
    let n = repaired.len() as u64;
    for (p, list) in repaired {
        if let Some(slot) = adj.get_mut(p) {
            *slot = list;
        }
    }
    for d in removed {
        if let Some(slot) = adj.get_mut(d as usize) {
            slot.clear();
        }
    }
    n
}

/// The live node nearest to `target`: the walks' new entry point when the
/// medoid was deleted.
fn nearest_live<T: Element>(
    vectors: &[T],
    dim: usize,
    n: usize,
    removed: &RoaringBitmap,
    metric: Metric,
    target: &[T],
) -> Option<u32> {
    (0..n as u32)
        .into_par_iter()
        .filter(|&i| !removed.contains(i))
        .map(|i| {
            let at = i as usize * dim;
            (
                metric.distance(target, vectors.get(at..at + dim).unwrap_or(&[])),
                i,
            )
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|x| x.1)
}

/// Merges the writes logged in `shard_dir/wal.log` after `segment`'s
/// applied LSN and up to `through` into the next version of the shard,
/// seals, verifies and publishes it. `segment` must be the shard's
/// current version. Returns `Ok(None)` when the log holds nothing to fold
/// in. The log is not changed: cut it with `Wal::truncate_through` once
/// the new version is being served.
pub fn merge<T: Element>(
    shard_dir: &Path,
    segment: &DiskIndex,
    through: u64,
    progress: &dyn Progress,
) -> Result<Option<MergeReport>> {
    let t0 = Instant::now();
    let manifest = segment
        .segment()
        .ok_or_else(|| Error::segment(segment.dir(), SegmentError::NotAVersion))?;
    let docs = segment
        .documents()
        .ok_or_else(|| Error::from(WriteError::NoDocuments))?;
    let (current, _) = shard::current(shard_dir)?;
    if current != manifest.version {
        return Err(Error::segment(
            shard_dir,
            SegmentError::NotCurrent {
                version: manifest.version,
                current,
            },
        ));
    }
    let after = manifest.applied_lsn.unwrap_or(0);
    let dim = segment.dim();
    let records = wal::read_log::<T>(&shard_dir.join(WAL_FILE), dim)?;
    let net = net_writes(records, after, through, docs);
    if net.records == 0 {
        return Ok(None);
    }
    let header = *segment.header();
    let metric = segment.metric();
    let n = segment.len();
    let r = header.max_degree as usize;

    let t = Instant::now();
    let (bytes, graph) = read_records(segment, progress)?;
    // Copied into `T`s: the bytes are not aligned for f32.
    let mut vectors: Vec<T> = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut vectors).copy_from_slice(&bytes);
    drop(bytes);
    let mut adj = graph.adj;
    let read_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    progress.stage("repairing lists around deletes", 1);
    let removed = &net.removed;
    let repaired = consolidate(&mut adj, &vectors, dim, removed, metric, header.alpha, r);
    let mut entry = header.medoid as u32;
    if removed.contains(entry) {
        let at = entry as usize * dim;
        let target = vectors.get(at..at + dim).unwrap_or(&[]).to_vec();
        match nearest_live(&vectors, dim, n, removed, metric, &target) {
            Some(e) => entry = e,
            // Every old point is gone: the first new one is the entry.
            None => entry = n as u32,
        }
    }
    progress.finish_stage();
    let consolidate_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    progress.stage("inserting new points", net.added.len() as u64);
    let params = VamanaParams {
        max_degree: r,
        build_list: header.build_list as usize,
        alpha: header.alpha,
        ..VamanaParams::default()
    };
    let all_gone = entry as usize >= n;
    let mut g =
        MutableGraph::from_parts(dim, metric, &params, vectors, adj, entry.min(n as u32 - 1));
    for (i, (_, vector, _)) in net.added.iter().enumerate() {
        let id = g.insert(vector);
        if all_gone && i == 0 {
            g.set_entry(id);
        }
        progress.inc(1);
    }
    progress.finish_stage();
    let (vectors, adj) = g.into_parts();
    let insert_seconds = t.elapsed().as_secs_f64();

    // Renumber: surviving old points in order, then the new ones.
    let total = adj.len();
    let mut new_id = vec![u32::MAX; total];
    let mut next = 0u32;
    for (old, slot) in new_id.iter_mut().enumerate() {
        if old >= n || !removed.contains(old as u32) {
            *slot = next;
            next += 1;
        }
    }
    let keep: Vec<u32> = (0..n as u32).filter(|&i| !removed.contains(i)).collect();
    let m = next as usize;
    let mut new_adj: Vec<Vec<u32>> = vec![Vec::new(); m];
    let mut new_vectors: Vec<T> = Vec::with_capacity(m * dim);
    for (old, list) in adj.into_iter().enumerate() {
        let Some(&id) = new_id.get(old) else { continue };
        if id == u32::MAX {
            continue;
        }
        if let Some(slot) = new_adj.get_mut(id as usize) {
            *slot = list
                .into_iter()
                .filter_map(|v| new_id.get(v as usize).copied())
                .filter(|&v| v != u32::MAX)
                .collect();
        }
        let at = old * dim;
        new_vectors.extend_from_slice(vectors.get(at..at + dim).unwrap_or(&[]));
    }
    drop(vectors);
    let medoid = if all_gone {
        0
    } else {
        new_id.get(entry as usize).copied().unwrap_or(0)
    };
    if m == 0 {
        return Err(Error::from(WriteError::WouldEmpty));
    }

    let t = Instant::now();
    let version = current + 1;
    let seg = shard_dir.join(version_dir_name(version));
    if seg.exists() {
        // Newer than CURRENT, so never served: a merge cut short.
        std::fs::remove_dir_all(&seg).map_err(|e| Error::io(&seg, e))?;
    }
    std::fs::create_dir_all(&seg).map_err(|e| Error::io(&seg, e))?;
    let graph = crate::vamana::Graph::from_parts(new_adj, r, medoid);
    let out_header = IndexHeader {
        num_points: m as u64,
        medoid: medoid as u64,
        ..header
    };
    write_in_order(
        &seg.join(INDEX_FILE),
        out_header,
        Vectors::new(&new_vectors, dim),
        &graph,
        progress,
    )?;
    drop(graph);
    let pq = segment.pq();
    let chunks = pq.num_chunks();
    let old_codes = segment.codes();
    let mut codes: Vec<u8> = Vec::with_capacity(m * chunks);
    for &i in &keep {
        let at = i as usize * chunks;
        codes.extend_from_slice(old_codes.get(at..at + chunks).unwrap_or(&[]));
    }
    let added_vectors: Vec<T> = net
        .added
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .collect();
    codes.extend(pq.encode_all(Vectors::new(&added_vectors, dim), progress));
    layout::write_pq(&seg.join(PQ_FILE), pq, &codes)?;
    let ids_path = segment.dir().join(IDS_FILE);
    if ids_path.exists() {
        let old_ids = layout::read_ids(&ids_path)?;
        let mut ids: Vec<u32> = keep
            .iter()
            .map(|&i| {
                old_ids
                    .get(i as usize)
                    .copied()
                    .unwrap_or(WRITTEN_GLOBAL_ID)
            })
            .collect();
        ids.resize(m, WRITTEN_GLOBAL_ID);
        layout::write_ids(&seg.join(IDS_FILE), &ids)?;
    }
    let write_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let added_docs: Vec<(UserId, &Map<String, Value>)> = net
        .added
        .iter()
        .map(|(id, _, payload)| (id.clone(), payload))
        .collect();
    Documents::write_merged(docs, &keep, &added_docs, &seg)?;
    let documents_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut report = MergeReport {
        version,
        parent: current,
        applied_lsn: net.applied,
        records: net.records,
        ops: net.ops,
        points_before: n as u64,
        points_after: m as u64,
        removed: removed.len(),
        inserted: net.added.len() as u64,
        repaired,
        read_seconds,
        consolidate_seconds,
        insert_seconds,
        write_seconds,
        documents_seconds,
        ..MergeReport::default()
    };
    let info = seg.join(layout::BUILD_INFO_FILE);
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    std::fs::write(&info, json).map_err(|e| Error::io(&info, e))?;
    segment::seal(
        &seg,
        manifest.shard_id,
        version,
        Some(current),
        Some(net.applied),
    )?;
    segment::verify(&seg)?;
    shard::publish(shard_dir, version)?;
    report.seal_seconds = t.elapsed().as_secs_f64();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(Some(report))
}

#[cfg(test)]
mod tests;
