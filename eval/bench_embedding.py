"""Benchmark the embedding generator: encoding a whole catalog, the same from the cache, and top-k search.

The catalog is the dataset's full item table (no k-core), every item's text (title + other
text fields) encoded by the sentence encoder; the second fit reads the vectors back from the
on-disk cache. A fresh cache folder is used (``--cache-dir``, default a temporary one) so the
first run really encodes. Then ``--queries`` searches (seeded) find the catalog's top 20
through each vector index kind (exact NumPy, FAISS flat, FAISS HNSW) from user-like profile
queries (the mean of 5 random items): queries/s, build time, and recall@20 against exact.

    python eval/bench_embedding.py --out eval/results/bench_embedding.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_train import cpu_flags, cpu_name

from llmrec.candidates import EmbeddingGenerator, TrainData
from llmrec.candidates.vector_index import INDEX_KINDS, VectorIndex, faiss_available
from llmrec.data import load_dataset
from llmrec.data.catalog import ItemCatalog
from llmrec.io import atomic_write_json


def search_benchmark(vectors: np.ndarray, n_queries: int, k: int = 20) -> dict[str, dict]:
    """Build each index kind over ``vectors`` and time ``n_queries`` top-``k`` searches (seeded
    profile queries, one call); recall against exact search."""
    rng = np.random.default_rng(0)
    # A query is a user-like profile (the mean of 5 random items), not an item itself: an item
    # query would find itself first and flatter an approximate index's recall.
    picks = rng.choice(len(vectors), size=(n_queries, 5))
    queries = vectors[picks].mean(axis=1)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    out: dict[str, dict] = {}
    truth = None
    for kind in INDEX_KINDS:
        if kind != "exact" and not faiss_available():
            continue
        start = time.perf_counter()
        index = VectorIndex(vectors, kind)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, found = index.search(queries, k)
        search_s = time.perf_counter() - start
        truth = found if truth is None else truth
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
        out[kind] = {
            "build_s": round(build_s, 3),
            "search_s": round(search_s, 3),
            "queries_per_s": round(len(queries) / search_s, 1),
            "speedup_vs_exact": round(out["exact"]["search_s"] / search_s, 2) if out else 1.0,
            "recall@20": round(recall, 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/amazon-arts-office")
    parser.add_argument("--encoder", default="all-minilm-l6-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-items", type=int, default=None, help="only the first N items (a quick run)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache root (default: a fresh temporary one)"
    )
    parser.add_argument("--queries", type=int, default=2000, help="top-20 searches per index kind")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_embedding.json"))
    args = parser.parse_args(argv)
    catalog = ItemCatalog.from_dataset(load_dataset(args.data))
    if args.max_items:
        keep = slice(0, args.max_items)
        catalog = ItemCatalog(
            catalog.item_ids[keep], catalog.titles[keep], catalog.texts[keep], catalog.domains[keep]
        )
    train = TrainData(catalog, [])
    n = len(catalog)
    chars = float(np.mean([len(catalog.item_text(i)) for i in range(n)]))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLMREC_CACHE"] = str(args.cache_dir or tmp)
        start = time.perf_counter()
        gen = EmbeddingGenerator(args.encoder, batch_size=args.batch_size)
        gen._text_encoder()  # load the encoder outside the encoding time
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        gen.fit(train)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        again = EmbeddingGenerator(args.encoder, batch_size=args.batch_size)
        again._encoder = gen._encoder  # the cache is what is timed, not a second model load
        again.fit(train)
        cached_s = time.perf_counter() - start
        assert np.array_equal(again.item_vectors, gen.item_vectors)
    search = search_benchmark(gen.item_vectors, args.queries)
    result = {
        "benchmark": "embedding",
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "data": args.data,
        "encoder": args.encoder,
        "items": n,
        "mean_text_chars": round(chars, 1),
        "batch_size": args.batch_size,
        "encoder_load_s": round(load_s, 2),
        "encode_s": round(first_s, 2),
        "items_per_s": round(n / first_s, 1),
        "cached_fit_s": round(cached_s, 3),
        "speedup_cached": round(first_s / cached_s, 1),
        "search_top20": search,
        "load_avg_after": os.getloadavg(),
    }
    print(
        f"CPU: {result['cpu']} ({result['cores']} cores; {' '.join(result['cpu_flags'])})\n"
        f"{n} items ({chars:.0f} chars each on average), encoder {args.encoder}: "
        f"encoded in {first_s:.1f} s = {n / first_s:.0f} items/s; from the cache {cached_s:.2f} s "
        f"({first_s / cached_s:.0f}x faster); encoder load {load_s:.1f} s"
    )
    for kind, row in search.items():
        print(
            f"top-20 search, {kind}: {row['queries_per_s']:.0f} queries/s "
            f"({row['speedup_vs_exact']:.1f}x exact), build {row['build_s']:.2f} s, "
            f"recall@20 {row['recall@20']:.3f}"
        )
    atomic_write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
