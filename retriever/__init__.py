"""Dual-encoder dense retriever: the model, its data readers, loss, negative mining and trainer."""
from __future__ import annotations

from retriever.config import EncoderConfig
from retriever.data import DataError, Example, Passage
from retriever.encoder import DualEncoder

__all__ = ["DataError", "DualEncoder", "EncoderConfig", "Example", "Passage"]
