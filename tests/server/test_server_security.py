"""Security defaults: loopback bind, CORS closed, admin off without a token and token compared in
constant time, limits configurable, non-root image, and no pickle anywhere in the package sources."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("retriever", "indexer", "server", "eval", "driver")

# What would let a crafted file run code on load.
UNSAFE = [
    (re.compile(r"^\s*(import pickle|from pickle|import cPickle|import dill|import joblib)", re.M), "pickle import"),
    (re.compile(r"pickle\.(loads?|dumps?)\("), "pickle call"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"weights_only\s*=\s*False"), "torch.load(weights_only=False)"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    (re.compile(r"use_safetensors\s*=\s*False"), "use_safetensors=False"),
]
TORCH_LOAD = re.compile(r"torch\.load\(([^()]|\([^()]*\))*\)", re.S)


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 40          # the scan below must actually see the packages
    return files


def test_no_pickle_in_package_sources() -> None:
    found = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(REPO)}: {what}" for pattern, what in UNSAFE if pattern.search(text)]
        found += [f"{path.relative_to(REPO)}: torch.load without weights_only=True"
                  for m in TORCH_LOAD.finditer(text) if "weights_only=True" not in m.group(0)]
    assert found == []


@pytest.mark.parametrize("snippet", ["import pickle\n", "np.load(f, allow_pickle=True)", "torch.load(path)",
                                     "torch.load(p, map_location=dict(a=1))"])
def test_the_scan_catches_what_it_looks_for(snippet: str) -> None:
    hits = [what for pattern, what in UNSAFE if pattern.search(snippet)]
    hits += [m.group(0) for m in TORCH_LOAD.finditer(snippet) if "weights_only=True" not in m.group(0)]
    assert hits


def test_safe_defaults(monkeypatch) -> None:
    for name in ("DPR_HOST", "DPR_ADMIN_TOKEN", "DPR_CORS_ORIGINS", "DPR_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.admin_token is None and s.cors_origins == []
    assert (s.max_body_bytes, s.max_query_chars, s.max_k, s.max_batch) == (65536, 1000, 100, 64)


def test_limits_and_token_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DPR_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("DPR_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("DPR_MAX_QUERY_CHARS", "50")
    monkeypatch.setenv("DPR_MAX_K", "7")
    monkeypatch.setenv("DPR_MAX_BATCH", "3")
    s = Settings()
    assert s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)           # never logged by accident
    assert (s.max_body_bytes, s.max_query_chars, s.max_k, s.max_batch) == (1000, 50, 7, 3)


def test_admin_token_and_api_keys_compared_in_constant_time(monkeypatch) -> None:
    import hmac

    from server.auth import key_matches

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    monkeypatch.setattr("server.auth.hmac.compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert key_matches(b"k1", [b"k1", b"k2", b"k3"]) and len(calls) == 3      # no early exit at the match
    assert not key_matches(b"", [b"k1"]) and not key_matches(b"k1x", [b"k1"])
    for name in ("admin.py", "auth.py"):
        source = (REPO / "server" / name).read_text(encoding="utf-8")
        assert not re.search(r"(given|token|key)\w*\s*[!=]=\s*\w*(expected|token|key)", source), name
    assert "key_matches(bearer_token(request), [expected])" in (REPO / "server" / "admin.py").read_text()


def test_docker_image_runs_as_non_root() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
