#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::docs::Include;
use crate::filter::Filter;
use crate::index::SearchScratch;
use crate::mutable::tests::{doc, fixture_of, s};
use crate::mutable::{Location, MutableOptions, MutablePart};
use crate::progress::NoProgress;
use crate::search::SearchParams;

fn random_vec(seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..8).map(|_| rng.random_range(0u8..=255)).collect()
}

/// The user ids of the `k` nearest documents of `seg` to `q`.
fn nearest(seg: &DiskIndex, q: &[u8], k: usize) -> Vec<UserId> {
    let mut scratch = SearchScratch::default();
    let params = SearchParams {
        k,
        list: 64,
        beam: 4,
    };
    let (hits, _, _) = seg.search_local(&mut scratch, q, params, None).unwrap();
    let keys = seg.documents().unwrap().keys();
    hits.iter().map(|h| keys.key(h.id)).collect()
}

#[test]
fn a_merge_folds_the_log_into_the_next_version() {
    let f = fixture_of(600, |i| random_vec(i as u64));
    let seg = f.segment();
    let (part, _) =
        MutablePart::<u8>::open(&f.shard_dir(), &seg, MutableOptions::default()).unwrap();
    let new: Vec<_> = (0..80)
        .map(|i| {
            doc(
                &format!("new-{i}"),
                random_vec(10_000 + i),
                json!({"lang": "de", "year": 2100 + i}),
            )
        })
        .collect();
    part.upsert(new).unwrap();
    part.upsert(vec![doc(
        "doc-3",
        random_vec(77_777),
        json!({"lang": "de", "year": 1}),
    )])
    .unwrap();
    let gone: Vec<UserId> = (100..160).map(|i| s(&format!("doc-{i}"))).collect();
    part.delete(&seg, gone).unwrap();
    part.upsert(vec![doc(
        "new-5",
        random_vec(55_555),
        json!({"lang": "xx"}),
    )])
    .unwrap();
    part.delete(&seg, vec![s("new-6")]).unwrap();

    let through = part.begin_merge().unwrap().unwrap();
    // A write while the merge runs: it lands in both views.
    let late = random_vec(99_999);
    part.upsert(vec![doc("late", late.clone(), json!({"lang": "en"}))])
        .unwrap();
    let report = merge::<u8>(&f.shard_dir(), &seg, through, &NoProgress)
        .unwrap()
        .unwrap();
    assert_eq!((report.version, report.parent), (2, 1));
    assert_eq!(report.applied_lsn, through);
    // 600 − 60 deleted − doc-3 replaced; + 80 new − new-6 + doc-3's copy.
    assert_eq!(report.removed, 61);
    assert_eq!(report.inserted, 80);
    assert_eq!(report.points_after, 600 - 61 + 80);

    let merged = f.segment();
    assert_eq!(merged.segment().unwrap().version, 2);
    assert_eq!(merged.segment().unwrap().applied_lsn, Some(through));
    assert_eq!(merged.len(), 619);
    crate::segment::verify(merged.dir()).unwrap();
    let keys = merged.documents().unwrap().keys();
    assert!(keys.lookup(&s("doc-100")).is_none() && keys.lookup(&s("new-6")).is_none());
    assert!(keys.lookup(&s("doc-99")).is_some() && keys.lookup(&s("late")).is_none());
    // Payloads, the filter index and the vectors of the written documents.
    let at = keys.lookup(&s("new-5")).unwrap();
    let fields = merged
        .documents()
        .unwrap()
        .fetch(&[at], &Include::All)
        .unwrap();
    assert_eq!(
        fields[0],
        json!({"lang": "xx"}).as_object().unwrap().clone()
    );
    let de = merged
        .evaluate(&Filter::parse(&json!({"lang": "de"})).unwrap())
        .unwrap();
    assert_eq!(
        de.docs().len(),
        79 + 1 - 1,
        "new-0..79 but 5 and 6, and doc-3"
    );
    for (i, seed) in [(0u64, 10_000u64), (40, 10_040), (79, 10_079)] {
        let got = nearest(&merged, &random_vec(seed), 1);
        assert_eq!(got, vec![s(&format!("new-{i}"))]);
    }
    assert_eq!(nearest(&merged, &random_vec(77_777), 1), vec![s("doc-3")]);

    // Before the switch, the old version with the old view; after it, the
    // new one with the new view: each write seen once.
    assert!(matches!(
        part.locate(&seg, &s("new-7")),
        Some(Location::Mutable(_))
    ));
    assert!(matches!(
        part.locate(&merged, &s("new-7")),
        Some(Location::Segment(_))
    ));
    let hits = part.search(&merged, &random_vec(10_007), 5, 16, None, &Include::Nothing);
    assert!(
        hits.iter().all(|h| h.id != s("new-7")),
        "in the segment now"
    );
    assert_eq!(
        part.search(&merged, &late, 1, 16, None, &Include::Nothing)[0].id,
        s("late")
    );
    assert!(part.locate(&merged, &s("doc-100")).is_none());
    // A restart between the publish and the log's cut replays the late
    // write only.
    drop(part);
    let (part, replayed) =
        MutablePart::<u8>::open(&f.shard_dir(), &merged, MutableOptions::default()).unwrap();
    assert_eq!((replayed.records, replayed.ops), (1, 1));
    // Its log is cut as a finished merge cuts it.
    assert!(part.finish_merge(through, true).unwrap() > 0);
    assert_eq!(part.stats().points, 1);
}

