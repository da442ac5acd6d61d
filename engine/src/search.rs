//! Beam search over a disk-resident Vamana graph, as a state machine.
//!
//! ```text
//!            ┌──────────── candidate list (≤ L, by PQ distance) ◄─────────┐
//!            │                                                            │
//!  next_batch(): the W nearest unexpanded ids ──► caller reads their sectors
//!                                                            │
//!  visit(id, record): exact distance of its full vector ──► result pool   │
//!                     its unvisited neighbours, by PQ distance ───────────┘
//!  finish(k): the result pool sorted by exact distance, top k
//! ```
//!
//! In a version 2 index a sector holds graph neighbours of one another: the
//! driver hands over each sector it read ([`BeamSearch::take_mates`]), the
//! other records in it get exact distances and, when near enough to enter
//! the candidate list, are kept so that expanding them later costs no read.
//!
//! The search never touches a file: it says which nodes it needs and is fed
//! their records. A synchronous loop ([`crate::index::DiskIndex::search`])
//! and an async executor running many searches at once drive the same code.

use std::sync::Arc;

use roaring::RoaringBitmap;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::error::{Error, Result};
use crate::layout::{NodeRecord, SectorGeometry};
use crate::metric::{Element, Metric};
use crate::pq::{PqCodebook, QueryTable};

/// Per-query search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchParams {
    /// Results to return.
    pub k: usize,
    /// L: the candidate list size; larger is slower and more accurate.
    pub list: usize,
    /// W: nodes read per round; larger means fewer round trips, more IO.
    pub beam: usize,
}

impl SearchParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidParameter(m));
        if self.k == 0 {
            return bad("k must be at least 1".into());
        }
        if self.list < self.k {
            return bad(format!(
                "list size L = {} must be at least k = {}",
                self.list, self.k
            ));
        }
        if self.list > MAX_LIST {
            return bad(format!(
                "list size L = {} is above the limit of {MAX_LIST}",
                self.list
            ));
        }
        if self.beam == 0 || self.beam > 128 {
            return bad(format!(
                "beam width W must be in 1..=128, got {}",
                self.beam
            ));
        }
        Ok(())
    }
}

/// What one query cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SearchStats {
    /// Sectors read from the device.
    pub ios: u32,
    /// Rounds of reads (each up to W nodes).
    pub hops: u32,
    /// Nodes whose full record was examined.
    pub visited_nodes: u32,
    /// Of those, the ones served from the node cache without IO.
    pub cache_hits: u32,
    /// Of those, the ones whose record came in the sector read for another
    /// node, so cost no read of their own: a sector mate kept from an
    /// earlier read (version 2 layout), or a node of a round whose sector
    /// another node of the round read ([`crate::layout::SectorGeometry::shared_reads`]).
    pub sector_mates: u32,
    /// PQ distance evaluations.
    pub pq_distances: u32,
}

/// How one search visits the index, chosen from the filter's match count
/// by [`choose_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    /// No filter: the graph walk, every node a possible result.
    Graph,
    /// A graph walk that admits only matching nodes into the results (the
    /// others still route the walk), with the list size raised to `list`
    /// as fewer points match.
    FilteredGraph { list: usize },
    /// Few matches: the PQ code of every matching point is scored in RAM
    /// and the best `rerank` are read together and ranked by exact distance.
    Flat { rerank: usize },
    /// The matches lie in one run of a field's clustered copy of the PQ
    /// codes (`DiskIndex::cluster_codes`): the run's `scanned` codes are
    /// scored in order, as one contiguous slice, and the best `rerank`
    /// matches are read and ranked as in the flat plan.
    Clustered { rerank: usize, scanned: usize },
    /// Nothing matches: no work.
    Empty,
}

/// At or below this many matches a filtered search scores the matches' PQ
/// codes instead of walking the graph (the default; an index can be given
/// another with `DiskIndex::set_flat_max_matches`).
/// Scoring costs `matches × M` table lookups in RAM and one round of reads;
/// a filtered walk at 2–20 % selectivity needs a list several times longer
/// than unfiltered, so several times the reads. Measured at 1M points
/// (`gen --docs`, M = 32, 1,000 queries, 2 threads, each plan forced, two
/// interleaved rounds; flat at L=20, graph at the smallest L reaching
/// recall@10 ≥ 0.95): 100K matches, flat 272–276 QPS vs graph 155–168
/// (still 0.92 at L=80); 152K, flat 256–263 vs 220–234 (L=80); 200K,
/// flat 158–161 vs 165–173 (L=60); 512K, flat 137–153 vs 656–725 (L=40).
/// So the crossover is near 200K matches. (It was 125,000 before the
/// flat plan's scoring was made 1.5–3.5× faster, and 50,000 before that,
/// a guess from a 20K-point run.)
pub const FLAT_MAX_MATCHES: u64 = 200_000;

