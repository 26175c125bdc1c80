"""`dpr` itself: the entry point loads no torch, FAISS or transformers until a command runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "faiss", "transformers", "onnxruntime", "fastapi", "uvicorn", "bm25s")


def _loaded(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return [m for m in done.stdout.strip().split(",") if m]


def test_import_of_the_dpr_entry_point_loads_no_torch() -> None:
    assert _loaded("import driver.main") == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["index", "--help"], ["eval", "--help"],
                                  ["serve", "--help"], ["mine", "--help"], ["bench", "--help"],
                                  ["bench", "recall", "--help"], ["bench", "reliability", "--help"],
                                  ["bench", "latency", "--help"], ["kb", "--help"], ["bench", "live", "--help"]])
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = ("import contextlib, io\nfrom driver.main import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})")
    assert _loaded(code) == []


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "driver.main", "--version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.startswith("dpr ") and done.stdout.split()[1][0].isdigit()


def test_the_installed_console_script_finds_every_package(tmp_path) -> None:
    """`dpr` as pip installed it, run outside the checkout: every package must be in the distribution
    (a package missing from pyproject's list works from the repo root and fails everywhere else)."""
    from pathlib import Path

    script = Path(sys.executable).with_name("dpr")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (the project is not pip-installed here)")
    for argv in (["--version"], ["bench", "reliability", "--help"], ["bench", "speed", "--help"],
                 ["eval", "--help"], ["serve", "--help"]):
        done = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stderr[-1500:])
