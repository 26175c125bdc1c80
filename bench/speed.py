"""``dpr bench speed`` (= ``python -m bench.speed``): encoding, query latency and server throughput.

Sections (``--sections``, all by default), each side by side in one run so ratios are fair:

- ``encode``: passages/s of the indexer's path vs a naive loop, sentence-transformers, torch int8 and
  ONNX Runtime fp32/int8, with the share of the machine's fp32 matmul rate (:mod:`bench.encode`);
- ``int8``: Recall@k of fp32 vs int8 (torch and ONNX Runtime) encodings on nq_oracle val
  (:mod:`bench.quantize`);
- ``latency``: sequential single-query HTTP latency p50/p95/p99, split into queue / encode / search /
  fetch by the server's ``Server-Timing`` header, for the real knowledge base and for synthetic
  indexes (flat / HNSW / IVF-PQ, 1M vectors by default) with ANN recall@10 vs exact, size and build time;
- ``throughput``: q/s and latency at concurrency 1, 8, 32 over loopback, micro-batching on and off.

The server is ``dpr serve`` with its defaults; ``--serve-arg=--runtime --serve-arg=onnx`` (and
``--serve-arg=--quantize --serve-arg=int8``) measures the ONNX Runtime query encoder.

Writes ``speed.json`` and ``speed.md`` into ``--out``. ``--quick`` is a small run (minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.files import write_json
from common.flags import add_dataclass_arguments, given_fields, opt

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NQ = REPO / "data" / "nq_oracle"
DISTRACTORS = Path("/work/shared/data/distractors/wiki-psgs_w100-sample1000.jsonl")
SECTIONS = ("encode", "int8", "latency", "throughput")
# Not run unless asked (--peers, or --sections peers): it needs the peers extra and takes minutes.
OPTIONAL_SECTIONS = ("peers",)


def _default_kb() -> list[str]:
    kb = [str(NQ / "nq-oracle-train.json"), str(NQ / "nq-oracle-val.json")]
    return kb + ([str(DISTRACTORS)] if DISTRACTORS.exists() else [])


@dataclass(frozen=True)
class SpeedOptions:
    out: str = opt(help="directory for speed.json, speed.md and built indexes (work/)", metavar="DIR")
    model: str = opt("minilm", "model to encode with and to serve")
    kb: tuple[str, ...] = opt(default_factory=lambda: tuple(_default_kb()), help="knowledge base for the encoding "
                              "sample and the real index (default: nq_oracle train+val gold passages + distractors)",
                              action="append", metavar="PATH", show_default=False)
    train: str = opt(str(NQ / "nq-oracle-train.json"), "nq_oracle train JSON (int8 section's KB)", show_default=False)
    val: str = opt(str(NQ / "nq-oracle-val.json"), "nq_oracle val JSON (questions for every section)",
                   show_default=False)
    sections: tuple[str, ...] = opt(SECTIONS, "sections to run", metavar="SECTION,SECTION")
    encode_passages: int = opt(500, "passages in the encoding sample")
    encode_repeats: int = opt(3, "rounds of the encoding ways, taking turns; best kept")
    # Re-cut the sample to 5-250 words (see bench.encode.mixed_lengths).
    mixed_lengths: bool = opt(True, "re-cut the encoding sample to log-uniform 5-250 words, a KB with mixed passage "
                              "lengths (--no-mixed-lengths keeps the ~100-word DPR passages)")
    batch_size: int = opt(64, "passages per encoder batch")
    threads: int | None = opt(None, "torch threads for the encode/int8 sections; none: torch's")
    int8_limit: int | None = opt(None, "int8 section: only the first N val questions; none: all")
    index: str | None = opt(None, "real index to serve; none: build one from --kb into OUT/work", metavar="DIR")
    synthetic_n: int = opt(1_000_000, "synthetic vectors")
    # TYPE[:field=value...] (IndexConfig fields): ANN settings that reach recall@10 >= 0.95 at 1M in
    # bench.ann (IVF-PQ needs ~30x re-scoring; HNSW M16/efC80 keeps the 1M build to minutes).
    synthetic_types: tuple[str, ...] = opt(("flat", "ivfflat", "ivfpq:rescore_factor=30",
                                            "hnsw:hnsw_m=16:hnsw_ef_construction=80:hnsw_ef_search=256"),
                                           "TYPE[:FIELD=VALUE...] (IndexConfig fields) per synthetic index",
                                           metavar="SPEC,SPEC")
    synthetic_dir: str | None = opt(None, "where synthetic indexes are built and reused; none: OUT/work/synthetic")
    latency_queries: int = opt(200, "sequential queries per index")
    k: int = opt(10, "hits per query")
    concurrency: tuple[int, ...] = opt((1, 8, 32), "throughput concurrencies", metavar="C,C,...")
    duration_s: float = opt(15.0, "seconds per throughput point", flag="--duration")
    serve_args: tuple[str, ...] = opt((), "extra `dpr serve` flag (repeatable)", flag="--serve-arg", action="append",
                                      show_default=False)
    peers: bool = opt(False, "also measure txtai (index build, its HTTP API) and sentence-transformers' trainer on "
                      "the same data and model, with ratios to dpr (needs the peers extra)", group="peers")
    peer_rounds: int = opt(2, "interleaved rounds per peer comparison", group="peers")
    peer_batch_size: int = opt(32, "training batch for the trainer comparison (500 nq_oracle pairs, 1 epoch)",
                               group="peers")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS) - set(OPTIONAL_SECTIONS))
        if unknown:
            raise ValueError(f"unknown sections {unknown}; choose from {list(SECTIONS + OPTIONAL_SECTIONS)}")
        if self.peers and "peers" not in self.sections:
            object.__setattr__(self, "sections", (*self.sections, "peers"))
        if self.peer_rounds < 1:
            raise ValueError(f"--peer-rounds must be >= 1, got {self.peer_rounds}")


QUICK = {"encode_passages": 64, "encode_repeats": 1, "int8_limit": 100, "synthetic_n": 20_000, "latency_queries": 30, "duration_s": 3.0,
         "concurrency": (1, 8, 32), "peer_rounds": 1}


def _questions(path: str, n: int) -> list[str]:
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    return [r["question"] for r in records[:n]]


def _real_index(options: SpeedOptions, work: Path) -> Path:
    if options.index:
        return Path(options.index)
    from indexer.builds import is_index_root

    out = work / "real-index"
    if not is_index_root(out):
        from indexer import build_index
        from retriever.encoder import load_encoder, model_ref

        logger.info("building the real index of %s into %s", options.kb, out)
        build_index(load_encoder(options.model), list(options.kb), out, model_dir=model_ref(options.model),
                    progress=False)
    return out


# The CPU features that decide the encoder's speed here: int8 dot products (VNNI) and bf16 tiles (AMX).
# Machines of one name differ in them (sessions have run on AMD EPYC without, Intel Xeon with both).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_info() -> dict[str, Any]:
    info: dict[str, str] = {}      # the first CPU's fields of /proc/cpuinfo
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor()
    present = set(info.get("flags", "").split())
    flags = [f for f in SPEED_FLAGS if f in present]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in load] if load else None}


def cpu_label(machine: dict[str, Any]) -> str:
    """``"Intel Xeon (AMX)"``: the CPU's name and, where recorded, its fastest matrix unit."""
    flags = machine.get("cpu_flags")
    unit = None if flags is None else ("AMX" if "amx_bf16" in flags else "VNNI" if "avx512_vnni" in flags
                                       else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "")
    name = machine.get("cpu") or "?"
    for noise in ("(R)", "(TM)", " Processor", " CPU"):       # "Intel(R) Xeon(R) Processor" -> "Intel Xeon"
        name = name.replace(noise, "")
    return f"{name} ({unit})" if unit else name


