"""``dpr bench merge``: peak memory of ``dpr index merge``, streaming against the old in-memory merge.

Writes N shard directories of synthetic vectors (the layout ``dpr index --shard`` writes, with a
knowledge base of short synthetic passages so the merge checks every row as usual), then merges them
in a child process per way. The child loads the corpus first and hands it to the merge, resets its
peak RSS to its current RSS (``/proc/self/clear_refs``), merges, and reads the peak (``VmHWM``): the
growth is what the merge's vectors, index, ids and hashes cost, against the size of the vectors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_kb(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"syn-{i}", "title": f"t{i}", "text": f"synthetic passage {i}"}) + "\n")
    return path


def write_shards(root: Path, kb: Path, n_shards: int, dim: int, chunk_size: int = 8192, seed: int = 0,
                 model: dict[str, Any] | None = None) -> list[Path]:
    """Shard directories over ``kb`` holding unit-norm random vectors, as if ``n_shards`` machines
    had embedded it with a model described by ``model`` (default: a stand-in description)."""
    from common.data import load_corpus
    from indexer.build import content_hash
    from indexer.manifest import kb_sources
    from indexer.shards import ShardSpec, finish_shard, make_header, write_chunk

    passages = load_corpus([kb])
    hashes = [content_hash(p) for p in passages]
    sources = kb_sources([kb])
    model = model or {"encoder": {"base_model": "synthetic", "pooling": "mean", "similarity": "cos"}, "dim": dim,
                      "normalize": True, "weights_sha256": "synthetic", "architecture": "none"}
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(n_shards):
        out = root / f"shard-{i}"
        out.mkdir(parents=True, exist_ok=True)
        header = make_header(model, "synthetic", sources, ShardSpec(i, n_shards), len(passages), "float32",
                             chunk_size)
        start, stop = header["rows"]
        for j, a in enumerate(range(start, stop, chunk_size)):
            b = min(stop, a + chunk_size)
            vectors = rng.standard_normal((b - a, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            write_chunk(out, j, header, vectors, passages[a:b], hashes[a:b], a)
        finish_shard(out, header)
        dirs.append(out)
    return dirs


_CHILD = """
import json, re, sys
import indexer.merge
from common.data import load_corpus
from indexer import IndexConfig

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

args = json.loads(sys.argv[1])
passages = load_corpus(args["kb"])
# The merge is handed the corpus loaded above, so what grows below is the vectors' side of the merge
# (chunks, sample, index, ids and hashes), not a second copy of the text.
indexer.merge.load_corpus = lambda paths: passages
try:
    with open("/proc/self/clear_refs", "w") as f:    # peak RSS := current RSS (Linux >= 4.0)
        f.write("5")
except OSError as e:
    sys.exit(f"cannot reset the peak RSS through /proc/self/clear_refs ({e}); this benchmark needs Linux >= 4.0")
before = status("VmRSS")
indexer.merge.merge_shards(args["shards"], args["out"], IndexConfig(**args["config"]), bm25=False,
                           progress=False, streaming=args["streaming"])
print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM")}))
"""


def measure_merge(shards: list[Path], kb: Path, out: Path, config: dict[str, Any], streaming: bool,
                  timeout_s: float = 7200) -> dict[str, Any]:
    """Merge in a child process; its RSS before the merge, its peak, and the seconds it took."""
    args = json.dumps({"shards": [str(s) for s in shards], "kb": [str(kb)], "out": str(out), "config": config,
                       "streaming": streaming})
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"merge failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    mb = 1024.0
    return {"streaming": streaming, "rss_before_mb": round(result["before_kb"] / mb, 1),
            "rss_peak_mb": round(result["peak_kb"] / mb, 1),
            "growth_mb": round((result["peak_kb"] - result["before_kb"]) / mb, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/bench-merge"), help="work directory and merge.json")
    parser.add_argument("--n", type=int, default=2_000_000, help="vectors (default %(default)s)")
    parser.add_argument("--dim", type=int, default=384, help="default %(default)s")
    parser.add_argument("--shards", type=int, default=4, help="shard directories (default %(default)s)")
    parser.add_argument("--index-types", default="ivfpq,flat", help="comma list (default %(default)s)")
    parser.add_argument("--ways", default="streaming,in-memory", help="comma list (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """``dpr bench merge``."""
    import shlex

    from common.files import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    kb = args.out / "kb.jsonl"
    shard_root = args.out / f"shards-{args.n}-{args.dim}-{args.shards}"
    if not (shard_root / f"shard-{args.shards - 1}" / "shard.json").exists():
        write_kb(kb, args.n)
        write_shards(shard_root, kb, args.shards, args.dim)
    shards = [shard_root / f"shard-{i}" for i in range(args.shards)]
    vectors_mb = round(args.n * args.dim * 4 / 2**20, 1)
    configs = {"flat": {"index_type": "flat"},
               "ivfpq": {"index_type": "ivfpq", "pq_m": max(1, args.dim // 8), "train_sample": 100_000}}
    rows = []
    for index_type in [t for t in args.index_types.split(",") if t]:
        for way in [w for w in args.ways.split(",") if w]:
            row = {"index_type": index_type, "way": way, "vectors_mb": vectors_mb,
                   **measure_merge(shards, kb, args.out / f"merged-{index_type}-{way}", configs[index_type],
                                   streaming=way == "streaming")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n": args.n, "dim": args.dim, "shards": args.shards,
              "rows": rows}
    write_json(args.out / "merge.json", report)
    print("| index | merge | vectors MB | RSS before MB | peak MB | growth MB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index_type']} | {r['way']} | {r['vectors_mb']} | {r['rss_before_mb']} | {r['rss_peak_mb']} | "
              f"{r['growth_mb']} | {r['seconds']} |")
    return 0
