//! Issue 11: documents in, passages out. Build from JSON Lines, filtered
//! search against filtered ground truth, user ids and payloads back, bad
//! documents and damaged files refused, documents through a sharded build.

use std::io::Write;
use std::path::Path;

use crate::{cli, cli_ok, generated, p, recall_at, report};

/// Writes `n` documents for rows of a base file: string ids, a label with a
/// skewed distribution, a year, a text, and tags on some.
fn write_docs(path: &Path, n: usize, with_vectors: Option<&[u8]>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        // l0 for half the points, l1 for a quarter, …: a skewed label.
        let label = format!("l{}", (i + 1).trailing_zeros().min(6));
        let mut doc = serde_json::json!({
            "id": format!("doc-{i}"),
            "label": label,
            "year": 2000 + (i * 7919) % 25,
            "text": format!("passage number {i}"),
        });
        if i % 5 == 0 {
            doc["tags"] = serde_json::json!(["five", "multiple"]);
        }
        if let Some(v) = with_vectors {
            doc["vector"] = serde_json::json!(&v[i * 128..(i + 1) * 128]);
        }
        writeln!(f, "{doc}").unwrap();
    }
}

#[test]
fn filtered_search_returns_user_ids_and_payloads_and_matches_filtered_truth() {
    let d = tempfile::tempdir().unwrap();
    let [base, query, _] = generated(d.path(), "sift-like", "4000", "60", "5", "l2", "10");
    let docs = d.path().join("docs.jsonl");
    write_docs(&docs, 4000, None);
    let idx = d.path().join("idx");
    let built = cli_ok(&[
        "build",
        "--base",
        p(&base),
        "--docs",
        p(&docs),
        "--filter-fields",
        // `ghost`: indexed, held by no document.
        "label,year,tags,ghost",
        "--out",
        p(&idx),
        "--max-degree",
        "32",
        "--build-list",
        "64",
        "--pq-bytes",
        "16",
    ]);
    assert!(built.contains("documents: 4000"), "{built}");
    cli_ok(&["verify", p(&idx)]);

    // One filter per query, cycling through the shapes users write.
    let shapes = [
        r#"{"label": "l0"}"#,
        r#"{"label": {"$in": ["l3", "l4"]}}"#,
        r#"{"year": {"$gte": 2020}}"#,
        r#"{"$and": [{"label": "l1"}, {"year": {"$lt": 2010}}]}"#,
        r#"{"tags": "five", "label": {"$ne": "l0"}}"#,
        r#"{"$not": {"label": "l0"}}"#,
    ];
    let filters = d.path().join("filters.jsonl");
    let lines: Vec<&str> = (0..60).map(|i| shapes[i % shapes.len()]).collect();
    std::fs::write(&filters, lines.join("\n")).unwrap();
    let gt = d.path().join("gtf.bin");
    cli_ok(&[
        "groundtruth",
        "--base",
        p(&base),
        "--queries",
        p(&query),
        "--filters",
        p(&filters),
        "--index",
        p(&idx),
        "--k",
        "10",
        "--out",
        p(&gt),
    ]);
    // The flat plan, the filtered walk, and the clustered runs (label and
    // year orders: `{"label": "l0"}` and the year range are exact runs; the
    // `$and`'s runs hold too few matches to be scanned).
    // `ghost` gets no copy (no document holds it) and is no error.
    for (flat_max, cluster) in [("50000", ""), ("100", ""), ("50000", "label,year,ghost")] {
        let json = d.path().join(format!("bench-{flat_max}-{cluster}.json"));
        let mut args = vec![
            "bench",
            "--index",
            p(&idx),
            "--queries",
            p(&query),
            "--gt",
            p(&gt),
            "--filters",
            p(&filters),
            "--list",
            "64,200",
            "--flat-max",
            flat_max,
            "--buffered",
            "--json",
            p(&json),
        ];
        if !cluster.is_empty() {
            args.extend(["--cluster-codes", cluster]);
        }
        let out = cli_ok(&args);
        let r = report(&json);
        assert!(
            recall_at(&r, 200) >= 0.95,
            "flat-max {flat_max} {cluster}: {out}"
        );
        let plans = &r["runs"][0]["filtered"]["plans"];
        if !cluster.is_empty() {
            // Two shapes of six are exact runs.
            assert_eq!(plans["clustered"].as_u64(), Some(20), "{out}");
        } else if flat_max == "100" {
            assert!(plans["filtered_graph"].as_u64().unwrap_or(0) > 0, "{out}");
        } else {
            assert!(plans["flat"].as_u64().unwrap_or(0) > 0, "{out}");
        }
    }

    // A field that is not indexed cannot be clustered: the error names it.
    let err = cli(&[
        "search",
        "--index",
        p(&idx),
        "--queries",
        p(&query),
        "--limit",
        "1",
        "--cluster-codes",
        "label,nope",
    ])
    .unwrap_err();
    assert!(
        err.contains("--cluster-codes") && err.contains("\"nope\" is not indexed"),
        "{err}"
    );

    // Matches evaluated for one set of copies find no run in another: after
    // `cluster_codes` is called again the search falls back to the flat
    // plan, still among the matches only.
    {
        use shardann_engine::filter::Filter;
        use shardann_engine::index::{OpenOptions, SearchScratch};
        use shardann_engine::search::{Plan, SearchParams};
        let mut index = shardann_engine::shard::open(&idx, OpenOptions::buffered()).unwrap();
        let q = shardann_engine::data::VectorFile::open(&query).unwrap();
        let q = q.vectors::<u8>().unwrap();
        let filter = Filter::parse(&serde_json::json!({"label": "l0"})).unwrap();
        let params = SearchParams {
            k: 10,
            list: 40,
            beam: 4,
        };
        let mut scratch = SearchScratch::<u8>::default();
        index.cluster_codes(&["label".into()]).unwrap();
        let matches = index.evaluate(&filter).unwrap();
        let (_, _, plan) = index
            .search_local(&mut scratch, q.row(0), params, Some(&matches))
            .unwrap();
        assert!(matches!(plan, Plan::Clustered { .. }), "{plan:?}");
        index.cluster_codes(&["year".into()]).unwrap();
        let (hits, _, plan) = index
            .search_local(&mut scratch, q.row(0), params, Some(&matches))
            .unwrap();
        assert!(matches!(plan, Plan::Flat { .. }), "{plan:?}");
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| matches.docs().contains(h.id)));
    }

    // Hits carry the user's ids and the fields asked for, and match.
    let out = cli_ok(&[
        "search",
        "--index",
        p(&idx),
        "--queries",
        p(&query),
        "--limit",
        "3",
        "--k",
        "5",
        "--filter",
        r#"{"label": "l2", "year": {"$gte": 2010}}"#,
        "--include",
        "text,label,year",
        "--json",
        "--buffered",
    ]);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let hits = v["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 5, "{line}");
        for h in hits {
            let id = h["id"].as_str().expect("string id as given");
            let i: usize = id.strip_prefix("doc-").unwrap().parse().unwrap();
            assert_eq!(h["fields"]["label"], "l2");
            assert!(h["fields"]["year"].as_u64().unwrap() >= 2010);
            assert_eq!(h["fields"]["text"], format!("passage number {i}"));
            assert!(
                h["fields"].get("tags").is_none(),
                "only the fields asked for"
            );
        }
    }

    // Bad filters name what is wrong.
    for (filter, want) in [
        (r#"{"colour": "red"}"#, "colour"),
        (r#"{"label": {"$regex": "l.*"}}"#, "$regex"),
        (r#"{"year": {"$gt": "x"}}"#, "$gt"),
        (r#"{"label": {"$gt": 3}}"#, "label"),
    ] {
        let e = cli(&[
            "search",
            "--index",
            p(&idx),
            "--queries",
            p(&query),
            "--filter",
            filter,
        ])
        .unwrap_err();
        assert!(e.contains(want), "{filter}: {e}");
    }
}

#[test]
fn bad_documents_name_the_line_and_publish_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"id\": 1, \"vector\": [1, 2]}\n{\"id\": 1, \"vector\": [3, 4]}\n", "line 2: id 1 was already used on line 1"),
        ("{\"id\": 1, \"vector\": [1, 2]}\nnot json\n", "line 2: not JSON"),
        ("{\"id\": 1, \"vector\": [1, 2]}\n{\"vector\": [3, 4]}\n", "line 2: no \"id\""),
        ("{\"id\": 1, \"vector\": [1, 2]}\n{\"id\": 2, \"vector\": [3]}\n", "line 2: field \"vector\""),
        ("{\"id\": 1, \"vector\": [1, 300]}\n", "does not fit u8"),
        (
            "{\"id\": 1, \"vector\": [1, 2], \"year\": 2020}\n{\"id\": 2, \"vector\": [3, 4], \"year\": \"old\"}\n",
            "line 2",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let docs = d.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&docs, text).unwrap();
        let out = d.path().join(format!("out{i}"));
        let e = cli(&[
            "build",
            "--docs",
            p(&docs),
            "--vector-type",
            "u8",
            "--filter-fields",
            "year",
            "--out",
            p(&out),
        ])
        .unwrap_err();
        assert!(
            e.contains(want) && e.contains(&format!("bad{i}.jsonl")),
            "{e}"
        );
        assert!(
            !out.join("CURRENT").exists(),
            "a version was published after: {e}"
        );
    }
}

