//! Argument parsing: raw clap structs, validated by each command.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shardann_engine::io::IoBackend;
use shardann_engine::navigation::NavPoints;
use shardann_engine::synth::Preset;
use shardann_engine::{ElemType, Metric};

/// shardann: disk-resident approximate nearest-neighbour search.
///
/// A typical session: generate (or download) data, compute exact ground
/// truth, build an index, then benchmark it:
///
///   shardann gen --preset sift-like --n 100000 --queries 1000 --out data/s100k
///   shardann groundtruth --base data/s100k/base.u8bin --queries data/s100k/query.u8bin --out data/s100k/gt100.bin
///   shardann build --base data/s100k/base.u8bin --metric l2 --out data/s100k/index
///   shardann bench --index data/s100k/index --queries data/s100k/query.u8bin --gt data/s100k/gt100.bin
///
/// or all of it at once: `shardann demo`.
#[derive(Debug, Parser)]
#[command(
    name = "shardann",
    version,
    about,
    long_about,
    max_term_width = 100,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Gen(GenArgs),
    Groundtruth(GroundtruthArgs),
    Build(BuildArgs),
    Search(SearchArgs),
    Bench(BenchArgs),
    Inspect(InspectArgs),
    Eval(EvalArgs),
    Embed(EmbedArgs),
    Verify(VerifyArgs),
    Replicate(ReplicateArgs),
    Serve(ServeArgs),
    Demo(DemoArgs),
    Relayout(RelayoutArgs),
    Plan(PlanArgs),
    Upsert(UpsertArgs),
    Delete(DeleteArgs),
    Merge(MergeArgs),
    Churn(ChurnArgs),
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// Insert or replace documents in a serving index, from JSON Lines.
///
/// Each line is a document as `build --docs` reads it: "id", "vector" and
/// payload fields. Lines are sent in batches to a node (POST /v1/documents),
/// which checks each batch whole, makes it durable in the owning shard's
/// write-ahead log and answers; the documents are searchable from then on.
/// A batch the node refuses stops the load with the node's message and the
/// line to resume from: batches before it are written, and upserts are
/// idempotent, so running again with --from-line LINE finishes the load.
///
///   shardann upsert --server http://127.0.0.1:7001 --docs new.jsonl
///   SHARDANN_WRITE_TOKEN=... shardann upsert --server http://10.0.0.5:7001 --docs new.jsonl
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct UpsertArgs {
    /// The node to write to: http://HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// JSON Lines: one document per line.
    #[arg(long)]
    pub docs: PathBuf,
    /// Documents per request (at most the node's [writes] max_batch).
    #[arg(long, default_value_t = 500, value_parser = at_least_one())]
    pub batch: usize,
    /// Requests in flight at once (the node's log shares fsyncs among them).
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub concurrency: usize,
    /// Skip the lines before this one (1-based): resume a load.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub from_line: usize,
    /// The node's write_token (default: $SHARDANN_WRITE_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

/// Delete documents from a serving index: by id, or every one a filter matches.
///
///   shardann delete --server http://127.0.0.1:7001 --id doc-17 --id doc-18
///   shardann delete --server http://127.0.0.1:7001 --ids-file withdrawn.txt
///   shardann delete --server http://127.0.0.1:7001 --filter '{"year": {"$lt": 2000}}'
///
/// An ids file holds one id per line: a JSON string or integer, or a bare
/// string. Ids that name no document are counted, not an error.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DeleteArgs {
    /// The node to write to: http://HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// An id to delete (repeat for more).
    #[arg(long = "id", conflicts_with_all = ["ids_file", "filter"])]
    pub ids: Vec<String>,
    #[arg(long, conflicts_with = "filter")]
    pub ids_file: Option<PathBuf>,
    /// A filter in the search API's language (JSON).
    #[arg(long)]
    pub filter: Option<String>,
    /// Ids per request.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub batch: usize,
    /// The node's write_token (default: $SHARDANN_WRITE_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

/// Fold a serving node's writes into new segment versions now.
///
/// A node merges a shard by itself once its writes pass [writes]
/// merge_fraction of the shard (default 0.1); this asks for it at once
/// (POST /v1/shards/{shard}/merge): the node writes the shard's next
/// version with the logged upserts and deletes in its graph, documents and
/// filter index, verifies and publishes it, serves it, and cuts the log.
/// Searches and writes go on meanwhile. Without --shard, every shard the
/// node has writes for.
///
///   shardann merge --server http://127.0.0.1:7001
///   shardann merge --server http://127.0.0.1:7001 --shard 0 --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MergeArgs {
    /// The node serving the shards: http://HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// A shard to merge (repeat for more).
    #[arg(long = "shard")]
    pub shards: Vec<u32>,
    /// The node's write_token (default: $SHARDANN_WRITE_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Print each shard's merge report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The churn benchmark (FreshDiskANN's): cycles of deletes, inserts and merges on a serving node.
///
/// Start a node on an index built from a sift-like base with documents
/// (`gen --docs`: document i is row i), with [writes] merge_fraction = 0
/// so that merges come when this asks. Each cycle deletes --fraction of
/// the live points at random, inserts as many new points as --fraction of
/// the initial count (the same clusters: a stream of --data-seed that is
/// neither the base nor the queries), merges every shard, waits
/// --idle-seconds, then measures recall@k of the live set against ground
/// truth recomputed by brute force, at --list, and QPS. One search every
/// 1/--search-rate s runs throughout; its p50/p99 are reported for the
/// writes, the merges and the idle time. --compare-build builds the final
/// live set from scratch in process, for the merges' time against it.
///
///   shardann gen --n 1000000 --docs --out data/sift1m
///   shardann build --docs data/sift1m/docs.jsonl --base data/sift1m/base.u8bin \
///       --filter-fields label,ts --shards 1 --out data/idx
///   shardann serve --config node.toml      # [writes] merge_fraction = 0.0
///   shardann churn --server http://127.0.0.1:7001 --base data/sift1m/base.u8bin \
///       --queries data/sift1m/query.u8bin --cycles 10 --compare-build --json churn.json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ChurnArgs {
    /// The node serving the index: http://HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// The base the index was built from (u8 rows; row i = document id i).
    #[arg(long)]
    pub base: PathBuf,
    #[arg(long)]
    pub queries: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Share of the live points deleted, and of the initial count inserted, per cycle.
    #[arg(long, default_value_t = 0.05)]
    pub fraction: f64,
    /// The seed the base was generated with (`gen --seed`): new points come from its clusters.
    #[arg(long, default_value_t = 42)]
    pub data_seed: u64,
    /// Seed of the choice of deletes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// List size L of every search (the background ones and the recall run).
    #[arg(long, default_value_t = 40)]
    pub list: usize,
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// Background searches per second, throughout.
    #[arg(long, default_value_t = 50.0)]
    pub search_rate: f64,
    /// Idle time after each merge, for the idle latencies.
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    /// Build the final live set from scratch, for the merges' ratio.
    #[arg(long)]
    pub compare_build: bool,
    /// Write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A cluster's control plane in etcd: publish an index, see who serves what.
///
/// Nodes started with `etcd = ["http://HOST:2379"]` and `cluster = "NAME"`
/// in their node.toml (instead of [[peers]]) register themselves under a
/// lease, watch each other's registrations and the published versions, and
/// pull a newer version as soon as it is published. Keys:
/// format-spec/etcd.md.
///
///   shardann cluster init --etcd http://127.0.0.1:2379 --name prod --index data/idx
///   shardann cluster status --etcd http://127.0.0.1:2379 --name prod --json
#[derive(Debug, Subcommand)]
#[command(verbatim_doc_comment)]
pub enum ClusterCommand {
    Init(ClusterInitArgs),
    Status(ClusterStatusArgs),
    Place(ClusterPlaceArgs),
    Drain(ClusterDrainArgs),
}

/// Place a shard on a node (or, with --remove, take it off).
///
/// A node placed on a shard it does not serve pulls the shard's published
/// version from a node that serves it, verifies it, opens it, and only
/// then registers it, so no query is routed to it before it can answer. A
/// node whose placement is removed leaves its registration at once (every
/// node stops routing that shard to it) and stops serving the shard a
/// second later; the files stay on its disk. A node's first start places
/// it on the `shards` of its node.toml; after that, placement in etcd
/// decides.
#[derive(Debug, Args)]
pub struct ClusterPlaceArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[arg(long)]
    pub shard: u32,
    /// The node's id (node_id in its node.toml).
    #[arg(long)]
    pub node: String,
    /// Take the shard off the node instead.
    #[arg(long)]
    pub remove: bool,
    /// Remove even when no other live node serves the shard at its
    /// published version (its answers would be partial).
    #[arg(long, requires = "remove")]
    pub force: bool,
}