/// At selectivity ½ or more, the flat plan only up to this many matches:
/// a walk there costs about what an unfiltered one does, while scoring
/// grows with the matches. Measured on 100K sift-like points served over
/// HTTP (1 shard, 2 executors, 8 in flight, L=20): with 95K matching (5 %
/// deleted by writes) the flat plan ran 1,094 QPS, the walk 3,917 at
/// recall@10 0.97-0.99; at 1M, 512K matching, 137-153 against 656-725
/// (above). The bound is where the flat plan's scoring (~73 ns a match,
/// from the 1M runs) reaches an unfiltered walk's time.
pub const FLAT_MAX_MATCHES_HALF: u64 = 20_000;

/// Chooses how to search for a filter matching `matches` of `total` points.
///
/// The list-size rule for filtered walks is DiskANN's (its Rust filter
/// search): ×1 from 50 % selectivity up, ×2 from 10 %, ×2^(−log10 s) below.
pub fn choose_plan(matches: u64, total: u64, params: SearchParams, flat_max: u64) -> Plan {
    if matches == 0 || total == 0 {
        return Plan::Empty;
    }
    let s = matches as f64 / total as f64;
    let flat_max = if s >= 0.5 {
        flat_max.min(FLAT_MAX_MATCHES_HALF)
    } else {
        flat_max
    };
    if matches <= flat_max && matches < total {
        return Plan::Flat {
            rerank: params.list.max(params.k),
        };
    }
    if matches == total {
        return Plan::Graph;
    }
    let scale = if s >= 0.5 {
        1.0
    } else if s >= 0.1 {
        2.0
    } else {
        2f64.powf(-s.log10())
    };
    let list = ((params.list as f64 * scale).ceil() as usize).clamp(params.list, MAX_LIST);
    Plan::FilteredGraph { list }
}

/// Most entries of a clustered run (a field's copy of the codes in value
/// order, see [`Plan::Clustered`]) scored for one query: beyond it the
/// filtered walk is used. A run's codes are read in order, so the cache
/// lines come in at the memory's streaming speed instead of one miss per
/// match as in the flat plan; what is left is ~14 ns of lookups per code.
/// Measured at 1M points (M = 32, 2 threads, smallest L reaching recall@10
/// 0.95, QPS of two rounds): 300K entries (`ts < 3·10^5`), clustered
/// 412–442 vs the filtered walk 403–404; 512K (`label = l1`), clustered
/// 300 (forced) vs the walk 637. The crossover is a little above 300K.
pub const CLUSTERED_MAX_ENTRIES: usize = 320_000;

/// A run that holds non-matches too (the filter is an `$and` of the run's
/// condition and others) is scanned only when at least this share of its
/// entries match (in percent); each entry is then checked against the
/// filter's bitmap. Measured at 1M points (L=20, 2 threads, QPS of two
/// interleaved rounds): `label = l1 AND ts < 2·10^5` scanned as the ts run
/// (200K entries, 51 % matching) ran at 0.6× the flat plan (336/341 vs
/// 560/552): the check (a bitmap lookup and a branch the CPU cannot
/// predict) costs more per entry than the gather it saves;
/// `ts < 2·10^5 AND label ≠ l35` (99.9 % matching) at 1.15–1.24× (313/311
/// vs 273/251). The threshold lies between.
pub const CLUSTERED_MIN_MATCH_PERCENT: u64 = 80;

/// [`choose_plan`], given also a run of a clustered copy of the codes that
/// holds every match: `run_len` entries, `exact` when it holds nothing
/// else. The run is scanned when it is short enough
/// ([`CLUSTERED_MAX_ENTRIES`]) and, if not exact, dense enough in matches
/// ([`CLUSTERED_MIN_MATCH_PERCENT`]).
pub fn choose_plan_clustered(
    matches: u64,
    total: u64,
    params: SearchParams,
    flat_max: u64,
    run_len: usize,
    exact: bool,
    clustered_max: usize,
) -> Plan {
    let plan = choose_plan(matches, total, params, flat_max);
    let dense = exact
        || (run_len as u64).saturating_mul(CLUSTERED_MIN_MATCH_PERCENT)
            <= matches.saturating_mul(100);
    match plan {
        Plan::Flat { .. } | Plan::FilteredGraph { .. } if run_len <= clustered_max && dense => {
            Plan::Clustered {
                rerank: params.list.max(params.k),
                scanned: run_len,
            }
        }
        other => other,
    }
}

