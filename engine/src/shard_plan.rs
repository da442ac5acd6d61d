//! A sharded build cut in two: a plan (the partition), then one build per
//! shard that any machine can run on its own, in any order.
//!
//! ```text
//!  OUT/
//!    cluster.json         the cluster's manifest (crate::cluster), written by the plan
//!    plan.json            PlanFile: the build parameters and a fingerprint of the base
//!    plan/shard-0.ids     the global ids of shard 0's points (ids.bin format)
//!    plan/shard-1.ids …
//!    shard-0/             written by `build_shard(0)`: CURRENT + v0000000001/ …
//! ```
//!
//! Why: the builds of the shards of a large index are independent and each
//! takes hours, so they belong on N machines at once (a Kubernetes indexed
//! job, a Slurm array). What they must share is decided once, in the plan:
//! which points each shard holds and the parameters every shard is built
//! with. A shard build reads its id list and the base file, and writes only
//! its own shard directory. `build --shards N` is the plan followed by the N
//! shard builds in one process, so both paths leave the same directory.
//! Spec: `format-spec/cluster.md`.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::cluster::{ClusterManifest, ShardInfo};
use crate::data::{VectorFile, Vectors};
use crate::docs::{Documents, Ingested};
use crate::element::ElemType;
use crate::error::{Error, PlanError, Result};
use crate::index::{BuildParams, BuildReport};
use crate::layout::{self, NodeOrder, CLUSTER_FILE, IDS_FILE};
use crate::metric::{Element, Metric};
use crate::partition::{Partition, PartitionKind};
use crate::pq::PqParams;
use crate::progress::Progress;
use crate::vamana::VamanaParams;

/// The plan's manifest, beside `cluster.json`.
pub const PLAN_FILE: &str = "plan.json";
/// The folder of the shards' id lists.
pub const PLAN_DIR: &str = "plan";

const FORMAT: &str = "shardann-plan";
const FORMAT_VERSION: u32 = 1;

/// Rows of the base hashed into its fingerprint, evenly spaced.
const FINGERPRINT_ROWS: usize = 1024;

/// `plan.json`: what every shard build must agree on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanFile {
    pub format: String,
    pub version: u32,
    pub base: BaseFingerprint,
    pub metric: Metric,
    pub vamana: VamanaParams,
    pub pq: PqParams,
    pub order: NodeOrder,
}

/// Enough of the base vectors to tell a shard build that it was given
/// another file than the one the plan partitioned: its shape and a hash of
/// [`FINGERPRINT_ROWS`] rows spread over it (a full hash would read a
/// billion-point file once more per shard).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseFingerprint {
    pub points: usize,
    pub dim: usize,
    pub elem: ElemType,
    /// XXH3-64 of the sampled rows' bytes, 16 lower-case hex digits.
    pub rows_xxh3: String,
}

impl BaseFingerprint {
    pub fn of<T: Element>(data: Vectors<'_, T>) -> Self {
        let n = data.len();
        let mut h = Xxh3::new();
        for row in sampled_rows(n) {
            h.update(bytemuck::cast_slice(data.row(row)));
        }
        BaseFingerprint {
            points: n,
            dim: data.dim(),
            elem: T::TYPE,
            rows_xxh3: format!("{:016x}", h.digest()),
        }
    }
}

/// Rows `⌊i·n / k⌋` for `i in 0..k`, `k = min(n, FINGERPRINT_ROWS)`.
fn sampled_rows(n: usize) -> impl Iterator<Item = usize> {
    let k = n.min(FINGERPRINT_ROWS);
    (0..k).map(move |i| (i as u128 * n as u128 / k as u128) as usize)
}

/// Path of shard `shard`'s id list in the plan of `dir`.
pub fn ids_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(PLAN_DIR).join(format!("shard-{shard}.ids"))
}

