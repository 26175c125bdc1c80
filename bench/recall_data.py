"""The benchmark's data: training questions, held-out questions and one knowledge base.

- nq_oracle files: train on the train file, evaluate on the val file; the knowledge base is the gold
  passages of both (plus any ``--extra-passages``); a hit is the gold passage itself.
- BEIR folders: train and evaluate on the given splits. When both name the same folder and split (e.g.
  SciFact, whose only qrels are ``train.tsv``), its queries are split by seed into train / dev / test
  (70 / 10 / 20): the trainer picks its checkpoint on dev, the table reports test. The split is written
  as a BEIR folder under the run directory whose corpus and queries are symlinks, so no data is copied.

And the dense rows' recipes (:data:`RECIPES`): which rows exist, how ``--recipe`` adds one, and the
order rows run in (a row after the row it starts from).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data import DataError, Passage, is_beir_dir, load_corpus, read_qrels
from common.files import atomic_dir
from eval.evalset import EvalSet, default_kb, load_eval_set
from indexer.chunking import ChunkSpec

logger = logging.getLogger(__name__)

TEST_SHARE = 0.2
DEV_SHARE = 0.1


@dataclass(frozen=True)
class BenchData:
    """What the trainer reads (paths and splits) and what the table is measured on."""

    train_path: str
    train_split: str
    val_path: str                   # the trainer's checkpoint selection set
    val_split: str | None
    train_set: EvalSet              # training questions: the fusion weight is tuned on these
    test_set: EvalSet               # held-out questions: the table
    kb: list[Passage]
    tune_kb: list[Passage]          # the knowledge base the training questions are ranked in
    notes: dict[str, Any]


def _dedup(passages: Sequence[Passage]) -> list[Passage]:
    seen: dict[str, Passage] = {}
    for p in passages:
        seen.setdefault(p.pid, p)
    return list(seen.values())


def split_queries(qids: Sequence[str], seed: int, test_share: float = TEST_SHARE,
                  dev_share: float = DEV_SHARE) -> dict[str, list[str]]:
    """``{"train", "dev", "test"}`` query ids: a seeded permutation of the sorted ids, cut by share."""
    ids = sorted(set(qids))
    if len(ids) < 5:
        raise DataError(f"{len(ids)} judged queries: too few to split into train/dev/test")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test, n_dev = max(1, round(test_share * len(ids))), max(1, round(dev_share * len(ids)))
    return {"test": sorted(order[:n_test]), "dev": sorted(order[n_test:n_test + n_dev]),
            "train": sorted(order[n_test + n_dev:])}


def write_split_folder(source: Path, split: str, out: Path, seed: int) -> dict[str, int]:
    """A BEIR folder at ``out`` with ``qrels/{train,dev,test}.tsv`` cut from ``source``'s ``split``."""
    qrels = read_qrels(source / "qrels" / f"{split}.tsv")
    judged = [q for q, j in qrels.items() if any(g > 0 for g in j.values())]
    parts = split_queries(judged, seed)
    with atomic_dir(out) as tmp:
        (tmp / "qrels").mkdir()
        for name in ("corpus.jsonl", "queries.jsonl"):
            (tmp / name).symlink_to((source / name).resolve())
        for name, qids in parts.items():
            lines = ["query-id\tcorpus-id\tscore"]
            lines += [f"{q}\t{pid}\t{g}" for q in qids for pid, g in qrels[q].items()]
            (tmp / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {name: len(qids) for name, qids in parts.items()}


def _covers(evalset: EvalSet, kb: Sequence[Passage]) -> bool:
    return evalset.relevant_ids() <= {p.pid for p in kb}


def prepare(train: Path, val: Path, out: Path, seed: int, train_split: str = "train", val_split: str = "test",
            extra_passages: Sequence[Path] = ()) -> BenchData:
    """Load (and for a single-split BEIR folder, split) the benchmark data."""
    for path in (train, val):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such nq_oracle file or BEIR folder")
    notes: dict[str, Any] = {"train": str(train), "val": str(val)}
    extra = load_corpus(list(extra_passages)) if extra_passages else []
    if is_beir_dir(train) and train.resolve() == val.resolve() and (
            val_split == train_split or not (val / "qrels" / f"{val_split}.tsv").exists()):
        folder = out / "data" / train.resolve().name
        sizes = write_split_folder(train, train_split, folder, seed)
        notes["split"] = {"source": f"{train}/qrels/{train_split}.tsv", "seed": seed, "folder": str(folder),
                          "shares": {"train": round(1 - TEST_SHARE - DEV_SHARE, 2), "dev": DEV_SHARE,
                                     "test": TEST_SHARE},
                          "queries": sizes}
        logger.info("split %s queries by seed %d: %s (checkpoint picked on dev, table on test)", train, seed, sizes)
        train_set, test_set = load_eval_set(folder, "train"), load_eval_set(folder, "test")
        data_paths = (str(folder), "train", str(folder), "dev")
    else:
        train_set, test_set = load_eval_set(train, train_split), load_eval_set(val, val_split)
        data_paths = (str(train), train_split, str(val), val_split if is_beir_dir(val) else None)
    if test_set.layout == "beir":
        kb = default_kb(test_set)[0]
    else:
        kb = list(train_set.gold_passages) if train_set.layout == "nq_oracle" else []
        kb += list(test_set.gold_passages)
    kb = _dedup(kb + extra)
    tune_kb = kb if _covers(train_set, kb) else _dedup(default_kb(train_set)[0] + extra)
    notes.update(kb_passages=len(kb), extra_passages=[str(p) for p in extra_passages], extra_count=len(extra),
                 tune_kb_passages=len(tune_kb), train_queries=len(train_set), test_queries=len(test_set))
    return BenchData(*data_paths, train_set=train_set, test_set=test_set, kb=kb, tune_kb=tune_kb, notes=notes)


# ----------------------------------------------------------------------------- the rows: recipes

# The dense rows: name -> recipe. A recipe is TrainConfig overrides (on top of --model, --epochs,
# --seed and the benchmark's data) plus the benchmark's own keys (RECIPE_KEYS):
#   "zero_shot": true      no training: evaluate the base model (only "model" and encoder fields apply)
#   "start_from": "ROW"    train from ROW's trained model (TrainConfig.model = its directory); ROW must
#                          run too, and runs first
#   "unsupervised": true   passed on as the TrainConfig override unsupervised=True, with kb = the
#                          benchmark's knowledge base (data/kb.jsonl): the trainer uses no training questions
#   "chunk": "SPEC"        search the knowledge base cut by SPEC (indexer.chunking, as `dpr index --chunk`),
#                          each passage record a document ranked by its best piece; training is unchanged
# A recipe is checked against TrainConfig only when its row runs (before any row trains), so entries
# may use fields this checkout's trainer does not have yet. --recipe NAME:JSON adds or replaces one.
# Rows measured on SciFact (docs/training.md): "default" is whatever `dpr train` does by default
# (re-mined hard negatives), the others say what they change from it.
RECIPES: dict[str, dict[str, Any]] = {
    "zero-shot": {"zero_shot": True},
    # The untrained model over a sentence index: a label-free option (`dpr index --chunk sentences:1`).
    "zero-shot-sentences": {"zero_shot": True, "chunk": "sentences:1"},
    "in-batch": {"hard_negatives": "none"},
    "in-batch+hard": {"hard_negatives": "model", "num_hard_negatives": 1, "remine_every": 0},
    # dpr train's defaults until 2026-12-07: the same negatives, 2 epochs at 2e-5, the checkpoint's dropout.
    "previous-default": {"epochs": 2, "lr": 2e-5, "attention_dropout": None},
    "default": {},
    "distill": {"distill_weight": 1.0},
    # What `dpr train --unsupervised` does by default (title pseudo queries where the passages have
    # titles, 1 epoch at 5e-5, in-batch negatives only: chosen on SciFact's non-test claims).
    "unsupervised": {"unsupervised": True},
    # The unsupervised row until 2026-12-07 (-1.0 on SciFact then): 1,000 ICT pseudo queries, 1 epoch at 2e-5.
    "unsupervised-ict": {"unsupervised": True, "pseudo_method": "ict", "epochs": 1, "pseudo_max_examples": 1000,
                         "hard_negatives": "none", "lr": 2e-5, "attention_dropout": None},
    "unsupervised+supervised": {"start_from": "unsupervised"},
}
DEFAULT_ROWS = ("zero-shot", "in-batch", "default")
DEFAULT_BASELINES = ("zero-shot", "in-batch")
RECIPE_KEYS = ("zero_shot", "start_from", "unsupervised", "chunk")
# TrainConfig fields the benchmark sets itself: the data and where the model goes.
BENCH_FIELDS = ("train", "val", "out", "train_split", "val_split")
RECIPE_EXAMPLE = """--recipe 'window:{"negative_ranks":"10:100"}'"""
_ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_recipe(name: str, recipe: Any) -> dict[str, Any]:
    """The shape of a recipe (not its TrainConfig fields: those are checked when the row runs)."""
    if not _ROW_NAME.fullmatch(name) or name == "bm25":
        raise ValueError(f"recipe name {name!r}: use letters, digits and _ . + - (not 'bm25'), e.g. {RECIPE_EXAMPLE}")
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {name}: must be a JSON object of TrainConfig overrides, got "
                         f"{type(recipe).__name__}, e.g. {RECIPE_EXAMPLE}")
    for key in ("zero_shot", "unsupervised"):
        if not isinstance(recipe.get(key, False), bool):
            raise ValueError(f"recipe {name}: {key} must be true or false, got {recipe[key]!r}")
    parent = recipe.get("start_from")
    if parent is not None and not isinstance(parent, str):
        raise ValueError(f"recipe {name}: start_from must name a row, got {parent!r}")
    if recipe.get("zero_shot") and (parent is not None or recipe.get("unsupervised")):
        raise ValueError(f"recipe {name}: a zero_shot row trains nothing: it cannot have start_from or unsupervised")
    if parent is not None and "model" in recipe:
        raise ValueError(f"recipe {name}: start_from sets the model (that row's); drop model")
    if "chunk" in recipe:
        if not isinstance(recipe["chunk"], str):
            raise ValueError(f"recipe {name}: chunk must be a spec string such as \"sentences:1\", got "
                             f"{recipe['chunk']!r}")
        try:
            ChunkSpec.parse(recipe["chunk"])
        except ValueError as e:
            raise ValueError(f"recipe {name}: {e}") from None
    owned = sorted(set(recipe) & set(BENCH_FIELDS))
    if owned:
        raise ValueError(f"recipe {name}: the benchmark sets {', '.join(owned)} itself (from --train, --val, "
                         "--out, --train-split, --val-split)")
    return recipe


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:JSON`` (``--recipe``) -> ``(name, recipe)``."""
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not name or not body.strip():
        raise ValueError(f"--recipe {text!r}: expected NAME:JSON (a JSON object of TrainConfig overrides), "
                         f"e.g. {RECIPE_EXAMPLE}")
    try:
        recipe = json.loads(body)
    except ValueError as e:
        raise ValueError(f"--recipe {name}: not valid JSON ({e}): {body!r}; keys and strings need double "
                         f"quotes, e.g. {RECIPE_EXAMPLE}") from None
    return name, check_recipe(name, recipe)


def plan_rows(rows: Sequence[str], registry: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``rows`` in the order they run: as given, except that a row runs after the row it starts from."""
    selected = list(dict.fromkeys(rows))
    unknown = [r for r in selected if r not in registry]
    if unknown or not selected:
        raise ValueError(f"--rows: {'unknown row(s) ' + ', '.join(unknown) if unknown else 'no row given'}; "
                         f"known rows: {', '.join(registry)} (add one with {RECIPE_EXAMPLE})")
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ValueError(f"--rows: start_from goes round in a circle: {' -> '.join((*chain, name))}")
        parent = registry[name].get("start_from")
        if parent is not None:
            if parent not in registry:
                raise ValueError(f"row {name} starts from {parent!r}, which is no row (known: {', '.join(registry)})")
            if parent not in selected:
                raise ValueError(f"row {name} starts from row {parent}, which is not selected: add it to --rows "
                                 f"(e.g. --rows {','.join([*selected[:selected.index(name)], parent, name])})")
            visit(parent, (*chain, name))
        order.append(name)

    for name in selected:
        visit(name, ())
    return order