/// Take every shard off a node (before it is stopped for good).
///
/// Each shard it serves leaves its registration at once and stops being
/// served a second later; refused when no other live node serves one of
/// them at its published version (--force drains anyway). A drained node
/// that restarts with `shards` in
/// its node.toml places itself on them again: remove them first.
#[derive(Debug, Args)]
pub struct ClusterDrainArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[arg(long)]
    pub node: String,
    /// Drain even shards no other live node serves (answers would be partial).
    #[arg(long)]
    pub force: bool,
}

/// Where the cluster's keys are.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated: http://HOST:PORT[,http://HOST:PORT…].
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The cluster's name (its keys live under /shardann/NAME/).
    #[arg(long)]
    pub name: String,
    /// etcd user, when etcd's authentication is on.
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// etcd password (with --etcd-user).
    #[arg(long, requires = "etcd_user")]
    pub etcd_password: Option<String>,
}

/// Publish a sharded build to a cluster: its cluster.json, and each
/// shard's current version.
///
/// Run it once per new cluster, where the index is. Nodes of the cluster
/// started with an empty index directory take cluster.json from etcd; the
/// nodes that have a shard's published version serve it, the others pull it.
/// A cluster that already holds another index is refused (--force replaces
/// it); a published version newer than the index's is left as it is.
#[derive(Debug, Args)]
pub struct ClusterInitArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// A sharded index directory (cluster.json and shard-N/), as `build --shards` writes.
    #[arg(long)]
    pub index: PathBuf,
    /// Replace the cluster.json of a cluster that holds another index.
    #[arg(long)]
    pub force: bool,
}

/// Show a cluster: live nodes (their lease and what they serve), and per
/// shard its published version, the live replicas serving it, and whether
/// it is under-replicated (fewer live replicas at the published version
/// than placed, or none).
#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// JSON: {"nodes": [{"id", "address", "shards", "versions", "lease"}],
    /// "shards": [{"id", "version", "replicas", "serving", "placed",
    /// "under_replicated"}], …}; only live nodes are listed.
    #[arg(long)]
    pub json: bool,
}

/// Generate a reproducible synthetic data set (base and query files).
///
/// The same preset, sizes and seed give the same bytes on any machine.
/// Queries come from the same distribution as the base but are not base points.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// sift-like: 128-d u8, clustered, for L2. deep-like: 96-d f32, unit norm, for inner product.
    #[arg(long, default_value = "sift-like")]
    pub preset: Preset,
    /// Number of base points.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Number of queries.
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory; gets base.<ext> and query.<ext>.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads (0 = all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write docs.jsonl: one document per base point, line i for row i,
    /// `{"id": i, "label": "l<r>", "ts": t}`, for `build --docs docs.jsonl
    /// --base base.<ext> --filter-fields label,ts`. Labels follow a Zipf law
    /// (exponent 1.75 over l1…l1000: l1 ≈ 51 % of the points, l2 ≈ 15 %,
    /// l3 ≈ 7.5 %, l9 ≈ 1.1 %, l35 ≈ 0.1 %); ts is uniform in 0..1000000,
    /// so {"ts": {"$lt": x}} matches x/10^6 of the points. Seeded like the vectors.
    #[arg(long)]
    pub docs: bool,
}

