//! A sharded index: one complete index per shard plus a manifest.
//!
//! ```text
//!  OUT/
//!    cluster.json      ClusterManifest: shards, sizes, partition centroids
//!    shard-0/          disk.index, pq.bin, build.json, ids.bin (global ids)
//!    shard-1/ …
//! ```
//!
//! Each shard keeps the global id of every node in `ids.bin`, so its hits
//! can be merged with other shards' by distance without translation.

use std::path::{Path, PathBuf};

use crate::data::{ElemType, Vectors};
use crate::error::{Error, Result};
use crate::index::{BuildParams, DiskIndex, OpenOptions, SearchScratch};
use crate::layout;
use crate::metric::{Element, Metric};
use crate::partition::{Partition, PartitionKind};
use crate::progress::Progress;
use crate::search::{Hit, SearchParams, SearchStats};

pub const CLUSTER_FILE: &str = "cluster.json";
pub const IDS_FILE: &str = "ids.bin";
const FORMAT: &str = "shardann-cluster";

/// `cluster.json`. Spec: `format-spec/cluster.md`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterManifest {
    pub format: String,
    pub version: u32,
    pub metric: Metric,
    pub elem: ElemType,
    pub dim: usize,
    pub num_points: usize,
    pub partition: PartitionKind,
    pub shards: Vec<ShardInfo>,
    /// One centroid per shard (k-means partitions; empty for random).
    pub centroids: Vec<Vec<f32>>,
}

/// One shard of a [`ClusterManifest`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardInfo {
    pub id: u32,
    /// Directory of the shard's index, relative to the manifest.
    pub dir: String,
    pub num_points: usize,
}

impl ClusterManifest {
    /// The `probe` shards whose partition centroids are nearest `query`
    /// (L2), nearest first; every shard when the partition has no centroids
    /// (random) or `probe` covers them all.
    pub fn route<T: Element>(&self, query: &[T], probe: usize) -> Vec<usize> {
        let n = self.shards.len();
        if probe >= n || self.centroids.len() != n {
            return (0..n).collect();
        }
        let q: Vec<f32> = query.iter().map(|x| x.to_f32()).collect();
        let mut by_dist: Vec<(f32, usize)> = self
            .centroids
            .iter()
            .enumerate()
            .map(|(s, c)| (crate::metric::l2sq_f32(&q, c), s))
            .collect();
        by_dist.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        by_dist
            .into_iter()
            .take(probe.max(1))
            .map(|x| x.1)
            .collect()
    }

    /// The manifest of `dir`: its `cluster.json`, or, for a plain
    /// (unsharded) index directory, a one-shard manifest describing it, so
    /// code that serves shards serves a single index the same way.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        if dir.join(CLUSTER_FILE).exists() || !dir.join(crate::index::INDEX_FILE).exists() {
            return read_manifest(dir);
        }
        let index = DiskIndex::open(dir, OpenOptions::buffered())?;
        Ok(ClusterManifest {
            format: FORMAT.into(),
            version: 1,
            metric: index.metric(),
            elem: index.elem(),
            dim: index.dim(),
            num_points: index.len(),
            partition: PartitionKind::Random,
            shards: vec![ShardInfo {
                id: 0,
                dir: ".".into(),
                num_points: index.len(),
            }],
            centroids: Vec::new(),
        })
    }

    /// Opens shard `id` of the manifest found in `dir`, checking it agrees
    /// with the manifest on size, dimension and metric.
    pub fn open_shard(&self, dir: &Path, id: usize, opts: OpenOptions) -> Result<DiskIndex> {
        let s = self.shards.get(id).ok_or_else(|| {
            Error::InvalidParameter(format!(
                "{}: no shard {id}; the cluster has {} shard(s)",
                dir.display(),
                self.shards.len()
            ))
        })?;
        let path: PathBuf = dir.join(&s.dir);
        let idx = DiskIndex::open(&path, opts)?;
        if idx.len() != s.num_points || idx.dim() != self.dim || idx.metric() != self.metric {
            return Err(Error::InvalidParameter(format!(
                "{}: shard has {} points of dimension {} ({}); {} says {} of dimension {} ({})",
                path.display(),
                idx.len(),
                idx.dim(),
                idx.metric(),
                CLUSTER_FILE,
                s.num_points,
                self.dim,
                self.metric
            )));
        }
        Ok(idx)
    }
}

