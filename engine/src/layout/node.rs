//! Node records inside sectors. Spec: `format-spec/index.md`, "Node records".

use std::sync::Arc;

use super::{IndexHeader, NodeOrder, SECTOR};
use crate::error::FormatError;

/// Where records live: derived from the header once (and, in version 2,
/// the slot table), used per node. Cheap to clone: the table is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorGeometry {
    pub record_bytes: usize,
    /// ≥ 1 when records are packed, 0 when one record spans sectors.
    pub records_per_sector: usize,
    pub sectors_per_record: usize,
    pub vector_bytes: usize,
    pub max_degree: usize,
    pub num_points: u64,
    /// Version 2: `slots[i]` is node `i`'s record slot; `None` in version
    /// 1, where node `i` is slot `i`.
    slots: Option<Arc<[u32]>>,
}

/// The sectors to read for one node and where its record starts in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLocation {
    /// First sector (sector 0 is the header).
    pub sector: u64,
    /// Consecutive sectors to read.
    pub sectors: usize,
    /// Byte offset of the record within the first sector.
    pub offset: usize,
}

impl SectorGeometry {
    /// The geometry of a version 1 file, or of a version 2 file before its
    /// slot table is attached ([`Self::with_slots`]).
    pub fn new(h: &IndexHeader) -> Self {
        SectorGeometry {
            record_bytes: h.record_bytes() as usize,
            records_per_sector: h.records_per_sector() as usize,
            sectors_per_record: h.sectors_per_record() as usize,
            vector_bytes: h.dim as usize * h.elem.size(),
            max_degree: h.max_degree as usize,
            num_points: h.num_points,
            slots: None,
        }
    }

    /// The geometry of a version 2 file whose validated slot table
    /// ([`super::read_slot_table`], [`super::parse_slot_table`]) is `slots`.
    /// [`Self::new`] on a version 2 header ignores the table: it locates
    /// node `i` in slot `i`, which is right only for version 1.
    pub fn with_slots(h: &IndexHeader, slots: Arc<[u32]>) -> Self {
        SectorGeometry {
            slots: Some(slots),
            ..Self::new(h)
        }
    }

    /// The node order of the file this geometry describes.
    pub fn order(&self) -> NodeOrder {
        match self.slots {
            None => NodeOrder::Identity,
            Some(_) => NodeOrder::Locality,
        }
    }