/// Compute exact k nearest neighbours by brute force (the ground truth).
///
/// Writes the Big-ANN ground-truth format: u32 nq, u32 k, nq·k u32 ids,
/// nq·k f32 distances (squared L2 for l2, -⟨q,x⟩ for ip, 1-cos for cosine).
#[derive(Debug, Args)]
pub struct GroundtruthArgs {
    #[arg(long)]
    pub base: PathBuf,
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub k: usize,
    #[arg(long, default_value = "l2")]
    pub metric: Metric,
    #[arg(long)]
    pub out: PathBuf,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Exact neighbours among the documents matching this filter (the same
    /// for every query); needs --index, whose filter index evaluates it.
    #[arg(long, requires = "index")]
    pub filter: Option<String>,
    /// One filter per query (JSON Lines, line i for query i).
    #[arg(long, requires = "index", conflicts_with = "filter")]
    pub filters: Option<PathBuf>,
    /// An index built from the same base with --docs and --filter-fields:
    /// where the filters are evaluated (its document i is base row i).
    #[arg(long)]
    pub index: Option<PathBuf>,
}

/// Build a disk index (Vamana graph + PQ codes + sector layout) from a vector file.
///
/// Memory: the base file is memory-mapped; the build holds the graph
/// (about n·R·4·1.3 bytes) and the PQ codes (n·pq-bytes).
///
/// From text alone: --docs passages.jsonl --embed-model DIR --embed-field
/// text embeds the documents first (as `shardann embed` does, resumable:
/// run the same command again after an interruption), then builds.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Base vectors: .u8bin, .i8bin, .fbin, .npy, .fvecs or .bvecs. With
    /// --docs, row i is the vector of the document on line i.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Documents as JSON Lines: "id" (an unsigned integer or a string,
    /// unique, returned as given), "vector" (unless --base gives the
    /// vectors), and any other fields as the payload, returned with hits
    /// (search --include) and fetched by id. A BEIR corpus.jsonl works as
    /// it is: "_id" is taken as the id when there is no "id". A bad line
    /// stops the build before any version is published, naming the line
    /// and the field.
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Payload fields to index for filtered search, comma-separated: a
    /// string or an array of strings makes a keyword field, a number a
    /// numeric (range) field.
    #[arg(long, value_delimiter = ',')]
    pub filter_fields: Vec<String>,
    /// Payload fields of --docs to index for BM25 text search (strings or
    /// arrays of strings), e.g. --text-fields title,text: they are joined in
    /// this order into one indexed text per document (a tantivy index,
    /// packed into the segment as text.bin). Queries then take --text.
    #[arg(long, value_delimiter = ',')]
    pub text_fields: Vec<String>,
    /// How text becomes terms: words of 2+ letters, digits or '_'
    /// (so O_DIRECT stays whole), lower-cased; words-stop also drops
    /// English stop words, words-stop-stem also stems (Porter 2). The
    /// default is the best of the three on manpages-dev (BM25 nDCG@10
    /// 0.262 against 0.230 for words-stop and 0.225 for words).
    #[arg(long, default_value = "words-stop-stem")]
    pub text_analyzer: shardann_engine::text::Analyzer,
    /// Embed the documents of --docs with this sentence-transformers model
    /// folder (bench-datasets/fetch_model.sh fetches all-MiniLM-L6-v2) and
    /// build from those vectors: no --base, no "vector" fields needed. The
    /// vectors are made under OUT/.embed, with a checkpoint, so an
    /// interrupted build resumes its embedding; removed once built.
    #[arg(long, value_name = "DIR", requires = "docs", conflicts_with = "base")]
    pub embed_model: Option<PathBuf>,
    /// With --embed-model: the field(s) to embed, comma-separated; their
    /// strings are joined with a space (e.g. title,text).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "text",
        requires = "embed_model"
    )]
    pub embed_field: Vec<String>,
    /// With --embed-model: texts per batch of the model.
    #[arg(long, default_value_t = 16, value_parser = at_least_one(), requires = "embed_model")]
    pub embed_batch: usize,
    /// Element type of the "vector" fields of --docs.
    #[arg(long, default_value = "f32")]
    pub vector_type: ElemType,
    #[arg(long, default_value = "l2")]
    pub metric: Metric,
    /// Output directory (created). Each build adds a version: OUT/v0000000001/
    /// (disk.index, pq.bin, build.json, segment.json), then v…2, and OUT/CURRENT
    /// names the one searches open. Searches of the old version are not disturbed.
    #[arg(long, required_unless_present = "plan")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Split the data into N shards, each a complete index under
    /// OUT/shard-i with the global ids of its points, plus OUT/cluster.json.
    /// 1: one unsharded index.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub shards: usize,
    /// How points are assigned to shards: kmeans (balanced cells, a query's
    /// neighbours concentrate in few shards) or random.
    #[arg(long, default_value = "kmeans")]
    pub partition: shardann_engine::partition::PartitionKind,
    /// With --shards N: only plan the build (partition the points; write
    /// OUT/cluster.json, OUT/plan.json with the build parameters and
    /// OUT/plan/shard-i.ids), build no shard. Then build every shard with
    /// `build --plan OUT --shard i --base BASE`: on N machines at once (a
    /// Kubernetes indexed job, a Slurm array), in any order; the result is
    /// the directory `build --shards N` writes.
    #[arg(long, conflicts_with = "embed_model")]
    pub plan_only: bool,
    /// Build one shard of the plan in DIR (written by --plan-only) into
    /// DIR/shard-i, from the same --base (checked against the plan). The
    /// graph and PQ parameters are the plan's: flags that differ are refused.
    #[arg(long, value_name = "DIR", requires = "shard", conflicts_with_all = ["out", "plan_only", "shards", "partition", "embed_model"])]
    pub plan: Option<PathBuf>,
    /// With --plan: which shard to build (0-based).
    #[arg(long, requires = "plan")]
    pub shard: Option<usize>,
    /// Keep the build's peak resident memory under this (e.g. 2GiB, 512MiB).
    /// If the whole graph does not fit, the points are split into
    /// overlapping cells (each point in its 2 nearest), one graph is built
    /// per cell in turn and the graphs are merged on disk; the base is read
    /// in order, never loaded whole. A budget too small for the data fails
    /// at once with the least that would do. Without it the graph is built
    /// whole (about 700 B per 128-d u8 point with R = 64).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES", conflicts_with_all = ["plan", "plan_only", "embed_model"])]
    pub memory_budget: Option<u64>,
}

