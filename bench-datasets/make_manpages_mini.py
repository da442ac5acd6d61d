#!/usr/bin/env python3
"""Cut tests/data/manpages-mini out of manpages-dev: a small BEIR set for tests.

    python3 bench-datasets/make_manpages_mini.py /work/shared/datasets/manpages-dev tests/data/manpages-mini

Takes QUERIES queries of manpages-dev at random (seed SEED), every corpus
passage judged for any of them, and random other passages as distractors up
to PASSAGES in all; shuffles the passages and numbers everything anew:
corpus `_id`s "0".."n-1" in line order (row i of base.fbin), query `_id`s
"0".."QUERIES-1" in line order (row i of query.fbin). qrels/test.tsv keeps
every judgment of the chosen queries under the new ids. Vectors are copied
unchanged. Pure Python, no third-party package; the same input and seed give
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import sys
from pathlib import Path

QUERIES = 60
PASSAGES = 2000
SEED = 12


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_fbin(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    n, d = struct.unpack_from("<II", data, 0)
    assert len(data) == 8 + 4 * n * d, f"{path}: size does not match its header"
    return n, d, data[8:]


def write_fbin(path: Path, d: int, rows: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<II", len(rows), d))
        for r in rows:
            f.write(r)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    corpus = read_jsonl(src / "corpus.jsonl")
    queries = read_jsonl(src / "queries.jsonl")
    lines = (src / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["query-id", "corpus-id", "score"]
    qrels = [tuple(l.split("\t")) for l in lines[1:] if l.strip()]
    nb, d, base = read_fbin(src / "base.fbin")
    nq, dq, qvec = read_fbin(src / "query.fbin")
    assert nb == len(corpus) and nq == len(queries) and d == dq
    # Row i is the line i in the source too; map ids to rows.
    doc_row = {doc["_id"]: i for i, doc in enumerate(corpus)}
    query_row = {q["_id"]: i for i, q in enumerate(queries)}

    rng = random.Random(SEED)
    chosen_q = rng.sample(range(len(queries)), QUERIES)
    chosen_ids = {queries[i]["_id"] for i in chosen_q}
    judged = sorted({doc_row[c] for q, c, _ in qrels if q in chosen_ids})
    assert len(judged) <= PASSAGES, f"{len(judged)} judged passages, more than {PASSAGES}"
    judged_set = set(judged)
    others = [i for i in range(len(corpus)) if i not in judged_set]
    rows = judged + rng.sample(others, PASSAGES - len(judged))
    rng.shuffle(rows)
    new_doc = {corpus[r]["_id"]: str(i) for i, r in enumerate(rows)}
    new_query = {queries[r]["_id"]: str(i) for i, r in enumerate(chosen_q)}

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "qrels").mkdir(exist_ok=True)
    with (dst / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            doc = dict(corpus[r])
            doc["_id"] = str(i)
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with (dst / "queries.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(chosen_q):
            q = dict(queries[r])
            q["_id"] = str(i)
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    kept = [(new_query[q], new_doc[c], s) for q, c, s in qrels if q in chosen_ids]
    kept.sort(key=lambda t: (int(t[0]), int(t[1])))
    with (dst / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for t in kept:
            f.write("\t".join(t) + "\n")
    row_bytes = 4 * d
    write_fbin(dst / "base.fbin", d, [base[r * row_bytes : (r + 1) * row_bytes] for r in rows])
    write_fbin(dst / "query.fbin", d, [qvec[r * row_bytes : (r + 1) * row_bytes] for r in chosen_q])

    print(f"{len(rows)} passages ({len(judged)} judged), {QUERIES} queries, {len(kept)} judgments")
    for name in ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "base.fbin", "query.fbin"]:
        data = (dst / name).read_bytes()
        print(f"{hashlib.sha256(data).hexdigest()}  {name}  {len(data)} bytes")


if __name__ == "__main__":
    main()
