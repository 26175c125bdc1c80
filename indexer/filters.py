"""Metadata filters over passages, evaluated as numpy boolean masks.

A passage may carry ``metadata``: a flat object of scalar fields (``str``, ``int``/``float``, ``bool``;
``bool`` is its own type, never a number). A request's ``filter`` is parsed against the index's schema
(:func:`parse_filter`) into a :class:`Filter`, the AND of :class:`Condition` objects, and evaluated either
over a columnar copy of the metadata (:class:`MetadataColumns`, vectorised) or one row at a time
(:func:`matches`, for tiny live segments and as the reference the columns are tested against).

Semantics shared by both evaluators:

* a row lacking a field (or with no metadata at all) fails every condition on that field except ``ne``
  and ``nin``: missing is not equal to anything;
* numbers compare as float64 (that is how the columns store them), ints and floats alike;
* strings compare by code point, so ranges over ISO dates (``"2019-05-01"``) work;
* a stored NaN reads as missing (NaN is the column's missing marker).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Scalar = str | int | float | bool
Metadata = dict[str, Scalar]

FIELD_TYPES = ("string", "number", "bool")
OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte")
SET_OPERATORS = ("in", "nin")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
MAX_FILTER_FIELDS = 16
MAX_IN_VALUES = 1024
# The unknown-field message lists the known names so a client can fix its request, but a schema of
# hundreds of fields must not turn a 422 body into a dump of the index.
MAX_LISTED_FIELDS = 20
# Integral floats up to 2**53 are exact, so a canonical filter can spell them as JSON integers.
_EXACT_INT = 2 ** 53
# Below this an int always converts to float64; only above it can float() overflow.
_HUGE_INT = 2 ** 1023


def value_type(value: object) -> str:
    """The field type of a scalar: ``"bool"``, ``"number"`` or ``"string"``; ``TypeError`` otherwise."""
    # bool first: it is a subclass of int but a type of its own here.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    raise TypeError(f"not a string, number or bool: {type(value).__name__}")


# Exact types first: appends and row-by-row matching call this per value, and the isinstance chain of
# value_type is most of their cost.
_EXACT_KINDS: dict[type, str] = {str: "string", int: "number", float: "number", bool: "bool"}


def _kind(value: object) -> str | None:
    kind = _EXACT_KINDS.get(type(value))
    if kind is not None:
        return kind
    try:
        return value_type(value)
    except TypeError:
        return None


def infer_schema(metadatas: Iterable[Metadata | None], where: Callable[[int], str] | None = None) -> dict[str, str]:
    """Field name -> type over all records, sorted by name.

    A field seen with two types raises ``ValueError`` naming the field, both types and the records where
    each first appeared (``where(i)`` describes record ``i``, e.g. by its document id; default ``record i``).
    """
    describe = where if where is not None else (lambda i: f"record {i}")
    found: dict[str, tuple[str, int]] = {}
    for i, metadata in enumerate(metadatas):
        if not metadata:
            continue
        for field, value in metadata.items():
            kind = _kind(value)
            if kind is None:
                raise ValueError(f"metadata field {field!r} at {describe(i)} is not a string, number or bool: "
                                 f"{type(value).__name__}")
            seen = found.get(field)
            if seen is None:
                found[field] = (kind, i)
            elif seen[0] != kind:
                raise ValueError(f"metadata field {field!r} has two types: {seen[0]} (first at {describe(seen[1])}) "
                                 f"and {kind} (first at {describe(i)})")
    return {field: found[field][0] for field in sorted(found)}


class FilterError(ValueError):
    """A request filter that cannot be applied; ``loc`` points into the request (``filter.year.gte``)."""

    def __init__(self, message: str, loc: str = "filter", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.field = field


@dataclass(frozen=True)
class Condition:
    """One test on one field. ``value`` is a scalar, or a tuple of scalars for ``in``/``nin``."""

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class Filter:
    """The AND of its conditions."""

    conditions: tuple[Condition, ...]

    def to_json(self) -> dict[str, dict[str, object]]:
        """The canonical JSON form, ``{field: {op: value}}``: equality spelled as ``eq``, ``in`` lists sorted
        and unique, integral numbers as integers; ``parse_filter`` reads it back to an equal filter."""
        out: dict[str, dict[str, object]] = {}
        for cond in sorted(self.conditions, key=lambda c: (c.field, c.op)):
            if isinstance(cond.value, tuple):
                value: object = sorted({_json_scalar(v) for v in cond.value})
            else:
                value = _json_scalar(cond.value)
            out.setdefault(cond.field, {})[cond.op] = value
        return {field: out[field] for field in sorted(out)}

    def cache_key(self) -> str:
        """``to_json`` as a stable string."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def _json_scalar(value: Scalar) -> Scalar:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INT:
        return int(value)
    return value


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return type(value).__name__


