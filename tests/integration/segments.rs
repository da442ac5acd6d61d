//! Versioned segments: every flipped or truncated byte is caught, versions
//! switch atomically and only forward.

use std::path::{Path, PathBuf};

use shardann_engine::index::{DiskIndex, OpenOptions};
use shardann_engine::layout::{self, Manifest, CURRENT_FILE, MANIFEST_FILE};
use shardann_engine::shard;

use crate::{build_small, cli, cli_ok, copy_all, generated, p};

fn open(dir: &Path) -> shardann_engine::Result<DiskIndex> {
    shard::open(dir, OpenOptions::buffered())
}

/// Byte positions to damage in a file of `len` bytes: both ends, the
/// disk.index header, and a spread through the middle.
fn positions(len: usize) -> Vec<usize> {
    let mut v = vec![
        0,
        8,
        12,
        64,
        119,
        120,
        127,
        len / 3,
        len / 2,
        len - 9,
        len - 1,
    ];
    v.extend((1..8).map(|i| i * len / 8));
    v.retain(|&i| i < len);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_flipped_or_truncated_byte_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, ..] = generated(d, "sift-like", "3000", "10", "5", "l2", "10");
    let out = d.join("idx");
    build_small(&base, &out, 2, "16");
    let seg = shard::resolve(&out.join("shard-1")).unwrap();
    let m = Manifest::read(&seg).unwrap();
    assert_eq!((m.shard_id, m.version, m.parent_version), (1, 1, None));
    let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["build.json", "disk.index", "ids.bin", "pq.bin"]);
    let ok = cli_ok(&["verify", p(&out)]);
    assert_eq!(ok.lines().count(), 2, "{ok}");

    let mut cases = 0;
    let files: Vec<PathBuf> = std::fs::read_dir(&seg)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(file).unwrap();
        let broken = d.join("broken");
        let mut damage = |what: String, content: Vec<u8>, open_must_fail: bool| {
            let _ = std::fs::remove_dir_all(&broken);
            copy_all(&seg, &broken);
            std::fs::write(broken.join(&name), content).unwrap();
            let e = shard::verify(&broken)
                .err()
                .unwrap_or_else(|| panic!("verify accepted {what}"));
            let e = e.to_string();
            assert!(e.contains(&name), "{what}: {e} should name {name}");
            let e = cli(&["verify", p(&broken)]).expect_err(&what);
            assert!(e.contains(&name), "{what}: {e}");
            if open_must_fail {
                assert!(open(&broken).is_err(), "open accepted {what}");
            }
            cases += 1;
        };
        for pos in positions(bytes.len()) {
            let mut b = bytes.clone();
            b[pos] ^= 0x01;
            // What open checks: the manifest, file sizes, and the checksums
            // the files carry (disk.index header, pq.bin, ids.bin). A flip in
            // a disk.index record or in build.json is for verify to find.
            let open_checks = match name.as_str() {
                "disk.index" => pos < 128,
                "build.json" => false,
                _ => true,
            };
            damage(format!("{name} byte {pos} flipped"), b, open_checks);
        }
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            damage(
                format!("{name} cut to {cut} bytes"),
                bytes[..cut].to_vec(),
                true,
            );
        }
    }
    assert!(cases > 80, "{cases}");

    // A missing file, an extra (unlisted) file is harmless, a wrong shard
    // directory pointer is refused.
    let broken = d.join("broken");
    let _ = std::fs::remove_dir_all(&broken);
    copy_all(&seg, &broken);
    std::fs::remove_file(broken.join("ids.bin")).unwrap();
    assert!(open(&broken).is_err() && shard::verify(&broken).is_err());
    let _ = std::fs::remove_dir_all(&broken);
    copy_all(&seg, &broken);
    std::fs::write(broken.join("notes.txt"), "x").unwrap();
    shard::verify(&broken).unwrap();
}

