"""What a rerun of ``dpr bench recall`` takes from an earlier run instead of computing it again.

- A row's finished training: ``OUT/models/ROW/bench_row.json`` records the row's ``TrainConfig`` and
  the sha256 of its data files (and of its starting model's weights when that is a saved directory);
  a run whose config, data and starting weights match evaluates that model as it is (``--retrain``
  trains again).
- A row's passage vectors: ``OUT/vectors/ROW/KB/`` holds ``passages.npy`` and ``key.json``, the
  model's description (weights sha256, encoder settings, runtime) and the sha256 of the passages'
  ids, titles and texts. Queries are always encoded afresh (seconds); the knowledge base is what
  costs (5,183 SciFact passages: minutes a row on a 2-core CPU).

Both are keyed on content, never on names or dates: a changed byte retrains or re-encodes. Vectors
are plain ``.npy`` (loaded without pickle), written before their key, each atomically, so a crash
leaves either no key or a key whose vectors are complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data import Passage
from common.files import atomic_write, read_json, write_json
from eval.report import hash_paths

logger = logging.getLogger(__name__)

ROW_RECORD = "bench_row.json"
VECTORS_DIR = "vectors"
VECTORS_FILE = "passages.npy"
VECTORS_KEY = "key.json"


# ----------------------------------------------------------------------------- finished training

# TrainConfig fields a run on labelled questions never reads: a change to them (a new default, say)
# leaves its training valid.
UNSUPERVISED_ONLY = ("pseudo_method", "pseudo_max_examples", "pseudo_val")


def _fields_read(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("unsupervised"):
        return config
    return {k: v for k, v in config.items() if k not in UNSUPERVISED_ONLY}


def training_key(config: Any) -> dict[str, Any]:
    """What a finished training must match to stand in for a new one: the config fields it reads and
    its data's bytes."""
    files = [Path(p) for p in (config.train, config.val, *config.kb) if p]
    # A row that starts from a saved model (another row's, under start_from) is only the same training
    # if that model's weights are the same bytes: its parent may have been trained again since.
    if Path(config.model).is_dir():
        files += sorted(Path(config.model).rglob("*.safetensors"))
    # Through JSON, as the record is read back: tuples become lists.
    return json.loads(json.dumps({"config": _fields_read(config.to_dict()), "data_sha256": hash_paths(files)}))


def finished_training(config: Any, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a training already done into ``config.out`` with this config and data (``key``,
    from :func:`training_key`), else None."""
    path = Path(config.out) / ROW_RECORD
    if not path.is_file() or not (Path(config.out) / "train_log.json").is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable (%s): training again", path, e)
        return None
    recorded = {**record, "config": _fields_read(record.get("config") or {})}
    differs = sorted(k for k in ("config", "data_sha256") if recorded.get(k) != key[k])
    if differs:
        fields = sorted(f for f in set(key["config"]) | set(recorded["config"])
                        if recorded["config"].get(f) != key["config"].get(f))
        logger.info("%s: an earlier training with a different %s (%s): training again", config.out,
                    " and ".join(differs), ", ".join(fields) or "same fields")
        return None
    return record["trained"]


def record_training(config: Any, key: dict[str, Any], trained: dict[str, Any]) -> None:
    write_json(Path(config.out) / ROW_RECORD, {**key, "trained": trained})


# ----------------------------------------------------------------------------- passage vectors

def passages_sha256(kb: Sequence[Passage]) -> str:
    """sha256 over every passage's id, title and text, in order (the order fixes the vector rows)."""
    h = hashlib.sha256()
    for p in kb:
        for part in (p.pid, p.title, p.text):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def vectors_key(encoder: Any, kb: Sequence[Passage]) -> dict[str, Any]:
    """What cached vectors must match: the model (weights sha256, encoder settings, runtime) and the passages."""
    return json.loads(json.dumps({"model": encoder.describe(), "passages": len(kb),
                                  "passages_sha256": passages_sha256(kb)}))


def cached_vectors(folder: Path, key: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """``(vectors [N, D] float32, the timings recorded when they were encoded)``, or None when ``folder``
    holds no vectors for this ``key`` (from :func:`vectors_key`)."""
    key_file, array_file = folder / VECTORS_KEY, folder / VECTORS_FILE
    if not key_file.is_file() or not array_file.is_file():
        return None
    try:
        record = read_json(key_file)
        if record.get("key") != key:
            logger.info("%s: vectors of another model or other passages: encoding again", folder)
            return None
        vectors = np.load(array_file, allow_pickle=False)
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable cached vectors (%s): encoding again", folder, e)
        return None
    expected = (key["passages"], key["model"]["dim"])
    if vectors.shape != expected or vectors.dtype != np.float32:
        logger.warning("%s: cached vectors are %s %s, expected %s float32: encoding again", folder,
                       vectors.shape, vectors.dtype, expected)
        return None
    return vectors, record.get("timings", {})


def store_vectors(folder: Path, key: dict[str, Any], vectors: np.ndarray, timings: dict[str, Any]) -> None:
    """Write ``passages.npy``, then ``key.json`` (each atomically): a key always names whole vectors."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    (folder / VECTORS_KEY).unlink(missing_ok=True)
    atomic_write(folder / VECTORS_FILE, lambda f: f.write(buffer.getvalue()))
    write_json(folder / VECTORS_KEY, {"key": key, "timings": timings})
