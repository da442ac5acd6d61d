//! A shard's mutable part: the documents written since its segment was
//! sealed, and the segment's documents they delete or replace
//! (FreshDiskANN's RW index and delete list, over shardann's segments).
//!
//! ```text
//!  upsert/delete batch ──check (dim, ids, filter kinds)──► Wal::append (one record)
//!        │                                                   │
//!        │                       apply, in LSN order ◄───────┘
//!        ▼                                                   
//!  MutableGraph (new vectors) · payloads · key → id · dead ids · shadowed keys
//!        │                                    │
//!  search(query, filter) ─► hits with ids     └─► segment_deletes(segment): the
//!                                                 segment-local ids no answer may hold
//! ```
//!
//! A write is checked whole before anything of it is logged, then logged as
//! one record, then applied; the caller acknowledges it after
//! [`MutablePart::sync`]. Applied writes are visible to searches at once,
//! so a search may see a write a few milliseconds before it is durable; a
//! crash in that window loses only writes never acknowledged.
//!
//! The segment's own files are never touched: a deleted or replaced segment
//! document is remembered by its key (`shadowed`), and the segment-local
//! ids to leave out are looked up per segment version, so the part stays
//! valid when the shard swaps to another version of the same segment.
//! Opening replays the log: the part after a restart is the part before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{Map, Value};

use crate::docs::{Include, UserId};
use crate::error::{Error, Result, WriteError};
use crate::filter::{Filter, FilterIndexBuilder};
use crate::index::DiskIndex;
use crate::metric::{Element, Metric};
use crate::vamana::{MutableGraph, VamanaParams};
use crate::wal::{Durability, Op, Wal, WalStats};

/// The log's file name in a shard directory (beside `CURRENT`).
pub const WAL_FILE: &str = "wal.log";

/// A logged record: its LSN and its ops.
pub type Record<T> = (u64, Vec<Op<T>>);

/// Limits and durability of a mutable part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MutableOptions {
    pub durability: Durability,
    /// Documents in one write request, at most.
    pub max_batch: usize,
    /// Points the in-memory graph may hold (live or dead); writes beyond
    /// are refused until a merge empties it.
    pub max_points: usize,
    /// A payload's JSON, at most.
    pub max_payload_bytes: usize,
}

impl Default for MutableOptions {
    fn default() -> Self {
        MutableOptions {
            durability: Durability::Fsync,
            max_batch: 10_000,
            max_points: 2_000_000,
            max_payload_bytes: 1 << 20,
        }
    }
}

/// One document of an upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument<T> {
    pub id: UserId,
    pub vector: Vec<T>,
    pub payload: Map<String, Value>,
}

/// Where a live document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the segment, with this segment-local id.
    Segment(u32),
    /// In the mutable part, with this id.
    Mutable(u32),
}

/// A hit of the mutable part.
#[derive(Debug, Clone, PartialEq)]
pub struct MutableHit {
    pub distance: f32,
    pub id: UserId,
    /// The payload fields asked for.
    pub fields: Map<String, Value>,
}

/// What a mutable part holds, for `/healthz`, `/metrics` and `inspect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MutableStats {
    /// Points in the in-memory graph, live or replaced/deleted.
    pub points: u64,
    /// Of those, live.
    pub live: u64,
    /// Segment documents deleted or replaced.
    pub segment_deleted: u64,
    pub last_lsn: u64,
    pub wal_bytes: u64,
    pub wal_records: u64,
    pub wal_syncs: u64,
    pub memory_bytes: u64,
    /// A merge is running: writes go to two views until it ends.
    pub merging: bool,
}

