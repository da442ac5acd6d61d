//! An index directory: build one, open one, search it.
//!
//! ```text
//!  OUT/
//!    disk.index   header sector + node records      (format-spec/index.md)
//!    pq.bin       PQ codebook + codes, checksummed  (format-spec/pq.md)
//!    ids.bin      global ids, in a shard of a sharded index (format-spec/cluster.md)
//!    build.json   how it was built (informational, not read by search)
//! ```
//!
//! [`DiskIndex::open`] opens exactly the directory it is given: resolving a
//! shard directory's `CURRENT` and checking a segment's manifest are the
//! layers above ([`crate::shard`], [`crate::segment`]), which attach the
//! manifest to the opened index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringBitmap;

use crate::cache::NodeCache;
use crate::clustered::ClusteredCodes;
use crate::data::Vectors;
use crate::docs::Documents;
use crate::element::ElemType;
use crate::error::{Error, FilterError, FormatError, Result};
use crate::filter::{Filter, Span};
use crate::io::{open_reader, AlignedBuf, IoBackend, SectorReader, SectorRequest};
use crate::layout::{
    self, IndexHeader, Manifest, NodeOrder, SectorGeometry, BUILD_INFO_FILE, IDS_FILE, INDEX_FILE,
    PQ_FILE, SECTOR,
};
use crate::metric::{Element, Metric};
use crate::navigation::{NavPoints, Navigation};
use crate::pq::{Codes, PqCodebook, PqParams};
use crate::progress::Progress;
use crate::search::{
    choose_plan, BeamSearch, Hit, Plan, SearchParams, SearchStats, CLUSTERED_MAX_ENTRIES,
};
use crate::vamana::{self, VamanaParams};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Sample searches [`DiskIndex::load_cache`] runs, at least and at most.
const CACHE_SAMPLES_MIN: usize = 256;
const CACHE_SAMPLES_MAX: usize = 2048;
/// Seed of the cache's sample: every replica of a segment caches alike.
const CACHE_SEED: u64 = 0x6361_6368;
/// What the sample searches ask for: the lists users run at recall@10
/// near 0.95 (16–28 on 1M points).
const CACHE_SAMPLE_PARAMS: SearchParams = SearchParams {
    k: 10,
    list: 24,
    beam: 4,
};

/// Everything `build` needs besides the data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BuildParams {
    pub metric: Metric,
    pub vamana: VamanaParams,
    #[serde(skip)]
    pub pq: PqParams,
    /// Node order of `disk.index`: version 2 ([`NodeOrder::Locality`])
    /// puts graph neighbours in one sector. Where a sector holds one record
    /// only, version 1 is written whatever is asked.
    pub order: NodeOrder,
}

/// What a build did and how long each stage took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    pub num_points: usize,
    pub dim: usize,
    pub elem: ElemType,
    pub metric: Metric,
    pub max_degree: usize,
    pub build_list: usize,
    pub alpha: f32,
    pub pq_bytes: usize,
    pub mean_degree: f64,
    pub medoid: u32,
    pub index_bytes: u64,
    pub pq_file_bytes: u64,
    pub pq_seconds: f64,
    pub graph_seconds: f64,
    pub write_seconds: f64,
    /// The node order written (`disk.index` version 1 or 2).
    pub order: NodeOrder,
    /// Of the other records in a node's sector, the mean share that are its
    /// graph neighbours ([`layout::sector_overlap`]).
    pub sector_overlap: f64,
    /// Graphs built and merged to stay under a memory budget
    /// ([`crate::budget`]); 1 when the graph was built whole.
    pub partitions: usize,
}

/// Builds an index over `data` into directory `out` (created if missing).
pub fn build_index<T: Element>(
    data: Vectors<'_, T>,
    params: &BuildParams,
    out: &Path,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    params.vamana.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let t = Instant::now();
    let pq = PqCodebook::train(data, params.metric, &params.pq, progress)?;
    let codes = pq.encode_all(data, progress);
    let pq_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let graph = vamana::build(data, params.metric, &params.vamana, progress)?;
    let graph_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let header = IndexHeader {
        elem: T::TYPE,
        metric: params.metric,
        dim: data.dim() as u32,
        max_degree: params.vamana.max_degree as u32,
        num_points: data.len() as u64,
        medoid: graph.medoid() as u64,
        pq_bytes: pq.num_chunks() as u32,
        build_list: params.vamana.build_list as u32,
        alpha: params.vamana.alpha,
        order: params.order,
    };
    let (header, sector_overlap, index_bytes) =
        write_in_order(&out.join(INDEX_FILE), header, data, &graph, progress)?;
    let pq_file_bytes = layout::write_pq(&out.join(PQ_FILE), &pq, &codes)?;
    let report = BuildReport {
        num_points: data.len(),
        dim: data.dim(),
        elem: T::TYPE,
        metric: params.metric,
        max_degree: params.vamana.max_degree,
        build_list: params.vamana.build_list,
        alpha: params.vamana.alpha,
        pq_bytes: pq.num_chunks(),
        mean_degree: graph.mean_degree(),
        medoid: graph.medoid(),
        index_bytes,
        pq_file_bytes,
        pq_seconds,
        graph_seconds,
        write_seconds: t.elapsed().as_secs_f64(),
        order: header.order,
        sector_overlap,
        partitions: 1,
    };
    write_build_info(out, &report)?;
    Ok(report)
}

/// Writes `build.json` (informational: nothing reads it back).
pub(crate) fn write_build_info(out: &Path, report: &BuildReport) -> Result<()> {
    let info = out.join(BUILD_INFO_FILE);
    let json = serde_json::to_vec_pretty(report).unwrap_or_default();
    std::fs::write(&info, json).map_err(|e| Error::io(&info, e))
}

