//! Damaged bytes through every file parser (issue 10: "a fuzz target for
//! every file parser"), as a proptest, so it runs with the other tests in a
//! bounded time.
//!
//! One small segment is built with documents, a filter index and a text
//! index; each case takes one of its files, damages it (flipped and set
//! bytes, boundary integers written over fields, truncations, insertions)
//! and hands it to that file's reader, which must answer `Err` or a value
//! that can be used (searched, fetched, evaluated), never panic. Flipped
//! bits alone mostly stop at the checksum, so half of the cases re-seal
//! the file's checksum after the damage: the parser behind it then sees
//! bytes that are consistent but wrong, what a buggy writer (or a peer
//! that lies) would give it.
//!
//! Cases per file: `SHARDANN_FUZZ_CASES` (64 by default, a few seconds in
//! all); set it higher to fuzz longer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use shardann_engine::cluster::ClusterManifest;
use shardann_engine::data::VectorFile;
use shardann_engine::docs::{ingest, DocStore, IndexedFields, KeyMap, VectorSource};
use shardann_engine::filter::{Filter, FilterIndex};
use shardann_engine::index::BuildParams;
use shardann_engine::layout::{
    parse_slot_table, read_ids, read_pq, IndexHeader, Manifest, NodeOrder, SectorGeometry,
};
use shardann_engine::partition::PartitionKind;
use shardann_engine::pq::PqParams;
use shardann_engine::progress::NoProgress;
use shardann_engine::shard_plan::build_sharded;
use shardann_engine::text::TextIndex;
use shardann_engine::vamana::VamanaParams;
use shardann_engine::{ElemType, Metric};

