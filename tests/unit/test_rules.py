"""Declarative validation rules: every rule, batch rules, the shipped file, bad files, speed."""

from __future__ import annotations

import math
import statistics
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from tidegate.errors import ConfigError, RulesFileError
from tidegate.example import example_rules
from tidegate.example.generator import TransactionGenerator
from tidegate.pipeline.validation import RuleSet, load_rules

pytestmark = pytest.mark.unit

Record = dict[str, object]
START = 1_700_000_000_000


def rules(**fields: dict[str, object]) -> RuleSet:
    return RuleSet.from_dict({"fields": fields})


def codes(ruleset: RuleSet, *records: Record) -> list[list[str]]:
    result = ruleset.check(list(records))
    return [[v.code for v in result.for_record(i)] for i in range(len(records))]


def test_shipped_rules_load_and_pass_generated_events() -> None:
    shipped = load_rules(files("tidegate.example") / "rules.toml")
    assert shipped == example_rules()
    assert len(shipped.fields) == 19
    for drift in (0.0, 1.0):
        gen = TransactionGenerator(seed=8, drift=drift, start_time_ms=START)
        events = [e for e, _ in gen.generate(5000)]
        for start in range(0, len(events), 512):
            result = shipped.check(events[start:start + 512])
            assert result.ok, result.violations
            assert result.warnings == ()


def test_required_flags_absent_and_null_but_optional_nulls_pass() -> None:
    r = rules(a={"required": True, "type": "string"}, b={"type": "int", "min": 0})
    assert codes(r, {"a": "x", "b": None}, {"b": 1}, {"a": None}) == [[], ["REQUIRED"],
                                                                     ["REQUIRED"]]


@pytest.mark.parametrize(("ftype", "good", "bad"), [
    ("string", ["", "x"], [1, 1.5, True, b"x", ["x"]]),
    ("int", [0, -3, 10**30, np.int64(4)], [True, False, 1.0, "1", np.float64(1)]),
    ("float", [1.5, 2, np.float64(3.0), np.int32(2), math.nan], ["12.x", True, np.bool_(True)]),
    ("bool", [True, False, np.bool_(False)], [0, 1, "true", 1.0]),
])
def test_type_rule(ftype: str, good: list[object], bad: list[object]) -> None:
    r = rules(v={"type": ftype})
    result = r.check([{"v": v} for v in good + bad])
    assert result.failed() == list(range(len(good), len(good) + len(bad)))
    assert {v.code for i in result.failed() for v in result.for_record(i)} == {"WRONG_TYPE"}


def test_not_finite_is_reported_once_and_not_as_out_of_range() -> None:
    r = rules(x={"type": "float", "finite": True, "min": 0.0, "max": 10.0})
    assert codes(r, {"x": math.nan}, {"x": math.inf}, {"x": -math.inf}, {"x": 10.0}) == [
        ["NOT_FINITE"], ["NOT_FINITE"], ["NOT_FINITE"], []]


def test_range_bounds_are_inclusive_and_huge_ints_do_not_crash() -> None:
    r = rules(x={"type": "int", "min": 0, "max": 5})
    assert codes(r, {"x": 0}, {"x": 5}, {"x": -1}, {"x": 6}, {"x": 10**400}) == [
        [], [], ["OUT_OF_RANGE"], ["OUT_OF_RANGE"], ["OUT_OF_RANGE"]]
    without_finite = rules(x={"type": "float", "max": 5.0})
    assert codes(without_finite, {"x": math.inf}, {"x": math.nan}) == [["OUT_OF_RANGE"], []]


def test_allowed_and_max_length() -> None:
    r = rules(c={"type": "string", "allowed": ["EUR", "USD"], "max_length": 3},
              any={"allowed": [1, "one"]})
    assert codes(r, {"c": "EUR", "any": 1}, {"c": "ZZZ", "any": "one"}, {"c": "EURO"},
                 {"any": [1]}) == [[], ["NOT_ALLOWED"], ["NOT_ALLOWED", "TOO_LONG"],
                                   ["NOT_ALLOWED"]]