def _json_type(value: object) -> str:
    kind = _kind(value)
    if kind is not None:
        return kind
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_value(field: str, kind: str, value: object, loc: str, context: str = "") -> Scalar:
    """``value`` as the field's type (numbers as float), or ``FilterError`` at ``loc``."""
    got = _kind(value)
    if got != kind:
        shown = f" {_show(value)}" if got is not None else ""
        raise FilterError(f"filter field {field!r} is a {kind}; got {_json_type(value)}{shown}{context}", loc, field)
    if kind == "number":
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise FilterError(f"filter field {field!r}: number {_show(value)} is out of range{context}",
                              loc, field) from None
        if not math.isfinite(number):
            raise FilterError(f"filter field {field!r}: NaN and infinity are not allowed{context}", loc, field)
        return number
    return value  # type: ignore[return-value]


def _parse_operator(field: str, kind: str, op: str, value: object, loc: str) -> Condition:
    if op in SET_OPERATORS:
        if not isinstance(value, (list, tuple)):
            raise FilterError(f"filter field {field!r}: {op!r} takes a list of values; got {_json_type(value)}",
                              loc, field)
        if not value:
            raise FilterError(f"filter field {field!r}: {op!r} takes a non-empty list", loc, field)
        if len(value) > MAX_IN_VALUES:
            raise FilterError(f"filter field {field!r}: {op!r} takes at most {MAX_IN_VALUES} values; "
                              f"got {len(value)}", loc, field)
        checked = {_check_value(field, kind, v, loc, f" in {op!r}") for v in value}
        return Condition(field, op, tuple(sorted(checked)))  # type: ignore[type-var]
    if op in RANGE_OPERATORS and kind not in ("number", "string"):
        raise FilterError(f"filter field {field!r} is a {kind}; {op!r} needs a number or string field", loc, field)
    return Condition(field, op, _check_value(field, kind, value, loc))


