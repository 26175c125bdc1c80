"""``manifest.json``: what built an index, from what, and how to tell whether an encoder fits it."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.files import file_sha256
from indexer.errors import IndexLoadError, ManifestMismatch

logger = logging.getLogger(__name__)

# 2: the passage store is checksummed like every other file. Format 1 indexes (no store entry) still
# open; their store is checked structurally only (schema, rows, count).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "index_config.json"
FAISS_FILE = "index.faiss"
STORE_FILE = "passages.sqlite"
EMBEDDINGS_FILE = "embeddings.npy"
HASHES_FILE = "passage_hashes.npy"
# Files whose size and SHA-256 the manifest records (the BM25 files are in its "bm25" entry).
CHECKSUMMED_FILES = (FAISS_FILE, EMBEDDINGS_FILE, HASHES_FILE, CONFIG_FILE, STORE_FILE)
# A manifest is a few KB; anything far bigger is not one, and must not be read into memory whole.
MAX_MANIFEST_BYTES = 16 << 20

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
    (("encoder", "passage_format"), "passage_format"),
)
# What a field missing from a ``describe()`` dict meant: models and indexes from before the field
# existed encoded passages as a text pair.
_ENCODER_DEFAULTS = {"passage_format": "pair"}


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
    diffs = []
    for keys, label in _ENCODER_FIELDS:
        want, got = (_get_or_default(model, keys, label) for model in (index_model, encoder_model))
        if want != got:
            diffs.append((label, want, got))
    return diffs


def _get_or_default(data: dict[str, Any], keys: tuple[str, ...], label: str) -> Any:
    value = _get(data, keys)
    return _ENCODER_DEFAULTS.get(label) if value is None else value


def check_encoder(manifest: dict[str, Any], encoder: Any, description: dict[str, Any] | None = None) -> None:
    """Refuse an encoder whose embeddings would not be comparable with the index's.

    ``description`` is ``encoder.describe()`` when the caller already has it (hashing weights costs time).
    """
    described = description if description is not None else encoder.describe()
    diffs = encoder_differences(manifest.get("model") or {}, described)
    if diffs:
        lines = "; ".join(f"{name}: index has {want!r}, encoder has {got!r}" for name, want, got in diffs)
        raise ManifestMismatch(f"encoder does not match the index ({lines})", diffs)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is(value: Any, kind: type) -> bool:
    # bool is an int in Python; a count of `true` is still wrong.
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _expect(data: dict[str, Any], where: Path, key: str, kind: type, optional: bool = False,
            prefix: str = "") -> Any:
    value = data.get(key)
    if not (_is(value, kind) or (optional and value is None)):
        raise IndexLoadError(f"{where}: '{prefix}{key}' must be {kind.__name__}, got {_type_name(value)}")
    return value


def _check_file_entries(files: dict[str, Any], where: Path, label: str) -> None:
    for name, meta in files.items():
        if not (isinstance(meta, dict) and _is(meta.get("bytes"), int) and _is(meta.get("sha256"), str)):
            raise IndexLoadError(f"{where}: {label}[{name!r}] must be {{\"bytes\": int, \"sha256\": str}}")


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Every field a reader uses, with its type: a crafted manifest is refused here, naming the field,
    instead of failing later with a TypeError deep inside a loader."""
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"{where}: expected a JSON object, got {_type_name(manifest)}")
    version = manifest.get("format_version")
    if not _is(version, int) or version not in READABLE_VERSIONS:
        raise IndexLoadError(f"{where}: format_version {version!r} is not supported (expected one of {READABLE_VERSIONS})")
    for key, kind in (("count", int), ("dim", int), ("index_type", str), ("model", dict), ("files", dict)):
        _expect(manifest, where, key, kind)
    if manifest["count"] < 1 or manifest["dim"] < 1:
        raise IndexLoadError(f"{where}: count and dim must be positive, got {manifest['count']}, {manifest['dim']}")
    for key, kind in (("model_dir", str), ("pooling", str), ("similarity", str), ("normalize", bool),
                      ("built_at", str), ("build", dict), ("index_params", dict), ("kb", list), ("bm25", dict)):
        _expect(manifest, where, key, kind, optional=True)
    model = manifest["model"]
    for key, kind in (("encoder", dict), ("dim", int), ("normalize", bool), ("weights_sha256", str),
                      ("architecture", str), ("quantize", str), ("runtime", str)):
        _expect(model, where, key, kind, optional=True, prefix="model.")
    _check_file_entries(manifest["files"], where, "files")
    bm25 = manifest.get("bm25")
    if bm25 is not None:
        # The BM25 folder is always bm25/ inside the build: a manifest must not point a reader elsewhere.
        if bm25.get("dir", "bm25") != "bm25":
            raise IndexLoadError(f"{where}: 'bm25.dir' must be 'bm25', got {bm25.get('dir')!r}")
        _check_file_entries(_expect(bm25, where, "files", dict, prefix="bm25."), where, "bm25.files")
        _expect(bm25, where, "count", int, prefix="bm25.")
    documents = manifest.get("documents")
    if documents is not None:
        _expect(manifest, where, "documents", dict)
        _expect(documents, where, "chunk", str, optional=True, prefix="documents.")
        live_from = _expect(documents, where, "live_from", int, optional=True, prefix="documents.")
        if live_from is not None and live_from < 1:
            raise IndexLoadError(f"{where}: 'documents.live_from' must be >= 1, got {live_from}")
        fields = _expect(documents, where, "metadata_fields", dict, optional=True, prefix="documents.") or {}
        wrong = {name: kind for name, kind in fields.items() if kind not in ("string", "number", "bool")}
        if wrong:
            raise IndexLoadError(f"{where}: 'documents.metadata_fields' types must be string, number or bool, "
                                 f"got {wrong}")
    return manifest


def documents_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """The build's ``documents`` entry with its defaults: how documents were cut (``chunk``, None:
    one passage each), the metadata fields and their types, and the first live log file it does not
    contain (``live_from``; 1 for builds made before the live log)."""
    entry = manifest.get("documents") or {}
    return {"chunk": entry.get("chunk"), "metadata_fields": dict(entry.get("metadata_fields") or {}),
            "live_from": int(entry.get("live_from") or 1)}


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json`` of a build directory; every failure names the file."""
    path = index_dir / MANIFEST_FILE
    if not path.is_file():
        raise IndexLoadError(f"{path}: missing (not an index directory, or an unfinished build)")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise IndexLoadError(f"{path}: {size} bytes, far too big for a manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{path}: corrupt JSON ({e})") from e
    except RecursionError:
        raise IndexLoadError(f"{path}: JSON nested too deeply to be a manifest") from None
    return validate_manifest(manifest, path)


def verify_files(index_dir: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Each recorded file exists with its recorded size (and SHA-256 when ``checksums``)."""
    for name in CHECKSUMMED_FILES:
        path = index_dir / name
        meta = manifest["files"].get(name)
        if name == STORE_FILE and meta is None and manifest["format_version"] == 1:
            logger.warning("%s: built before the store was checksummed (format 1); its store is checked by schema "
                           "and row count only. Rebuild with `dpr index` to checksum it", index_dir)
            continue
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