/// Partitions `data` into `shards` shards and writes the plan into `out`:
/// each shard's id list, `plan.json`, then `cluster.json` (last, so a plan
/// interrupted before the end is not mistaken for a whole one). No shard is
/// built. Returns the cluster manifest.
pub fn plan<T: Element>(
    data: Vectors<'_, T>,
    params: &BuildParams,
    shards: usize,
    kind: PartitionKind,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ClusterManifest> {
    params.vamana.validate()?;
    let part = Partition::compute(data, shards, kind, params.vamana.seed, progress)?;
    let plan_dir = out.join(PLAN_DIR);
    std::fs::create_dir_all(&plan_dir).map_err(|e| Error::io(&plan_dir, e))?;
    let mut infos = Vec::with_capacity(shards);
    for (s, members) in part.all_members().into_iter().enumerate() {
        layout::write_ids(&ids_path(out, s), &members)?;
        infos.push(ShardInfo {
            id: s as u32,
            dir: format!("shard-{s}"),
            num_points: members.len(),
        });
    }
    let file = PlanFile {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        base: BaseFingerprint::of(data),
        metric: params.metric,
        vamana: params.vamana,
        pq: params.pq,
        order: params.order,
    };
    let path = out.join(PLAN_FILE);
    let json =
        serde_json::to_vec_pretty(&file).map_err(|e| Error::plan(&path, PlanError::Json(e)))?;
    crate::fs::write_atomic(&path, &json)?;
    let manifest = ClusterManifest {
        format: crate::cluster::FORMAT.into(),
        version: crate::cluster::FORMAT_VERSION,
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
    manifest.write(out)?;
    Ok(manifest)
}

/// A plan read back: what a shard build needs.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    dir: PathBuf,
    file: PlanFile,
    manifest: ClusterManifest,
}

impl ShardPlan {
    /// Reads the plan in `dir` (what [`plan`] wrote).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = crate::cluster::read_manifest(dir)?;
        let path = dir.join(PLAN_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::plan(&path, PlanError::Missing))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let file: PlanFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::plan(&path, PlanError::Json(e)))?;
        if file.format != FORMAT || file.version != FORMAT_VERSION {
            return Err(Error::plan(
                &path,
                PlanError::WrongFormat {
                    format: file.format,
                    version: file.version,
                },
            ));
        }
        let b = &file.base;
        if (b.points, b.dim, b.elem, file.metric)
            != (
                manifest.num_points,
                manifest.dim,
                manifest.elem,
                manifest.metric,
            )
        {
            return Err(Error::plan(
                &path,
                PlanError::ManifestMismatch {
                    plan: describe(b.points, b.dim, b.elem, file.metric),
                    manifest: describe(
                        manifest.num_points,
                        manifest.dim,
                        manifest.elem,
                        manifest.metric,
                    ),
                },
            ));
        }
        Ok(ShardPlan {
            dir: dir.to_path_buf(),
            file,
            manifest,
        })
    }

    /// The parameters every shard is built with.
    pub fn params(&self) -> BuildParams {
        BuildParams {
            metric: self.file.metric,
            vamana: self.file.vamana,
            pq: self.file.pq,
            order: self.file.order,
        }
    }

    pub fn manifest(&self) -> &ClusterManifest {
        &self.manifest
    }

    pub fn file(&self) -> &PlanFile {
        &self.file
    }

    /// Refuses base vectors other than those the plan partitioned.
    pub fn check_base<T: Element>(&self, data: Vectors<'_, T>) -> Result<()> {
        let want = &self.file.base;
        let path = self.dir.join(PLAN_FILE);
        let mismatch = |what, plan: String, given: String| {
            Err(Error::plan(
                &path,
                PlanError::BaseMismatch { what, plan, given },
            ))
        };
        if (data.len(), data.dim(), T::TYPE) != (want.points, want.dim, want.elem) {
            return mismatch(
                "shape",
                format!("{} × {} {}", want.points, want.dim, want.elem),
                format!("{} × {} {}", data.len(), data.dim(), T::TYPE),
            );
        }
        let got = BaseFingerprint::of(data);
        if got.rows_xxh3 != want.rows_xxh3 {
            return mismatch("sampled rows' hash", want.rows_xxh3.clone(), got.rows_xxh3);
        }
        Ok(())
    }

    /// Builds the next version of shard `shard` under the plan's directory
    /// from `data` (the base the plan was made from; checked): its points
    /// in global id order, with their global ids in `ids.bin` and, given
    /// `documents` (row i = document i of the base), their documents.
    pub fn build_shard<T: Element>(
        &self,
        data: Vectors<'_, T>,
        shard: usize,
        progress: &dyn Progress,
        documents: Option<&Ingested>,
    ) -> Result<(BuildReport, u64)> {
        self.check_base(data)?;
        let members = self.members(shard, data.len())?;
        let mut rows: Vec<T> = Vec::with_capacity(members.len() * data.dim());
        for &g in &members {
            rows.extend_from_slice(data.row(g as usize));
        }
        self.build_rows(
            Vectors::new(&rows, data.dim()),
            shard,
            &members,
            progress,
            documents,
        )
    }

    /// [`build_shard`](Self::build_shard) from the base file itself, which
    /// copies the shard's rows without keeping the rest of the base
    /// resident ([`VectorFile::gather`]): what a shard build on its own
    /// machine should use.
    pub fn build_shard_from_file<T: Element>(
        &self,
        base: &VectorFile,
        shard: usize,
        progress: &dyn Progress,
        documents: Option<&Ingested>,
    ) -> Result<(BuildReport, u64)> {
        self.check_base(base.vectors::<T>()?)?;
        let members = self.members(shard, base.len())?;
        let rows = base.gather::<T>(&members)?;
        self.build_rows(
            Vectors::new(&rows, base.dim()),
            shard,
            &members,
            progress,
            documents,
        )
    }

    /// Shard `shard`'s global ids, checked against the manifest and a base
    /// of `points` points.
    fn members(&self, shard: usize, points: usize) -> Result<Vec<u32>> {
        let shards = self.manifest.shards.len();
        let Some(info) = self.manifest.shards.get(shard) else {
            return Err(Error::plan(
                self.dir.join(PLAN_FILE),
                PlanError::NoShard { shard, shards },
            ));
        };
        let ids = ids_path(&self.dir, shard);
        let members = layout::read_ids(&ids)?;
        if members.len() != info.num_points {
            return Err(Error::plan(
                &ids,
                PlanError::ShardSize {
                    shard,
                    count: members.len(),
                    want: info.num_points,
                },
            ));
        }
        if let Some(&bad) = members.iter().find(|&&g| g as usize >= points) {
            return Err(Error::plan(
                &ids,
                PlanError::IdOutOfRange { id: bad, points },
            ));
        }
        Ok(members)
    }

    /// Builds shard `shard` from its rows (`members` order).
    fn build_rows<T: Element>(
        &self,
        rows: Vectors<'_, T>,
        shard: usize,
        members: &[u32],
        progress: &dyn Progress,
        documents: Option<&Ingested>,
    ) -> Result<(BuildReport, u64)> {
        let info = &self.manifest.shards[shard];
        crate::shard::build_version(
            rows,
            &self.params(),
            &self.dir.join(&info.dir),
            shard as u32,
            progress,
            |seg| {
                layout::write_ids(&seg.join(IDS_FILE), members)?;
                match documents {
                    Some(d) => Documents::install_subset(d, members, seg),
                    None => Ok(()),
                }
            },
        )
    }
}