def parse_filter(spec: object, schema: dict[str, str]) -> Filter | None:
    """The request's ``filter`` object checked against ``schema``; ``None`` for no filter (``None`` or ``{}``).

    ``{"source": "wiki", "year": {"gte": 2010, "lt": 2020}, "lang": {"in": ["en", "de"]}}``: a scalar
    means equality, an object holds operators (see ``OPERATORS``). Raises :class:`FilterError`.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FilterError(f"filter must be an object of metadata field conditions; got {_json_type(spec)}")
    if not spec:
        return None
    if len(spec) > MAX_FILTER_FIELDS:
        raise FilterError(f"filter has {len(spec)} fields; at most {MAX_FILTER_FIELDS} are allowed")
    conditions: list[Condition] = []
    for field, body in spec.items():
        if not isinstance(field, str):
            raise FilterError(f"filter field names must be strings; got {_json_type(field)}")
        loc = f"filter.{field}"
        kind = schema.get(field)
        if kind is None:
            known = sorted(schema)
            listed = ", ".join(known[:MAX_LISTED_FIELDS])
            if len(known) > MAX_LISTED_FIELDS:
                listed += f", ... ({len(known) - MAX_LISTED_FIELDS} more)"
            raise FilterError(f"unknown metadata field {field!r} (fields: {listed or 'none'})", loc, field)
        if isinstance(body, dict):
            if not body:
                raise FilterError(f"filter field {field!r} has no operators (allowed: {', '.join(OPERATORS)})",
                                  loc, field)
            for op, value in body.items():
                if op not in OPERATORS:
                    raise FilterError(f"filter field {field!r}: unknown operator {op!r} "
                                      f"(allowed: {', '.join(OPERATORS)})", f"{loc}.{op}", field)
                conditions.append(_parse_operator(field, kind, op, value, f"{loc}.{op}"))
        elif isinstance(body, (list, tuple)):
            raise FilterError(f"filter field {field!r} is a {kind}; got list (use {{\"in\": [...]}} for any of "
                              f"several values)", loc, field)
        else:
            conditions.append(Condition(field, "eq", _check_value(field, kind, body, loc)))
    conditions.sort(key=lambda c: (c.field, OPERATORS.index(c.op)))
    return Filter(tuple(conditions))


# -- row by row ------------------------------------------------------------------------------------------


def _equal(stored: object, value: Scalar) -> bool:
    kind = _kind(stored)
    if kind is None or kind != _kind(value):
        return False
    if kind == "number":
        return float(stored) == float(value)  # type: ignore[arg-type]
    return stored == value


def _compare(op: str, a: Scalar, b: Scalar) -> bool:
    if op == "gt":
        return a > b  # type: ignore[operator]
    if op == "gte":
        return a >= b  # type: ignore[operator]
    if op == "lt":
        return a < b  # type: ignore[operator]
    return a <= b  # type: ignore[operator]


def _holds(stored: object, cond: Condition) -> bool:
    op, value = cond.op, cond.value
    if op in SET_OPERATORS:
        hit = any(_equal(stored, v) for v in value)  # type: ignore[union-attr]
        return hit if op == "in" else not hit
    if op == "eq":
        return _equal(stored, value)  # type: ignore[arg-type]
    if op == "ne":
        return not _equal(stored, value)  # type: ignore[arg-type]
    kind = _kind(stored)
    if kind is None or kind != _kind(value):
        return False
    if kind == "number":
        # NaN fails every comparison, as a missing value does.
        return _compare(op, float(stored), float(value))  # type: ignore[arg-type]
    if kind == "string":
        return _compare(op, stored, value)  # type: ignore[arg-type]
    return False


def matches(metadata: Metadata | None, flt: Filter) -> bool:
    """Whether one passage's metadata passes ``flt``: the semantics of :meth:`MetadataColumns.mask`."""
    for cond in flt.conditions:
        stored = metadata.get(cond.field) if metadata else None
        if not _holds(stored, cond):
            return False
    return True


# -- columns ---------------------------------------------------------------------------------------------

BoolMask = npt.NDArray[np.bool_]


class _Column:
    """One field's values for rows [0, capacity); rows past the owner's length hold the missing marker."""

    kind = ""

    def grow(self, capacity: int, length: int) -> None:
        raise NotImplementedError

    def clear(self, start: int, stop: int) -> None:
        raise NotImplementedError

    def write(self, start: int, offsets: list[int], values: list[Scalar]) -> None:
        raise NotImplementedError

    def get(self, row: int) -> Scalar | None:
        raise NotImplementedError

    def evaluate(self, cond: Condition, stop: int) -> BoolMask:
        raise NotImplementedError


def _grown(old: np.ndarray, capacity: int, length: int, missing: object) -> np.ndarray:
    # A new array, filled then swapped in by the caller: a reader holding the old one keeps valid rows.
    new = np.empty(capacity, dtype=old.dtype)
    new[:length] = old[:length]
    new[length:] = missing
    return new