#[test]
fn finishing_a_merge_cuts_the_log_and_keeps_later_writes() {
    let f = fixture_of(300, |i| random_vec(i as u64));
    let seg = f.segment();
    let (part, _) =
        MutablePart::<u8>::open(&f.shard_dir(), &seg, MutableOptions::default()).unwrap();
    for i in 0..5 {
        part.upsert(vec![doc(&format!("n{i}"), random_vec(500 + i), json!({}))])
            .unwrap();
    }
    let through = part.begin_merge().unwrap().unwrap();
    part.upsert(vec![doc("after", random_vec(900), json!({}))])
        .unwrap();
    let report = merge::<u8>(&f.shard_dir(), &seg, through, &NoProgress)
        .unwrap()
        .unwrap();
    assert_eq!(report.inserted, 5);
    let merged = f.segment();
    let before = std::fs::metadata(f.shard_dir().join(WAL_FILE))
        .unwrap()
        .len();
    let cut = part.finish_merge(through, true).unwrap();
    assert!(cut > 0 && cut < before, "{cut} of {before}");
    assert_eq!(part.stats().points, 1, "the old view is gone");
    // Writes go on after the cut, with the next LSNs.
    let lsn = part
        .upsert(vec![doc("later", random_vec(901), json!({}))])
        .unwrap();
    assert_eq!(lsn, through + 2);
    part.sync(lsn).unwrap();
    drop(part);
    let (part, replayed) =
        MutablePart::<u8>::open(&f.shard_dir(), &merged, MutableOptions::default()).unwrap();
    assert_eq!(replayed.records, 2, "after and later");
    assert!(part.locate(&merged, &s("n3")).is_some());
    assert!(matches!(
        part.locate(&merged, &s("later")),
        Some(Location::Mutable(_))
    ));
    // Nothing new since: a second merge of the same LSNs has nothing to do.
    assert!(merge::<u8>(&f.shard_dir(), &merged, through, &NoProgress)
        .unwrap()
        .is_none());
    // An aborted merge drops its view and leaves the log alone.
    let again = part.begin_merge().unwrap().unwrap();
    assert_eq!(part.finish_merge(again, false).unwrap(), 0);
    assert_eq!(part.stats().points, 2);
}

