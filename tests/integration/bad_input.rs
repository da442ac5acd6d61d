//! Every bad input gets an error that names the file and the problem,
//! never a panic and never a wrong answer.

use std::path::Path;

use crate::{cli, cli_ok, generated, p};

fn err(args: &[&str]) -> String {
    match cli(args) {
        Ok(out) => panic!("shardann {args:?} should have failed, printed:\n{out}"),
        Err(e) => e,
    }
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            msg.contains(n),
            "error message {msg:?} does not mention {n:?}"
        );
    }
}

/// A small index plus its data, shared by the cases below.
fn fixture(d: &Path) {
    generated(d, "sift-like", "800", "20", "2", "l2", "10");
    cli_ok(&[
        "build",
        "--base",
        p(&d.join("base.u8bin")),
        "--out",
        p(&d.join("index")),
        "--max-degree",
        "16",
        "--pq-bytes",
        "8",
    ]);
}

#[test]
fn truncated_vector_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let base = d.join("base.u8bin");
    let bytes = std::fs::read(&base).unwrap();
    let cut = d.join("cut.u8bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = err(&["build", "--base", p(&cut), "--out", p(&d.join("x"))]);
    assert_mentions(&e, &["cut.u8bin", "truncated", "102400"]);
    std::fs::write(&cut, &bytes[..5]).unwrap();
    assert_mentions(
        &err(&["build", "--base", p(&cut), "--out", p(&d.join("x"))]),
        &["cut.u8bin", "too short"],
    );
    assert_mentions(
        &err(&[
            "build",
            "--base",
            p(&d.join("missing.u8bin")),
            "--out",
            p(&d.join("x")),
        ]),
        &["missing.u8bin"],
    );
}

#[test]
fn wrong_element_type_and_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    // The same bytes under a float extension: the size does not fit f32.
    let as_f32 = d.join("base.fbin");
    std::fs::copy(d.join("base.u8bin"), &as_f32).unwrap();
    assert_mentions(
        &err(&["build", "--base", p(&as_f32), "--out", p(&d.join("x"))]),
        &["base.fbin", "extension"],
    );
    // Queries of another dimension.
    let other = d.join("other");
    cli_ok(&[
        "gen",
        "--preset",
        "deep-like",
        "--n",
        "10",
        "--queries",
        "5",
        "--out",
        p(&other),
    ]);
    let e = err(&[
        "bench",
        "--index",
        p(&d.join("index")),
        "--queries",
        p(&other.join("query.fbin")),
        "--gt",
        p(&d.join("gt.bin")),
    ]);
    assert_mentions(&e, &["query.fbin", "f32", "u8"]);
    let small = d.join("small.u8bin");
    shardann_engine::data::write_vectors(&small, 64, &[1u8; 64 * 3]).unwrap();
    let e = err(&[
        "search",
        "--index",
        p(&d.join("index")),
        "--queries",
        p(&small),
    ]);
    assert_mentions(&e, &["dimension mismatch", "small.u8bin", "64", "128"]);
    let e = err(&[
        "groundtruth",
        "--base",
        p(&d.join("base.u8bin")),
        "--queries",
        p(&small),
        "--out",
        p(&d.join("g")),
    ]);
    assert_mentions(&e, &["dimension mismatch"]);
}

#[test]
fn corrupt_index_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let index = d.join("index");
    let q = d.join("query.u8bin");
    let search = |idx: &Path| err(&["search", "--index", p(idx), "--queries", p(&q)]);

    // The files of the index's current segment, copied into a plain
    // (unversioned) index directory and broken one way at a time.
    let segment = shardann_engine::shard::resolve(&index).unwrap();
    let disk = std::fs::read(segment.join("disk.index")).unwrap();
    let pq = std::fs::read(segment.join("pq.bin")).unwrap();
    let broken = d.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let with = |disk_bytes: &[u8], pq_bytes: &[u8]| {
        std::fs::write(broken.join("disk.index"), disk_bytes).unwrap();
        std::fs::write(broken.join("pq.bin"), pq_bytes).unwrap();
    };

    let mut bad = disk.clone();
    bad[20] ^= 0x40; // max degree, under the checksum
    with(&bad, &pq);
    assert_mentions(&search(&broken), &["disk.index", "checksum mismatch"]);

    let mut bad = disk.clone();
    bad[..8].copy_from_slice(b"NOTANIDX");
    with(&bad, &pq);
    assert_mentions(&search(&broken), &["disk.index", "bad magic"]);

    with(&disk[..disk.len() - 4096], &pq);
    assert_mentions(&search(&broken), &["disk.index", "truncated"]);

    let mut bad = pq.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    with(&disk, &bad);
    assert_mentions(&search(&broken), &["pq.bin", "checksum mismatch"]);

    with(&disk, &pq[..pq.len() - 1]);
    assert_mentions(&search(&broken), &["pq.bin", "truncated"]);

    std::fs::remove_file(broken.join("pq.bin")).unwrap();
    assert_mentions(&search(&broken), &["pq.bin"]);

    // A corrupt node record: degree beyond R in the medoid's sector.
    let mut bad = disk.clone();
    let header = shardann_engine::layout::IndexHeader::parse(&disk, disk.len() as u64).unwrap();
    let g = match header.order {
        shardann_engine::layout::NodeOrder::Identity => {
            shardann_engine::layout::SectorGeometry::new(&header)
        }
        shardann_engine::layout::NodeOrder::Locality => {
            let table = &disk[header.num_sectors() as usize * 4096..];
            let slots =
                shardann_engine::layout::parse_slot_table(table, header.num_points as usize)
                    .unwrap();
            shardann_engine::layout::SectorGeometry::with_slots(&header, slots)
        }
    };
    let loc = g.locate(header.medoid as u32);
    let at = loc.sector as usize * 4096 + loc.offset + g.vector_bytes;
    bad[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    with(&bad, &pq);
    // From the medoid (no navigation graph), the first record read is bad;
    // a navigation graph over every point reads every record at open.
    for nav in ["0", "100%"] {
        let e = err(&[
            "search",
            "--index",
            p(&broken),
            "--queries",
            p(&q),
            "--nav-points",
            nav,
        ]);
        assert_mentions(&e, &["disk.index", "exceeds R"]);
    }
}