class _StringColumn(_Column):
    kind = "string"

    def __init__(self, capacity: int) -> None:
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.vocab: list[str] = []
        self.index: dict[str, int] = {}
        self._vocab_cache: tuple[int, np.ndarray] = (0, np.empty(0, dtype=object))

    def grow(self, capacity: int, length: int) -> None:
        self.codes = _grown(self.codes, capacity, length, -1)

    def clear(self, start: int, stop: int) -> None:
        self.codes[start:stop] = -1

    def write(self, start: int, offsets: list[int], values: list[Scalar]) -> None:
        codes = []
        for value in values:
            code = self.index.get(value)  # type: ignore[arg-type]
            if code is None:
                # The vocabulary entry exists before any row refers to it, so a concurrent reader that
                # sees a code also finds its string.
                code = len(self.vocab)
                self.vocab.append(value)  # type: ignore[arg-type]
                self.index[value] = code  # type: ignore[index]
            codes.append(code)
        self.codes[np.asarray(offsets, dtype=np.int64) + start] = codes

    def get(self, row: int) -> Scalar | None:
        code = int(self.codes[row])
        return self.vocab[code] if code >= 0 else None

    def _vocab_array(self) -> np.ndarray:
        n = len(self.vocab)
        cached_n, cached = self._vocab_cache
        if cached_n != n:
            cached = np.empty(n, dtype=object)
            cached[:] = self.vocab[:n]
            self._vocab_cache = (n, cached)
        return cached

    def _lookup(self, codes: np.ndarray, vocab_ok: np.ndarray) -> BoolMask:
        # One extra False slot at the end, so the missing code -1 indexes it and fails.
        table = np.zeros(len(vocab_ok) + 1, dtype=bool)
        table[:-1] = vocab_ok
        return table[codes]

    def evaluate(self, cond: Condition, stop: int) -> BoolMask:
        codes = self.codes[:stop]
        op, value = cond.op, cond.value
        if op in ("eq", "ne"):
            code = self.index.get(value) if isinstance(value, str) else None
            if code is None:
                return np.zeros(stop, dtype=bool) if op == "eq" else np.ones(stop, dtype=bool)
            return codes == code if op == "eq" else codes != code
        if op in SET_OPERATORS:
            wanted = [self.index.get(v) for v in value if isinstance(v, str)]  # type: ignore[union-attr]
            vocab_ok = np.zeros(len(self.vocab), dtype=bool)
            vocab_ok[[c for c in wanted if c is not None]] = True
            hit = self._lookup(codes, vocab_ok)
            return hit if op == "in" else ~hit
        if not isinstance(value, str):
            return np.zeros(stop, dtype=bool)
        # Strings compare by code point per query over the vocabulary, never per row.
        vocab = self._vocab_array()
        if op == "gt":
            vocab_ok = vocab > value
        elif op == "gte":
            vocab_ok = vocab >= value
        elif op == "lt":
            vocab_ok = vocab < value
        else:
            vocab_ok = vocab <= value
        return self._lookup(codes, np.asarray(vocab_ok, dtype=bool))


class _NumberColumn(_Column):
    kind = "number"

    def __init__(self, capacity: int) -> None:
        self.data = np.full(capacity, np.nan, dtype=np.float64)
        # So that values() gives back 2010 rather than 2010.0 for a field that was written as an int.
        self.is_int = np.zeros(capacity, dtype=bool)

    def grow(self, capacity: int, length: int) -> None:
        self.data = _grown(self.data, capacity, length, np.nan)
        self.is_int = _grown(self.is_int, capacity, length, False)

    def clear(self, start: int, stop: int) -> None:
        self.data[start:stop] = np.nan
        self.is_int[start:stop] = False

    def write(self, start: int, offsets: list[int], values: list[Scalar]) -> None:
        rows = np.asarray(offsets, dtype=np.int64) + start
        self.data[rows] = [float(v) for v in values]
        self.is_int[rows] = [isinstance(v, int) for v in values]

    def get(self, row: int) -> Scalar | None:
        value = float(self.data[row])
        if math.isnan(value):
            return None
        return int(value) if self.is_int[row] else value

    def evaluate(self, cond: Condition, stop: int) -> BoolMask:
        data = self.data[:stop]
        op, value = cond.op, cond.value
        if op in SET_OPERATORS:
            wanted = [float(v) for v in value if _kind(v) == "number"]  # type: ignore[union-attr, arg-type]
            hit = np.isin(data, wanted) if wanted else np.zeros(stop, dtype=bool)
            return hit if op == "in" else ~hit
        if _kind(value) != "number":
            return np.ones(stop, dtype=bool) if op == "ne" else np.zeros(stop, dtype=bool)
        number = float(value)  # type: ignore[arg-type]
        # NaN (missing) compares False everywhere and unequal to everything, exactly the missing rule.
        if op == "eq":
            return data == number
        if op == "ne":
            return data != number
        if op == "gt":
            return data > number
        if op == "gte":
            return data >= number
        if op == "lt":
            return data < number
        return data <= number