/// What the part holds over one segment version: the writes logged after
/// the version's applied LSN (`base`).
struct State<T> {
    /// The segment version's applied LSN (0 for a build): this view holds
    /// the writes after it.
    base: u64,
    graph: MutableGraph<T>,
    keys: Vec<UserId>,
    payloads: Vec<Map<String, Value>>,
    /// Live documents of the part: key → graph id.
    live: FxHashMap<UserId, u32>,
    /// Graph ids replaced or deleted.
    dead: RoaringBitmap,
    /// Keys whose segment copy is dead (deleted, or replaced here).
    shadowed: FxHashSet<UserId>,
    /// The segment-local ids of `shadowed`, for the segment (directory)
    /// they were looked up in; recomputed when another version is asked.
    seg_deletes: Option<(PathBuf, Arc<RoaringBitmap>)>,
    /// The segment's live ids (all but `seg_deletes`), for the deletes it
    /// was made from: a search without a filter matches these.
    seg_live: Option<(Arc<RoaringBitmap>, Arc<RoaringBitmap>)>,
    /// Keys shadowed since `seg_deletes` was computed: looked up and added
    /// at the next ask, so a write costs one lookup, not a recomputation.
    pending: Vec<UserId>,
}

impl<T: Element> State<T> {
    fn empty(base: u64, dim: usize, metric: Metric, params: &VamanaParams) -> Self {
        State {
            base,
            graph: MutableGraph::new(dim, metric, params),
            keys: Vec::new(),
            payloads: Vec::new(),
            live: FxHashMap::default(),
            dead: RoaringBitmap::new(),
            shadowed: FxHashSet::default(),
            seg_deletes: None,
            seg_live: None,
            pending: Vec::new(),
        }
    }
}

/// The applied LSN of a segment version: the writes it holds.
fn base_of(segment: &DiskIndex) -> u64 {
    segment.segment().and_then(|m| m.applied_lsn).unwrap_or(0)
}

/// The view to use with a segment of applied LSN `base`: the one made for
/// it, else the newest older one.
fn pick<T>(views: &[State<T>], base: u64) -> usize {
    views
        .iter()
        .rposition(|v| v.base == base)
        .or_else(|| views.iter().rposition(|v| v.base <= base))
        .unwrap_or(0)
}

/// A shard's mutable part: the log, and what it holds in RAM.
///
/// It holds one view per segment version it may be searched with: one,
/// except while a merge runs ([`MutablePart::begin_merge`]), when a second
/// view holds only the writes after the merge's snapshot. Every write goes
/// to every view; a search uses the view of the segment version it
/// searches, so a search never sees a write twice (in the new version and
/// in the part) or not at all, whichever version it started on.
pub struct MutablePart<T> {
    wal: Wal,
    dim: usize,
    metric: Metric,
    params: VamanaParams,
    int_ids: bool,
    opts: MutableOptions,
    /// Held from a write's append to the end of its apply, so writes apply
    /// in log order.
    order: Mutex<()>,
    /// Filter fields' kinds, as the segment and the writes so far set them.
    checker: Mutex<FilterIndexBuilder>,
    /// Oldest first; never empty.
    views: RwLock<Vec<State<T>>>,
}

impl<T> std::fmt::Debug for MutablePart<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutablePart")
            .field("wal", &self.wal)
            .finish()
    }
}

/// What opening found in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub ops: u64,
    /// Bytes of a torn or corrupt tail, cut off and not applied.
    pub dropped_bytes: u64,
}

fn kind_name(id: &UserId) -> &'static str {
    match id {
        UserId::Int(_) => "an integer",
        UserId::Str(_) => "a string",
    }
}