/// Matches per block of the flat plan: the next block's codes are
/// prefetched while this block's are scored. Scoring codes one after
/// another without it waits on each one's cache miss in turn: perf at 1M
/// points put 80 % of the flat plan's time on the first load of each
/// code.
const SCORE_BLOCK: usize = 64;

/// Fills `block` from `ids`; returns how many it holds.
fn fill(block: &mut [u32; SCORE_BLOCK], ids: &mut impl Iterator<Item = u32>) -> usize {
    let mut len = 0;
    for (slot, id) in block.iter_mut().zip(ids) {
        *slot = id;
        len += 1;
    }
    len
}

/// The largest list size a search accepts.
pub const MAX_LIST: usize = 100_000;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Hit {
    pub id: u32,
    pub distance: f32,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    dist: f32,
    id: u32,
    expanded: bool,
}

/// Nearest first; ties by id, so every order is deterministic.
fn by_dist(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.dist.total_cmp(&b.dist).then(a.id.cmp(&b.id))
}

/// The reusable state of one search; keep one per thread (or per in-flight
/// query) and call [`BeamSearch::start`] for each query.
pub struct BeamSearch<T: Element> {
    metric: Metric,
    params: SearchParams,
    query: Vec<T>,
    table: QueryTable,
    candidates: Vec<Candidate>,
    visited: FxHashSet<u32>,
    results: Vec<Hit>,
    batch: Vec<u32>,
    unpacked: Vec<T>,
    new_ids: Vec<u32>,
    new_dists: Vec<f32>,
    /// Only these nodes may be results (a filtered search).
    admit: Option<Arc<RoaringBitmap>>,
    /// Flat plan: visit the candidates, never their neighbours, all of them
    /// in one batch.
    flat: bool,
    /// Version 2 geometry when sector mates are used ([`Self::use_sector_mates`]).
    mates: Option<SectorGeometry>,
    /// Records of sector mates that entered the candidate list, by id: the
    /// offset of each in `held_bytes`.
    held: FxHashMap<u32, usize>,
    held_bytes: Vec<u8>,
    /// Where in the sector each of `new_ids` is (sector mates).
    mate_offsets: Vec<usize>,
    pub stats: SearchStats,
}

impl<T: Element> Default for BeamSearch<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> BeamSearch<T> {
    pub fn new() -> Self {
        BeamSearch {
            metric: Metric::L2,
            params: SearchParams {
                k: 10,
                list: 10,
                beam: 1,
            },
            query: Vec::new(),
            table: QueryTable::new(),
            candidates: Vec::new(),
            visited: FxHashSet::default(),
            results: Vec::new(),
            batch: Vec::new(),
            unpacked: Vec::new(),
            new_ids: Vec::new(),
            new_dists: Vec::new(),
            admit: None,
            flat: false,
            mates: None,
            held: FxHashMap::default(),
            held_bytes: Vec::new(),
            mate_offsets: Vec::new(),
            stats: SearchStats::default(),
        }
    }

    /// Makes the following searches use the other records of every sector
    /// they read (`Some` geometry of a version 2 index), or not (`None`:
    /// each read serves its one node, as in version 1). The choice stays
    /// until changed: `DiskIndex::start_search` makes it for its index on
    /// every search, so one scratch can serve several indexes.
    pub fn use_sector_mates(&mut self, geometry: Option<&SectorGeometry>) {
        // A clone shares the slot table (an `Arc`); comparing geometries
        // would compare the tables, megabytes per query.
        self.mates = geometry
            .filter(|g| g.order() == crate::layout::NodeOrder::Locality)
            .cloned();
    }

    /// Begins a search for `query` from `entries` (the medoid, or the
    /// navigation graph's nearest points: [`crate::navigation`]).
    pub fn start(
        &mut self,
        pq: &PqCodebook,
        codes: &[u8],
        entries: &[u32],
        query: &[T],
        params: SearchParams,
    ) {
        self.metric = pq.metric();
        self.params = params;
        self.query.clear();
        self.query.extend_from_slice(query);
        self.table.prepare(pq, query);
        self.candidates.clear();
        self.visited.clear();
        self.results.clear();
        self.batch.clear();
        self.admit = None;
        self.flat = false;
        self.held.clear();
        self.held_bytes.clear();
        self.stats = SearchStats::default();
        let m = pq.num_chunks();
        for &entry in entries {
            if !self.visited.insert(entry) {
                continue;
            }
            let start = entry as usize * m;
            let dist = codes
                .get(start..start + m)
                .map_or(f32::INFINITY, |c| self.table.distance(c));
            self.stats.pq_distances += 1;
            self.candidates.push(Candidate {
                dist,
                id: entry,
                expanded: false,
            });
        }
        self.candidates.sort_by(by_dist);
        self.candidates.truncate(params.list.max(1));
    }

