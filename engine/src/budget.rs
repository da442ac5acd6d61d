//! A build whose peak resident memory stays under a budget
//! (`build --memory-budget`), for data sets whose graph does not fit in RAM.
//!
//! ```text
//!  base (mmap, read in order, pages released behind the copy)
//!   ├─► PQ codebook and k-means centroids, from one seeded sample
//!   ├─► every point to its 2 nearest non-full cells (balanced, 2 copies)
//!   ├─► per cell: gather its rows, Vamana with R' = 2R/3, write its lists
//!   │   (global ids, exact distances) to a scratch file, free the cell
//!   ├─► PQ codes, streamed
//!   ├─► merge: a point's lists from its cells, united, RobustPrune to R
//!   │   (distances to the point exact, between candidates from PQ codes)
//!   ├─► connectivity from the medoid, repaired on the merged file
//!   └─► disk.index: v2 when the whole graph fits the budget, else v1
//!       streamed from the merged file
//! ```
//!
//! This is the partition-and-merge of DiskANN's billion-point build
//! (Subramanya et al., 2019, §3.3), with two differences: cells are filled
//! to a capacity, so no cell can outgrow the budget (DiskANN's users report
//! the budget overshot on skewed data: DiskANN issue #553), and the merge
//! prunes with the α-rule instead of truncating at random.
//!
//! The memory model ([`BudgetPlan`]) is what the build checks before any
//! work: a budget it cannot meet fails at once with the least budget that
//! would do.

use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::{VectorFile, Vectors};
use crate::error::{BudgetError, Error, Result};
use crate::index::{self, BuildParams, BuildReport};
use crate::layout::{self, IndexHeader, NodeOrder, Records, INDEX_FILE, PQ_FILE};
use crate::metric::{l2sq_f32, Element};
use crate::pq::PqCodebook;
use crate::progress::{NoProgress, Progress};
use crate::vamana::{self, robust_prune, Graph, VamanaParams};

/// Rows read at a time when the base is streamed (8 MiB of 128-d u8).
const BLOCK: usize = 1 << 16;
/// Points merged at a time (their lists are held, then pruned in parallel).
const MERGE_BATCH: usize = 1 << 14;
/// Cells of the partition at most: k-means cost grows with their number.
const MAX_PARTITIONS: usize = 1024;
/// Copies of every point: each is in its 2 nearest cells, so that the
/// cells' graphs overlap and their union is navigable.
const COPIES: usize = 2;
/// Cells are filled to this share above the mean size.
const FILL: f64 = 1.1;
/// Nearest centroids remembered per point while filling cells.
const PREFS: usize = 8;
/// Upper bound on the pool the merge's RobustPrune considers.
const MAX_POOL: usize = 750;

/// Bytes of memory that do not grow with the points, and the per-point
/// costs of each phase. [`MemoryModel::MEASURED`] holds what was measured
/// here; tests set `fixed` to 0 to force partitions on small data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryModel {
    /// The process, its thread stacks, the allocator's arenas, buffers:
    /// 20 MB measured for a build of 1K points, plus room.
    pub fixed: u64,
}

impl MemoryModel {
    pub const MEASURED: MemoryModel = MemoryModel { fixed: 32 << 20 };

    /// Bytes per point of an in-memory Vamana build with degree `r`: the
    /// row, the adjacency list (a `Vec` header and a lock, 32 B, and the
    /// list, which grows by doubling past R while reverse edges collect
    /// slack: up to 2·R ids).
    fn graph_build_per_point(row: u64, r: usize) -> u64 {
        row + 32 + 2 * r as u64 * 4
    }
}

/// How a build under a memory budget will run, and what it will use.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BudgetPlan {
    pub budget: u64,
    pub points: usize,
    /// 1: the graph is built whole, as without a budget.
    pub partitions: usize,
    /// Most points a cell can take (each point is in 2 cells).
    pub partition_points: usize,
    /// R' of the cells' graphs (R when built whole).
    pub partition_degree: usize,
    /// The `disk.index` order written: v2 when the whole graph fits the
    /// budget at layout time, else v1.
    pub order: NodeOrder,
    /// The model's peak, the largest of its phases.
    pub estimated_peak: u64,
}

