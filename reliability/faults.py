"""Injected faults, each on the real command in a child process: kill -9 of `dpr index` mid-build,
kill -9 of `dpr train` mid-epoch then `--resume`, and `dpr serve` on a corrupted index.

Each check returns a dict with ``crashes`` (faults injected), ``data_lost`` (0 or 1) and ``ok``, plus
what it saw, for `dpr bench reliability` to print.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from reliability.serve_proc import dpr_command, free_port, run_to_exit

logger = logging.getLogger(__name__)

# tqdm's bar once at least one batch is done, e.g. "encode passages:  3%|▎  | 64/2471".
EMBEDDING_STARTED = re.compile(r"encode passages:\s+\d+%\|[^|]*\|\s*[1-9]\d*/\d+")
# The resumable indexer's log once a chunk of embeddings is on disk, e.g. "chunk 1/4 written".
CHUNK_WRITTEN = re.compile(r"chunk [1-9]\d*/\d+ written")


def dir_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def served_digests(index_dir: Path) -> dict[str, str]:
    """What ``index_dir`` serves: the files of its current build, and which build that is."""
    from indexer.builds import build_name, current_build

    build = current_build(index_dir)
    return {"<build>": build_name(build, index_dir), **dir_digests(build)}


class _Tail:
    """Collects a child's output on a thread (tqdm redraws with \\r, so lines are not enough)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            self.text += chunk.decode("utf-8", "replace")

    def join(self) -> None:
        self._thread.join(timeout=5)


def kill_indexer_mid_build(served: Path, model: str, kb: list[str], *, extra_args: tuple[str, ...] = (),
                           kill_on: re.Pattern[str] = EMBEDDING_STARTED, timeout_s: float = 900.0) -> dict[str, Any]:
    """Rebuild the index at ``served`` with ``kb`` (which must need new embeddings), SIGKILL the build
    once ``kill_on`` shows in its output (embedding started, or a chunk written), then check that
    ``served`` is byte-for-byte unchanged and still opens, and that a second build completes (and
    how much of the killed build's work it resumed)."""
    from indexer import SearchIndex

    before = served_digests(served)
    siblings_before = set(served.parent.iterdir())
    args = dpr_command("index", "--model", model, *[a for p in kb for a in ("--kb", p)], "--out", str(served),
                       *extra_args)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    tail = _Tail(proc)
    deadline = time.monotonic() + timeout_s
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if kill_on.search(tail.text):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    if not killed and proc.poll() is None:
        proc.kill()
    proc.wait()
    tail.join()
    progress_at_kill = (EMBEDDING_STARTED.findall(tail.text)[-1:] + CHUNK_WRITTEN.findall(tail.text)[-1:]
                        if killed else [])
    unchanged = served_digests(served) == before
    try:
        with SearchIndex.open(served) as index:
            still_loads, count = True, len(index)
    except ValueError as e:
        still_loads, count = False, str(e)
    left_behind = sorted(str(p.name) for p in set(served.parent.iterdir()) - siblings_before)
    t0 = time.perf_counter()
    code, out = run_to_exit(args + ["--no-progress"], timeout_s)
    rerun_s = round(time.perf_counter() - t0, 1)
    summary = re.findall(r"indexed \d+ passages into .*", out)
    resumed = [int(n) for n in re.findall(r"(\d+) resumed from chunks", out)]
    return {"crashes": int(killed), "data_lost": int(killed and not (unchanged and still_loads)),
            "ok": killed and unchanged and still_loads and code == 0,
            "killed_at": progress_at_kill, "served_unchanged": unchanged, "served_still_loads": still_loads,
            "served_count": count, "left_beside_served_after_kill": left_behind, "rerun_exit": code,
            "rerun_seconds": rerun_s, "rerun_summary": summary[-1:] or [out[-800:]],
            "rerun_resumed_from_chunks": resumed[-1] if resumed else None}


