//! Capacity planning: how many shards and nodes of what size a deployment
//! of N points takes, from the sizes of shardann's files (exact, from the
//! format) and rates measured on a machine (stated, replaceable).
//!
//! Sizes come from the same code that writes the files (`IndexHeader`), so
//! a planned `disk.index` is the byte count a build writes. Rates are what
//! this module cannot know: how fast a core builds a graph, how many sector
//! reads a query needs at recall@10 0.95, how many reads per second the
//! disk serves. [`Rates::MEASURED`] holds the values measured here (see its
//! fields); `shardann plan` lets each be given instead.
//!
//! The plan is a model, and says so: build time grows as `n·log₂ n`, reads
//! per query as `log₂ n` (both fitted at 1M points), and every query is
//! sent to every shard (what a random partition needs; a k-means partition
//! with `probe_shards` reads less).

use crate::element::ElemType;
use crate::error::{Error, Result};
use crate::layout::{IndexHeader, NodeOrder, SECTOR};
use crate::metric::Metric;

/// What is to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub points: u64,
    pub dim: u32,
    pub elem: ElemType,
    pub metric: Metric,
    pub pq_bytes: u32,
    pub max_degree: u32,
    pub build_list: u32,
    pub order: NodeOrder,
    /// Copies of every shard, on distinct nodes.
    pub replicas: u32,
    /// Nodes cached per shard (`--cache-nodes`).
    pub cache_nodes: u64,
    /// Stored payload per point (`docs.bin`, compressed), if documents are kept.
    pub docs_bytes_per_point: u64,
}

/// The machines it runs on (the same kind builds and serves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub ram_bytes: u64,
    /// Disk per node, if bounded.
    pub disk_bytes: Option<u64>,
    pub cores: u32,
}

/// Rates measured on one machine; each can be replaced by a measurement of
/// the machines a deployment will run on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Build time per point per core, in µs, at 1M points with R = 64,
    /// L = 100, 128 dimensions; scaled by `log₂ n / log₂ 10⁶`, R, L and
    /// the dimension (the cost of a build is its distance computations).
    pub build_us_per_point_core: f64,
    /// Build peak memory per point, beyond the rows and graph below (PQ
    /// codes, candidate lists, allocator slack), in bytes.
    pub build_extra_bytes_per_point: f64,
    /// Build peak memory that does not grow with the points (the process,
    /// thread stacks and scratch, PQ training), in bytes.
    pub build_fixed_bytes: u64,
    /// Sector reads per query at recall@10 0.95 on 1M points (k = 10,
    /// beam 4, v2 layout, 1 % navigation points); scaled by `log₂ n / log₂ 10⁶`.
    pub reads_per_query_1m: f64,
    /// Reads per query on a version 1 layout, relative to version 2.
    pub v1_reads_factor: f64,
    /// 4 KiB random reads per second the disk serves to a node's searches.
    pub disk_reads_per_s: f64,
    /// CPU time of one query on one 1M-point shard at recall 0.95, µs.
    pub cpu_us_per_query: f64,
    /// A node's memory besides its shards' (runtime, buffers, HTTP).
    pub runtime_bytes: u64,
}

impl Rates {
    /// Measured on this project's development machine (2 cores, virtio
    /// disk; 2026-12-02, 1M sift-like points, `bench-datasets/capacity-1m.sh`;
    /// the numbers and how each was read are in `bench-datasets/CAPACITY.md`).
    pub const MEASURED: Rates = Rates {
        // 387 s wall for 1M points on 2 threads (PQ training included).
        build_us_per_point_core: 774.0,
        // Fitted to five peaks (1M points: 474 MiB; shards of 222K to 275K
        // points: 120 to 139 MiB), all within 5 %: 20 MB + 477 B per point,
        // of which 128 B are the row and 333 B the graph.
        build_extra_bytes_per_point: 16.0,
        build_fixed_bytes: 20_000_000,
        // recall@10 0.95 between L 20 (19.1 reads) and L 24 (21.9).
        reads_per_query_1m: 19.6,
        v1_reads_factor: 26.5 / 19.4,
        // fio 4 KiB random reads, io_uring, depth 64, O_DIRECT: 59.1K and 76.9K.
        disk_reads_per_s: 68_000.0,
        // CPU time (user + sys) of 6000 queries at 32 in flight, L 20 and 24.
        cpu_us_per_query: 560.0,
        // `serve`'s peak RSS after 300 searches less what its shards hold
        // in RAM: 46 MiB (one 1M shard), 31 MiB (four of 250K); the mean.
        runtime_bytes: 40 << 20,
    };
}