impl BudgetPlan {
    /// Plans a build of `points` rows of `row_bytes` bytes with `params`
    /// in `budget` bytes; fails with the least budget that would do.
    pub fn new(
        points: usize,
        row_bytes: usize,
        params: &BuildParams,
        budget: u64,
        model: MemoryModel,
    ) -> Result<Self> {
        let n = points as u64;
        let row = row_bytes as u64;
        let r = params.vamana.max_degree;
        let m = params.pq.num_chunks as u64;
        // Without a budget: codes, then the whole graph (`index::build_index`).
        let whole = model.fixed + n * (m + MemoryModel::graph_build_per_point(row, r));
        if whole <= budget {
            return Ok(BudgetPlan {
                budget,
                points,
                partitions: 1,
                partition_points: points,
                partition_degree: r,
                order: params.order,
                estimated_peak: whole,
            });
        }
        let rp = (2 * r / 3).max(1);
        let per_point = MemoryModel::graph_build_per_point(row, rp);
        // Cell lists: every point in COPIES cells, a u32 each.
        let lists = n * COPIES as u64 * 4;
        // Merge and layout: codes, the BFS of the connectivity check
        // (parent and queue, u32 each; a visited bit), the merge's batch.
        let (batch, block) = (MERGE_BATCH.min(points) as u64, BLOCK.min(points) as u64);
        let merge = model.fixed
            + n * m
            + n * 9
            + batch * (2 * rp as u64 * 8) * 2
            + block * (row + 4 * (r as u64 + 1));
        // Version 2 holds the graph whole, the base mapped, the slot order.
        let v2 = model.fixed + n * m + n * (24 + 4 * r as u64 + row + 9);
        let min_cell = (4 * params.vamana.build_list).max(64) as u64;
        let cells_least = n.div_ceil(MAX_PARTITIONS as u64) * COPIES as u64;
        let cell_least = min_cell.max((cells_least as f64 * FILL).ceil() as u64);
        let need = merge.max(model.fixed + lists + cell_least * per_point);
        if budget < need {
            return Err(Error::Budget(BudgetError::TooSmall {
                budget,
                points,
                least: need,
                codes: n * m,
                cell_points: cell_least,
            }));
        }
        let cap = ((budget - model.fixed - lists) / per_point) as usize;
        let partitions = ((COPIES * points) as f64 * FILL / cap as f64).ceil() as usize;
        let partitions = partitions.clamp(2, MAX_PARTITIONS);
        let fill = ((COPIES * points) as f64 * FILL / partitions as f64).ceil() as usize;
        let order = match params.order {
            NodeOrder::Locality if v2 <= budget => NodeOrder::Locality,
            _ => NodeOrder::Identity,
        };
        let layout = if order == NodeOrder::Locality {
            v2
        } else {
            merge
        };
        Ok(BudgetPlan {
            budget,
            points,
            partitions,
            partition_points: fill,
            partition_degree: rp,
            order,
            estimated_peak: layout
                .max(merge)
                .max(model.fixed + lists + fill as u64 * per_point),
        })
    }
}

