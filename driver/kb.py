"""`dpr kb`: change an index's knowledge base without a rebuild.

``dpr kb upsert --index DIR docs.jsonl`` cuts each document (``{"id", "title", "text", "metadata"}``)
as the index's documents were cut, embeds it with the index's model and appends it to the live log
(``DIR/live/``, durable when the command returns); ``dpr kb delete --index DIR ID...`` deletes
documents. A server serving DIR sees the change at its next search; ``dpr index compact DIR`` folds
the changes into a new build.
"""
from __future__ import annotations

import argparse

ACTIONS = ("upsert", "delete")


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    parser.add_argument("action", choices=ACTIONS, help="upsert: add or replace documents; delete: remove them")
    parser.add_argument("items", nargs="+", metavar="FILE|ID",
                        help="upsert: JSONL/JSON files of documents; delete: document ids")
    parser.add_argument("--index", required=True, metavar="DIR", help="the index directory (as served)")
    parser.add_argument("--model", default=None,
                        help="upsert: the model to embed with (default: the one the index records; it must match)")
    parser.add_argument("--batch-docs", type=int, default=64,
                        help="upsert: documents embedded and written per fsync (default %(default)s)")
    parser.add_argument("--missing-ok", action="store_true", help="delete: ids that are not in the index are not an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from indexer import SearchIndex
    from indexer.live_index import LiveIndex

    with SearchIndex.open(args.index, verify=False) as index:
        live = LiveIndex(index)
        if args.action == "delete":
            # All or nothing: an unknown id fails the command before any document is deleted.
            unknown = [] if args.missing_ok else [d for d in args.items if not live.has_document(d)]
            if unknown:
                raise ValueError(f"{len(unknown)} of {len(args.items)} ids are not documents of {args.index}: "
                                 f"{unknown[:10]} (nothing was deleted; --missing-ok to delete the others)")
            missing = live.delete_many(args.items)
            print(f"{args.index}: deleted {len(set(args.items)) - len(missing)} document(s); "
                  f"{live.summary()['deleted_passages']} passages are now tombstoned")
            return 0
        return _upsert(args, index, live)


def _upsert(args: argparse.Namespace, index: object, live: object) -> int:
    import time

    from tqdm.auto import tqdm

    from common.documents import read_documents
    from indexer import check_encoder
    from indexer.filters import infer_schema
    from indexer.live_index import embed_documents
    from retriever.encoder import load_encoder
    from retriever.runtime import prepare_as_built

    if args.batch_docs < 1:
        raise ValueError(f"--batch-docs must be >= 1, got {args.batch_docs}")
    docs = read_documents(args.items)
    for doc in docs:
        live.check_metadata_types(doc.metadata)
    # A field new to the index must have one type across the documents too: a batch written with two
    # would leave the log with a line no reader can apply.
    infer_schema((doc.metadata for doc in docs), where=lambda i: f"document {docs[i].doc_id!r}")
    ref = args.model or index.model_dir
    if not ref:
        raise ValueError(f"{args.index}: the index records no model; pass --model")
    # At the build's precision, as the server embeds live documents.
    encoder = prepare_as_built(load_encoder(ref), index.manifest["model"])
    check_encoder(index.manifest, encoder)
    start = time.perf_counter()
    passages = created = 0
    bar = tqdm(total=len(docs), unit="doc", disable=args.no_progress, desc="upsert")
    for i in range(0, len(docs), args.batch_docs):
        group = docs[i:i + args.batch_docs]
        batch = [(doc, *pv) for doc, pv in zip(group, embed_documents(group, live.chunk, encoder), strict=True)]
        results = live.upsert_many(batch)
        passages += sum(r["passages"] for r in results)
        created += sum(r["created"] for r in results)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    print(f"{args.index}: upserted {len(docs)} document(s) ({created} new, {len(docs) - created} replaced) as "
          f"{passages} passages in {seconds:.1f}s ({len(docs) / seconds:.1f} docs/s); live segment: "
          f"{live.summary()['live_passages']} passages. `dpr index compact {args.index}` folds them into a build")
    return 0
