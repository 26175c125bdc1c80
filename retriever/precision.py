"""The precision of the towers' matrix multiplies: fp32, or bf16 autocast (weights and optimiser stay fp32).

On a CPU with AMX tiles (Intel Sapphire Rapids and later) oneDNN runs bf16 matrix multiplies on the
tile unit: a 2048 x 2048 matmul measured ~2,400 GFLOP/s on 2 threads against ~330 in fp32. For the
encoder that made a MiniLM forward over 64 SciFact passages 2.7x as fast and a training step (forward
and backward, attention dropout 0) 2.2x, with passage embeddings at cosine 0.99998 to fp32. Without
AMX, bf16 is emulated or runs on narrower units and is no faster (on some CPUs much slower), so
``auto`` only picks it where the tile unit is there. On a GPU, ``auto`` stays fp32: that path has
not been measured here; ``bf16`` asks for it on any device.

Autocast wraps the towers' forward passes only (:meth:`retriever.encoder.DualEncoder.set_precision`):
pooling, normalisation and the loss run in fp32 on the fp32 copy of the last hidden states.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from common.choices import PRECISIONS, check_choice

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when this CPU has AMX bf16 tiles and the OS lets this process use them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            # torch's own check also asks the kernel for the tile state (arch_prctl).
            return bool(probe())
        except RuntimeError:
            return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return " amx_bf16" in flags and " amx_tile" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` as given, with ``auto`` made concrete for ``device``."""
    check_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_amx() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a tower's forward pass runs in: bf16 autocast on ``device``, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16 here, got {precision!r}")
    return contextlib.nullcontext()