/// Builds an index over `file` into `out` as `plan` says (made with
/// [`BudgetPlan::new`] for this file and `params`).
pub fn build_within<T: Element>(
    file: &VectorFile,
    params: &BuildParams,
    plan: &BudgetPlan,
    out: &Path,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    if plan.points != file.len() {
        return Err(Error::InvalidParameter(format!(
            "the budget plan is for {} points, {} has {}",
            plan.points,
            file.path().display(),
            file.len()
        )));
    }
    if plan.partitions == 1 {
        return index::build_index(file.vectors::<T>()?, params, out, progress);
    }
    params.vamana.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let scratch = out.join(".budget");
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let result = partitioned::<T>(file, params, plan, out, &scratch, progress);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn partitioned<T: Element>(
    file: &VectorFile,
    params: &BuildParams,
    plan: &BudgetPlan,
    out: &Path,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    let n = file.len();
    let dim = file.dim();
    let metric = params.metric;
    if n > u32::MAX as usize {
        return Err(Error::InvalidParameter(format!(
            "{n} points exceed the u32 id space"
        )));
    }

    // One seeded sample trains PQ and the cells' centroids.
    let t = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(params.pq.seed);
    // At least 40 points per cell centroid, at most every point.
    let take = params.pq.train_sample.max(plan.partitions * 40).min(n);
    let mut ids: Vec<u32> = rand::seq::index::sample(&mut rng, n, take)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    ids.sort_unstable();
    let sample: Vec<T> = file.gather(&ids)?;
    let pq = PqCodebook::train(Vectors::new(&sample, dim), metric, &params.pq, progress)?;
    let sample_f32: Vec<f32> = sample.iter().map(|x| x.to_f32()).collect();
    drop(sample);
    let mean = mean_of(&sample_f32, dim);
    let centroids =
        crate::kmeans::kmeans(&sample_f32, dim, plan.partitions, 15, params.vamana.seed);
    drop(sample_f32);
    let mut pq_seconds = t.elapsed().as_secs_f64();

    // Cells, and the medoid (the point nearest the sample's mean).
    let t = Instant::now();
    let (cells, medoid) = fill_cells::<T>(file, &centroids, &mean, plan, params, progress)?;

    // One graph per cell, written out in global ids.
    let cell_params = VamanaParams {
        max_degree: plan.partition_degree,
        ..params.vamana
    };
    let mut cell_files = Vec::with_capacity(cells.len());
    for (c, members) in cells.iter().enumerate() {
        let path = scratch.join(format!("cell-{c}.graph"));
        let stage = Prefixed {
            inner: progress,
            prefix: format!("cell {}/{}:", c + 1, cells.len()),
        };
        build_cell::<T>(file, members, metric, &cell_params, &path, &stage)?;
        cell_files.push(path);
    }
    drop(cells);
    let mut graph_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let codes = encode_streamed::<T>(file, &pq, progress)?;
    pq_seconds += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let r = params.vamana.max_degree;
    let merged_path = scratch.join("merged.graph");
    merge_cells(
        &cell_files,
        n,
        r,
        params.vamana.alpha,
        &pq,
        &codes,
        &merged_path,
        progress,
    )?;
    for f in &cell_files {
        let _ = std::fs::remove_file(f);
    }
    let merged = MergedGraph::open(&merged_path, n, r)?;
    merged.repair_connectivity(medoid, &pq, &codes, progress)?;
    let mean_degree = merged.mean_degree()?;
    graph_seconds += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let header = IndexHeader {
        elem: T::TYPE,
        metric,
        dim: dim as u32,
        max_degree: r as u32,
        num_points: n as u64,
        medoid: medoid as u64,
        pq_bytes: pq.num_chunks() as u32,
        build_list: params.vamana.build_list as u32,
        alpha: params.vamana.alpha,
        order: plan.order,
    };
    let index_path = out.join(INDEX_FILE);
    let (header, sector_overlap, index_bytes) = match plan.order {
        NodeOrder::Locality => {
            let graph = merged.load(medoid)?;
            drop(merged);
            index::write_in_order(&index_path, header, file.vectors::<T>()?, &graph, progress)?
        }
        NodeOrder::Identity => {
            let mut src = Streamed::<T>::new(file, merged)?;
            let bytes = layout::write_records(&index_path, &header, &mut src, &[], progress)?;
            // Version 1 holds no mates: the overlap is not measured.
            (header, 0.0, bytes)
        }
    };
    let pq_file_bytes = layout::write_pq(&out.join(PQ_FILE), &pq, &codes)?;
    let report = BuildReport {
        num_points: n,
        dim,
        elem: T::TYPE,
        metric,
        max_degree: r,
        build_list: params.vamana.build_list,
        alpha: params.vamana.alpha,
        pq_bytes: pq.num_chunks(),
        mean_degree,
        medoid,
        index_bytes,
        pq_file_bytes,
        pq_seconds,
        graph_seconds,
        write_seconds: t.elapsed().as_secs_f64(),
        order: header.order,
        sector_overlap,
        partitions: plan.partitions,
    };
    index::write_build_info(out, &report)?;
    Ok(report)
}

fn mean_of(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut sums = vec![0f64; dim];
    for row in rows.chunks_exact(dim) {
        sums.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
    }
    let count = (rows.len() / dim.max(1)).max(1) as f64;
    sums.iter().map(|s| (s / count) as f32).collect()
}

/// Consecutive rows `start..end` of the file, copied (pages released).
fn block_of<T: Element>(file: &VectorFile, start: usize, end: usize) -> Result<Vec<T>> {
    let ids: Vec<u32> = (start as u32..end as u32).collect();
    file.gather(&ids)
}

/// Deals every point to its `COPIES` nearest cells that have room, in
/// blocks taken in a seeded random order (as `partition` does, so a base
/// sorted by anything fills no cell with its first points). Returns each
/// cell's members, ascending, and the medoid.
fn fill_cells<T: Element>(
    file: &VectorFile,
    centroids: &[f32],
    mean: &[f32],
    plan: &BudgetPlan,
    params: &BuildParams,
    progress: &dyn Progress,
) -> Result<(Vec<Vec<u32>>, u32)> {
    let n = file.len();
    let dim = file.dim();
    let k = plan.partitions;
    let cap = plan.partition_points;
    let mut cells: Vec<Vec<u32>> = vec![Vec::new(); k];
    let mut blocks: Vec<usize> = (0..n.div_ceil(BLOCK)).collect();
    blocks.shuffle(&mut ChaCha8Rng::seed_from_u64(params.vamana.seed ^ 0xce11));
    let mut medoid = (f32::INFINITY, 0u32);
    progress.stage("assigning points to 2 cells each", n as u64);
    for b in blocks {
        let (start, end) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
        let rows: Vec<T> = block_of(file, start, end)?;
        let near: Vec<(Vec<u32>, f32)> = rows
            .par_chunks_exact(dim)
            .map_init(Vec::new, |x: &mut Vec<f32>, row| {
                x.clear();
                x.extend(row.iter().map(|v| v.to_f32()));
                (nearest_cells(centroids, dim, x, PREFS), l2sq_f32(x, mean))
            })
            .collect();
        for (i, (prefs, to_mean)) in near.into_iter().enumerate() {
            let p = (start + i) as u32;
            if (to_mean, p) < medoid {
                medoid = (to_mean, p);
            }
            let mut placed = 0;
            let mut first = usize::MAX;
            let mut take = |c: usize, cells: &mut Vec<Vec<u32>>| {
                if c != first && cells[c].len() < cap {
                    cells[c].push(p);
                    first = c;
                    true
                } else {
                    false
                }
            };
            for &c in &prefs {
                if placed < COPIES.min(k) && take(c as usize, &mut cells) {
                    placed += 1;
                }
            }
            if placed < COPIES.min(k) {
                let row = &rows[i * dim..(i + 1) * dim];
                let x: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
                for c in nearest_cells(centroids, dim, &x, k) {
                    if placed < COPIES.min(k) && take(c as usize, &mut cells) {
                        placed += 1;
                    }
                }
            }
        }
        progress.inc((end - start) as u64);
    }
    progress.finish_stage();
    cells.par_iter_mut().for_each(|c| c.sort_unstable());
    cells.retain(|c| !c.is_empty());
    Ok((cells, medoid.1))
}

/// The `take` nearest centroids of `x`, nearest first (ties: lower cell).
fn nearest_cells(centroids: &[f32], dim: usize, x: &[f32], take: usize) -> Vec<u32> {
    let mut d: Vec<(f32, u32)> = centroids
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, cent)| (l2sq_f32(x, cent), c as u32))
        .collect();
    let cmp = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if take < d.len() {
        d.select_nth_unstable_by(take, cmp);
        d.truncate(take);
    }
    d.sort_by(cmp);
    d.into_iter().map(|x| x.1).collect()
}

