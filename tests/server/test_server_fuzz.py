"""The API fuzzed from its own OpenAPI document (schemathesis, valid and invalid requests): no
generated request gets a 5xx, and every error is a JSON body ``{"error", "detail"}``.

Bounded (``DPR_FUZZ_EXAMPLES`` per operation and mode) so the file stays fast; `dpr bench
reliability` runs the same fuzzer with many more examples.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from reliability.fuzz import FuzzResult, fuzz_openapi
from server.app import create_app
from server.settings import Settings

FUZZ_EXAMPLES = int(os.environ.get("DPR_FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def fuzzed(index_a: Path, admin_token: str, tmp_path_factory: pytest.TempPathFactory) -> FuzzResult:
    import shutil

    # Generated PUT and DELETE /documents requests change the knowledge base: fuzz a copy.
    index = Path(shutil.copytree(index_a, tmp_path_factory.mktemp("fuzz") / "index", symlinks=True))
    # Small limits, so generated bodies also reach the limit checks, not only the happy path.
    app = create_app(Settings(index_dir=index, admin_token=admin_token, max_k=50, max_batch=4,
                              max_query_chars=200, max_body_bytes=4096, torch_threads=1))
    try:
        return fuzz_openapi(app, examples=FUZZ_EXAMPLES, admin_token=admin_token)
    finally:
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()     # schemathesis started the app's lifespan; close the index it opened


def test_generated_requests_never_get_a_5xx(fuzzed: FuzzResult) -> None:
    assert fuzzed.server_errors == 0, fuzzed.bad


def test_every_generated_error_is_json(fuzzed: FuzzResult) -> None:
    assert fuzzed.non_json_errors == 0, fuzzed.bad


def test_every_route_was_fuzzed(fuzzed: FuzzResult) -> None:
    """Guards the two tests above against passing vacuously (a route lost from the schema, or
    the generator producing nothing for it)."""
    ops = fuzzed.by_operation
    for label in ("POST /search", "POST /search/batch", "GET /passages/{pid}", "POST /admin/reload",
                  "GET /healthz", "GET /readyz", "PUT /documents/{doc_id}", "DELETE /documents/{doc_id}",
                  "GET /documents/{doc_id}"):
        assert ops.get(label, 0) >= 1, ops
    assert ops["POST /search"] >= FUZZ_EXAMPLES


def test_fuzz_result_flags_5xx_and_non_json_errors() -> None:
    """The recorder itself: a 5xx and an HTML error page are both caught, a JSON 4xx is not."""
    result = FuzzResult()
    result.record("POST /x", 422, "application/json", b'{"error": "bad k", "detail": null}')
    result.record("POST /x", 500, "application/json", b'{"error": "boom", "detail": null}')
    result.record("POST /x", 400, "text/html", b"<h1>Bad Request</h1>")
    result.record("POST /x", 404, "application/json", b'{"detail": "Not Found"}')
    assert (result.tried, result.server_errors, result.non_json_errors) == (4, 1, 2)
    assert len(result.bad) == 3
