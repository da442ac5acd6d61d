//! The `auto` IO backend falls back to `pread` when io_uring cannot be set
//! up. A test binary of its own: it sets SHARDANN_DISABLE_URING for the
//! whole process, which would disturb tests running beside it.

#[test]
fn auto_falls_back_to_pread_when_uring_setup_fails() {
    std::env::set_var("SHARDANN_DISABLE_URING", "1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let run = |args: &[String]| {
        let mut out = Vec::new();
        let mut argv = vec!["shardann".to_string(), "--quiet".to_string()];
        argv.extend_from_slice(args);
        shardann::run(argv, &mut out)
            .map(|_| String::from_utf8(out).unwrap())
            .map_err(|e| format!("{e:#}"))
    };
    let args = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    run(&args(&[
        "gen",
        "--n",
        "1000",
        "--queries",
        "10",
        "--out",
        &s(d),
    ]))
    .unwrap();
    let index = s(&d.join("index"));
    run(&args(&[
        "build",
        "--base",
        &s(&d.join("base.u8bin")),
        "--out",
        &index,
        "--max-degree",
        "16",
        "--pq-bytes",
        "8",
    ]))
    .unwrap();
    let q = s(&d.join("query.u8bin"));
    let auto = run(&args(&[
        "search",
        "--index",
        &index,
        "--queries",
        &q,
        "--io",
        "auto",
    ]))
    .unwrap();
    let pread = run(&args(&[
        "search",
        "--index",
        &index,
        "--queries",
        &q,
        "--io",
        "pread",
    ]))
    .unwrap();
    assert_eq!(auto, pread);
    let e = run(&args(&[
        "search",
        "--index",
        &index,
        "--queries",
        &q,
        "--io",
        "uring",
    ]))
    .unwrap_err();
    assert!(e.contains("disk.index"), "{e}");
    // The engine reports which backend it chose.
    let idx = shardann_engine::shard::open(&index, Default::default()).unwrap();
    assert!(
        idx.io_backend().starts_with("pread"),
        "{}",
        idx.io_backend()
    );
}
