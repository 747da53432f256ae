"""Search over generated registry data: index build rate and query latency,
beside a brute-force scan of the same records and SQLite FTS5.

Prints, in one run, over N generated records across kinds (functions,
agents, clusters, tools) with names, descriptions, tags, regions and
prices drawn from a fixed vocabulary:
  - build: the node's index catching up with the feed (read each touched
    record from LMDB, normalize, add to tantivy, commit per 2,000 events),
    in records/s, beside the rate the node ingests remote changes at
    (README: ~4,700-5,700 changes/s by sync), which it must not fall behind;
  - structured: a filter of four comparisons and a facet, first page sorted by price;
  - full text: BM25 top 10 of two or three common words;
  - hybrid-ready ranking: full text with freshness, trust and a boost;
  - brute force: the same structured filter and a substring scan for the
    words over the normalized records in memory (search/query.matches), the
    baseline any index must beat;
  - SQLite FTS5 (stdlib sqlite3) BM25 top 10 of the same words over the
    same names and descriptions: the engine we measured against tantivy.

  - semantic (the semantic extra): the embeddings' build rate, and
    semantic and hybrid top-10 latency over the same records;
  - quality: a labelled query set over a separate generated corpus whose
    records are about two topics each, described in one vocabulary, and
    queries that ask for two topics mostly in another (synonyms): nDCG@10
    and recall@10 of text, semantic and hybrid ranking.

    python -m benchmarks.bench_search [--records 100000] [--queries 200] [--json]

Goals (issue 18): build at least the ingest rate; at 100k records full-text
p50 < 5 ms and hybrid top-10 p50 < 15 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from registrygrid.engine.ops import Put
from registrygrid.sdk import LocalRegistry
from registrygrid.search import query as q
from registrygrid.search.fields import normalize
from registrygrid.search.index import SearchIndex

WORDS = ["summarize", "translate", "classify", "detect", "generate", "legal", "medical", "financial", "contract", "invoice", "image", "audio", "video", "speech", "german", "french", "english", "spanish", "gpu", "cluster", "inference", "training", "agent", "model", "dataset", "tool", "function", "workflow", "policy", "fast", "cheap", "secure", "open", "source", "llama", "mistral", "bert", "vision", "language", "retrieval", "search", "embedding", "vector", "graph", "chat", "code", "review", "test", "deploy", "monitor"]
KINDS = {"bench.functions": "bench-function", "bench.agents": "bench-agent", "bench.clusters": "bench-cluster",
         "bench.tools": "bench-tool"}
# A user kind per registry: a name, free fields (the builtin kinds require fields this data has no use for).
KIND_SCHEMA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
REGIONS = ["eu-west", "eu-north", "us-east", "us-west", "ap-south", "ap-east"]
INGEST_RATE = 5_000  # changes/s: the node's remote ingest by sync (README, bench_federation)
TEXTS = [["summarize", "legal"], ["gpu", "cluster", "europe"], ["llama"], ["translate", "german", "contract"],
         ["code", "review"], ["speech", "english"], ["vision", "model", "fast"]]
# Topics for the quality set: the words records use, and the words queries use (mostly synonyms).
TOPICS = {
    "summarization": (["summarize", "summary", "abstract", "condense"], ["digest", "shorten", "recap", "summarize"]),
    "translation": (["translate", "translation", "localize", "multilingual"],
                    ["interpreter", "languages", "translator", "translate"]),
    "speech": (["speech", "transcribe", "voice", "spoken"], ["audio", "dictation", "talk", "speech"]),
    "vision": (["image", "photo", "picture", "visual"], ["camera", "vision", "pictures", "image"]),
    "legal": (["contract", "legal", "agreement", "clause"], ["law", "lawyer", "court", "contract"]),
    "finance": (["invoice", "billing", "payment", "accounting"], ["money", "bank", "finance", "invoice"]),
    "gpu": (["gpu", "accelerator", "cuda", "h100"], ["graphics", "compute", "nvidia", "gpu"]),
    "medical": (["medical", "clinical", "patient", "diagnosis"], ["health", "doctor", "hospital", "medical"]),
}
FILLER = ["fast", "reliable", "service", "tool", "api", "hosted", "managed", "open", "new", "best"]
FILTER = {"and": [{"field": "region", "in": ["eu-west", "eu-north"]}, {"field": "price", "lt": 0.5},
                  {"field": "tags", "eq": "gpu"}, {"not": {"field": "status", "eq": "down"}}]}


def fields_of(i: int, rng: random.Random) -> dict[str, Any]:
    return {"name": f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}",
            "description": " ".join(rng.choices(WORDS, k=rng.randint(8, 30))),
            "tags": rng.sample(["gpu", "nlp", "eu", "beta", "free", "vision", "audio"], 2),
            "region": rng.choice(REGIONS), "status": rng.choice(["up", "up", "up", "down"]),
            "price": round(rng.random() * 2, 3)}


def fill(registry: LocalRegistry, n: int) -> None:
    rng = random.Random(18)
    names = list(KINDS)
    for name, kind in KINDS.items():
        registry.register_kind(kind, 1, KIND_SCHEMA, registry=name)
        registry.create_registry(name, [kind])
    for start in range(0, n, 2000):
        ops = []
        for i in range(start, min(n, start + 2000)):
            name = names[i % len(names)]
            ops.append(Put(name, KINDS[name], fields_of(i, rng), record_id=f"r{i}"))
        for result in registry.execute(ops):
            if isinstance(result, Exception):
                raise result


def quality(root: Path, n: int = 4000, queries: int = 60) -> dict[str, dict[str, float]]:
    """nDCG@10 and recall@10 of each mode over the labelled topical corpus."""
    import math as m

    rng = random.Random(7)
    registry = LocalRegistry.open_path(root / "quality-store")
    registry.register_kind("bench-tool", 1, KIND_SCHEMA, registry="bench.quality")
    registry.create_registry("bench.quality", ["bench-tool"])
    names = sorted(TOPICS)
    topics_of: dict[str, tuple[str, str]] = {}
    ops = []
    for i in range(n):
        pair = tuple(rng.sample(names, 2))
        words = rng.choices(TOPICS[pair[0]][0], k=3) + rng.choices(TOPICS[pair[1]][0], k=3) + rng.choices(FILLER, k=4)
        rng.shuffle(words)
        topics_of[f"q{i}"] = pair  # type: ignore[assignment]
        ops.append(Put("bench.quality", "bench-tool", {"name": f"tool-{i}", "description": " ".join(words)},
                       record_id=f"q{i}"))
    registry.execute(ops)
    index = SearchIndex(root / "quality-index")
    if not index.enable_semantic():
        registry.close()
        return {}
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    index.catch_up_vectors(registry)
    asked = [tuple(rng.sample(names, 2)) for _ in range(queries)]
    out: dict[str, dict[str, float]] = {}
    for mode in ("text", "semantic", "hybrid"):
        ndcg = recall = 0.0
        for a, b in asked:
            text = " ".join(rng.sample(TOPICS[a][1], 2) + rng.sample(TOPICS[b][1], 1))
            found = index.search(q.parse_query({"text": text, "mode": mode, "limit": 10,
                                                "weights": {"freshness": 0, "trust": 0}}))["hits"]

            def grade(record_id: str, a: str = a, b: str = b) -> int:
                return len({a, b} & set(topics_of[record_id]))

            gains = [2 ** grade(h.id) - 1 for h in found]
            dcg = sum(g / m.log2(i + 2) for i, g in enumerate(gains))
            ideal = sorted((2 ** grade(r) - 1 for r in topics_of), reverse=True)[:10]
            idcg = sum(g / m.log2(i + 2) for i, g in enumerate(ideal))
            ndcg += dcg / idcg if idcg else 0.0
            both = sum(1 for r in topics_of if grade(r) == 2)
            recall += sum(1 for h in found if grade(h.id) == 2) / min(10, both) if both else 0.0
        out[mode] = {"ndcg@10": ndcg / len(asked), "recall@10": recall / len(asked)}
    registry.close()
    return out


def pct(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


def timed(fn: Any, count: int) -> tuple[float, float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - started)
    return pct(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rgrid-bench-search-"))
    out: dict[str, Any] = {"records": args.records}
    try:
        registry = LocalRegistry.open_path(root / "store")
        started = time.perf_counter()
        fill(registry, args.records)
        out["fill_s"] = time.perf_counter() - started
        index = SearchIndex(root / "index")
        started = time.perf_counter()
        index.catch_up(registry, org_verified=lambda org: True, local_org=registry.engine.owner)
        build_s = time.perf_counter() - started
        out["build_records_per_s"] = args.records / build_s
        out["build_vs_ingest"] = out["build_records_per_s"] / INGEST_RATE

        structured = {"filter": FILTER, "sort": "price", "limit": 10, "facets": ["region"]}
        out["structured_ms"] = timed(lambda i: index.search(q.parse_query(structured)), args.queries)
        out["text_ms"] = timed(lambda i: index.search(q.parse_query(
            {"text": " ".join(TEXTS[i % len(TEXTS)]), "limit": 10, "weights": {"freshness": 0, "trust": 0}})),
            args.queries)
        out["ranked_ms"] = timed(lambda i: index.search(q.parse_query(
            {"text": " ".join(TEXTS[i % len(TEXTS)]), "limit": 10,
             "boosts": [{"filter": {"field": "region", "eq": "eu-west"}, "factor": 1.5}]})), args.queries)

        if index.enable_semantic():
            started = time.perf_counter()
            index.catch_up_vectors(registry)
            out["vectors_records_per_s"] = args.records / (time.perf_counter() - started)
            out["semantic_ms"] = timed(lambda i: index.search(q.parse_query(
                {"text": " ".join(TEXTS[i % len(TEXTS)]) + f" {i}", "mode": "semantic", "limit": 10})),
                args.queries)
            out["hybrid_ms"] = timed(lambda i: index.search(q.parse_query(
                {"text": " ".join(TEXTS[i % len(TEXTS)]) + f" {i}", "mode": "hybrid", "limit": 10})),
                args.queries)
        out["quality"] = quality(root)

        docs = [normalize(r, org_verified=lambda org: True, local_org=None)
                for name in KINDS for r in registry.iter_all(name)]
        node = q.parse_query({"filter": FILTER}).filter
        assert node is not None
        brute_n = max(5, args.queries // 20)
        out["brute_structured_ms"] = timed(lambda i: sorted(
            (d for d in docs if q.matches(node, d)), key=lambda d: d["price"])[:10], brute_n)
        out["brute_text_ms"] = timed(lambda i: [d for d in docs if all(
            w in d["text"] for w in TEXTS[i % len(TEXTS)])][:10], brute_n)

        db = sqlite3.connect(root / "fts.db")
        db.execute("create virtual table fts using fts5(name, description)")
        with db:
            db.executemany("insert into fts values (?, ?)", [(d["title"], d["description"] or "") for d in docs])
        out["fts5_ms"] = timed(lambda i: db.execute(
            "select rowid from fts where fts match ? order by bm25(fts, 3.0, 1.5) limit 10",
            (" OR ".join(TEXTS[i % len(TEXTS)]),)).fetchall(), args.queries)
        registry.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    n = args.records
    print(f"search over {n:,} generated records in {len(KINDS)} kinds (filled in {out['fill_s']:.1f} s)")
    print(f"  index build: {out['build_records_per_s']:,.0f} records/s "
          f"({out['build_vs_ingest']:.1f}x the node's ~{INGEST_RATE:,} changes/s remote ingest)")
    rows = [("structured (4 filters, facet, sorted by price)", out["structured_ms"]),
            ("full text, BM25 top 10", out["text_ms"]),
            ("full text ranked (freshness, trust, a boost)", out["ranked_ms"]),
            ("brute force: the structured filter over normalized records", out["brute_structured_ms"]),
            ("brute force: substring scan for the words", out["brute_text_ms"]),
            ("SQLite FTS5 BM25 top 10, same words (OR)", out["fts5_ms"])]
    for label, (p50, p99) in rows:
        print(f"  {label:<62} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")
    print(f"  full text is {out['brute_text_ms'][0] / out['text_ms'][0]:,.0f}x the brute-force scan and "
          f"{out['fts5_ms'][0] / out['text_ms'][0]:.1f}x FTS5 at p50")
    if "hybrid_ms" in out:
        print(f"  embeddings build: {out['vectors_records_per_s']:,.0f} records/s (behind the text index, never in "
              "its way)")
        for label, key in (("semantic top 10", "semantic_ms"), ("hybrid top 10 (BM25 + vectors, fused)", "hybrid_ms")):
            p50, p99 = out[key]
            print(f"  {label:<62} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")
    else:
        print("  semantic: not measured (pip install 'registrygrid[semantic]')")
    for mode, figures in out["quality"].items():
        print(f"  quality, {mode:<8} nDCG@10 {figures['ndcg@10']:.3f}   recall@10 {figures['recall@10']:.3f}")


if __name__ == "__main__":
    main()
