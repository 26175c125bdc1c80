"""Shared fixtures: a tiny random DistilBERT dual encoder (seconds on CPU) and small data files."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The server encodes queries on ONNX Runtime int8 by default; most tests serve on torch fp32, which
# starts without an export and answers with the build's own vectors. The defaults have their own tests.
os.environ.setdefault("DPR_RUNTIME", "torch")
os.environ.setdefault("DPR_QUANTIZE", "none")

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "nq_oracle"


def _vocab_dir() -> str:
    from retriever.encoder import resolve_model_path

    return resolve_model_path("minilm")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer DistilBERT checkpoint with the bert-base-uncased vocab, saved to disk."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-distilbert")
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512)
    DistilBertModel(config).save_pretrained(out, safe_serialization=True)
    DistilBertTokenizerFast.from_pretrained(_vocab_dir()).save_pretrained(out)
    return out


@pytest.fixture()
def tiny_encoder(tiny_base: Path):
    from retriever import DualEncoder, EncoderConfig

    config = EncoderConfig(base_model=str(tiny_base), pooling="mean", similarity="cos",
                           query_max_length=32, passage_max_length=64)
    return DualEncoder.from_base(config)


@pytest.fixture()
def saved_model(tmp_path: Path, tiny_encoder) -> Path:
    """The tiny random encoder saved with ``DualEncoder.save`` (what ``dpr train`` writes)."""
    path = tmp_path / "model"
    tiny_encoder.save(path)
    return path


def _sample(path: Path, n: int) -> list[dict]:
    return json.loads(path.read_text())[:n]


@pytest.fixture()
def small_nq(tmp_path: Path) -> tuple[Path, Path]:
    """24 training and 16 validation records from the bundled nq_oracle data."""
    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(_sample(DEMO_DATA / "nq-oracle-train.json", 24)))
    val.write_text(json.dumps(_sample(DEMO_DATA / "nq-oracle-val.json", 16)))
    return train, val


@pytest.fixture()
def beir_folder(tmp_path: Path) -> Path:
    """Four documents, three queries; q1 has two relevant documents (grades 2 and 1), q3 none."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [("d1", "Apples", "apple orchards harvest in autumn"), ("d2", "Rivers", "the river flows to the sea"),
            ("d3", "Stars", "stars shine at night in the sky"), ("d4", "Bread", "bakers knead dough at dawn")]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                                 for i, t, x in docs))
    queries = [("q1", "when is the apple harvest"), ("q2", "where does a river flow"), ("q3", "night sky")]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td4\t1\nq2\td2\t1\nq3\td3\t0\n")
    return folder


@pytest.fixture()
def index_without_bm25(tmp_path: Path):
    """Copy an index as one built before BM25 (and versioned builds) existed: a single directory,
    format 1, no ``bm25/``, no ``bm25`` manifest entry."""
    import shutil

    from indexer.builds import current_build

    def copy(index_dir: Path, name: str = "old") -> Path:
        old = tmp_path / name
        shutil.copytree(current_build(index_dir), old)
        shutil.rmtree(old / "bm25")
        manifest_file = old / "manifest.json"
        manifest = json.loads(manifest_file.read_text())
        del manifest["bm25"]
        del manifest["files"]["passages.sqlite"]
        manifest["format_version"] = 1
        manifest_file.chmod(0o644)
        manifest_file.write_text(json.dumps(manifest))
        return old

    return copy


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the field after "(comm)": state, then the parent's pid
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun's process group and every descendant: its ranks run in sessions of their own
    (torch elastic starts them with a new session), so a group kill alone would orphan them."""
    ranks = _descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for rank in ranks:
        try:
            os.kill(rank, signal.SIGKILL)
        except ProcessLookupError:
            pass


class TorchRun:
    """The real ``torchrun`` launching the ``dpr`` console script, as a user launches it:
    ``torchrun --nproc_per_node N $(command -v dpr) ARGV``, on loopback, one thread per rank."""

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}

    def command(self, *argv: str, procs: int = 2) -> list[str]:
        from reliability.serve_proc import free_port

        torchrun, dpr = Path(sys.executable).with_name("torchrun"), Path(sys.executable).with_name("dpr")
        for tool in (torchrun, dpr):
            if not tool.exists():
                pytest.fail(f"{tool.name} is missing beside {sys.executable} (torch ships torchrun; "
                            "`pip install -e .` the dpr script)")
        return [str(torchrun), "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), str(dpr), *argv]

    def launch(self, *argv: str, procs: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
        command = self.command(*argv, procs=procs)
        # A session of its own: on a timeout the ranks go too, not only torchrun (an orphaned rank
        # waiting in a collective would hold a core for the rest of the suite).
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env=self.env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"torchrun did not finish within {timeout} s: {' '.join(command)}\n{out[-3000:]}{err[-3000:]}")
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def kill_after_checkpoint(self, out: Path, *argv: str, min_step: int, timeout: float = 300) -> int:
        """Start a 2-rank training, SIGKILL its whole process group once ``out`` holds a resume
        checkpoint at step >= ``min_step``; returns that checkpoint's step."""
        from retriever.checkpoint import resume_dir, resume_progress

        proc = subprocess.Popen(self.command(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                                env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                progress = resume_progress(out) if resume_dir(out).exists() else None
                if progress and progress["global_step"] >= min_step:
                    _kill_tree(proc.pid)
                    proc.wait(30)
                    return int(progress["global_step"])
                if proc.poll() is not None:
                    pytest.fail(f"torchrun ended ({proc.returncode}) before a checkpoint at step {min_step}: "
                                f"{proc.stderr.read()[-3000:]}")
                time.sleep(0.02)
            pytest.fail(f"no checkpoint at step {min_step} within {timeout} s")
        finally:
            if proc.poll() is None:
                _kill_tree(proc.pid)
                proc.wait(30)


@pytest.fixture()
def torchrun() -> TorchRun:
    return TorchRun()


@contextlib.contextmanager
def serve_http(handler: type) -> Iterator[str]:
    """A stub HTTP server on a free local port, answering with ``handler`` in a thread; yields its URL."""
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