impl<T: Element> MutablePart<T> {
    /// Opens the mutable part of the shard in `shard_dir` whose segment is
    /// `segment` (documents required), replaying the log records the
    /// segment does not hold already (those after its applied LSN).
    pub fn open(
        shard_dir: &Path,
        segment: &DiskIndex,
        opts: MutableOptions,
    ) -> Result<(Self, Replayed)> {
        let docs = segment
            .documents()
            .ok_or_else(|| Error::from(WriteError::NoDocuments))?;
        let dim = segment.dim();
        let base = base_of(segment);
        let (wal, recovered) =
            Wal::open_after::<T>(&shard_dir.join(WAL_FILE), dim, opts.durability, base)?;
        let params = VamanaParams {
            max_degree: segment.header().max_degree as usize,
            ..VamanaParams::default()
        };
        let schema = docs.filters().map(|f| f.schema()).unwrap_or_default();
        let part = MutablePart {
            wal,
            dim,
            metric: segment.metric(),
            params,
            int_ids: docs.keys().int_ids(),
            opts,
            order: Mutex::new(()),
            checker: Mutex::new(FilterIndexBuilder::checker(&schema)),
            views: RwLock::new(vec![State::empty(base, dim, segment.metric(), &params)]),
        };
        let mut replayed = Replayed {
            dropped_bytes: recovered.dropped_bytes,
            ..Replayed::default()
        };
        {
            let mut views = part.views.write();
            let mut checker = part.checker.lock();
            for (lsn, ops) in recovered.records {
                replayed.records += 1;
                replayed.ops += ops.len() as u64;
                replay(&mut views, &mut checker, lsn, ops);
            }
        }
        Ok((part, replayed))
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn options(&self) -> &MutableOptions {
        &self.opts
    }

    fn check_id(&self, pos: usize, id: &UserId) -> Result<(), WriteError> {
        let ok = matches!(id, UserId::Int(_)) == self.int_ids;
        if ok {
            return Ok(());
        }
        Err(WriteError::IdKind {
            pos,
            id: id.to_string(),
            got: kind_name(id),
            expected: if self.int_ids { "integer" } else { "string" },
        })
    }

    fn check_batch_ids<'a>(
        &self,
        ids: impl Iterator<Item = &'a UserId>,
    ) -> Result<usize, WriteError> {
        let mut seen: FxHashMap<&UserId, usize> = FxHashMap::default();
        let mut n = 0;
        for (pos, id) in ids.enumerate() {
            self.check_id(pos, id)?;
            if let Some(&first) = seen.get(id) {
                return Err(WriteError::DuplicateInBatch {
                    pos,
                    id: id.to_string(),
                    first,
                });
            }
            seen.insert(id, pos);
            n += 1;
        }
        if n == 0 {
            return Err(WriteError::Empty);
        }
        if n > self.opts.max_batch {
            return Err(WriteError::TooMany {
                count: n,
                max: self.opts.max_batch,
            });
        }
        Ok(n)
    }

    /// Inserts or replaces `docs`, as one logged record, and returns its
    /// LSN (pass it to [`MutablePart::sync`] before acknowledging). The
    /// whole batch is checked first; a refused batch changes nothing.
    pub fn upsert(&self, docs: Vec<NewDocument<T>>) -> Result<u64> {
        self.upsert_record(docs).map(|r| r.0)
    }

    /// [`MutablePart::upsert`], returning the logged record too (what a
    /// write primary sends its replicas).
    pub fn upsert_record(&self, docs: Vec<NewDocument<T>>) -> Result<Record<T>> {
        let n = self.check_batch_ids(docs.iter().map(|d| &d.id))?;
        for (pos, d) in docs.iter().enumerate() {
            if d.vector.len() != self.dim {
                return Err(WriteError::Dimension {
                    pos,
                    id: d.id.to_string(),
                    got: d.vector.len(),
                    expected: self.dim,
                }
                .into());
            }
            if d.vector.iter().any(|x| !x.to_f32().is_finite()) {
                return Err(WriteError::BadVector {
                    pos,
                    id: d.id.to_string(),
                    why: "holds a value that is not a finite number".into(),
                }
                .into());
            }
            let len = serde_json::to_vec(&d.payload).map(|v| v.len()).unwrap_or(0);
            if len > self.opts.max_payload_bytes {
                return Err(WriteError::PayloadTooLarge {
                    pos,
                    id: d.id.to_string(),
                    len,
                    max: self.opts.max_payload_bytes,
                }
                .into());
            }
        }
        let _order = self.order.lock();
        {
            let points = self.views.read().iter().map(|v| v.keys.len()).max();
            let points = points.unwrap_or(0);
            if points + n > self.opts.max_points {
                return Err(WriteError::Full { points }.into());
            }
            // Filter kinds: checked on a copy, kept only if the whole batch
            // fits (a batch may be the one to fix an open field's kind).
            let mut checker = self.checker.lock().clone();
            for (pos, d) in docs.iter().enumerate() {
                checker
                    .check_payload(pos as u32, &d.payload)
                    .map_err(|source| WriteError::Filter {
                        pos,
                        id: d.id.to_string(),
                        source,
                    })?;
            }
            *self.checker.lock() = checker;
        }
        let ops: Vec<Op<T>> = docs
            .into_iter()
            .map(|d| Op::Upsert {
                id: d.id,
                vector: d.vector,
                payload: d.payload,
            })
            .collect();
        let lsn = self.wal.append(&ops)?;
        // One document at a time, so searches run between the inserts of
        // a large batch.
        for op in ops.iter().cloned() {
            apply_all(&mut self.views.write(), lsn, op);
        }
        Ok((lsn, ops))
    }