    /// Begins a search for `query` among the nodes of `filter` only, with
    /// the plan [`choose_plan`] picks for its match count. `total` is the
    /// index's point count, `flat_max` the most matches scored flat. The drivers then call `next_batch` / `visit` /
    /// `finish` as for any search; a flat plan asks for all its nodes in
    /// one batch.
    #[allow(clippy::too_many_arguments)]
    pub fn start_filtered(
        &mut self,
        pq: &PqCodebook,
        codes: &[u8],
        entries: &[u32],
        total: u64,
        query: &[T],
        params: SearchParams,
        filter: Arc<RoaringBitmap>,
        flat_max: u64,
    ) -> Plan {
        let plan = choose_plan(filter.len(), total, params, flat_max);
        match plan {
            Plan::Graph => self.start(pq, codes, entries, query, params),
            Plan::FilteredGraph { list } => {
                self.start(pq, codes, entries, query, SearchParams { list, ..params });
                self.admit = Some(filter);
            }
            // `choose_plan` never picks `Clustered` (there is no run
            // here): were it to, the flat plan finds the same points.
            Plan::Empty | Plan::Flat { .. } | Plan::Clustered { .. } => {
                self.start(pq, codes, entries, query, params);
                self.candidates.clear();
                self.flat = true;
                self.admit = Some(filter.clone());
                if let Plan::Flat { rerank } | Plan::Clustered { rerank, .. } = plan {
                    self.score_all(codes, pq.num_chunks(), &filter, rerank);
                }
            }
        }
        plan
    }

    /// Begins a search for `query` among the nodes of `filter`, whose
    /// matches all lie in one run of a clustered copy of the codes:
    /// `run_codes` (`M` bytes per entry) for the nodes `run_docs`. `exact`:
    /// every entry matches; otherwise each is checked against `filter`.
    /// Returns the plan [`choose_plan_clustered`] picks; when it is not
    /// [`Plan::Clustered`], the search is started as [`Self::start_filtered`]
    /// would.
    #[allow(clippy::too_many_arguments)]
    pub fn start_clustered(
        &mut self,
        pq: &PqCodebook,
        codes: &[u8],
        entries: &[u32],
        total: u64,
        query: &[T],
        params: SearchParams,
        filter: Arc<RoaringBitmap>,
        flat_max: u64,
        run: (&[u8], &[u32], bool),
        clustered_max: usize,
    ) -> Plan {
        let (run_codes, run_docs, exact) = run;
        let plan = choose_plan_clustered(
            filter.len(),
            total,
            params,
            flat_max,
            run_docs.len(),
            exact,
            clustered_max,
        );
        let Plan::Clustered { rerank, .. } = plan else {
            return self.start_filtered(pq, codes, entries, total, query, params, filter, flat_max);
        };
        self.start(pq, codes, entries, query, params);
        self.candidates.clear();
        self.flat = true;
        self.score_run(
            run_codes,
            run_docs,
            pq.num_chunks(),
            (!exact).then_some(&*filter),
            rerank,
        );
        self.admit = Some(filter);
        plan
    }

    /// Clustered plan: scores the run's codes in order (skipping entries
    /// not in `check`, when given); the `rerank` nearest become the
    /// candidates. As [`Self::score_all`], but the codes are contiguous, so
    /// the hardware prefetcher streams them and no prefetch is issued.
    fn score_run(
        &mut self,
        codes: &[u8],
        docs: &[u32],
        m: usize,
        check: Option<&RoaringBitmap>,
        rerank: usize,
    ) {
        let rerank = rerank.max(1);
        let cap = (rerank * 8).max(1024);
        // Ids come in value order, not id order: a tie with the bound may
        // rank before it, so ties are kept and the cut-back decides.
        let mut bound = f32::INFINITY;
        let mut scored = 0u32;
        self.candidates.clear();
        for (&id, code) in docs.iter().zip(codes.chunks_exact(m.max(1))) {
            if check.is_some_and(|f| !f.contains(id)) {
                continue;
            }
            scored += 1;
            let dist = self.table.distance(code);
            if dist <= bound || dist.is_nan() {
                self.candidates.push(Candidate {
                    dist,
                    id,
                    expanded: false,
                });
                if self.candidates.len() >= cap {
                    self.candidates.select_nth_unstable_by(rerank - 1, by_dist);
                    self.candidates.truncate(rerank);
                    bound = self.candidates[rerank - 1].dist;
                }
            }
        }
        self.stats.pq_distances += scored;
        if self.candidates.len() > rerank {
            self.candidates.select_nth_unstable_by(rerank - 1, by_dist);
            self.candidates.truncate(rerank);
        }
        // A run is one keyword's posting list or a slice of a numeric
        // column: each document at most once, no repeats to drop.
        self.candidates.sort_by(by_dist);
    }

