"""ONNX Runtime inference for the dual encoder: the towers exported, fused and (optionally) int8.

Why a second runtime: on a CPU, PyTorch eager spends most of a short query's time in per-module
Python and dispatch overhead (MiniLM, one 12-token query: ~13 ms in torch, ~3 ms here), and
``torch.ao`` dynamic int8 leaves attention, GELU and LayerNorm as separate unfused ops. ONNX Runtime
fuses each layer into a few kernels (Attention, BiasGelu, SkipLayerNormalization) and its dynamic
int8 quantises the fused attention's projections too. The int8 graph also computes GELU with the tanh
approximation (FastGelu): on a CPU without VNNI the int8 GEMMs leave GELU a larger share of the time,
and the approximation's error (~1e-3) is far below the int8 activations' own rounding. ``dpr bench
speed`` measures both runtimes side by side.

Each tower is exported at load time (``torch.onnx`` TorchScript exporter, eager attention so the
fusion patterns match), fused with ``onnxruntime.transformers.optimizer`` and, for int8, quantised
with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, one scale per output channel).
Nothing is cached on disk: the graph is rebuilt from the safetensors weights (a few seconds per
tower), so an artifact can never disagree with the model it claims to be.

Each graph ends with the encoder's own head (:meth:`retriever.encoder.DualEncoder.head`: pooling,
then normalisation), traced into it, and returns the embedding. So pooling is the same code in both
runtimes, and no torch op runs between two ONNX Runtime calls. That matters on a small CPU: torch's
parallel pooling ops competed with ONNX Runtime's spinning threads for the cores, costing ~11% of
the int8 encoding throughput (84.5 -> 75.5 passages/s in a probe that pooled in torch after each run).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

OPSET = 17
# Loggers of onnxruntime.transformers that report every fusion at INFO.
_CHATTY = ("fusion_base", "onnx_model", "onnx_model_bert", "fusion_utils", "fusion_options")


def _not_from_root(record: logging.LogRecord) -> bool:
    # Library code logs through named loggers; onnxruntime.quantization logs per-tensor INFO lines and
    # a generic "consider pre-processing" WARNING through the root logger itself.
    return record.name != "root" or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_onnx_tools() -> Iterator[None]:
    """Keep the export's per-node INFO lines out of the service log; errors still pass."""
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addFilter(_not_from_root)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo export, whose graph the BERT
            # fusions do not recognise yet; it still ships and is what ORT's own tooling uses.
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(_not_from_root)


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError("runtime 'onnx' needs the onnxruntime and onnx packages (pip install -e .)") from e
    return onnxruntime


Head = Callable[[Tensor, Tensor], Tensor]  # (hidden [B, L, D], attention_mask [B, L]) -> embedding [B, D]


class _ExportWrapper(nn.Module):
    """Positional inputs and one tensor output, the embedding, which is what the exporter traces."""

    def __init__(self, model: PreTrainedModel, token_types: bool, head: Head) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        extra = {"token_type_ids": token_type_ids} if self.token_types else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.head(hidden, attention_mask)


def _heads_and_width(config: Any) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    return int(heads), int(width)