    /// Deletes the documents with these ids that exist (in `segment` or
    /// here), as one logged record. Returns its LSN (`None`: none existed,
    /// nothing was logged) and the ids that did not exist.
    pub fn delete(
        &self,
        segment: &DiskIndex,
        ids: Vec<UserId>,
    ) -> Result<(Option<u64>, Vec<UserId>)> {
        let (record, missing) = self.delete_record(segment, ids)?;
        Ok((record.map(|r| r.0), missing))
    }

    /// [`MutablePart::delete`], returning the logged record too.
    #[allow(clippy::type_complexity)]
    pub fn delete_record(
        &self,
        segment: &DiskIndex,
        ids: Vec<UserId>,
    ) -> Result<(Option<Record<T>>, Vec<UserId>)> {
        self.check_batch_ids(ids.iter())?;
        let _order = self.order.lock();
        let (found, missing): (Vec<UserId>, Vec<UserId>) = {
            let views = self.views.read();
            let st = &views[pick(&views, base_of(segment))];
            ids.into_iter()
                .partition(|id| locate(st, segment, id).is_some())
        };
        if found.is_empty() {
            return Ok((None, missing));
        }
        let ops: Vec<Op<T>> = found.into_iter().map(|id| Op::Delete { id }).collect();
        let lsn = self.wal.append(&ops)?;
        let mut views = self.views.write();
        for op in ops.iter().cloned() {
            apply_all(&mut views, lsn, op);
        }
        Ok((Some((lsn, ops)), missing))
    }

    /// The LSN of the last record logged (the version's applied LSN when
    /// none was logged since).
    pub fn last_lsn(&self) -> u64 {
        self.wal.last_lsn()
    }

    /// On a replica: logs and applies record `lsn` as its write primary
    /// logged it (checked there, so applied as a replay applies). A record
    /// this part has already is skipped (`false`); one that does not
    /// follow the last one is refused ([`WriteError::Gap`]): the replica
    /// catches up first. Durable once [`MutablePart::sync`] returns.
    pub fn apply_replicated(&self, lsn: u64, ops: Vec<Op<T>>) -> Result<bool> {
        let _order = self.order.lock();
        let last = self.wal.last_lsn();
        if lsn <= last {
            return Ok(false);
        }
        if lsn != last + 1 {
            return Err(WriteError::Gap { last, got: lsn }.into());
        }
        let logged = self.wal.append(&ops)?;
        debug_assert_eq!(logged, lsn);
        let mut checker = self.checker.lock();
        for op in ops {
            replay(&mut self.views.write(), &mut checker, lsn, vec![op]);
        }
        Ok(true)
    }