/// Writes `disk.index` at `path` in `header.order`, except that version 2
/// falls back to version 1 where a sector holds one record only (no mates
/// to use). Returns the header written, the sectors' overlap with the graph
/// ([`layout::sector_overlap`]) and the file's size.
pub(crate) fn write_in_order<T: Element>(
    path: &Path,
    mut header: IndexHeader,
    data: Vectors<'_, T>,
    graph: &vamana::Graph,
    progress: &dyn Progress,
) -> Result<(IndexHeader, f64, u64)> {
    let rps = IndexHeader {
        order: NodeOrder::Locality,
        ..header
    }
    .records_per_sector() as usize;
    if rps < 2 {
        header.order = NodeOrder::Identity;
    }
    // Version 1 needs no order: node i is slot i.
    let slots = match header.order {
        NodeOrder::Locality => layout::locality_order(graph, rps),
        NodeOrder::Identity => Vec::new(),
    };
    let order = (header.order == NodeOrder::Locality).then_some(&slots[..]);
    let overlap = layout::sector_overlap(graph, order, header.records_per_sector() as usize);
    let bytes = layout::write_index(path, &header, data, graph, &slots, progress)?;
    Ok((header, overlap, bytes))
}

/// What [`relayout`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayoutReport {
    pub num_points: u64,
    pub order: NodeOrder,
    pub sector_overlap: f64,
    pub index_bytes: u64,
    pub seconds: f64,
}

/// Every record of `index`'s `disk.index`, read whole into RAM: the
/// vectors as raw bytes (node order) and the graph.
pub(crate) fn read_records(
    index: &DiskIndex,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, vamana::Graph)> {
    let src_path = index.dir().join(INDEX_FILE);
    let bytes = std::fs::read(&src_path).map_err(|e| Error::io(&src_path, e))?;
    let g = index.geometry();
    let n = index.len();
    progress.stage("reading the graph", n as u64);
    // Vectors as raw bytes: the writer copies each row's bytes as they are,
    // whatever the element type (the header keeps the real one).
    let mut vectors: Vec<u8> = Vec::with_capacity(n * g.vector_bytes);
    let mut adj: Vec<Vec<u32>> = Vec::with_capacity(n);
    for node in 0..n as u32 {
        let loc = g.locate(node);
        let at = loc.sector as usize * SECTOR;
        let sectors = bytes.get(at..at + loc.sectors * SECTOR).ok_or_else(|| {
            Error::format(
                &src_path,
                FormatError::Truncated {
                    what: "node sectors",
                    offset: at as u64,
                    end: (at + loc.sectors * SECTOR) as u64,
                    file_len: bytes.len() as u64,
                },
            )
        })?;
        let rec = g
            .decode(node, sectors)
            .map_err(|e| Error::format(&src_path, e))?;
        vectors.extend_from_slice(rec.vector);
        adj.push(rec.neighbors().collect());
        if node % 65_536 == 0 {
            progress.inc(65_536.min(n as u64 - node as u64));
        }
    }
    progress.finish_stage();
    drop(bytes);
    let header = index.header();
    let graph = vamana::Graph::from_parts(adj, header.max_degree as usize, header.medoid as u32);
    Ok((vectors, graph))
}

/// Writes the open index `index` again into the plain index directory
/// `dst` with node order `order`, the same graph and the same vectors.
/// Node ids do not change, so the other files of the segment (PQ codes,
/// ids, documents, filters, text) are copied as they are; the manifest is not
/// (its checksum of `disk.index` would be wrong). Reads `src`'s
/// `disk.index` whole into RAM: one record per point (388 MB for 1M
/// 128-d u8 points at R = 64).
pub fn relayout(
    index: &DiskIndex,
    dst: &Path,
    order: NodeOrder,
    progress: &dyn Progress,
) -> Result<RelayoutReport> {
    let t = Instant::now();
    let from = index.dir().to_path_buf();
    if from.canonicalize().ok() == dst.canonicalize().ok() {
        return Err(Error::InvalidParameter(format!(
            "relayout would overwrite its source {}: give another output directory",
            from.display()
        )));
    }
    // Into an empty directory only: files left from another index (its
    // documents, a manifest, a CURRENT) would be paired with this one.
    let occupied = std::fs::read_dir(dst).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(Error::InvalidParameter(format!(
            "relayout writes into an empty directory; {} is not empty",
            dst.display()
        )));
    }
    let (vectors, graph) = read_records(index, progress)?;
    let g = index.geometry();
    let n = index.len();
    let header = index.header();
    let data = Vectors::new(&vectors[..], g.vector_bytes);
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    // The segment files keyed by node id, as they are; nothing else (not
    // the manifest, whose checksums would be wrong, nor unknown files).
    for name in [
        PQ_FILE,
        IDS_FILE,
        layout::KEYS_FILE,
        layout::DOCS_FILE,
        layout::FILTERS_FILE,
        layout::TEXT_FILE,
    ] {
        let from = from.join(name);
        if from.is_file() {
            let to = dst.join(name);
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&to, e))?;
        }
    }
    let (out_header, sector_overlap, index_bytes) = write_in_order(
        &dst.join(INDEX_FILE),
        IndexHeader { order, ..*header },
        data,
        &graph,
        progress,
    )?;
    Ok(RelayoutReport {
        num_points: n as u64,
        order: out_header.order,
        sector_overlap,
        index_bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The navigation graph's search list: enough to land among the query's
/// neighbours in a graph of a few thousand points (1M sift-like points,
/// 10,000 in the graph: 16, 32 and 64 gave the same reads per query).
pub const NAV_LIST: usize = 32;
/// How many of the navigation graph's nearest points seed the disk search.
/// Measured on 1M sift-like points, 10,000 in the graph, at recall@10
/// 0.956: 1 or 2 seeds, 27.1 reads per query; 8 seeds, 28.6 (each seed
/// is read, near the query or not); 2 fill more of the first round.
pub const NAV_SEEDS: usize = 2;

/// How to open an index for search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenOptions {
    /// Read node sectors with `O_DIRECT` (the default): numbers then measure
    /// the device. `false` goes through the page cache.
    pub direct_io: bool,
    /// Which reader fetches node sectors.
    pub io: IoBackend,
    /// Nodes to keep in RAM, those sample searches read most (0 = no
    /// cache; [`DiskIndex::load_cache`]).
    pub cache_nodes: usize,
    /// Points of the navigation graph built at open ([`crate::navigation`];
    /// [`NavPoints::NONE`]: searches start at the medoid).
    pub nav_points: NavPoints,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            direct_io: true,
            io: IoBackend::Auto,
            cache_nodes: 0,
            nav_points: NavPoints::default(),
        }
    }
}