    /// Bytes of RAM the slot table takes (0 in version 1).
    pub fn memory_bytes(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| s.len() * 4)
    }

    /// Bytes needed to hold the sectors of one node.
    pub fn node_read_bytes(&self) -> usize {
        self.sectors_per_record.max(1) * SECTOR
    }

    /// The record slot of `node`.
    #[inline]
    fn slot(&self, node: u32) -> u64 {
        match &self.slots {
            None => node as u64,
            Some(slots) => slots.get(node as usize).map_or(u64::MAX, |&s| s as u64),
        }
    }

    #[inline]
    pub fn locate(&self, node: u32) -> NodeLocation {
        let slot = self.slot(node);
        if self.records_per_sector > 0 {
            let rps = self.records_per_sector as u64;
            NodeLocation {
                sector: 1 + slot / rps,
                sectors: 1,
                offset: (slot % rps) as usize * self.record_bytes,
            }
        } else {
            NodeLocation {
                sector: 1 + slot * self.sectors_per_record as u64,
                sectors: self.sectors_per_record,
                offset: 0,
            }
        }
    }

    /// For each node of `batch`, the position in `batch` of the first node
    /// whose record is in the same sector (itself if none before it), so
    /// that a search reads each sector once. Two nodes of one round share
    /// a sector only in a packed layout; in version 2 this saves about 2 %
    /// of the reads on 1M points (0.45 per query at L=20).
    pub fn shared_reads(&self, batch: &[u32], first: &mut Vec<usize>) {
        first.clear();
        if self.records_per_sector < 2 {
            first.extend(0..batch.len());
            return;
        }
        // A round holds the beam width (a few nodes); a flat plan's batch
        // can hold thousands, where a map replaces the scan.
        if batch.len() <= 32 {
            for (i, &id) in batch.iter().enumerate() {
                let sector = self.locate(id).sector;
                let j = batch
                    .iter()
                    .take(i)
                    .position(|&other| self.locate(other).sector == sector)
                    .unwrap_or(i);
                first.push(j);
            }
        } else {
            let mut seen = std::collections::HashMap::with_capacity(batch.len());
            for (i, &id) in batch.iter().enumerate() {
                first.push(*seen.entry(self.locate(id).sector).or_insert(i));
            }
        }
    }

    /// Decodes node `node`'s record from the bytes of its sectors.
    /// Rejects a degree above R and neighbour ids out of range.
    pub fn decode<'a>(&self, node: u32, sectors: &'a [u8]) -> Result<NodeRecord<'a>, FormatError> {
        let loc = self.locate(node);
        let rec = sectors
            .get(loc.offset..loc.offset + self.record_bytes)
            .ok_or_else(|| FormatError::CorruptNode {
                node: node as u64,
                sector: loc.sector,
                why: format!("record runs past the {} bytes read", sectors.len()),
            })?;
        self.decode_record(node, rec)
    }

    /// Decodes a record already cut out of its sector (`record_bytes` long).
    /// In version 2 the id the record carries must be `node`.
    pub fn decode_record<'a>(
        &self,
        node: u32,
        rec: &'a [u8],
    ) -> Result<NodeRecord<'a>, FormatError> {
        let corrupt = |why: String| FormatError::CorruptNode {
            node: node as u64,
            sector: self.locate(node).sector,
            why,
        };
        let (vector, rest) = rec
            .split_at_checked(self.vector_bytes)
            .ok_or_else(|| corrupt("record shorter than its vector".into()))?;
        let (deg, ids) = rest
            .split_at_checked(4)
            .ok_or_else(|| corrupt("record has no degree field".into()))?;
        let degree = u32::from_le_bytes(deg.try_into().map_err(|_| corrupt("short degree".into()))?)
            as usize;
        if degree > self.max_degree {
            return Err(corrupt(format!(
                "degree {degree} exceeds R = {}",
                self.max_degree
            )));
        }
        if self.slots.is_some() {
            let stored = ids
                .get(4 * self.max_degree..4 * self.max_degree + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            match stored {
                Some(id) if id == node => {}
                Some(id) => {
                    return Err(corrupt(format!(
                        "node {node}'s slot holds the record of node {id}"
                    )))
                }
                None => return Err(corrupt("record has no id field".into())),
            }
        }
        let neighbors = ids
            .get(..4 * degree)
            .ok_or_else(|| corrupt("neighbour list shorter than its degree".into()))?;
        let rec = NodeRecord { vector, neighbors };
        if let Some(bad) = rec.neighbors().find(|&id| id as u64 >= self.num_points) {
            return Err(corrupt(format!(
                "neighbour id {bad} out of range (n = {})",
                self.num_points
            )));
        }
        Ok(rec)
    }

    /// The bytes of node `node`'s record within the bytes of its sectors.
    pub fn record_bytes_of<'a>(&self, node: u32, sectors: &'a [u8]) -> Option<&'a [u8]> {
        let loc = self.locate(node);
        sectors.get(loc.offset..loc.offset + self.record_bytes)
    }

    /// Version 2: the other nodes whose records share `node`'s sector, as
    /// `(id, record bytes)`, given the sector's bytes. Empty in version 1,
    /// whose sector mates are unrelated nodes. A record is yielded only if
    /// the slot table puts the id it carries in that very slot, so the zero
    /// tail of the last sector and a damaged id are skipped, never credited
    /// to another node (check 21a of the spec, for mates).
    pub fn mates<'a>(
        &'a self,
        node: u32,
        sector: &'a [u8],
    ) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
        let rps = self.records_per_sector as u64;
        let first_slot = (self.slot(node) / rps.max(1)) * rps;
        let id_at = 4 * self.max_degree + 4 + self.vector_bytes;
        let slots = self.slots.as_deref().unwrap_or(&[]);
        let count = if slots.is_empty() {
            0
        } else {
            self.records_per_sector
        };
        sector
            .chunks_exact(self.record_bytes.max(1))
            .take(count)
            .enumerate()
            .filter_map(move |(j, rec)| {
                let id = u32::from_le_bytes(rec.get(id_at..id_at + 4)?.try_into().ok()?);
                let here = first_slot + j as u64;
                (id != node && slots.get(id as usize).map(|&s| s as u64) == Some(here))
                    .then_some((id, rec))
            })
    }
}