def section_encode(options: SpeedOptions) -> dict[str, Any]:
    from bench.encode import mixed_lengths, run_encoding, sample_passages

    passages = sample_passages(list(options.kb), options.encode_passages)
    if options.mixed_lengths:
        passages = mixed_lengths(passages)
    return run_encoding(options.model, passages, options.batch_size, repeats=options.encode_repeats)


def section_int8(options: SpeedOptions) -> dict[str, Any]:
    from bench.quantize import int8_recall

    return int8_recall(options.model, options.train, options.val, options.batch_size, limit=options.int8_limit)


def section_latency(options: SpeedOptions, work: Path) -> dict[str, Any]:
    from bench.ann_index import ann_quality, build_seconds, build_synthetic_index
    from bench.serve import sequential_latency, serving

    queries = _questions(options.val, options.latency_queries)
    rows = []
    real = _real_index(options, work)
    with serving(real, options.serve_args) as server:
        row = {"index": "real KB", "index_type": server["index"]["index_type"], "count": server["index"]["count"],
               "rss_mb": server["rss_mb"]}
        row.update(sequential_latency(server["port"], queries, options.k))
        rows.append(row)
        logger.info("latency: %s", json.dumps(row))
    synth_dir = Path(options.synthetic_dir) if options.synthetic_dir else work / "synthetic"
    for spec in options.synthetic_types:
        index_type, params = parse_index_spec(spec)
        name = spec.replace(":", "-").replace("=", "")
        out = build_synthetic_index(synth_dir / f"{name}-{options.synthetic_n}", options.synthetic_n,
                                    index_type, model=options.model, progress=False, **params)
        row = {"index": f"synthetic {options.synthetic_n}", **ann_quality(out), "build_s": round(build_seconds(out), 1)}
        with serving(out, options.serve_args) as server:
            row["rss_mb"] = server["rss_mb"]
            row.update(sequential_latency(server["port"], queries, options.k))
        rows.append(row)
        logger.info("latency: %s", json.dumps(row))
    return {"queries": len(queries), "k": options.k, "rows": rows}


