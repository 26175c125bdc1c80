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
    # Connection limits (server/protocol.py): from connect (or a kept-alive request's first byte) to the
    # end of the headers, and from there to the end of the body; a client slower than that is sent 408
    # and dropped. Connections beyond max_connections are answered 503 and closed.
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    body_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_connections: int = Field(1024, ge=1)
    # uvicorn's 5 s default races clients that reuse an idle pooled connection as the server drops it (a
    # reset request, seen once under load in `dpr bench reliability`); kept above common pool idle times.
    keep_alive_s: int = Field(75, ge=1)
    # The asyncio event loop implementation uvicorn runs (uvloop: libuv, a dependency).
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # Searches admitted but not yet running (micro-batcher queue, or waiting for a search worker); one
    # more is answered 503 with Retry-After instead of queueing without bound.
    max_queue: int = Field(256, ge=1)
    # No token means the admin endpoints are disabled, not open.
    admin_token: SecretStr | None = None
    # Comma-separated bearer keys for /search, /search/batch and /passages (none: open). /healthz,
    # /readyz, /metrics and the page stay open; admin has its own token.
    api_keys: SecretStr | None = None
    # Per-client token bucket (client: its API key when keys are set, else its address); 0 turns it off.
    rate_limit_per_s: float = Field(0.0, ge=0.0)
    rate_limit_burst: int = Field(20, ge=1)
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

    @field_validator("admin_token", "api_keys")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # DPR_ADMIN_TOKEN= (e.g. compose's ${DPR_ADMIN_TOKEN:-}) must disable admin, not accept "".
        return value if value is not None and value.get_secret_value().strip() else None

    def api_key_list(self) -> list[bytes]:
        if self.api_keys is None:
            return []
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def resolved_search_workers(self) -> int:
        return self.search_workers or max(1, (os.cpu_count() or 1) // self.torch_threads)