class _BoolColumn(_Column):
    kind = "bool"

    def __init__(self, capacity: int) -> None:
        self.data = np.full(capacity, -1, dtype=np.int8)

    def grow(self, capacity: int, length: int) -> None:
        self.data = _grown(self.data, capacity, length, -1)

    def clear(self, start: int, stop: int) -> None:
        self.data[start:stop] = -1

    def write(self, start: int, offsets: list[int], values: list[Scalar]) -> None:
        self.data[np.asarray(offsets, dtype=np.int64) + start] = [int(v) for v in values]

    def get(self, row: int) -> Scalar | None:
        value = int(self.data[row])
        return bool(value) if value >= 0 else None

    def evaluate(self, cond: Condition, stop: int) -> BoolMask:
        data = self.data[:stop]
        op, value = cond.op, cond.value
        if op in SET_OPERATORS:
            wanted = {int(v) for v in value if isinstance(v, bool)}  # type: ignore[union-attr]
            if wanted == {0, 1}:
                hit = data >= 0
            elif wanted:
                hit = data == wanted.pop()
            else:
                hit = np.zeros(stop, dtype=bool)
            return hit if op == "in" else ~hit
        if op in ("eq", "ne") and isinstance(value, bool):
            return data == int(value) if op == "eq" else data != int(value)
        # Ranges over bools are refused by parse_filter; a hand-built one matches nothing, as in matches().
        return np.ones(stop, dtype=bool) if op == "ne" else np.zeros(stop, dtype=bool)


_COLUMN_TYPES: dict[str, type[_Column]] = {"string": _StringColumn, "number": _NumberColumn, "bool": _BoolColumn}


