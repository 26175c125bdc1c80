"""Response serialisation for a k=100 answer: FastAPI's default paths vs orjson.

    dpr bench json [--repeat 300]

Prints the time to turn one response into bytes (serialiser alone) and per request through the
ASGI app in process (routing and middleware included, no network).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from starlette.responses import Response

from server.schemas import SearchResponse


def sample_response(k: int = 100) -> dict[str, Any]:
    """A realistic answer: ~100-word passages, float scores."""
    text = " ".join(["passage"] * 100)
    hits = [{"id": f"p{i:016x}", "title": f"Title {i}", "text": f"{text} {i} é", "score": 0.9 - i * 1e-3,
             "rank": i + 1} for i in range(k)]
    return {"query": "who wrote the declaration of independence", "k": k, "results": hits, "took_ms": 12.345}


def _time(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def serialisers(payload: dict[str, Any]) -> dict[str, Callable[[], bytes]]:
    adapter = TypeAdapter(SearchResponse)
    return {
        # What JSONResponse does for a plain dict return: jsonable_encoder, then json.dumps.
        "default (jsonable_encoder + json.dumps)": lambda: json.dumps(
            jsonable_encoder(payload), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
        # What response_model=SearchResponse costs: validate into the model, then pydantic-core dumps.
        "response_model (pydantic validate + dump_json)": lambda: adapter.dump_json(adapter.validate_python(payload)),
        "orjson.dumps": lambda: orjson.dumps(payload),
    }


def app_for(payload: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    # No return annotation: an annotation would make FastAPI use it as the response model.
    @app.get("/default")
    async def default():  # noqa: ANN202
        return payload

    @app.get("/model", response_model=SearchResponse)
    async def model():  # noqa: ANN202
        return payload

    @app.get("/orjson")
    async def orjson_route() -> Response:
        return Response(orjson.dumps(payload), media_type="application/json")

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=300, help="timings per path; the median is shown")
    parser.add_argument("--k", type=int, default=100, help="hits in the response")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))


def run(args: argparse.Namespace) -> int:
    """``dpr bench json``."""
    payload = sample_response(args.k)
    outputs = {name: fn() for name, fn in serialisers(payload).items()}
    if len({json.dumps(json.loads(b), sort_keys=True) for b in outputs.values()}) != 1:
        raise SystemExit("serialisers disagree on the content")
    print(f"k={args.k} response, {len(outputs['orjson.dumps'])} bytes; median of {args.repeat}")
    print("serialiser alone:")
    for name, fn in serialisers(payload).items():
        print(f"  {name:48s} {_time(fn, args.repeat):7.3f} ms")
    print("per request through the app (TestClient, in process):")
    with TestClient(app_for(payload)) as client:
        for route in ("/default", "/model", "/orjson"):
            ms = _time(lambda route=route: client.get(route), args.repeat)
            print(f"  GET {route:44s} {ms:7.3f} ms")
    return 0


if __name__ == "__main__":
    main()
