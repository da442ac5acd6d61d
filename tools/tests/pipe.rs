//! The binary against a closed stdout: `shardann search … | head -1` must
//! end quietly with the status a Unix filter gets (141), not with an error
//! message (it printed "error: Broken pipe" and exited 1) or a panic (exit
//! 101).

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_shardann");

/// Runs `shardann args` with its stdout a pipe whose reading end is closed
/// before it writes; returns (exit code, signal, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(&[
        "--quiet",
        "gen",
        "--n",
        "400",
        "--queries",
        "50",
        "--out",
        p(d),
    ]);
    let index = d.join("index");
    run(&[
        "--quiet",
        "build",
        "--base",
        p(&d.join("base.u8bin")),
        "--out",
        p(&index),
        "--max-degree",
        "8",
        "--build-list",
        "16",
        "--pq-bytes",
        "8",
    ]);
    let queries = d.join("query.u8bin");
    let search = [
        "search",
        "--index",
        p(&index),
        "--queries",
        p(&queries),
        "--buffered",
    ];
    let gen_out = d.join("again");
    let gen = ["gen", "--n", "100", "--queries", "5", "--out", p(&gen_out)];
    for args in [&search[..], &["--help"], &["search", "--help"], &gen[..]] {
        let (code, signal, stderr) = with_closed_stdout(args);
        assert_ne!(code, Some(101), "{args:?} panicked: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed {stderr:?}");
        // The status a shell shows for `cat` or `grep` killed by SIGPIPE
        // (141), or 0 when nothing was left to say (clap's help).
        assert!(
            signal.is_none() && matches!(code, Some(141) | Some(0)),
            "{args:?}: exit {code:?}, signal {signal:?}"
        );
    }
}
