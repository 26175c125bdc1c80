"""`dpr index`: embed a knowledge base into a FAISS index with a passage store.

``dpr index --model M --kb KB --out DIR`` builds an index (resumable: re-run after a crash);
``dpr index --shard I/N --model M --kb KB --out SHARD_DIR`` embeds one of N shards;
``dpr index merge --shards DIR... --out DIR`` assembles the shards into an index;
``dpr index plan --count N --dim D --ram-gb X`` recommends an index type;
``dpr index rollback DIR`` makes the build before DIR's current one current again;
``dpr index compact DIR`` folds the live segment (``dpr kb``, ``PUT /documents``) into a new build.
``--chunk words:100`` reads the KB as documents and cuts them into passages.
Under ``torchrun`` (``WORLD_SIZE > 1``) a build is shared out: each rank embeds its slice and rank 0
merges and publishes (:mod:`indexer.distributed`).
"""
from __future__ import annotations

import argparse
import logging
import os

from common.choices import DTYPES, QUANTIZE_MODES, RUNTIMES
from common.flags import add_dataclass_arguments, dataclass_from_args
from indexer.builds import DEFAULT_KEEP
from indexer.config import IndexConfig
from indexer.shards import DEFAULT_CHUNK

logger = logging.getLogger(__name__)

ACTIONS = ("build", "merge", "plan", "rollback", "compact")
AUTO = "auto"   # --quantize: bf16 where the CPU has AMX tiles (retriever.precision), else none


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="build",
                        help="build (default): embed and index; merge: assemble shards; plan: recommend an index; "
                             "rollback: serve the previous build of DIR (then reload the server); compact: fold "
                             "DIR's live document writes into a new build")
    parser.add_argument("dir", nargs="?", metavar="DIR", help="rollback, compact: the index directory")
    parser.add_argument("--model", help="a saved dual-encoder directory, or a base model name/alias such as 'minilm'")
    parser.add_argument("--kb", action="append", metavar="PATH",
                        help="knowledge base: JSONL (id/_id,title,text), a BEIR folder, or nq_oracle JSON "
                             "(its gold passages); repeat for several. For merge: where the KB is on this "
                             "machine (default: the paths the shards recorded)")
    parser.add_argument("--out", help="index directory: each build is a new snapshot under DIR/builds/, and "
                                      "DIR/current switches to it atomically; with --shard, the shard directory")
    parser.add_argument("--chunk", metavar="SPEC", default=None,
                        help="the KB holds documents ({id, title, text, metadata}): cut each into passages of "
                             "words:N (or words:N:STRIDE to overlap; tokens:N[:STRIDE] in model tokens; "
                             "sentences:N[:STRIDE] in sentences), keeping "
                             "doc_id, character offsets and metadata. Default: records are passages")
    parser.add_argument("--reload-url", metavar="URL", default=None,
                        help="compact: then POST URL/admin/reload (token from DPR_ADMIN_TOKEN) so the server swaps in "
                             "the new build")
    parser.add_argument("--keep-builds", type=int, default=DEFAULT_KEEP,
                        help="builds kept under DIR/builds/ for rollback, the new one included; older ones "
                             "no server has open are deleted (default %(default)s)")
    groups: dict = {}
    add_dataclass_arguments(parser, IndexConfig, groups=groups)
    work = parser.add_argument_group("resumable and sharded embedding")
    work.add_argument("--work-dir", default=None,
                      help="where embedding chunks are kept until the index is written (default <out>.work; "
                           "under torchrun on several machines it must be shared storage)")
    work.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                      help="passages per chunk file (default %(default)s)")
    work.add_argument("--shard", metavar="I/N", default=None,
                      help="embed only shard I of N (contiguous KB rows) into --out; then `dpr index merge`")
    work.add_argument("--dtype", choices=DTYPES, default=DTYPES[0],
                      help="shard vector precision (float16 halves shard size; the index is float32)")
    merge = parser.add_argument_group("merge")
    merge.add_argument("--shards", nargs="+", metavar="DIR", help="the N shard directories, any order")
    plan = parser.add_argument_group("plan")
    plan.add_argument("--count", type=int, help="passages to index")
    plan.add_argument("--dim", type=int, default=768, help="embedding dim (default %(default)s)")
    plan.add_argument("--ram-gb", type=float, default=None, help="RAM budget for the index (GB)")
    plan.add_argument("--target-recall", type=float, default=0.95,
                      help="recall@10 vs exact search to reach (default %(default)s)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for encoding (default: torch's choice; 1 can win on a busy CPU)")
    parser.add_argument("--quantize", choices=(AUTO, *QUANTIZE_MODES), default=AUTO,
                        help="none: fp32; int8: a dynamically quantised encoder; bf16: the fp32 encoder with bf16 "
                             "matrix multiplies (torch runtime: 2.1x fp32 on a CPU with AMX tiles, vectors at cosine "
                             "0.99998 to fp32); auto (default): bf16 where that holds (torch runtime, one process on "
                             "an AMX CPU), else none. Recorded in the manifest")
    parser.add_argument("--runtime", choices=RUNTIMES, default=RUNTIMES[0],
                        help="run the encoder on torch or ONNX Runtime (fused layers; with --quantize int8 the "
                             "fastest CPU path, docs/history.md 'Speed benchmark')")
    parser.add_argument("--no-bm25", action="store_true",
                        help="do not build the BM25 index beside the dense one (bm25/hybrid search then unavailable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _resolve_quantize(quantize: str, runtime: str, single: bool) -> str:
    """``--quantize auto`` made concrete: bf16 for a single-process torch build on an AMX CPU (where it
    was measured at 2.1x fp32), else none; any other value as given. Shards and torchrun ranks may run
    on other machines, whose vectors must all be of one precision: they stay fp32 unless told."""
    if quantize != AUTO:
        return quantize
    if runtime != "torch" or not single:
        return "none"
    from retriever.precision import resolve_precision
    from retriever.train_setup import resolve_device

    precision = resolve_precision("auto", resolve_device("auto"))
    logger.info("--quantize auto: %s", "bf16 (a CPU with AMX tiles)" if precision == "bf16" else "none (fp32)")
    return "bf16" if precision == "bf16" else "none"


def _config(args: argparse.Namespace) -> IndexConfig:
    return dataclass_from_args(IndexConfig, args)


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
    if missing:
        raise ValueError(f"dpr index {args.action} needs {', '.join(missing)}")


def _summary(out: object) -> None:
    from indexer import SearchIndex

    with SearchIndex.open(out, verify=False) as index:
        build = index.manifest["build"]
        rate = f", {build['passages_per_s']} passages/s" if build.get("passages_per_s") else ""
        bm25 = index.manifest.get("bm25")
        sparse = "no BM25 index" if bm25 is None else f"BM25 index {'reused' if bm25.get('reused') else 'built'}"
        how = (f"merged {build['merged_shards']} shards" if "merged_shards" in build else
               f"{build['embedded']} embedded, {build['reused']} reused"
               + (f", {build['resumed']} resumed" if build.get("resumed") else ""))
        print(f"indexed {len(index)} passages into {out} as build {index.build} ({index.config.index_type}, "
              f"dim {index.dim}): {how}{rate}, {build['seconds']}s; {sparse}")


def run(args: argparse.Namespace) -> int:
    if args.action == "rollback":
        from indexer.builds import list_builds, rollback

        target = args.dir or args.out
        if not target:
            raise ValueError("dpr index rollback needs the index directory: dpr index rollback DIR")
        before = next((b.name for b in list_builds(target) if b.current), None)
        now = rollback(target)
        print(f"{target}: rolled back from build {before} to {now.name}; builds kept: "
              f"{', '.join(b.name for b in list_builds(target))}. A running server serves it after "
              "POST /admin/reload (or use POST /admin/rollback instead of this command)")
        return 0
    if args.action == "compact":
        return _compact(args)
    if args.action == "plan":
        from indexer.planner import format_plan, plan_index

        _require(args, "count")
        plan = plan_index(args.count, args.dim, ram_gb=args.ram_gb, target_recall=args.target_recall)
        print(format_plan(plan, as_json=args.json))
        return 0
    config = _config(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.chunk is not None and (world > 1 or args.action == "merge" or args.shard is not None):
        raise ValueError("--chunk is supported by a single-process `dpr index` build only (not --shard, merge or "
                         "torchrun): cut the documents with one process, or pass passages")
    if world > 1 and (args.action == "merge" or args.shard is not None):
        raise ValueError(f"{'dpr index merge' if args.action == 'merge' else '--shard'} runs as one process, not "
                         f"under torchrun (WORLD_SIZE={world}); under torchrun `dpr index` gives each rank its "
                         "slice and merges by itself")
    if args.action == "merge":
        from indexer.merge import merge_shards

        _require(args, "shards", "out")
        out = merge_shards(args.shards, args.out, config, kb_paths=args.kb, bm25=not args.no_bm25,
                           progress=not args.no_progress, keep_builds=args.keep_builds)
        _summary(out)
        return 0
    _require(args, "model", "kb", "out")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    from indexer.build import build_index, embed_shard
    from indexer.shards import ShardSpec
    from retriever.encoder import load_encoder, model_ref
    from retriever.runtime import prepare_encoder

    spec = ShardSpec.parse(args.shard) if args.shard is not None else None
    chunk = args.chunk_size
    encoder = load_encoder(args.model)
    args.quantize = _resolve_quantize(args.quantize, args.runtime, single=world == 1 and spec is None)
    prepare_encoder(encoder, args.runtime, args.quantize)  # torch + none: as loaded
    if spec is not None:
        stats = embed_shard(encoder, args.kb, args.out, spec, model_dir=model_ref(args.model), dtype=args.dtype,
                            chunk_size=chunk, batch_size=config.batch_size, progress=not args.no_progress)
        start, stop = stats["rows"]
        print(f"shard {spec.index}/{spec.count}: rows {start}-{stop - 1} ({stop - start} passages, {args.dtype}) "
              f"in {args.out}: {stats['embedded']} embedded, {stats['resumed']} resumed")
        return 0
    if args.dtype != "float32":
        raise ValueError("--dtype applies to --shard only (an index stores float32 vectors)")
    if world > 1:
        # Under torchrun: this rank embeds its slice; rank 0 merges and publishes (indexer/distributed.py).
        from indexer.distributed import build_index_distributed

        result = build_index_distributed(encoder, args.kb, args.out, config, model_dir=model_ref(args.model),
                                         work_dir=args.work_dir, chunk_size=chunk, bm25=not args.no_bm25,
                                         keep_builds=args.keep_builds, progress=not args.no_progress,
                                         local_gpu=args.runtime == "torch" and args.quantize != "int8")
        if result["rank"] == 0:
            _summary(result["out"])
        else:
            print(f"rank {result['rank']}/{result['world']}: rows {result['rows'][0]}-{result['rows'][1] - 1} "
                  f"embedded ({result['embedded']} embedded, {result['resumed']} resumed, {result['reused']} reused)")
        return 0
    out = build_index(encoder, args.kb, args.out, config, model_dir=model_ref(args.model),
                      progress=not args.no_progress, bm25=not args.no_bm25, work_dir=args.work_dir,
                      chunk_size=chunk, keep_builds=args.keep_builds, chunk=args.chunk)
    _summary(out)
    return 0


def _compact(args: argparse.Namespace) -> int:
    from indexer.compact import compact

    target = args.dir or args.out
    if not target:
        raise ValueError("dpr index compact needs the index directory: dpr index compact DIR")
    result = compact(target, progress=not args.no_progress, keep_builds=args.keep_builds)
    _summary(target)
    print(f"compacted: {result['kept']} passages of build {result['from_build']} kept, {result['deleted']} deleted, "
          f"{result['live_passages']} live passages folded in (nothing embedded) in {result['seconds']}s")
    if args.reload_url:
        _reload(args.reload_url)
    else:
        print("a running server serves it after POST /admin/reload (or pass --reload-url)")
    return 0


def _reload(url: str) -> None:
    import json
    import urllib.request

    token = os.environ.get("DPR_ADMIN_TOKEN", "")
    request = urllib.request.Request(url.rstrip("/") + "/admin/reload", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            current = json.loads(response.read())["current"]
    except OSError as e:
        raise RuntimeError(f"the build is published, but POST {url}/admin/reload failed: {e}") from None
    print(f"{url}: now serving build {current['build']} ({current['count']} passages)")
