//! Nodes kept in RAM so the first hops of every search cost no IO.
//!
//! Every search starts at the medoid and walks outwards, so the nodes a few
//! hops from the medoid are read by nearly every query. [`NodeCache::load`]
//! reads them once, breadth-first from the medoid, up to a budget, and keeps
//! their records (vector + neighbour list) in one contiguous buffer.

use rustc_hash::FxHashMap;

use crate::error::FormatError;
use crate::io::{AlignedBuf, SectorReader, SectorRequest};
use crate::layout::{NodeRecord, SectorGeometry, SECTOR};

/// A read-only set of node records held in memory.
#[derive(Debug, Default)]
pub struct NodeCache {
    slots: FxHashMap<u32, u32>,
    records: Vec<u8>,
    record_bytes: usize,
    geometry: Option<SectorGeometry>,
}

/// Why a cache could not be filled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("reading sectors for the node cache: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Sectors read per request batch while filling the cache.
const FILL_BATCH: usize = 64;

/// Reads the records of `ids`, [`FILL_BATCH`] at a time, and hands each
/// node's sectors to `visit` in `ids` order: how the node cache and the
/// navigation graph ([`crate::navigation`]) load what they hold at open.
pub(crate) fn read_records(
    reader: &dyn SectorReader,
    geometry: &SectorGeometry,
    ids: &[u32],
    mut visit: impl FnMut(u32, &[u8]) -> Result<(), CacheError>,
) -> Result<(), CacheError> {
    let mut bufs: Vec<AlignedBuf> = (0..FILL_BATCH.min(ids.len()))
        .map(|_| AlignedBuf::new(geometry.node_read_bytes()))
        .collect();
    for batch in ids.chunks(FILL_BATCH) {
        let mut reqs: Vec<SectorRequest<'_>> = batch
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&id, buf)| {
                let loc = geometry.locate(id);
                SectorRequest {
                    sector: loc.sector,
                    buf: &mut buf.as_mut_slice()[..loc.sectors * SECTOR],
                }
            })
            .collect();
        reader.read(&mut reqs)?;
        drop(reqs);
        for (&id, buf) in batch.iter().zip(bufs.iter()) {
            visit(id, buf.as_slice())?;
        }
    }
    Ok(())
}

impl NodeCache {
    /// A cache with nothing in it.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads up to `max_nodes` nodes breadth-first from `entry`.
    pub fn load(
        reader: &dyn SectorReader,
        geometry: &SectorGeometry,
        entry: u32,
        max_nodes: usize,
    ) -> Result<Self, CacheError> {
        let mut cache = NodeCache {
            slots: FxHashMap::default(),
            records: Vec::new(),
            record_bytes: geometry.record_bytes,
            geometry: Some(geometry.clone()),
        };
        let max_nodes = max_nodes.min(geometry.num_points as usize);
        if max_nodes == 0 {
            return Ok(cache);
        }
        cache.records.reserve(max_nodes * geometry.record_bytes);
        let mut seen: FxHashMap<u32, ()> = FxHashMap::default();
        seen.insert(entry, ());
        let mut frontier = vec![entry];
        while !frontier.is_empty() && cache.slots.len() < max_nodes {
            let mut next = Vec::new();
            let room = max_nodes - cache.slots.len();
            frontier.truncate(room);
            read_records(reader, geometry, &frontier, |id, sectors| {
                let rec = geometry.decode(id, sectors)?;
                for nb in rec.neighbors() {
                    if seen.insert(nb, ()).is_none() {
                        next.push(nb);
                    }
                }
                if let Some(bytes) = geometry.record_bytes_of(id, sectors) {
                    cache.slots.insert(id, cache.slots.len() as u32);
                    cache.records.extend_from_slice(bytes);
                }
                Ok(())
            })?;
            frontier = next;
        }
        Ok(cache)
    }

    /// Number of cached nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Approximate memory the cache holds.
    pub fn memory_bytes(&self) -> usize {
        self.records.len() + self.slots.len() * 12
    }

    /// The cached record of `id`, if it is cached.
    #[inline]
    pub fn get(&self, id: u32) -> Option<NodeRecord<'_>> {
        let slot = *self.slots.get(&id)? as usize;
        let bytes = self
            .records
            .get(slot * self.record_bytes..(slot + 1) * self.record_bytes)?;
        // Records were validated when the cache was filled.
        self.geometry.as_ref()?.decode_record(id, bytes).ok()
    }
}