/// One node's record, borrowed from sector bytes.
#[derive(Debug, Clone, Copy)]
pub struct NodeRecord<'a> {
    /// The full-precision vector, little-endian elements.
    pub vector: &'a [u8],
    neighbors: &'a [u8],
}

impl<'a> NodeRecord<'a> {
    pub fn degree(&self) -> usize {
        self.neighbors.len() / 4
    }
    pub fn neighbors(&self) -> impl Iterator<Item = u32> + 'a {
        super::le_u32s(self.neighbors)
    }
}

/// Encodes one record into `out` (`record_bytes` long, zero-padded slots);
/// version 2 passes the node's `id`, stored after the slots.
pub(crate) fn encode_record(
    vector: &[u8],
    neighbors: &[u32],
    max_degree: usize,
    id: Option<u32>,
    out: &mut [u8],
) {
    out.fill(0);
    if let Some(id) = id {
        let at = vector.len() + 4 + 4 * max_degree;
        if let Some(d) = out.get_mut(at..at + 4) {
            d.copy_from_slice(&id.to_le_bytes());
        }
    }
    let (v, rest) = out.split_at_mut(vector.len().min(out.len()));
    v.iter_mut().zip(vector).for_each(|(d, s)| *d = *s);
    let deg = neighbors.len().min(max_degree);
    if let Some(d) = rest.get_mut(..4) {
        d.copy_from_slice(&(deg as u32).to_le_bytes());
    }
    for (slot, id) in rest
        .get_mut(4..)
        .unwrap_or(&mut [])
        .chunks_exact_mut(4)
        .zip(neighbors.iter().take(deg))
    {
        slot.copy_from_slice(&id.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::element::ElemType;
    use crate::metric::Metric;
    use proptest::prelude::*;

    fn header(dim: u32, elem: ElemType, r: u32, n: u64) -> IndexHeader {
        IndexHeader {
            elem,
            metric: Metric::L2,
            dim,
            max_degree: r,
            num_points: n,
            medoid: 0,
            pq_bytes: 8,
            build_list: 50,
            alpha: 1.2,
            order: NodeOrder::Identity,
        }
    }

    proptest! {
        /// A record encoded then decoded gives back the vector and the ids,
        /// packed (small) and spanning (large) records alike.
        #[test]
        fn record_round_trip(dim in 1u32..1500, f32s in any::<bool>(), r in 1u32..80, seed in any::<u64>()) {
            let elem = if f32s { ElemType::F32 } else { ElemType::U8 };
            let n = 1000u64;
            let g = SectorGeometry::new(&header(dim, elem, r, n));
            let node = (seed % n) as u32;
            let loc = g.locate(node);
            prop_assert!(loc.offset + g.record_bytes <= loc.sectors * SECTOR, "record crosses its sectors");
            let vector: Vec<u8> = (0..g.vector_bytes).map(|i| (i as u64 ^ seed) as u8).collect();
            let deg = (seed % (r as u64 + 1)) as usize;
            let ids: Vec<u32> = (0..deg as u32).map(|i| (i * 7 + 1) % n as u32).collect();
            let mut buf = vec![0u8; loc.sectors * SECTOR];
            encode_record(&vector, &ids, r as usize, None, &mut buf[loc.offset..loc.offset + g.record_bytes]);
            let rec = g.decode(node, &buf).unwrap();
            prop_assert_eq!(rec.vector, &vector[..]);
            prop_assert_eq!(rec.neighbors().collect::<Vec<_>>(), ids);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..5000), node in 0u32..2000) {
            let g = SectorGeometry::new(&header(100, ElemType::U8, 16, 1000));
            let _ = g.decode(node, &bytes);
        }
    }

    proptest! {
        /// Each entry points at the first entry of its sector (scan and map
        /// alike), and a layout with one record per sector shares nothing.
        #[test]
        fn shared_reads_point_at_the_first_of_each_sector(
            batch in prop::collection::vec(0u32..200, 0..80),
            perm_seed in any::<u64>(),
        ) {
            use rand::{seq::SliceRandom, SeedableRng};
            let mut h = header(16, ElemType::U8, 8, 200);
            h.order = NodeOrder::Locality;
            let mut slots: Vec<u32> = (0..200).collect();
            slots.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(perm_seed));
            let g = SectorGeometry::with_slots(&h, slots.into());
            prop_assert!(g.records_per_sector >= 2);
            let mut first = Vec::new();
            g.shared_reads(&batch, &mut first);
            prop_assert_eq!(first.len(), batch.len());
            for (i, &f) in first.iter().enumerate() {
                let sector = g.locate(batch[i]).sector;
                let earliest = batch.iter().position(|&id| g.locate(id).sector == sector).unwrap();
                prop_assert_eq!(f, earliest);
            }
            let wide = SectorGeometry::new(&header(1500, ElemType::F32, 8, 200));
            wide.shared_reads(&batch, &mut first);
            prop_assert_eq!(first, (0..batch.len()).collect::<Vec<_>>());
        }
    }

    /// A version 2 sector: each record found through the slot table and
    /// carrying its id; its mates are the other records of the sector,
    /// without the zero tail; a record read for the wrong node is refused.
    #[test]
    fn v2_records_carry_their_ids_and_mates() {
        let n = 7u64;
        let mut h = header(4, ElemType::U8, 2, n);
        h.order = NodeOrder::Locality;
        // 4 + 4 + 8 + 4 = 20 bytes: 204 per sector, so all 7 share sector 1.
        let slots: Arc<[u32]> = vec![3, 0, 6, 1, 5, 2, 4].into();
        let g = SectorGeometry::with_slots(&h, slots.clone());
        assert_eq!(g.record_bytes, 20);
        let mut sector = vec![0u8; SECTOR];
        for node in 0..n as u32 {
            let loc = g.locate(node);
            assert_eq!(
                (loc.sector, loc.offset),
                (1, slots[node as usize] as usize * 20)
            );
            let v = [node as u8; 4];
            encode_record(
                &v,
                &[(node + 1) % 7],
                2,
                Some(node),
                &mut sector[loc.offset..loc.offset + 20],
            );
        }
        for node in 0..n as u32 {
            let rec = g.decode(node, &sector).unwrap();
            assert_eq!(rec.vector, &[node as u8; 4]);
            let mut mates: Vec<u32> = g
                .mates(node, &sector)
                .map(|(id, r)| {
                    assert_eq!(r[0], id as u8);
                    id
                })
                .collect();
            mates.sort_unstable();
            let want: Vec<u32> = (0..n as u32).filter(|&m| m != node).collect();
            assert_eq!(mates, want);
        }
        // Node 1's slot read as node 0's: refused.
        let wrong = SectorGeometry::with_slots(&h, vec![0, 3, 6, 1, 5, 2, 4].into());
        let e = wrong.decode(0, &sector).unwrap_err().to_string();
        assert!(e.contains("slot holds the record of node 1"), "{e}");
        // A record whose id was damaged (node 4's record now says 5) is not
        // taken for node 5, nor for 4: only records the table agrees with.
        let mut damaged = sector.clone();
        let at = g.locate(4).offset + 16;
        damaged[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
        let mates: Vec<u32> = g.mates(0, &damaged).map(|(id, _)| id).collect();
        assert!(
            !mates.contains(&4) && mates.iter().filter(|&&m| m == 5).count() == 1,
            "{mates:?}"
        );
        // Version 1 has no mates.
        assert_eq!(
            SectorGeometry::new(&header(4, ElemType::U8, 2, n))
                .mates(0, &sector)
                .count(),
            0
        );
    }

    #[test]
    fn rejects_bad_degree_and_ids() {
        let g = SectorGeometry::new(&header(4, ElemType::U8, 2, 10));
        let mut buf = vec![0u8; SECTOR];
        encode_record(&[1, 2, 3, 4], &[1, 2], 2, None, &mut buf[..g.record_bytes]);
        assert!(g.decode(0, &buf).is_ok());
        buf[4] = 3; // degree 3 > R = 2
        assert!(g
            .decode(0, &buf)
            .unwrap_err()
            .to_string()
            .contains("exceeds R"));
        buf[4] = 2;
        buf[8] = 77; // id 77 ≥ n = 10
        assert!(g
            .decode(0, &buf)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }
}
