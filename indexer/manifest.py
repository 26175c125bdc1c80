"""``manifest.json``: what built an index, from what, and how to tell whether an encoder fits it."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from indexer.errors import IndexLoadError, ManifestMismatch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "index_config.json"
FAISS_FILE = "index.faiss"
STORE_FILE = "passages.sqlite"
EMBEDDINGS_FILE = "embeddings.npy"
HASHES_FILE = "passage_hashes.npy"
# Files whose size and SHA-256 the manifest records. The SQLite store is checked by its row count
# instead: its bytes are SQLite's business.
CHECKSUMMED_FILES = (FAISS_FILE, EMBEDDINGS_FILE, HASHES_FILE, CONFIG_FILE)

# (manifest path under "model", label) pairs that change what an embedding means. The base model
# name and the training temperature do not: equal weights under another name are the same model.
_ENCODER_FIELDS = (
    (("weights_sha256",), "weights_sha256"),
    (("architecture",), "architecture"),
    (("dim",), "dim"),
    (("normalize",), "normalize"),
    (("encoder", "pooling"), "pooling"),
    (("encoder", "similarity"), "similarity"),
    (("encoder", "tie_encoders"), "tie_encoders"),
    (("encoder", "query_max_length"), "query_max_length"),
    (("encoder", "passage_max_length"), "passage_max_length"),
)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def kb_sources(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Path, size and SHA-256 of each knowledge-base source (a BEIR folder is its ``corpus.jsonl``)."""
    out = []
    for p in paths:
        path = Path(p).resolve()
        data_file = path / "corpus.jsonl" if path.is_dir() else path
        out.append({"path": str(path), "file": str(data_file), "bytes": data_file.stat().st_size,
                    "sha256": file_sha256(data_file)})
    return out


def _get(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def encoder_differences(index_model: dict[str, Any], encoder_model: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, index_value, encoder_value)`` for every field where two ``describe()`` dicts disagree."""
    return [(label, _get(index_model, keys), _get(encoder_model, keys))
            for keys, label in _ENCODER_FIELDS
            if _get(index_model, keys) != _get(encoder_model, keys)]


def check_encoder(manifest: dict[str, Any], encoder: Any, description: dict[str, Any] | None = None) -> None:
    """Refuse an encoder whose embeddings would not be comparable with the index's.

    ``description`` is ``encoder.describe()`` when the caller already has it (hashing weights costs time).
    """
    described = description if description is not None else encoder.describe()
    diffs = encoder_differences(manifest.get("model") or {}, described)
    if diffs:
        lines = "; ".join(f"{name}: index has {want!r}, encoder has {got!r}" for name, want, got in diffs)
        raise ManifestMismatch(f"encoder does not match the index ({lines})", diffs)


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """Parse and sanity-check ``manifest.json``; every failure names the file."""
    path = index_dir / MANIFEST_FILE
    if not path.is_file():
        raise IndexLoadError(f"{path}: missing (not an index directory, or an unfinished build)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{path}: corrupt JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexLoadError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key, kind in (("count", int), ("dim", int), ("index_type", str), ("model", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise IndexLoadError(f"{path}: missing or invalid {key!r}")
    if manifest["count"] < 1 or manifest["dim"] < 1:
        raise IndexLoadError(f"{path}: count and dim must be positive, got {manifest['count']}, {manifest['dim']}")
    return manifest


def verify_files(index_dir: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Each recorded file exists with its recorded size (and SHA-256 when ``checksums``)."""
    for name in CHECKSUMMED_FILES:
        path = index_dir / name
        meta = manifest["files"].get(name)
        if not isinstance(meta, dict):
            raise IndexLoadError(f"{index_dir / MANIFEST_FILE}: no entry for {name} in 'files'")
        if not path.is_file():
            raise IndexLoadError(f"{path}: missing")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise IndexLoadError(f"{path}: size {size} bytes, manifest says {meta.get('bytes')} (truncated or replaced)")
        if checksums and file_sha256(path) != meta.get("sha256"):
            raise IndexLoadError(f"{path}: SHA-256 differs from the manifest (corrupt or modified)")
    if not (index_dir / STORE_FILE).is_file():
        raise IndexLoadError(f"{index_dir / STORE_FILE}: missing")


def file_entries(index_dir: Path) -> dict[str, dict[str, Any]]:
    return {name: {"bytes": (index_dir / name).stat().st_size, "sha256": file_sha256(index_dir / name)}
            for name in CHECKSUMMED_FILES}
