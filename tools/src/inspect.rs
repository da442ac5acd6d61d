//! `inspect`: what is in an index directory.

use std::io::Write;

use shardann_engine::index::OpenOptions;
use shardann_engine::io::{AlignedBuf, SectorRequest};
use shardann_engine::layout::{BUILD_INFO_FILE, DOCS_FILE, FILTERS_FILE, KEYS_FILE};
use shardann_engine::shard;

use crate::cli::{InspectArgs, RelayoutArgs, VerifyArgs};
use crate::util::{dir_bytes, human_bytes};

pub fn inspect(a: &InspectArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let idx = shard::open(&a.index, OpenOptions::buffered())?;
    let h = idx.header();
    let g = idx.geometry();
    let dir = idx.dir().to_path_buf();
    writeln!(out, "index      {}", a.index.display())?;
    match idx.segment() {
        Some(m) => writeln!(
            out,
            "segment    {} (shard {}, version {}, parent {}, {} files)",
            dir.display(),
            m.shard_id,
            m.version,
            m.parent_version.map_or("none".into(), |p| p.to_string()),
            m.files.len()
        )?,
        None => writeln!(out, "segment    none (a plain, unversioned index)")?,
    }
    writeln!(out, "points     {}", h.num_points)?;
    writeln!(
        out,
        "vectors    {}-d {}, metric {}",
        h.dim, h.elem, h.metric
    )?;
    writeln!(
        out,
        "graph      R={} build L={} alpha={} medoid={}",
        h.max_degree, h.build_list, h.alpha, h.medoid
    )?;
    writeln!(
        out,
        "layout     v{} ({}), record {} B, {} per sector, {} sectors{}",
        h.order.major(),
        match h.order {
            shardann_engine::layout::NodeOrder::Identity => "nodes in id order",
            shardann_engine::layout::NodeOrder::Locality => "graph neighbours share sectors",
        },
        g.record_bytes,
        g.records_per_sector,
        h.num_sectors(),
        match g.memory_bytes() {
            0 => String::new(),
            b => format!(", slot table {} in RAM", human_bytes(b as u64)),
        }
    )?;
    writeln!(
        out,
        "pq         {} bytes per point, {} in RAM",
        h.pq_bytes,
        human_bytes(idx.pq_memory_bytes() as u64)
    )?;
    if let Some(d) = idx.documents() {
        let size = |name: &str| {
            std::fs::metadata(dir.join(name)).map_or("missing".into(), |m| human_bytes(m.len()))
        };
        writeln!(
            out,
            "documents  {} ({}: {}; {}: {} in {} blocks; {}: {})",
            d.keys().len(),
            KEYS_FILE,
            size(KEYS_FILE),
            DOCS_FILE,
            size(DOCS_FILE),
            d.store().num_blocks(),
            FILTERS_FILE,
            size(FILTERS_FILE),
        )?;
        if let Some(f) = d.filters() {
            let fields: Vec<String> = f
                .schema()
                .iter()
                .map(|(name, kind)| format!("{name} ({kind})"))
                .collect();
            writeln!(out, "filters    {}", fields.join(", "))?;
        }
        writeln!(
            out,
            "doc RAM    {} (ids, block table, filter index)",
            human_bytes(d.memory_bytes() as u64)
        )?;
    }
    writeln!(
        out,
        "RAM        {} at open (PQ, cache, ids, documents)",
        human_bytes(idx.memory_bytes() as u64)
    )?;
    writeln!(out, "on disk    {}", human_bytes(dir_bytes(&dir)))?;
    if let Ok(info) = std::fs::read_to_string(dir.join(BUILD_INFO_FILE)) {
        writeln!(
            out,
            "build.json {}",
            info.split_whitespace().collect::<Vec<_>>().join(" ")
        )?;
    }
    if let Some(node) = a.node {
        if node as u64 >= h.num_points {
            anyhow::bail!(
                "node {node} out of range: the index has {} points",
                h.num_points
            );
        }
        let loc = g.locate(node);
        let mut buf = AlignedBuf::new(g.node_read_bytes());
        let file = shardann_engine::io::FileReader::open(
            &dir.join(shardann_engine::layout::INDEX_FILE),
            false,
        )?;
        use shardann_engine::io::SectorReader;
        file.read(&mut [SectorRequest {
            sector: loc.sector,
            buf: &mut buf.as_mut_slice()[..loc.sectors * shardann_engine::layout::SECTOR],
        }])?;
        let rec = g.decode(node, buf.as_slice())?;
        writeln!(
            out,
            "node {node}: sector {} offset {}, degree {}",
            loc.sector,
            loc.offset,
            rec.degree()
        )?;
        writeln!(
            out,
            "  neighbours {:?}",
            rec.neighbors().collect::<Vec<_>>()
        )?;
        let shown: Vec<String> = rec.vector.iter().take(16).map(|b| b.to_string()).collect();
        writeln!(out, "  vector bytes [{} ...]", shown.join(", "))?;
    }
    Ok(())
}

