"""`dpr bench speed --peers`: txtai and sentence-transformers beside dpr, same data, same model, one run.

Three comparisons, each measured in interleaved rounds (dpr, then the peer, then dpr again...) so a
noisy machine slows both alike, and each peer row carries its ratio to dpr's:

- **index build**, whole process: ``dpr index`` against txtai's ``Embeddings(content=True,
  backend="faiss").index`` + ``save`` (what txtai's docs show), over the same knowledge base, each
  passage as ``"title. text"`` for txtai (its usual form) and as the ``title [SEP] text`` pair for dpr;
- **HTTP search**: ``dpr serve`` against txtai's API (``CONFIG=app.yml uvicorn txtai.api:app``, as its
  docs serve it), dense, k=10: p50/p95 one query at a time, then q/s at each concurrency; dpr's query
  cache is off, txtai has none;
- **training**: ``dpr train`` (in-batch negatives only) against sentence-transformers'
  ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``: the same question/gold-passage
  pairs, batch size, epochs, learning rate and warm-up; pairs/s of the training loop alone (dpr's
  ``train_seconds``, the trainer's ``train_runtime``).

Each peer runs in its own process (``python -m bench.peers txtai-build|st-train ...``), offline.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.stats import latency_summary

logger = logging.getLogger(__name__)

PEER_MODULES = ("txtai", "sentence_transformers", "datasets", "accelerate")
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def missing_peers() -> list[str]:
    """The peer packages that are not installed (``pip install -e '.[peers]'``)."""
    import importlib.util

    return [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]


def _run(argv: Sequence[str], timeout: float = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **_OFFLINE})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({done.returncode}): {done.stderr[-1500:]}")
    return done


def _timed(argv: Sequence[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = _run(argv)
    return time.perf_counter() - start, done


def _ratio(peer: float, ours: float) -> float:
    return round(peer / ours, 2) if ours else float("nan")


# ----------------------------------------------------------------------------- the peers' own processes


def txtai_build(model: str, kb: Sequence[str], out: str) -> dict[str, Any]:
    """txtai's index build as its docs show it (run in a child process by :func:`section_peers`)."""
    from txtai import Embeddings

    from common.data import load_corpus

    passages = load_corpus(list(kb))
    embeddings = Embeddings(path=model, content=True, backend="faiss")
    embeddings.index([(p.pid, f"{p.title}. {p.text}" if p.title else p.text, None) for p in passages])
    embeddings.save(out)
    return {"passages": len(passages)}


def st_train(model: str, train: str, out: str, batch_size: int, epochs: int, lr: float,
             warmup_ratio: float) -> dict[str, Any]:
    """sentence-transformers' trainer on the question/gold-passage pairs of ``train``."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from common.data import load_examples

    examples = load_examples(train)
    pairs = {"anchor": [e.question for e in examples],
             "positive": [f"{e.positives[0].title}. {e.positives[0].text}" for e in examples]}
    st = SentenceTransformer(model, device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=out, num_train_epochs=epochs,
                                                per_device_train_batch_size=batch_size, learning_rate=lr,
                                                warmup_ratio=warmup_ratio, save_strategy="no", report_to="none",
                                                logging_steps=10_000, disable_tqdm=True, use_cpu=True)
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=Dataset.from_dict(pairs),
                                         loss=MultipleNegativesRankingLoss(st))
    result = trainer.train()
    return {"pairs": len(examples), "train_seconds": round(float(result.metrics["train_runtime"]), 3)}


# ----------------------------------------------------------------------------- HTTP


def _txtai_api(index: Path, log: Path, wait_s: float = 300) -> tuple[subprocess.Popen, str]:
    from reliability.serve_proc import free_port

    port = free_port()
    config = index.with_suffix(".yml")
    config.write_text(f"path: {json.dumps(str(index))}\nembeddings:\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "txtai.api:app", "--host", "127.0.0.1", "--port",
                             str(port)], env={**os.environ, **_OFFLINE, "CONFIG": str(config)},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"txtai API exited ({proc.returncode}); see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/search?query=ready&limit=1")
            if conn.getresponse().status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"txtai API not ready after {wait_s}s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _sequential(port: int, queries: Sequence[str], k: int, txtai: bool) -> list[float]:
    """Client-side ms per query, one at a time over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    try:
        for query in queries:
            start = time.perf_counter()
            if txtai:
                conn.request("GET", "/search?" + urllib.parse.urlencode({"query": query, "limit": k}))
            else:
                conn.request("POST", "/search", body=json.dumps({"query": query, "k": k, "mode": "dense"}),
                             headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"search {query!r}: HTTP {response.status}: {payload[:200]!r}")
            out.append(1000 * (time.perf_counter() - start))
    finally:
        conn.close()
    return out


# ----------------------------------------------------------------------------- the section


