"""`dpr serve`: serve an index over HTTP with uvicorn (settings from DPR_* env, flags win)."""
from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", metavar="DIR", help="index directory (default: $DPR_INDEX_DIR)")
    parser.add_argument("--model", metavar="DIR",
                        help="model to encode queries with (default: the one the index manifest records)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1, or $DPR_HOST)")
    parser.add_argument("--port", type=int, help="port (default 8000, or $DPR_PORT)")
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op torch threads per request (default 1, or $DPR_TORCH_THREADS)")
    parser.add_argument("--default-mode", choices=("dense", "bm25", "hybrid"),
                        help="search mode of requests that name none (default hybrid, or $DPR_DEFAULT_MODE)")
    parser.add_argument("--hybrid-alpha", type=float,
                        help="dense weight of hybrid score interpolation (default 0.8, or $DPR_HYBRID_ALPHA)")
    parser.add_argument("--quantize", choices=("none", "int8"),
                        help="encode queries with an int8 dynamically quantised encoder (default none, or $DPR_QUANTIZE)")
    parser.add_argument("--runtime", choices=("torch", "onnx"),
                        help="run the query encoder on torch or ONNX Runtime (default torch, or $DPR_RUNTIME)")
    parser.add_argument("--microbatch", action=argparse.BooleanOptionalAction, default=None,
                        help="batch concurrent /search requests (default on, or $DPR_MICROBATCH)")
    parser.add_argument("--microbatch-max-wait-ms", type=float,
                        help="longest a query waits for others to batch with (default 2, or $DPR_MICROBATCH_MAX_WAIT_MS)")
    parser.add_argument("--microbatch-max-size", type=int,
                        help="most queries per batch (default 32, or $DPR_MICROBATCH_MAX_SIZE)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request")


class _DropLifespanTraceback(logging.Filter):
    """uvicorn logs the full traceback of a failed start-up; the app already logged one clear line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Traceback (most recent call last)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    flags = {"index_dir": args.index, "model_dir": args.model, "host": args.host, "port": args.port,
             "torch_threads": args.torch_threads, "default_mode": args.default_mode,
             "hybrid_alpha": args.hybrid_alpha, "quantize": args.quantize, "runtime": args.runtime, "microbatch": args.microbatch,
             "microbatch_max_wait_ms": args.microbatch_max_wait_ms, "microbatch_max_size": args.microbatch_max_size}
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    if settings.index_dir is None:
        raise ValueError("no index to serve: pass --index DIR or set DPR_INDEX_DIR")
    if not settings.index_dir.is_dir():
        raise FileNotFoundError(f"{settings.index_dir}: no such index directory")
    from server.protocol import guarded_protocol

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_config=None,
                            access_log=not args.no_access_log, timeout_graceful_shutdown=10,
                            timeout_keep_alive=settings.keep_alive_s, loop=settings.event_loop,
                            http=guarded_protocol(settings.header_timeout_s, settings.body_timeout_s,
                                                  settings.max_connections, on_reject=app.state.metrics.reject))
    server = uvicorn.Server(config)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not args.verbose and not any(isinstance(f, _DropLifespanTraceback) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_DropLifespanTraceback())
    try:
        server.run()
    except SystemExit:
        # uvicorn exits with status 3 when the lifespan fails; report why instead.
        if app.state.startup_error is not None:
            raise RuntimeError(f"start-up failed: {app.state.startup_error}") from app.state.startup_error
        raise RuntimeError(f"could not serve on {settings.host}:{settings.port} (see the log above)") from None
    if not server.started:
        raise RuntimeError(f"start-up failed: {app.state.startup_error or 'see the log above'}")
    return 0