def make_tiny_base(out: Path) -> Path:
    """A random 2-layer DistilBERT with MiniLM's vocabulary: trains in seconds on a CPU."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    from retriever.encoder import resolve_model_path

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512)
    DistilBertModel(config).save_pretrained(out, safe_serialization=True)
    DistilBertTokenizerFast.from_pretrained(resolve_model_path("minilm")).save_pretrained(out)
    return out


def _epoch_rows(out: Path) -> list[dict[str, Any]]:
    from retriever.train_config import TRAIN_LOG_FILE

    return json.loads((out / TRAIN_LOG_FILE).read_text())["epochs"]


def kill_trainer_mid_epoch(work: Path, train: Path, val: Path, *, epochs: int = 2, batch_size: int = 8,
                           checkpoint_every: int = 2, timeout_s: float = 600.0) -> dict[str, Any]:
    """Train a tiny model twice: once straight through, once SIGKILLed mid-epoch after its first
    checkpoint and continued with ``dpr train --resume``; compare the two runs' per-epoch metrics."""
    from retriever.checkpoint import resume_progress

    base = make_tiny_base(work / "tiny-base")
    common = ["--train", str(train), "--val", str(val), "--model", str(base), "--pooling", "mean",
              "--epochs", str(epochs), "--batch-size", str(batch_size), "--hard-negatives", "none",
              "--checkpoint-every", str(checkpoint_every), "--seed", "0", "--no-progress"]
    ref, victim = work / "straight", work / "killed"
    code, out = run_to_exit(dpr_command("train", *common, "--out", str(ref)), timeout_s)
    if code != 0:
        return {"crashes": 0, "data_lost": 0, "ok": False, "error": f"reference run failed: {out[-1500:]}"}
    proc = subprocess.Popen(dpr_command("train", *common, "--out", str(victim)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    at: dict[str, int] | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        progress = resume_progress(victim)
        if progress and progress["batch_index"] > 0:       # inside an epoch, not at its boundary
            proc.send_signal(signal.SIGKILL)
            at = progress
            break
        time.sleep(0.01)
    proc.wait()
    if at is None:
        return {"crashes": 0, "data_lost": 0, "ok": False,
                "error": f"the run ended (exit {proc.returncode}) before a mid-epoch checkpoint could be killed"}
    code, out = run_to_exit(dpr_command("train", "--resume", str(victim), "--no-progress"), timeout_s)
    if code != 0:
        return {"crashes": 1, "data_lost": 1, "ok": False, "killed_at": at, "error": f"resume failed: {out[-1500:]}"}
    straight, resumed = _epoch_rows(ref), _epoch_rows(victim)
    diffs = {f"epoch{row['epoch']}:{name}": abs(value - other["metrics"][name])
             for row, other in zip(straight, resumed, strict=True) for name, value in row["metrics"].items()}
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(straight[1:], resumed[1:], strict=True))
    max_metric_diff = max(diffs.values())
    # Within noise: the tiny val set moves a metric in steps of 1/len(val); allow one such step.
    n_val = len(json.loads(val.read_text()))
    same = len(straight) == len(resumed) and max_metric_diff <= 1.0 / n_val + 1e-9
    return {"crashes": 1, "data_lost": int(not same), "ok": same, "killed_at": at,
            "epochs": len(resumed), "max_metric_diff": round(max_metric_diff, 6), "max_loss_diff": round(loss_diff, 6),
            "final_metrics_straight": straight[-1]["metrics"], "final_metrics_resumed": resumed[-1]["metrics"]}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.chmod(0o644)                      # published builds are read-only
    path.write_bytes(data[: len(data) // 2])


def _scribble(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[: min(len(data), 100)] = b"\x00garbage" * 12 + b"\x00" * 4
    path.write_bytes(bytes(data[: len(data)]))


def corrupt_and_serve(index_dir: Path, work: Path, *, timeout_s: float = 180.0) -> dict[str, Any]:
    """`dpr serve` on copies of ``index_dir`` with one file damaged each: it must exit non-zero,
    naming that file, and never serve."""
    from indexer.builds import current_build
    from indexer.manifest import EMBEDDINGS_FILE, FAISS_FILE, MANIFEST_FILE, STORE_FILE

    cases = [(FAISS_FILE, _truncate), (FAISS_FILE, _scribble), (STORE_FILE, _scribble), (STORE_FILE, _truncate),
             (MANIFEST_FILE, _truncate), (EMBEDDINGS_FILE, _truncate)]
    results = []
    for name, damage in cases:
        copy = work / f"corrupt-{name}-{damage.__name__.strip('_')}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(index_dir, copy, symlinks=True)
        damage(current_build(copy) / name)
        code, out = run_to_exit(dpr_command("serve", "--index", str(copy), "--port", str(free_port())), timeout_s)
        message = next((line for line in out.splitlines() if "dpr serve: error" in line), out[-300:])
        refused = code not in (0, -9) and name in out
        results.append({"file": name, "damage": damage.__name__.strip("_"), "exit": code, "refused": refused,
                        "message": message[-300:]})
    return {"crashes": len(cases), "data_lost": 0, "served_corrupt": sum(not r["refused"] for r in results),
            "ok": all(r["refused"] for r in results), "cases": results}
