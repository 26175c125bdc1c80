"""`dpr serve`: serve an index over HTTP with uvicorn (settings from DPR_* env, flags win)."""
from __future__ import annotations

import argparse
import logging

from common.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    from server.settings import Settings

    add_settings_arguments(parser, Settings, "DPR_")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request")


class _DropLifespanTraceback(logging.Filter):
    """uvicorn logs the full traceback of a failed start-up; the app already logged one clear line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Traceback (most recent call last)")


def _announcing_server_class() -> type:
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        """Prints where the page and the API docs are once the server listens (its real port, also for 0)."""

        async def startup(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
            await super().startup(sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
                print(f"dpr serve: ready on http://{shown}:{port}/  (search page)   http://{shown}:{port}/docs  "
                      "(API)", flush=True)

    return AnnouncingServer


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    flags = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    settings = Settings(**flags)
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
    server = _announcing_server_class()(config)
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
