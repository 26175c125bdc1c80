"""The search service: a FastAPI app over one (encoder, index) pair, hot-swappable."""
from __future__ import annotations

from server.settings import Settings


def create_app(settings: Settings | None = None):  # noqa: ANN201 - FastAPI imported lazily
    """See :func:`server.app.create_app` (imported on call: ``import server`` stays light)."""
    from server.app import create_app as _create_app

    return _create_app(settings)


__all__ = ["Settings", "create_app"]
