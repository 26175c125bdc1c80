"""Dual-encoder dense retriever: the model, its loss, negative mining and trainer.

The names below are imported on first use, so ``import retriever.train_config`` (what ``dpr --help``
needs) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"DualEncoder": "retriever.encoder", "EncoderConfig": "retriever.config", "DataError": "common.data",
            "Example": "common.data", "Passage": "common.data"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retriever' has no attribute {name!r}")
