#!/usr/bin/env python3
"""Build and search a DiskANN disk index through diskannpy, as the reference
side of the shardann comparison (see bench-datasets/COMPARE.md).

Run it with the venv made by setup-diskannpy.sh:

    ~/.venvs/diskannpy/bin/python bench-datasets/diskann_compare.py \
        --base B.u8bin --queries Q.u8bin --gt GT.bin --metric l2 \
        --workdir /tmp/dann --json out.json

Results go to stdout (a table) and to --json; progress and DiskANN's own log
lines go to stderr and to WORKDIR/build.log.

Page cache: DiskANN's Linux reader opens <prefix>_disk.index with O_DIRECT and
reads it through libaio, so graph and full-vector reads skip the page cache
and QPS is not inflated by a warm cache. The script checks the flag on the
open descriptor at run time (JSON: io.disk_index_o_direct). What does live in
RAM: the PQ codes (n * pq_bytes), the PQ pivots and any --cache-nodes nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    import diskannpy
    from importlib.metadata import version as _pkg_version

    DISKANNPY_VERSION = _pkg_version("diskannpy")
except ImportError:  # pragma: no cover - message for people using the wrong python
    sys.exit("diskannpy is not importable: run bench-datasets/setup-diskannpy.sh "
             "and use the python it prints")

GIB = 1024 ** 3
DTYPES = {".u8bin": np.uint8, ".i8bin": np.int8, ".fbin": np.float32}
DTYPE_NAMES = {"uint8": np.uint8, "int8": np.int8, "float32": np.float32}
DISKANN_ALPHA = 1.2      # alpha is fixed for disk builds (see check_alpha)
MAX_PQ_CHUNKS = 512      # DiskANN's cap on in-RAM PQ chunks
O_DIRECT = 0o40000       # x86-64 Linux value, as shown in /proc/*/fdinfo flags


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- file formats

def vector_dtype(path: str, override: str | None) -> np.dtype:
    if override:
        return np.dtype(DTYPE_NAMES[override])
    ext = Path(path).suffix.lower()
    if ext not in DTYPES:
        sys.exit(f"{path}: unknown extension {ext!r}; pass --dtype")
    return np.dtype(DTYPES[ext])


def read_header(path: str) -> tuple[int, int]:
    head = np.fromfile(path, dtype="<u4", count=2)
    if head.size != 2:
        sys.exit(f"{path}: shorter than its 8-byte header")
    return int(head[0]), int(head[1])


def open_vectors(path: str, dtype: np.dtype) -> np.ndarray:
    """Memory-map a Big-ANN vector file (u32 n, u32 dim, n*dim elements)."""
    n, dim = read_header(path)
    expected = 8 + n * dim * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        sys.exit(f"{path}: header says {n}x{dim} {dtype} = {expected} bytes, file has {actual}")
    return np.memmap(path, dtype=dtype, mode="r", offset=8, shape=(n, dim))


def read_groundtruth(path: str) -> tuple[np.ndarray, np.ndarray]:
    """u32 nq, u32 k, nq*k u32 ids, nq*k f32 distances."""
    nq, k = read_header(path)
    expected = 8 + nq * k * 8
    actual = os.path.getsize(path)
    if actual != expected:
        sys.exit(f"{path}: header says {nq}x{k} ground truth = {expected} bytes, file has {actual}")
    ids = np.fromfile(path, dtype="<u4", count=nq * k, offset=8).reshape(nq, k)
    dists = np.fromfile(path, dtype="<f4", count=nq * k, offset=8 + nq * k * 4).reshape(nq, k)
    return ids, dists


def write_fbin(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.array(data.shape, dtype="<u4").tofile(f)
        np.ascontiguousarray(data, dtype="<f4").tofile(f)


def normalize_rows(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], chunk):
        block = np.asarray(x[s:s + chunk], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        out[s:s + chunk] = block / np.maximum(norms, 1e-30)
    return out


# ------------------------------------------------------- DiskANN's parameters

def pq_chunks_for(budget_gb: float, n: int, dim: int) -> int:
    """Number of in-RAM PQ chunks (= bytes per point) DiskANN 0.7 derives
    from search_memory_maximum, replayed step by step in IEEE doubles:

      1. diskannpy formats the float with std::to_string ("%f", 6 decimals)
         and DiskANN parses it back with atof;
      2. get_memory_budget(): if B - 0.25 > 1.0, it keeps 0.25 GB aside for
         cached nodes and uses B - 0.25; the result is times 1024^3 (bytes);
      3. chunks = floor(bytes / n), clamped to [1, min(dim, 512)].
    """
    b = float(f"{budget_gb:.6f}")
    if b - 0.25 > 1.0:
        b = b - 0.25
    limit = b * 1024 * 1024 * 1024
    chunks = int(limit / n)
    return max(1, min(chunks, dim, MAX_PQ_CHUNKS))


def search_budget_for_pq_bytes(pq_bytes: int, n: int, dim: int) -> float:
    """Smallest-surprise search_memory_maximum (GB) that makes DiskANN keep
    exactly pq_bytes bytes of PQ code per point in RAM.

    Aim at the middle of the window [pq_bytes*n, (pq_bytes+1)*n) bytes so the
    6-decimal rounding cannot push it out, then add back the 0.25 GB DiskANN
    subtracts above 1.25 GB. Checked with pq_chunks_for(); the window is
    n bytes wide, so rounding to 1e-6 GB (~1074 B) can miss when n < ~1100.
    """
    if not 1 <= pq_bytes <= min(dim, MAX_PQ_CHUNKS):
        sys.exit(f"--pq-bytes must be in [1, {min(dim, MAX_PQ_CHUNKS)}] for dim {dim}")
    effective = (pq_bytes + 0.5) * n / GIB
    budget = effective + 0.25 if effective > 1.0 else effective
    for candidate in (round(budget, 6), math.ceil(budget * 1e6) / 1e6, math.floor(budget * 1e6) / 1e6):
        if candidate > 0 and pq_chunks_for(candidate, n, dim) == pq_bytes:
            return candidate
    sys.exit(f"cannot express {pq_bytes} PQ bytes/point for n={n} through a 6-decimal GB budget "
             "(n is too small)")


def build_ram_estimate_gb(n: int, dim: int, itemsize: int, degree: int) -> float:
    """DiskANN's estimate_ram_usage(): if it is below build_memory_maximum the
    graph is built in one shot; otherwise the data is split into overlapping
    shards built at degree 2R/3 and merged, a different (worse) graph."""
    aligned_dim = (dim + 7) // 8 * 8
    data = n * aligned_dim * itemsize
    graph = n * degree * 4 * 1.3          # GRAPH_SLACK_FACTOR
    locks_and_vectors = n * (40 + 8)      # std::mutex + ptrdiff_t per point
    return 1.1 * (data + graph + locks_and_vectors) / GIB


def check_alpha(alpha: float) -> None:
    # diskannpy.build_disk_index has no alpha argument: DiskANN's disk build
    # uses IndexWriteParametersBuilder's default, 1.2 (defaults.ALPHA).
    if abs(alpha - DISKANN_ALPHA) > 1e-6:
        sys.exit(f"--alpha {alpha}: diskannpy's disk build always uses alpha "
                 f"{DISKANN_ALPHA}; use --alpha {DISKANN_ALPHA} for a like-for-like run")


# ------------------------------------------------------------------- helpers

@contextlib.contextmanager
def native_output_to(log_path: Path):
    """DiskANN's C++ code logs to fds 1 and 2; send both to a file so stdout
    keeps only our table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def dir_bytes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