/// Builds the graph of one cell and writes it to `path`: for each member,
/// ascending, `u32 id, u32 degree, degree × (u32 id, f32 distance)`,
/// little-endian, ids global. A scratch file of this build, removed when
/// it ends: not a format other programs read.
fn build_cell<T: Element>(
    file: &VectorFile,
    members: &[u32],
    metric: crate::metric::Metric,
    params: &VamanaParams,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let rows: Vec<T> = file.gather(members)?;
    let dim = file.dim();
    let data = Vectors::new(&rows, dim);
    let graph = vamana::build(data, metric, params, progress)?;
    let io = |e| Error::io(path, e);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    for (i, &g) in members.iter().enumerate() {
        let list = graph.neighbors(i);
        w.write_all(&g.to_le_bytes()).map_err(io)?;
        w.write_all(&(list.len() as u32).to_le_bytes())
            .map_err(io)?;
        for &j in list {
            let d = metric.distance(data.row(i), data.row(j as usize));
            w.write_all(&members[j as usize].to_le_bytes())
                .map_err(io)?;
            w.write_all(&d.to_le_bytes()).map_err(io)?;
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// PQ codes of every point, the base read block by block.
fn encode_streamed<T: Element>(
    file: &VectorFile,
    pq: &PqCodebook,
    progress: &dyn Progress,
) -> Result<Vec<u8>> {
    let n = file.len();
    let mut codes = Vec::with_capacity(n * pq.num_chunks());
    progress.stage("PQ encoding", n as u64);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let rows: Vec<T> = block_of(file, start, end)?;
        codes.extend(pq.encode_all(Vectors::new(&rows, file.dim()), &NoProgress));
        progress.inc((end - start) as u64);
    }
    progress.finish_stage();
    Ok(codes)
}

/// Reads one cell file record by record.
struct CellReader {
    path: PathBuf,
    r: BufReader<File>,
    offset: u64,
    /// The id of the record about to be read, if any.
    next: Option<u32>,
}

impl CellReader {
    fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut c = CellReader {
            path: path.to_path_buf(),
            r: BufReader::with_capacity(1 << 20, f),
            offset: 0,
            next: None,
        };
        c.next = c.word()?;
        Ok(c)
    }

    /// The next little-endian u32, or `None` at a clean end of file.
    fn word(&mut self) -> Result<Option<u32>> {
        let mut b = [0u8; 4];
        match self.r.read_exact(&mut b) {
            Ok(()) => {
                self.offset += 4;
                Ok(Some(u32::from_le_bytes(b)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    fn must_word(&mut self) -> Result<u32> {
        let at = self.offset;
        self.word()?.ok_or_else(|| {
            Error::Budget(BudgetError::Scratch {
                path: self.path.clone(),
                offset: at,
                why: "ends inside a record".into(),
            })
        })
    }

    /// Appends the current record's list to `out` and moves to the next.
    fn take(&mut self, out: &mut Vec<(f32, u32)>) -> Result<()> {
        let degree = self.must_word()?;
        for _ in 0..degree {
            let id = self.must_word()?;
            let d = f32::from_bits(self.must_word()?);
            out.push((d, id));
        }
        self.next = self.word()?;
        Ok(())
    }
}

/// Unites each point's lists from the cell files and prunes them to `r`,
/// writing the merged graph: per point, ascending, `u32 degree` and `r`
/// u32 slots (a scratch file; [`MergedGraph`] reads it).
#[allow(clippy::too_many_arguments)]
fn merge_cells(
    cell_files: &[PathBuf],
    n: usize,
    r: usize,
    alpha: f32,
    pq: &PqCodebook,
    codes: &[u8],
    out: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut readers = cell_files
        .iter()
        .map(|p| CellReader::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut heap: BinaryHeap<std::cmp::Reverse<(u32, usize)>> = readers
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.next.map(|g| std::cmp::Reverse((g, i))))
        .collect();
    let io = |e| Error::io(out, e);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out).map_err(io)?);
    let m = pq.num_chunks();
    let metric = pq.metric();
    progress.stage("merging the cells' graphs", n as u64);
    let mut batch: Vec<Vec<(f32, u32)>> = Vec::with_capacity(MERGE_BATCH);
    let mut next = 0usize;
    while next < n {
        batch.clear();
        let end = (next + MERGE_BATCH).min(n);
        for p in next..end {
            let mut pool = Vec::new();
            while let Some(&std::cmp::Reverse((g, i))) = heap.peek() {
                if g as usize != p {
                    break;
                }
                heap.pop();
                let c = &mut readers[i];
                c.take(&mut pool)?;
                if let Some(g2) = c.next {
                    if g2 <= g {
                        return Err(Error::Budget(BudgetError::Scratch {
                            path: c.path.clone(),
                            offset: c.offset,
                            why: format!("point {g2} after point {g}: ids must ascend"),
                        }));
                    }
                    heap.push(std::cmp::Reverse((g2, i)));
                }
            }
            batch.push(pool);
        }
        let lists: Vec<Vec<u32>> = batch
            .par_iter_mut()
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new(), Vec::new()),
                |(decoded, index, out): &mut (Vec<f32>, Vec<u32>, Vec<u32>), (i, pool)| {
                    let p = (next + i) as u32;
                    pool.retain(|x| x.1 != p);
                    pool.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)));
                    pool.dedup_by_key(|x| x.1);
                    if pool.len() <= r {
                        pool.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                        return pool.iter().map(|x| x.1).collect();
                    }
                    // Candidates' reconstructions, by position in `index`.
                    let dim = pq.dim();
                    decoded.clear();
                    index.clear();
                    for &(_, c) in pool.iter() {
                        let code = &codes[c as usize * m..(c as usize + 1) * m];
                        decoded.extend(pq.decode(code));
                        index.push(c);
                    }
                    let at = |id: u32| index.binary_search(&id).unwrap_or(0);
                    let mut pool2 = std::mem::take(pool);
                    robust_prune(
                        metric,
                        &mut pool2,
                        alpha,
                        r,
                        MAX_POOL,
                        |a, b| {
                            let (a, b) = (at(a), at(b));
                            metric.distance(
                                &decoded[a * dim..(a + 1) * dim],
                                &decoded[b * dim..(b + 1) * dim],
                            )
                        },
                        out,
                    );
                    out.clone()
                },
            )
            .collect();
        let mut rec = vec![0u32; r + 1];
        for list in &lists {
            rec.fill(0);
            rec[0] = list.len() as u32;
            rec[1..=list.len()].copy_from_slice(list);
            w.write_all(bytemuck::cast_slice(&rec)).map_err(io)?;
        }
        progress.inc((end - next) as u64);
        next = end;
    }
    progress.finish_stage();
    w.flush().map_err(io)?;
    Ok(())
}