/// The sizes of one shard of `points` points.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ShardSize {
    pub points: u64,
    /// `disk.index`, `pq.bin`, `ids.bin`, and documents if kept.
    pub disk_bytes: u64,
    /// Held in RAM while serving: PQ codes, global ids, the v2 slot table,
    /// the navigation graph, the cache, and the documents' indexes.
    pub search_ram_bytes: u64,
    /// Peak memory of its build.
    pub build_ram_bytes: u64,
    /// Build time on one machine with all its cores.
    pub build_seconds: f64,
    /// Sector reads per query at recall@10 0.95.
    pub reads_per_query: f64,
}

/// A deployment: shards, nodes, and what each node needs and serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    pub shards: u64,
    pub nodes: u64,
    /// Shard copies per node (the most any node holds).
    pub shards_per_node: u64,
    pub shard: ShardSize,
    pub node_ram_bytes: u64,
    pub node_disk_bytes: u64,
    /// Queries per second one node answers for its shards, at recall 0.95
    /// with enough queries in flight to keep its disk busy: the lower of
    /// what its disk's reads and its cores allow.
    pub node_qps: f64,
    /// Queries per second the whole cluster answers (every query asks
    /// every shard once, one replica each).
    pub cluster_qps: f64,
    /// What sets the shard count: the resource one shard fewer would
    /// overflow ("build memory", "search memory", "disk"), or why not.
    pub limited_by: &'static str,
}

/// Navigation points of a shard: 1 % of it, within the bounds the index
/// uses (`navigation::NavPoints::default`).
fn nav_points(n: u64) -> u64 {
    let p = (n as f64 / 100.0).round() as u64;
    p.clamp(
        crate::navigation::PERCENT_MIN_POINTS as u64,
        crate::navigation::PERCENT_MAX_POINTS as u64,
    )
    .min(n)
}

/// Navigation graph degree (`navigation`'s, 32).
const NAV_DEGREE: u64 = 32;

/// Share of a node's RAM or disk the plan fills (the rest: page cache,
/// the OS, growth).
const FILL: f64 = 0.8;

impl Workload {
    fn header(&self, points: u64) -> IndexHeader {
        IndexHeader {
            elem: self.elem,
            metric: self.metric,
            dim: self.dim,
            max_degree: self.max_degree,
            num_points: points,
            medoid: 0,
            pq_bytes: self.pq_bytes,
            build_list: self.build_list,
            alpha: 1.2,
            order: self.order,
        }
    }

    /// The sizes of a shard of `n` points.
    pub fn shard(&self, n: u64, machine: &Machine, rates: &Rates) -> ShardSize {
        let h = self.header(n);
        let row = self.dim as u64 * self.elem.size() as u64;
        let (m, d) = (self.pq_bytes as u64, self.dim as u64);
        // `format-spec/pq.md`: header, chunk offsets, centre, codebook, codes, footer.
        let pq_file = 64 + 4 * (m + 1) + 4 * d + 1024 * d + n * m + 8;
        let ids_file = 24 + 4 * n + 8;
        let disk_bytes = h.file_bytes() + pq_file + ids_file + n * self.docs_bytes_per_point;
        let slot_table = match self.order {
            NodeOrder::Identity => 0,
            NodeOrder::Locality => 4 * n,
        };
        let nav = nav_points(n);
        // Each navigation point: its row as stored, an id, an offset, and
        // its pruned edges, about half the degree (10,000 128-d u8 points
        // held 1.92 MiB, 201 B each).
        let nav_bytes = nav * (row + 4 + 4 + NAV_DEGREE / 2 * 4);
        // v2 caches whole sectors (a node's share of one), v1 records; and
        // a 12-byte slot per node.
        let per_cached = match (self.order, h.records_per_sector()) {
            (NodeOrder::Locality, rps) if rps > 0 => SECTOR as u64 / rps,
            _ => h.record_bytes(),
        };
        let cache_bytes = self.cache_nodes.min(n) * (per_cached + 12);
        // Documents: a user id and a block-table share per point (integers).
        let doc_ram = if self.docs_bytes_per_point > 0 {
            16 * n
        } else {
            0
        };
        let codebook = 4 * (256 * d + d);
        let search_ram_bytes =
            n * m + codebook + 4 * n + slot_table + nav_bytes + cache_bytes + doc_ram;
        // The build holds the shard's rows, the graph with its slack for
        // reverse edges (1.3 R per node), and what `Rates` measured.
        let graph = (self.max_degree as f64 * 4.0 * 1.3) as u64;
        let build_ram_bytes = n * (row + graph)
            + (n as f64 * rates.build_extra_bytes_per_point) as u64
            + rates.build_fixed_bytes;
        let log_scale = (n.max(2) as f64).log2() / 1e6f64.log2();
        let work = log_scale
            * (self.max_degree as f64 / 64.0)
            * (self.build_list as f64 / 100.0)
            * (self.dim as f64 / 128.0);
        let build_seconds =
            n as f64 * rates.build_us_per_point_core * 1e-6 * work / machine.cores.max(1) as f64;
        let order_factor = match self.order {
            NodeOrder::Locality => 1.0,
            NodeOrder::Identity => rates.v1_reads_factor,
        };
        let reads_per_query = rates.reads_per_query_1m * log_scale.max(0.0) * order_factor;
        ShardSize {
            points: n,
            disk_bytes,
            search_ram_bytes,
            build_ram_bytes,
            build_seconds,
            reads_per_query,
        }
    }