impl BuildArgs {
    /// Where the build writes: --out, or the plan's directory (clap
    /// requires one of them; `build` checks it again for callers that make
    /// a `BuildArgs` themselves).
    pub fn out_dir(&self) -> &std::path::Path {
        self.out
            .as_deref()
            .or(self.plan.as_deref())
            .unwrap_or(std::path::Path::new("."))
    }
}

#[derive(Debug, Args, Clone)]
pub struct GraphArgs {
    /// R: maximum out-degree of the graph. Larger: better recall, bigger index.
    #[arg(long, default_value_t = 64)]
    pub max_degree: usize,
    /// L used while building. Larger: better graph, slower build.
    #[arg(long, default_value_t = 100)]
    pub build_list: usize,
    /// α of the second pass (≥ 1): larger keeps more long-range edges.
    #[arg(long, default_value_t = 1.2)]
    pub alpha: f32,
    /// Bytes per PQ code (1..=dim), held in RAM for every point: M chunks of 256 centroids.
    /// [default: 32, or the dimension when it is smaller]
    #[arg(long)]
    pub pq_bytes: Option<usize>,
    /// Points sampled to train PQ.
    #[arg(long, default_value_t = 100_000)]
    pub pq_sample: usize,
    /// Seed of the insertion order and PQ training.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Layout of disk.index: v2 groups each node with its graph neighbours
    /// in one 4 KiB sector, and searches use every record of every sector
    /// they read (0.73x the reads at recall@10 0.95 on 1M points); v1 stores
    /// nodes in id order. Where one record fills a sector, v1 is written
    /// either way.
    #[arg(long, value_enum, default_value_t = Layout::V2)]
    pub layout: Layout,
}

impl GraphArgs {
    /// The values of every flag when none is given.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            graph: GraphArgs,
        }
        <Only as clap::Parser>::parse_from(["shardann"]).graph
    }
}

/// `disk.index` layout version (`format-spec/index.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    V1,
    V2,
}

impl Layout {
    pub fn order(self) -> shardann_engine::layout::NodeOrder {
        match self {
            Layout::V1 => shardann_engine::layout::NodeOrder::Identity,
            Layout::V2 => shardann_engine::layout::NodeOrder::Locality,
        }
    }
}

/// Search an index and print the top-k of each query.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(long)]
    pub index: PathBuf,
    /// Query vectors, same element type and dimension as the index.
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    pub queries: Option<PathBuf>,
    /// A text query instead: BM25 over the fields the index was built
    /// with (--text-fields), e.g. --text "list directory contents".
    /// Hybrid (text + vector) queries: the node's /v1/search, or `eval`.
    #[arg(long)]
    pub text: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// L: candidate list size (≥ k). Larger: better recall, slower.
    #[arg(long, default_value_t = 64)]
    pub list: usize,
    /// W: nodes read per round trip to the disk.
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// Only the first N queries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only documents matching this filter, for every query, e.g.
    /// '{"lang": "en", "year": {"$gte": 2020}}' (operators: $eq $ne $in
    /// $nin $gt $gte $lt $lte $exists $and $or $not). Needs an index built
    /// with --docs and --filter-fields.
    #[arg(long)]
    pub filter: Option<String>,
    /// One filter per query: JSON Lines, line i for query i.
    #[arg(long, conflicts_with = "filter")]
    pub filters: Option<PathBuf>,
    /// Payload fields to return with each hit, comma-separated ("*": all).
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Measure recall@k, QPS, latency and IOs per query against ground truth.
///
/// One run per list size; results as a table on stdout and, with --json, a
/// JSON report. Reads use O_DIRECT unless --buffered, so QPS measures the
/// disk and not the page cache.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The index (a plain or a sharded index directory).
    #[arg(long, required_unless_present = "server", conflicts_with = "server")]
    pub index: Option<PathBuf>,
    /// Benchmark a running node instead: http://HOST:PORT. Queries go to
    /// its /v1/search over HTTP/2, --concurrency in flight per client
    /// executor (--threads of them, default 1); latency is what the
    /// client sees, IO counts are what the node reports.
    #[arg(long)]
    pub server: Option<String>,
    /// With --server: vectors per request, sent to /v1/search/batch when
    /// above 1 (latency is then per request, shared by its vectors).
    #[arg(long, default_value_t = 1, requires = "server", value_parser = at_least_one())]
    pub batch: usize,
    #[arg(long)]
    pub queries: PathBuf,
    /// Ground truth (.bin) for the queries.
    #[arg(long)]
    pub gt: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Comma-separated list sizes L, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80,160")]
    pub list: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// Search threads (0 = all cores). Without --concurrency each thread
    /// runs one query at a time.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// For a sharded index: search only the P shards whose k-means
    /// centroids are nearest each query (0 = all shards).
    #[arg(long, default_value_t = 0)]
    pub probe_shards: usize,
    /// Queries in flight per thread. With io_uring (--io uring or auto) the
    /// threads become glommio executors, one per core, each running this
    /// many queries as tasks over O_DIRECT io_uring reads; with --io pread,
    /// threads × concurrency blocking threads. 0: one query per thread.
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Only documents matching this filter, for every query (see `search
    /// --help`); the report gives the match count and the plan chosen.
    /// Blocking threads, one unsharded index built with --docs.
    #[arg(long)]
    pub filter: Option<String>,
    /// One filter per query: JSON Lines, line i for query i (ground truth
    /// to match: groundtruth --filters).
    #[arg(long, conflicts_with = "filter")]
    pub filters: Option<PathBuf>,
    /// Filtered searches with at most this many matches score the matches'
    /// PQ codes instead of walking the graph (default 200000).
    #[arg(long)]
    pub flat_max: Option<u64>,
    /// With --cluster-codes: runs of a clustered copy longer than this are
    /// not scanned; the filtered walk is used (default 320000).
    #[arg(long)]
    pub clustered_max: Option<usize>,
    /// Fetch these payload fields of every hit (comma-separated, `*` for
    /// all), as a search with "include" does, and count it in the query's
    /// time; the report gives the document blocks read per query. Blocking
    /// threads, one unsharded index built with --docs.
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    /// With --server: what each query runs, spelled as `eval --methods`:
    /// dense, bm25, rrf[:K], weighted[:ALPHA[:minmax|zscore|dbsf]], dbsf.
    /// Every method runs at every list size, one after the other (their
    /// order turning by one at each list size), so that their numbers come
    /// from the same minutes of the machine's load.
    /// bm25 and the fused methods need --texts. recall@k is reported for
    /// dense runs only (the ground truth is of vectors); the report gives
    /// the node's time in each signal.
    #[arg(long, value_delimiter = ',', default_value = "dense")]
    pub methods: Vec<crate::eval::NamedMethod>,
    /// With --server: the query texts, in --queries order: JSON Lines (a
    /// BEIR queries.jsonl; each line's "text") or plain text, a query a
    /// line.
    #[arg(long, requires = "server")]
    pub texts: Option<PathBuf>,
    /// With --server and --texts, a node started with a model: dense and
    /// fused methods send the query's text instead of its vector, and the
    /// node embeds it (its embedding time is in the report's node_us).
    /// recall@k still counts against the ground truth of --queries, the
    /// reference vectors of the same texts.
    #[arg(long, requires = "texts")]
    pub embed: bool,
    /// Fused methods: hits each signal contributes before fusion (default:
    /// the node's, 64).
    #[arg(long, requires = "server")]
    pub candidates: Option<usize>,
    /// With --server, a node over an index built with --docs: its documents
    /// file (JSON Lines, or a BEIR corpus.jsonl), whose line i holds the id
    /// of base row i, so that the node's answers (the documents' own ids)
    /// count against the ground truth (base rows).
    #[arg(long, requires = "server")]
    pub corpus: Option<PathBuf>,
}