#[test]
fn versions_switch_atomically_and_only_forward() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "2000", "5", "6", "l2", "10");
    let idx = d.join("idx");
    let build = |r: &str| build_small(&base, &idx, 1, r);
    assert!(build("12").contains("version 1"));
    assert!(build("16").contains("version 2"));
    let (v, cur) = shard::current(&idx).unwrap();
    assert_eq!(v, 2);
    let m = Manifest::read(&cur).unwrap();
    assert_eq!(
        (m.version, m.parent_version, m.build.max_degree),
        (2, Some(1), 16)
    );
    // Searches open the current version.
    let opened = open(&idx).unwrap();
    assert_eq!(opened.header().max_degree, 16);
    assert_eq!(opened.segment().map(|m| m.version), Some(2));
    cli_ok(&[
        "search",
        "--index",
        p(&idx),
        "--queries",
        p(&query),
        "--buffered",
    ]);

    // Going back is refused; the pointer is unchanged.
    let e = shard::publish(&idx, 1).unwrap_err().to_string();
    assert!(e.contains("older than the current version 2"), "{e}");
    assert_eq!(shard::current(&idx).unwrap().0, 2);
    // An unsealed segment (no manifest yet) cannot become current.
    let v3 = idx.join(layout::version_dir_name(3));
    copy_all(&cur, &v3);
    std::fs::remove_file(v3.join(MANIFEST_FILE)).unwrap();
    assert!(shard::publish(&idx, 3).is_err());
    assert_eq!(shard::current(&idx).unwrap().0, 2);
    // A crash between writing CURRENT.tmp and the rename leaves the old
    // pointer, which still opens; the leftover is ignored.
    std::fs::write(idx.join("CURRENT.tmp"), "v0000000003\n").unwrap();
    assert_eq!(open(&idx).unwrap().segment().unwrap().version, 2);
    // The next build replaces the unsealed leftover and moves on.
    assert!(build("16").contains("version 3"));
    assert_eq!(shard::current(&idx).unwrap().0, 3);
    shard::verify(&idx).unwrap();
    // A pointer that names no version is refused with its file named.
    for bad in ["v3\n", "v0000000003", "../v0000000002\n", ""] {
        std::fs::write(idx.join(CURRENT_FILE), bad).unwrap();
        let e = open(&idx).unwrap_err().to_string();
        assert!(e.contains(CURRENT_FILE), "{bad:?}: {e}");
    }
    // A plain index is not rebuilt over.
    let plain = d.join("plain");
    copy_all(&cur, &plain);
    std::fs::remove_file(plain.join(MANIFEST_FILE)).unwrap();
    open(&plain).unwrap();
    let e = cli(&["build", "--base", p(&base), "--out", p(&plain)]).unwrap_err();
    assert!(e.contains("plain (unversioned) index"), "{e}");
    let e = cli(&["verify", p(&plain)]).unwrap_err();
    assert!(e.contains(MANIFEST_FILE), "{e}");
}

/// Issue 10 item 7: `shardann verify` on a sharded root checks each shard
/// against `cluster.json` as `serve` does when it opens it (point count,
/// and a segment of that shard with its global ids), not only each
/// segment against itself: verify used to pass where serve refused.
#[test]
fn issue_10_verify_cross_checks_cluster_json_against_each_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, ..] = generated(d, "sift-like", "1200", "10", "6", "l2", "10");
    let out = d.join("idx");
    build_small(&base, &out, 2, "8");
    cli_ok(&["verify", p(&out)]);

    // Totals still agree, so cluster.json checks out against itself; the
    // shards no longer match it.
    let path = out.join(layout::CLUSTER_FILE);
    let mut cm: shardann_engine::cluster::ClusterManifest =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cm.shards[0].num_points += 1;
    cm.shards[1].num_points -= 1;
    std::fs::write(&path, serde_json::to_vec(&cm).unwrap()).unwrap();
    let e = cli(&["verify", p(&out)]).unwrap_err();
    assert!(e.contains("shard 0"), "{e}");
    assert!(e.contains("cluster.json"), "{e}");
}

/// A segment directory (`v…`, named by `CURRENT` or opened directly)
/// without `segment.json` is not sealed, and format-spec/segment-v1.md says
/// it MUST NOT be opened as one. It used to open as a plain index, with no
/// manifest check at all. A plain index (a directory with neither `CURRENT`
/// nor a manifest, not named as a version) still opens, as the spec allows.
#[test]
fn a_segment_without_its_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, query, _] = generated(d, "sift-like", "600", "5", "7", "l2", "10");
    let idx = d.join("idx");
    build_small(&base, &idx, 1, "16");
    let seg = idx.join(layout::version_dir_name(1));
    let plain = d.join("plain");
    copy_all(&seg, &plain);
    std::fs::remove_file(seg.join(MANIFEST_FILE)).unwrap();
    for target in [&idx, &seg] {
        let e = open(target).unwrap_err().to_string();
        assert!(
            e.contains("v0000000001") && e.contains("not sealed"),
            "{}: {e}",
            target.display()
        );
    }
    let e = cli(&["search", "--index", p(&idx), "--queries", p(&query)]).unwrap_err();
    assert!(e.contains("not sealed"), "{e}");
    std::fs::remove_file(plain.join(MANIFEST_FILE)).unwrap();
    assert!(open(&plain).unwrap().segment().is_none());
}
