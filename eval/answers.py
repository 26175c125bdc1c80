"""DPR-style answer match: re-exported from :mod:`retriever.answers`.

The functions live in ``retriever`` so that hard-negative mining skips exactly the passages that the
evaluation would count as answer hits.
"""
from __future__ import annotations

from retriever.answers import (answer_hits_at_k, answer_matches, answer_recall_at_k, has_answer,
                               normalize_answer)

__all__ = ["answer_hits_at_k", "answer_matches", "answer_recall_at_k", "has_answer", "normalize_answer"]
