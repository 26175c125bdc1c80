"""Every enumerated setting, defined once: its ``Literal`` type (for dataclasses, pydantic and the
generated CLI flags) and the tuple of its values (for checks and messages). Imports nothing heavy,
so ``dpr --help`` can build every flag from it."""
from __future__ import annotations

from typing import Any, Literal, get_args

Pooling = Literal["cls", "mean"]
Similarity = Literal["dot", "cos"]
# How a passage becomes tokens: the text pair (title, text), or the one string "title. text".
PassageFormat = Literal["pair", "joined"]
HardNegatives = Literal["none", "model", "bm25", "file"]
MiningMethod = Literal["model", "bm25"]
IndexType = Literal["flat", "hnsw", "ivfflat", "ivfpq"]
ShardDtype = Literal["float32", "float16"]
Runtime = Literal["torch", "onnx"]
# How a model computes in inference: fp32 weights as they are, int8 (dynamic), or bf16 matrix multiplies
# (torch autocast; retriever.precision).
Quantize = Literal["none", "int8", "bf16"]
# Training's matrix-multiply precision; auto: bf16 where the CPU has AMX tiles (retriever.precision).
Precision = Literal["auto", "fp32", "bf16"]
SearchMode = Literal["dense", "bm25", "hybrid"]
FusionMethod = Literal["interp", "rrf"]
EventLoop = Literal["asyncio", "uvloop"]

POOLINGS: tuple[str, ...] = get_args(Pooling)
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
PASSAGE_FORMATS: tuple[str, ...] = get_args(PassageFormat)
HARD_NEGATIVE_SOURCES: tuple[str, ...] = get_args(HardNegatives)
MINING_METHODS: tuple[str, ...] = get_args(MiningMethod)
INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
IVF_TYPES: tuple[str, ...] = ("ivfflat", "ivfpq")
DTYPES: tuple[str, ...] = get_args(ShardDtype)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
QUANTIZE_MODES: tuple[str, ...] = get_args(Quantize)
PRECISIONS: tuple[str, ...] = get_args(Precision)
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
FUSION_METHODS: tuple[str, ...] = get_args(FusionMethod)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``, else a ValueError that names ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
