"""`dpr serve` as a child process on a free loopback port: started, waited for, measured, stopped.

The one way the project starts a real server for a measurement or a check: the benchmarks (latency,
throughput), the reliability checks and the tests that need uvicorn, its own process and its RSS
rather than an in-process test client. The child runs offline (no hub lookups) with the tokenizers'
own thread pool off.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dpr_command(*args: str) -> list[str]:
    """``dpr ARGS`` run with this interpreter, so it works without the console script on PATH."""
    return [sys.executable, "-m", "driver.main", *args]


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (Linux); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


# What every child `dpr` process gets: no model hub, no tokenizer threads fighting the server's.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log_path: Path
    _log: IO[bytes]
    ready: dict = field(default_factory=dict)          # the /readyz answer once it said ready

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_server(index_dir: str | Path, log_path: Path | None = None, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), wait_s: float = 300.0) -> Served:
    """Start `dpr serve` and wait for ``/readyz``; raises RuntimeError (with the log) if it exits first.

    ``log_path``: where its output goes (default: a temporary file, kept for :meth:`Served.log_text`).
    """
    port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="dpr-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log = log_path.open("wb")
    full_env = {**os.environ, **CHILD_ENV, **(env or {})}
    proc = subprocess.Popen(dpr_command("serve", "--index", str(index_dir), "--port", str(port),
                                        "--no-access-log", *extra_args),
                            stdout=log, stderr=subprocess.STDOUT, env=full_env)
    served = Served(proc, f"http://127.0.0.1:{port}", log_path, log)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            served.stop()
            raise RuntimeError(f"dpr serve exited with {proc.returncode} before it was ready:\n"
                               f"{served.log_text()[-2000:]}")
        try:
            with urllib.request.urlopen(served.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    served.ready = json.loads(r.read())
                    return served
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    served.stop()
    raise RuntimeError(f"dpr serve not ready after {wait_s}s:\n{served.log_text()[-2000:]}")


def run_to_exit(args: list[str], timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``args`` to its end; (exit code, combined output). A timeout is a failure, code -9."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **CHILD_ENV, **(env or {})})
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return -9, out + "\n[timed out]"
    return done.returncode, done.stdout + done.stderr