/// The merged graph on disk: `n` records of `1 + r` u32 (degree, then the
/// list, zero-padded), read and patched in place by offset.
struct MergedGraph {
    path: PathBuf,
    file: File,
    n: usize,
    r: usize,
}

impl MergedGraph {
    fn open(path: &Path, n: usize, r: usize) -> Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let want = (n * (r + 1) * 4) as u64;
        if len != want {
            return Err(Error::Budget(BudgetError::Scratch {
                path: path.to_path_buf(),
                offset: len,
                why: format!("is {len} bytes, {n} records make {want}"),
            }));
        }
        Ok(MergedGraph {
            path: path.to_path_buf(),
            file,
            n,
            r,
        })
    }

    fn record_bytes(&self) -> usize {
        (self.r + 1) * 4
    }

    /// Out-neighbours of `u` into `out`.
    fn read(&self, u: u32, out: &mut Vec<u32>) -> Result<()> {
        let mut buf = vec![0u8; self.record_bytes()];
        let at = u as u64 * buf.len() as u64;
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| Error::io(&self.path, e))?;
        out.clear();
        let mut words = layout::le_u32s(&buf);
        let degree = words.next().unwrap_or(0) as usize;
        if degree > self.r {
            return Err(Error::Budget(BudgetError::Scratch {
                path: self.path.clone(),
                offset: at,
                why: format!("point {u} has degree {degree} > R = {}", self.r),
            }));
        }
        out.extend(words.take(degree));
        Ok(())
    }

    fn write(&self, u: u32, list: &[u32]) -> Result<()> {
        let mut rec = vec![0u32; self.r + 1];
        rec[0] = list.len() as u32;
        rec[1..=list.len()].copy_from_slice(list);
        let at = u as u64 * self.record_bytes() as u64;
        self.file
            .write_all_at(bytemuck::cast_slice(&rec), at)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The file from its start, buffered, for one pass in id order.
    fn sequential(&self) -> Result<BufReader<&File>> {
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(BufReader::with_capacity(1 << 20, f))
    }

    fn mean_degree(&self) -> Result<f64> {
        let mut r = self.sequential()?;
        let mut rec = vec![0u8; self.record_bytes()];
        let mut sum = 0u64;
        for _ in 0..self.n {
            r.read_exact(&mut rec)
                .map_err(|e| Error::io(&self.path, e))?;
            sum += layout::le_u32s(&rec).next().unwrap_or(0) as u64;
        }
        Ok(sum as f64 / self.n.max(1) as f64)
    }

    /// The whole graph, in memory (for a version 2 layout).
    fn load(&self, medoid: u32) -> Result<Graph> {
        let mut r = self.sequential()?;
        let mut rec = vec![0u8; self.record_bytes()];
        let mut adj = Vec::with_capacity(self.n);
        for _ in 0..self.n {
            r.read_exact(&mut rec)
                .map_err(|e| Error::io(&self.path, e))?;
            let mut words = layout::le_u32s(&rec);
            let degree = (words.next().unwrap_or(0) as usize).min(self.r);
            adj.push(words.take(degree).collect::<Vec<u32>>());
        }
        Ok(Graph::from_parts(adj, self.r, medoid))
    }

    /// Marks what `from` reaches that is not yet reached, extending the
    /// BFS tree (`parent`).
    fn grow(
        &self,
        from: u32,
        parent: &mut [u32],
        reached: &mut [bool],
        queue: &mut VecDeque<u32>,
        list: &mut Vec<u32>,
    ) -> Result<()> {
        reached[from as usize] = true;
        queue.push_back(from);
        while let Some(x) = queue.pop_front() {
            self.read(x, list)?;
            for &y in list.iter() {
                if (y as usize) < self.n && !reached[y as usize] {
                    reached[y as usize] = true;
                    parent[y as usize] = x;
                    queue.push_back(y);
                }
            }
        }
        Ok(())
    }

    /// Links every point the medoid cannot reach back in, as the in-memory
    /// build does (`vamana::build`'s repair), on the file: a BFS tree from
    /// the medoid is kept and never cut; a lost point `u` is linked from
    /// the reached point nearest it among those its own search region
    /// touches (by PQ distance), which takes it as one more edge if it has
    /// room, else gives up its farthest edge that is not a tree edge.
    /// Returns how many points were linked.
    fn repair_connectivity(
        &self,
        medoid: u32,
        pq: &PqCodebook,
        codes: &[u8],
        progress: &dyn Progress,
    ) -> Result<usize> {
        const NONE: u32 = u32::MAX;
        let n = self.n;
        let mut parent = vec![NONE; n];
        let mut reached = vec![false; n];
        let mut queue = VecDeque::new();
        let mut list = Vec::new();
        progress.stage("checking connectivity", n as u64);
        self.grow(medoid, &mut parent, &mut reached, &mut queue, &mut list)?;
        let m = pq.num_chunks();
        let code = |i: u32| &codes[i as usize * m..(i as usize + 1) * m];
        let mut linked = 0;
        let mut region = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for u in 0..n as u32 {
            if reached[u as usize] {
                continue;
            }
            // Reached points near u: those its out-edges (and theirs, up to
            // a few hundred points) lead to; else the medoid.
            let target = pq.decode(code(u));
            region.clear();
            seen.clear();
            region.push(u);
            seen.insert(u);
            let mut hosts: Vec<(f32, u32)> = Vec::new();
            let mut i = 0;
            while i < region.len() && seen.len() < 512 {
                self.read(region[i], &mut list)?;
                for &y in &list {
                    if seen.insert(y) {
                        if reached[y as usize] {
                            let d = pq.metric().distance(&target, &pq.decode(code(y)));
                            hosts.push((d, y));
                        } else {
                            region.push(y);
                        }
                    }
                }
                i += 1;
            }
            if hosts.is_empty() {
                hosts.push((0.0, medoid));
            }
            hosts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut done = false;
            for &(_, v) in &hosts {
                self.read(v, &mut list)?;
                if list.len() < self.r {
                    list.push(u);
                } else if let Some(slot) = list.iter().rposition(|&w| parent[w as usize] != v) {
                    list[slot] = u;
                } else {
                    continue;
                }
                self.write(v, &list)?;
                parent[u as usize] = v;
                done = true;
                break;
            }
            if !done {
                // Every host's edges are all tree edges (cannot happen for
                // all of them: see vamana's repair); leave u for the check.
                continue;
            }
            linked += 1;
            self.grow(u, &mut parent, &mut reached, &mut queue, &mut list)?;
        }
        progress.inc(n as u64);
        progress.finish_stage();
        Ok(linked)
    }
}

