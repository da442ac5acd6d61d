"""Split-half check of fusion choices (issue 12, item 6).

Reads an `eval` JSON report that ran many methods on the same queries
(per-query nDCG@10 in `per_query`), splits the queries in two halves at
random (seeded), picks each family's best setting on one half and scores it
on the other, both ways, over many splits. A family wins only if its
setting tuned on half A beats the best fixed min-max weighting tuned on A,
when both are scored on half B.

    python3 fusion_split_half.py grid.json [--splits 200]
"""
import argparse
import json
import random
import re
import statistics


def family(name: str) -> str | None:
    if name.startswith("rrf"):
        return "rrf"
    m = re.fullmatch(r"weighted:[0-9.]+(?::(\w+))?", name)
    if m:
        return "weighted-" + (m.group(1) or "minmax")
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rep = json.load(open(args.report))
    methods = rep["methods"]
    ndcg = {r["method"]: {q: s["ndcg"] for q, s in r["per_query"].items()} for r in methods}
    queries = sorted(next(iter(ndcg.values())).keys())
    fams: dict[str, list[str]] = {}
    for m in ndcg:
        f = family(m)
        if f:
            fams.setdefault(f, []).append(m)
    rng = random.Random(args.seed)
    gains: dict[str, list[float]] = {f: [] for f in fams}
    held: dict[str, list[float]] = {f: [] for f in fams}
    picks: dict[str, dict[str, int]] = {f: {} for f in fams}
    for _ in range(args.splits):
        q = queries[:]
        rng.shuffle(q)
        halves = (q[: len(q) // 2], q[len(q) // 2:])
        for tune, test in (halves, halves[::-1]):
            def mean(m, qs):
                return sum(ndcg[m][x] for x in qs) / len(qs)
            best = {f: max(ms, key=lambda m: mean(m, tune)) for f, ms in fams.items()}
            base = mean(best["weighted-minmax"], test)
            for f, m in best.items():
                held[f].append(mean(m, test))
                gains[f].append(mean(m, test) - base)
                picks[f][m] = picks[f].get(m, 0) + 1
    print(f"{len(queries)} queries, {args.splits} random splits × 2 directions; nDCG@10 on the held-out half")
    print("| family | held-out nDCG@10 (mean) | vs tuned min-max weighting | splits it wins | settings picked |")
    print("|---|---|---|---|---|")
    for f in sorted(fams):
        g = gains[f]
        wins = sum(1 for x in g if x > 1e-12)
        top = sorted(picks[f].items(), key=lambda kv: -kv[1])[:3]
        print(f"| {f} | {statistics.mean(held[f]):.4f} | {statistics.mean(g):+.4f} | {wins}/{len(g)} | "
              + ", ".join(f"{m} ×{n}" for m, n in top) + " |")


if __name__ == "__main__":
    main()