/// `verify`: every byte of one segment, or of every shard's current one.
/// On a sharded root each shard is also checked against `cluster.json` the
/// way `serve` checks it when it opens the shard (and the puller before it
/// switches to a pulled version), so verify passes only where serve would
/// start.
pub fn verify(a: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use shardann_engine::error::Error;
    use shardann_engine::layout::CLUSTER_FILE;
    let cluster_path = a.path.join(CLUSTER_FILE);
    let cluster = if cluster_path.exists() {
        Some(shardann_engine::cluster::read_manifest(&a.path)?)
    } else {
        None
    };
    let targets: Vec<std::path::PathBuf> = match &cluster {
        Some(m) => m.shards.iter().map(|s| a.path.join(&s.dir)).collect(),
        None => vec![a.path.clone()],
    };
    for (id, t) in targets.iter().enumerate() {
        let v = shardann_engine::shard::verify(t)?;
        if let Some(m) = &cluster {
            m.check_segment(id, &v.manifest)
                .map_err(|source| Error::ClusterFile {
                    path: cluster_path.clone(),
                    source,
                })?;
            m.open_shard(&a.path, id, shardann_engine::index::OpenOptions::buffered())?;
        }
        writeln!(
            out,
            "ok {}: shard {} version {}, {} files, {} verified",
            v.dir.display(),
            v.manifest.shard_id,
            v.manifest.version,
            v.manifest.files.len(),
            human_bytes(v.bytes)
        )?;
        verify_log(t, out)?;
    }
    Ok(())
}

/// The shard's write-ahead log, if it has one: its header against the
/// index, what its records hold, and a torn tail (reported, not an error:
/// a crash leaves one, and the node drops it at start).
fn verify_log(shard_dir: &std::path::Path, out: &mut dyn Write) -> anyhow::Result<()> {
    use shardann_engine::mutable::WAL_FILE;
    let path = shard_dir.join(WAL_FILE);
    if !path.exists() {
        return Ok(());
    }
    let log = shardann_engine::wal::scan(&path)?;
    let index = shard::open(shard_dir, OpenOptions::buffered())?;
    if log.dim as usize != index.dim() || log.elem != index.elem().code() {
        anyhow::bail!(
            "{}: the log is for {}-d vectors of element type code {}, the index holds {}-d {}",
            path.display(),
            log.dim,
            log.elem,
            index.dim(),
            index.elem().name()
        );
    }
    writeln!(
        out,
        "ok {}: {} write(s) after LSN {} ({} upsert(s), {} delete(s)), {}{}",
        path.display(),
        log.records,
        log.base_lsn,
        log.upserts,
        log.deletes,
        human_bytes(log.bytes),
        if log.torn_bytes > 0 {
            format!(
                "; a torn tail of {} byte(s) (a write cut short, never acknowledged; dropped when a node opens the log)",
                log.torn_bytes
            )
        } else {
            String::new()
        }
    )?;
    Ok(())
}

/// `relayout`: the index again, in another node order.
pub fn relayout(a: &RelayoutArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    use anyhow::Context;
    let bars = crate::progress::Bars::new(quiet);
    let src = shard::open(&a.index, OpenOptions::buffered())
        .with_context(|| format!("opening index {}", a.index.display()))?;
    let r = shardann_engine::index::relayout(&src, &a.out, a.layout.order(), &bars).with_context(
        || {
            format!(
                "writing {} again into {}",
                a.index.display(),
                a.out.display()
            )
        },
    )?;
    writeln!(
        out,
        "wrote {} ({} points, layout v{}, {} of each sector's other records are graph neighbours, {}) in {:.1} s",
        a.out.display(),
        r.num_points,
        r.order.major(),
        format_args!("{:.0} %", 100.0 * r.sector_overlap),
        human_bytes(r.index_bytes),
        r.seconds
    )?;
    Ok(())
}