fn describe(points: usize, dim: usize, elem: ElemType, metric: Metric) -> String {
    format!("{points} × {dim} {elem}, {}", metric.name())
}

/// Partitions `data` and builds one index per shard under `out` (the plan,
/// then every shard's build, in one process); with `documents` (what
/// `docs::ingest` read, row i = document i), each shard gets the documents
/// of its points.
pub fn build_sharded<T: Element>(
    data: Vectors<'_, T>,
    params: &BuildParams,
    shards: usize,
    kind: PartitionKind,
    out: &Path,
    progress: &dyn Progress,
    documents: Option<&Ingested>,
) -> Result<ClusterManifest> {
    plan(data, params, shards, kind, out, progress)?;
    let plan = ShardPlan::open(out)?;
    for s in 0..shards {
        plan.build_shard(data, s, progress, documents)?;
    }
    debug_assert!(out.join(CLUSTER_FILE).exists());
    Ok(plan.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};

    /// The dimension of `generate_u8`'s sift-like rows.
    const DIM: usize = 128;

    fn params(max_degree: usize, pq_bytes: usize) -> BuildParams {
        BuildParams {
            metric: Metric::L2,
            vamana: VamanaParams {
                max_degree,
                build_list: 2 * max_degree,
                ..VamanaParams::default()
            },
            pq: PqParams {
                num_chunks: pq_bytes,
                ..PqParams::default()
            },
            order: NodeOrder::Locality,
        }
    }

    #[test]
    fn sampled_rows_cover_the_file_and_stay_inside_it() {
        assert_eq!(sampled_rows(3).collect::<Vec<_>>(), vec![0, 1, 2]);
        let rows: Vec<usize> = sampled_rows(1_000_000).collect();
        assert_eq!(rows.len(), FINGERPRINT_ROWS);
        assert_eq!(rows[0], 0);
        assert!(*rows.last().unwrap() > 990_000 && *rows.last().unwrap() < 1_000_000);
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_plan_refuses_other_base_vectors_and_unknown_shards() {
        let dir = tempfile::tempdir().unwrap();
        let data = generate_u8(3000, 16, Stream::Base);
        let v = Vectors::new(&data[..], DIM);
        let params = params(16, 8);
        let m = plan(
            v,
            &params,
            3,
            PartitionKind::KMeans,
            dir.path(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(m.shards.iter().map(|s| s.num_points).sum::<usize>(), 3000);
        let p = ShardPlan::open(dir.path()).unwrap();
        assert_eq!(p.params(), params);
        p.check_base(v).unwrap();

        let mut sampled = data.clone();
        sampled[3] ^= 1; // row 0 is always among the hashed rows
        let err = p
            .check_base(Vectors::new(&sampled[..], DIM))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hash"), "{err}");
        let err = p
            .check_base(Vectors::new(&data[..2990 * DIM], DIM))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3000 × 128 u8") && err.contains("2990 × 128 u8"),
            "{err}"
        );
        let err = p
            .build_shard(v, 3, &NoProgress, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no shard 3") && err.contains("3 shard"),
            "{err}"
        );
    }

    #[test]
    fn planning_twice_writes_the_same_bytes() {
        let data = generate_u8(5000, 16, Stream::Base);
        let v = Vectors::new(&data[..], DIM);
        let params = params(16, 8);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        pool(1)
            .install(|| plan(v, &params, 4, PartitionKind::KMeans, a.path(), &NoProgress).unwrap());
        pool(3)
            .install(|| plan(v, &params, 4, PartitionKind::KMeans, b.path(), &NoProgress).unwrap());
        let mut names = vec![PLAN_FILE.to_string(), CLUSTER_FILE.to_string()];
        names.extend((0..4).map(|s| format!("{PLAN_DIR}/shard-{s}.ids")));
        for name in names {
            let read = |d: &Path| std::fs::read(d.join(&name)).unwrap();
            assert_eq!(
                read(a.path()),
                read(b.path()),
                "{name} differs between 1 and 3 threads"
            );
        }
    }

    /// The golden plan, written once if missing and never regenerated: a
    /// later reader must still open it and get the same parameters and ids.
    #[test]
    fn golden_plan_v1_still_reads() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/plan-v1");
        let data = generate_u8(600, 8, Stream::Base);
        let v = Vectors::new(&data[..], DIM);
        let params = params(8, 4);
        if !dir.join(CLUSTER_FILE).exists() {
            plan(v, &params, 3, PartitionKind::KMeans, &dir, &NoProgress).unwrap();
            eprintln!("wrote the golden plan {}: commit it", dir.display());
        }
        let p = ShardPlan::open(&dir).unwrap();
        assert_eq!(p.params(), params);
        p.check_base(v).unwrap();
        let mut all: Vec<u32> = (0..3)
            .flat_map(|s| {
                let ids = layout::read_ids(&ids_path(&dir, s)).unwrap();
                assert_eq!(ids.len(), p.manifest().shards[s].num_points);
                assert!(ids.windows(2).all(|w| w[0] < w[1]));
                ids
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..600).collect::<Vec<u32>>());
    }
}