impl OpenOptions {
    /// Buffered `pread`: for tools that read a few nodes, not for benchmarks.
    pub fn buffered() -> Self {
        OpenOptions {
            direct_io: false,
            io: IoBackend::Pread,
            cache_nodes: 0,
            nav_points: NavPoints::NONE,
        }
    }
}

/// An open index: header and PQ data in RAM, node sectors on disk.
pub struct DiskIndex {
    dir: PathBuf,
    header: IndexHeader,
    geometry: SectorGeometry,
    pq: PqCodebook,
    codes: Codes,
    reader: Box<dyn SectorReader>,
    cache: NodeCache,
    navigation: Option<Navigation>,
    /// For a shard of a sharded index: the global id of every local node.
    global_ids: Option<Vec<u32>>,
    /// The manifest of the segment, when `dir` is one (not a plain index);
    /// attached by [`crate::segment::open`].
    manifest: Option<Manifest>,
    /// Filtered searches with at most this many matches use the flat plan.
    flat_max_matches: u64,
    /// User ids, payloads and filter index, when the segment has them;
    /// attached by [`crate::segment::open`].
    documents: Option<Documents>,
    /// Copies of the codes in filter fields' value orders (opt-in, see
    /// [`DiskIndex::cluster_codes`]).
    clustered: Vec<ClusteredCodes>,
    /// Most entries of a clustered run scored for one query.
    clustered_max_entries: usize,
    /// Names the current set of copies, unique in the process: a
    /// [`Matches`] made for other copies (before `cluster_codes` was
    /// called again, or on another index) then finds no run here.
    clustered_id: u64,
    /// Searches use the other records of each sector they read (version 2
    /// indexes; see [`crate::search::BeamSearch::take_mates`]).
    sector_mates: bool,
}

/// Source of [`DiskIndex`]'s `clustered_id`s.
static CLUSTERED_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What a filter admits in one index: the matching segment-local ids, and
/// the run of a clustered copy of the codes that holds them, when there is
/// one (from [`DiskIndex::evaluate`]).
#[derive(Debug, Clone)]
pub struct Matches {
    docs: Arc<RoaringBitmap>,
    /// Which set of clustered copies (see `DiskIndex::clustered_id`),
    /// which copy of it, and its run.
    run: Option<(u64, usize, Span)>,
}

impl Matches {
    /// Matches given as a bitmap, with no clustered run: such a search
    /// takes the flat or the filtered-walk plan.
    pub fn new(docs: Arc<RoaringBitmap>) -> Self {
        Matches { docs, run: None }
    }

    /// The matching segment-local ids.
    pub fn docs(&self) -> &Arc<RoaringBitmap> {
        &self.docs
    }
}

impl std::fmt::Debug for DiskIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskIndex")
            .field("dir", &self.dir)
            .field("header", &self.header)
            .field("reader", &self.reader.name())
            .finish()
    }
}

impl DiskIndex {
    /// Opens the index files in `dir` (a segment or a plain index, not a
    /// shard directory: see [`crate::shard::open`]), validating the header
    /// and the PQ file against each other.
    pub fn open(dir: impl AsRef<Path>, opts: OpenOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(INDEX_FILE);
        let reader = open_reader(&path, opts.direct_io, opts.io)?;
        let mut idx = Self::open_with_reader(dir, reader)?;
        // The cache's sample searches start from the navigation graph.
        idx.load_navigation(opts.nav_points)?;
        idx.load_cache(opts.cache_nodes)?;
        Ok(idx)
    }

