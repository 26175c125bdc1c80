"""Runs and qrels in TREC format, for trec_eval, ranx, ir_measures or pytrec_eval.

A run line is ``qid Q0 docid rank score tag``; a qrels line ``qid 0 docid grade``. Those tools rank
by score, not by the rank column, so scores are written strictly decreasing per query (a tie with the
previous passage is written 1e-6 lower): the file then ranks exactly as the report did.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.files import atomic_write_text

logger = logging.getLogger(__name__)

TIE_STEP = 1e-6


def run_lines(run: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]], tag: str) -> list[str]:
    lines = []
    for qid, pids in run.items():
        previous = float("inf")
        for rank, (pid, score) in enumerate(zip(pids, scores.get(qid, [0.0] * len(pids))), start=1):
            score = min(float(score), previous - TIE_STEP)
            previous = score
            lines.append(f"{qid} Q0 {pid} {rank} {score:.9f} {tag}")
    return lines


def write_run(path: str | Path, run: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]],
              tag: str) -> Path:
    """One run (``{qid: [pid, ...]}`` best first, with its scores) as a TREC run file."""
    if any(" " in x for x in (*run, *(p for pids in run.values() for p in pids), tag)):
        raise ValueError("TREC files are space-separated: query ids, passage ids and the tag must not hold spaces")
    return atomic_write_text(path, "\n".join(run_lines(run, scores, tag)) + "\n")


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, float]]) -> Path:
    lines = [f"{qid} 0 {pid} {grade:g}" for qid, judged in qrels.items() for pid, grade in judged.items()]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def run_paths(path: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """Where each system's run goes: ``path`` for the first, ``<stem>-<name><suffix>`` beside it for the rest."""
    path = Path(path)
    out = {}
    for i, name in enumerate(names):
        out[name] = path if i == 0 else path.with_name(f"{path.stem}-{name}{path.suffix or '.trec'}")
    return out
