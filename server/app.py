"""The FastAPI application factory. Nothing heavy happens at import: settings are read when
:func:`create_app` runs, and the encoder and index load in the app's lifespan."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server import admin, documents, openai_api, routes
from server.auth import RateLimiter
from server.batcher import MicroBatcher
from server.engine import EngineHolder, load_engine
from server.errors import install_error_handlers
from server.limits import AdmissionGate, BodyLimitMiddleware
from server.metrics import Metrics, MetricsMiddleware
from server.settings import Settings

logger = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "index.html"


def configure_torch(threads: int) -> None:
    """Intra-op threads for encoding; one inter-op thread, as a BERT forward has no parallel branches.

    FAISS's OpenMP pool gets the same count: requests (or micro-batches) already run ``search_workers``
    at a time, one per core, and a second layer of threads per search would only oversubscribe.
    """
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by earlier torch work in this process (tests); harmless
    logger.info("torch and FAISS: %d intra-op thread(s) per search", threads)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.startup_error = None
    try:
        if settings.index_dir is None:
            raise ValueError("no index to serve: pass --index DIR or set DPR_INDEX_DIR")
        configure_torch(settings.torch_threads)
        engine = await anyio.to_thread.run_sync(
            lambda: load_engine(settings.index_dir, settings.model_dir, **settings.engine_options()))
    except Exception as e:
        # Kept for `dpr serve`, which turns it into one clear line and a non-zero exit.
        app.state.startup_error = e
        logger.error("start-up failed: %s", e)
        raise
    app.state.holder.swap(engine)
    app.state.metrics.index_size.set(len(engine))
    if settings.microbatch:
        # Created here, not in create_app: its queue and collector task belong to the serving event loop.
        app.state.batcher = MicroBatcher(settings, workers=settings.resolved_search_workers(),
                                         limiter=app.state.search_limiter)
        app.state.batcher.start()
    try:
        yield
    finally:
        if app.state.batcher is not None:
            await app.state.batcher.stop()
            app.state.batcher = None
        app.state.holder.swap(None)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own settings, engine holder and metrics registry."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(title="dpr search", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.holder = EngineHolder()
    app.state.metrics = Metrics()
    app.state.page_html = PAGE.read_text(encoding="utf-8")
    app.state.search_limiter = anyio.CapacityLimiter(settings.resolved_search_workers())
    app.state.gate = AdmissionGate(app.state.search_limiter, settings.max_queue)
    app.state.api_keys = settings.api_key_list()
    app.state.rate_limiter = (RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
                              if settings.rate_limit_per_s > 0 else None)
    app.state.startup_error = None
    app.state.batcher = None
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    app.include_router(documents.router)
    app.include_router(openai_api.router)
    # add_middleware wraps what is already there: the last added runs first. Metrics outermost so
    # it counts requests the body limit (and its framing check) rejects.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
