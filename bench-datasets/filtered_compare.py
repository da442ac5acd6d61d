#!/usr/bin/env python3
"""The reference side of shardann's filtered-search benchmark: DiskANN's
filtered in-memory index (Filtered-Vamana through diskannpy) and an exact
scan of the matching points, on one label per query, the same label for all
queries of a run.

Run it with the venv made by setup-diskannpy.sh (see filtered-1m.sh, which
runs both sides):

    ~/.venvs/diskannpy/bin/python bench-datasets/filtered_compare.py \
        --base B.u8bin --queries Q.u8bin --docs docs.jsonl --field label \
        --labels l1,l2,l3,l9,l35 --gt-dir GTDIR --workdir /tmp/dann-f --json out.json

GTDIR holds `gt-<label>.bin`, exact filtered ground truth from
`shardann groundtruth --filter '{"label": "<label>"}'` (u32::MAX marks "no
neighbour" when a label has fewer than k points; such slots are not counted).

diskannpy 0.7.0 has `build_memory_index(filter_labels=...)` and
`StaticMemoryIndex(enable_filters=True).search(filter_label=...)`; its
`batch_search` takes no filter, so filtered queries go one `search` call at a
time, from --threads Python threads (the call releases the GIL only if the
binding does; the JSON says how many threads were used, compare QPS per
thread as well). This index holds every vector in RAM: it is the in-memory
peer, not a disk index.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from diskann_compare import (  # same venv, same directory
    DISKANNPY_VERSION,
    log,
    native_output_to,
    open_vectors,
    parse_lists,
    read_groundtruth,
    vector_dtype,
)

import diskannpy

NO_NEIGHBOR = 0xFFFF_FFFF


def read_labels(docs: str, field: str, n: int) -> list[list[str]]:
    labels = []
    with open(docs) as f:
        for i, line in enumerate(f):
            value = json.loads(line).get(field)
            if isinstance(value, str):
                labels.append([value])
            elif isinstance(value, list):
                labels.append([str(v) for v in value])
            else:
                sys.exit(f"{docs}:{i + 1}: field {field!r} is not a string or a list")
    if len(labels) != n:
        sys.exit(f"{docs}: {len(labels)} documents for {n} vectors")
    return labels


def filtered_recall(found: np.ndarray, gt: np.ndarray, k: int) -> float:
    hits = total = 0
    for row, truth in zip(found[:, :k], gt[:, :k]):
        truth = truth[truth != NO_NEIGHBOR]
        hits += len(np.intersect1d(row, truth))
        total += len(truth)
    return hits / max(total, 1)


def exact_scan(base: np.ndarray, members: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """k nearest matching points per query by squared L2 over the matching
    points' vectors, gathered once (the gather is not timed, the scan is)."""
    sub = np.asarray(base[members], dtype=np.float32)
    norms = (sub * sub).sum(axis=1)
    q = queries.astype(np.float32)
    t = time.perf_counter()
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], 64):
        d = norms[None, :] - 2.0 * q[s:s + 64] @ sub.T
        kk = min(k, sub.shape[0])
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        best = np.take_along_axis(part, order, axis=1)
        out[s:s + 64, :kk] = members[best]
        out[s:s + 64, kk:] = NO_NEIGHBOR
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--docs", required=True, help="JSON Lines, line i for base row i")
    ap.add_argument("--field", default="label")
    ap.add_argument("--labels", required=True, help="comma-separated labels, one run each")
    ap.add_argument("--gt-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--R", type=int, default=64)
    ap.add_argument("--build-L", type=int, default=100)
    ap.add_argument("--filter-L", type=int, default=100, help="filter_complexity of the build")
    ap.add_argument("--alpha", type=float, default=1.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--lists", default="10,20,40,80,160,320")
    ap.add_argument("--dtype", choices=["uint8", "int8", "float32"])
    a = ap.parse_args()

    dtype = vector_dtype(a.base, a.dtype)
    base = open_vectors(a.base, dtype)
    queries = np.ascontiguousarray(open_vectors(a.queries, dtype))
    n = base.shape[0]
    labels = read_labels(a.docs, a.field, n)
    wanted = [s for s in a.labels.split(",") if s]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    index_dir = work / "filtered-memory-index"
    report = {
        "engine": "diskannpy",
        "version": DISKANNPY_VERSION,
        "index": "filtered in-memory (Filtered-Vamana)",
        "params": vars(a),
        "runs": [],
    }

    if not (index_dir / "ann").exists():
        index_dir.mkdir(parents=True, exist_ok=True)
        log(f"building the filtered memory index over {n} points ({a.threads} threads)")
        t = time.perf_counter()
        with native_output_to(work / "build.log"):
            diskannpy.build_memory_index(
                data=np.ascontiguousarray(base),
                distance_metric="l2",
                index_directory=str(index_dir),
                complexity=a.build_L,
                graph_degree=a.R,
                num_threads=a.threads,
                alpha=a.alpha,
                vector_dtype=dtype,
                filter_labels=labels,
                filter_complexity=a.filter_L,
            )
        report["build_seconds"] = round(time.perf_counter() - t, 2)
        log(f"built in {report['build_seconds']} s")
    else:
        log(f"reusing {index_dir}")
    with native_output_to(work / "search.log"):
        index = diskannpy.StaticMemoryIndex(
            index_directory=str(index_dir),
            num_threads=a.threads,
            initial_search_complexity=max(parse_lists(a.lists)),
            distance_metric="l2",
            vector_dtype=dtype,
            dimensions=base.shape[1],
            enable_filters=True,
        )
    label_array = np.array([ls[0] for ls in labels])
    pool = ThreadPoolExecutor(max_workers=a.threads)
    for label in wanted:
        members = np.flatnonzero(label_array == label)
        gt, _ = read_groundtruth(str(Path(a.gt_dir) / f"gt-{label}.bin"))
        scan, scan_s = exact_scan(base, members, queries, a.k)
        run = {
            "label": label,
            "matches": int(members.size),
            "selectivity": members.size / n,
            "exact_scan": {"qps": round(queries.shape[0] / scan_s, 1), "recall": filtered_recall(scan, gt, a.k)},
            "lists": [],
        }
        for L in parse_lists(a.lists):
            if L < a.k:
                continue

            def one(i: int) -> np.ndarray:
                r = index.search(queries[i], a.k, L, filter_label=label)
                return np.asarray(r.identifiers, dtype=np.int64)

            lat = []

            def timed(i: int) -> np.ndarray:
                t0 = time.perf_counter()
                r = one(i)
                lat.append(time.perf_counter() - t0)
                return r

            with native_output_to(work / "search.log"):
                t = time.perf_counter()
                found = list(pool.map(timed, range(queries.shape[0])))
                wall = time.perf_counter() - t
            found = np.stack([np.pad(f, (0, a.k - f.size), constant_values=NO_NEIGHBOR) for f in found])
            run["lists"].append({
                "L": L,
                "recall": round(filtered_recall(found, gt, a.k), 4),
                "qps": round(queries.shape[0] / wall, 1),
                "mean_latency_ms": round(1000 * float(np.mean(lat)), 3),
            })
            log(f"{label} L={L}: {run['lists'][-1]}")
        log(f"{label}: {members.size} matches; exact scan {run['exact_scan']}")
        report["runs"].append(run)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"{'label':>6} {'matches':>8} {'L':>4} {'recall':>7} {'QPS':>8} {'scan QPS':>9}")
    for r in report["runs"]:
        for x in r["lists"]:
            print(f"{r['label']:>6} {r['matches']:>8} {x['L']:>4} {x['recall']:>7.4f} {x['qps']:>8.1f} {r['exact_scan']['qps']:>9.1f}")


if __name__ == "__main__":
    main()