/// Measure answer quality: nDCG, recall and MRR against relevance judgments.
///
/// Where `bench` asks "did the search find the exact nearest neighbours?",
/// `eval` asks "are the passages it returns the right ones?", as BEIR
/// measures it. The data set is a folder in the BEIR layout:
///
///   corpus.jsonl     {"_id": "17", "title": "...", "text": "..."} per line
///   queries.jsonl    {"_id": "3", "text": "..."} per line
///   qrels/test.tsv   query-id<TAB>corpus-id<TAB>score (header line first;
///                    score 0 = not relevant, 1, 2, ... = more relevant)
///   base.fbin        corpus vectors, row i = line i of corpus.jsonl
///   query.fbin       query vectors, row i = line i of queries.jsonl
///
/// Build the index from the same folder, so that hits carry the corpus ids:
///
///   shardann build --docs DIR/corpus.jsonl --base DIR/base.fbin --metric cosine --out idx
///   shardann eval --dataset DIR --index idx --methods dense --report eval.json
///
/// Every query with judgments is searched once per method, one at a time
/// (queries without judgments are skipped, as pytrec_eval skips them).
/// Metrics are pytrec_eval's: nDCG@k with graded gains (ndcg_cut), recall@R
/// counting score >= 1 as relevant, MRR@k (recip_rank of the ranking cut to
/// k); each is the mean over the judged queries. Latency is the time to get
/// one query's ranking: both signals and the fusion for fused methods.
///
/// Methods:
///   dense               vector search alone (top R by distance)
///   bm25                BM25 alone (needs an index built with --text-fields)
///   rrf, rrf:K          reciprocal rank fusion of the dense and BM25 top
///                       --candidates: sum of 1/(K + rank), K = 60
///   weighted:A[:NORM]   A * dense + (1 - A) * BM25 after normalising each
///                       list (NORM: minmax (default), zscore, dbsf)
///   dbsf                weighted:0.5:dbsf (Qdrant's distribution-based fusion)
/// Embed the texts of a JSON Lines corpus with a sentence encoder.
///
/// Reads one document per line ({"id" or "_id", and the --field strings,
/// joined with a space}) and writes, in --out: vectors.fbin (row i = the
/// i-th document; blank lines are skipped, as build --docs skips them),
/// ids.jsonl (line i = its id) and embed.json (model, input and files, with
/// checksums; written last). The model is a local folder as
/// sentence-transformers saves it (bench-datasets/fetch_model.sh fetches
/// all-MiniLM-L6-v2). Vectors are mean-pooled and unit length.
///
/// Killed at any moment, the same command continues from its checkpoint
/// (embed.journal) and writes the same bytes as an uninterrupted run.
///
///   --part i/N    embed only part i (0-based) of N contiguous parts, into
///                 part-IIII-of-NNNN.{fbin,ids.jsonl,json}; run the N parts
///                 anywhere, bring the files into one folder, then
///   --merge DIR   join them into vectors.fbin, ids.jsonl and embed.json:
///                 the same bytes as one run.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct EmbedArgs {
    /// The model folder (config.json, model.safetensors, tokenizer.json, …).
    #[arg(long, required_unless_present = "merge")]
    pub model: Option<PathBuf>,
    /// The documents, JSON Lines.
    #[arg(long, required_unless_present = "merge", conflicts_with = "merge")]
    pub input: Option<PathBuf>,
    /// A field to embed (repeat for several: their strings are joined).
    #[arg(long = "field", default_value = "text")]
    pub fields: Vec<String>,
    /// The output folder.
    #[arg(long, required_unless_present = "merge")]
    pub out: Option<PathBuf>,
    /// Texts per batch (the output's bytes depend on it: keep it across
    /// resumes and parts; a changed value is refused). 16 was faster than
    /// 64 on manpages-dev (less padding: 97 % of the slots real, not 85 %).
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    pub batch: usize,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Word pieces per text, [CLS] and [SEP] included; longer texts are cut
    /// and counted. [default: the model's max_seq_length]
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Only part i of N (0 <= i < N), e.g. 3/8.
    #[arg(long, value_parser = parse_part)]
    pub part: Option<(usize, usize)>,
    /// Rows per window of the batch plan (texts are sorted by length inside
    /// a window; parts are whole windows). For tests.
    #[arg(long, default_value_t = shardann_engine::embed::plan::WINDOW, value_parser = at_least_one(), hide = true)]
    pub window: usize,
    /// Join the finished parts in this folder instead of embedding.
    #[arg(long, conflicts_with_all = ["part", "model"])]
    pub merge: Option<PathBuf>,
}

