"""CLI flags generated from a dataclass: a flag left out keeps the field's default, `none` sets None."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from common.flags import add_dataclass_arguments, dataclass_from_args, given_fields, opt


@dataclass(frozen=True)
class _Options:
    rate: float | None = opt(0.0, "a rate, or none for the model's own")
    cap: int | None = opt(None, "a cap, none: no cap")
    name: str = opt("x", "a name")


def _parse(*argv: str) -> _Options:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, _Options)
    return dataclass_from_args(_Options, parser.parse_args(list(argv)))


def test_optional_field_with_a_value_default_can_be_set_to_none() -> None:
    assert _parse() == _Options(rate=0.0, cap=None, name="x")
    assert _parse("--rate", "none").rate is None
    assert _parse("--rate", "None").rate is None
    assert _parse("--rate", "0.25").rate == 0.25
    assert _parse("--cap", "7").cap == 7
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, _Options)
    assert given_fields(parser.parse_args(["--rate", "none"]), _Options) == {"rate": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate", "fast"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--name-of", "y"])