class MetadataColumns:
    """A columnar copy of passage metadata, one array per field, for vectorised filter masks.

    Strings are int32 codes into a per-field vocabulary (-1: missing), numbers float64 (NaN: missing),
    bools int8 (-1: missing). Arrays grow by doubling.

    Appends must be serialised by the caller. ``mask(flt, stop)`` may run concurrently with an append for a
    ``stop`` captured before it: arrays are only ever replaced by bigger copies (never shrunk or rewritten
    below the length), rows are written before the length moves, and the schema and column maps are
    replaced rather than mutated.
    """

    _MIN_CAPACITY = 1024

    def __init__(self, schema: dict[str, str]) -> None:
        for field, kind in schema.items():
            if kind not in FIELD_TYPES:
                raise ValueError(f"metadata field {field!r} has unknown type {kind!r} "
                                 f"(types: {', '.join(FIELD_TYPES)})")
        self._schema: dict[str, str] = {field: schema[field] for field in sorted(schema)}
        self._capacity = 0
        self._length = 0
        self._columns: dict[str, _Column] = {field: _COLUMN_TYPES[kind](0) for field, kind in self._schema.items()}

    @classmethod
    def from_rows(cls, metadatas: Iterable[Metadata | None], schema: dict[str, str] | None = None) -> MetadataColumns:
        """Columns over ``metadatas``; the schema is inferred from them when not given."""
        rows = list(metadatas)
        columns = cls(infer_schema(rows) if schema is None else schema)
        columns.append(rows)
        return columns

    def __len__(self) -> int:
        return self._length

    @property
    def schema(self) -> dict[str, str]:
        """Field name -> type, sorted by name (a copy)."""
        return dict(self._schema)

    def append(self, metadatas: Sequence[Metadata | None]) -> None:
        """Append one row per metadata object (``None``: no fields).

        A value whose type differs from the schema's raises ``ValueError`` naming the field and the row,
        and nothing is appended. A field the schema lacks joins it with its type (earlier rows lack it).
        """
        start = self._length
        new_fields: dict[str, tuple[str, int]] = {}
        per_field: dict[str, tuple[list[int], list[Scalar]]] = {}
        # Everything is checked before anything is written, so a refused batch leaves no trace.
        for offset, metadata in enumerate(metadatas):
            if metadata is None:
                continue
            if not isinstance(metadata, dict):
                raise ValueError(f"metadata of row {start + offset} is not an object: {type(metadata).__name__}")
            for field, value in metadata.items():
                kind = _kind(value)
                if kind is None:
                    raise ValueError(f"metadata field {field!r} of row {start + offset} is not a string, number "
                                     f"or bool: {type(value).__name__}")
                expected = self._schema.get(field)
                if expected is None:
                    seen = new_fields.get(field)
                    if seen is None:
                        new_fields[field] = (kind, start + offset)
                        expected = kind
                    else:
                        expected = seen[0]
                if kind != expected:
                    raise ValueError(f"metadata field {field!r} is a {expected}; row {start + offset} has a "
                                     f"{kind}: {_show(value)}")
                if kind == "number" and isinstance(value, int) and abs(value) >= _HUGE_INT:
                    try:
                        float(value)
                    except OverflowError:
                        raise ValueError(f"metadata field {field!r} of row {start + offset}: number "
                                         f"{_show(value)} is out of range") from None
                offsets, values = per_field.setdefault(field, ([], []))
                offsets.append(offset)
                values.append(value)
        count = len(metadatas)
        if count == 0:
            return
        stop = start + count
        if stop > self._capacity:
            capacity = max(stop, 2 * self._capacity, self._MIN_CAPACITY)
            for column in self._columns.values():
                column.grow(capacity, start)
            self._capacity = capacity
        if new_fields:
            columns = dict(self._columns)
            schema = dict(self._schema)
            for field, (kind, row) in new_fields.items():
                column = _COLUMN_TYPES[kind](self._capacity)
                columns[field] = column
                schema[field] = kind
                logger.debug("metadata field %r (%s) first appears at row %d", field, kind, row)
            # Swapped whole, so a concurrent reader sees either the old maps or the complete new ones.
            self._columns = {field: columns[field] for field in sorted(columns)}
            self._schema = {field: schema[field] for field in sorted(schema)}
        for field, column in self._columns.items():
            column.clear(start, stop)
            if field in per_field:
                offsets, values = per_field[field]
                column.write(start, offsets, values)
        self._length = stop

    def mask(self, flt: Filter, stop: int | None = None) -> BoolMask:
        """A boolean array over rows ``[0, stop)`` (default: all rows): True where the row passes ``flt``."""
        length = self._length
        if stop is None:
            stop = length
        elif not 0 <= stop <= length:
            raise ValueError(f"stop {stop} is outside [0, {length}]")
        columns = self._columns
        result: BoolMask | None = None
        for cond in flt.conditions:
            column = columns.get(cond.field)
            if column is None:
                # A field no row has: missing everywhere.
                hit = np.ones(stop, dtype=bool) if cond.op in ("ne", "nin") else np.zeros(stop, dtype=bool)
            else:
                hit = column.evaluate(cond, stop)
            if result is None:
                result = hit
            else:
                result &= hit
        return np.ones(stop, dtype=bool) if result is None else result

    def values(self, row: int) -> Metadata:
        """The metadata of ``row``: only the fields it has, in schema order."""
        if not 0 <= row < self._length:
            raise IndexError(f"row {row} is outside [0, {self._length})")
        out: Metadata = {}
        for field, column in self._columns.items():
            value = column.get(row)
            if value is not None:
                out[field] = value
        return out