/// One change to a file's bytes; offsets are taken modulo the length.
#[derive(Debug, Clone)]
enum Damage {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    /// A boundary value written over 4 or 8 bytes, as a lying length or
    /// count field would hold.
    Word(prop::sample::Index, u64, bool),
    Cut(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let word = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(u32::MAX as u64 + 1),
        Just(u64::MAX),
        Just(1 << 40),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Damage::Flip(i, b)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        3 => (any::<prop::sample::Index>(), word, any::<bool>())
            .prop_map(|(i, w, wide)| Damage::Word(i, w, wide)),
        1 => any::<prop::sample::Index>().prop_map(Damage::Cut),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for d in damages {
        if b.is_empty() {
            break;
        }
        match d {
            Damage::Flip(i, x) => {
                let at = i.index(b.len());
                b[at] ^= x;
            }
            Damage::Set(i, x) => {
                let at = i.index(b.len());
                b[at] = *x;
            }
            Damage::Word(i, w, wide) => {
                let n = if *wide { 8 } else { 4 };
                if b.len() >= n {
                    // Fields are aligned in every format here.
                    let at = i.index(b.len() - n + 1) / n * n;
                    b[at..at + n].copy_from_slice(&w.to_le_bytes()[..n]);
                }
            }
            Damage::Cut(i) => b.truncate(i.index(b.len())),
            Damage::Insert(i, x) => {
                let at = i.index(b.len());
                b.splice(at..at, x.iter().copied());
            }
        }
    }
    b
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// `pq.bin`, `ids.bin`, `keys.bin`, `filters.bin`: an XXH3-64 footer over
/// everything before it.
fn reseal_footer(b: &mut [u8]) {
    if let Some(at) = b.len().checked_sub(8) {
        let sum = xxh3(&b[..at]);
        b[at..].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `disk.index`: the header's last 8 of 128 bytes sum the 120 before.
fn reseal_header(b: &mut [u8]) {
    if b.len() >= 128 {
        let sum = xxh3(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `segment.json`: the JSON line, then `xxh3:<16 hex>`.
fn reseal_manifest(b: &mut Vec<u8>) {
    let Ok(text) = std::str::from_utf8(b) else {
        return;
    };
    let Some((json, _)) = text.trim_end_matches('\n').rsplit_once('\n') else {
        return;
    };
    let line = format!("{json}\nxxh3:{:016x}\n", xxh3(json.as_bytes()));
    *b = line.into_bytes();
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// `docs.bin`: each block's XXH3 in its table entry (32 B: offset u64,
/// len u32, raw_len u32, first_doc u32, reserved u32, xxh3 u64), then the
/// trailer's (table_offset, num_blocks, num_docs, checksum) sum over the
/// table and the trailer before it.
fn reseal_docs(b: &mut [u8]) {
    let Some(trailer) = b.len().checked_sub(32) else {
        return;
    };
    let (Some(table), Some(blocks)) = (u64_at(b, trailer), u64_at(b, trailer + 8)) else {
        return;
    };
    for i in 0..blocks.min(1 << 16) {
        let e = table.saturating_add(i * 32) as usize;
        let (Some(off), Some(len)) = (u64_at(b, e), u32_at(b, e + 8)) else {
            break;
        };
        let end = off.saturating_add(len as u64) as usize;
        if let Some(block) = b.get(off as usize..end) {
            let sum = xxh3(block);
            if let Some(slot) = b.get_mut(e + 24..e + 32) {
                slot.copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
    let at = b.len() - 8;
    if let Some(covered) = b.get(table as usize..at) {
        let sum = xxh3(covered);
        b[at..].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `text.bin`: the header (magic 8, major 2, minor 2, files u32, table
/// length u32, reserved u32, checksum u64) sums its first 24 bytes and
/// the table. The packed tantivy files have no checksum of their own (the
/// segment's manifest has one for the whole file).
fn reseal_text(b: &mut [u8]) {
    let Some(table_len) = u32_at(b, 16) else {
        return;
    };
    let Some(table) = b.get(32..32 + table_len as usize) else {
        return;
    };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&b[..24]);
    h.update(table);
    let sum = h.digest();
    b[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// The files of one small sealed segment (shard 0 of 2) and its
/// `cluster.json`, built once for all cases.
struct Fixture {
    _dir: tempfile::TempDir,
    cluster: PathBuf,
    segment: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("docs.jsonl");
        let langs = ["en", "fr", "de"];
        let words = ["open", "read", "write", "file", "socket", "memory", "page"];
        let mut lines = String::new();
        for i in 0..240u32 {
            let v: Vec<u32> = (0..8).map(|j| (i * 7 + j * 13) % 256).collect();
            let text = format!(
                "{} {} {}",
                words[i as usize % 7],
                words[(i as usize / 7) % 7],
                words[(i as usize * 3) % 7]
            );
            let id = format!("doc-{i}");
            lines.push_str(
                &serde_json::json!({
                    "id": id, "vector": v, "lang": langs[i as usize % 3],
                    "year": 2000 + i % 25, "text": text,
                })
                .to_string(),
            );
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
                text: vec!["text".into()],
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
                train_sample: 240,
                iterations: 2,
                seed: 1,
            },
            order: shardann_engine::layout::NodeOrder::Locality,
        };
        let out = dir.path().join("index");
        build_sharded(
            vectors.vectors::<u8>().unwrap(),
            &params,
            2,
            PartitionKind::Random,
            &out,
            &NoProgress,
            Some(&ingested),
        )
        .unwrap();
        let shard = out.join("shard-0");
        let current = std::fs::read_to_string(shard.join("CURRENT")).unwrap();
        Fixture {
            cluster: out.join("cluster.json"),
            segment: shard.join(current.trim()),
            _dir: dir,
        }
    })
}

fn cases() -> u32 {
    std::env::var("SHARDANN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Runs `parse` on damaged copies of `original`, half of them re-sealed by
/// `reseal`; the bytes are also written to `scratch` for path-based readers.
fn fuzz_file(name: &str, original: &Path, reseal: fn(&mut Vec<u8>), parse: impl Fn(&Path, &[u8])) {
    let bytes = std::fs::read(original).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join(name);
    // The undamaged file must parse, or the cases test nothing.
    std::fs::write(&scratch, &bytes).unwrap();
    parse(&scratch, &bytes);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    // Seeded, as all randomness in the tests: a failure repeats.
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (prop::collection::vec(damage(), 1..6), any::<bool>());
    runner
        .run(&strategy, |(damages, sealed)| {
            let mut b = apply(&bytes, &damages);
            if sealed {
                reseal(&mut b);
            }
            std::fs::write(&scratch, &b).unwrap();
            parse(&scratch, &b);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[test]
fn disk_index_header_and_nodes() {
    let f = fixture();
    fuzz_file(
        "disk.index",
        &f.segment.join("disk.index"),
        |b| reseal_header(b),
        |_, b| {
            let Ok(h) = IndexHeader::parse(b, b.len() as u64) else {
                return;
            };
            // Version 2: the slot table, parsed from the same mutated bytes.
            let g = match h.order {
                NodeOrder::Identity => SectorGeometry::new(&h),
                NodeOrder::Locality => {
                    let at = (h.num_sectors() as usize).saturating_mul(4096);
                    let table = b.get(at..).unwrap_or(&[]);
                    match parse_slot_table(table, h.num_points as usize) {
                        Ok(slots) => SectorGeometry::with_slots(&h, slots),
                        Err(_) => return,
                    }
                }
            };
            for node in [0, h.medoid, h.num_points.saturating_sub(1)] {
                let node = u32::try_from(node).unwrap_or(0);
                let loc = g.locate(node);
                let start = (loc.sector as usize).saturating_mul(4096);
                if let Some(sectors) = b.get(start..) {
                    let _ = g.decode(node, sectors);
                    let _ = g
                        .mates(node, sectors.get(..4096).unwrap_or(sectors))
                        .count();
                }
            }
        },
    );
}

#[test]
fn pq_bin() {
    let f = fixture();
    fuzz_file(
        "pq.bin",
        &f.segment.join("pq.bin"),
        |b| reseal_footer(b),
        |p, _| {
            let _ = read_pq(p);
        },
    );
}

#[test]
fn ids_bin() {
    let f = fixture();
    fuzz_file(
        "ids.bin",
        &f.segment.join("ids.bin"),
        |b| reseal_footer(b),
        |p, _| {
            let _ = read_ids(p);
        },
    );
}

#[test]
fn segment_json() {
    let f = fixture();
    fuzz_file(
        "segment.json",
        &f.segment.join("segment.json"),
        reseal_manifest,
        |_, b| {
            let _ = Manifest::parse(b);
        },
    );
}

#[test]
fn cluster_json() {
    let f = fixture();
    fuzz_file(
        "cluster.json",
        &f.cluster,
        |_| {},
        |_, b| {
            if let Ok(c) = ClusterManifest::parse(b) {
                let _ = c.route(&vec![1.0f32; c.dim.min(1 << 16)], 1);
            }
        },
    );
}

#[test]
fn keys_bin() {
    let f = fixture();
    fuzz_file(
        "keys.bin",
        &f.segment.join("keys.bin"),
        |b| reseal_footer(b),
        |p, _| {
            if let Ok(k) = KeyMap::read(p) {
                for doc in 0..k.len() as u32 {
                    let id = k.key(doc);
                    let _ = k.lookup(&id);
                }
            }
        },
    );
}

#[test]
fn docs_bin() {
    let f = fixture();
    fuzz_file(
        "docs.bin",
        &f.segment.join("docs.bin"),
        |b| reseal_docs(b),
        |p, _| {
            if let Ok(s) = DocStore::open(p) {
                // The count is the trailer's (a damaged one may say 4
                // billion; a segment checks it against its index): the
                // first documents and the last.
                let n = s.len() as u32;
                let mut some: Vec<u32> = (0..n.min(300)).collect();
                some.push(n.saturating_sub(1));
                let _ = s.get_many(&some);
            }
        },
    );
}

#[test]
fn filters_bin() {
    let f = fixture();
    let filters: Vec<Filter> = [
        serde_json::json!({"lang": "en"}),
        serde_json::json!({"year": {"$gte": 2010, "$lt": 2020}}),
        serde_json::json!({"$or": [{"lang": {"$in": ["fr", "de"]}}, {"year": {"$exists": false}}]}),
        serde_json::json!({"$not": {"lang": {"$ne": "en"}}}),
    ]
    .iter()
    .map(|j| Filter::parse(j).unwrap())
    .collect();
    fuzz_file(
        "filters.bin",
        &f.segment.join("filters.bin"),
        |b| reseal_footer(b),
        |p, _| {
            if let Ok(index) = FilterIndex::read(p) {
                for filter in &filters {
                    let _ = index.evaluate(filter);
                }
            }
        },
    );
}

#[test]
fn text_bin() {
    let f = fixture();
    fuzz_file(
        "text.bin",
        &f.segment.join("text.bin"),
        |b| reseal_text(b),
        |p, _| {
            if let Ok(t) = TextIndex::open(p) {
                let q = t.analyze("open file memory");
                if let Ok(stats) = t.stats(&q) {
                    let _ = t.search(&q, Some(&stats), 10, None);
                }
                let _ = t.search(&q, None, 10, None);
            }
        },
    );
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(10),
        ..Config::default()
    })]

    /// Arbitrary bytes, not a damaged file, through each parser that takes
    /// bytes.
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = IndexHeader::parse(&bytes, bytes.len() as u64);
        let _ = Manifest::parse(&bytes);
        let _ = ClusterManifest::parse(&bytes);
        let _ = FilterIndex::from_bytes(&bytes);
    }
}