fn parse_part(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected i/N, e.g. 0/4"))?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: i is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("{s:?}: parts are numbered 0 to N-1 (N at least 1)"));
    }
    Ok((i, n))
}

#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct EvalArgs {
    /// The data set folder (BEIR layout, see above).
    #[arg(long)]
    pub dataset: PathBuf,
    /// The index, built with --docs from the data set's corpus.jsonl.
    #[arg(long, required_unless_present = "server", conflicts_with = "server")]
    pub index: Option<PathBuf>,
    /// Evaluate a running node instead: http://HOST:PORT, serving an index
    /// built from the data set's corpus (sharded or not). Every query is one
    /// POST /v1/search over HTTP/2 on a fresh connection; fused methods are
    /// fused by the node ("vector" + "text" + "fusion"). Latency is the
    /// node's own time to answer (took_us), without the connection.
    #[arg(long)]
    pub server: Option<String>,
    /// Comma-separated methods, each measured on its own.
    #[arg(long, value_delimiter = ',', default_value = "dense")]
    pub methods: Vec<crate::eval::NamedMethod>,
    /// Cut-off of nDCG and MRR.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    pub k: usize,
    /// Cut-off of recall (R); also how many hits each method returns.
    #[arg(long, default_value_t = 100, value_parser = at_least_one())]
    pub recall_at: usize,
    /// L of the dense search, at least the dense hits the methods ask for.
    /// [default: that many: the largest cut-off for dense, --candidates for
    /// fused methods]
    #[arg(long)]
    pub list: Option<usize>,
    /// W: nodes read per round trip to the disk.
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// Hits each signal contributes to a fused method before fusion.
    #[arg(long, default_value_t = 100, value_parser = at_least_one())]
    pub candidates: usize,
    /// Only the first N queries with judgments (for a quick look).
    #[arg(long, value_parser = at_least_one())]
    pub limit: Option<usize>,
    /// Write the JSON report here: per method the mean scores, latency and
    /// every query's scores.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// How `search` and `bench` read the index.
#[derive(Debug, Args, Clone)]
pub struct ReadArgs {
    /// Read through the page cache instead of O_DIRECT.
    #[arg(long)]
    pub buffered: bool,
    /// IO backend: uring (W reads in flight per query), pread (one at a
    /// time), or auto (uring if this system allows it, else pread).
    #[arg(long, default_value = "auto")]
    pub io: IoBackend,
    /// Nodes to keep in RAM: those that sample searches at open read most
    /// (whole sectors on a v2 index); searches visit them without IO
    /// (about record size × N bytes; opening runs about N/4 searches, at
    /// most 2048). With the navigation graph (--nav-points) searches start
    /// near the query, so few reads repeat across queries: on 1M points
    /// 10,000 nodes save 2–3 % of the reads, 50,000 nodes 9–11 %.
    #[arg(long, default_value_t = 0)]
    pub cache_nodes: usize,
    /// Points of the navigation graph built at open, a count (10000) or a
    /// share of the index's points (1%: at least 1,000, at most 100,000 points): a small
    /// graph over a sample, held in RAM with its vectors, whose points
    /// nearest a query are where the disk search starts instead of the
    /// medoid, so its first rounds of reads are skipped (1M sift-like
    /// points: 0.75x the reads at recall@10 0.95). 0 = none.
    #[arg(long, default_value = "1%", value_name = "N|P%")]
    pub nav_points: NavPoints,
    /// Filter fields to keep a copy of the PQ codes for, in each field's
    /// value order (comma-separated). A filter on one of them (a keyword,
    /// a range, or an $and holding one) then scores its matches as one
    /// contiguous run (measured at 1M points: 1.7x at 7.5-10 %, 1.9x at
    /// 15 %), for M + 4 bytes of RAM per entry (a point once per keyword it
    /// holds) and field.
    #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
    pub cluster_codes: Vec<String>,
    /// On a v2 index, read each node alone as in v1 instead of also using
    /// the other records of its sector: to measure what the layout gives.
    #[arg(long)]
    pub no_sector_mates: bool,
}

impl Default for ReadArgs {
    fn default() -> Self {
        ReadArgs {
            buffered: false,
            io: IoBackend::Auto,
            cache_nodes: 0,
            nav_points: NavPoints::default(),
            cluster_codes: Vec::new(),
            no_sector_mates: false,
        }
    }
}

impl ReadArgs {
    /// The engine's open options these flags stand for.
    pub fn open_options(&self) -> shardann_engine::index::OpenOptions {
        shardann_engine::index::OpenOptions {
            direct_io: !self.buffered,
            io: self.io,
            cache_nodes: self.cache_nodes,
            nav_points: self.nav_points,
        }
    }

