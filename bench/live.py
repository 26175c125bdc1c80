"""`dpr bench live`: what documents written while serving cost, against a compacted index.

Real knowledge base (nq_oracle golds + distractors, each passage a document with made-up metadata):
the index is built over 90% of it and the other 10% is upserted (documents/s and passages/s with
one ``fsync`` per document and per batch; the encoder is the bound), then the same knowledge base
is compacted into one build. Searches over the build + 10% live segment and over the compacted
build take turns in rounds (search only: the query vectors are computed first, since encoding is
the same for both), dense, BM25 and hybrid; then filtered against unfiltered at three
selectivities. Memory per live passage is what applying the log allocates (``tracemalloc``). A
synthetic section measures filters at scale (flat, HNSW, IVF-Flat), with the recall of filtered
search against exact filtered search.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SOURCES = [f"s{i}" for i in range(100)]
# Filters of about 50%, 10% and 1% of the passages (metadata below: year uniform over 40 values,
# source uniform over 100).
FILTERS = {"50%": {"year": {"gte": 2000}}, "10%": {"source": {"in": SOURCES[:10]}}, "1%": {"source": SOURCES[0]}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.speed import _default_kb

    parser.add_argument("--out", type=Path, default=Path("runs/bench-live"), help="work directory and live.json")
    parser.add_argument("--model", default="minilm", help="model (default %(default)s)")
    parser.add_argument("--kb", action="append", default=None, help="knowledge base (default: the speed bench's)")
    parser.add_argument("--live-fraction", type=float, default=0.1, help="share upserted live (default %(default)s)")
    parser.add_argument("--queries", type=int, default=300, help="nq_oracle val questions per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic vectors; 0: skip that section")
    parser.add_argument("--single-upserts", type=int, default=50, help="documents upserted one at a time")
    parser.set_defaults(_default_kb=_default_kb)


def _documents(kb: list[str]) -> list[Any]:
    from common.data import load_corpus
    from common.documents import Document

    rng = np.random.default_rng(0)
    return [Document(doc_id=p.pid, title=p.title, text=p.text,
                     metadata={"source": SOURCES[int(rng.integers(100))], "year": 1980 + int(rng.integers(40))})
            for p in load_corpus(kb)]


def _write(path: Path, docs: list[Any]) -> Path:
    path.write_text("".join(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text, "metadata": d.metadata})
                            + "\n" for d in docs), encoding="utf-8")
    return path


def _p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _time_searches(live: Any, q: np.ndarray, texts: list[str], mode: str, flt: Any = None,
                   encoder: Any = None) -> list[float]:
    out = []
    for i in range(len(texts)):
        start = time.perf_counter()
        if mode == "dense+encode":
            live.search(encoder.encode_queries(texts[i:i + 1]), 10, flt)
        elif mode == "dense":
            live.search(q[i:i + 1], 10, flt)
        elif mode == "bm25":
            live.bm25_search(texts[i:i + 1], 10, flt)
        else:
            live.hybrid_search(q[i:i + 1], texts[i:i + 1], 10, flt=flt)
        out.append((time.perf_counter() - start) * 1000)
    return out


def real_kb(args: argparse.Namespace, encoder: Any, texts: list[str]) -> dict[str, Any]:
    from indexer import SearchIndex, build_index
    from indexer.compact import compact
    from indexer.live_index import LiveIndex, embed_document, embed_documents
    from retriever.encoder import model_ref

    docs = _documents(args.kb or args._default_kb())
    n_live = max(1, int(len(docs) * args.live_fraction))
    base, fresh = docs[:-n_live], docs[-n_live:]
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    index_dir = build_index(encoder, [_write(work / "base.jsonl", base)], work / "live-idx",
                            model_dir=model_ref(args.model), progress=False)
    # Upserts: a sample one at a time (one fsync each, as PUT /documents does), the rest in batches of 64.
    singles = fresh[:args.single_upserts]
    with SearchIndex.open(index_dir) as index:
        live = LiveIndex(index)
        start = time.perf_counter()
        passages = 0
        for doc in singles:
            passages += live.upsert(doc, *embed_document(doc, None, encoder))["passages"]
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        rest = fresh[len(singles):]
        batched = 0
        for i in range(0, len(rest), 64):
            group = rest[i:i + 64]
            batch = [(d, *pv) for d, pv in zip(group, embed_documents(group, None, encoder), strict=True)]
            batched += sum(r["passages"] for r in live.upsert_many(batch))
        batch_s = time.perf_counter() - start
        passages += batched
    # The bound: encoding the same passages alone, in the same batches.
    start = time.perf_counter()
    for i in range(0, len(rest), 64):
        embed_documents(rest[i:i + 64], None, encoder)
    encode_s = time.perf_counter() - start
    log_bytes = sum(p.stat().st_size for p in (index_dir / "live").glob("*.jsonl"))
    upserts = {"single": {"documents": len(singles), "seconds": round(single_s, 3),
                          "docs_per_s": round(len(singles) / max(single_s, 1e-9), 1)},
               "batched": {"documents": len(rest), "seconds": round(batch_s, 3),
                           "docs_per_s": round(len(rest) / max(batch_s, 1e-9), 1),
                           "passages_per_s": round(batched / max(batch_s, 1e-9), 1)},
               "encode_only": {"documents": len(rest), "seconds": round(encode_s, 3),
                               "docs_per_s": round(len(rest) / max(encode_s, 1e-9), 1)},
               "passages": passages, "log_bytes_per_passage": round(log_bytes / max(passages, 1))}

    # Memory: what replaying the log into a fresh reader allocates, per live passage.
    with SearchIndex.open(index_dir) as index:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        live = LiveIndex(index)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        segment_passages = live.segment.view().live
    memory = {"live_passages": segment_passages, "bytes_per_live_passage": round(grown / max(segment_passages, 1)),
              "note": "Python + numpy allocations of a reader applying the log (vectors, passages, metadata "
                      "columns, BM25 postings); the built passages' metadata columns included"}

    compacted_dir = work / "compacted-idx"
    shutil.copytree(index_dir, compacted_dir, symlinks=True)
    compact(compacted_dir, progress=False)
    q = encoder.encode_queries(texts)
    latency: dict[str, Any] = {}
    with SearchIndex.open(index_dir) as a, SearchIndex.open(compacted_dir) as b:
        systems = {"live": LiveIndex(a), "compacted": LiveIndex(b)}
        assert len(systems["live"]) == len(systems["compacted"]), "the two must hold the same knowledge base"
        # "dense+encode": what a query pays end to end in the engine (the encoder dominates).
        for mode in ("dense", "bm25", "hybrid", "dense+encode"):
            times: dict[str, list[float]] = {name: [] for name in systems}
            for _ in range(args.rounds):
                for name, system in systems.items():
                    _time_searches(system, q[:20], texts[:20], mode, encoder=encoder)     # warm-up
                    times[name] += _time_searches(system, q, texts, mode, encoder=encoder)
            p50 = {name: _p50(t) for name, t in times.items()}
            latency[mode] = {**{f"{name}_p50_ms": v for name, v in p50.items()},
                             "ratio": round(p50["live"] / p50["compacted"], 3)}
        filtered: dict[str, Any] = {}
        system = systems["compacted"]
        base_times: list[float] = []
        times = {name: [] for name in FILTERS}
        for _ in range(args.rounds):
            base_times += _time_searches(system, q, texts, "dense")
            for name, spec in FILTERS.items():
                times[name] += _time_searches(system, q, texts, "dense", system.parse_filter(spec))
        for name, spec in FILTERS.items():
            flt = system.parse_filter(spec)
            share = float(system.base_mask(flt).mean())
            filtered[name] = {"filter": spec, "share": round(share, 4), "p50_ms": _p50(times[name]),
                              "ratio": round(_p50(times[name]) / _p50(base_times), 3)}
        filtered["unfiltered_p50_ms"] = _p50(base_times)
    return {"kb_documents": len(docs), "built": len(base), "live_documents": n_live,
            "live_share": round(n_live / len(docs), 3), "upserts": upserts, "memory": memory, "latency": latency,
            "filters": filtered}


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    from bench.synthetic import synthetic_passages, synthetic_queries
    from common.data import Passage
    from indexer import SearchIndex
    from indexer.build import build_index_from_vectors
    from indexer.config import IndexConfig
    from indexer.live_index import LiveIndex

    n, dim = args.synthetic, 384
    vectors = synthetic_passages(n, dim=dim, seed=0)
    queries = synthetic_queries(vectors, 200, seed=1)
    rng = np.random.default_rng(0)
    sources, years = rng.integers(100, size=n), 1980 + rng.integers(40, size=n)
    passages = [Passage(pid=f"s{i}", title="", text=f"synthetic {i}",
                        metadata={"source": SOURCES[int(sources[i])], "year": int(years[i])}) for i in range(n)]
    description = {"dim": dim, "normalize": True, "weights_sha256": "synthetic", "encoder": {}}
    rows = []
    for index_type in ("flat", "hnsw", "ivfflat"):
        out = args.out / "work" / f"synthetic-{index_type}"
        shutil.rmtree(out, ignore_errors=True)
        config = IndexConfig(index_type=index_type, hnsw_m=32, hnsw_ef_construction=128, nprobe=16)
        start = time.perf_counter()
        build_index_from_vectors(vectors, passages, out, config, description, None, bm25=False, progress=False)
        logger.info("synthetic %s: built in %.1fs", index_type, time.perf_counter() - start)
        with SearchIndex.open(out, verify=False) as index:
            live = LiveIndex(index)
            base = []
            for _ in range(args.rounds):
                base += [_timed(live.search, queries[i:i + 1], 10, None) for i in range(len(queries))]
            for name, spec in FILTERS.items():
                flt = live.parse_filter(spec)
                mask = live.base_mask(flt)
                times, recall = [], []
                keep = np.flatnonzero(mask)
                for _ in range(args.rounds):
                    times += [_timed(live.search, queries[i:i + 1], 10, flt) for i in range(len(queries))]
                for i in range(len(queries)):
                    got = {r for r, _ in live.search(queries[i:i + 1], 10, flt)[0]}
                    exact = keep[np.argsort(-(vectors[keep] @ queries[i]))[:10]]
                    recall.append(len(got & set(exact.tolist())) / 10)
                rows.append({"index_type": index_type, "count": n, "filter": name, "share": round(float(mask.mean()), 4),
                             "p50_ms": _p50(times), "unfiltered_p50_ms": _p50(base),
                             "ratio": round(_p50(times) / _p50(base), 3), "recall_at_10": round(float(np.mean(recall)), 4)})
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def run(args: argparse.Namespace) -> int:
    """``dpr bench live``."""
    import os

    import torch

    from common.data import load_examples
    from common.files import write_json
    from retriever.encoder import load_encoder

    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    encoder = load_encoder(args.model)
    val = load_examples(REPO / "data" / "nq_oracle" / "nq-oracle-val.json")
    texts = [e.question for e in val[:args.queries]]
    # `dpr ...` and `python -m driver.main ...` are the same command; called from Python, argv is another's.
    argv = sys.argv[sys.argv.index("bench"):] if "bench" in sys.argv else ["bench", "live", "(called from Python)"]
    report: dict[str, Any] = {"command": shlex.join(["dpr", *argv]),
                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": args.model,
                              "machine": {"cores": os.cpu_count(), "load_avg_at_start": round(os.getloadavg()[0], 2)}}
    report["real_kb"] = real_kb(args, encoder, texts)
    print(json.dumps(report["real_kb"], indent=1), flush=True)
    if args.synthetic:
        report["synthetic"] = synthetic(args)
    write_json(args.out / "live.json", report)
    print(f"wrote {args.out / 'live.json'}")
    return 0