    /// Flat plan: the `rerank` matching nodes nearest by PQ distance become
    /// the candidates.
    ///
    /// The matches are scored straight from the bitmap, and only those
    /// nearer than the current `rerank`-th best are kept: a buffer of a
    /// few times `rerank` that is cut back to `rerank` when full. Before,
    /// all ids, then all distances, then all candidates were collected and
    /// one `select_nth` ran over them: three passes over 100K-entry arrays
    /// per query, and a prefetch pass over the codes that was evicted from
    /// the cache before the scoring pass came to it.
    fn score_all(&mut self, codes: &[u8], m: usize, filter: &RoaringBitmap, rerank: usize) {
        let rerank = rerank.max(1);
        let cap = (rerank * 8).max(1024);
        let coded = (codes.len() / m.max(1)) as u32;
        // Distance of the `rerank`-th best so far. Ids come in ascending
        // order, so a later id at an equal distance ranks after it.
        let mut bound = f32::INFINITY;
        let mut scored = 0u32;
        self.candidates.clear();
        let mut ids = filter.iter().take_while(|&id| id < coded);
        // Two blocks of ids: the codes of the next are fetched into the
        // cache while this one's are scored.
        let mut this = [0u32; SCORE_BLOCK];
        let mut next = [0u32; SCORE_BLOCK];
        let mut this_len = fill(&mut this, &mut ids);
        crate::pq::prefetch_codes(codes, m, &this[..this_len]);
        while this_len > 0 {
            let next_len = fill(&mut next, &mut ids);
            crate::pq::prefetch_codes(codes, m, &next[..next_len]);
            for &id in &this[..this_len] {
                let start = id as usize * m;
                let dist = self.table.distance(&codes[start..start + m]);
                // A NaN is kept: the sort below places it last.
                if dist < bound || dist.is_nan() {
                    self.candidates.push(Candidate {
                        dist,
                        id,
                        expanded: false,
                    });
                    if self.candidates.len() >= cap {
                        self.candidates.select_nth_unstable_by(rerank - 1, by_dist);
                        self.candidates.truncate(rerank);
                        bound = self.candidates[rerank - 1].dist;
                    }
                }
            }
            scored += this_len as u32;
            std::mem::swap(&mut this, &mut next);
            this_len = next_len;
        }
        self.stats.pq_distances += scored;
        if self.candidates.len() > rerank {
            self.candidates.select_nth_unstable_by(rerank - 1, by_dist);
            self.candidates.truncate(rerank);
        }
        self.candidates.sort_by(by_dist);
    }

    /// The next nodes to read (marked expanded); empty when the search is
    /// done. Candidates whose record an earlier read brought along are
    /// expanded here, in candidate order, without a read.
    pub fn next_batch(&mut self, codes: &[u8]) -> Result<&[u32]> {
        self.batch.clear();
        let limit = if self.flat {
            usize::MAX
        } else {
            self.params.beam
        };
        loop {
            let mut free = None;
            for c in self.candidates.iter_mut() {
                if self.batch.len() >= limit {
                    break;
                }
                if !c.expanded {
                    c.expanded = true;
                    if self.held.contains_key(&c.id) {
                        free = Some(c.id);
                        break;
                    }
                    self.batch.push(c.id);
                }
            }
            match free {
                Some(id) => self.expand_held(id, codes)?,
                None => break,
            }
        }
        if !self.batch.is_empty() {
            self.stats.hops += 1;
        }
        Ok(&self.batch)
    }

    /// Expands a held sector mate from its kept record. A record that
    /// does not decode goes into the batch instead: the driver then reads
    /// it and reports the corruption with the file's name.
    fn expand_held(&mut self, id: u32, codes: &[u8]) -> Result<()> {
        // Not held after all (cannot happen: only held ids come here):
        // read it like any other candidate. The mates' geometry is taken
        // only once the record is known to be held, or it would be lost.
        let Some(at) = self.held.remove(&id) else {
            self.batch.push(id);
            return Ok(());
        };
        let Some(geometry) = self.mates.take() else {
            self.batch.push(id);
            return Ok(());
        };
        let bytes = std::mem::take(&mut self.held_bytes);
        let m = self.table.num_chunks();
        let result = match bytes
            .get(at..at + geometry.record_bytes)
            .map(|rec| geometry.decode_record(id, rec))
        {
            Some(Ok(record)) => {
                self.stats.sector_mates += 1;
                self.visit(id, &record, codes, m)
            }
            _ => {
                self.batch.push(id);
                Ok(())
            }
        };
        self.held_bytes = bytes;
        self.mates = Some(geometry);
        result
    }

