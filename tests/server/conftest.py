"""A tiny saved model and two tiny real indexes (different passages) built with it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "nq_oracle"

ADMIN_TOKEN = "test-admin-token"


def _records(path: Path, start: int, stop: int) -> list[dict]:
    return json.loads(path.read_text())[start:stop]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retriever import DualEncoder, EncoderConfig

    config = EncoderConfig(base_model=str(tiny_base), pooling="mean", similarity="cos",
                           query_max_length=32, passage_max_length=64)
    out = tmp_path_factory.mktemp("server-model") / "model"
    DualEncoder.from_base(config).save(out)
    return out


@pytest.fixture(scope="session")
def kb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'a': 30 train questions' gold passages; 'b': 20 val questions' (no overlap: split by title)."""
    root = tmp_path_factory.mktemp("server-kb")
    out = {}
    for name, source, n in (("a", "nq-oracle-train.json", 30), ("b", "nq-oracle-val.json", 20)):
        out[name] = root / f"{name}.json"
        out[name].write_text(json.dumps(_records(DEMO_DATA / source, 0, n)))
    return out


def build(model_dir: Path, kb: Path, out: Path) -> Path:
    from indexer import build_index
    from retriever.encoder import load_encoder, model_ref

    return build_index(load_encoder(model_dir), [kb], out, model_dir=model_ref(model_dir), progress=False)


@pytest.fixture(scope="session")
def index_a(tiny_model_dir: Path, kb_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tiny_model_dir, kb_files["a"], tmp_path_factory.mktemp("server-idx") / "a")


@pytest.fixture(scope="session")
def index_b(tiny_model_dir: Path, kb_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tiny_model_dir, kb_files["b"], tmp_path_factory.mktemp("server-idx") / "b")


@pytest.fixture(scope="module")
def client(index_a: Path):
    """A running app (lifespan done) over index 'a', with an admin token."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    settings = Settings(index_dir=index_a, admin_token=ADMIN_TOKEN, max_k=50, max_batch=4,
                        max_query_chars=200, max_body_bytes=4096, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def other_model_dir(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights with CLS pooling: embeddings that do not fit indexes built with mean pooling."""
    from retriever import DualEncoder, EncoderConfig

    config = EncoderConfig(base_model=str(tiny_base), pooling="cls", similarity="cos",
                           query_max_length=32, passage_max_length=64)
    out = tmp_path_factory.mktemp("server-other-model") / "model"
    DualEncoder.from_base(config).save(out)
    return out


@pytest.fixture(scope="session")
def kb_ids(kb_files: dict[str, Path]) -> dict[str, set[str]]:
    from common.data import load_corpus

    return {name: {p.pid for p in load_corpus(path)} for name, path in kb_files.items()}


@pytest.fixture(scope="session")
def admin_token() -> str:
    return ADMIN_TOKEN


@pytest.fixture(scope="session")
def rebuild():
    """``rebuild(model_dir, kb, out)``: build an index with the indexer (atomically replacing ``out``)."""
    return build


@pytest.fixture()
def live_dir(index_a: Path, tmp_path: Path) -> Path:
    """A private copy of index 'a' (symlinks kept) that a test may rebuild in place or damage."""
    import shutil

    return Path(shutil.copytree(index_a, tmp_path / "live", symlinks=True))


@pytest.fixture()
def admin_client(live_dir: Path, admin_token: str):
    """An app serving ``live_dir`` whose requests carry the admin token."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    with TestClient(create_app(Settings(index_dir=live_dir, admin_token=admin_token, torch_threads=1))) as c:
        c.headers["Authorization"] = f"Bearer {admin_token}"
        yield c