    /// Plans the deployment: the fewest shards whose build fits one
    /// machine's memory (today's build holds a shard whole), then the
    /// fewest nodes that hold `replicas` copies of each within RAM and disk.
    /// `shards` forces the shard count.
    pub fn plan(&self, machine: &Machine, rates: &Rates, shards: Option<u64>) -> Result<Plan> {
        if self.points == 0 || self.dim == 0 || self.replicas == 0 {
            return Err(Error::InvalidParameter(
                "a plan needs points, a dimension and at least one replica".into(),
            ));
        }
        let ram = machine.ram_bytes as f64 * FILL;
        let one = |n| self.shard(n, machine, rates);
        let fits_build = |n: u64| (one(n).build_ram_bytes as f64) <= ram;
        let fits_node = |n: u64| {
            let s = one(n);
            (s.search_ram_bytes + rates.runtime_bytes) as f64 <= ram
                && machine
                    .disk_bytes
                    .is_none_or(|d| s.disk_bytes as f64 <= d as f64 * FILL)
        };
        let per_shard = |shards: u64| self.points.div_ceil(shards);
        let forced = shards.is_some();
        let shards = match shards {
            Some(0) => {
                return Err(Error::InvalidParameter(
                    "--shards must be at least 1".into(),
                ))
            }
            Some(s) => s.min(self.points),
            None => {
                // The fewest shards whose one shard builds and serves on a machine.
                let ok = |s: u64| fits_build(per_shard(s)) && fits_node(per_shard(s));
                if !ok(self.points) {
                    let s1 = one(1);
                    let need = s1
                        .build_ram_bytes
                        .max(s1.search_ram_bytes + rates.runtime_bytes);
                    return Err(Error::InvalidParameter(format!(
                        "nodes of {} bytes of RAM cannot build or serve even a one-point shard \
                         (the plan fills {:.0} % of a node's RAM): give at least {} bytes, and \
                         much more for shards of useful size",
                        machine.ram_bytes,
                        FILL * 100.0,
                        (need as f64 / FILL).ceil() as u64
                    )));
                }
                let (mut lo, mut hi) = (1u64, self.points);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if ok(mid) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo
            }
        };
        let n = per_shard(shards);
        let s = one(n);
        // What one shard fewer would overflow.
        let limited_by = if forced {
            "the shard count given"
        } else if shards == 1 {
            "nothing: one shard fits"
        } else if !fits_build(per_shard(shards - 1)) {
            "build memory"
        } else if (one(per_shard(shards - 1)).search_ram_bytes + rates.runtime_bytes) as f64 > ram {
            "search memory"
        } else {
            "disk"
        };
        let by_ram =
            ((ram - rates.runtime_bytes as f64) / s.search_ram_bytes.max(1) as f64).floor() as u64;
        let by_disk = machine.disk_bytes.map_or(u64::MAX, |d| {
            (d as f64 * FILL / s.disk_bytes.max(1) as f64).floor() as u64
        });
        let fit = by_ram.min(by_disk).max(1);
        let copies = shards * self.replicas as u64;
        let nodes = copies.div_ceil(fit).max(self.replicas as u64);
        let shards_per_node = copies.div_ceil(nodes);
        let node_reads = shards_per_node as f64 * s.reads_per_query;
        let cpu_scale = (n.max(2) as f64).log2() / 1e6f64.log2();
        let node_cpu_us = shards_per_node as f64 * rates.cpu_us_per_query * cpu_scale;
        let node_qps =
            (rates.disk_reads_per_s / node_reads).min(machine.cores as f64 * 1e6 / node_cpu_us);
        // Every query costs one search per shard; the cluster has
        // nodes × shards_per_node shard copies to spread them over.
        let cluster_qps = node_qps * (nodes * shards_per_node) as f64 / shards as f64;
        Ok(Plan {
            shards,
            nodes,
            shards_per_node,
            shard: s,
            node_ram_bytes: shards_per_node * s.search_ram_bytes + rates.runtime_bytes,
            node_disk_bytes: shards_per_node * s.disk_bytes,
            node_qps,
            cluster_qps,
            limited_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sift(points: u64) -> Workload {
        Workload {
            points,
            dim: 128,
            elem: ElemType::U8,
            metric: Metric::L2,
            pq_bytes: 32,
            max_degree: 64,
            build_list: 100,
            order: NodeOrder::Locality,
            replicas: 1,
            cache_nodes: 0,
            docs_bytes_per_point: 0,
        }
    }

    const NODE: Machine = Machine {
        ram_bytes: 24 << 30,
        disk_bytes: None,
        cores: 2,
    };

    /// The planned `disk.index` is what the writer's header says a file of
    /// that many points takes: 10 records of 392 bytes per v2 sector.
    #[test]
    fn shard_disk_is_the_formats_size() {
        let s = sift(1_000_000).shard(1_000_000, &NODE, &Rates::MEASURED);
        let index = (1 + 100_000 + (4 * 1_000_000 + 8u64).div_ceil(4096)) * 4096;
        let pq = 64 + 4 * 33 + 4 * 128 + 1024 * 128 + 32_000_000 + 8;
        let ids = 24 + 4_000_000 + 8;
        assert_eq!(s.disk_bytes, index + pq + ids);
    }

    #[test]
    fn a_billion_points_split_until_each_build_fits() {
        let w = sift(1_000_000_000);
        let p = w.plan(&NODE, &Rates::MEASURED, None).unwrap();
        assert!(p.shard.build_ram_bytes as f64 <= NODE.ram_bytes as f64 * FILL);
        // One shard fewer would not fit its build.
        let bigger = w.shard(w.points.div_ceil(p.shards - 1), &NODE, &Rates::MEASURED);
        assert!(bigger.build_ram_bytes as f64 > NODE.ram_bytes as f64 * FILL);
        assert!(p.nodes * p.shards_per_node >= p.shards);
        assert!(p.node_ram_bytes as f64 <= NODE.ram_bytes as f64 * FILL);
        // Replicas double the copies, and never share a node.
        let mut two = w.clone();
        two.replicas = 2;
        let p2 = two.plan(&NODE, &Rates::MEASURED, None).unwrap();
        assert!(p2.nodes * p2.shards_per_node >= 2 * p2.shards);
        assert!(p2.nodes >= 2);
        assert!(p2.cluster_qps > p.cluster_qps * 1.5);
    }

    #[test]
    fn small_sets_are_one_shard_and_forced_counts_are_kept() {
        let p = sift(1_000_000).plan(&NODE, &Rates::MEASURED, None).unwrap();
        assert_eq!((p.shards, p.nodes), (1, 1));
        let p4 = sift(1_000_000)
            .plan(&NODE, &Rates::MEASURED, Some(4))
            .unwrap();
        assert_eq!(p4.shards, 4);
        assert_eq!(p4.shard.points, 250_000);
        assert!(p4.shard.reads_per_query < p.shard.reads_per_query);
        assert!(sift(10).plan(&NODE, &Rates::MEASURED, Some(0)).is_err());
        // A node too small for anything says how much would do.
        let tiny = Machine {
            ram_bytes: 1 << 20,
            ..NODE
        };
        let err = sift(1_000)
            .plan(&tiny, &Rates::MEASURED, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("give at least"), "{err}");
    }
}
