"""int8 inference for the dual encoder: dynamic quantisation of every ``nn.Linear`` in both towers.

Weights are stored as int8 with one scale per output channel; activations are quantised on the fly
per batch (``torch.ao.quantization.quantize_dynamic``, fbgemm/x86 kernels). Embeddings, LayerNorm
and attention softmax stay fp32, so the change to the vectors is small (mean cosine to the fp32
embedding 0.98 on nq_oracle passages, reported by ``dpr bench speed``), and no calibration data or export step is needed.

The quantised encoder keeps the fp32 weights' fingerprint (``describe()["weights_sha256"]``) and
reports ``describe()["quantize"] == "int8"``: it is the same model computed less exactly, not
another model. An index built with int8 and served with fp32 (or the reverse) is therefore allowed:
the server logs a warning and serves (see :func:`quantization_mismatch`).
"""
from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from common.choices import QUANTIZE_MODES, check_choice
from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)



def check_mode(mode: str) -> str:
    return check_choice("quantize", mode, QUANTIZE_MODES)


def _pick_engine() -> None:
    # x86 (fbgemm + onednn) is the fastest CPU backend where present; qnnpack is the ARM fallback.
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            torch.backends.quantized.engine = name
            return
    raise RuntimeError(f"this torch build has no quantized CPU engine (has {engines}); use quantize='none'")


def _quantize_module(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not installed here.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per output channel: one scale per weight row. A per-tensor scale is set by the largest
        # weight of the matrix and cost MiniLM embeddings ~6% cosine (0.94 vs 0.98 per channel).
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=False)


def quantize_encoder(encoder: DualEncoder, mode: str = "int8") -> DualEncoder:
    """``encoder`` with its towers replaced by ``mode`` ("int8") versions, in place; "none" is a no-op;
    "bf16" keeps the towers and autocasts their matrix multiplies to bf16.

    Inference only: the quantised encoder cannot be saved (int8 also runs on the CPU only).
    """
    check_mode(mode)
    if mode == "none" or encoder.quantization == mode:
        return encoder
    if encoder.quantization != "none":
        raise ValueError(f"encoder is already quantized as {encoder.quantization}")
    if mode == "bf16":
        # The same fp32 towers, their matrix multiplies autocast to bf16 (retriever.precision): any device.
        encoder.set_precision("bf16")
        encoder.quantization = "bf16"
        logger.info("encoder computes in bf16 (autocast; weights fp32)")
        return encoder
    _pick_engine()
    encoder.replace_towers(_quantize_module, runtime="torch", quantization=mode, what="int8 dynamic quantization")
    logger.info("encoder quantized: %s dynamic (nn.Linear), engine %s", mode, torch.backends.quantized.engine)
    return encoder


def quantization_mismatch(index_quantize: str | None, serving_quantize: str) -> str | None:
    """A warning when the index was embedded with another precision than queries are; else None.

    Not an error: both are the same weights, and ``dpr bench speed`` measures the cross pairing's
    recall change (int8 queries on fp32 passages and the reverse) at a fraction of a point.
    Indexes built before this field existed were fp32.
    """
    index_quantize = index_quantize or "none"
    if index_quantize == serving_quantize:
        return None
    return (f"index passages were embedded with quantize={index_quantize!r}, queries use "
            f"quantize={serving_quantize!r}: same weights, slightly different vectors (small recall change)")
