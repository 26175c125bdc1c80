"""How a loaded encoder runs inference: ``runtime`` (torch | onnx) x ``quantize`` (none | int8).

One call, :func:`prepare_encoder`, used by the indexer, the server and the benchmarks:

- ``torch`` + ``none``: the weights as trained (the default; what training and validation use).
- ``torch`` + ``int8``: ``torch.ao`` dynamic int8 of every ``nn.Linear`` (:mod:`retriever.quantize`).
- ``torch`` + ``bf16``: the fp32 towers with their matrix multiplies autocast to bf16
  (:mod:`retriever.precision`): on a CPU with AMX tiles about twice as fast as fp32 for passages.
- ``onnx`` + ``none`` / ``int8``: ONNX Runtime with fused layers, int8 by ONNX Runtime's dynamic
  quantisation (:mod:`retriever.onnx_runtime`).

All five are the same model: the fingerprint stays that of the fp32 weights, so an index built
with one is served with any other. Precision (``quantize``) is recorded in the index manifest and a
mismatch is logged; the runtime is recorded for the reader and never compared (fp32 ONNX Runtime
vectors match torch to cosine 1.000).
"""
from __future__ import annotations

import logging

from common.choices import RUNTIMES, check_choice
from retriever.encoder import DualEncoder
from retriever.quantize import check_mode, quantize_encoder

logger = logging.getLogger(__name__)



def check_runtime(runtime: str) -> str:
    return check_choice("runtime", runtime, RUNTIMES)


def prepare_encoder(encoder: DualEncoder, runtime: str = "torch", quantize: str = "none",
                    threads: int | None = None, solo_threads: int | None = None) -> DualEncoder:
    """``encoder`` switched, in place, to ``runtime`` at precision ``quantize``; returns it.

    ``threads``: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``);
    ``solo_threads``: threads of a call made while no other runs (see :class:`OrtTower`).
    """
    check_runtime(runtime)
    check_mode(quantize)
    if encoder.runtime == runtime and encoder.quantization == quantize:
        return encoder
    if encoder.runtime != "torch" or encoder.quantization != "none":
        raise ValueError(f"encoder already runs as runtime={encoder.runtime}, quantize={encoder.quantization}; "
                         "load the model again to change it")
    if runtime == "torch":
        return quantize_encoder(encoder, quantize)
    if quantize == "bf16":
        raise ValueError("quantize='bf16' runs on the torch runtime (autocast); ONNX Runtime has fp32 and int8")
    from retriever.onnx_runtime import onnx_tower, release_freed_memory

    token_types = encoder._accepts_token_types
    encoder.replace_towers(lambda tower: onnx_tower(tower, token_types=token_types, quantize=quantize,
                                                    head=encoder.head, threads=threads,
                                                    solo_threads=solo_threads),
                           runtime=runtime, quantization=quantize, what="runtime 'onnx'")
    release_freed_memory()
    logger.info("encoder runs on onnxruntime (%s)", "int8 dynamic" if quantize == "int8" else "fp32")
    return encoder


def prepare_as_built(encoder: DualEncoder, built: dict) -> DualEncoder:
    """``encoder`` computing as the index whose manifest ``model`` entry is ``built`` was embedded (its
    ``quantize`` and ``runtime``), so a passage added later gets the vector a rebuild would give it."""
    quantize = built.get("quantize") or "none"
    if quantize == "none":
        return encoder                       # fp32: torch and ONNX Runtime give the same vectors
    return prepare_encoder(encoder, built.get("runtime") or "torch", quantize)