/// Records for a version 1 `disk.index`, streamed: the base block by block
/// and the merged graph in order.
struct Streamed<'a, T> {
    file: &'a VectorFile,
    graph: BufReader<File>,
    path: PathBuf,
    r: usize,
    rows: Vec<T>,
    start: usize,
    rec: Vec<u8>,
    list: Vec<u32>,
    next: usize,
}

impl<'a, T: Element> Streamed<'a, T> {
    fn new(file: &'a VectorFile, mut merged: MergedGraph) -> Result<Self> {
        merged
            .file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&merged.path, e))?;
        Ok(Streamed {
            file,
            graph: BufReader::with_capacity(1 << 20, merged.file),
            path: merged.path,
            r: merged.r,
            rows: Vec::new(),
            start: 0,
            rec: vec![0u8; (merged.r + 1) * 4],
            list: Vec::new(),
            next: 0,
        })
    }
}

impl<T: Element> Records<T> for Streamed<'_, T> {
    fn record(&mut self, node: usize) -> Result<(&[T], &[u32])> {
        if node != self.next {
            return Err(Error::InvalidParameter(format!(
                "a streamed index is written in id order: asked node {node}, next is {}",
                self.next
            )));
        }
        let dim = self.file.dim();
        if node >= self.start + self.rows.len() / dim.max(1) {
            let end = (node + BLOCK).min(self.file.len());
            self.rows = block_of(self.file, node, end)?;
            self.start = node;
        }
        self.graph
            .read_exact(&mut self.rec)
            .map_err(|e| Error::io(&self.path, e))?;
        let mut words = layout::le_u32s(&self.rec);
        let degree = (words.next().unwrap_or(0) as usize).min(self.r);
        self.list.clear();
        self.list.extend(words.take(degree));
        self.next += 1;
        let i = node - self.start;
        Ok((&self.rows[i * dim..(i + 1) * dim], &self.list))
    }
}