/// Recall of the merged graph: after deleting a fifth of the points and
/// inserting as many, the disk search over the new version finds the
/// live set's true neighbours as a build would.
#[test]
fn a_merged_graph_keeps_its_recall() {
    let n = 2000u32;
    let f = fixture_of(n, |i| random_vec(i as u64));
    let seg = f.segment();
    let (part, _) =
        MutablePart::<u8>::open(&f.shard_dir(), &seg, MutableOptions::default()).unwrap();
    let gone: Vec<UserId> = (0..n).step_by(5).map(|i| s(&format!("doc-{i}"))).collect();
    for chunk in gone.chunks(100) {
        part.delete(&seg, chunk.to_vec()).unwrap();
    }
    let added: Vec<_> = (0..400u64)
        .map(|i| doc(&format!("new-{i}"), random_vec(50_000 + i), json!({})))
        .collect();
    part.upsert(added).unwrap();
    let through = part.begin_merge().unwrap().unwrap();
    merge::<u8>(&f.shard_dir(), &seg, through, &NoProgress)
        .unwrap()
        .unwrap();
    let merged = f.segment();
    assert_eq!(merged.len(), 2000);
    // Brute force over the live set (what the merged segment holds).
    let live: Vec<(UserId, Vec<u8>)> = (0..n)
        .filter(|i| i % 5 != 0)
        .map(|i| (s(&format!("doc-{i}")), random_vec(i as u64)))
        .chain((0..400u64).map(|i| (s(&format!("new-{i}")), random_vec(50_000 + i))))
        .collect();
    let (mut found, queries) = (0usize, 100u64);
    for q in 0..queries {
        let query = random_vec(1_000_000 + q);
        let mut truth: Vec<(f32, &UserId)> = live
            .iter()
            .map(|(id, v)| (Metric::L2.distance(&query[..], &v[..]), id))
            .collect();
        truth.sort_by(|a, b| a.0.total_cmp(&b.0));
        let cut = truth[9].0;
        let got = nearest(&merged, &query, 10);
        let keys: FxHashMap<&UserId, f32> = truth.iter().map(|(d, id)| (*id, *d)).collect();
        found += got.iter().filter(|id| keys[id] <= cut).count();
    }
    let recall = found as f64 / (queries as f64 * 10.0);
    assert!(recall >= 0.95, "recall@10 after the merge: {recall}");
}

/// Copies directory `from` into `to` (a replica's copy of a shard).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The hits of a part over its segment, as (id, distance bits).
fn part_hits(part: &MutablePart<u8>, seg: &DiskIndex, q: &[u8]) -> Vec<(UserId, u32)> {
    part.search(seg, q, 10, 32, None, &Include::Nothing)
        .into_iter()
        .map(|h| (h.id, h.distance.to_bits()))
        .collect()
}

