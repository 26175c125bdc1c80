"""Server settings: environment variables with the ``DPR_`` prefix, overridable by the CLI.

Read when :func:`server.app.create_app` runs (never at import), so a test or the CLI can pass its
own :class:`Settings` and the environment of the importing process does not leak in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the search server needs to start; ``DPR_INDEX_DIR`` etc. in the environment."""

    model_config = SettingsConfigDict(env_prefix="DPR_", frozen=True, extra="forbid")

    index_dir: Path | None = None
    # A saved dual-encoder dir or a base name/alias; None means the model the index manifest names.
    model_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_k: int = Field(100, ge=1)
    max_query_chars: int = Field(1000, ge=1)
    max_batch: int = Field(64, ge=1)
    max_body_bytes: int = Field(65536, ge=256)
    # No token means the admin endpoints are disabled, not open.
    admin_token: SecretStr | None = None
    # Cross-origin browser access is closed unless origins are listed (JSON list in the env var).
    cors_origins: list[str] = Field(default_factory=list)
    # Query embeddings kept per loaded model (LRU); 0 turns the cache off.
    encode_cache_size: int = Field(1024, ge=0)
    # One intra-op thread per request: a short query gains little from splitting its matmuls, and
    # when the cores are busy (other requests or processes) torch's spinning thread pool turns a
    # fast encode into a slow one (measured on a loaded 2-core box: p50 39 ms with 1 thread, 285 ms
    # with 2). Concurrency comes from search_workers instead: one request per core.
    torch_threads: int = Field(1, ge=1)
    # Searches encoding at once; None: cores // torch_threads, so the two never oversubscribe the CPU.
    # FAISS's OpenMP threads follow torch_threads (server/app.py). One uvicorn worker process: the
    # model is loaded once and all requests share one micro-batching queue; the cores are used by
    # these worker threads, not by more processes.
    search_workers: int | None = Field(None, ge=1)

    # "int8": queries are encoded by a dynamically quantised encoder (retriever/quantize.py); faster
    # on CPU, same weights. An index embedded at another precision is served with a warning.
    quantize: Literal["none", "int8"] = "none"
    # "onnx": queries are encoded by ONNX Runtime (retriever/onnx_runtime.py): fused layers, far less
    # per-call overhead than torch eager for one short query. Same vectors in fp32; exported at start-up.
    runtime: Literal["torch", "onnx"] = "torch"
    # Micro-batching (server/batcher.py): concurrent /search requests are queued for up to
    # microbatch_max_wait_ms and encoded + searched together, at most microbatch_max_size at once.
    # Default numbers: README "Speed benchmark" (`dpr bench speed`).
    microbatch: bool = True
    microbatch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    microbatch_max_size: int = Field(32, ge=1, le=1024)

    # Search mode when a request names none (an index without bm25/ always falls back to dense), and
    # the fusion behind mode "hybrid". Measured by `dpr bench recall` on nq_oracle (2026-11-25, README
    # "Recall benchmark"): hybrid R@1/R@5 92.5/99.6 vs dense 91.2/99.5 and BM25 78.9/93.6 on the 1000
    # val questions; the weight was tuned on the 500 TRAINING questions only (interp beat RRF there:
    # R@5 100.0 vs 96.4), and alpha 0.8 had the best R@5, then MRR@10.
    default_mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    hybrid_method: Literal["interp", "rrf"] = "interp"
    # Weight of the min-max-normalised dense score in "interp" (1 - alpha goes to BM25).
    hybrid_alpha: float = Field(0.8, ge=0.0, le=1.0)
    hybrid_rrf_k: int = Field(60, ge=0)
    # Candidates taken from each side before fusing.
    hybrid_depth: int = Field(100, ge=1)

    @field_validator("admin_token")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # DPR_ADMIN_TOKEN= (e.g. compose's ${DPR_ADMIN_TOKEN:-}) must disable admin, not accept "".
        return value if value is not None and value.get_secret_value().strip() else None

    def resolved_search_workers(self) -> int:
        return self.search_workers or max(1, (os.cpu_count() or 1) // self.torch_threads)