    /// Takes the other records of the sector just read for `node`
    /// (`sector`: the bytes read; version 2 only, a no-op otherwise): each
    /// gets its exact distance (a possible result), and one near enough by
    /// PQ distance to enter the candidate list is kept, so that
    /// [`Self::next_batch`] expands it without reading it.
    ///
    /// This runs for every record of every sector read (9 per read on 1M
    /// 128-d points), so it does the least it can: no decoding (a kept
    /// record is decoded when expanded), no set of scored nodes (a node
    /// scored twice is one result after [`sort_hits`]), and the PQ codes of
    /// all new mates fetched together.
    pub fn take_mates(&mut self, node: u32, sector: &[u8], codes: &[u8]) {
        if self.flat {
            return;
        }
        let Some(geometry) = self.mates.take() else {
            return;
        };
        self.new_ids.clear();
        self.mate_offsets.clear();
        let base = sector.as_ptr() as usize;
        for (id, rec) in geometry.mates(node, sector) {
            let Some(dist) = self.exact_distance(rec.get(..geometry.vector_bytes).unwrap_or(&[]))
            else {
                continue;
            };
            if self.admit.as_ref().is_none_or(|f| f.contains(id)) {
                self.results.push(Hit { id, distance: dist });
            }
            let offset = rec.as_ptr() as usize - base;
            if self.visited.insert(id) {
                self.new_ids.push(id);
                self.mate_offsets.push(offset);
            } else if !self.held.contains_key(&id)
                && self.candidates.iter().any(|c| c.id == id && !c.expanded)
            {
                self.hold(id, sector, offset, geometry.record_bytes);
            }
        }
        self.table
            .distances(codes, &self.new_ids, &mut self.new_dists);
        self.stats.pq_distances += self.new_ids.len() as u32;
        for i in 0..self.new_ids.len() {
            let (id, dist, offset) = (self.new_ids[i], self.new_dists[i], self.mate_offsets[i]);
            if self.insert_candidate(id, dist) {
                self.hold(id, sector, offset, geometry.record_bytes);
            }
        }
        self.mates = Some(geometry);
    }

    /// Keeps the record at `offset` of `sector` for `id`.
    fn hold(&mut self, id: u32, sector: &[u8], offset: usize, len: usize) {
        if let Some(rec) = sector.get(offset..offset + len) {
            self.held.insert(id, self.held_bytes.len());
            self.held_bytes.extend_from_slice(rec);
        }
    }

    /// The exact distance from the query to a vector's bytes; `None` if
    /// its length is not the query's.
    fn exact_distance(&mut self, bytes: &[u8]) -> Option<f32> {
        let vector: &[T] = match bytemuck::try_cast_slice(bytes) {
            Ok(v) => v,
            Err(_) => {
                self.unpacked.clear();
                self.unpacked.extend(
                    bytes
                        .chunks_exact(std::mem::size_of::<T>())
                        .map(bytemuck::pod_read_unaligned::<T>),
                );
                &self.unpacked
            }
        };
        (vector.len() == self.query.len()).then(|| self.metric.distance(&self.query, vector))
    }

    /// Inserts a candidate if it is among the `L` nearest; says whether it
    /// was.
    fn insert_candidate(&mut self, id: u32, dist: f32) -> bool {
        let l = self.params.list;
        if self.candidates.len() >= l && self.candidates.last().is_some_and(|w| dist >= w.dist) {
            return false;
        }
        let pos = self.candidates.partition_point(|c| c.dist < dist);
        self.candidates.insert(
            pos,
            Candidate {
                dist,
                id,
                expanded: false,
            },
        );
        self.candidates.truncate(l);
        true
    }