def parse_index_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ivfpq:rescore_factor=30:pq_m=96"`` -> ``("ivfpq", {"rescore_factor": 30, "pq_m": 96})``."""
    from indexer.config import IndexConfig

    index_type, *pairs = spec.split(":")
    fields = {f.name: f.type for f in dataclasses.fields(IndexConfig)}
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"index spec {spec!r}: {pair!r} is not FIELD=VALUE with an IndexConfig field "
                             f"({', '.join(sorted(fields))})")
        params[key] = value.lower() == "true" if value.lower() in ("true", "false") else (
            float(value) if "." in value else int(value))
    return index_type, params


def section_throughput(options: SpeedOptions, work: Path) -> dict[str, Any]:
    from bench.serve import serving, throughput

    queries = _questions(options.val, 1000)
    rows = []
    real = _real_index(options, work)
    for flag in ("--microbatch", "--no-microbatch"):
        with serving(real, [*options.serve_args, flag]) as server:
            for summary in throughput(server["url"], queries, options.concurrency, options.duration_s, options.k):
                rows.append({"microbatch": flag == "--microbatch", **summary})
    by = {(r["microbatch"], r["concurrency"]): r["qps"] for r in rows}
    lo, hi = min(options.concurrency), max(options.concurrency)
    scaling = {("on" if mb else "off"): round(by[(mb, hi)] / by[(mb, lo)], 2) if by.get((mb, lo)) else None
               for mb in (True, False)}
    return {"duration_s": options.duration_s, "k": options.k, "rows": rows,
            f"qps_c{hi}_over_c{lo}": scaling}


def run_speed(options: SpeedOptions, command: str = "") -> dict[str, Any]:
    """Run the chosen sections; the report dict (also written as JSON and Markdown into ``options.out``)."""
    import torch

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    out = Path(options.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "options": asdict(options), "seconds": {}}
    for name in options.sections:
        start = time.perf_counter()
        logger.info("section %s", name)
        if name == "encode":
            report["encode"] = section_encode(options)
        elif name == "int8":
            report["int8"] = section_int8(options)
        elif name == "latency":
            report["latency"] = section_latency(options, work)
        elif name == "throughput":
            report["throughput"] = section_throughput(options, work)
        elif name == "peers":
            from bench.peers import section_peers

            report["peers"] = section_peers(options, work, _questions(options.val, options.latency_queries))
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        write_json(out / "speed.json", report)                            # a later section may still fail

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in load] if load else None
    write_json(out / "speed.json", report)
    from bench.speed_report import markdown

    (out / "speed.md").write_text(markdown(report), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, SpeedOptions)
    parser.add_argument("--quick", action="store_true",
                        help="a small run (few passages, 20k synthetic vectors, short loads); flags given still win")


def options_from_args(args: argparse.Namespace) -> SpeedOptions:
    if args.out is None:
        raise ValueError("--out is required")
    preset = dict(QUICK) if args.quick else {}
    return SpeedOptions(**{**preset, **given_fields(args, SpeedOptions)})


def run(args: argparse.Namespace) -> int:
    from bench.speed_report import markdown

    # `dpr ...` and `python -m driver.main ...` are the same command.
    argv = sys.argv[sys.argv.index("bench"):] if "bench" in sys.argv else [Path(sys.argv[0]).name, *sys.argv[1:]]
    report = run_speed(options_from_args(args), command=shlex.join(["dpr", *argv] if "bench" in sys.argv else argv))
    print(markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
