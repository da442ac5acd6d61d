//! One search driven by async `O_DIRECT` reads on an executor (io_uring on
//! glommio, a pread pool on epoll: [`crate::rt`]).
//!
//! ```text
//!  BeamSearch::next_batch() ──► W node ids ──► W × IndexFile::read_at_aligned ┐
//!        ▲                                     (in flight together)          │
//!        └──── BeamSearch::visit(id, record) ◄── SectorGeometry::decode ◄────┘
//! ```
//!
//! The engine's [`BeamSearch`] is a sans-IO state machine: it names the nodes
//! it needs and is fed their records. [`search_one`] is the async twin of the
//! engine's synchronous `DiskIndex::search`: the same rounds, the same visit
//! order, so it returns bit-identical hits. The difference is what happens
//! while a round's reads are in flight: the engine's loop blocks its thread,
//! whereas here the task yields and the executor runs other queries, which is
//! how one core keeps tens of reads queued on the device.
//!
//! Nodes in the index's node cache (`DiskIndex::node_cache`, filled when the
//! index is opened with `OpenOptions::cache_nodes`) are visited from RAM
//! without a read and counted in `stats.cache_hits`, not `stats.ios`.

use std::path::PathBuf;

use futures::future::join_all;
use shardann_engine::index::{DiskIndex, Matches};
use shardann_engine::layout::INDEX_FILE;
use shardann_engine::layout::{NodeLocation, SectorGeometry, SECTOR};
use shardann_engine::search::{BeamSearch, Hit, Plan, SearchParams, SearchStats};
use shardann_engine::Element;

use crate::error::{Result, ServerError};
use crate::rt::file::{IndexFile, Sectors};

/// The node file of `index`: what [`open_index_file`] opens.
pub fn index_file_path(index: &DiskIndex) -> PathBuf {
    index.dir().join(INDEX_FILE)
}

/// Opens `index`'s node file for `O_DIRECT` reads on the caller's
/// executor (io_uring on glommio, a pread pool on epoll: [`crate::rt`]).
///
/// An [`IndexFile`] belongs to the executor that opened it (it is `!Send`),
/// so each executor calls this once and shares the file among its tasks.
pub async fn open_index_file(index: &DiskIndex) -> Result<IndexFile> {
    let path = index_file_path(index);
    IndexFile::open(&path)
        .await
        .map_err(|source| ServerError::OpenDma { path, source })
}

/// Why one node read failed, before the path is attached: the path is only
/// built on the error path, so a successful read allocates nothing extra.
enum ReadFailure {
    Io(std::io::Error),
    Short { got: usize },
}

/// Reads the sectors holding node `id`'s record.
async fn read_node(
    file: &IndexFile,
    geometry: &SectorGeometry,
    id: u32,
) -> (NodeLocation, std::result::Result<Sectors, ReadFailure>) {
    let loc = geometry.locate(id);
    let want = loc.sectors * SECTOR;
    let read = match file.read_at_aligned(loc.sector * SECTOR as u64, want).await {
        Ok(bytes) if bytes.len() >= want => Ok(bytes),
        Ok(bytes) => Err(ReadFailure::Short { got: bytes.len() }),
        Err(e) => Err(ReadFailure::Io(e)),
    };
    (loc, read)
}

/// Searches `index` for `query`, reading node sectors from `file` (opened by
/// [`open_index_file`] on the current executor).
///
/// `scratch` is reused across queries to avoid reallocating the candidate
/// list and visited set; one per concurrent task. Each round's W reads are
/// issued together and awaited together, so a query keeps up to W reads in
/// flight and the executor overlaps them with other tasks' rounds.
/// `stats.ios` counts sectors read, as the engine's synchronous path does.
pub async fn search_one<T: Element>(
    index: &DiskIndex,
    file: &IndexFile,
    scratch: &mut BeamSearch<T>,
    query: &[T],
    params: SearchParams,
) -> Result<(Vec<Hit>, SearchStats)> {
    let (mut hits, stats, _) =
        search_one_filtered(index, file, scratch, query, params, None).await?;
    index.map_to_global(&mut hits);
    Ok((hits, stats))
}

