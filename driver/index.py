"""`dpr index`: embed a knowledge base into a FAISS index with a passage store."""
from __future__ import annotations

import argparse

from indexer.config import INDEX_TYPES, IndexConfig

_DEFAULTS = IndexConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a saved dual-encoder directory, or a base model name/alias such as 'minilm'")
    parser.add_argument("--kb", required=True, action="append", metavar="PATH",
                        help="knowledge base: JSONL (id/_id,title,text), a BEIR folder, or nq_oracle JSON "
                             "(its gold passages); repeat for several")
    parser.add_argument("--out", required=True, help="index directory (replaced atomically)")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default=_DEFAULTS.index_type)
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="passages per encoder batch")
    hnsw = parser.add_argument_group("hnsw")
    hnsw.add_argument("--hnsw-m", type=int, default=_DEFAULTS.hnsw_m)
    hnsw.add_argument("--hnsw-ef-construction", type=int, default=_DEFAULTS.hnsw_ef_construction)
    hnsw.add_argument("--hnsw-ef-search", type=int, default=_DEFAULTS.hnsw_ef_search)
    ivf = parser.add_argument_group("ivfpq")
    ivf.add_argument("--ivf-nlist", type=int, default=None, help="inverted lists (default ~4*sqrt(n))")
    ivf.add_argument("--pq-m", type=int, default=_DEFAULTS.pq_m, help="PQ sub-quantizers (must divide dim)")
    ivf.add_argument("--pq-nbits", type=int, default=_DEFAULTS.pq_nbits)
    ivf.add_argument("--nprobe", type=int, default=_DEFAULTS.nprobe)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for encoding (default: torch's choice; 1 can win on a busy CPU)")
    parser.add_argument("--no-bm25", action="store_true",
                        help="do not build the BM25 index beside the dense one (bm25/hybrid search then unavailable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from indexer import SearchIndex, build_index
    from retriever.encoder import load_encoder, model_ref

    config = IndexConfig(
        index_type=args.index_type, batch_size=args.batch_size, hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction, hnsw_ef_search=args.hnsw_ef_search,
        ivf_nlist=args.ivf_nlist, pq_m=args.pq_m, pq_nbits=args.pq_nbits, nprobe=args.nprobe,
    )
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model)
    out = build_index(encoder, args.kb, args.out, config, model_dir=model_ref(args.model),
                      progress=not args.no_progress, bm25=not args.no_bm25)
    with SearchIndex.open(out, verify=False) as index:
        build = index.manifest["build"]
        rate = f", {build['passages_per_s']} passages/s" if build.get("passages_per_s") else ""
        bm25 = index.manifest.get("bm25")
        sparse = "no BM25 index" if bm25 is None else f"BM25 index {'reused' if bm25.get('reused') else 'built'}"
        print(f"indexed {len(index)} passages into {out} ({index.config.index_type}, dim {index.dim}): "
              f"{build['embedded']} embedded, {build['reused']} reused{rate}, {build['seconds']}s; {sparse}")
    return 0
