"""Bad input for the search API: requests generated from its own OpenAPI document (schemathesis),
plus hand-written cases a generator rarely reaches (huge bodies, broken UTF-8, unicode edge cases).

Both run in-process against the ASGI app and record every answer rather than stop at the first bad
one, so ``dpr bench reliability`` can report "bad inputs tried / 5xx seen" and the tests can show
every failing request at once. An answer is bad when it is a 5xx, or an error whose body is not
JSON ``{"error": ..., "detail": ...}``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

logger = logging.getLogger(__name__)

# Routes whose 2xx answer is not JSON by design.
NON_JSON_OK = ("/metrics", "/")


@dataclass
class FuzzResult:
    """Requests tried, and the ones whose answer broke the contract (``bad``: label, status, body head)."""

    tried: int = 0
    server_errors: int = 0
    non_json_errors: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    bad: list[tuple[str, int, str]] = field(default_factory=list)

    def record(self, label: str, status: int, content_type: str, body: bytes) -> None:
        self.tried += 1
        self.by_operation[label] = self.by_operation.get(label, 0) + 1
        problem = None
        if status >= 500:
            self.server_errors += 1
            problem = "5xx"
        if status >= 400 and not error_body_ok(content_type, body):
            self.non_json_errors += 1
            problem = problem or "error body is not JSON {error, detail}"
        if problem is not None:
            self.bad.append((f"{label} ({problem})", status, body[:300].decode("utf-8", "replace")))

    def merge(self, other: FuzzResult) -> None:
        self.tried += other.tried
        self.server_errors += other.server_errors
        self.non_json_errors += other.non_json_errors
        for label, n in other.by_operation.items():
            self.by_operation[label] = self.by_operation.get(label, 0) + n
        self.bad.extend(other.bad)

    def summary(self) -> dict[str, Any]:
        return {"tried": self.tried, "server_errors": self.server_errors, "non_json_errors": self.non_json_errors,
                "by_operation": dict(sorted(self.by_operation.items())), "bad": self.bad[:20]}


def error_body_ok(content_type: str, body: bytes) -> bool:
    if not content_type.startswith("application/json"):
        return False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and set(data) == {"error", "detail"} and isinstance(data["error"], str)


def fuzz_openapi(app: Any, *, examples: int, admin_token: str | None = None, seed: int = 0) -> FuzzResult:
    """Up to ``examples`` generated requests per operation and mode (valid and invalid per the schema).

    Requests to ``/admin/*`` and ``/documents/*`` carry ``admin_token`` when given, so generated
    bodies reach the reload and document-writing code rather than stopping at the 401. The schema is read from the app's ``/openapi.json``.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    result = FuzzResult()
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for op_result in schema.get_all_operations():
            operation = op_result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            headers = ({"Authorization": f"Bearer {admin_token}"}
                       if admin_token and operation.path.startswith(("/admin", "/documents")) else None)

            @hypothesis_seed(seed)
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(headers=headers)
                ok_raw = response.status_code < 400 and operation.path in NON_JSON_OK
                result.record(label, response.status_code,
                              "application/json" if ok_raw else response.headers.get("content-type", [""])[0],
                              response.content or b"")

            try:
                run()
            except Exception as e:   # a generation problem (not a server answer) must not hide the rest
                if "Unsatisfiable" in type(e).__name__ or "unsatisfiable" in str(e).lower():
                    logger.info("%s %s: no %s examples to generate", label, mode.value, mode.value)
                    continue
                raise
    logger.info("fuzzed %d requests: %d 5xx, %d non-JSON errors", result.tried, result.server_errors,
                result.non_json_errors)
    return result


def hand_cases(max_body_bytes: int) -> Iterator[tuple[str, str, dict[str, Any], set[int]]]:
    """``(label, path, httpx request kwargs, acceptable statuses)`` for the cases fuzzers miss."""
    json_ct = {"content-type": "application/json"}
    yield "non-UTF-8 bytes", "/search", {"content": b'{"query": "caf\xe9 \xff\xfe"}', "headers": json_ct}, {400}
    yield "lone surrogate escape", "/search", {"content": b'{"query": "a\\ud800b"}', "headers": json_ct}, {200, 400}
    yield "10 MB body", "/search", {"content": b'{"query": "' + b"x" * 10_000_000 + b'"}', "headers": json_ct}, {413}
    yield "body just over the limit", "/search", {"json": {"query": "x" * max_body_bytes}}, {413}
    yield "100k-character query", "/search/batch", {"json": {"queries": ["q" * 100_000]}}, {413, 422}
    for name, text in (("NUL", "a\x00b"), ("RTL + zero-width", "\u202e\u200bwho\u200d"),
                       ("emoji ZWJ", "👩‍👩‍👧" * 20),
                       ("combining marks", "e" + "\u0301" * 150), ("BOM", "\ufeffquery"), ("CJK", "谁唱了这首歌"),
                       ("only whitespace kinds", "\u00a0\u2003\u3000"), ("private use", "\ue000\U0010fffd")):
        yield f"unicode: {name}", "/search", {"json": {"query": text, "k": 3}}, {200, 422}
    for name, k in (("string", "5"), ("float", 2.5), ("negative", -1), ("zero", 0), ("huge", 10**30),
                    ("null", None), ("list", [5]), ("NaN-like string", "NaN")):
        yield f"k {name}", "/search", {"json": {"query": "who sang", "k": k}}, {422}
    yield "k huge literal", "/search", {"content": b'{"query": "a", "k": 1e400}', "headers": json_ct}, {400, 422}
    yield "k 2**64", "/search", {"content": b'{"query": "a", "k": 18446744073709551616}', "headers": json_ct}, \
        {400, 422}
    yield "batch of 10,000 queries", "/search/batch", {"json": {"queries": ["who sang"] * 10_000}}, {413, 422}
    yield "deeply nested JSON", "/search", {"content": b"[" * 5000 + b"]" * 5000, "headers": json_ct}, {400, 413, 422}
    yield "JSON null", "/search", {"content": b"null", "headers": json_ct}, {422}
    yield "duplicate keys", "/search", {"content": b'{"query": "a", "query": 5}', "headers": json_ct}, {422}
    yield "form-encoded body", "/search", {"content": b"query=a&k=3",
                                           "headers": {"content-type": "application/x-www-form-urlencoded"}}, {400}
    yield "passage id with traversal", "/passages/..%2F..%2Fetc%2Fpasswd", {}, {404}
    yield "passage id unicode", "/passages/%E2%80%AE%00%FF", {}, {400, 404}
    yield "reload without token", "/admin/reload", {"json": {"index_dir": "/"}}, {401, 403}


def run_hand_cases(client: Any, max_body_bytes: int) -> FuzzResult:
    """Each hand case through ``client`` (a Starlette TestClient or an httpx client); an answer
    outside its acceptable statuses counts as bad too."""
    result = FuzzResult()
    for label, path, kwargs, allowed in hand_cases(max_body_bytes):
        method = "GET" if path.startswith("/passages") else "POST"
        response = client.request(method, path, **kwargs)
        result.record(label, response.status_code, response.headers.get("content-type", ""), response.content)
        if response.status_code not in allowed:
            result.bad.append((f"{label} (status not in {sorted(allowed)})", response.status_code,
                               response.text[:300]))
    return result