    /// The records logged after `after`, oldest first, up to about
    /// `max_bytes` of vectors and payloads (at least one record), read from
    /// the log file while writes go on: what a replica that missed them
    /// asks its primary for. `None` when the log no longer holds them (cut
    /// after a merge: the replica pulls the merged version instead).
    pub fn records_after(&self, after: u64, max_bytes: usize) -> Result<Option<Vec<Record<T>>>> {
        if after >= self.wal.last_lsn() {
            return Ok(Some(Vec::new()));
        }
        if after < self.wal.base_lsn() {
            return Ok(None);
        }
        let all = crate::wal::read_log::<T>(self.wal.path(), self.dim)?;
        if all.first().is_some_and(|(lsn, _)| *lsn > after + 1) {
            return Ok(None); // cut meanwhile
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (lsn, ops) in all.into_iter().filter(|(lsn, _)| *lsn > after) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            bytes += ops.iter().map(op_bytes::<T>).sum::<usize>();
            out.push((lsn, ops));
        }
        Ok(Some(out))
    }

    /// Blocks until the write with `lsn` is durable (group commit: see
    /// [`Wal::sync`]).
    pub fn sync(&self, lsn: u64) -> Result<()> {
        self.wal.sync(lsn)
    }

    /// Starts a merge: returns the LSN it folds in the writes up to (the
    /// last one logged, made durable), and adds the view that the merged
    /// version will be searched with: the writes after that LSN, none yet.
    /// `None` when there is nothing to merge.
    pub fn begin_merge(&self) -> Result<Option<u64>> {
        let _order = self.order.lock();
        let through = self.wal.last_lsn();
        let mut views = self.views.write();
        let newest = views.last().map_or(0, |v| v.base);
        if through <= newest {
            return Ok(None);
        }
        self.wal.sync(through)?;
        views.push(State::empty(through, self.dim, self.metric, &self.params));
        Ok(Some(through))
    }

    /// On a replica switching to a version it pulled, which holds the
    /// writes up to `through`: adds the view that version is searched
    /// with, holding the logged records after `through` (replayed from the
    /// log), as [`MutablePart::begin_merge`] does for a merge here. End it
    /// with [`MutablePart::finish_merge`] once the version is served.
    /// Returns false when there is a view for it already.
    pub fn begin_rebase(&self, through: u64) -> Result<bool> {
        let _order = self.order.lock();
        if self.views.read().iter().any(|v| v.base == through) {
            return Ok(false);
        }
        let mut view = State::empty(through, self.dim, self.metric, &self.params);
        if self.wal.last_lsn() > through {
            let records = crate::wal::read_log::<T>(self.wal.path(), self.dim)?;
            let mut checker = self.checker.lock();
            let mut one = [view];
            for (lsn, ops) in records.into_iter().filter(|(lsn, _)| *lsn > through) {
                replay(&mut one, &mut checker, lsn, ops);
            }
            let [v] = one;
            view = v;
        }
        let mut views = self.views.write();
        let at = views.partition_point(|v| v.base < through);
        views.insert(at, view);
        Ok(true)
    }

    /// Ends the merge begun at `through`. Published (the merged version is
    /// being served, and no search holds an older one any more): the older
    /// views are dropped and the log is cut after `through`. Not published
    /// (the merge failed): its view is dropped and nothing else changes.
    /// Returns the bytes cut from the log.
    pub fn finish_merge(&self, through: u64, published: bool) -> Result<u64> {
        let _order = self.order.lock();
        let mut views = self.views.write();
        if !published {
            if views.len() > 1 {
                views.retain(|v| v.base != through);
            }
            return Ok(0);
        }
        views.retain(|v| v.base >= through);
        if views.is_empty() {
            views.push(State::empty(through, self.dim, self.metric, &self.params));
        }
        drop(views);
        self.wal.truncate_through::<T>(self.dim, through)
    }

    /// Where the live document `id` is, if anywhere.
    pub fn locate(&self, segment: &DiskIndex, id: &UserId) -> Option<Location> {
        let views = self.views.read();
        locate(&views[pick(&views, base_of(segment))], segment, id)
    }

