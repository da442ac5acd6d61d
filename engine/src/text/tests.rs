use super::*;
use serde_json::json;
use std::path::PathBuf;

use crate::layout::TEXT_FILE;

fn payload(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

const CORPUS: &[&str] = &[
    "open and possibly create a file",
    "read from a file descriptor",
    "write to a file descriptor",
    "O_DIRECT bypasses the page cache for file IO",
    "list directory contents",
    "copy memory area",
    "the perf_event_open system call sets up performance monitoring",
    "close a file descriptor and free the descriptor slot",
];

fn build(dir: &Path, docs: &[(u32, &str)], analyzer: Analyzer) -> TextIndex {
    let fields = vec!["title".to_string(), "text".to_string()];
    let mut b = TextIndexBuilder::new(&fields, analyzer, &dir.join("scratch")).unwrap();
    for &(id, t) in docs {
        b.add(
            id,
            &payload(json!({"title": format!("page{id}"), "text": t})),
        )
        .unwrap();
    }
    let out = dir.join("text.bin");
    b.finish(&out).unwrap();
    assert!(!dir.join("scratch").exists(), "scratch removed");
    TextIndex::open(&out).unwrap()
}

fn all_docs() -> Vec<(u32, &'static str)> {
    CORPUS
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u32, *t))
        .collect()
}

/// Lucene's BM25 (k1 = 1.2, b = 0.75), as tantivy computes it, but with
/// exact lengths: the oracle for ranking (tantivy quantizes lengths, so
/// scores agree to a few percent, rankings on this corpus exactly).
fn oracle(docs: &[Vec<String>], query: &[String]) -> Vec<(u32, f32)> {
    let n = docs.len() as f32;
    let avg = docs.iter().map(|d| d.len()).sum::<usize>() as f32 / n;
    let mut out: Vec<(u32, f32)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut s = 0.0;
            for t in query {
                let df = docs.iter().filter(|d| d.contains(t)).count() as f32;
                if df == 0.0 {
                    continue;
                }
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let tf = d.iter().filter(|w| *w == t).count() as f32;
                s += idf * tf * 2.2 / (tf + 1.2 * (1.0 - 0.75 + 0.75 * d.len() as f32 / avg));
            }
            (i as u32, s)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[test]
fn ranks_as_bm25_does() {
    let dir = tempfile::tempdir().unwrap();
    let index = build(dir.path(), &all_docs(), Analyzer::WordsStop);
    assert_eq!(index.num_docs(), CORPUS.len() as u64);
    let tokenized: Vec<Vec<String>> = all_docs()
        .iter()
        .map(|(id, t)| analyze(Analyzer::WordsStop, &format!("page{id}\n{t}")).terms)
        .collect();
    for q in [
        "file descriptor",
        "close the descriptor",
        "O_DIRECT",
        "directory",
        "nothing",
    ] {
        let query = index.analyze(q);
        let got = index.search(&query, None, 10, None).unwrap();
        let want = oracle(&tokenized, &query.terms);
        let got_ids: Vec<u32> = got.iter().map(|h| h.0).collect();
        let want_ids: Vec<u32> = want.iter().map(|h| h.0).collect();
        assert_eq!(got_ids, want_ids, "query {q:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 0.1 * w.1, "{q:?}: {g:?} vs {w:?}");
        }
    }
}

#[test]
fn identifiers_stay_whole_and_stop_words_go() {
    let t = analyze(
        Analyzer::WordsStop,
        "The O_DIRECT flag of perf_event_open, a X",
    );
    assert_eq!(t.terms, ["o_direct", "flag", "perf_event_open"]);
    let t = analyze(Analyzer::Words, "The O_DIRECT flag");
    assert_eq!(t.terms, ["the", "o_direct", "flag"]);
    let t = analyze(Analyzer::WordsStopStem, "opening files");
    assert_eq!(t.terms, ["open", "file"]);
}

/// The heart of global statistics: a corpus split in two, each half
/// scoring with the summed statistics, ranks and scores exactly as the
/// whole does.
#[test]
fn summed_statistics_make_split_scores_equal_whole_scores() {
    let docs = all_docs();
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = build(whole_dir.path(), &docs, Analyzer::WordsStop);
    let (a_docs, b_docs): (Vec<_>, Vec<_>) = docs.iter().partition(|(i, _)| i % 3 == 0);
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = build(a_dir.path(), &a_docs, Analyzer::WordsStop);
    let b = build(b_dir.path(), &b_docs, Analyzer::WordsStop);
    for q in [
        "file descriptor",
        "copy a file",
        "performance monitoring call",
    ] {
        let query = whole.analyze(q);
        let mut global = a.stats(&query).unwrap();
        global.add(&b.stats(&query).unwrap());
        assert_eq!(global, whole.stats(&query).unwrap());
        let mut merged = a.search(&query, Some(&global), 10, None).unwrap();
        merged.extend(b.search(&query, Some(&global), 10, None).unwrap());
        merged.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        let want = whole.search(&query, None, 10, None).unwrap();
        assert_eq!(merged, want, "query {q:?}");
        // Local statistics give different scores: the test can fail.
        let local = a.search(&query, None, 10, None).unwrap();
        let with_global = a.search(&query, Some(&global), 10, None).unwrap();
        assert_ne!(local, with_global);
    }
}

#[test]
fn filters_restrict_hits() {
    let dir = tempfile::tempdir().unwrap();
    let index = build(dir.path(), &all_docs(), Analyzer::WordsStop);
    let q = index.analyze("file descriptor");
    let all = index.search(&q, None, 10, None).unwrap();
    assert!(all.len() >= 4);
    let allowed: RoaringBitmap = [2u32, 7].into_iter().collect();
    let got = index.search(&q, None, 10, Some(Arc::new(allowed))).unwrap();
    let ids: Vec<u32> = got.iter().map(|h| h.0).collect();
    let mut want: Vec<u32> = all
        .iter()
        .map(|h| h.0)
        .filter(|i| [2, 7].contains(i))
        .collect();
    want.sort_by_key(|i| ids.iter().position(|x| x == i));
    assert_eq!(ids, want);
    // Filtering does not change a hit's score.
    for h in &got {
        assert!(all.contains(h));
    }
}

#[test]
fn bad_text_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let fields = vec!["text".to_string()];
    let mut b = TextIndexBuilder::new(&fields, Analyzer::Words, &dir.path().join("s")).unwrap();
    let err = b.add(0, &payload(json!({"text": 5}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field \"text\": text fields hold a string or an array of strings, got a number"
    );
    let err = b.add(0, &payload(json!({"text": ["a", 1]}))).unwrap_err();
    assert!(err.to_string().ends_with("got a number"), "{err}");
    b.add(0, &payload(json!({"text": ["a b", null, "c"]})))
        .unwrap();
    b.add(1, &payload(json!({"other": "x"}))).unwrap();
}

#[test]
fn a_damaged_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &all_docs(), Analyzer::WordsStop);
    let path = dir.path().join("text.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = TextIndex::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("text.bin") && err.contains("checksum"),
        "{err}"
    );
    std::fs::write(&path, b"short").unwrap();
    let err = TextIndex::open(&path).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn opening_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let index = build(dir.path(), &all_docs(), Analyzer::WordsStop);
    drop(index);
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let index = TextIndex::open(&dir.path().join("text.bin")).unwrap();
    let q = index.analyze("file");
    assert!(!index.search(&q, None, 3, None).unwrap().is_empty());
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn many_documents_merge_to_one_segment_and_keep_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<(u32, String)> = (0..3000u32)
        .map(|i| (i, format!("doc{i} word{} common", i % 17)))
        .collect();
    let refs: Vec<(u32, &str)> = docs.iter().map(|(i, t)| (*i, t.as_str())).collect();
    let index = build(dir.path(), &refs, Analyzer::Words);
    let hits = index
        .search(&index.analyze("doc1234"), None, 5, None)
        .unwrap();
    assert_eq!(hits.first().map(|h| h.0), Some(1234));
    let hits = index
        .search(&index.analyze("word5"), None, 1000, None)
        .unwrap();
    assert!(hits.iter().all(|h| h.0 % 17 == 5));
    assert_eq!(hits.len(), 3000 / 17 + usize::from(3000 % 17 > 5));
}

