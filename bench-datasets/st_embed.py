#!/usr/bin/env python3
"""Embedding throughput of sentence-transformers (PyTorch, CPU), for a
side-by-side comparison with `shardann embed` (embed-side-by-side.sh).

Embeds the "text" field (manpages-dev's base.fbin embeds the passage text
only, not the title) of the first N lines of a JSON Lines corpus, and prints
one JSON line: docs, seconds, docs_per_s, batch, threads, versions.
With --queries, embeds the queries one at a time (batch 1) after 20 warm-up
queries and prints per-query latency p50/p99 instead.

Needs the venv /root/.venvs/st (pip install torch sentence-transformers):

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 /root/.venvs/st/bin/python \
        bench-datasets/st_embed.py --model models/all-MiniLM-L6-v2 \
        --input corpus.jsonl [--n 2048] [--batch 64] [--threads 2] [--queries]

Timing ("seconds") covers encode() only (tokenisation, model, pooling,
normalisation); cpu_seconds is the process CPU time (all threads) over the
same span; model loading is reported apart as load_seconds.
"""
import argparse
import json
import time

import sentence_transformers as st
import torch


def load_model(folder, max_seq):
    try:
        m = st.SentenceTransformer(folder, device="cpu")
    except Exception:  # no modules.json: assemble Transformer + mean + Normalize
        t = st.models.Transformer(folder, max_seq_length=max_seq)
        p = st.models.Pooling(t.get_word_embedding_dimension(), "mean")
        m = st.SentenceTransformer(modules=[t, p, st.models.Normalize()], device="cpu")
    m.max_seq_length = max_seq
    return m


def read_texts(path, field, n):
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)[field])
                if n and len(texts) == n:
                    break
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help="JSON Lines (corpus or queries)")
    ap.add_argument("--field", default="text")
    ap.add_argument("--n", type=int, default=0, help="first N texts (0 = all)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seq", type=int, default=256)
    ap.add_argument("--queries", action="store_true", help="batch-1 latency mode")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = load_model(a.model, a.max_seq)
    load_s = time.perf_counter() - t0
    texts = read_texts(a.input, a.field, a.n)
    out = {"load_seconds": round(load_s, 3), "threads": torch.get_num_threads(), "max_seq_length": model.max_seq_length,
           "torch": torch.__version__, "sentence_transformers": st.__version__}
    enc = dict(normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    if a.queries:
        for q in texts[:20]:
            model.encode([q], batch_size=1, **enc)
        ms = []
        for q in texts:
            t0 = time.perf_counter()
            model.encode([q], batch_size=1, **enc)
            ms.append((time.perf_counter() - t0) * 1e3)
        ms.sort()
        pick = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
        out.update(queries=len(ms), batch=1, p50_ms=round(pick(0.50), 2),
                   p99_ms=round(pick(0.99), 2), mean_ms=round(sum(ms) / len(ms), 2))
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        vecs = model.encode(texts, batch_size=a.batch, **enc)
        s, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.update(docs=len(texts), dim=int(vecs.shape[1]), batch=a.batch,
                   seconds=round(s, 3), docs_per_s=round(len(texts) / s, 2),
                   cpu_seconds=round(cpu, 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