    /// Opens the index at `dir` as these flags say.
    pub fn open(&self, dir: &std::path::Path) -> anyhow::Result<shardann_engine::index::DiskIndex> {
        use anyhow::Context;
        let mut idx = shardann_engine::shard::open(dir, self.open_options())
            .with_context(|| format!("opening index {}", dir.display()))?;
        idx.cluster_codes(&self.cluster_codes)
            .with_context(|| format!("--cluster-codes on {}", dir.display()))?;
        idx.set_sector_mates(!self.no_sector_mates);
        Ok(idx)
    }
}

/// Serve searches over HTTP/2 (prior knowledge) and HTTP/1.1 on one port.
///
/// One node of a cluster, configured by a node.toml:
///
///   node_id = "n1"
///   listen = "127.0.0.1:7001"
///   index_dir = "/data/idx"        # holds shard-0 … shard-N-1 and cluster.json
///   shards = [0, 1, 2, 3]          # the shards this node serves
///   [[peers]]
///   id = "n2"
///   address = "127.0.0.1:7002"
///   shards = [2, 3, 4, 5]
///
/// Any node answers for the whole index: it searches its own shards and asks
/// one replica of every other shard, retrying another replica when one fails;
/// when no replica answers the response says "partial": true and names the
/// missing shards. Without --config, --index DIR serves every shard of DIR (a
/// sharded or a plain index) on one node.
///
///   curl --http2-prior-knowledge -H 'content-type: application/json' \
///        -d '{"vector": [0, 1, ...], "k": 10}' http://127.0.0.1:7001/v1/search
///
/// With --model DIR (a sentence-transformers folder), a query may be text:
///
///   shardann serve --index idx --model models/all-MiniLM-L6-v2
///   curl --http2-prior-knowledge -H 'content-type: application/json' \
///        -d '{"text": "how do I list a directory", "k": 5, "include": ["text"]}' \
///        http://127.0.0.1:7001/v1/search
///
/// Endpoints: POST /v1/search, POST /v1/search/batch, GET /v1/shards,
/// GET /healthz, GET /metrics (Prometheus). Reference: server/openapi.yaml.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    /// The node's configuration file (node.toml).
    #[arg(long, conflicts_with = "index", required_unless_present = "index")]
    pub config: Option<PathBuf>,
    /// Serve every shard of this index directory on one node.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Address to listen on with --index (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7001", conflicts_with = "config")]
    pub listen: String,
    /// Executors, one per core (default: every core; overrides the config).
    #[arg(long)]
    pub executors: Option<usize>,
    /// The runtime (overrides the config): glommio (sockets and O_DIRECT
    /// reads through io_uring), epoll (sockets on epoll, O_DIRECT reads with
    /// pread on a thread pool: for containers whose seccomp profile blocks
    /// io_uring), or auto (glommio where io_uring can be set up, else epoll,
    /// said once on stderr).
    #[arg(long, value_name = "auto|glommio|epoll")]
    pub runtime: Option<shardann_server::rt::RuntimeChoice>,
    /// Nodes per local shard to keep in RAM (overrides the config).
    #[arg(long)]
    pub cache_nodes: Option<usize>,
    /// Points of each local shard's navigation graph, a count or a share
    /// (default 1%; overrides the config): see `search --help`.
    #[arg(long, value_name = "N|P%")]
    pub nav_points: Option<NavPoints>,
    /// Filter fields whose value order each local shard keeps a copy of
    /// the PQ codes in (comma-separated; overrides cluster_codes in the
    /// config): see `search --help`.
    #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
    pub cluster_codes: Option<Vec<String>>,
    /// Default per-request deadline in ms (overrides the config).
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// A sentence-transformers model folder (bench-datasets/fetch_model.sh
    /// fetches all-MiniLM-L6-v2): queries may then be plain text,
    /// `{"text": "..."}`, embedded by the node (overrides model_dir).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

/// Check every byte of an index against its segment manifest.
///
/// PATH is a shard directory (its current version is checked), a segment
/// directory (v0000000001/ …), or a sharded index (every shard's current
/// version). Each file's size and XXH3-64 checksum are compared with the
/// manifest, then the index is opened (header, PQ and id checksums). Exits
/// non-zero naming the file and the mismatch on the first problem.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub path: PathBuf,
}

/// Copy a shard's current version from a running node.
///
/// Fetches cluster.json (if DIR has none), the shard's segment manifest,
/// then every file it lists as zstd-compressed chunks over HTTP/2, into a
/// staging directory (DIR/shard-N/v….partial) that no search opens. An
/// interrupted copy resumes where it stopped. When every file's size and
/// XXH3-64 match the manifest, the version is sealed and made current
/// atomically: DIR/shard-N ends up exactly as a local build leaves it.
/// A version older than the local one is refused.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The node to copy from: http://HOST:PORT.
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub shard: u32,
    /// The index directory to copy into (holds cluster.json and shard-N/).
    #[arg(long)]
    pub index_dir: PathBuf,
    /// The cluster token, if the source node requires one.
    #[arg(long)]
    pub token: Option<String>,
    /// Attempts before giving up (with 0.5 s, 1 s, 2 s … between them).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
}

/// Print an index's header, build parameters and (optionally) one node.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(long)]
    pub index: PathBuf,
    /// Also decode this node's record.
    #[arg(long)]
    pub node: Option<u32>,
}

/// Write an existing index again in another disk.index layout, without
/// rebuilding its graph.
///
/// The output is a plain index directory with the same graph, vectors, PQ
/// codes and documents (node ids do not change), in layout v2 (each node's
/// graph neighbours in its sector; searches read fewer sectors) or v1. It
/// reads the source's disk.index whole into RAM.
///
///   shardann relayout --index idx --out idx-v2
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RelayoutArgs {
    /// The index to read (a plain index, a segment, or a shard directory).
    #[arg(long)]
    pub index: PathBuf,
    /// Directory to write the new plain index into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Layout::V2)]
    pub layout: Layout,
}

