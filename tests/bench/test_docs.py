"""The README and docs/benchmarks.md: their result tables are generated from the JSON in docs/results
and cannot drift from it; the settings table lists every server setting; the README stays short."""
from __future__ import annotations

import re

from bench.docs import DOCS, README, SERVING, main, render, settings_table


def test_generated_blocks_are_up_to_date() -> None:
    assert main(["--check"]) == 0, "run `python -m bench.docs` and commit README.md / docs/benchmarks.md"
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert render(text) == text


def test_every_result_block_names_its_command() -> None:
    text = README.read_text(encoding="utf-8")
    for name in ("recall", "speed", "reliability", "merge", "live"):
        block = re.search(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", text, re.S).group(1)
        assert "Command: `" in block or "No " in block, name


def test_settings_table_lists_every_setting() -> None:
    from server.settings import Settings

    table = settings_table()
    assert table in SERVING.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`DPR_{name.upper()}`" in table, name
    assert "`--index`" in table and "| `DPR_ADMIN_TOKEN` | `-` |" in table       # secrets: env only


def test_readme_is_for_users_and_short() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 15_000
    assert text.splitlines()[3:5] == ["make run    # set up .venv, train briefly on the bundled NQ demo data, build "
                                      "the index, serve on 127.0.0.1:8000",
                                      "make test   # set up .venv and run the test suite"]
