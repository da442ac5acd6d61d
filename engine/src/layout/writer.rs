//! Writes `disk.index`: header sector, then node records packed into
//! sectors, then (version 2) the slot table.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::node::{encode_record, SectorGeometry};
use super::{IndexHeader, NodeOrder, SECTOR};
use crate::data::Vectors;
use crate::error::{Error, Result};
use crate::metric::Element;
use crate::progress::Progress;
use crate::vamana::Graph;

/// Writes the index file for `data` and `graph`; returns its size in bytes.
/// In version 2 (`header.order` is [`NodeOrder::Locality`]) `order` lists
/// the node of every slot ([`super::locality_order`]); in version 1 it is
/// ignored. The file is fsynced before this returns.
pub fn write_index<T: Element>(
    path: &Path,
    header: &IndexHeader,
    data: Vectors<'_, T>,
    graph: &Graph,
    order: &[u32],
    progress: &dyn Progress,
) -> Result<u64> {
    if data.len() as u64 != header.num_points || graph.len() != data.len() {
        return Err(Error::InvalidParameter(format!(
            "header says {} points, data has {}, graph has {}",
            header.num_points,
            data.len(),
            graph.len()
        )));
    }
    let mut held = InMemory { data, graph };
    write_records(path, header, &mut held, order, progress)
}

/// Where [`write_records`] gets each node's vector and out-neighbours.
/// Nodes are asked in slot order: `0, 1, 2, …` in version 1, the slot
/// table's order in version 2; a source that can only stream (a build
/// under a memory budget) serves version 1 only.
pub(crate) trait Records<T> {
    fn record(&mut self, node: usize) -> Result<(&[T], &[u32])>;
}

/// Vectors and a graph held whole (in RAM or mapped).
struct InMemory<'a, 'g, T> {
    data: Vectors<'a, T>,
    graph: &'g Graph,
}

impl<T: Element> Records<T> for InMemory<'_, '_, T> {
    fn record(&mut self, node: usize) -> Result<(&[T], &[u32])> {
        Ok((self.data.row(node), self.graph.neighbors(node)))
    }
}

/// [`write_index`] over any [`Records`]: `header.num_points` records.
pub(crate) fn write_records<T: Element>(
    path: &Path,
    header: &IndexHeader,
    src: &mut dyn Records<T>,
    order: &[u32],
    progress: &dyn Progress,
) -> Result<u64> {
    let n = header.num_points as usize;
    let v2 = header.order == NodeOrder::Locality;
    if v2 && (order.len() != n || header.records_per_sector() == 0) {
        return Err(Error::InvalidParameter(format!(
            "a version 2 index needs a slot order of {} nodes and records that fit a sector \
             (order has {}, {} records per sector)",
            n,
            order.len(),
            header.records_per_sector()
        )));
    }
    // `order` has one entry per point (checked above).
    let node_at = |slot: usize| {
        if v2 {
            order.get(slot).map_or(slot, |&n| n as usize)
        } else {
            slot
        }
    };
    let io = |e| Error::io(path, e);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    out.write_all(&header.to_sector()).map_err(io)?;
    let g = SectorGeometry::new(header);
    let rps = g.records_per_sector;
    let mut written = 1u64;
    progress.stage("writing disk index", n as u64);
    if rps > 0 {
        let mut sector = vec![0u8; SECTOR];
        for first in (0..n).step_by(rps) {
            sector.fill(0);
            let last = (first + rps).min(n);
            for (j, slot) in (first..last).enumerate() {
                let node = node_at(slot);
                let at = j * g.record_bytes;
                let rec = sector.get_mut(at..at + g.record_bytes).unwrap_or(&mut []);
                let (vector, neighbors) = src.record(node)?;
                encode_record(
                    bytemuck::cast_slice(vector),
                    neighbors,
                    g.max_degree,
                    v2.then_some(node as u32),
                    rec,
                );
            }
            out.write_all(&sector).map_err(io)?;
            written += 1;
            progress.inc((last - first) as u64);
        }
    } else {
        let mut block = vec![0u8; g.sectors_per_record * SECTOR];
        for node in 0..n {
            block.fill(0);
            let rec = block.get_mut(..g.record_bytes).unwrap_or(&mut []);
            let (vector, neighbors) = src.record(node)?;
            encode_record(
                bytemuck::cast_slice(vector),
                neighbors,
                g.max_degree,
                None,
                rec,
            );
            out.write_all(&block).map_err(io)?;
            written += g.sectors_per_record as u64;
            progress.inc(1);
        }
    }
    progress.finish_stage();
    debug_assert_eq!(written, header.num_sectors());
    if v2 {
        let table = super::slot_table_bytes(order);
        out.write_all(&table).map_err(io)?;
        written += (table.len() / SECTOR) as u64;
    }
    debug_assert_eq!(written * SECTOR as u64, header.file_bytes());
    out.flush().map_err(io)?;
    out.get_ref().sync_all().map_err(io)?;
    Ok(written * SECTOR as u64)
}