    /// Feeds the record of a node returned by [`BeamSearch::next_batch`].
    pub fn visit(
        &mut self,
        node: u32,
        record: &NodeRecord<'_>,
        codes: &[u8],
        m: usize,
    ) -> Result<()> {
        let vector: &[T] = match bytemuck::try_cast_slice(record.vector) {
            Ok(v) => v,
            Err(_) => {
                // Unaligned (only possible for a hand-made buffer): copy.
                self.unpacked.clear();
                self.unpacked.extend(
                    record
                        .vector
                        .chunks_exact(std::mem::size_of::<T>())
                        .map(bytemuck::pod_read_unaligned::<T>),
                );
                &self.unpacked
            }
        };
        if vector.len() != self.query.len() {
            return Err(Error::DimensionMismatch {
                what: format!("node {node}'s record"),
                expected: self.query.len(),
                got: vector.len(),
            });
        }
        if self.admit.as_ref().is_none_or(|f| f.contains(node)) {
            self.results.push(Hit {
                id: node,
                distance: self.metric.distance(&self.query, vector),
            });
        }
        self.stats.visited_nodes += 1;
        if self.flat {
            return Ok(());
        }

        self.new_ids.clear();
        for nb in record.neighbors() {
            if self.visited.insert(nb) {
                self.new_ids.push(nb);
            }
        }
        debug_assert_eq!(m, self.table.num_chunks());
        self.table
            .distances(codes, &self.new_ids, &mut self.new_dists);
        self.stats.pq_distances += self.new_ids.len() as u32;
        let (ids, dists) = (
            std::mem::take(&mut self.new_ids),
            std::mem::take(&mut self.new_dists),
        );
        for (&id, &dist) in ids.iter().zip(&dists) {
            self.insert_candidate(id, dist);
        }
        (self.new_ids, self.new_dists) = (ids, dists);
        Ok(())
    }

    /// The `k` nearest of all visited nodes, by exact distance.
    pub fn finish(&mut self) -> Vec<Hit> {
        sort_hits(&mut self.results);
        self.results.iter().take(self.params.k).copied().collect()
    }
}