#[test]
fn bad_parameters_and_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let (index, q, gt) = (d.join("index"), d.join("query.u8bin"), d.join("gt.bin"));
    assert_mentions(
        &err(&[
            "search",
            "--index",
            p(&index),
            "--queries",
            p(&q),
            "--k",
            "0",
        ]),
        &["k must be at least 1"],
    );
    assert_mentions(
        &err(&[
            "search",
            "--index",
            p(&index),
            "--queries",
            p(&q),
            "--k",
            "20",
            "--list",
            "10",
        ]),
        &["L = 10", "k = 20"],
    );
    assert_mentions(
        &err(&[
            "search",
            "--index",
            p(&index),
            "--queries",
            p(&q),
            "--beam",
            "0",
        ]),
        &["beam width"],
    );
    assert_mentions(
        &err(&[
            "bench",
            "--index",
            p(&index),
            "--queries",
            p(&q),
            "--gt",
            p(&gt),
            "--k",
            "50",
        ]),
        &["gt.bin", "fewer than k = 50"],
    );
    let bytes = std::fs::read(&gt).unwrap();
    std::fs::write(&gt, &bytes[..bytes.len() - 8]).unwrap();
    assert_mentions(
        &err(&[
            "bench",
            "--index",
            p(&index),
            "--queries",
            p(&q),
            "--gt",
            p(&gt),
        ]),
        &["gt.bin", "nq = 20, k = 10"],
    );
    let (base, x) = (d.join("base.u8bin"), d.join("x"));
    for (flags, needle) in [
        (["--pq-bytes", "500"], "PQ bytes"),
        (["--alpha", "0.5"], "alpha"),
        (["--metric", "hamming"], "unknown metric"),
    ] {
        let mut args = vec!["build", "--base", p(&base), "--out", p(&x)];
        args.extend_from_slice(&flags);
        assert_mentions(&err(&args), &[needle]);
    }
    assert_mentions(
        &err(&["gen", "--preset", "gist-like", "--out", p(d)]),
        &["unknown preset"],
    );
    assert_mentions(
        &err(&["inspect", "--index", p(&index), "--node", "999999"]),
        &["out of range"],
    );
}

/// Counts where 0 means nothing (`build --shards 0` built one unsharded
/// index, `bench --batch 0` and `replicate --attempts 0` were taken as 1)
/// are refused by name; an `--out` that exists and is not a directory is
/// named as such (it was a bare "Not a directory" on a path below it, or
/// "File exists" with --shards).
#[test]
fn zero_counts_and_a_file_as_out_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generated(d, "sift-like", "300", "5", "2", "l2", "10");
    let base = d.join("base.u8bin");
    assert_mentions(
        &err(&[
            "build",
            "--base",
            p(&base),
            "--out",
            p(&d.join("i")),
            "--shards",
            "0",
        ]),
        &["--shards", "0"],
    );
    assert!(!d.join("i").exists(), "build --shards 0 wrote an index");
    assert_mentions(
        &err(&[
            "bench",
            "--server",
            "http://127.0.0.1:9",
            "--queries",
            p(&d.join("query.u8bin")),
            "--gt",
            p(&d.join("gt.bin")),
            "--batch",
            "0",
        ]),
        &["--batch", "0"],
    );
    assert_mentions(
        &err(&[
            "replicate",
            "--from",
            "http://127.0.0.1:9",
            "--shard",
            "0",
            "--index-dir",
            p(&d.join("r")),
            "--attempts",
            "0",
        ]),
        &["--attempts", "0"],
    );
    let file = d.join("a-file");
    std::fs::write(&file, "not an index").unwrap();
    for shards in ["1", "2"] {
        let e = err(&[
            "build",
            "--base",
            p(&base),
            "--out",
            p(&file),
            "--shards",
            shards,
        ]);
        assert_mentions(&e, &["a-file", "exists and is not a directory"]);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not an index");
}

/// `build --memory-budget` below what the data needs fails before any work
/// (no version, no scratch left), naming the least budget that would do;
/// that budget then builds.
#[test]
fn memory_budget_too_small_fails_at_once_naming_the_least() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let base = d.join("base.u8bin");
    let out = d.join("budgeted");
    let args = |budget: &str| -> Vec<String> {
        let (b, o) = (p(&base), p(&out));
        let flags = [
            "build",
            "--base",
            b,
            "--out",
            o,
            "--max-degree",
            "16",
            "--pq-bytes",
            "8",
        ];
        let mut v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        v.extend(["--memory-budget".to_string(), budget.to_string()]);
        v
    };
    fn as_strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let e = err(&as_strs(&args("1MiB")));
    assert_mentions(&e, &["1.0 MiB", "too small", "800 points", "at least"]);
    assert!(!out.join("CURRENT").exists());
    let least = e
        .split("--memory-budget ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no budget named in {e}"));
    let built = cli_ok(&as_strs(&args(least)));
    assert!(built.contains("memory budget"), "{built}");
    assert!(out.join("CURRENT").exists());
    assert_mentions(
        &err(&[
            "build",
            "--base",
            p(&base),
            "--out",
            p(&out),
            "--memory-budget",
            "lots",
        ]),
        &["lots"],
    );
}
