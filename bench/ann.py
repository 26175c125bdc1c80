"""ANN benchmark: recall@10 vs exact, memory, build time, latency and throughput per FAISS index type.

``python -m bench.ann --n 1000000`` runs on synthetic clustered 384-d vectors (``bench.synthetic``)
and, with ``--real``, on the nq_oracle knowledge base embedded once with MiniLM (cached under
``--out``). Searches run with one thread (torch and FAISS), as the server does; builds use all cores.
Writes ``ann.json`` and ``ann.md`` into ``--out`` and, with ``--planner-table``, the measured table the
index planner reads. Built FAISS indexes are cached in ``--out/cache`` so reruns skip the builds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from bench.synthetic import synthetic_passages, synthetic_queries
from common.files import atomic_write, write_json
from common.stats import percentile

logger = logging.getLogger(__name__)

K = 10
BATCH = 32
KB_FILES = ("data/nq_oracle/nq-oracle-train.json", "data/nq_oracle/nq-oracle-val.json",
            "/work/shared/data/distractors/wiki-psgs_w100-sample1000.jsonl")


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K, block: int = 256) -> np.ndarray:
    """Ground-truth rows [nq, k] by torch matmul + topk."""
    xt = torch.from_numpy(x)
    out = []
    for s in range(0, len(q), block):
        out.append(torch.topk(torch.from_numpy(q[s:s + block]) @ xt.T, k, dim=1).indices.numpy())
    return np.concatenate(out)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _latency(fn: Callable[[np.ndarray], Any], q: np.ndarray, reps: int) -> tuple[float, float]:
    times = []
    for i in range(reps):
        one = q[i % len(q):i % len(q) + 1]
        t = time.perf_counter()
        fn(one)
        times.append(time.perf_counter() - t)
    return percentile(times, 50) * 1000, percentile(times, 99) * 1000


def _qps(fn: Callable[[np.ndarray], Any], q: np.ndarray, batches: int) -> float:
    t = time.perf_counter()
    done = 0
    for b in range(batches):
        chunk = q[(b * BATCH) % len(q):(b * BATCH) % len(q) + BATCH]
        fn(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - t)


def _rescored(index: faiss.Index, x: np.ndarray, params: Any, depth: int) -> Callable[[np.ndarray], np.ndarray]:
    """Search ``depth`` candidates in the compressed index, re-rank them on the float vectors (as SearchIndex)."""
    def search(q: np.ndarray) -> np.ndarray:
        _, cand = index.search(q, depth, params=params)
        out = np.full((len(q), K), -1, dtype=np.int64)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])
            top = np.argsort(-(x[c] @ q[i]), kind="stable")[:K]
            out[i, :len(top)] = c[top]
        return out
    return search


def _cached_build(cache: Path | None, name: str, build: Callable[[], faiss.Index]) -> tuple[faiss.Index, float, bool]:
    path = None if cache is None else cache / f"{name}.faiss"
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        return faiss.read_index(str(path)), meta["build_s"], True
    t = time.perf_counter()
    index = build()
    seconds = time.perf_counter() - t
    if path is not None:
        atomic_write(path, lambda f: f.write(faiss.serialize_index(index).tobytes()))
        write_json(path.with_suffix(".json"), {"build_s": seconds})
    return index, seconds, False


def _index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def _row(name: str, params: dict[str, Any], n: int, recall: float, nbytes: int, build_s: float,
         fn: Callable, q: np.ndarray, reps: int, batches: int, cached: bool, **extra: Any) -> dict[str, Any]:
    p50, p99 = _latency(fn, q, reps)
    row = {"type": name, "params": params, "n": n, "recall_at_10": round(recall, 4), "index_bytes": nbytes,
           "bytes_per_vector": round(nbytes / n, 1), "build_s": round(build_s, 1), "build_cached": cached,
           "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "batch_qps": round(_qps(fn, q, batches), 1), **extra}
    logger.info("%s %s: recall@10 %.4f, %.1f MB, build %.1fs, p50 %.2f ms, p99 %.2f ms, %s q/s (batch %d)",
                name, params, recall, nbytes / 1e6, build_s, p50, p99, row["batch_qps"], BATCH)
    return row


def _flat_rows(x: np.ndarray, q: np.ndarray, truth: np.ndarray, reps: int,
               emit: Callable[[dict[str, Any]], None]) -> None:
    """FAISS IndexFlatIP and torch matmul + topk over the same matrix, one thread each."""
    n, d = x.shape
    flat_reps, flat_batches = max(5, reps // 20), 1 if n > 200_000 else 3
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    xt = torch.from_numpy(x)
    torch_fn = lambda qq: torch.topk(torch.from_numpy(qq) @ xt.T, K, dim=1).indices.numpy()   # noqa: E731
    faiss_fn = lambda qq: flat.search(qq, K)[1]                                                # noqa: E731
    # Exact by construction; checked on a subset (all 1000 queries cost minutes at 1M on one thread).
    sub = slice(0, 64)
    emit(_row("flat-faiss", {}, n, recall_at(faiss_fn(q[sub]), truth[sub]), _index_bytes(flat) if n <= 200_000
              else n * d * 4, 0.0, faiss_fn, q, flat_reps, flat_batches, False))
    emit(_row("flat-torch", {}, n, recall_at(torch_fn(q[sub]), truth[sub]), n * d * 4, 0.0, torch_fn, q,
              flat_reps, flat_batches, False))



def run_suite(x: np.ndarray, q: np.ndarray, label: str, cache: Path | None, nlist: int, pq_ms: tuple[int, ...],
              nprobes: tuple[int, ...], hnsw: list[tuple[int, int]] | tuple[int, int] | None,
              ef_searches: tuple[int, ...],
              opq: bool, train_sample: int, reps: int, emit: Callable[[dict[str, Any]], None],
              flat: bool = True, depths: tuple[int, ...] = (4 * K, 10 * K), ivf: bool = True) -> None:
    """All index types over ``x`` (float32 unit-norm [n, d]); queries ``q``; one search thread.

    ``hnsw``: one (M, efConstruction) or a list of them, each built once and searched at every
    efSearch. ``ivf=False`` skips IVF-Flat and IVF-PQ. Each result row goes to ``emit`` as soon as it
    is measured, so a long run saves what it has.
    """
    from indexer.config import IndexConfig
    from indexer.faiss_index import create_index

    n, d = x.shape
    truth = exact_topk(x, q)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)

    def search_mode() -> None:
        faiss.omp_set_num_threads(1)

    def build_mode() -> None:
        faiss.omp_set_num_threads(threads)

    if flat:
        _flat_rows(x, q, truth, reps, emit)

    if ivf:
        _ivf_rows(x, q, truth, label, cache, nlist, pq_ms, nprobes, opq, train_sample, reps, emit, depths,
                  build_mode, search_mode)
    # --- hnsw
    settings = [hnsw] if isinstance(hnsw, tuple) else list(hnsw or [])
    for m, efc in settings:
        build_mode()
        index, secs, cached = _cached_build(cache, f"{label}-hnsw{m}-efc{efc}",
                                            lambda: create_index(x, IndexConfig("hnsw", hnsw_m=m,
                                                                                hnsw_ef_construction=efc)))
        search_mode()
        for ef in ef_searches:
            p = faiss.SearchParametersHNSW(efSearch=max(ef, K))
            fn = lambda qq, p=p, index=index: index.search(qq, K, params=p)[1]                # noqa: E731
            emit(_row("hnsw", {"M": m, "efConstruction": efc, "efSearch": ef}, n, recall_at(fn(q), truth),
                             _index_bytes(index), secs, fn, q, reps, 20, cached))
        del index

    build_mode()


def _ivf_rows(x: np.ndarray, q: np.ndarray, truth: np.ndarray, label: str, cache: Path | None, nlist: int,
              pq_ms: tuple[int, ...], nprobes: tuple[int, ...], opq: bool, train_sample: int, reps: int,
              emit: Callable[[dict[str, Any]], None], depths: tuple[int, ...], build_mode: Callable[[], None],
              search_mode: Callable[[], None]) -> None:
    """The IVF-Flat rows, then IVF-PQ (and OPQ) rows on the same coarse quantizer."""
    from indexer.config import IndexConfig
    from indexer.faiss_index import create_index

    n, d = x.shape
    # --- ivfflat; its trained coarse quantizer is reused by the ivfpq variants (same nlist)
    build_mode()
    cfg = IndexConfig("ivfflat", ivf_nlist=nlist, train_sample=train_sample)
    ivf, ivf_secs, cached = _cached_build(cache, f"{label}-ivfflat{nlist}", lambda: create_index(x, cfg))
    search_mode()
    for nprobe in nprobes:
        p = faiss.SearchParametersIVF(nprobe=nprobe)
        fn = lambda qq, p=p: ivf.search(qq, K, params=p)[1]                                    # noqa: E731
        emit(_row("ivfflat", {"nlist": nlist, "nprobe": nprobe}, n, recall_at(fn(q), truth),
                         _index_bytes(ivf), ivf_secs, fn, q, reps, 20, cached))
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(ivf).quantizer)
    train_s = ivf_secs

    for m in pq_ms:
        for rotate in ((False, True) if opq else (False,)):
            def build_pq(m: int = m, rotate: bool = rotate) -> faiss.Index:
                from indexer.faiss_index import training_sample

                sample = training_sample(x, IndexConfig("ivfpq", ivf_nlist=nlist, pq_m=m, train_sample=train_sample))
                centroids = quantizer.reconstruct_n(0, nlist)
                coarse = faiss.IndexFlatIP(d)
                pq = faiss.IndexIVFPQ(coarse, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
                pq.do_polysemous_training = False
                index: faiss.Index = pq
                if rotate:
                    opq_matrix = faiss.OPQMatrix(d, m)
                    opq_matrix.train(sample)
                    # OPQ is a rotation: rotated centroids are as good a coarse quantizer in the new space.
                    centroids = opq_matrix.apply(centroids)
                    index = faiss.IndexPreTransform(opq_matrix, pq)
                coarse.add(centroids)
                index.train(sample)
                for s in range(0, n, 65536):
                    index.add(x[s:s + 65536])
                return index

            build_mode()
            name = f"{label}-ivfpq{nlist}-m{m}{'-opq' if rotate else ''}"
            index, secs, cached = _cached_build(cache, name, build_pq)
            search_mode()
            for nprobe in nprobes:
                ivfp = faiss.SearchParametersIVF(nprobe=nprobe)
                p: Any = ivfp
                if rotate:
                    p = faiss.SearchParametersPreTransform()
                    p.index_params = ivfp
                base = {"nlist": nlist, "m": m, "opq": rotate, "nprobe": nprobe}
                raw = lambda qq, p=p, index=index: index.search(qq, K, params=p)[1]               # noqa: E731
                recall_raw = recall_at(raw(q), truth)
                for depth in depths:
                    fn = _rescored(index, x, p, depth)
                    emit(_row("ivfpq", {**base, "rescore": depth}, n, recall_at(fn(q), truth),
                                     _index_bytes(index), secs + train_s, fn, q, reps, 20, cached,
                                     recall_no_rescore=round(recall_raw, 4), pq_only_build_s=round(secs, 1)))
            del index


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | n | index | params | recall@10 | MB | B/vec | build s | p50 ms | p99 ms | q/s (batch 32) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['data']} | {r['n']:,} | {r['type']} | {params} | {r['recall_at_10']:.3f} | "
                     f"{r['index_bytes'] / 1e6:,.1f} | {r['bytes_per_vector']:.0f} | {r['build_s']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_qps']:,.0f} |")
    return "\n".join(lines) + "\n"


def real_embeddings(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of the nq_oracle KB (+1000 distractors) and its 1500 questions, cached as .npy."""
    px, qx = out / "nq_minilm_passages.npy", out / "nq_minilm_questions.npy"
    if px.is_file() and qx.is_file():
        return np.load(px, allow_pickle=False), np.load(qx, allow_pickle=False)
    from common.data import load_corpus, load_examples
    from retriever.encoder import load_encoder

    encoder = load_encoder("minilm")
    files = [f for f in KB_FILES if Path(f).exists()]
    passages = load_corpus(files)
    questions = [e.question for f in KB_FILES[:2] for e in load_examples(f)]
    p = encoder.encode_passages(passages, batch_size=64, progress=True)
    q = encoder.encode_queries(questions, batch_size=128, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    np.save(px, p, allow_pickle=False)
    np.save(qx, q, allow_pickle=False)
    return p, q


def combine(paths: list[Path]) -> dict[str, Any]:
    """One planner table from several ``ann.json`` runs, or earlier planner tables (rows deduplicated,
    first run wins; a row keeps the command of the run that measured it)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    seen, rows = set(), []
    for run in runs:
        for r in run["rows"]:
            key = (r["data"], r["n"], r["type"], json.dumps(r["params"], sort_keys=True))
            if key not in seen:
                seen.add(key)
                rows.append({**r, "run": r.get("run") or run["command"]})
    return {"command": " && ".join(r["command"] for r in runs), "date": max(r["date"] for r in runs),
            "machine": runs[0]["machine"], "search_threads": 1, "k": K, "batch": BATCH, "rows": rows}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: skip synthetic)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq-m", default="48,96")
    parser.add_argument("--nprobe", default="16,32,64,128")
    parser.add_argument("--hnsw", default="16,80",
                        help="M,efConstruction, or several separated by ';' (e.g. '32,128;48,128'); '' skips HNSW")
    parser.add_argument("--no-ivf", action="store_true", help="skip the IVF-Flat and IVF-PQ rows")
    parser.add_argument("--ef-search", default="32,64,128")
    parser.add_argument("--opq", action="store_true", help="also OPQ-rotated ivfpq")
    parser.add_argument("--train-sample", type=int, default=4096 * 40)
    parser.add_argument("--rescore", default="40,100", help="ivfpq candidates re-ranked on float vectors")
    parser.add_argument("--no-flat", action="store_true", help="skip the flat rows")
    parser.add_argument("--cache", type=Path, default=None, help="built-index cache (default <out>/cache)")
    parser.add_argument("--reps", type=int, default=200, help="single-query latency samples")
    parser.add_argument("--real", action="store_true", help="also the nq_oracle KB embedded with MiniLM")
    parser.add_argument("--out", type=Path, default=Path("runs/ann"))
    parser.add_argument("--planner-table", type=Path, default=None,
                        help="also write the planner's measured table (e.g. indexer/planner_table.json)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="no benchmark: merge these ann.json files into --planner-table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ann", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``dpr bench ann`` (= ``python -m bench.ann``)."""
    if args.combine:
        if args.planner_table is None:
            raise ValueError("--combine needs --planner-table")
        args.planner_table.write_text(json.dumps(combine(args.combine), indent=1) + "\n")
        return 0
    started = time.perf_counter()
    load_before = os.getloadavg()
    hnsw = [_ints(pair) for pair in args.hnsw.split(";") if pair.strip()]
    if any(len(pair) != 2 for pair in hnsw):
        raise ValueError(f"--hnsw: expected M,efConstruction pairs separated by ';', got {args.hnsw!r}")
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> dict[str, Any]:
        report = {
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_now": os.getloadavg(),
                        "faiss": faiss.__version__, "torch": torch.__version__},
            "search_threads": 1, "k": K, "batch": BATCH, "seconds": round(time.perf_counter() - started, 1),
            "rows": rows,
        }
        (args.out / "ann.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "ann.md").write_text(markdown(rows))
        return report

    def emitter(data: str) -> Callable[[dict[str, Any]], None]:
        def emit(row: dict[str, Any]) -> None:
            rows.append({**row, "data": data})
            save()
        return emit

    if args.real:
        p, q = real_embeddings(args.out)
        run_suite(p, q, "nq", None, max(1, int(round(4 * np.sqrt(len(p))))), (48,), (8, 16, 32),
                  (32, 200), (64, 128), False, args.train_sample, args.reps, emitter(f"nq_oracle MiniLM {p.shape[1]}-d"))
    if args.n:
        x = synthetic_passages(args.n, 384, seed=0)
        q = synthetic_queries(x, args.queries)
        run_suite(x, q, f"syn{args.n}", args.cache or args.out / "cache", args.nlist, _ints(args.pq_m), _ints(args.nprobe),
                  [(a, b) for a, b in hnsw], _ints(args.ef_search), args.opq, args.train_sample,
                  args.reps, emitter("synthetic 384-d"), flat=not args.no_flat, depths=_ints(args.rescore),
                  ivf=not args.no_ivf)
    report = save()
    if args.planner_table is not None:
        table = {k: report[k] for k in ("command", "date", "machine", "search_threads", "k", "batch")}
        table["rows"] = rows
        args.planner_table.write_text(json.dumps(table, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