    /// The payload of a live document of this part, as searches of
    /// `segment` see it (`None`: not here; it may be in the segment: see
    /// [`MutablePart::locate`]).
    pub fn payload(
        &self,
        segment: &DiskIndex,
        id: &UserId,
        include: &Include,
    ) -> Option<Map<String, Value>> {
        let views = self.views.read();
        let st = &views[pick(&views, base_of(segment))];
        let &m = st.live.get(id)?;
        st.payloads
            .get(m as usize)
            .map(|p| include.project(p.clone()))
    }

    /// The segment-local ids of `segment` that are deleted or replaced
    /// (`None` when there are none). Cached per segment directory.
    pub fn segment_deletes(&self, segment: &DiskIndex) -> Option<Arc<RoaringBitmap>> {
        let base = base_of(segment);
        {
            let views = self.views.read();
            let st = &views[pick(&views, base)];
            if st.shadowed.is_empty() {
                return None;
            }
            if let Some((dir, b)) = &st.seg_deletes {
                if dir == segment.dir() && st.pending.is_empty() {
                    return Some(Arc::clone(b));
                }
            }
        }
        let keys = segment.documents()?.keys();
        let mut views = self.views.write();
        let i = pick(&views, base);
        let st = &mut views[i];
        let b = match &mut st.seg_deletes {
            Some((dir, b)) if dir == segment.dir() => {
                let b = Arc::make_mut(b);
                b.extend(st.pending.iter().filter_map(|k| keys.lookup(k)));
                Arc::new(std::mem::take(b))
            }
            _ => Arc::new(st.shadowed.iter().filter_map(|k| keys.lookup(k)).collect()),
        };
        st.pending.clear();
        st.seg_deletes = Some((segment.dir().to_path_buf(), Arc::clone(&b)));
        Some(b)
    }

    /// The segment-local ids of `segment` that are live (`None`: all are),
    /// cached until the deletes change: what a search without a filter
    /// matches.
    pub fn segment_live(&self, segment: &DiskIndex) -> Option<Arc<RoaringBitmap>> {
        let deletes = self.segment_deletes(segment)?;
        let base = base_of(segment);
        {
            let views = self.views.read();
            if let Some((of, live)) = &views[pick(&views, base)].seg_live {
                if Arc::ptr_eq(of, &deletes) {
                    return Some(Arc::clone(live));
                }
            }
        }
        let mut live = RoaringBitmap::new();
        live.insert_range(0..segment.len() as u32);
        live -= deletes.as_ref();
        let live = Arc::new(live);
        let mut views = self.views.write();
        let i = pick(&views, base);
        views[i].seg_live = Some((deletes, Arc::clone(&live)));
        Some(live)
    }

    /// The `k` nearest live documents of this part that `filter` admits,
    /// as searches of `segment` see them, nearest first, with the fields
    /// `include` asks for. `list` is the graph walk's list size. Check the
    /// filter against the segment's schema first (as the segment's search
    /// does).
    pub fn search(
        &self,
        segment: &DiskIndex,
        query: &[T],
        k: usize,
        list: usize,
        filter: Option<&Filter>,
        include: &Include,
    ) -> Vec<MutableHit> {
        let views = self.views.read();
        let st = &views[pick(&views, base_of(segment))];
        if st.live.is_empty() {
            return Vec::new();
        }
        let accept = |id: u32| {
            !st.dead.contains(id)
                && filter.is_none_or(|f| st.payloads.get(id as usize).is_some_and(|p| f.matches(p)))
        };
        st.graph
            .search(query, k, list, accept)
            .into_iter()
            .filter_map(|(distance, id)| {
                let i = id as usize;
                Some(MutableHit {
                    distance,
                    id: st.keys.get(i)?.clone(),
                    fields: match include {
                        Include::Nothing => Map::new(),
                        _ => include.project(st.payloads.get(i)?.clone()),
                    },
                })
            })
            .collect()
    }

