"""Server settings: environment variables with the ``DPR_`` prefix, overridable by the CLI.

Read when :func:`server.app.create_app` runs (never at import), so a test or the CLI can pass its
own :class:`Settings` and the environment of the importing process does not leak in. Each field's
description is its help text: ``dpr serve``'s flags and the README's settings table are generated
from these fields, so a default is written here and nowhere else.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.choices import EventLoop, FusionMethod, Quantize, Runtime, SearchMode
from common.fusion import FusionConfig

_FUSION = FusionConfig()


def _group(name: str, **extra: object) -> dict[str, object]:
    return {"group": name, **extra}


class Settings(BaseSettings):
    """Everything the search server needs to start; ``DPR_INDEX_DIR`` etc. in the environment."""

    model_config = SettingsConfigDict(env_prefix="DPR_", frozen=True, extra="forbid")

    index_dir: Path | None = Field(None, description="index directory to serve (its current build)",
                                   json_schema_extra=_group("what to serve", flag="--index", metavar="DIR"))
    model_dir: str | None = Field(None, description="model to encode queries with; none: the model the index's "
                                  "manifest records", json_schema_extra=_group("what to serve", flag="--model",
                                                                             metavar="DIR"))
    # ONNX Runtime int8 by default: one query encodes in about half the time of fp32 (a short query's cost
    # is reading the weights, a quarter the size in int8), and against the fp32 passages an index holds
    # it moved nq_oracle Recall@1/5/20 by +0.2/0/+0.1 points (`dpr bench speed`, int8 section).
    runtime: Runtime = Field("onnx", description="run the query encoder on ONNX Runtime or torch (ONNX: fused layers, far "
                             "less per-call overhead than torch eager for one short query; same vectors in fp32)",
                             json_schema_extra=_group("query encoding"))
    quantize: Quantize = Field("int8", description="int8 encodes queries with dynamically quantised linear "
                               "layers (faster on CPU, same weights; fp32 passages are the measured pairing, any "
                               "other mismatch is served with a warning); none: fp32", json_schema_extra=_group("query encoding"))
    encode_cache_size: int = Field(1024, ge=0, description="query embeddings kept per loaded model (LRU); 0 turns "
                                   "the cache off", json_schema_extra=_group("query encoding"))
    # One intra-op thread per request: a short query gains little from splitting its matmuls, and when
    # the cores are busy torch's spinning thread pool turns a fast encode into a slow one (measured on
    # a loaded 2-core box: p50 39 ms with 1 thread, 285 ms with 2).
    torch_threads: int = Field(1, ge=1, description="torch and FAISS threads per search",
                               json_schema_extra=_group("query encoding"))
    solo_threads: int | None = Field(None, ge=1, description="ONNX Runtime threads of a query encoded while no "
                                     "other is (a second session of the same graph; a lone query on an idle "
                                     "server gets the idle cores); none: every core; torch_threads: off",
                                     json_schema_extra=_group("query encoding"))
    # One uvicorn worker process: the model is loaded once and all requests share one micro-batching
    # queue; the cores are used by these worker threads, not by more processes.
    search_workers: int | None = Field(None, ge=1, description="searches running at once; none: cores // "
                                       "torch_threads, so the two never oversubscribe the CPU",
                                       json_schema_extra=_group("query encoding"))
    microbatch: bool = Field(True, description="batch concurrent /search requests: queued for up to "
                             "microbatch_max_wait_ms while another batch runs, then encoded and searched together",
                             json_schema_extra=_group("micro-batching"))
    microbatch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0, description="longest a query waits for others "
                                          "to batch with", json_schema_extra=_group("micro-batching"))
    microbatch_max_size: int = Field(32, ge=1, le=1024, description="most queries per batch",
                                     json_schema_extra=_group("micro-batching"))

    default_mode: SearchMode = Field("hybrid", description="search mode of requests that name none (an index "
                                     "without BM25 always falls back to dense)", json_schema_extra=_group("search"))
    hybrid_method: FusionMethod = Field(_FUSION.method, description="fusion behind mode hybrid: score "
                                        "interpolation or reciprocal rank fusion", json_schema_extra=_group("search"))
    hybrid_alpha: float = Field(_FUSION.alpha, ge=0.0, le=1.0, description="dense weight of hybrid interpolation "
                                "(1 - alpha goes to BM25)", json_schema_extra=_group("search"))
    hybrid_rrf_k: int = Field(_FUSION.rrf_k, ge=0, description="k of reciprocal rank fusion",
                              json_schema_extra=_group("search"))
    hybrid_depth: int = Field(_FUSION.depth, ge=1, description="candidates taken from each side before fusing",
                              json_schema_extra=_group("search"))
    max_k: int = Field(100, ge=1, description="largest k a request may ask for", json_schema_extra=_group("search"))
    max_query_chars: int = Field(1000, ge=1, description="longest query, in characters",
                                 json_schema_extra=_group("search"))
    max_batch: int = Field(64, ge=1, description="most queries in one /search/batch request",
                           json_schema_extra=_group("search"))

    host: str = Field("127.0.0.1", description="bind address", json_schema_extra=_group("HTTP"))
    port: int = Field(8000, ge=0, le=65535, description="port", json_schema_extra=_group("HTTP"))
    max_body_bytes: int = Field(65536, ge=256, description="largest request body", json_schema_extra=_group("HTTP"))
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="seconds a client has to send its headers, "
                                    "from connect or a kept-alive request's first byte; slower clients get 408 and "
                                    "are dropped", json_schema_extra=_group("HTTP"))
    body_timeout_s: float = Field(10.0, gt=0, le=3600, description="seconds a client has to send its body after the "
                                  "headers, however slowly it drips", json_schema_extra=_group("HTTP"))
    max_connections: int = Field(1024, ge=1, description="open connections; one more is answered 503 and closed",
                                 json_schema_extra=_group("HTTP"))
    # uvicorn's 5 s default races clients that reuse an idle pooled connection as the server drops it (a
    # reset request, seen once under load in `dpr bench reliability`); kept above common pool idle times.
    keep_alive_s: int = Field(75, ge=1, description="seconds an idle kept-alive connection stays open",
                              json_schema_extra=_group("HTTP"))
    max_queue: int = Field(256, ge=1, description="searches admitted but not yet running; one more is answered "
                           "503 with Retry-After", json_schema_extra=_group("HTTP"))
    event_loop: EventLoop = Field("uvloop", description="asyncio event loop uvicorn runs",
                                  json_schema_extra=_group("HTTP"))
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed cross-origin browser "
                                    "access (a JSON list); none: closed", json_schema_extra={"cli": False})

    admin_token: SecretStr | None = Field(None, description="bearer token of /admin/reload, /admin/rollback and "
                                          "document writes (PUT and DELETE /documents); none: they are disabled, "
                                          "not open",
                                          json_schema_extra={"cli": False})
    api_keys: SecretStr | None = Field(None, description="comma-separated bearer keys for /search, /search/batch, "
                                       "/passages and GET /documents; none: open (/healthz, /readyz, /metrics and the page stay "
                                       "open)", json_schema_extra={"cli": False})
    rate_limit_per_s: float = Field(0.0, ge=0.0, description="per-client token bucket rate (a client is its API "
                                    "key, else its address); 0: off", json_schema_extra=_group("HTTP"))
    rate_limit_burst: int = Field(20, ge=1, description="per-client token bucket size",
                                  json_schema_extra=_group("HTTP"))

    @field_validator("admin_token", "api_keys")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # DPR_ADMIN_TOKEN= (e.g. compose's ${DPR_ADMIN_TOKEN:-}) must disable admin, not accept "".
        return value if value is not None and value.get_secret_value().strip() else None

    def api_key_list(self) -> list[bytes]:
        if self.api_keys is None:
            return []
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def engine_options(self) -> dict[str, Any]:
        """What :func:`server.engine.load_engine` takes from the settings, at start-up and on reload."""
        return {"cache_size": self.encode_cache_size, "quantize": self.quantize, "runtime": self.runtime,
                "fusion": self.fusion(), "solo_threads": self.solo_threads or os.cpu_count() or 1}

    def resolved_search_workers(self) -> int:
        return self.search_workers or max(1, (os.cpu_count() or 1) // self.torch_threads)

    def fusion(self) -> FusionConfig:
        """The hybrid mode's parameters as the one object every layer takes."""
        return FusionConfig(method=self.hybrid_method, alpha=self.hybrid_alpha, rrf_k=self.hybrid_rrf_k,
                            depth=self.hybrid_depth)