/// [`search_one`] restricted to the segment-local ids `matches` holds
/// (when given; from `DiskIndex::evaluate`), returning segment-LOCAL ids and the plan the search took. The
/// caller maps the ids: to user ids through the index's documents, or to
/// global ids with `DiskIndex::map_to_global`.
pub async fn search_one_filtered<T: Element>(
    index: &DiskIndex,
    file: &IndexFile,
    scratch: &mut BeamSearch<T>,
    query: &[T],
    params: SearchParams,
    matches: Option<&Matches>,
) -> Result<(Vec<Hit>, SearchStats, Plan)> {
    params.validate()?;
    index.check_query("query", query)?;
    if index.is_empty() {
        return Ok((Vec::new(), SearchStats::default(), Plan::Empty));
    }
    let geometry = index.geometry();
    let codes = index.codes();
    let m = index.pq().num_chunks();
    let plan = index.start_search(scratch, query, params, matches);
    // Copied out of the scratch because the records are visited (a mutable
    // borrow of the scratch) while the batch is still being walked. A flat
    // plan asks for all its nodes at once, so the buffer grows to the batch.
    let mut batch: Vec<u32> = Vec::with_capacity(params.beam);
    let mut first: Vec<usize> = Vec::with_capacity(params.beam);
    loop {
        batch.clear();
        batch.extend_from_slice(scratch.next_batch(codes)?);
        if batch.is_empty() {
            break;
        }
        // Nodes held in RAM are visited at once, before any read, exactly as
        // the synchronous path does; only the misses go to the device.
        index.visit_cached(scratch, &mut batch)?;
        if batch.is_empty() {
            continue;
        }
        // Nodes of one sector are read once (as the synchronous path does).
        index.shared_reads(&batch, &mut first);
        let mut reads = join_all(
            batch
                .iter()
                .enumerate()
                .filter(|&(i, _)| first[i] == i)
                .map(|(_, &id)| read_node(file, geometry, id)),
        )
        .await
        .into_iter();
        // The sectors read so far, by batch entry.
        let mut done: Vec<Option<Sectors>> = Vec::with_capacity(batch.len());
        // Visit in batch order, as the synchronous path does: ties in the
        // candidate list are then broken identically and results match bit
        // for bit.
        for (i, &id) in batch.iter().enumerate() {
            if first[i] == i {
                let Some((loc, read)) = reads.next() else {
                    done.push(None);
                    continue;
                };
                let bytes = read.map_err(|failure| match failure {
                    ReadFailure::Io(source) => ServerError::Read {
                        path: index_file_path(index),
                        node: id,
                        sector: loc.sector,
                        sectors: loc.sectors,
                        source,
                    },
                    ReadFailure::Short { got } => ServerError::ShortRead {
                        path: index_file_path(index),
                        node: id,
                        sector: loc.sector,
                        got,
                        want: loc.sectors * SECTOR,
                    },
                })?;
                scratch.stats.ios += loc.sectors as u32;
                done.push(Some(bytes));
            } else {
                // The sector this node shares was read for an earlier
                // entry of the batch.
                scratch.stats.sector_mates += 1;
                done.push(None);
            }
            let Some(bytes) = done.get(first[i]).and_then(Option::as_ref) else {
                continue;
            };
            let record = geometry
                .decode(id, bytes)
                .map_err(|source| ServerError::Corrupt {
                    path: index_file_path(index),
                    source,
                })?;
            scratch.visit(id, &record, codes, m)?;
            scratch.take_mates(id, bytes, codes);
        }
    }
    let hits = scratch.finish();
    Ok((hits, scratch.stats, plan))
}