/// Prefixes every stage name ("cell 3/8: Vamana pass 1/2").
struct Prefixed<'a> {
    inner: &'a dyn Progress,
    prefix: String,
}

impl Progress for Prefixed<'_> {
    fn stage(&self, name: &str, total: u64) {
        self.inner.stage(&format!("{} {name}", self.prefix), total);
    }
    fn inc(&self, n: u64) {
        self.inner.inc(n);
    }
    fn finish_stage(&self) {
        self.inner.finish_stage();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_vectors;
    use crate::groundtruth::brute_force;
    use crate::index::{read_records, DiskIndex, OpenOptions, SearchScratch};
    use crate::metric::Metric;
    use crate::pq::PqParams;
    use crate::search::SearchParams;
    use crate::synth::{generate_u8, Stream};

    fn params(r: usize, l: usize) -> BuildParams {
        BuildParams {
            metric: Metric::L2,
            vamana: VamanaParams {
                max_degree: r,
                build_list: l,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: 16,
                ..PqParams::default()
            },
            order: NodeOrder::Locality,
        }
    }

    /// Mean recall@10 of `dir`'s index at list size `list`.
    fn recall(dir: &Path, base: &[u8], queries: &[u8], list: usize) -> f64 {
        let index = DiskIndex::open(dir, OpenOptions::buffered()).unwrap();
        let (b, q) = (Vectors::new(base, 128), Vectors::new(queries, 128));
        let truth = brute_force(b, q, Metric::L2, 10, &NoProgress);
        let mut scratch = SearchScratch::<u8>::default();
        let sp = SearchParams {
            k: 10,
            list,
            beam: 4,
        };
        let mut sum = 0.0;
        for i in 0..q.len() {
            let (hits, _) = index.search(&mut scratch, q.row(i), sp).unwrap();
            let ids: Vec<u32> = hits.iter().map(|h| h.id).collect();
            sum += crate::data::recall_at_k(&ids, truth.row(i), 10);
        }
        sum / q.len() as f64
    }

    /// The partition-and-merge path with 4 cells forced on 6000 points:
    /// the merged graph keeps every invariant (degree ≤ R, no duplicates,
    /// everything reachable from the medoid) in both layouts, the scratch
    /// files are gone, and recall stays near the whole-graph build's.
    #[test]
    fn cells_merged_keep_the_invariants_and_the_recall() {
        let n = 6000;
        let base = generate_u8(n, 21, Stream::Base);
        let queries = generate_u8(40, 21, Stream::Query);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("base.u8bin");
        write_vectors(&path, 128, &base).unwrap();
        let file = VectorFile::open(&path).unwrap();
        let p = params(24, 48);

        // One thread: the builds, and so the recalls compared, are then
        // the same on every run (with more, insertion races differ).
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for order in [NodeOrder::Identity, NodeOrder::Locality] {
            let p = BuildParams { order, ..p };
            let whole_dir = tmp.path().join(format!("whole-v{}", order.major()));
            let whole = BudgetPlan::new(n, 128, &p, u64::MAX, MemoryModel::MEASURED).unwrap();
            assert_eq!(whole.partitions, 1);
            one.install(|| build_within::<u8>(&file, &p, &whole, &whole_dir, &NoProgress))
                .unwrap();
            let whole_recall = recall(&whole_dir, &base, &queries, 12);
            let dir = tmp.path().join(format!("cells-v{}", order.major()));
            let plan = BudgetPlan {
                partitions: 4,
                partition_points: (2.0 * n as f64 * FILL / 4.0).ceil() as usize,
                partition_degree: 16,
                order,
                ..whole.clone()
            };
            let report = one
                .install(|| build_within::<u8>(&file, &p, &plan, &dir, &NoProgress))
                .unwrap();
            assert_eq!((report.partitions, report.order), (4, order));
            assert!(!dir.join(".budget").exists());
            let index = DiskIndex::open(&dir, OpenOptions::buffered()).unwrap();
            let (vectors, graph) = read_records(&index, &NoProgress).unwrap();
            assert_eq!(vectors, base, "every node holds its own vector");
            graph.check().unwrap();
            assert!(graph.mean_degree() > 12.0, "{}", graph.mean_degree());
            // A short list (12 for k = 10), where graph quality shows.
            let r = recall(&dir, &base, &queries, 12);
            assert!(
                r >= 0.8 && r >= whole_recall - 0.05,
                "v{}: recall {r} with cells, {whole_recall} whole",
                order.major()
            );
        }
    }

    /// 10M 128-d u8 points in 2 GiB: several cells, v1 (the whole graph
    /// does not fit), and a model peak under the budget.
    #[test]
    fn ten_million_points_plan_into_two_gib() {
        let p = params(64, 100);
        let plan = BudgetPlan::new(10_000_000, 128, &p, 2 << 30, MemoryModel::MEASURED).unwrap();
        assert!(plan.partitions >= 4, "{plan:?}");
        assert_eq!(plan.order, NodeOrder::Identity);
        assert!(plan.estimated_peak <= 2 << 30, "{plan:?}");
        assert!(plan.partition_points * plan.partitions >= 2 * 10_000_000);
        // 1M fits whole in 1 GiB.
        let one = BudgetPlan::new(1_000_000, 128, &p, 1 << 30, MemoryModel::MEASURED).unwrap();
        assert_eq!(one.partitions, 1);
    }

    /// A budget below the least fails before any work, and the least it
    /// names is enough.
    #[test]
    fn a_budget_below_the_least_fails_at_once_naming_the_least() {
        let p = params(64, 100);
        let err = BudgetPlan::new(10_000_000, 128, &p, 64 << 20, MemoryModel::MEASURED)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("too small") && err.contains("at least"),
            "{err}"
        );
        let mib: u64 = err
            .split("--memory-budget ")
            .nth(1)
            .and_then(|s| s.split("MiB").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no budget named in {err}"));
        let plan = BudgetPlan::new(10_000_000, 128, &p, mib << 20, MemoryModel::MEASURED).unwrap();
        assert!(
            plan.partitions > 1 && plan.estimated_peak <= mib << 20,
            "{plan:?}"
        );
        assert!(
            BudgetPlan::new(10_000_000, 128, &p, (mib - 2) << 20, MemoryModel::MEASURED).is_err()
        );
    }
}
