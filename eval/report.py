"""What an evaluation report records besides the numbers: data hashes and library versions."""
from __future__ import annotations

import logging
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from common.files import file_sha256, write_json

logger = logging.getLogger(__name__)

# Distribution names (faiss ships as faiss-cpu or faiss-gpu).
LIBRARIES = ("torch", "transformers", "faiss-cpu", "faiss-gpu", "numpy", "bm25s", "tokenizers")


def hash_paths(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{path: sha256}`` for each file; a folder contributes each of its (non-hidden) files."""
    out = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) \
            if path.is_dir() else [path]
        for file in files:
            out[str(file)] = file_sha256(file)
    return out


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write the JSON report atomically (temporary file, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a directory, expected a JSON file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    logger.info("wrote %s", path)
    return path
