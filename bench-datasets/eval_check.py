#!/usr/bin/env python3
"""pytrec_eval's numbers on a small hand-made case, for engine/src/eval.rs.

The unit test `eval::tests::matches_pytrec_eval` holds what this script
prints; run it again after changing the case and paste the new numbers.

    python3 -m venv /root/.venvs/pytrec
    /root/.venvs/pytrec/bin/pip install pytrec_eval-terrier   # 0.5.x
    /root/.venvs/pytrec/bin/python bench-datasets/eval_check.py

Measures, as BEIR and bench-datasets' anchor scores use them:
  nDCG@k   pytrec_eval `ndcg_cut.k` (graded gains: gain = judged score)
  recall@k pytrec_eval `recall.k` (relevant: score >= 1)
  MRR@k    pytrec_eval `recip_rank` on each run cut to its first k documents
           (after pytrec_eval's own order: score descending, then document
           id descending)

The case: graded qrels (0, 1, 2), runs longer than k with relevant documents
beyond the cut-off, a tie in scores, a query that retrieves no relevant
document, a query whose judgments are all 0, a judged query with an empty
run, and a run for a query without judgments (skipped by pytrec_eval).

With `--beir DIR` (needs numpy too) it instead prints the exact dense scores of
a BEIR folder with base.fbin/query.fbin: brute-force top 100 by inner product
(the vectors are unit norm, so cosine ranks alike; ties by smaller row), scored
by pytrec_eval as above. tests/data/manpages-mini/README.md holds its numbers.
"""

from __future__ import annotations

import sys

import pytrec_eval

QRELS = {
    # graded, one relevant document never retrieved (d9)
    "q1": {"d1": 2, "d2": 1, "d3": 1, "d4": 0, "d9": 1},
    # a tie in the run decides the order (d6 before d5: document id descending)
    "q2": {"d5": 1, "d6": 2},
    # the only relevant document at rank 12: nothing within 10, all within 100
    "q3": {"d7": 1},
    # relevant documents exist, none is retrieved
    "q4": {"d8": 2, "d1": 1},
    # judged, but nothing relevant (all scores 0)
    "q5": {"d2": 0, "d3": 0},
    # judged, and the run is empty
    "q7": {"d1": 1},
    # more relevant documents than the smallest cut-off: the ideal is cut too
    "q8": {f"r{i}": 2 if i < 3 else 1 for i in range(7)} | {"x3": 0},
}


def ranked(ids: list[str]) -> dict[str, float]:
    """A run in the given order, with distinct descending scores."""
    return {d: float(len(ids) - i) for i, d in enumerate(ids)}


RUNS = {
    "q1": ranked(
        ["x1", "d2", "x2", "d4", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "d1", "x10", "d3", "x11"]
    ),
    "q2": {"x1": 3.0, "d5": 2.0, "d6": 2.0, "x2": 1.0},
    "q3": ranked([f"x{i}" for i in range(1, 12)] + ["d7"] + ["x12", "x13"]),
    "q4": ranked(["x1", "x2", "x3", "d4"]),
    "q5": ranked(["d2", "d3", "x1"]),
    "q6": ranked(["d1", "d2"]),  # no judgments: skipped
    "q7": {},
    "q8": ranked(["r5", "x1", "r0", "r1", "x2", "x3", "r6", "x4", "x5", "x6", "r2", "x7", "r10"]),
}

CUTS = [5, 10, 100]


def pytrec_order(run: dict[str, float]) -> list[str]:
    """Score descending, then document id descending (trec_eval's order)."""
    return sorted(sorted(run, reverse=True), key=lambda d: -run[d])


def exact_dense(beir: str) -> None:
    import json
    from pathlib import Path

    import numpy as np

    d = Path(beir)

    def fbin(p: Path) -> np.ndarray:
        n, dim = np.fromfile(p, dtype="<u4", count=2)
        return np.fromfile(p, dtype="<f4", offset=8).reshape(n, dim)

    def ids(p: Path) -> list[str]:
        return [json.loads(l)["_id"] for l in p.open(encoding="utf-8") if l.strip()]

    corpus, queries = ids(d / "corpus.jsonl"), ids(d / "queries.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    for line in (d / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            q, c, s = line.split("\t")
            qrels.setdefault(q, {})[c] = int(s)
    sims = fbin(d / "query.fbin").astype(np.float64) @ fbin(d / "base.fbin").astype(np.float64).T
    runs = {}
    for qi, q in enumerate(queries):
        if q not in qrels:
            continue
        top = sorted(range(len(corpus)), key=lambda r: (-sims[qi, r], r))[:100]
        # Distinct descending scores in rank order: pytrec_eval keeps it.
        runs[q] = {corpus[r]: float(100 - i) for i, r in enumerate(top)}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(runs)
    cut = {q: {c: s for c, s in r.items() if s > 90} for q, r in runs.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    n = len(full)
    print(f"# exact dense, {n} queries, pytrec_eval {getattr(pytrec_eval, '__version__', '?')}")
    print("nDCG@10", repr(sum(v["ndcg_cut_10"] for v in full.values()) / n))
    print("recall@100", repr(sum(v["recall_100"] for v in full.values()) / n))
    print("MRR@10", repr(sum(v["recip_rank"] for v in rr.values()) / n))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--beir":
        exact_dense(sys.argv[2])
        return
    measures = {f"ndcg_cut.{k}" for k in CUTS} | {f"recall.{k}" for k in CUTS}
    full = pytrec_eval.RelevanceEvaluator(QRELS, measures).evaluate(RUNS)
    rr = {}
    for k in CUTS:
        cut = {q: {d: run[d] for d in pytrec_order(run)[:k]} for q, run in RUNS.items()}
        rr[k] = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(cut)
    print(f"# pytrec_eval {getattr(pytrec_eval, '__version__', '?')}")
    print("# queries evaluated:", sorted(full))
    print("# q2 in pytrec_eval's order:", pytrec_order(RUNS["q2"]))
    print("# query k ndcg recall mrr")
    for q in sorted(full):
        for k in CUTS:
            print(
                q,
                k,
                repr(full[q][f"ndcg_cut_{k}"]),
                repr(full[q][f"recall_{k}"]),
                repr(rr[k][q]["recip_rank"]) if q in rr[k] else "absent",
            )
    print("# mean over evaluated queries: k ndcg recall mrr")
    n = len(full)
    for k in CUTS:
        print(
            "mean",
            k,
            repr(sum(full[q][f"ndcg_cut_{k}"] for q in full) / n),
            repr(sum(full[q][f"recall_{k}"] for q in full) / n),
            repr(sum(rr[k][q]["recip_rank"] for q in rr[k]) / n),
        )


if __name__ == "__main__":
    main()
