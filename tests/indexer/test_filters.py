"""Metadata filters: schema inference, request parsing and its errors, and the vectorised masks of
``MetadataColumns`` checked row for row against the pure-Python ``matches``."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from indexer.filters import (
    FIELD_TYPES,
    MAX_FILTER_FIELDS,
    MAX_IN_VALUES,
    Condition,
    Filter,
    FilterError,
    MetadataColumns,
    infer_schema,
    matches,
    parse_filter,
    value_type,
)

SCHEMA = {"source": "string", "year": "number", "score": "number", "flag": "bool", "date": "string",
          "lang": "string"}


# -- types and schema ------------------------------------------------------------------------------------


def test_value_type_keeps_bool_apart_from_numbers() -> None:
    assert [value_type(v) for v in (True, 0, 1.5, "x")] == ["bool", "number", "number", "string"]
    assert set(FIELD_TYPES) == {"string", "number", "bool"}
    with pytest.raises(TypeError):
        value_type(None)
    with pytest.raises(TypeError):
        value_type([1])


def test_infer_schema_sorts_fields_and_merges_int_and_float() -> None:
    rows = [{"year": 2010, "source": "wiki"}, None, {}, {"year": 2.5, "flag": False}]
    schema = infer_schema(rows)
    assert schema == {"flag": "bool", "source": "string", "year": "number"}
    assert list(schema) == ["flag", "source", "year"]


def test_infer_schema_conflict_names_field_types_and_records() -> None:
    rows = [{"year": 2010}, {"other": "x"}, {"year": "2011"}]
    with pytest.raises(ValueError) as err:
        infer_schema(rows)
    message = str(err.value)
    assert "'year'" in message and "number" in message and "string" in message
    assert "record 2" in message and "record 0" in message

    with pytest.raises(ValueError) as err:
        infer_schema(rows, where=lambda i: f"document doc-{i}")
    assert "document doc-2" in str(err.value)


def test_infer_schema_bool_and_number_conflict() -> None:
    with pytest.raises(ValueError, match="'flag'.*number.*bool"):
        infer_schema([{"flag": 1}, {"flag": True}])


# -- parsing ---------------------------------------------------------------------------------------------


def test_parse_empty_filters_are_none() -> None:
    assert parse_filter(None, SCHEMA) is None
    assert parse_filter({}, SCHEMA) is None


def test_parse_builds_sorted_conditions_with_normalised_values() -> None:
    flt = parse_filter({"year": {"lt": 2020, "gte": 2010}, "source": "wiki", "lang": {"in": ["en", "de", "en"]}},
                       SCHEMA)
    assert flt == Filter((Condition("lang", "in", ("de", "en")), Condition("source", "eq", "wiki"),
                          Condition("year", "gte", 2010.0), Condition("year", "lt", 2020.0)))
    assert isinstance(flt.conditions[0].value, tuple)


def test_parse_allows_string_ranges_and_bool_equality() -> None:
    flt = parse_filter({"date": {"gte": "2019-01-01"}, "flag": False, "score": {"nin": [1, 2.5]}}, SCHEMA)
    assert flt is not None
    assert Condition("date", "gte", "2019-01-01") in flt.conditions
    assert Condition("flag", "eq", False) in flt.conditions
    assert Condition("score", "nin", (1.0, 2.5)) in flt.conditions


PARSE_ERRORS = [
    pytest.param(["source"], "filter", "must be an object", id="not-a-dict"),
    pytest.param("wiki", "filter", "got string", id="string-spec"),
    pytest.param({"colour": "red"}, "filter.colour",
                 "unknown metadata field 'colour' (fields: date, flag, lang, score, source, year)", id="unknown-field"),
    pytest.param({"year": {"between": [1, 2]}}, "filter.year.between", "unknown operator 'between'",
                 id="unknown-operator"),
    pytest.param({"year": {}}, "filter.year", "'year' has no operators", id="empty-op-dict"),
    pytest.param({"source": 3}, "filter.source", "filter field 'source' is a string; got number 3",
                 id="eq-wrong-type"),
    pytest.param({"year": "x"}, "filter.year", "filter field 'year' is a number; got string 'x'",
                 id="eq-string-for-number"),
    pytest.param({"source": {"eq": 3}}, "filter.source.eq", "'source' is a string; got number 3",
                 id="eq-op-wrong-type"),
    pytest.param({"lang": {"in": ["en", 7]}}, "filter.lang.in", "'lang' is a string; got number 7 in 'in'",
                 id="in-element-wrong-type"),
    pytest.param({"year": {"gte": "2010"}}, "filter.year.gte", "'year' is a number; got string '2010'",
                 id="gte-wrong-type"),
    pytest.param({"year": True}, "filter.year", "'year' is a number; got bool true", id="bool-for-number"),
    pytest.param({"flag": 1}, "filter.flag", "'flag' is a bool; got number 1", id="number-for-bool"),
    pytest.param({"flag": {"gt": False}}, "filter.flag.gt", "'flag' is a bool; 'gt' needs a number or string field",
                 id="range-on-bool"),
    pytest.param({"year": math.nan}, "filter.year", "NaN and infinity are not allowed", id="nan"),
    pytest.param({"score": {"lte": math.inf}}, "filter.score.lte", "NaN and infinity", id="inf"),
    pytest.param({"score": {"in": [1.0, math.nan]}}, "filter.score.in", "NaN and infinity", id="nan-in-list"),
    pytest.param({f"f{i}": 1 for i in range(MAX_FILTER_FIELDS + 1)}, "filter",
                 f"at most {MAX_FILTER_FIELDS}", id="too-many-fields"),
    pytest.param({"lang": {"in": []}}, "filter.lang.in", "non-empty list", id="empty-in"),
    pytest.param({"lang": {"nin": "en"}}, "filter.lang.nin", "takes a list", id="nin-not-a-list"),
    pytest.param({"year": {"in": list(range(MAX_IN_VALUES + 1))}}, "filter.year.in",
                 f"at most {MAX_IN_VALUES} values; got {MAX_IN_VALUES + 1}", id="too-long-in"),
    pytest.param({"lang": ["en", "de"]}, "filter.lang", "use {\"in\": [...]}", id="bare-list"),
    pytest.param({"lang": None}, "filter.lang", "'lang' is a string; got null", id="null"),
    pytest.param({"lang": {"eq": {"x": 1}}}, "filter.lang.eq", "got object", id="object-value"),
]


@pytest.mark.parametrize(("spec", "loc", "message"), PARSE_ERRORS)
def test_parse_errors_carry_loc_and_message(spec: object, loc: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_filter(spec, SCHEMA)
    assert err.value.loc == loc
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_operator_lists_the_allowed_ones() -> None:
    with pytest.raises(FilterError) as err:
        parse_filter({"year": {"gte": 1, "like": 2}}, SCHEMA)
    assert "eq, ne, in, nin, gt, gte, lt, lte" in str(err.value)
    assert err.value.field == "year"


def test_unknown_field_lists_at_most_twenty_names() -> None:
    schema = {f"field{i:02d}": "number" for i in range(30)}
    with pytest.raises(FilterError) as err:
        parse_filter({"nope": 1}, schema)
    message = str(err.value)
    assert "field19" in message and "field20" not in message
    assert "10 more" in message
    assert err.value.loc == "filter.nope"


def test_to_json_is_canonical_and_parses_back() -> None:
    a = parse_filter({"year": {"lt": 2020, "gte": 2010.0}, "source": "wiki", "lang": {"in": ["en", "de", "en"]},
                      "score": 0.5}, SCHEMA)
    b = parse_filter({"score": {"eq": 0.5}, "lang": {"in": ["de", "en"]}, "source": {"eq": "wiki"},
                      "year": {"gte": 2010, "lt": 2020.0}}, SCHEMA)
    assert a is not None and b is not None
    assert a.to_json() == {"lang": {"in": ["de", "en"]}, "score": {"eq": 0.5}, "source": {"eq": "wiki"},
                           "year": {"gte": 2010, "lt": 2020}}
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert a.cache_key() == b.cache_key()
    assert isinstance(a.to_json()["year"]["gte"], int)
    assert parse_filter(a.to_json(), SCHEMA) == a
    assert parse_filter({"year": 2011}, SCHEMA).to_json() != parse_filter({"year": 2012}, SCHEMA).to_json()


# -- masks against matches -------------------------------------------------------------------------------

SOURCES = ["wiki", "news", "forum", "book", "paper"]
LANGS = ["en", "de", "fr", "ja", "ünï"]


def _random_row(rng: random.Random) -> dict | None:
    if rng.random() < 0.08:
        return None
    row: dict = {}
    if rng.random() < 0.85:
        row["source"] = rng.choice(SOURCES)
    if rng.random() < 0.8:
        row["year"] = rng.randint(1995, 2024) if rng.random() < 0.7 else rng.choice([2000.0, 2010.5, -3.25])
    if rng.random() < 0.7:
        row["score"] = round(rng.uniform(-1, 1), 2)
    if rng.random() < 0.75:
        row["flag"] = rng.random() < 0.5
    if rng.random() < 0.7:
        row["date"] = f"{rng.randint(2000, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if rng.random() < 0.6:
        row["lang"] = rng.choice(LANGS)
    return row


def _random_value(rng: random.Random, kind: str, rows: list[dict | None], field: str) -> object:
    seen = [r[field] for r in rows if r and field in r]
    if seen and rng.random() < 0.7:
        value = rng.choice(seen)
        return value
    if kind == "string":
        return rng.choice(["zzz", "", "2015-06-15", "wiki2", "a"])
    if kind == "number":
        return rng.choice([2010, 2010.5, 0, 0.33, -1, 3000])
    return rng.random() < 0.5


def _random_spec(rng: random.Random, schema: dict[str, str], rows: list[dict | None]) -> dict:
    spec: dict = {}
    for field in rng.sample(sorted(schema), rng.randint(1, 3)):
        kind = schema[field]
        ops = ["eq", "ne", "in", "nin"] + (["gt", "gte", "lt", "lte"] if kind != "bool" else [])
        if rng.random() < 0.25:
            spec[field] = _random_value(rng, kind, rows, field)
            continue
        body: dict = {}
        for op in rng.sample(ops, rng.randint(1, 2)):
            if op in ("in", "nin"):
                body[op] = [_random_value(rng, kind, rows, field) for _ in range(rng.randint(1, 4))]
            else:
                body[op] = _random_value(rng, kind, rows, field)
        spec[field] = body
    return spec


def test_random_masks_equal_matches_row_by_row() -> None:
    rng = random.Random(20240611)
    rows = [_random_row(rng) for _ in range(2000)]
    # Appended in uneven batches so the columns grow several times on the way.
    columns = MetadataColumns(infer_schema(rows[:10]))
    for start, stop in ((0, 10), (10, 11), (11, 1500), (1500, 1500), (1500, 2000)):
        columns.append(rows[start:stop])
    assert len(columns) == 2000
    schema = columns.schema
    assert schema == infer_schema(rows)
    hits = 0
    for _ in range(200):
        flt = parse_filter(_random_spec(rng, schema, rows), schema)
        assert flt is not None
        expected = np.array([matches(row, flt) for row in rows], dtype=bool)
        mask = columns.mask(flt)
        assert mask.dtype == np.bool_ and mask.shape == (2000,)
        assert np.array_equal(mask, expected), flt.to_json()
        stop = rng.randint(0, 2000)
        assert np.array_equal(columns.mask(flt, stop=stop), expected[:stop]), (flt.to_json(), stop)
        hits += int(expected.sum())
    # The filters are neither all-pass nor all-fail, or the comparison would prove little.
    assert 0 < hits < 200 * 2000


def test_values_give_back_each_rows_metadata() -> None:
    rng = random.Random(7)
    rows = [_random_row(rng) for _ in range(300)]
    columns = MetadataColumns.from_rows(rows)
    for i, row in enumerate(rows):
        got = columns.values(i)
        assert got == (row or {})
        assert all(type(got[k]) is type(row[k]) for k in got)
    with pytest.raises(IndexError):
        columns.values(300)


def test_missing_fields_pass_only_ne_and_nin() -> None:
    columns = MetadataColumns.from_rows([{"source": "wiki", "year": 2010, "flag": True}, {}, None],
                                        schema={"source": "string", "year": "number", "flag": "bool"})
    schema = columns.schema
    expected = {
        "source": ({"source": "wiki"}, [True, False, False]),
        "ne": ({"source": {"ne": "wiki"}}, [False, True, True]),
        "nin": ({"year": {"nin": [2010]}}, [False, True, True]),
        "in": ({"flag": {"in": [True, False]}}, [True, False, False]),
        "range": ({"year": {"lte": 3000}}, [True, False, False]),
        "bool-ne": ({"flag": {"ne": False}}, [True, True, True]),
        "unseen": ({"source": "news"}, [False, False, False]),
        "unseen-ne": ({"source": {"ne": "news"}}, [True, True, True]),
    }
    for name, (spec, want) in expected.items():
        flt = parse_filter(spec, schema)
        assert columns.mask(flt).tolist() == want, name
        assert [matches(m, flt) for m in [{"source": "wiki", "year": 2010, "flag": True}, {}, None]] == want, name


def test_string_ranges_compare_lexicographically() -> None:
    dates = ["2019-12-31", "2020-01-01", "2020-06-30", "2021-01-01", None]
    columns = MetadataColumns.from_rows([{"date": d} if d else None for d in dates])
    flt = parse_filter({"date": {"gte": "2020-01-01", "lt": "2021"}}, columns.schema)
    assert columns.mask(flt).tolist() == [False, True, True, False, False]


def test_mask_with_stop_and_bounds() -> None:
    columns = MetadataColumns.from_rows([{"year": y} for y in range(2000, 2010)])
    flt = parse_filter({"year": {"gte": 2005}}, columns.schema)
    assert columns.mask(flt, stop=7).tolist() == [False] * 5 + [True, True]
    assert columns.mask(flt, stop=0).shape == (0,)
    with pytest.raises(ValueError):
        columns.mask(flt, stop=11)
    with pytest.raises(ValueError):
        columns.mask(flt, stop=-1)


def test_mask_at_captured_stop_survives_growth_and_new_fields() -> None:
    columns = MetadataColumns({"year": "number"})
    columns.append([{"year": 2000 + i % 20} for i in range(1000)])
    flt = parse_filter({"year": {"lt": 2005}}, columns.schema)
    stop = len(columns)
    before = columns.mask(flt, stop=stop)
    old_data = columns._columns["year"].data
    # Past the initial capacity, so the arrays are replaced, and with a new field in the batch.
    columns.append([{"year": 1900, "tag": "new"} for _ in range(5000)])
    assert columns._columns["year"].data is not old_data
    assert np.array_equal(old_data[:stop], columns._columns["year"].data[:stop])
    assert np.array_equal(columns.mask(flt, stop=stop), before)
    assert columns.mask(flt).sum() == before.sum() + 5000


def test_new_field_appended_later_grows_the_schema() -> None:
    columns = MetadataColumns.from_rows([{"source": "wiki"}, {"source": "news"}])
    assert columns.schema == {"source": "string"}
    columns.append([{"source": "wiki", "year": 2020, "flag": True}, None])
    assert columns.schema == {"flag": "bool", "source": "string", "year": "number"}
    flt = parse_filter({"year": 2020}, columns.schema)
    assert columns.mask(flt).tolist() == [False, False, True, False]
    not_flagged = parse_filter({"flag": {"ne": True}}, columns.schema)
    assert columns.mask(not_flagged).tolist() == [True, True, False, True]
    assert columns.values(2) == {"flag": True, "source": "wiki", "year": 2020}
    # A filter on a field the columns have never seen: every row lacks it.
    ghost = Filter((Condition("ghost", "eq", "x"), ))
    assert columns.mask(ghost).tolist() == [False] * 4
    assert columns.mask(Filter((Condition("ghost", "nin", ("x",)), ))).tolist() == [True] * 4


def test_append_refuses_wrong_types_and_leaves_no_trace() -> None:
    columns = MetadataColumns.from_rows([{"year": 2010, "flag": True}])
    with pytest.raises(ValueError, match=r"'year' is a number; row 2 has a string"):
        columns.append([{"year": 2011}, {"year": "2012"}])
    with pytest.raises(ValueError, match="'flag' is a bool; row 1 has a number"):
        columns.append([{"flag": 1}])
    with pytest.raises(ValueError, match="'tag' is a string; row 2 has a number"):
        columns.append([{"tag": "a"}, {"tag": 3}])
    with pytest.raises(ValueError, match="'year'"):
        columns.append([{"year": [2010]}])
    assert len(columns) == 1
    assert columns.schema == {"flag": "bool", "year": "number"}
    columns.append([{"year": 2011}])
    assert columns.values(1) == {"year": 2011}


def test_empty_filter_and_empty_columns() -> None:
    columns = MetadataColumns({"source": "string"})
    flt = parse_filter({"source": "wiki"}, columns.schema)
    assert columns.mask(flt).shape == (0,)
    columns.append([])
    assert len(columns) == 0
    columns.append([None, None])
    assert columns.mask(Filter(())).tolist() == [True, True]
    assert matches(None, Filter(())) is True