def export_tower(model: PreTrainedModel, out_dir: Path, *, token_types: bool, quantize: str, head: Head) -> Path:
    """Write ``model`` followed by ``head`` as a fused ONNX graph (int8 when ``quantize == "int8"``); its path."""
    _require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    # Eager attention: the SDPA graph does not match ORT's attention fusion, eager does.
    model = copy.deepcopy(model).float().cpu().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    sample = torch.full((2, 8), 1000, dtype=torch.long)
    # One padded row: a tracer that saw an all-ones mask could bake in a "no mask needed" branch.
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    args = (sample, mask) + ((torch.zeros_like(sample),) if token_types else ())
    raw, fused = out_dir / "tower.onnx", out_dir / "tower.fused.onnx"
    with _quiet_onnx_tools(), torch.inference_mode():
        torch.onnx.export(
            _ExportWrapper(model, token_types, head), args, str(raw), input_names=names,
            output_names=["embedding"], opset_version=OPSET, dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "length"} for n in names} | {"embedding": {0: "batch"}},
        )
    heads, width = _heads_and_width(model.config)
    options = FusionOptions("bert")
    # fp32 must stay the model as trained (exact erf GELU); int8 already trades exactness for speed.
    options.enable_gelu_approximation = quantize == "int8"
    with _quiet_onnx_tools():
        opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=width, opt_level=1,
                                       optimization_options=options)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    logger.info("onnx export of %s: fused %s", model.config.model_type, stats or "nothing")
    opt.save_model_to_file(str(fused))
    if quantize == "none":
        return fused
    quantized = out_dir / "tower.int8.onnx"
    import onnx

    with _quiet_onnx_tools():
        quantize_dynamic(str(fused), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return quantized


class OrtTower(nn.Module):
    """A stand-in for a ``transformers`` encoder in inference: same call, same ``.config``.

    An ``nn.Module`` without parameters so that :class:`DualEncoder` can hold it where the torch
    tower was; it cannot be trained or saved (the encoder refuses both). Its output carries
    ``embedding`` (pooled and normalised in the graph) instead of ``last_hidden_state``.

    ``solo_session``: the same graph on more threads, used for a call made while no other call of
    this tower runs. A server's worker threads each encode on one thread, so that under load they
    never oversubscribe the cores; a lone query on an idle server is then left a core idle. Its pool
    threads sleep instead of spinning when the call ends, so a solo call that overlaps a later one
    costs that one no more than a busy core (on 2 busy cores: 8.06 ms a query against 8.03 ms on
    one thread; with spinning 11.7 ms).
    """

    def __init__(self, session: Any, config: Any, input_names: list[str], solo_session: Any = None) -> None:
        super().__init__()
        self.session = session
        self.solo_session = solo_session
        self.config = config
        self.input_names = input_names
        self._running = 0
        self._lock = threading.Lock()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> SimpleNamespace:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {}
        for name in self.input_names:
            value = given[name]
            if value is None:  # a BERT graph called without segments: all segment 0, as transformers does
                value = torch.zeros_like(input_ids)
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        with self._lock:
            solo = self.solo_session is not None and self._running == 0
            self._running += 1
        try:
            (embedding,) = (self.solo_session if solo else self.session).run(["embedding"], feed)
        finally:
            with self._lock:
                self._running -= 1
        return SimpleNamespace(embedding=torch.from_numpy(embedding))


def make_session(path: Path, threads: int | None = None, spinning: bool = True) -> Any:
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Same budget as torch: the server and indexer size their thread count with torch.set_num_threads.
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def release_freed_memory() -> None:
    """Hand the heap freed by an export back to the OS (glibc only; elsewhere a no-op).

    The export's torch copy, protobuf graphs and optimiser sessions are freed, but glibc keeps the
    pages: MiniLM's export left the process ~400 MB above what it holds (849 -> 571 MB RSS after
    ``malloc_trim``), which a server would carry for its lifetime.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def onnx_tower(model: PreTrainedModel, *, token_types: bool, quantize: str, head: Head,
               threads: int | None = None, solo_threads: int | None = None) -> OrtTower:
    """Export, fuse (and quantise) ``model`` + ``head`` and return it as an :class:`OrtTower`
    (with a ``solo_threads`` session for lone calls when that is more threads than ``threads``)."""
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="dpr-onnx-") as tmp:
        path = export_tower(model, Path(tmp), token_types=token_types, quantize=quantize, head=head)
        session = make_session(path, threads)  # reads the whole file: the directory can go
        solo = make_session(path, solo_threads, spinning=False) if solo_threads and solo_threads > threads else None
    names = [i.name for i in session.get_inputs()]
    return OrtTower(session, model.config, names, solo_session=solo)