def open_flags(path_suffix: str) -> list[int]:
    """fdinfo flags of this process's open descriptors on a file whose path
    ends with path_suffix."""
    flags = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.endswith(path_suffix):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("flags:"):
                        flags.append(int(line.split()[1], 8))
        except OSError:
            continue
    return flags


def recall_at_k(found: np.ndarray, gt_ids: np.ndarray, k: int) -> float:
    hits = 0
    for row, truth in zip(found[:, :k], gt_ids[:, :k]):
        hits += len(np.intersect1d(row, truth, assume_unique=False))
    return hits / (k * found.shape[0])


def parse_lists(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"--lists: expected comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        sys.exit("--lists: need positive list sizes")
    return values


# ---------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help=".u8bin/.i8bin/.fbin base vectors")
    ap.add_argument("--queries", required=True, help="query vectors, same type as --base")
    ap.add_argument("--gt", required=True, help="ground truth .bin (u32 nq, u32 k, ids, f32 dists)")
    ap.add_argument("--metric", choices=["l2", "mips", "cosine"], default="l2")
    ap.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="override the type taken from the extension")
    ap.add_argument("--R", type=int, default=64, help="max graph degree")
    ap.add_argument("--build-L", type=int, default=100, help="build candidate list size")
    ap.add_argument("--alpha", type=float, default=1.2, help="must be 1.2 (fixed in diskannpy disk builds)")
    ap.add_argument("--pq-bytes", type=int, default=32, help="in-RAM PQ code bytes per point")
    ap.add_argument("--build-mem-gb", type=float, default=None,
                    help="build_memory_maximum; default 1.5x DiskANN's one-shot estimate (min 1 GB)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beam", type=int, default=4, help="beam width W (I/Os in flight per query)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--lists", default="10,20,40,80,160", help="search list sizes L")
    ap.add_argument("--cache-nodes", type=int, default=0, help="nodes cached in RAM (sampled-query heuristic)")
    ap.add_argument("--latency-queries", type=int, default=1000,
                    help="single-thread latency loop over the first N queries per list (0 = skip)")
    ap.add_argument("--workdir", required=True, help="scratch dir; the index goes to WORKDIR/index")
    ap.add_argument("--reuse-index", action="store_true",
                    help="skip the build if WORKDIR/index holds a finished index")
    ap.add_argument("--json", required=True, help="where to write the JSON report")
    args = ap.parse_args()

    check_alpha(args.alpha)
    lists = parse_lists(args.lists)
    dtype = vector_dtype(args.base, args.dtype)
    base = open_vectors(args.base, dtype)
    queries = np.ascontiguousarray(open_vectors(args.queries, dtype))
    gt_ids, _ = read_groundtruth(args.gt)
    n, dim = base.shape
    nq = queries.shape[0]
    if queries.shape[1] != dim:
        sys.exit(f"queries have dim {queries.shape[1]}, base has {dim}")
    if gt_ids.shape[0] != nq:
        sys.exit(f"ground truth has {gt_ids.shape[0]} rows for {nq} queries")
    if gt_ids.shape[1] < args.k:
        sys.exit(f"ground truth has k={gt_ids.shape[1]} < --k {args.k}")
    if args.metric == "mips" and dtype != np.float32:
        sys.exit("DiskANN supports mips only on float32 data")

    work = Path(args.workdir)
    index_dir = work / "index"
    work.mkdir(parents=True, exist_ok=True)
    build_log = work / "build.log"

    # Cosine: diskannpy refuses cosine for disk indexes, so build an L2 index
    # on unit-normalized float32 vectors; its ranking is the cosine ranking.
    build_input, build_dtype, build_metric = args.base, dtype, args.metric
    if args.metric == "cosine":
        build_input, build_dtype, build_metric = str(work / "base_normalized.fbin"), np.dtype(np.float32), "l2"
        queries = normalize_rows(queries)

    search_gb = search_budget_for_pq_bytes(args.pq_bytes, n, dim)
    est_gb = build_ram_estimate_gb(n, dim, build_dtype.itemsize, args.R)
    build_gb = args.build_mem_gb if args.build_mem_gb else max(1.0, round(1.5 * est_gb, 3))

    meta_path = work / "build.json"
    reuse = args.reuse_index and (index_dir / "ann_disk.index").exists() and meta_path.exists()
    if reuse:
        build_info = json.loads(meta_path.read_text())
        log(f"reusing index in {index_dir} (built in {build_info['build_seconds']:.1f} s)")
    else:
        if index_dir.exists():
            for p in index_dir.iterdir():
                p.unlink()
        index_dir.mkdir(exist_ok=True)
        build_log.write_text("")
        if args.metric == "cosine":
            write_fbin(Path(build_input), normalize_rows(base))
        log(f"building: n={n} dim={dim} {dtype} metric={args.metric} R={args.R} L={args.build_L} "
            f"pq_bytes={args.pq_bytes} (search_memory_maximum={search_gb} GB) "
            f"build_memory_maximum={build_gb} GB threads={args.threads}; log: {build_log}")
        t0 = time.perf_counter()
        with native_output_to(build_log):
            diskannpy.build_disk_index(
                data=build_input,
                vector_dtype=build_dtype.type,
                distance_metric=build_metric,
                index_directory=str(index_dir),
                complexity=args.build_L,
                graph_degree=args.R,
                search_memory_maximum=search_gb,
                build_memory_maximum=build_gb,
                num_threads=args.threads,
                pq_disk_bytes=0,   # full-precision vectors in the disk nodes
            )
        build_info = {"build_seconds": time.perf_counter() - t0}
        text = build_log.read_text(errors="replace")
        build_info["build_one_shot"] = "Full index fits in RAM budget" in text
        meta_path.write_text(json.dumps(build_info))
        log(f"built in {build_info['build_seconds']:.2f} s")

    # The in-RAM PQ codes: <prefix>_pq_compressed.bin = u32 n, u32 chunks, codes.
    pq_n, pq_chunks = read_header(str(index_dir / "ann_pq_compressed.bin"))
    if pq_chunks != args.pq_bytes or pq_n != n:
        sys.exit(f"index has {pq_n} points x {pq_chunks} PQ bytes, expected {n} x {args.pq_bytes}")
    files = dir_bytes(index_dir)

    cache_mechanism = 1 if args.cache_nodes > 0 else 0   # 0 = no cache at all
    t0 = time.perf_counter()
    with native_output_to(work / "search.log"):
        index = diskannpy.StaticDiskIndex(
            index_directory=str(index_dir),
            num_threads=args.threads,
            num_nodes_to_cache=args.cache_nodes,
            cache_mechanism=cache_mechanism,
        )
    load_seconds = time.perf_counter() - t0
    flags = open_flags("ann_disk.index")
    o_direct = bool(flags) and all(f & O_DIRECT for f in flags)
    log(f"loaded in {load_seconds:.2f} s; ann_disk.index open with O_DIRECT: {o_direct}")

    # Warm-up (untimed): faults in the PQ tables and thread scratch space.
    with native_output_to(work / "search.log"):
        index.batch_search(queries[: min(nq, 200)], k_neighbors=args.k, complexity=max(lists[0], args.k),
                           num_threads=args.threads, beam_width=args.beam)

    runs = []
    n_lat = min(nq, max(0, args.latency_queries))
    print(f"diskannpy {DISKANNPY_VERSION}: n={n} dim={dim} metric={args.metric} R={args.R} "
          f"L_build={args.build_L} pq_bytes={args.pq_bytes} threads={args.threads} beam={args.beam} k={args.k}")
    print(f"build {build_info['build_seconds']:.2f} s, index {sum(files.values()) / 2**20:.1f} MiB on disk")
    print(f"{'L':>6} {'recall@' + str(args.k):>10} {'QPS':>10} {'mean us':>10} {'p50 us':>10} {'p99 us':>10}")
    for L in lists:
        L_eff = max(L, args.k)
        with native_output_to(work / "search.log"):
            t0 = time.perf_counter()
            ids, _ = index.batch_search(queries, k_neighbors=args.k, complexity=L_eff,
                                        num_threads=args.threads, beam_width=args.beam)
            elapsed = time.perf_counter() - t0
            lat = np.empty(n_lat)
            for i in range(n_lat):
                s = time.perf_counter()
                index.search(queries[i], k_neighbors=args.k, complexity=L_eff, beam_width=args.beam)
                lat[i] = (time.perf_counter() - s) * 1e6
        rec = recall_at_k(np.asarray(ids), gt_ids, args.k)
        latency = ({"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                    "p99": float(np.percentile(lat, 99)), "queries": n_lat} if n_lat else None)
        run = {"list": L_eff, "beam": args.beam, "recall_at_k": rec, "qps": nq / elapsed,
               "search_seconds": elapsed, "latency_us": latency}
        runs.append(run)
        lt = latency or {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
        print(f"{L_eff:>6} {rec:>10.4f} {run['qps']:>10.1f} {lt['mean']:>10.1f} {lt['p50']:>10.1f} {lt['p99']:>10.1f}",
              flush=True)

    report = {
        "engine": "diskannpy",
        "diskannpy_version": DISKANNPY_VERSION,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine()},
        "files": {"base": os.path.abspath(args.base), "queries": os.path.abspath(args.queries),
                  "gt": os.path.abspath(args.gt)},
        "data": {"n": n, "dim": dim, "dtype": str(dtype), "nq": nq, "gt_k": int(gt_ids.shape[1])},
        "params": {"metric": args.metric, "R": args.R, "build_L": args.build_L, "alpha": DISKANN_ALPHA,
                   "pq_bytes": args.pq_bytes, "k": args.k, "beam": args.beam, "lists": lists,
                   "cache_nodes": args.cache_nodes,
                   "search_memory_maximum_gb": search_gb, "build_memory_maximum_gb": build_gb,
                   "pq_disk_bytes": 0,
                   # DiskANN saturates the graph (fills lists up to R) in one-shot disk builds
                   "saturate_graph": bool(build_info.get("build_one_shot")),
                   "metric_as_built": build_metric + (" on unit-normalized float32" if args.metric == "cosine" else "")},
        "threads": args.threads,
        "build_seconds": build_info["build_seconds"],
        "build_one_shot": build_info.get("build_one_shot"),
        "build_ram_estimate_gb": est_gb,
        "index_reused": reuse,
        "load_seconds": load_seconds,
        # Everything the build left in the index dir. ann_mem.index.data is a
        # leftover copy of the base vectors that search never opens.
        "index_bytes": sum(files.values()),
        "disk_index_bytes": files["ann_disk.index"],
        "pq_codes_bytes_in_ram": files["ann_pq_compressed.bin"] - 8,
        "index_files": files,
        "pq_bytes_in_index": pq_chunks,
        "io": {"disk_index_o_direct": o_direct,
               "note": "ann_disk.index is read with O_DIRECT + libaio; the page cache is not used for node reads"},
        "latency_method": "single-thread loop of index.search() over the first latency_us.queries queries, "
                          "wall clock incl. Python call overhead",
        "qps_method": "wall clock of one batch_search over all queries with `threads` OpenMP threads",
        "runs": runs,
    }
    with native_output_to(work / "search.log"):
        del index   # its destructor logs to stdout
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
