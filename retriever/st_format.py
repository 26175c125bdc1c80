"""Saved towers in the sentence-transformers directory format, and reading that format back.

``DualEncoder.save`` writes, beside its own files, what ``SentenceTransformer(path)`` needs to rebuild
each tower with its pooling, normalisation and maximum length (the classic layout: ``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json``, and ``2_Normalize`` for cosine models), so
``SentenceTransformer(DIR/query_encoder)`` gives the query vectors the index was searched with, and
``SentenceTransformer(DIR/passage_encoder)`` (or ``SentenceTransformer(DIR)`` when the towers are
tied) the passage vectors, with passages given as ``[title, text]`` pairs. Nothing here imports
sentence-transformers: the files are plain JSON.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
# What the tokenizer is saved as; copied into a tower directory so it loads on its own.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "added_tokens.json", "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json")


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_st_files(target: Path, *, dim: int, pooling: str, normalize: bool, max_length: int, similarity: str,
                   weights_from: Path | None = None, tokenizer_from: Path | None = None) -> None:
    """Make ``target`` a sentence-transformers directory.

    ``weights_from``: a tower directory whose ``config.json`` and weights are linked into ``target``
    (the root of a tied model); ``tokenizer_from``: where the tokenizer files are (copied in).
    """
    if weights_from is not None:
        for name in os.listdir(weights_from):
            if name == "config.json" or name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                _link_or_copy(weights_from / name, target / name)
    if tokenizer_from is not None and tokenizer_from != target:
        for name in _TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, target / name)
    modules = [{"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _NORMALIZE})
        (target / "2_Normalize").mkdir(exist_ok=True)
    _write(target / MODULES_FILE, modules)
    _write(target / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write(target / "config_sentence_transformers.json",
           {"similarity_fn_name": "cosine" if similarity == "cos" else "dot", "prompts": {},
            "default_prompt_name": None, "written_by": "dpr-service"})
    _write(target / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})


def is_st_dir(path: str | Path) -> bool:
    return (Path(path) / MODULES_FILE).is_file()


def st_encoder_settings(path: str | Path) -> dict[str, Any]:
    """The ``EncoderConfig`` fields a sentence-transformers directory implies: its pooling, cosine when
    it normalises (else dot), and its maximum length for both towers. Refuses poolings we do not have."""
    path = Path(path)
    try:
        modules = json.loads((path / MODULES_FILE).read_text(encoding="utf-8"))
        by_type = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / MODULES_FILE}: not a sentence-transformers modules list ({e})") from None
    if "Transformer" not in by_type or by_type["Transformer"].get("path", "") != "":
        raise ValueError(f"{path}: only sentence-transformers directories whose Transformer module is the "
                         "directory itself are supported")
    out: dict[str, Any] = {"similarity": "cos" if "Normalize" in by_type else "dot"}
    if "Pooling" in by_type:
        pool = json.loads((path / by_type["Pooling"]["path"] / "config.json").read_text(encoding="utf-8"))
        modes = [k for k, v in pool.items() if k.startswith("pooling_mode") and v]
        mapping = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
        if len(modes) != 1 or modes[0] not in mapping:
            raise ValueError(f"{path}: pooling {modes} is not supported (mean or cls only)")
        out["pooling"] = mapping[modes[0]]
    config = path / "sentence_bert_config.json"
    if config.is_file():
        length = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(length, int) and length >= 8:
            out["passage_max_length"] = length
            out["query_max_length"] = min(length, 64)
    return out