    /// Opens `dir` but reads node sectors through `reader`.
    pub fn open_with_reader(dir: impl AsRef<Path>, reader: Box<dyn SectorReader>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(INDEX_FILE);
        let file_len = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        let mut buf = AlignedBuf::new(SECTOR);
        if file_len < SECTOR as u64 {
            return Err(Error::format(
                &path,
                FormatError::Truncated {
                    what: "header sector",
                    offset: 0,
                    end: SECTOR as u64,
                    file_len,
                },
            ));
        }
        reader
            .read(&mut [SectorRequest {
                sector: 0,
                buf: buf.as_mut_slice(),
            }])
            .map_err(|e| Error::io(&path, e))?;
        let header =
            IndexHeader::parse(buf.as_slice(), file_len).map_err(|e| Error::format(&path, e))?;

        let pq_path = dir.join(PQ_FILE);
        let pqf = layout::read_pq(&pq_path)?;
        let mismatch = |field: &'static str, value: u64, want: u64| {
            Error::format(
                &pq_path,
                FormatError::Invalid {
                    field,
                    value,
                    why: format!("{} says {want}", path.display()),
                },
            )
        };
        let m = pqf.codebook.num_chunks();
        if pqf.codebook.dim() != header.dim as usize {
            return Err(mismatch(
                "dimension",
                pqf.codebook.dim() as u64,
                header.dim.into(),
            ));
        }
        if pqf.codebook.metric() != header.metric {
            return Err(mismatch(
                "metric",
                pqf.codebook.metric().code().into(),
                header.metric.code().into(),
            ));
        }
        if (pqf.codes.len() / m) as u64 != header.num_points {
            return Err(mismatch(
                "point count",
                (pqf.codes.len() / m) as u64,
                header.num_points,
            ));
        }
        let geometry = match header.order {
            NodeOrder::Identity => SectorGeometry::new(&header),
            NodeOrder::Locality => {
                SectorGeometry::with_slots(&header, layout::read_slot_table(&path, &header)?)
            }
        };
        Ok(DiskIndex {
            geometry,
            dir,
            header,
            pq: pqf.codebook,
            codes: pqf.codes,
            reader,
            cache: NodeCache::empty(),
            navigation: None,
            global_ids: None,
            manifest: None,
            flat_max_matches: crate::search::FLAT_MAX_MATCHES,
            documents: None,
            clustered: Vec::new(),
            clustered_max_entries: CLUSTERED_MAX_ENTRIES,
            clustered_id: 0,
            sector_mates: true,
        })
        .and_then(|mut idx| {
            let ids_path = idx.dir.join(IDS_FILE);
            if ids_path.exists() {
                let ids = layout::read_ids(&ids_path)?;
                if ids.len() as u64 != idx.header.num_points {
                    return Err(Error::format(
                        &ids_path,
                        FormatError::Invalid {
                            field: "id count",
                            value: ids.len() as u64,
                            why: format!("{} has {} points", INDEX_FILE, idx.header.num_points),
                        },
                    ));
                }
                idx.global_ids = Some(ids);
            }
            Ok(idx)
        })
    }

    /// Fills the node cache with about `nodes` nodes (replacing any
    /// previous cache; 0 empties it): those that sample searches read
    /// most. Call it after [`Self::load_navigation`]: the samples start
    /// where real searches start.
    ///
    /// Breadth-first from the medoid, the earlier rule, caches nodes that
    /// no search reads once the navigation graph starts searches near the
    /// query: 0.2 cache hits per query with 10,000 nodes on 1M points.
    pub fn load_cache(&mut self, nodes: usize) -> Result<()> {
        self.cache = NodeCache::empty();
        if nodes == 0 || self.is_empty() {
            return Ok(());
        }
        let ranked = match self.header.elem {
            ElemType::U8 => self.most_read::<u8>(nodes)?,
            ElemType::I8 => self.most_read::<i8>(nodes)?,
            ElemType::F32 => self.most_read::<f32>(nodes)?,
        };
        let path = self.dir.join(INDEX_FILE);
        self.cache = NodeCache::load(self.reader.as_ref(), &self.geometry, &ranked, nodes)
            .map_err(|e| e.at(&path))?;
        Ok(())
    }

    /// Runs searches for a sample of the indexed points (about one per four
    /// nodes to cache) and returns the nodes they read, most read first. In
    /// version 2 reads are counted per sector (the unit the cache keeps),
    /// and each sector is named by the first node read from it.
    fn most_read<T: Element>(&self, nodes: usize) -> Result<Vec<u32>> {
        let path = self.dir.join(INDEX_FILE);
        let total = self.header.num_points as usize;
        let samples = (nodes / 4)
            .clamp(CACHE_SAMPLES_MIN, CACHE_SAMPLES_MAX)
            .min(total);
        let mut rng = ChaCha8Rng::seed_from_u64(CACHE_SEED);
        let mut ids: Vec<u32> = rand::seq::index::sample(&mut rng, total, samples)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        ids.sort_unstable();
        let size = std::mem::size_of::<T>();
        let mut queries: Vec<T> = Vec::with_capacity(samples * self.dim());
        crate::cache::read_records(self.reader.as_ref(), &self.geometry, &ids, |id, bytes| {
            let rec = self.geometry.decode(id, bytes)?;
            queries.extend(
                rec.vector
                    .chunks_exact(size)
                    .map(bytemuck::pod_read_unaligned::<T>),
            );
            Ok(())
        })
        .map_err(|e| e.at(&path))?;
        let by_sector = self.geometry.order() == NodeOrder::Locality;
        // unit (node or sector) → (reads, first node read from it)
        let mut reads: rustc_hash::FxHashMap<u64, (u32, u32)> = Default::default();
        let mut scratch = SearchScratch::<T>::default();
        let mut log = Vec::new();
        for query in queries.chunks_exact(self.dim().max(1)) {
            self.start_search(&mut scratch.search, query, CACHE_SAMPLE_PARAMS, None);
            log.clear();
            self.drive(&mut scratch, Some(&mut log))?;
            for &id in &log {
                let unit = if by_sector {
                    self.geometry.locate(id).sector
                } else {
                    id as u64
                };
                reads.entry(unit).or_insert((0, id)).0 += 1;
            }
        }
        let mut ranked: Vec<(u64, u32, u32)> = reads
            .into_iter()
            .map(|(unit, (count, id))| (unit, count, id))
            .collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(ranked.into_iter().map(|(_, _, id)| id).collect())
    }

    /// The nodes held in RAM.
    pub fn node_cache(&self) -> &NodeCache {
        &self.cache
    }

    /// Builds the navigation graph over `points` sampled nodes (replacing
    /// any previous one; none drops it, and searches start at the medoid).
    pub fn load_navigation(&mut self, points: NavPoints) -> Result<()> {
        let path = self.dir.join(INDEX_FILE);
        self.navigation = Navigation::load(
            &path,
            self.reader.as_ref(),
            &self.geometry,
            self.header.elem,
            self.header.metric,
            points,
        )?;
        Ok(())
    }

    /// The navigation graph, if one was built.
    pub fn navigation(&self) -> Option<&Navigation> {
        self.navigation.as_ref()
    }

    /// The segment's manifest (shard id, version, files), or `None` for a
    /// plain index.
    pub fn segment(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Whether searches use the other records of the sectors they read
    /// (the default): the sector mates of a version 2 index, and, in any
    /// packed layout, one read for the nodes of a round that share a
    /// sector. Off, every read serves its one node: for measuring what the
    /// layout gives.
    pub fn set_sector_mates(&mut self, on: bool) {
        self.sector_mates = on;
    }

    /// [`SectorGeometry::shared_reads`] for a round of a search, or each
    /// node its own read when sector mates are off. Every search driver
    /// calls it before its reads.
    pub fn shared_reads(&self, batch: &[u32], first: &mut Vec<usize>) {
        if self.sector_mates {
            self.geometry.shared_reads(batch, first);
        } else {
            first.clear();
            first.extend(0..batch.len());
        }
    }

    /// Filtered searches with at most `n` matches score them flat (see
    /// [`crate::search::choose_plan`]); for measuring the switch point.
    pub fn set_flat_max_matches(&mut self, n: u64) {
        self.flat_max_matches = n;
    }

    /// The switch point between the flat and the graph plans.
    pub fn flat_max_matches(&self) -> u64 {
        self.flat_max_matches
    }

    /// Keeps a copy of the PQ codes in the value order of each of `fields`
    /// (indexed filter fields), so that a filter on one of them (a keyword,
    /// a range, or an `$and` holding one) scores its matches as one
    /// contiguous run: [`Plan::Clustered`]. Replaces the copies held
    /// before; an empty list drops them. Costs `M + 4` bytes per entry (a
    /// point once per keyword it holds) and field (see
    /// [`crate::clustered`]). A field that is indexed but that no document
    /// of this segment holds gets no copy (another shard may hold it; a
    /// filter on it matches nothing here); a field that is not indexed is
    /// an error naming it.
    pub fn cluster_codes(&mut self, fields: &[String]) -> Result<()> {
        let mut copies = Vec::with_capacity(fields.len());
        for field in fields {
            let filters = self
                .documents
                .as_ref()
                .and_then(Documents::filters)
                .ok_or_else(|| FilterError::NotIndexed {
                    field: field.clone(),
                    indexed: "none: this index was built without --filter-fields".into(),
                })?;
            if filters.schema().get(field) == Some(crate::filter::FieldKind::Empty) {
                continue;
            }
            copies.push(ClusteredCodes::build(
                filters,
                field,
                &self.codes,
                self.pq.num_chunks(),
            )?);
        }
        self.clustered = copies;
        self.clustered_id = CLUSTERED_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Clustered runs longer than `n` entries are not scanned (see
    /// [`crate::search::choose_plan_clustered`]); for measuring the switch.
    pub fn set_clustered_max_entries(&mut self, n: usize) {
        self.clustered_max_entries = n;
    }

    /// The segment-local ids `filter` matches, and the shortest run of a
    /// clustered copy that holds them all (if any copy confines them).
    pub fn evaluate(&self, filter: &Filter) -> Result<Matches> {
        let docs = self
            .documents
            .as_ref()
            .ok_or_else(|| FilterError::NotIndexed {
                field: filter.fields().first().map_or("", |f| f).to_string(),
                indexed: "none: this index has no documents".into(),
            })?;
        let bitmap = docs.evaluate(filter)?;
        let run = docs.filters().and_then(|filters| {
            self.clustered
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.span(filters, filter).map(|s| (i, s)))
                .min_by_key(|(_, s)| (!s.exact, s.len()))
                .map(|(i, s)| (self.clustered_id, i, s))
        });
        Ok(Matches {
            docs: Arc::new(bitmap),
            run,
        })
    }

    /// Starts `search` for `query`, among `matches` only when given, with
    /// the plan for their count: what every driver (the blocking one here,
    /// the server's async one) calls before feeding it records.
    pub fn start_search<T: Element>(
        &self,
        search: &mut BeamSearch<T>,
        query: &[T],
        params: SearchParams,
        matches: Option<&Matches>,
    ) -> Plan {
        search.use_sector_mates(self.sector_mates.then_some(&self.geometry));
        let total = self.header.num_points;
        // A flat plan never walks the graph: no entries to look for.
        let walks = matches.is_none_or(|m| {
            matches!(
                choose_plan(m.docs.len(), total, params, self.flat_max_matches),
                Plan::Graph | Plan::FilteredGraph { .. }
            )
        });
        let mut entries = Vec::new();
        if let (Some(nav), true) = (&self.navigation, walks) {
            nav.entries(query, NAV_LIST, NAV_SEEDS, &mut entries);
        }
        if entries.is_empty() {
            entries.push(self.header.medoid as u32);
        }
        let entries = &entries[..];
        let Some(matches) = matches else {
            search.start(&self.pq, &self.codes, entries, query, params);
            return Plan::Graph;
        };
        let filter = matches.docs.clone();
        let run = matches
            .run
            .filter(|&(id, _, _)| id == self.clustered_id)
            .and_then(|(_, i, span)| Some((self.clustered.get(i)?, span)));
        match run {
            Some((copy, span)) => {
                let (codes, docs) = copy.run(span);
                search.start_clustered(
                    &self.pq,
                    &self.codes,
                    entries,
                    total,
                    query,
                    params,
                    filter,
                    self.flat_max_matches,
                    (codes, docs, span.exact),
                    self.clustered_max_entries,
                )
            }
            None => search.start_filtered(
                &self.pq,
                &self.codes,
                entries,
                total,
                query,
                params,
                filter,
                self.flat_max_matches,
            ),
        }
    }

    /// The segment's documents (user ids, payloads, filter index), if any.
    pub fn documents(&self) -> Option<&Documents> {
        self.documents.as_ref()
    }

    /// Attaches the documents the segment layer opened.
    pub(crate) fn set_documents(&mut self, documents: Option<Documents>) {
        self.documents = documents;
    }

    /// Attaches the manifest the segment layer checked before opening.
    pub(crate) fn set_manifest(&mut self, manifest: Option<Manifest>) {
        self.manifest = manifest;
    }

    /// The directory whose files are open (the segment, for a shard directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }
    pub fn len(&self) -> usize {
        self.header.num_points as usize
    }
    pub fn is_empty(&self) -> bool {
        self.header.num_points == 0
    }
    pub fn dim(&self) -> usize {
        self.header.dim as usize
    }
    pub fn metric(&self) -> Metric {
        self.header.metric
    }
    pub fn elem(&self) -> ElemType {
        self.header.elem
    }
    pub fn io_backend(&self) -> &'static str {
        self.reader.name()
    }
    pub fn geometry(&self) -> &SectorGeometry {
        &self.geometry
    }
    pub fn pq(&self) -> &PqCodebook {
        &self.pq
    }
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// Bytes of RAM the PQ codes and codebook take.
    pub fn pq_memory_bytes(&self) -> usize {
        self.codes.len() + 4 * (self.pq.pivots.len() + self.pq.center.len())
    }

    /// Bytes of RAM the index holds: PQ codes and codebook, node cache,
    /// global ids, documents' ids, block table and filter index.
    pub fn memory_bytes(&self) -> usize {
        self.pq_memory_bytes()
            + self.geometry.memory_bytes()
            + self.cache.memory_bytes()
            + self.navigation.as_ref().map_or(0, Navigation::memory_bytes)
            + self.global_ids.as_ref().map_or(0, |g| 4 * g.len())
            + self.documents.as_ref().map_or(0, Documents::memory_bytes)
            + self
                .clustered
                .iter()
                .map(ClusteredCodes::memory_bytes)
                .sum::<usize>()
    }

    /// Checks a query's length and type against the index.
    pub fn check_query<T: Element>(&self, what: &str, query: &[T]) -> Result<()> {
        if T::TYPE != self.header.elem {
            return Err(Error::ElementMismatch {
                what: what.to_string(),
                expected: self.header.elem.name(),
                got: T::TYPE.name(),
            });
        }
        if query.len() != self.dim() {
            return Err(Error::DimensionMismatch {
                what: what.to_string(),
                expected: self.dim(),
                got: query.len(),
            });
        }
        Ok(())
    }

    /// Rewrites hits from this index's node ids to the ids of the whole data
    /// set (for a shard of a sharded index; a no-op otherwise). Every search
    /// driver calls it on its final hits.
    pub fn map_to_global(&self, hits: &mut [Hit]) {
        if let Some(ids) = &self.global_ids {
            for h in hits {
                h.id = ids.get(h.id as usize).copied().unwrap_or(h.id);
            }
        }
    }

    /// Visits the nodes of `batch` that the node cache holds, in batch
    /// order, and removes them from `batch`, which keeps the nodes still to
    /// be read. Every search driver (this crate's blocking one, the
    /// server's async one) calls this between `next_batch` and its reads.
    pub fn visit_cached<T: Element>(
        &self,
        search: &mut BeamSearch<T>,
        batch: &mut Vec<u32>,
    ) -> Result<()> {
        if self.cache.is_empty() {
            return Ok(());
        }
        let m = self.pq.num_chunks();
        let mut first_err = None;
        batch.retain(|&id| match self.cache.lookup(id) {
            Some((rec, sector)) if first_err.is_none() => {
                search.stats.cache_hits += 1;
                if let Err(e) = search.visit(id, &rec, self.codes(), m) {
                    first_err = Some(e);
                }
                if let Some(sector) = sector {
                    search.take_mates(id, sector, self.codes());
                }
                false
            }
            _ => true,
        });
        first_err.map_or(Ok(()), Err)
    }

    /// Searches synchronously: each round's W reads go to the reader together.
    pub fn search<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        query: &[T],
        params: SearchParams,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        params.validate()?;
        self.check_query("query", query)?;
        if self.is_empty() {
            return Ok((Vec::new(), SearchStats::default()));
        }
        self.start_search(&mut scratch.search, query, params, None);
        let (mut hits, stats) = self.drive(scratch, None)?;
        self.map_to_global(&mut hits);
        Ok((hits, stats))
    }

    /// Searches among the nodes of `filter` only (segment-local ids), with
    /// the plan [`crate::search::choose_plan`] picks for its match count.
    /// Non-matching nodes never count toward k. Hits carry global ids, as
    /// [`Self::search`]'s do.
    pub fn search_filtered<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        query: &[T],
        params: SearchParams,
        filter: Arc<RoaringBitmap>,
    ) -> Result<(Vec<Hit>, SearchStats, Plan)> {
        let matches = Matches::new(filter);
        let (mut hits, stats, plan) = self.search_local(scratch, query, params, Some(&matches))?;
        self.map_to_global(&mut hits);
        Ok((hits, stats, plan))
    }

    /// The search itself, optionally filtered, with hits as segment-local
    /// ids: what a caller that fetches documents (keys, payloads) needs.
    pub fn search_local<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        query: &[T],
        params: SearchParams,
        matches: Option<&Matches>,
    ) -> Result<(Vec<Hit>, SearchStats, Plan)> {
        params.validate()?;
        self.check_query("query", query)?;
        if self.is_empty() {
            return Ok((Vec::new(), SearchStats::default(), Plan::Empty));
        }
        let plan = self.start_search(&mut scratch.search, query, params, matches);
        let (hits, stats) = self.drive(scratch, None)?;
        Ok((hits, stats, plan))
    }

    /// The blocking driver: reads what the search asks for, round by
    /// round, until it is done. Hits are segment-local.
    /// `log`, when given, receives the id of every node read.
    fn drive<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        mut log: Option<&mut Vec<u32>>,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        let node_bytes = self.geometry.node_read_bytes();
        let m = self.pq.num_chunks();
        let s = &mut scratch.search;
        let path = self.dir.join(INDEX_FILE);
        loop {
            let mut batch: Vec<u32> = s.next_batch(self.codes())?.to_vec();
            if batch.is_empty() {
                break;
            }
            self.visit_cached(s, &mut batch)?;
            if batch.is_empty() {
                continue;
            }
            // A flat plan asks for all its nodes at once: one buffer each.
            while scratch.buffers.len() < batch.len() {
                scratch.buffers.push(AlignedBuf::new(node_bytes));
            }
            // Nodes of one sector are read once, into the first one's buffer.
            let first = &mut scratch.first;
            self.shared_reads(&batch, first);
            let mut reqs: Vec<SectorRequest<'_>> = batch
                .iter()
                .zip(scratch.buffers.iter_mut())
                .enumerate()
                .filter(|&(i, _)| first[i] == i)
                .map(|(_, (&id, buf))| {
                    let loc = self.geometry.locate(id);
                    SectorRequest {
                        sector: loc.sector,
                        buf: &mut buf.as_mut_slice()[..loc.sectors * SECTOR],
                    }
                })
                .collect();
            s.stats.ios += reqs
                .iter()
                .map(|r| (r.buf.len() / SECTOR) as u32)
                .sum::<u32>();
            self.reader
                .read(&mut reqs)
                .map_err(|e| Error::io(&path, e))?;
            drop(reqs);
            if let Some(log) = log.as_deref_mut() {
                let first = &scratch.first;
                log.extend(
                    batch
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| first[i] == i)
                        .map(|(_, &id)| id),
                );
            }
            for (i, &id) in batch.iter().enumerate() {
                let buf = &scratch.buffers[scratch.first[i]];
                if scratch.first[i] != i {
                    s.stats.sector_mates += 1;
                }
                let rec = self
                    .geometry
                    .decode(id, buf.as_slice())
                    .map_err(|e| Error::format(&path, e))?;
                s.visit(id, &rec, self.codes(), m)?;
                s.take_mates(id, buf.as_slice(), self.codes());
            }
        }
        Ok((s.finish(), s.stats))
    }
}

