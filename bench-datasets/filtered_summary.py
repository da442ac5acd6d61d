#!/usr/bin/env python3
"""Summarise a filtered-1m.sh results directory as a Markdown table.

For each filter and round: the smallest list size whose recall@10 reaches the
target (0.95), with its QPS, sector reads per query and plan, and that QPS as
a fraction of the unfiltered search's at its own smallest list size reaching
the target, in the same round. DiskANN's filtered in-memory index and the
exact scan follow when diskann.json is there.

    python3 bench-datasets/filtered_summary.py RESULTS_DIR [--target 0.95]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def first_reaching(runs: list[dict], target: float, key: str = "recall_at_k") -> dict | None:
    ok = [r for r in runs if r[key] >= target]
    return min(ok, key=lambda r: r["list"] if "list" in r else r["L"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--target", type=float, default=0.95)
    a = ap.parse_args()
    d = Path(a.results)
    reports: dict[tuple[int, str], dict] = {}
    for p in sorted(d.glob("r*-*.json")):
        m = re.fullmatch(r"r(\d+)-(.+)\.json", p.name)
        if m:
            reports[(int(m.group(1)), m.group(2))] = json.loads(p.read_text())
    rounds = sorted({r for r, _ in reports})
    names = [n for n in dict.fromkeys(n for _, n in sorted(reports, key=lambda x: x[0])) if n != "all"]
    any_report = next(iter(reports.values()))
    print(f"{any_report['num_points']} points, {any_report['num_queries']} queries, k={any_report['k']}, "
          f"{any_report['threads']} threads, io {any_report['io_backend']}, commit {any_report['git_commit']}\n")
    print(f"| filter | matches | round | L | recall@10 | QPS | reads/query | plan | QPS / unfiltered |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rounds:
        base = reports.get((r, "all"))
        b = first_reaching(base["runs"], a.target) if base else None
        if b:
            print(f"| (none) | {base['num_points']} | {r} | {b['list']} | {b['recall_at_k']:.4f} | {b['qps']:.0f} | "
                  f"{b['mean_ios']:.1f} | graph | 1.00 |")
        for n in names:
            rep = reports.get((r, n))
            if not rep:
                continue
            x = first_reaching(rep["runs"], a.target)
            if x is None:
                best = max(rep["runs"], key=lambda y: y["recall_at_k"])
                print(f"| {n} | | {r} | — | max {best['recall_at_k']:.4f} at L={best['list']} | | | | |")
                continue
            f = x.get("filtered") or {}
            plans = ", ".join(f"{k} {v}" for k, v in (f.get("plans") or {}).items())
            ratio = f"{x['qps'] / b['qps']:.2f}" if b else ""
            print(f"| {n} | {f.get('mean_matches', 0):.0f} | {r} | {x['list']} | {x['recall_at_k']:.4f} | "
                  f"{x['qps']:.0f} | {x['mean_ios']:.1f} | {plans} | {ratio} |")
    plans = sorted({p.name.split("-", 2)[2][:-5] for p in d.glob("plan-*-*.json")})
    if plans:
        print("\nEach plan forced (round 1): smallest L reaching the target, its QPS and reads per query\n")
        print("| filter | matches | graph L | graph QPS | graph reads | flat L | flat QPS | flat reads |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        rows = []
        for n in plans:
            cells, matches = [], 0
            for plan in ("graph", "flat"):
                p = d / f"plan-{plan}-{n}.json"
                x = first_reaching(json.loads(p.read_text())["runs"], a.target) if p.exists() else None
                if x:
                    matches = (x.get("filtered") or {}).get("mean_matches", matches)
                    cells += [str(x["list"]), f"{x['qps']:.0f}", f"{x['mean_ios']:.1f}"]
                else:
                    cells += ["—", "", ""]
            rows.append((matches, n, cells))
        for matches, n, cells in sorted(rows):
            print(f"| {n} | {matches:.0f} | " + " | ".join(cells) + " |")
    dj = d / "diskann.json"
    if dj.exists():
        dk = json.loads(dj.read_text())
        print(f"\nDiskANN {dk['version']}, {dk['index']}, {dk['params']['threads']} threads"
              f" (build {dk.get('build_seconds', 'reused')} s), and an exact numpy scan of the matches:\n")
        print("| label | matches | L | recall@10 | QPS | exact-scan QPS |")
        print("|---|---:|---:|---:|---:|---:|")
        for run in dk["runs"]:
            x = first_reaching(run["lists"], a.target, key="recall")
            if x is None:
                best = max(run["lists"], key=lambda y: y["recall"])
                print(f"| {run['label']} | {run['matches']} | — | max {best['recall']:.4f} at L={best['L']} | | "
                      f"{run['exact_scan']['qps']:.0f} |")
            else:
                print(f"| {run['label']} | {run['matches']} | {x['L']} | {x['recall']:.4f} | {x['qps']:.0f} | "
                      f"{run['exact_scan']['qps']:.0f} |")


if __name__ == "__main__":
    main()
