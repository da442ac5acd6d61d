//! Golden files: a v1 index committed to git must stay readable and give the
//! same answers forever. The index is written only if missing (the first run
//! after a format version is introduced); it is never regenerated. Search
//! results are compared to a JSON baseline, refreshed with UPDATE_GOLDEN=1.

use std::path::{Path, PathBuf};

use shardann_engine::data::Vectors;
use shardann_engine::index::{build_index, BuildParams, DiskIndex, OpenOptions, SearchScratch};
use shardann_engine::io::IoBackend;
use shardann_engine::navigation::NavPoints;
use shardann_engine::pq::PqParams;
use shardann_engine::progress::NoProgress;
use shardann_engine::search::SearchParams;
use shardann_engine::shard;
use shardann_engine::synth::{generate_u8, Stream};
use shardann_engine::vamana::VamanaParams;
use shardann_engine::Metric;

const DIM: usize = 16;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// 256 × 16 u8 points: the first 16 dims of sift-like rows.
fn points(stream: Stream, n: usize) -> Vec<u8> {
    generate_u8(n, 2024, stream)
        .chunks_exact(128)
        .flat_map(|r| r[..DIM].to_vec())
        .collect()
}

fn write_v1(dir: &Path) {
    let data = points(Stream::Base, 256);
    let params = BuildParams {
        metric: Metric::L2,
        vamana: VamanaParams {
            max_degree: 8,
            build_list: 16,
            ..Default::default()
        },
        pq: PqParams {
            num_chunks: 4,
            train_sample: 256,
            iterations: 6,
            seed: 1,
        },
        order: shardann_engine::layout::NodeOrder::Identity,
    };
    // One thread, so the build is deterministic.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| build_index(Vectors::new(&data[..], DIM), &params, dir, &NoProgress))
        .unwrap();
    let _ = std::fs::remove_file(dir.join("build.json"));
}

fn open(dir: &Path) -> shardann_engine::Result<DiskIndex> {
    shard::open(
        dir,
        OpenOptions {
            direct_io: false,
            io: IoBackend::Pread,
            cache_nodes: 0,
            nav_points: NavPoints::NONE,
        },
    )
}

#[test]
fn v1_index_stays_readable_with_the_same_results() {
    let v1 = golden_dir().join("v1");
    if !v1.join("disk.index").exists() {
        std::fs::create_dir_all(&v1).unwrap();
        write_v1(&v1);
        eprintln!("wrote the golden v1 index to {}: commit it", v1.display());
    }
    let idx = open(&v1).expect("the committed v1 index must open");
    assert_eq!((idx.len(), idx.dim()), (256, DIM));
    let results = golden_results(&idx);
    check_baseline(&v1.join("results.json"), &results, "v1");
    check_distances(&results);
}

/// Compares `results` with the committed baseline at `path` (written when
/// missing or with UPDATE_GOLDEN=1).
fn check_baseline(path: &Path, results: &[Vec<(u32, f32)>], what: &str) {
    let json = serde_json::to_string_pretty(&results).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() || !path.exists() {
        std::fs::write(path, &json).unwrap();
    }
    let want: Vec<Vec<(u32, f32)>> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(
        results, want,
        "search results on the {what} golden index changed"
    );
}

/// The exact distances of the golden queries' hits are right, whatever
/// the graph found.
fn check_distances(results: &[Vec<(u32, f32)>]) {
    let queries = points(Stream::Query, 20);
    let base = points(Stream::Base, 256);
    for (i, r) in results.iter().enumerate() {
        for &(id, dist) in r {
            let want = shardann_engine::metric::scalar::l2sq(
                &queries[i * DIM..(i + 1) * DIM],
                &base[id as usize * DIM..(id as usize + 1) * DIM],
            );
            assert_eq!(dist as f64, want);
        }
    }
}

/// The v1 golden index's answers to its 20 queries (k=5, L=20, W=2).
fn golden_results(idx: &DiskIndex) -> Vec<Vec<(u32, f32)>> {
    let queries = points(Stream::Query, 20);
    let q = Vectors::new(&queries[..], DIM);
    let mut s = SearchScratch::<u8>::default();
    let params = SearchParams {
        k: 5,
        list: 20,
        beam: 2,
    };
    (0..q.len())
        .map(|i| {
            idx.search(&mut s, q.row(i), params)
                .unwrap()
                .0
                .iter()
                .map(|h| (h.id, h.distance))
                .collect()
        })
        .collect()
}