    /// The ids of this part's live documents that `filter` admits, as
    /// searches of `segment` see them.
    pub fn matching_ids(&self, segment: &DiskIndex, filter: &Filter) -> Vec<UserId> {
        let views = self.views.read();
        let st = &views[pick(&views, base_of(segment))];
        st.live
            .iter()
            .filter(|(_, &m)| {
                st.payloads
                    .get(m as usize)
                    .is_some_and(|p| filter.matches(p))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// True when the part holds nothing over `segment`: no document, no
    /// delete.
    pub fn is_empty(&self, segment: &DiskIndex) -> bool {
        let views = self.views.read();
        let st = &views[pick(&views, base_of(segment))];
        st.keys.is_empty() && st.shadowed.is_empty()
    }

    pub fn stats(&self) -> MutableStats {
        let views = self.views.read();
        let WalStats { records, syncs, .. } = self.wal.stats();
        // The newest view: what stays after a merge running now.
        let Some(st) = views.last() else {
            return MutableStats::default();
        };
        let memory: usize = views
            .iter()
            .map(|st| {
                st.graph.memory_bytes()
                    + st.payloads.iter().map(|p| p.len() * 64).sum::<usize>()
                    + st.live.len() * 48
                    + st.shadowed.len() * 40
            })
            .sum();
        MutableStats {
            points: st.keys.len() as u64,
            live: st.live.len() as u64,
            segment_deleted: st.seg_deletes.as_ref().map_or(0, |(_, b)| b.len()),
            last_lsn: self.wal.last_lsn(),
            wal_bytes: self.wal.len(),
            wal_records: records,
            wal_syncs: syncs,
            memory_bytes: memory as u64,
            merging: views.len() > 1,
        }
    }
}

fn locate<T>(st: &State<T>, segment: &DiskIndex, id: &UserId) -> Option<Location> {
    if let Some(&m) = st.live.get(id) {
        return Some(Location::Mutable(m));
    }
    if st.shadowed.contains(id) {
        return None;
    }
    segment
        .documents()?
        .keys()
        .lookup(id)
        .map(Location::Segment)
}

/// Applies one op of record `lsn` to every view that does not hold it
/// already (a view holds the writes after its base; a replica's view made
/// for a version it pulled may start past records it is still catching up).
fn apply_all<T: Element>(views: &mut [State<T>], lsn: u64, op: Op<T>) {
    let n = views.iter().filter(|v| v.base < lsn).count();
    let mut left = n;
    for st in views.iter_mut().filter(|v| v.base < lsn) {
        left -= 1;
        if left == 0 {
            apply(st, op);
            return;
        }
        apply(st, op.clone());
    }
}

/// Applies a logged record's ops as a replay does: checked when they were
/// written, so the filter kinds are only fixed, never refused.
fn replay<T: Element>(
    views: &mut [State<T>],
    checker: &mut FilterIndexBuilder,
    lsn: u64,
    ops: Vec<Op<T>>,
) {
    for op in ops {
        if let Op::Upsert { payload, .. } = &op {
            let _ = checker.check_payload(0, payload);
        }
        apply_all(views, lsn, op);
    }
}

/// About the bytes an op carries (vector and payload), for batch sizes.
fn op_bytes<T: Element>(op: &Op<T>) -> usize {
    match op {
        Op::Upsert {
            vector, payload, ..
        } => vector.len() * std::mem::size_of::<T>() + payload.len() * 64,
        Op::Delete { .. } => 16,
    }
}

/// Applies one logged op. Never fails: ops were checked before logging.
fn apply<T: Element>(st: &mut State<T>, op: Op<T>) {
    let id = op.id().clone();
    // Whatever copy of the id was live is dead now.
    if let Some(old) = st.live.remove(&id) {
        st.dead.insert(old);
    }
    if st.shadowed.insert(id.clone()) {
        st.pending.push(id.clone());
    }
    if let Op::Upsert {
        id,
        vector,
        payload,
    } = op
    {
        let m = st.graph.insert(&vector);
        st.keys.push(id.clone());
        st.payloads.push(payload);
        st.live.insert(id, m);
    }
}

#[cfg(test)]
pub(crate) mod tests;
