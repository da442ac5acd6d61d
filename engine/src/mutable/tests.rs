#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::io::Write;

use serde_json::json;

use super::*;
use crate::cluster::ClusterManifest;
use crate::data::VectorFile;
use crate::docs::{ingest, IndexedFields, VectorSource};
use crate::element::ElemType;
use crate::index::{BuildParams, OpenOptions};
use crate::metric::Metric;
use crate::partition::PartitionKind;
use crate::pq::PqParams;
use crate::progress::NoProgress;
use crate::shard_plan::build_sharded;

/// A one-shard docs index in a temporary directory (shared with the
/// merge's tests).
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn shard_dir(&self) -> PathBuf {
        self.dir.path().join("index/shard-0")
    }
    /// The shard's current version, opened.
    pub(crate) fn segment(&self) -> DiskIndex {
        let out = self.dir.path().join("index");
        let m = ClusterManifest::of_dir(&out).unwrap();
        m.open_shard(&out, 0, OpenOptions::buffered()).unwrap()
    }
}

fn vec_of(i: u32) -> Vec<u8> {
    (0..8).map(|j| ((i * 7 + j * 13) % 256) as u8).collect()
}

fn fixture() -> Fixture {
    fixture_of(300, vec_of)
}

/// `n` documents `doc-i` with vector `vector(i)` (8 wide), `lang` en/fr
/// alternating and `year` 2000 + i % 20 (both filter fields).
pub(crate) fn fixture_of(n: u32, vector: impl Fn(u32) -> Vec<u8>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    let mut lines = String::new();
    for i in 0..n {
        let lang = ["en", "fr"][i as usize % 2];
        let line = json!({"id": format!("doc-{i}"), "vector": vector(i),
            "lang": lang, "year": 2000 + i % 20});
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(&input, lines).unwrap();
    let ingested = ingest(
        &input,
        VectorSource::Inline {
            elem: ElemType::U8,
            dim: None,
        },
        &IndexedFields {
            filter: vec!["lang".into(), "year".into()],
            ..IndexedFields::default()
        },
        &dir.path().join("staging"),
        &NoProgress,
    )
    .unwrap();
    let vectors = VectorFile::open(ingested.vectors.clone().unwrap()).unwrap();
    let params = BuildParams {
        metric: Metric::L2,
        vamana: VamanaParams {
            max_degree: 8,
            build_list: 16,
            ..VamanaParams::default()
        },
        pq: PqParams {
            num_chunks: 4,
            train_sample: n as usize,
            iterations: 2,
            seed: 1,
        },
        order: crate::layout::NodeOrder::Locality,
    };
    build_sharded(
        vectors.vectors::<u8>().unwrap(),
        &params,
        1,
        PartitionKind::Random,
        &dir.path().join("index"),
        &NoProgress,
        Some(&ingested),
    )
    .unwrap();
    Fixture { dir }
}

pub(crate) fn doc(id: &str, v: Vec<u8>, payload: serde_json::Value) -> NewDocument<u8> {
    NewDocument {
        id: UserId::Str(id.into()),
        vector: v,
        payload: payload.as_object().unwrap().clone(),
    }
}

pub(crate) fn s(id: &str) -> UserId {
    UserId::Str(id.into())
}

#[test]
fn writes_are_searchable_replayed_and_checked() {
    let f = fixture();
    let seg = f.segment();
    let opts = MutableOptions::default();
    let (part, replayed) = MutablePart::<u8>::open(&f.shard_dir(), &seg, opts).unwrap();
    assert_eq!(replayed, Replayed::default());
    assert!(part.is_empty(&seg) && part.segment_deletes(&seg).is_none());

    let new: Vec<NewDocument<u8>> = (0..40u32)
        .map(|i| {
            doc(
                &format!("new-{i}"),
                vec![200, 10, (i * 5) as u8, 7, 1, 2, 3, 4],
                json!({"lang": "de", "year": 2030 + i}),
            )
        })
        .chain(std::iter::once(doc(
            "doc-3",
            vec![9; 8],
            json!({"lang": "en", "title": "replaced"}),
        )))
        .collect();
    let lsn = part.upsert(new).unwrap();
    part.sync(lsn).unwrap();
    let (del, missing) = part
        .delete(&seg, vec![s("doc-5"), s("nope"), s("new-7")])
        .unwrap();
    part.sync(del.unwrap()).unwrap();
    assert_eq!(missing, vec![s("nope")]);
    // A delete of only unknown ids logs nothing.
    assert_eq!(part.delete(&seg, vec![s("nope")]).unwrap().0, None);

    let check = |part: &MutablePart<u8>| {
        assert_eq!(part.locate(&seg, &s("doc-5")), None);
        assert_eq!(part.locate(&seg, &s("new-7")), None);
        assert!(matches!(
            part.locate(&seg, &s("doc-3")),
            Some(Location::Mutable(_))
        ));
        assert!(matches!(
            part.locate(&seg, &s("doc-4")),
            Some(Location::Segment(_))
        ));
        let keys = seg.documents().unwrap().keys();
        let deleted = part.segment_deletes(&seg).unwrap();
        let want: RoaringBitmap = [
            keys.lookup(&s("doc-3")).unwrap(),
            keys.lookup(&s("doc-5")).unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(*deleted, want);
        let live = part.segment_live(&seg).unwrap();
        assert_eq!(live.len() as usize, seg.len() - 2);
        assert!(live.is_disjoint(&want));
        assert!(
            Arc::ptr_eq(&live, &part.segment_live(&seg).unwrap()),
            "cached"
        );
        // The new vector is found at distance 0, with its fields.
        let hits = part.search(
            &seg,
            &[200, 10, 15, 7, 1, 2, 3, 4],
            3,
            16,
            None,
            &Include::All,
        );
        assert_eq!(hits[0].id, s("new-3"));
        assert_eq!(hits[0].distance, 0.0);
        assert_eq!(hits[0].fields.get("year"), Some(&json!(2033)));
        // A deleted document never comes back, a filter is applied.
        let all = part.search(
            &seg,
            &[200, 10, 35, 7, 1, 2, 3, 4],
            100,
            100,
            None,
            &Include::Nothing,
        );
        assert_eq!(all.len(), 40, "41 upserted, 1 deleted");
        assert!(all.iter().all(|h| h.id != s("new-7")));
        let f = Filter::parse(&json!({"year": {"$gte": 2060}})).unwrap();
        let few = part.search(&seg, &[0; 8], 10, 16, Some(&f), &Include::Nothing);
        let ids: Vec<UserId> = few.iter().map(|h| h.id.clone()).collect();
        assert_eq!(ids.len(), 10);
        assert!(ids.iter().all(|i| *i.to_string() >= *"\"new-30"));
        assert_eq!(
            part.payload(&seg, &s("doc-3"), &Include::Fields(vec!["title".into()])),
            Some(json!({"title": "replaced"}).as_object().unwrap().clone())
        );
    };
    check(&part);
    let before = part.stats();

    // Bad batches: refused whole, nothing applied or logged.
    let bad = [
        (vec![doc("x", vec![1; 7], json!({}))], "dimension 8"),
        (
            vec![
                doc("x", vec![1; 8], json!({})),
                doc("x", vec![1; 8], json!({})),
            ],
            "also document 0",
        ),
        (
            vec![
                doc("y", vec![1; 8], json!({})),
                doc("z", vec![1; 8], json!({"year": "old"})),
            ],
            "\"year\"",
        ),
        (vec![], "empty"),
    ];
    for (batch, want) in bad {
        let e = part.upsert(batch).unwrap_err().to_string();
        assert!(e.contains(want), "{e} lacks {want}");
    }
    let e = part
        .upsert(vec![NewDocument {
            id: UserId::Int(4),
            vector: vec![1; 8],
            payload: Map::new(),
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("string"), "{e}");
    assert_eq!(part.stats(), before);

    // Reopened: the log replays to the same state.
    drop(part);
    let (part, replayed) = MutablePart::<u8>::open(&f.shard_dir(), &seg, opts).unwrap();
    assert_eq!(
        (replayed.records, replayed.ops, replayed.dropped_bytes),
        (2, 43, 0)
    );
    check(&part);

    // A torn tail (a record cut short) is dropped, the rest kept.
    let lsn = part
        .upsert(vec![doc("tail", vec![5; 8], json!({}))])
        .unwrap();
    part.sync(lsn).unwrap();
    drop(part);
    let wal = f.shard_dir().join(WAL_FILE);
    let len = std::fs::metadata(&wal).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let mut file = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    file.write_all(b"zz").unwrap();
    drop(file);
    let (part, replayed) = MutablePart::<u8>::open(&f.shard_dir(), &seg, opts).unwrap();
    assert_eq!(replayed.records, 2);
    assert!(replayed.dropped_bytes > 0);
    assert_eq!(part.locate(&seg, &s("tail")), None);
    check(&part);
}
