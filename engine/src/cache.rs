//! Nodes kept in RAM so that the reads most searches make cost no IO.
//!
//! Some nodes are read by many searches: those a few hops from the medoid
//! or from the navigation graph's points, and the graph's hubs. The index
//! finds them by running sample searches at open and counting reads
//! (`DiskIndex::load_cache`); [`NodeCache::load`] reads the most read ones
//! once, up to a budget, and keeps their records (vector + neighbour list)
//! in one contiguous buffer: whole sectors in a locality-ordered (version
//! 2) file, so that a cached node's sector mates come with it.

use rustc_hash::FxHashMap;

use crate::error::FormatError;
use crate::io::{AlignedBuf, SectorReader, SectorRequest};
use crate::layout::{NodeOrder, NodeRecord, SectorGeometry, SECTOR};

/// A read-only set of node records held in memory.
#[derive(Debug, Default)]
pub struct NodeCache {
    /// Node id → index of the unit (record or sector) holding it.
    slots: FxHashMap<u32, u32>,
    /// Cached units back to back: records in version 1, whole sectors in
    /// version 2.
    units: Vec<u8>,
    unit_bytes: usize,
    sectors: bool,
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

impl CacheError {
    /// The index error for this failure in the file at `path`.
    pub(crate) fn at(self, path: &std::path::Path) -> crate::error::Error {
        match self {
            CacheError::Io(e) => crate::error::Error::io(path, e),
            CacheError::Format(e) => crate::error::Error::format(path, e),
        }
    }
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

    /// Reads the nodes of `ranked`, in that order, until about `max_nodes`
    /// are held: the index ranks them by how often sample searches read
    /// them (`DiskIndex::load_cache`).
    ///
    /// In a version 2 (locality ordered) file whole sectors are kept: a
    /// cached node then brings its sector mates along exactly as a read
    /// one does ([`crate::search::BeamSearch::take_mates`]), and the mates
    /// count toward `max_nodes` (the last sector may overshoot it by fewer
    /// than a sector's records). Keeping only the record instead cost the
    /// mates of every cached node: more reads with a cache than without.
    pub fn load(
        reader: &dyn SectorReader,
        geometry: &SectorGeometry,
        ranked: &[u32],
        max_nodes: usize,
    ) -> Result<Self, CacheError> {
        let sectors = geometry.order() == NodeOrder::Locality;
        let mut cache = NodeCache {
            slots: FxHashMap::default(),
            units: Vec::new(),
            unit_bytes: if sectors {
                SECTOR
            } else {
                geometry.record_bytes
            },
            sectors,
            geometry: Some(geometry.clone()),
        };
        let max_nodes = max_nodes.min(geometry.num_points as usize);
        let mut rest = ranked;
        while !rest.is_empty() && cache.slots.len() < max_nodes {
            // Each node read adds at least one node to the cache.
            let take = rest.len().min(max_nodes - cache.slots.len());
            let (now, later) = rest.split_at(take);
            rest = later;
            let to_read: Vec<u32> = now
                .iter()
                .copied()
                .filter(|id| !cache.slots.contains_key(id))
                .collect();
            read_records(reader, geometry, &to_read, |id, bytes| {
                // Validates the record: a cached one is never checked again.
                geometry.decode(id, bytes)?;
                if cache.slots.len() >= max_nodes || cache.slots.contains_key(&id) {
                    return Ok(());
                }
                let unit = (cache.units.len() / cache.unit_bytes.max(1)) as u32;
                if sectors {
                    let sector = &bytes[..SECTOR];
                    cache.slots.insert(id, unit);
                    for (mate, _) in geometry.mates(id, sector) {
                        cache.slots.insert(mate, unit);
                    }
                    cache.units.extend_from_slice(sector);
                } else if let Some(record) = geometry.record_bytes_of(id, bytes) {
                    cache.slots.insert(id, unit);
                    cache.units.extend_from_slice(record);
                }
                Ok(())
            })?;
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
        self.units.len() + self.slots.len() * 12
    }

    /// The cached record of `id`, if it is cached.
    #[inline]
    pub fn get(&self, id: u32) -> Option<NodeRecord<'_>> {
        self.lookup(id).map(|(record, _)| record)
    }

    /// The cached record of `id` and, in a version 2 file, the whole
    /// sector it came from (for its sector mates).
    #[inline]
    pub fn lookup(&self, id: u32) -> Option<(NodeRecord<'_>, Option<&[u8]>)> {
        let unit = *self.slots.get(&id)? as usize;
        let bytes = self
            .units
            .get(unit * self.unit_bytes..(unit + 1) * self.unit_bytes)?;
        // Records were validated when the cache was filled (mates by the
        // slot table, and again here by the id their record carries).
        let geometry = self.geometry.as_ref()?;
        if self.sectors {
            Some((geometry.decode(id, bytes).ok()?, Some(bytes)))
        } else {
            Some((geometry.decode_record(id, bytes).ok()?, None))
        }
    }
}