/// The golden file: a `text.bin` committed to git, written once if missing
/// and never regenerated, must open and score the same forever (a tantivy
/// upgrade that changes its segment format fails here, not in a user's
/// cluster).
#[test]
fn golden_text_v1_still_reads_and_scores() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/text-v1");
    let path = dir.join(TEXT_FILE);
    if !path.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let index = build(scratch.path(), &all_docs(), Analyzer::WordsStopStem);
        drop(index);
        std::fs::copy(scratch.path().join("text.bin"), &path).unwrap();
        eprintln!("wrote the golden text file {}: commit it", path.display());
    }
    let golden = TextIndex::open(&path).unwrap();
    assert_eq!(golden.num_docs(), CORPUS.len() as u64);
    assert_eq!(golden.fields(), ["title", "text"]);
    assert_eq!(golden.analyzer(), Analyzer::WordsStopStem);
    let ids = |q: &str| -> Vec<u32> {
        let query = golden.analyze(q);
        golden
            .search(&query, None, 10, None)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    // Stemmed: "descriptors" finds "descriptor". 2 before 1: "to" is a
    // stop word and "from" is not, so 1 is the longer document.
    assert_eq!(ids("file descriptors"), vec![7, 2, 1, 0, 3]);
    assert_eq!(ids("O_DIRECT"), vec![3]);
    assert_eq!(ids("perf_event_open"), vec![6]);
    assert_eq!(ids("the"), Vec::<u32>::new());
    let query = golden.analyze("descriptor");
    let stats = golden.stats(&query).unwrap();
    assert_eq!(
        (stats.num_docs, stats.doc_freq.get("descriptor")),
        (8, Some(&3))
    );
}
