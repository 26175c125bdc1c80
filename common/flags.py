"""Command-line flags generated from a frozen dataclass's fields (after tevatron's ``HfArgumentParser``).

A setting is written once, as a field with its default and its help text in the field's metadata
(:func:`opt`); its flag, type, choices and default shown in ``--help`` come from there. So a default
lives in exactly one place, and the CLI and the library cannot drift apart.

Field types understood: ``str``, ``int``, ``float``, ``Path``, ``bool`` (``--x/--no-x``), ``Literal[...]``
(choices), ``X | None``, and ``tuple[T, ...]`` (``action="append"`` repeats the flag; otherwise one
comma-separated value).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Union

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", *, default_factory: Callable[[], Any] | None = None,
        **meta: Any) -> Any:
    """A dataclass field with CLI metadata: ``help``, and optionally ``flag`` (its name), ``group``,
    ``metavar``, ``action="append"`` (repeat the flag for a tuple), ``cli=False`` (not a flag)."""
    metadata = {"help": help, **meta}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return kind, False


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


class _NoneGiven:
    """``--flag none`` for an optional field: given, and meaning None (a flag left out is None too)."""

    def __repr__(self) -> str:
        return "none"


NONE_GIVEN = _NoneGiven()


def _or_none(item: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return NONE_GIVEN if text.strip().lower() == "none" else item(text)
    parse.__name__ = getattr(item, "__name__", "value")   # argparse names the type in its error message
    return parse


def _comma_list(item: Callable[[str], Any], name: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated list, got {text!r}") from None
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                            exclude: Iterable[str] = (), groups: dict[str, Any] | None = None,
                            required_defaults: bool = False) -> None:
    """One flag per field of ``cls`` (skipping ``exclude`` and ``cli=False``), default ``None`` so that
    :func:`dataclass_from_args` can tell a flag given from one left at the dataclass default.

    ``groups``: argument groups by the name in a field's ``group`` metadata (created when missing).
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    groups = groups if groups is not None else {}
    skip = set(exclude)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.metadata.get("cli", True):
            continue
        target = parser
        group = field.metadata.get("group")
        if group is not None and isinstance(parser, argparse.ArgumentParser):
            if group not in groups:
                groups[group] = parser.add_argument_group(group)
            target = groups[group]
        kind, optional = _unwrap_optional(hints[field.name])
        has_default = field.default is not _MISSING or field.default_factory is not _MISSING
        default = (field.default if field.default is not _MISSING else
                   field.default_factory() if field.default_factory is not _MISSING else None)
        help_text = field.metadata.get("help", "")
        if has_default and field.metadata.get("show_default", True):
            help_text = f"{help_text} (default: {_default_text(default)})" if help_text else \
                f"default: {_default_text(default)}"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text.replace("%", "%%")}
        if "metavar" in field.metadata:
            kwargs["metavar"] = field.metadata["metavar"]
        origin = typing.get_origin(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif origin is tuple:
            item = typing.get_args(kind)[0]
            if field.metadata.get("action") == "append":
                kwargs.update(action="append", type=item)
            else:
                kwargs["type"] = _comma_list(item, flag_name(field))
        elif kind in (int, float, str, Path):
            # An optional field whose default is a value can be set back to None: `--flag none`.
            kwargs["type"] = _or_none(kind) if optional and default is not None else kind
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag for type {kind!r}")
        if not has_default and required_defaults:
            kwargs["required"] = True
        target.add_argument(flag_name(field), **kwargs)


def given_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given on the command line (not left at None)."""
    out = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is NONE_GIVEN:
            out[field.name] = None
        elif value is not None:
            out[field.name] = tuple(value) if isinstance(value, list) else value
    return out


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` from the flags given, every other field at its dataclass default."""
    return cls(**{**given_fields(args, cls), **overrides})


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: Any, env_prefix: str,
                           groups: dict[str, Any] | None = None) -> None:
    """One flag per field of a pydantic-settings class (its ``description`` as help), default ``None``
    so the environment (``<env_prefix><NAME>``) applies unless the flag is given. A field whose
    ``json_schema_extra`` says ``{"cli": false}`` (secrets: never on a command line) is env-only;
    ``{"flag": "--index"}`` renames a flag, ``{"group": ...}`` groups it."""
    groups = groups if groups is not None else {}
    for name, field in settings_cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("cli", True):
            continue
        kind, _ = _unwrap_optional(field.annotation)
        origin = typing.get_origin(kind)
        env = f"${env_prefix}{name.upper()}"
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description or ''} (default {_default_text(default)}, or {env})".strip()
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:                                  # Path and the like: a string the settings class converts
            kwargs["type"] = str
            kwargs["metavar"] = extra.get("metavar", "PATH")
        target = parser
        if extra.get("group"):
            if extra["group"] not in groups:
                groups[extra["group"]] = parser.add_argument_group(extra["group"])
            target = groups[extra["group"]]
        target.add_argument(extra.get("flag") or "--" + name.replace("_", "-"), **kwargs)