def test_every_violated_rule_is_reported_in_file_order() -> None:
    result = example_rules().check([{
        "event_id": "x" * 100, "amount": -5.0, "currency": "ZZZ", "card_present": 1,
        "description": None,
    }])
    found = [(v.field, v.code) for v in result.for_record(0)]
    assert found[:4] == [("event_id", "TOO_LONG"), ("event_time", "REQUIRED"),
                         ("account_id", "REQUIRED"), ("merchant_id", "REQUIRED")]
    assert ("amount", "OUT_OF_RANGE") in found and ("currency", "NOT_ALLOWED") in found
    assert ("card_present", "WRONG_TYPE") in found
    assert all(v.message and "\n" not in v.message for v in result.for_record(0))


def test_missing_share_warn_and_reject() -> None:
    r = RuleSet.from_dict({"batch": [
        {"field": "a", "max_missing_share": 0.25, "action": "warn", "min_records": 4},
        {"field": "b", "max_missing_share": 0.25, "action": "reject", "min_records": 4},
    ]})
    batch: list[Record] = [{"a": None, "b": None}, {"a": None}, {"a": 1, "b": 2}, {"a": 1, "b": 3}]
    result = r.check(batch)
    assert [(w.field, w.action, w.share) for w in result.warnings] == [("a", "warn", 0.5),
                                                                     ("b", "reject", 0.5)]
    assert result.failed() == [0, 1] and result.passed() == [2, 3]
    assert {v.code for v in result.for_record(0)} == {"MISSING_SHARE"}
    assert r.check(batch[:3]).ok and not r.check(batch[:3]).warnings  # below min_records
    assert r.check([]).ok


def test_batch_result_helpers() -> None:
    result = rules(x={"required": True}).check([{"x": 1}, {}, {"x": 2}])
    assert not result.ok and result.size == 3
    assert result.failed() == [1] and result.passed() == [0, 2] and result.for_record(0) == ()


BAD_FILES = {
    "syntax": ("[fields.a\n", "not valid TOML"),
    "top_level": ("[field.a]\ntype = 'int'\n", "unknown key(s) ['field']"),
    "field_key": ("[fields.a]\nmni = 1\n", "fields.a: unknown key(s) ['mni']"),
    "type": ("[fields.a]\ntype = 'decimal'\n", "fields.a.type"),
    "min_max": ("[fields.a]\ntype = 'int'\nmin = 5\nmax = 1\n", "min 5.0 exceeds max 1.0"),
    "min_string": ("[fields.a]\ntype = 'string'\nmin = 1\n", "need type int or float"),
    "min_text": ("[fields.a]\ntype = 'int'\nmin = 'low'\n", "fields.a.min: must be a number"),
    "finite_int": ("[fields.a]\ntype = 'int'\nfinite = true\n", "finite needs type float"),
    "length_float": ("[fields.a]\ntype = 'float'\nmax_length = 3\n", "needs type string"),
    "length_negative": ("[fields.a]\ntype = 'string'\nmax_length = -1\n", "max_length"),
    "allowed_empty": ("[fields.a]\nallowed = []\n", "fields.a.allowed"),
    "allowed_type": ("[fields.a]\ntype = 'int'\nallowed = [1, 'x']\n", "of type int"),
    "required": ("[fields.a]\nrequired = 'yes'\n", "fields.a.required"),
    "not_table": ("fields = 3\n", "fields: must be a table"),
    "batch_table": ("[batch]\nfield = 'a'\n", "array of tables"),
    "action": ("[[batch]]\nfield = 'a'\nmax_missing_share = 0.1\naction = 'drop'\n", "action"),
    "share": ("[[batch]]\nfield = 'a'\nmax_missing_share = 1.5\n", "max_missing_share"),
    "no_field": ("[[batch]]\nmax_missing_share = 0.5\n", "batch[0].field"),
    "min_records": ("[[batch]]\nfield = 'a'\nmax_missing_share = 0.1\nmin_records = 0\n",
                    "min_records"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_rules_file_raises_a_one_line_config_error(case: str, tmp_path: Path) -> None:
    text, problem = BAD_FILES[case]
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesFileError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and caught.value.code == "RULES_FILE"
    assert str(path) in message and problem in message and "\n" not in message


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_rules(tmp_path / "absent.toml")


def test_checks_a_512_batch_in_a_few_milliseconds() -> None:
    shipped = example_rules()
    events = [e for e, _ in TransactionGenerator(seed=2, start_time_ms=START).generate(512)]
    took = []
    for _ in range(30):
        began = time.perf_counter()
        shipped.check(events)
        took.append(time.perf_counter() - began)
    assert statistics.median(took) < 0.010  # about 1.3 ms here; loose for slow CI machines
