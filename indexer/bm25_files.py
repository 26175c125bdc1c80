"""The BM25 index kept beside the dense one (``<index>/bm25/``) for BM25 and hybrid search.

Built inside the same atomic build as the FAISS index, over the passages in store-row order, so a
BM25 hit's row is the passage's row everywhere. The manifest records its parameters and each file's
size and SHA-256; opening checks them. An index built before BM25 existed has no ``bm25`` entry and
still opens: it serves dense search only.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data import Passage
from indexer.errors import IndexLoadError
from indexer.manifest import HASHES_FILE, MANIFEST_FILE, file_sha256
from retriever.bm25 import BM25_FILES, DEFAULT_B, DEFAULT_K1, BM25Index

logger = logging.getLogger(__name__)

BM25_DIR = "bm25"


def _entries(folder: Path) -> dict[str, dict[str, Any]]:
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in BM25_FILES}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _reusable(previous: Path, manifest: dict[str, Any] | None, same_passages: bool) -> bool:
    entry = (manifest or {}).get(BM25_DIR)
    return (same_passages and isinstance(entry, dict) and entry.get("k1") == DEFAULT_K1
            and entry.get("b") == DEFAULT_B and (previous / BM25_DIR).is_dir())


def write_bm25(target: Path, passages: Sequence[Passage], previous: Path | None = None,
               previous_manifest: dict[str, Any] | None = None, same_passages: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Write ``target/bm25/`` and return its manifest entry.

    The previous build's files are copied instead of re-indexing when it holds the same passages in
    the same order (``same_passages``) and its files still match its manifest.
    """
    folder = target / BM25_DIR
    if previous is not None and _reusable(previous, previous_manifest, same_passages):
        # Published builds are immutable, so the new build can share the old one's files.
        shutil.copytree(previous / BM25_DIR, folder, copy_function=_link_or_copy)
        entries = _entries(folder)
        if entries == previous_manifest[BM25_DIR].get("files"):
            logger.info("BM25: reused the previous index's (same passages)")
            return {**previous_manifest[BM25_DIR], "reused": True}
        logger.warning("BM25: the previous index's files do not match its manifest; rebuilding")
        shutil.rmtree(folder)
    bm25 = BM25Index.build(passages, progress=progress)
    bm25.save(folder)
    return {"dir": BM25_DIR, "library": "bm25s", "count": len(bm25), "k1": bm25.k1, "b": bm25.b,
            "avg_length": bm25.avg_length, "reused": False, "files": _entries(folder)}


def same_passage_hashes(previous: Path, hashes: np.ndarray) -> bool:
    """Whether the previous index's ``passage_hashes.npy`` equals ``hashes`` (same content, same order)."""
    try:
        old = np.load(previous / HASHES_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return False
    return old.shape == hashes.shape and old.dtype == hashes.dtype and bool((old == hashes).all())


def load_bm25(index_dir: Path, manifest: dict[str, Any], verify: bool = True) -> BM25Index | None:
    """The BM25 index the manifest records, checked against it; ``None`` for a dense-only index."""
    entry = manifest.get(BM25_DIR)
    if entry is None:
        return None
    where = index_dir / MANIFEST_FILE
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        raise IndexLoadError(f"{where}: invalid 'bm25' entry")
    folder = index_dir / BM25_DIR            # never a path from the manifest (validate_manifest checks it)
    for name in BM25_FILES:
        path, meta = folder / name, entry["files"].get(name)
        if not isinstance(meta, dict):
            raise IndexLoadError(f"{where}: no entry for bm25/{name}")
        if not path.is_file():
            raise IndexLoadError(f"{path}: missing (the manifest records a BM25 index)")
        if path.stat().st_size != meta.get("bytes"):
            raise IndexLoadError(f"{path}: size {path.stat().st_size} bytes, manifest says {meta.get('bytes')}")
        if verify and file_sha256(path) != meta.get("sha256"):
            raise IndexLoadError(f"{path}: SHA-256 differs from the manifest (corrupt or modified)")
    try:
        bm25 = BM25Index.load(folder)
    except Exception as e:   # noqa: BLE001 - bm25s parses these files; whatever it raises, they are not an index
        raise IndexLoadError(f"{folder}: not a readable BM25 index ({type(e).__name__}: {e})") from e
    if len(bm25) != manifest["count"] or entry.get("count") != manifest["count"]:
        raise IndexLoadError(f"{folder}: indexes {len(bm25)} passages, manifest says {manifest['count']}")
    avg = entry.get("avg_length")
    if isinstance(avg, (int, float)) and not isinstance(avg, bool) and avg > 0:
        bm25.avg_length = float(avg)
    return bm25
