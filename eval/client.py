"""Evaluating a running search server through its HTTP API (``POST /search/batch``), stdlib only.

The server answers ``{"queries": [...], "k": K}`` with one ``{"results": [{"id", "title", "text",
"score", "rank"}, ...]}`` object per query, in order; batches are capped (64 by default) server-side.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from eval.retrieve import Retrieval

logger = logging.getLogger(__name__)

MAX_BATCH = 64


def check_url(url: str) -> str:
    """The base URL without a trailing slash; refuses anything but http(s)://host[:port][/path]."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--url must look like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def _request(url: str, payload: dict[str, Any] | None, timeout: float) -> Any:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise RuntimeError(f"{url}: HTTP {e.code}: {str(detail)[:300]}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise RuntimeError(f"{url}: cannot reach the search server ({reason})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise RuntimeError(f"{url}: the response is not JSON: {body[:200]!r}") from None


def server_info(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """What the server says it serves (``GET /readyz``), or the error, for the report."""
    try:
        info = _request(f"{check_url(url)}/readyz", None, timeout)
    except RuntimeError as e:
        return {"url": url, "error": str(e)}
    return {"url": url, **(info if isinstance(info, dict) else {"readyz": info})}


def _hits(answer: Any, where: str) -> list[dict[str, Any]]:
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or not all(isinstance(h, dict) and "id" in h for h in results):
        raise RuntimeError(f"{where}: expected an object with 'results': a list of hits with 'id'")
    return results


def retrieve_with_server(url: str, queries: Mapping[str, str], k: int, batch_size: int = MAX_BATCH,
                         timeout: float = 120.0, progress: bool = True, mode: str | None = None,
                         flt: dict[str, Any] | None = None) -> Retrieval:
    """Top-k hits for every query from the server at ``url``, in batches of at most ``batch_size``.

    ``mode`` (``dense``, ``bm25``, ``hybrid``) is sent with each request; None leaves the server's default.
    ``flt``: a metadata filter sent with each request.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be in 1..{MAX_BATCH}, got {batch_size}")
    endpoint = f"{check_url(url)}/search/batch"
    qids, texts = list(queries), list(queries.values())
    out = Retrieval()
    start = time.perf_counter()
    with tqdm(total=len(qids), desc="search (server)", unit="query", disable=not progress) as bar:
        for lo in range(0, len(qids), batch_size):
            chunk = texts[lo:lo + batch_size]
            payload: dict[str, Any] = {"queries": chunk, "k": k}
            if mode is not None:
                payload["mode"] = mode
            if flt:
                payload["filter"] = flt
            answer = _request(endpoint, payload, timeout)
            if not isinstance(answer, list) or len(answer) != len(chunk):
                got = f"a list of {len(answer)}" if isinstance(answer, list) else type(answer).__name__
                raise RuntimeError(f"{endpoint}: expected a list of {len(chunk)} results, got {got}")
            for i, item in enumerate(answer):
                qid = qids[lo + i]
                hits = _hits(item, f"{endpoint}: result {lo + i}")
                out.run[qid] = [str(h["id"]) for h in hits]
                out.scores[qid] = [float(h.get("score", 0.0)) for h in hits]
                if all("text" in h for h in hits):
                    out.texts[qid] = [str(h["text"]) for h in hits]
            bar.update(len(chunk))
    out.seconds = time.perf_counter() - start
    out.timings = {"queries_per_s": round(len(qids) / max(out.seconds, 1e-9), 1)}
    return out
