//! Node records inside sectors. Spec: `format-spec/index.md`, "Node records".

use super::{IndexHeader, SECTOR};
use crate::error::FormatError;

/// Where records live: derived from the header once, used per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorGeometry {
    pub record_bytes: usize,
    /// ≥ 1 when records are packed, 0 when one record spans sectors.
    pub records_per_sector: usize,
    pub sectors_per_record: usize,
    pub vector_bytes: usize,
    pub max_degree: usize,
    pub num_points: u64,
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
    pub fn new(h: &IndexHeader) -> Self {
        SectorGeometry {
            record_bytes: h.record_bytes() as usize,
            records_per_sector: h.records_per_sector() as usize,
            sectors_per_record: h.sectors_per_record() as usize,
            vector_bytes: h.dim as usize * h.elem.size(),
            max_degree: h.max_degree as usize,
            num_points: h.num_points,
        }
    }

    /// Bytes needed to hold the sectors of one node.
    pub fn node_read_bytes(&self) -> usize {
        self.sectors_per_record.max(1) * SECTOR
    }

    #[inline]
    pub fn locate(&self, node: u32) -> NodeLocation {
        let node = node as u64;
        if self.records_per_sector > 0 {
            let rps = self.records_per_sector as u64;
            NodeLocation {
                sector: 1 + node / rps,
                sectors: 1,
                offset: (node % rps) as usize * self.record_bytes,
            }
        } else {
            NodeLocation {
                sector: 1 + node * self.sectors_per_record as u64,
                sectors: self.sectors_per_record,
                offset: 0,
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

/// Encodes one record into `out` (`record_bytes` long, zero-padded slots).
pub(crate) fn encode_record(vector: &[u8], neighbors: &[u32], max_degree: usize, out: &mut [u8]) {
    out.fill(0);
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
            encode_record(&vector, &ids, r as usize, &mut buf[loc.offset..loc.offset + g.record_bytes]);
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

    #[test]
    fn rejects_bad_degree_and_ids() {
        let g = SectorGeometry::new(&header(4, ElemType::U8, 2, 10));
        let mut buf = vec![0u8; SECTOR];
        encode_record(&[1, 2, 3, 4], &[1, 2], 2, &mut buf[..g.record_bytes]);
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
