"""The one percentile every latency figure is reported with (numpy's linear interpolation), so a p50
from one benchmark can sit beside a p50 from another."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def latency_summary(values: Sequence[float], ndigits: int = 2) -> dict[str, float]:
    """``{"p50", "p95", "p99", "mean"}`` of ``values`` (milliseconds, say), rounded."""
    mean = float(np.mean(values)) if len(values) else float("nan")
    return {"p50": round(percentile(values, 50), ndigits), "p95": round(percentile(values, 95), ndigits),
            "p99": round(percentile(values, 99), ndigits), "mean": round(mean, ndigits)}