/// Orders hits nearest first (ties: smaller id first) and drops repeated
/// ids: the order every result list, one index's or merged shards', is in.
pub fn sort_hits(hits: &mut Vec<Hit>) {
    hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    hits.dedup_by_key(|h| h.id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Vectors;
    use crate::pq::PqParams;
    use crate::progress::NoProgress;
    use crate::synth::{generate_u8, Stream};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const POINTS: usize = 6_000;

    /// A codebook with a chunk count that is not a multiple of four (the
    /// table's unrolled sum has a tail), and the codes of 6,000 points.
    fn coded() -> &'static (PqCodebook, Vec<u8>, Vec<u8>) {
        static CODED: OnceLock<(PqCodebook, Vec<u8>, Vec<u8>)> = OnceLock::new();
        CODED.get_or_init(|| {
            let base = generate_u8(POINTS, 3, Stream::Base);
            let data: Vec<f32> = base.iter().map(|&x| f32::from(x)).collect();
            let v = Vectors::new(&data[..], 128);
            let p = PqParams {
                num_chunks: 18,
                train_sample: 2_000,
                iterations: 3,
                seed: 4,
            };
            let pq = PqCodebook::train(v, Metric::L2, &p, &NoProgress).unwrap();
            let codes = pq.encode_all(v, &NoProgress);
            let queries = generate_u8(8, 3, Stream::Query);
            (pq, codes, queries)
        })
    }

    #[test]
    fn the_flat_plan_is_for_few_matches_or_low_selectivity() {
        let p = SearchParams {
            k: 10,
            list: 20,
            beam: 4,
        };
        let flat = Plan::Flat { rerank: 20 };
        // Low selectivity: flat up to FLAT_MAX_MATCHES.
        assert_eq!(choose_plan(100_000, 1_000_000, p, FLAT_MAX_MATCHES), flat);
        assert_eq!(choose_plan(150, 3_000, p, FLAT_MAX_MATCHES), flat);
        // Half or more of the points (a few deleted by writes): the walk,
        // unless the matches are few.
        assert_eq!(
            choose_plan(95_000, 100_000, p, FLAT_MAX_MATCHES),
            Plan::FilteredGraph { list: 20 }
        );
        assert_eq!(choose_plan(19_000, 20_000, p, FLAT_MAX_MATCHES), flat);
        assert_eq!(choose_plan(100, 100, p, FLAT_MAX_MATCHES), Plan::Graph);
    }

    #[test]
    fn clustered_runs_are_scanned_when_short_and_dense() {
        let p = SearchParams {
            k: 10,
            list: 20,
            beam: 4,
        };
        let pick = |matches, run, exact, max| {
            choose_plan_clustered(matches, 1_000_000, p, 200_000, run, exact, max)
        };
        let clustered = |run| Plan::Clustered {
            rerank: 20,
            scanned: run,
        };
        // An exact run: scanned up to the limit, instead of the flat plan
        // or the filtered walk.
        assert_eq!(pick(1_000, 1_000, true, 400_000), clustered(1_000));
        assert_eq!(pick(300_000, 300_000, true, 320_000), clustered(300_000));
        assert_eq!(
            pick(500_000, 500_000, true, 320_000),
            Plan::FilteredGraph { list: 20 }
        );
        // A checked run: only when mostly matches (CLUSTERED_MIN_MATCH_PERCENT).
        assert_eq!(pick(160_000, 200_000, false, 400_000), clustered(200_000));
        assert_eq!(
            pick(150_000, 200_000, false, 400_000),
            Plan::Flat { rerank: 20 }
        );
        // Nothing to scan, or everything matches: no run.
        assert_eq!(pick(0, 0, true, 400_000), Plan::Empty);
        assert_eq!(pick(1_000_000, 1_000_000, true, usize::MAX), Plan::Graph);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The flat plan keeps exactly the `list` matches that are nearest
        /// by PQ distance (ties by id), however many matches there are: the
        /// bounded buffer's cut-backs lose none of them.
        #[test]
        fn flat_plan_keeps_the_nearest_matches(
            picks in proptest::collection::vec(0u32..POINTS as u32, 1..4_000),
            list in 1usize..60,
            q in 0usize..8,
        ) {
            let (pq, codes, queries) = coded();
            let query = &queries[q * 128..(q + 1) * 128];
            let filter: RoaringBitmap = picks.iter().copied().collect();
            let params = SearchParams { k: 1, list, beam: 4 };
            let mut s = BeamSearch::<u8>::new();
            let plan = s.start_filtered(
                pq, codes, &[0], POINTS as u64, query, params, Arc::new(filter.clone()), u64::MAX,
            );
            prop_assert_eq!(plan, Plan::Flat { rerank: list });
            let mut naive: Vec<(f32, u32)> = filter
                .iter()
                .map(|id| {
                    let m = pq.num_chunks();
                    (s.table.distance(&codes[id as usize * m..][..m]), id)
                })
                .collect();
            naive.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            naive.truncate(list);
            let kept: Vec<(f32, u32)> = s.candidates.iter().map(|c| (c.dist, c.id)).collect();
            prop_assert_eq!(kept, naive);
            prop_assert_eq!(s.stats.pq_distances as u64, filter.len() + 1);
        }

        /// The clustered plan keeps the same `list` matches as the flat one,
        /// whatever order the run holds them in; a checked run (one that
        /// also holds non-matches) scores only the matches.
        #[test]
        fn clustered_plan_keeps_the_nearest_matches(
            picks in proptest::collection::vec(0u32..POINTS as u32, 1..4_000),
            extra in proptest::collection::vec(0u32..POINTS as u32, 0..2_000),
            seed in any::<u64>(),
            list in 1usize..60,
            q in 0usize..8,
        ) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let (pq, codes, queries) = coded();
            let m = pq.num_chunks();
            let query = &queries[q * 128..(q + 1) * 128];
            let filter: RoaringBitmap = picks.iter().copied().collect();
            // The run: the matches, plus (when `extra` is not empty) some
            // non-matches, in a random order, each point once.
            let mut run_docs: Vec<u32> = filter.iter().collect();
            let others: RoaringBitmap = extra.iter().copied().collect::<RoaringBitmap>() - &filter;
            // Mostly matches (CLUSTERED_MIN_MATCH_PERCENT), or the planner
            // (rightly) prefers the flat plan.
            let room = filter.len() as usize * (100 - CLUSTERED_MIN_MATCH_PERCENT as usize)
                / CLUSTERED_MIN_MATCH_PERCENT as usize;
            run_docs.extend(others.iter().take(room));
            let exact = run_docs.len() == filter.len() as usize;
            run_docs.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let run_codes: Vec<u8> = run_docs
                .iter()
                .flat_map(|&id| codes[id as usize * m..][..m].iter().copied())
                .collect();
            let params = SearchParams { k: 1, list, beam: 4 };
            let filter = Arc::new(filter);
            let mut flat = BeamSearch::<u8>::new();
            flat.start_filtered(pq, codes, &[0], POINTS as u64, query, params, filter.clone(), u64::MAX);
            let mut s = BeamSearch::<u8>::new();
            let plan = s.start_clustered(
                pq, codes, &[0], POINTS as u64, query, params, filter.clone(), u64::MAX,
                (&run_codes, &run_docs, exact), usize::MAX,
            );
            prop_assert_eq!(plan, Plan::Clustered { rerank: list, scanned: run_docs.len() });
            let kept: Vec<(f32, u32)> = s.candidates.iter().map(|c| (c.dist, c.id)).collect();
            let want: Vec<(f32, u32)> = flat.candidates.iter().map(|c| (c.dist, c.id)).collect();
            prop_assert_eq!(kept, want);
            prop_assert_eq!(s.stats.pq_distances as u64, filter.len() + 1);
        }
    }
}
