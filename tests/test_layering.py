"""The layering the layout promises, checked on the sources: ``common`` is a leaf, the product
packages never import the evaluation, benchmark or reliability code, and library code never imports
the command line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "retriever", "indexer", "server", "eval", "bench", "reliability", "driver")
FORBIDDEN = {
    "common": set(PACKAGES) - {"common"},
    "retriever": {"eval", "bench", "reliability", "server", "driver"},
    "indexer": {"eval", "bench", "reliability", "server", "driver"},
    "server": {"eval", "bench", "reliability", "driver"},
    "eval": {"bench", "reliability", "driver"},
    "bench": {"driver"},
    "reliability": {"driver"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_is_below_it(package: str) -> None:
    wrong = {f"{p.relative_to(REPO)} imports {sorted(_imports(p) & FORBIDDEN[package])}"
             for p in (REPO / package).rglob("*.py") if _imports(p) & FORBIDDEN[package]}
    assert not wrong, wrong


def test_no_benchmark_code_ships_in_the_server() -> None:
    assert not [p.name for p in (REPO / "server").glob("bench*.py")]