/// Per-thread memory for [`DiskIndex::search`]: reuse it across queries.
pub struct SearchScratch<T: Element> {
    search: BeamSearch<T>,
    buffers: Vec<AlignedBuf>,
    /// Per batch entry, the entry whose read it shares
    /// ([`SectorGeometry::shared_reads`]).
    first: Vec<usize>,
}

impl<T: Element> Default for SearchScratch<T> {
    fn default() -> Self {
        SearchScratch {
            search: BeamSearch::new(),
            buffers: Vec::new(),
            first: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};
    use rand::{Rng, SeedableRng};

    /// `n` sift-like points (seed `seed`) built into a temporary index with
    /// R=32, L=64 and 16-byte codes, and 20 queries: (base, queries, dir).
    fn small_u8_index(n: usize, dim: usize, seed: u64) -> (Vec<u8>, Vec<u8>, tempfile::TempDir) {
        let base = generate_u8(n, seed, Stream::Base);
        let queries = generate_u8(20, seed, Stream::Query);
        let dir = tempfile::tempdir().unwrap();
        let params = BuildParams {
            metric: Metric::L2,
            vamana: VamanaParams {
                max_degree: 32,
                build_list: 64,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: 16,
                ..PqParams::default()
            },
            order: NodeOrder::Locality,
        };
        build_index(Vectors::new(&base, dim), &params, dir.path(), &NoProgress).unwrap();
        (base, queries, dir)
    }

    /// The same graph in both layouts: v2 read node by node answers exactly
    /// as v1 (same hits, same reads); with its sector mates it reads fewer
    /// sectors for the same list size and still equals brute force when
    /// the list is long.
    #[test]
    fn v2_layout_answers_as_v1_node_by_node_and_reads_less_with_mates() {
        let (n, dim) = (4000, 128);
        let (base, queries, v2_dir) = small_u8_index(n, dim, 11);
        let v1_dir = tempfile::tempdir().unwrap();
        let src = DiskIndex::open(v2_dir.path(), OpenOptions::buffered()).unwrap();
        let r = relayout(&src, v1_dir.path(), NodeOrder::Identity, &NoProgress).unwrap();
        assert_eq!(r.order, NodeOrder::Identity);
        // Never into a directory that holds files already.
        let again = relayout(&src, v1_dir.path(), NodeOrder::Identity, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(again.contains("is not empty"), "{again}");
        let mut v1 = DiskIndex::open(v1_dir.path(), OpenOptions::buffered()).unwrap();
        let mut v2 = DiskIndex::open(v2_dir.path(), OpenOptions::buffered()).unwrap();
        assert_eq!(v2.header().order, NodeOrder::Locality);
        assert!(v2.geometry().memory_bytes() == 4 * n);
        let mut scratch = SearchScratch::<u8>::default();
        let q = Vectors::new(&queries, dim);
        let params = SearchParams {
            k: 10,
            list: 30,
            beam: 4,
        };
        let (mut ios_v1, mut ios_v2, mut mates) = (0, 0, 0);
        for i in 0..q.len() {
            // Node by node, in both layouts: not even a round's nodes that
            // share a sector share its read.
            v1.set_sector_mates(false);
            let (a, sa) = v1.search(&mut scratch, q.row(i), params).unwrap();
            v2.set_sector_mates(false);
            let (b, sb) = v2.search(&mut scratch, q.row(i), params).unwrap();
            assert_eq!(a, b, "query {i}");
            assert_eq!(
                (sa.ios, sa.hops, sa.visited_nodes),
                (sb.ios, sb.hops, sb.visited_nodes)
            );
            v2.set_sector_mates(true);
            let (_, sc) = v2.search(&mut scratch, q.row(i), params).unwrap();
            // v1 as searched by default: one read per sector of a round.
            v1.set_sector_mates(true);
            let (a_shared, sa) = v1.search(&mut scratch, q.row(i), params).unwrap();
            assert_eq!(a, a_shared, "query {i}: sharing a read changes no hit");
            assert!(sa.ios <= sb.ios);
            ios_v1 += sa.ios;
            ios_v2 += sc.ios;
            mates += sc.sector_mates;
        }
        assert!(mates > 0, "no sector mate was used");
        assert!(ios_v2 < ios_v1, "v2 read {ios_v2} sectors, v1 {ios_v1}");
        let data = Vectors::new(&base, dim);
        let long = SearchParams {
            k: 10,
            list: 400,
            beam: 8,
        };
        for i in 0..q.len() {
            let (hits, _) = v2.search(&mut scratch, q.row(i), long).unwrap();
            let mut exact: Vec<(f32, u32)> = (0..n)
                .map(|j| (Metric::L2.distance(q.row(i), data.row(j)), j as u32))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let want: Vec<u32> = exact.iter().take(10).map(|e| e.1).collect();
            let got: Vec<u32> = hits.iter().map(|h| h.id).collect();
            assert_eq!(got, want, "query {i}");
        }
        // Writing over the source is refused.
        let e = relayout(&src, v2_dir.path(), NodeOrder::Locality, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overwrite its source"), "{e}");
    }

    /// A damaged v2 slot table or a record that is not the node its slot
    /// says is refused, naming the file.
    #[test]
    fn v2_damage_is_refused() {
        let (base, _, dir) = small_u8_index(1500, 128, 5);
        let path = dir.path().join(INDEX_FILE);
        let good = std::fs::read(&path).unwrap();
        let header = IndexHeader::parse(&good, good.len() as u64).unwrap();
        let table = header.num_sectors() as usize * SECTOR;
        // The medoid's slot and another node's swapped in the table, its
        // checksum recomputed: a search from the medoid reads a record that
        // is not the medoid's.
        let mut bad = good.clone();
        let n = header.num_points as usize;
        let medoid = header.medoid as usize;
        let other = (medoid + n / 2) % n;
        let (a, b) = (table + 4 * medoid, table + 4 * other);
        bad[a..a + 4].copy_from_slice(&good[b..b + 4]);
        bad[b..b + 4].copy_from_slice(&good[a..a + 4]);
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[table..table + 4 * n]);
        bad[table + 4 * n..table + 4 * n + 8].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let opts = OpenOptions {
            nav_points: NavPoints::NONE,
            ..OpenOptions::buffered()
        };
        let idx = DiskIndex::open(dir.path(), opts).unwrap();
        let mut scratch = SearchScratch::<u8>::default();
        let params = SearchParams {
            k: 10,
            list: 20,
            beam: 4,
        };
        let e = idx
            .search(&mut scratch, &base[..128], params)
            .expect_err("reading the medoid must fail");
        assert!(
            e.to_string().contains("holds the record of node")
                && e.to_string().contains(INDEX_FILE),
            "{e}"
        );
        let table_slot = |i: usize| table + 4 * i;
        // A slot taken twice.
        bad[table_slot(0)..table_slot(0) + 4]
            .copy_from_slice(&good[table_slot(2)..table_slot(2) + 4]);
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[table..table + 4 * n]);
        bad[table + 4 * n..table + 4 * n + 8].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let e = DiskIndex::open(dir.path(), OpenOptions::buffered())
            .unwrap_err()
            .to_string();
        assert!(e.contains("taken twice") && e.contains(INDEX_FILE), "{e}");
    }

    /// Filtered search equals brute force among the matching points, for
    /// every plan the planner can choose, and never returns a non-match.
    #[test]
    fn filtered_search_equals_brute_force_for_every_plan() {
        let (n, dim) = (3000, 128);
        let (base, queries, dir) = small_u8_index(n, dim, 7);
        let data = Vectors::new(&base, dim);
        let mut index = DiskIndex::open(dir.path(), OpenOptions::buffered()).unwrap();
        // Small enough that a 3,000-point index reaches every plan.
        index.set_flat_max_matches(150);
        let mut scratch = SearchScratch::<u8>::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // A list long enough to make every plan exact here: the point is
        // that plans return the right points, not how fast.
        let search = SearchParams {
            k: 10,
            list: 1000,
            beam: 8,
        };
        // Selectivities chosen to land on each plan for 3000 points.
        for (share, want) in [
            (0.0, "empty"),
            (0.01, "flat"),
            (0.04, "flat"),
            (0.08, "filtered_graph"),
            (0.3, "filtered_graph"),
            (0.7, "filtered_graph"),
            (1.0, "graph"),
        ] {
            let filter: RoaringBitmap = (0..n as u32)
                .filter(|_| rng.random::<f64>() < share)
                .collect();
            let filter = Arc::new(filter);
            let mut found = 0usize;
            let mut wanted = 0usize;
            for q in queries.chunks_exact(dim) {
                let (hits, _, plan) = index
                    .search_filtered(&mut scratch, q, search, filter.clone())
                    .unwrap();
                let name = serde_json::to_value(plan).unwrap()["plan"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert_eq!(name, want, "share {share}: {plan:?}");
                assert!(
                    hits.iter().all(|h| filter.contains(h.id)),
                    "a non-match returned"
                );
                let mut truth: Vec<(f32, u32)> = filter
                    .iter()
                    .map(|id| (Metric::L2.distance(q, data.row(id as usize)), id))
                    .collect();
                truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                truth.truncate(10);
                assert_eq!(hits.len(), truth.len(), "share {share}: fewer than k hits");
                wanted += truth.len();
                found += hits
                    .iter()
                    .filter(|h| truth.iter().any(|t| t.1 == h.id))
                    .count();
            }
            let recall = if wanted == 0 {
                1.0
            } else {
                found as f64 / wanted as f64
            };
            assert!(recall >= 0.99, "share {share} ({want}): recall {recall}");
        }
    }

    /// Searches that start from the navigation graph's entries return the
    /// brute-force nearest at a long list, as searches from the medoid do.
    #[test]
    fn search_from_navigation_entries_equals_brute_force() {
        let (n, dim) = (3000, 128);
        let (base, queries, dir) = small_u8_index(n, dim, 9);
        let data = Vectors::new(&base, dim);
        let opts = OpenOptions {
            nav_points: NavPoints::Count(300),
            ..OpenOptions::buffered()
        };
        let index = DiskIndex::open(dir.path(), opts).unwrap();
        assert_eq!(index.navigation().map(|n| n.len()), Some(300));
        let plain = DiskIndex::open(dir.path(), OpenOptions::buffered()).unwrap();
        assert!(index.memory_bytes() > plain.memory_bytes() + 300 * dim);
        let mut scratch = SearchScratch::<u8>::default();
        let search = SearchParams {
            k: 10,
            list: 400,
            beam: 4,
        };
        for q in queries.chunks_exact(dim) {
            let (hits, _) = index.search(&mut scratch, q, search).unwrap();
            let mut truth: Vec<(f32, u32)> = (0..n as u32)
                .map(|id| (Metric::L2.distance(q, data.row(id as usize)), id))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            // Distances, not ids: u8 distances tie.
            let got: Vec<f32> = hits.iter().map(|h| h.distance).collect();
            let want: Vec<f32> = truth.iter().take(10).map(|t| t.0).collect();
            assert_eq!(got, want);
        }
    }
}