/// A replica applies its primary's records in order, refuses one past a
/// gap, catches up from the primary's log, and after switching to the
/// primary's merged version (which holds records it never got) goes on
/// from the version's LSN: both then answer identically.
#[test]
fn a_replica_follows_its_primary_across_a_merge() {
    let f = fixture_of(300, |i| random_vec(i as u64));
    let replica_dir = tempfile::tempdir().unwrap();
    let r_root = replica_dir.path().join("index");
    copy_dir(&f.dir.path().join("index"), &r_root);
    let r_shard = r_root.join("shard-0");
    let r_open = || {
        let m = crate::cluster::ClusterManifest::of_dir(&r_root).unwrap();
        m.open_shard(&r_root, 0, crate::index::OpenOptions::buffered())
            .unwrap()
    };
    let seg = f.segment();
    let r_seg = r_open();
    let opts = MutableOptions::default();
    let (primary, _) = MutablePart::<u8>::open(&f.shard_dir(), &seg, opts).unwrap();
    let (replica, _) = MutablePart::<u8>::open(&r_shard, &r_seg, opts).unwrap();

    let (lsn, ops) = primary
        .upsert_record(vec![doc("a", random_vec(700), json!({"lang": "en"}))])
        .unwrap();
    assert!(replica.apply_replicated(lsn, ops.clone()).unwrap());
    assert!(!replica.apply_replicated(lsn, ops).unwrap(), "had it");
    let (del, _) = primary
        .delete_record(&seg, vec![s("doc-1"), s("a")])
        .unwrap();
    let (lsn2, _) = del.unwrap();
    let (lsn3, ops3) = primary
        .upsert_record(vec![doc("b", random_vec(701), json!({"year": 2031}))])
        .unwrap();
    let err = replica.apply_replicated(lsn3, ops3).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("records {lsn2} to {lsn2} are missing")),
        "{err}"
    );
    // Caught up from the log, a byte at a time: one record per answer.
    while let Some(batch) = primary.records_after(replica.last_lsn(), 1).unwrap() {
        if batch.is_empty() {
            break;
        }
        assert_eq!(batch.len(), 1);
        for (lsn, ops) in batch {
            assert!(replica.apply_replicated(lsn, ops).unwrap());
        }
    }
    assert_eq!(replica.last_lsn(), lsn3);
    for q in 0..5 {
        let q = random_vec(800 + q);
        assert_eq!(
            part_hits(&primary, &seg, &q),
            part_hits(&replica, &r_seg, &q)
        );
    }
    assert_eq!(replica.locate(&r_seg, &s("doc-1")), None);

    // The primary merges everything; the replica has only the first record
    // when it pulls the merged version.
    let (lsn4, ops4) = primary
        .upsert_record(vec![doc("c", random_vec(702), json!({}))])
        .unwrap();
    let through = primary.begin_merge().unwrap().unwrap();
    assert_eq!(through, lsn4);
    merge::<u8>(&f.shard_dir(), &seg, through, &NoProgress)
        .unwrap()
        .unwrap();
    primary.finish_merge(through, true).unwrap();
    let merged = f.segment();
    assert!(
        primary.records_after(lsn2, 1 << 20).unwrap().is_none(),
        "cut"
    );
    let version = crate::shard::current(&f.shard_dir()).unwrap().1;
    copy_dir(&version, &r_shard.join(version.file_name().unwrap()));
    std::fs::copy(
        f.shard_dir().join(crate::layout::CURRENT_FILE),
        r_shard.join(crate::layout::CURRENT_FILE),
    )
    .unwrap();
    let r_merged = r_open();
    assert!(replica.begin_rebase(through).unwrap());
    // The record the version holds arrives late: logged, seen only by the
    // old version's view.
    assert!(replica.apply_replicated(lsn4, ops4).unwrap());
    // Found in the version itself, not a second time in the part.
    assert!(matches!(
        replica.locate(&r_merged, &s("c")),
        Some(Location::Segment(_))
    ));
    assert!(part_hits(&replica, &r_merged, &random_vec(702))
        .iter()
        .all(|(id, _)| *id != s("c")));
    replica.finish_merge(through, true).unwrap();
    assert_eq!(replica.last_lsn(), through);
    let (lsn5, ops5) = primary
        .upsert_record(vec![doc("d", random_vec(703), json!({}))])
        .unwrap();
    assert!(replica.apply_replicated(lsn5, ops5).unwrap());
    for q in 0..5 {
        let q = random_vec(900 + q);
        assert_eq!(
            part_hits(&primary, &merged, &q),
            part_hits(&replica, &r_merged, &q)
        );
        assert_eq!(nearest(&merged, &q, 5), nearest(&r_merged, &q, 5));
    }
    // Reopened from its log, the replica holds the same.
    drop(replica);
    let (replica, replayed) = MutablePart::<u8>::open(&r_shard, &r_merged, opts).unwrap();
    assert_eq!(replayed.records, 1);
    assert!(matches!(
        replica.locate(&r_merged, &s("d")),
        Some(Location::Mutable(_))
    ));
}