def section_peers(options: Any, work: Path, queries: Sequence[str]) -> dict[str, Any]:
    """The peers section of ``dpr bench speed``: rows for txtai and sentence-transformers with ratios."""
    from bench.serve import serving
    from reliability.loadgen import load
    from retriever.encoder import resolve_model_path

    missing = missing_peers()
    if missing:
        raise RuntimeError(f"--peers needs {', '.join(missing)}: pip install -e '.[peers]' (after torch==2.13.0)")
    work = work / "peers"
    work.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(options.model)
    rounds = options.peer_rounds
    kb_args = [a for path in options.kb for a in ("--kb", path)]
    me = [sys.executable, "-m", "bench.peers"]
    dpr = [sys.executable, "-m", "driver.main"]

    build = {"dpr_s": [], "txtai_s": []}
    for r in range(rounds):
        seconds, _ = _timed([*dpr, "index", "--model", options.model, *kb_args, "--out", str(work / f"dpr-{r}"),
                             "--no-progress"])
        build["dpr_s"].append(round(seconds, 2))
        seconds, _ = _timed([*me, "txtai-build", "--model", model_path, *kb_args, "--out", str(work / f"txtai-{r}")])
        build["txtai_s"].append(round(seconds, 2))
        logger.info("peers build round %d: dpr %.1fs, txtai %.1fs", r, build["dpr_s"][-1], build["txtai_s"][-1])
    build["ratio"] = _ratio(min(build["txtai_s"]), min(build["dpr_s"]))

    http_rows: dict[str, Any] = {}
    proc, txtai_url = _txtai_api(work / "txtai-0", work / "txtai-api.log")
    try:
        with serving(work / "dpr-0", options.serve_args) as server:
            ports = {"dpr": server["port"], "txtai": int(urllib.parse.urlsplit(txtai_url).port)}
            latencies: dict[str, list[float]] = {"dpr": [], "txtai": []}
            block = max(1, len(queries) // rounds)
            for name in ports:                                                    # warm-up
                _sequential(ports[name], queries[:5], options.k, name == "txtai")
            for r in range(rounds):
                part = queries[r * block:(r + 1) * block]
                for name, port in ports.items():
                    latencies[name] += _sequential(port, part, options.k, name == "txtai")
            http_rows["sequential"] = {name: {"n": len(v), **latency_summary(v)} for name, v in latencies.items()}
            http_rows["sequential"]["p50_ratio"] = _ratio(http_rows["sequential"]["txtai"]["p50"],
                                                          http_rows["sequential"]["dpr"]["p50"])
            qps_rows = []
            dense = [{"query": q, "k": options.k, "mode": "dense"} for q in queries]
            gets = [{"query": q, "limit": options.k} for q in queries]
            for c in options.concurrency:
                qps: dict[str, list[float]] = {"dpr": [], "txtai": []}
                failed = {"dpr": 0, "txtai": 0}
                for _ in range(rounds):
                    for name in ("dpr", "txtai"):
                        url = server["url"] if name == "dpr" else txtai_url
                        result = load(url, dense if name == "dpr" else gets, c,
                                      duration_s=options.duration_s / rounds, method="POST" if name == "dpr" else "GET")
                        qps[name].append(result.qps)
                        failed[name] += result.failed
                row = {"concurrency": c, "dpr_qps": round(sum(qps["dpr"]) / rounds, 1),
                       "txtai_qps": round(sum(qps["txtai"]) / rounds, 1), "failed": failed}
                row["ratio"] = _ratio(row["dpr_qps"], row["txtai_qps"])
                qps_rows.append(row)
                logger.info("peers q/s at %d: %s", c, row)
            http_rows["throughput"] = qps_rows
    finally:
        _stop(proc)

    train = {"dpr_s": [], "st_s": []}
    val = work / "val-small.json"
    records = json.loads(Path(options.val).read_text(encoding="utf-8"))[:20]
    val.write_text(json.dumps(records), encoding="utf-8")
    hp = {"batch_size": options.peer_batch_size, "epochs": 1, "lr": 2e-5, "warmup_ratio": 0.1}
    pairs = None
    for r in range(rounds):
        out = work / f"dpr-train-{r}"
        _run([*dpr, "train", "--model", options.model, "--train", options.train, "--val", str(val), "--out",
              str(out), "--epochs", "1", "--batch-size", str(hp["batch_size"]), "--lr", str(hp["lr"]),
              # The same loss as MultipleNegativesRankingLoss, which caches no gradients either.
              "--warmup-ratio", str(hp["warmup_ratio"]), "--hard-negatives", "none", "--grad-cache-chunk", "0",
              # The same arithmetic as the peer's defaults: fp32 and the checkpoint's attention dropout
              # (dpr's own defaults, bf16 on an AMX CPU and no attention dropout, would be the faster row).
              "--precision", "fp32", "--attention-dropout", "none", "--no-progress"])
        log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
        train["dpr_s"].append(round(sum(e.get("train_seconds", 0.0) for e in log["epochs"]), 2))
        done = _run([*me, "st-train", "--model", model_path, "--train", options.train, "--out",
                     str(work / f"st-train-{r}"), "--batch-size", str(hp["batch_size"]), "--lr", str(hp["lr"])])
        st = json.loads(done.stdout.strip().splitlines()[-1])
        train["st_s"].append(st["train_seconds"])
        pairs = st["pairs"]
        logger.info("peers train round %d: dpr %.1fs, sentence-transformers %.1fs", r, train["dpr_s"][-1],
                    train["st_s"][-1])
    train.update(pairs=pairs, **hp, dpr_pairs_per_s=round(pairs / min(train["dpr_s"]), 1),
                 st_pairs_per_s=round(pairs / min(train["st_s"]), 1),
                 ratio=_ratio(min(train["st_s"]), min(train["dpr_s"])))
    versions = {}
    for module in ("txtai", "sentence_transformers"):
        from importlib import metadata

        versions[module] = metadata.version(module.replace("_", "-"))
    return {"rounds": rounds, "versions": versions, "build": build, "http": http_rows, "train": train,
            "note": "ratio: the peer's time over dpr's (build, p50, training), or dpr's q/s over the peer's"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description="a peer's side of dpr bench speed")
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("txtai-build")
    b.add_argument("--model", required=True)
    b.add_argument("--kb", action="append", required=True)
    b.add_argument("--out", required=True)
    t = sub.add_parser("st-train")
    t.add_argument("--model", required=True)
    t.add_argument("--train", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.what == "txtai-build":
        result = txtai_build(args.model, args.kb, args.out)
    else:
        result = st_train(args.model, args.train, args.out, args.batch_size, args.epochs, args.lr, args.warmup_ratio)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