/// Partitions `data` and builds one index per shard under `out`.
pub fn build_sharded<T: Element>(
    data: Vectors<'_, T>,
    params: &BuildParams,
    shards: usize,
    kind: PartitionKind,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ClusterManifest> {
    let part = Partition::compute(data, shards, kind, params.vamana.seed)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut infos = Vec::with_capacity(shards);
    for s in 0..shards {
        let members = part.members(s);
        let mut rows: Vec<T> = Vec::with_capacity(members.len() * data.dim());
        for &g in &members {
            rows.extend_from_slice(data.row(g as usize));
        }
        let dir_name = format!("shard-{s}");
        let dir = out.join(&dir_name);
        crate::segment::build_version(
            Vectors::new(&rows, data.dim()),
            params,
            &dir,
            s as u32,
            progress,
            |seg| layout::write_ids(&seg.join(IDS_FILE), &members).map(|_| ()),
        )?;
        infos.push(ShardInfo {
            id: s as u32,
            dir: dir_name,
            num_points: members.len(),
        });
    }
    let manifest = ClusterManifest {
        format: FORMAT.into(),
        version: 1,
        metric: params.metric,
        elem: T::TYPE,
        dim: data.dim(),
        num_points: data.len(),
        partition: kind,
        shards: infos,
        centroids: part
            .centroids
            .chunks_exact(data.dim())
            .map(<[f32]>::to_vec)
            .collect(),
    };
    let path = out.join(CLUSTER_FILE);
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::InvalidParameter(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    Ok(manifest)
}

/// Reads `cluster.json`, checking what it says against itself.
pub fn read_manifest(dir: &Path) -> Result<ClusterManifest> {
    let path = dir.join(CLUSTER_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let bad = |why: String| Error::InvalidParameter(format!("{}: {why}", path.display()));
    let m: ClusterManifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a cluster manifest: {e}")))?;
    if m.format != FORMAT || m.version != 1 {
        return Err(bad(format!(
            "format {:?} version {} is not {FORMAT} version 1",
            m.format, m.version
        )));
    }
    let total: usize = m.shards.iter().map(|s| s.num_points).sum();
    if total != m.num_points {
        return Err(bad(format!(
            "shards hold {total} points, the manifest says {}",
            m.num_points
        )));
    }
    if m.shards
        .iter()
        .any(|s| s.dir.contains('/') || s.dir.contains(".."))
    {
        return Err(bad(
            "a shard directory must be a plain name inside the cluster directory".into(),
        ));
    }
    Ok(m)
}

/// All shards of a sharded index, opened for search in one process.
pub struct ShardedIndex {
    pub manifest: ClusterManifest,
    shards: Vec<DiskIndex>,
}

impl ShardedIndex {
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let shards = (0..manifest.shards.len())
            .map(|s| manifest.open_shard(dir, s, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(ShardedIndex { manifest, shards })
    }

    pub fn shards(&self) -> &[DiskIndex] {
        &self.shards
    }

    /// Searches every shard and merges their top-k by distance.
    pub fn search<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        query: &[T],
        params: SearchParams,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        self.search_probing(scratch, query, params, self.shards.len())
    }

    /// The `probe` shards nearest `query`; see [`ClusterManifest::route`].
    pub fn route<T: Element>(&self, query: &[T], probe: usize) -> Vec<usize> {
        self.manifest.route(query, probe)
    }

    /// Searches only the `probe` shards nearest the query (see [`Self::route`])
    /// and merges their top-k by distance.
    pub fn search_probing<T: Element>(
        &self,
        scratch: &mut SearchScratch<T>,
        query: &[T],
        params: SearchParams,
        probe: usize,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        let mut all = Vec::with_capacity(params.k * self.shards.len());
        let mut total = SearchStats::default();
        for shard in self
            .route(query, probe)
            .into_iter()
            .filter_map(|s| self.shards.get(s))
        {
            let (hits, st) = shard.search(scratch, query, params)?;
            all.extend(hits);
            total.ios += st.ios;
            total.hops += st.hops;
            total.visited_nodes += st.visited_nodes;
            total.cache_hits += st.cache_hits;
            total.pq_distances += st.pq_distances;
        }
        Ok((merge_top_k(all, params.k), total))
    }
}

/// The `k` nearest of several shards' hits (ties: smaller id first).
pub fn merge_top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    crate::search::sort_hits(&mut hits);
    hits.truncate(k);
    hits
}
