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