/// A v2 index (the v1 golden graph written in locality order) must stay
/// readable: searched node by node it answers exactly as v1 does, and with
/// its sector mates it keeps its own committed answers.
#[test]
fn v2_index_stays_readable_with_the_same_results() {
    let v2 = golden_dir().join("v2");
    if !v2.join("disk.index").exists() {
        let v1 = golden_dir().join("v1");
        assert!(
            v1.join("disk.index").exists(),
            "run the v1 golden test first"
        );
        shardann_engine::index::relayout(
            &open(&v1).unwrap(),
            &v2,
            shardann_engine::layout::NodeOrder::Locality,
            &NoProgress,
        )
        .unwrap();
        eprintln!("wrote the golden v2 index to {}: commit it", v2.display());
    }
    let mut idx = open(&v2).expect("the committed v2 index must open");
    assert_eq!(
        idx.header().order,
        shardann_engine::layout::NodeOrder::Locality
    );
    idx.set_sector_mates(false);
    let v1_want: Vec<Vec<(u32, f32)>> =
        serde_json::from_slice(&std::fs::read(golden_dir().join("v1/results.json")).unwrap())
            .unwrap();
    assert_eq!(
        golden_results(&idx),
        v1_want,
        "v2 without sector mates must answer as v1"
    );
    idx.set_sector_mates(true);
    let results = golden_results(&idx);
    check_baseline(&v2.join("results.json"), &results, "v2");
    check_distances(&results);
}

/// A v2 index whose slot table is damaged is refused at open, naming it.
#[test]
fn v2_corrupt_slot_table_is_refused() {
    let v2 = golden_dir().join("v2");
    let dir = tempfile::tempdir().unwrap();
    let idx = match open(&v2) {
        Ok(i) => i,
        Err(_) => return, // written by the test above on a first run
    };
    let table_at = idx.header().num_sectors() as usize * 4096;
    let mut disk = std::fs::read(v2.join("disk.index")).unwrap();
    std::fs::copy(v2.join("pq.bin"), dir.path().join("pq.bin")).unwrap();
    disk[table_at + 5] ^= 0x01;
    std::fs::write(dir.path().join("disk.index"), &disk).unwrap();
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("slot table checksum mismatch") && e.contains("disk.index"),
        "{e}"
    );
    disk.truncate(table_at + 100);
    std::fs::write(dir.path().join("disk.index"), &disk).unwrap();
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("slot table") && e.contains("disk.index"), "{e}");
}

#[test]
fn v1_corrupt_fixture_is_refused() {
    let corrupt = golden_dir().join("v1_corrupt");
    if !corrupt.join("disk.index").exists() {
        let v1 = golden_dir().join("v1");
        assert!(
            v1.join("disk.index").exists(),
            "run the v1 golden test first"
        );
        std::fs::create_dir_all(&corrupt).unwrap();
        let mut disk = std::fs::read(v1.join("disk.index")).unwrap();
        disk[16] ^= 0xff; // the dimension field, under the header checksum
        std::fs::write(corrupt.join("disk.index"), disk).unwrap();
        std::fs::copy(v1.join("pq.bin"), corrupt.join("pq.bin")).unwrap();
    }
    let e = open(&corrupt).unwrap_err().to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("disk.index"),
        "{e}"
    );
}

/// A v1 segment (the v1 golden index, sealed as version 1 of shard 0) must
/// stay verifiable and open through its shard directory with the v1 answers.
#[test]
fn segment_v1_golden_stays_verifiable() {
    let shard = golden_dir().join("segment-v1");
    let seg = shard.join(shardann_engine::layout::version_dir_name(1));
    if !shard.join(shardann_engine::layout::CURRENT_FILE).exists() {
        let v1 = golden_dir().join("v1");
        std::fs::create_dir_all(&seg).unwrap();
        for f in ["disk.index", "pq.bin"] {
            std::fs::copy(v1.join(f), seg.join(f)).unwrap();
        }
        shardann_engine::segment::seal(&seg, 0, 1, None, None).unwrap();
        shardann_engine::shard::publish(&shard, 1).unwrap();
        eprintln!("wrote the golden segment to {}: commit it", shard.display());
    }
    let v = shardann_engine::shard::verify(&shard).expect("the committed segment must verify");
    assert_eq!((v.manifest.shard_id, v.manifest.version), (0, 1));
    let names: Vec<_> = v.manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["disk.index", "pq.bin"]);
    assert_eq!(v.manifest.files[0].size, 20480);
    let by_shard = open(&shard).unwrap();
    let plain = open(&golden_dir().join("v1")).unwrap();
    let queries = points(Stream::Query, 20);
    let q = Vectors::new(&queries[..], DIM);
    let params = SearchParams {
        k: 5,
        list: 20,
        beam: 2,
    };
    let mut s = SearchScratch::<u8>::default();
    for i in 0..q.len() {
        let a = by_shard.search(&mut s, q.row(i), params).unwrap().0;
        let b = plain.search(&mut s, q.row(i), params).unwrap().0;
        assert_eq!(a, b);
    }
}