/// Generate a sift-like set, build an index, benchmark it: the whole
/// pipeline on a laptop-sized example. Reuses files from an earlier run.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for data and index.
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80,160")]
    pub list: Vec<usize>,
    /// Threads (0 = all cores), as in gen, build and bench.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Plan a deployment: shards, nodes, RAM and disk per node, build memory and
/// time per shard, and queries per second, for N points on nodes of a size.
///
/// Sizes of files and of what a node holds in RAM are exact (the same code
/// writes them); build time, reads per query and the disk's read rate are
/// rates measured on this project's development machine (printed with the
/// plan; each can be given instead, e.g. --disk-iops from `fio` on yours).
/// The shard count is the fewest whose build fits one node's memory and
/// whose search data fits with others on a node (80 % of RAM and disk).
///
/// Example: shardann plan --points 1e9 --dim 128 --type u8 --ram-per-node 24GiB --replicas 2
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Points in the whole corpus (1e9, 1000000000).
    #[arg(long, value_parser = parse_count)]
    pub points: u64,
    #[arg(long)]
    pub dim: u32,
    /// Element type of the vectors: u8, i8 or f32.
    #[arg(long = "type", default_value = "f32")]
    pub elem: ElemType,
    #[arg(long, default_value = "l2")]
    pub metric: Metric,
    #[arg(long, default_value_t = 32)]
    pub pq_bytes: u32,
    #[arg(long, default_value_t = 64)]
    pub max_degree: u32,
    #[arg(long, default_value_t = 100)]
    pub build_list: u32,
    #[arg(long, value_enum, default_value_t = Layout::V2)]
    pub layout: Layout,
    /// RAM of one node (64GiB, 24GiB, 512MiB, or bytes).
    #[arg(long, value_parser = parse_bytes)]
    pub ram_per_node: u64,
    /// Disk of one node, if it bounds the plan.
    #[arg(long, value_parser = parse_bytes)]
    pub disk_per_node: Option<u64>,
    /// Cores of one node [default: this machine's].
    #[arg(long)]
    pub cores: Option<u32>,
    /// Copies of every shard, on distinct nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// Nodes cached in RAM per shard (--cache-nodes of serve and bench).
    #[arg(long, default_value_t = 0)]
    pub cache_nodes: u64,
    /// Compressed payload bytes per document, if documents are stored.
    #[arg(long, default_value_t = 0)]
    pub docs_bytes_per_point: u64,
    /// Use this many shards instead of the fewest that fit.
    #[arg(long)]
    pub shards: Option<u64>,
    /// 4 KiB random reads per second one node's disk serves to searches
    /// (fio --rw=randread --bs=4k --iodepth=64 --direct=1 on the index
    /// file is an upper bound) [default: measured here].
    #[arg(long)]
    pub disk_iops: Option<f64>,
    /// Sector reads per query at recall@10 0.95 on 1M points, from
    /// `shardann bench` on your data [default: measured here].
    #[arg(long)]
    pub reads_per_query: Option<f64>,
    /// Build µs per point per core at 1M points, R 64, L 100, 128-d, from
    /// a `shardann build` on your machine [default: measured here].
    #[arg(long)]
    pub build_us_per_point: Option<f64>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `1e9`, `1000000000`, `10M`, `2.5B`: a count of points.
fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'b' | 'B' | 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count (1000000, 1e9, 10M, 2.5B)"))?;
    let v = v * mult;
    if !(1.0..=1.8e19).contains(&v) || v.fract() != 0.0 {
        return Err(format!(
            "{s:?}: a count must be a whole number of at least 1"
        ));
    }
    Ok(v as u64)
}

/// `24GiB`, `512MiB`, `64G`, `1.5TiB`, or bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (24GiB, 512MiB, 1e9)"))?;
    if v.is_nan() || v <= 0.0 || !(v * mult).is_finite() {
        return Err(format!("{s:?}: a size must be positive"));
    }
    Ok((v * mult) as u64)
}

/// A count that must be at least 1 (where 0 has no meaning, unlike the
/// `--threads 0` of "all cores"): refused by clap, naming the flag, rather
/// than quietly taken as 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

pub fn dispatch(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let q = cli.quiet;
    match cli.command {
        Command::Gen(a) => crate::data::gen(&a, q, out),
        Command::Groundtruth(a) => crate::data::groundtruth(&a, q, out),
        Command::Build(a) => crate::build::build(&a, q, out),
        Command::Search(a) => crate::search::search(&a, out),
        Command::Bench(a) => crate::bench::bench(&a, out).map(|_| ()),
        Command::Inspect(a) => crate::inspect::inspect(&a, out),
        Command::Eval(a) => crate::eval::eval(&a, out),
        Command::Embed(a) => crate::embed::embed(&a, q, out),
        Command::Serve(a) => crate::serve::serve(&a, out),
        Command::Verify(a) => crate::inspect::verify(&a, out),
        Command::Replicate(a) => crate::serve::replicate(&a, out),
        Command::Demo(a) => crate::demo::demo(&a, q, out),
        Command::Relayout(a) => crate::inspect::relayout(&a, q, out),
        Command::Plan(a) => crate::plan::plan(&a, out),
        Command::Upsert(a) => crate::writes::upsert(&a, q, out),
        Command::Delete(a) => crate::writes::delete(&a, q, out),
        Command::Merge(a) => crate::writes::merge(&a, out),
        Command::Churn(a) => crate::churn::churn(&a, out).map(|_| ()),
        Command::Cluster(ClusterCommand::Init(a)) => crate::cluster::init(&a, out),
        Command::Cluster(ClusterCommand::Status(a)) => crate::cluster::status(&a, out),
        Command::Cluster(ClusterCommand::Place(a)) => crate::cluster::place(&a, out),
        Command::Cluster(ClusterCommand::Drain(a)) => crate::cluster::drain(&a, out),
    }
}