#[test]
fn damaged_document_files_are_refused_and_shards_carry_their_documents() {
    let d = tempfile::tempdir().unwrap();
    let [base, query, _] = generated(d.path(), "sift-like", "1500", "5", "9", "l2", "10");
    // Vectors inline this time (integer-valued u8), from the generated base.
    let bytes = std::fs::read(&base).unwrap();
    let docs = d.path().join("docs.jsonl");
    write_docs(&docs, 1500, Some(&bytes[8..]));
    let idx = d.path().join("idx");
    cli_ok(&[
        "build",
        "--docs",
        p(&docs),
        "--vector-type",
        "u8",
        "--filter-fields",
        "label",
        "--out",
        p(&idx),
        "--max-degree",
        "16",
        "--build-list",
        "32",
        "--pq-bytes",
        "8",
    ]);
    let seg = idx.join("v0000000001");
    for file in ["keys.bin", "docs.bin", "filters.bin"] {
        let path = seg.join(file);
        let good = std::fs::read(&path).unwrap();
        // A byte in the middle and one in the last 40 (tables, trailers).
        for at in [good.len() / 2, good.len() - 20] {
            let mut bad = good.clone();
            bad[at] ^= 0x55;
            std::fs::write(&path, &bad).unwrap();
            let e = cli(&["verify", p(&idx)]).unwrap_err();
            assert!(e.contains(file), "verify: {e}");
            let opened = cli(&[
                "search",
                "--index",
                p(&idx),
                "--queries",
                p(&query),
                "--include",
                "*",
                "--filter",
                r#"{"label": "l0"}"#,
                "--buffered",
            ]);
            assert!(
                opened.is_err(),
                "{file} damaged at {at} was searched: {opened:?}"
            );
        }
        std::fs::write(&path, &good).unwrap();
    }
    cli_ok(&["verify", p(&idx)]);

    // Two shards: every document lands in exactly one, ids intact.
    let sharded = d.path().join("sharded");
    crate::build_small_docs(&docs, "label", &sharded);
    let mut total = 0;
    for s in 0..2 {
        let shard = sharded.join(format!("shard-{s}"));
        let info = cli_ok(&["inspect", "--index", p(&shard)]);
        let line = info.lines().find(|l| l.starts_with("documents")).unwrap();
        total += line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap();
        let out = cli_ok(&[
            "search",
            "--index",
            p(&shard),
            "--queries",
            p(&query),
            "--limit",
            "1",
            "--k",
            "3",
            "--include",
            "text",
            "--json",
            "--buffered",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        for h in v["hits"].as_array().unwrap() {
            let i: usize = h["id"].as_str().unwrap()[4..].parse().unwrap();
            assert_eq!(h["fields"]["text"], format!("passage number {i}"));
        }
    }
    assert_eq!(total, 1500);
}
