"""Declarative validation rules, loaded from TOML and checked a whole batch at a time.

Rules are per field (required, type, min/max, allowed, finite, max_length) and per batch (the
largest share of records that may miss a field). ``RuleSet.check_fields`` judges a batch by
column (a stage's batch carries its fields so) with set and numpy operations; per-record Python
runs only for the records that actually break a rule. ``RuleSet.check`` takes records. Every
violated rule is reported, with a stable code.

A rules file looks like::

    [fields.amount]
    required = true
    type = "float"          # string | int | float | bool; float accepts ints, int rejects bools
    finite = true
    min = 0.0
    max = 1_000_000.0

    [[batch]]
    field = "customer_age"
    max_missing_share = 0.2
    action = "warn"          # warn: report only; reject: every record missing it fails
    min_records = 20         # smaller batches are not judged
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import numpy as np
import numpy.typing as npt

from tidegate.batches import field_columns
from tidegate.deadletter import Code
from tidegate.errors import RulesFileError

__all__ = [
    "BatchResult",
    "BatchWarning",
    "FieldRule",
    "FieldType",
    "MissingShareRule",
    "RuleSet",
    "Violation",
    "load_rules",
]

FieldType = Literal["string", "int", "float", "bool"]
_TYPES: tuple[str, ...] = ("string", "int", "float", "bool")
_FIELD_KEYS = frozenset({"required", "type", "min", "max", "allowed", "finite", "max_length"})
_BATCH_KEYS = frozenset({"field", "max_missing_share", "action", "min_records"})


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule one record broke: ``code`` is stable (REQUIRED, WRONG_TYPE, ...)."""

    field: str
    rule: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BatchWarning:
    """A batch-level finding, e.g. too many records miss a field."""

    field: str
    rule: str
    code: str
    message: str
    action: Literal["warn", "reject"]
    share: float


@dataclass(frozen=True, slots=True)
class FieldRule:
    """Everything one field must satisfy; None means the check is off."""

    name: str
    required: bool = False
    type: FieldType | None = None
    min: float | None = None
    max: float | None = None
    allowed: frozenset[object] | None = None
    finite: bool = False
    max_length: int | None = None

    def __post_init__(self) -> None:
        ftype, numeric = self.type, self.type in ("int", "float")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError("min and max need type int or float")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        if self.finite and ftype != "float":
            raise ValueError("finite needs type float")
        if self.max_length is not None and ftype != "string":
            raise ValueError("max_length needs type string")
        if ftype is not None and self.allowed and not all(_type_ok(ftype, a)
                                                          for a in self.allowed):
            raise ValueError(f"allowed values must all be of type {ftype}")


@dataclass(frozen=True, slots=True)
class MissingShareRule:
    """At most ``max_missing_share`` of a batch (of ``min_records`` or more) may miss ``field``."""

    field: str
    max_missing_share: float
    action: Literal["warn", "reject"] = "warn"
    min_records: int = 20


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The verdict on a batch: violations per failing record index, plus batch warnings."""

    size: int
    violations: Mapping[int, tuple[Violation, ...]] = field(default_factory=dict)
    warnings: tuple[BatchWarning, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no record broke a rule (warnings do not count)."""
        return not self.violations

    def for_record(self, index: int) -> tuple[Violation, ...]:
        """Every rule record ``index`` broke, in rules-file order; empty when it passed."""
        return self.violations.get(index, ())

    def passed(self) -> list[int]:
        """Indices of the records that broke no rule, ascending."""
        return [i for i in range(self.size) if i not in self.violations]

    def failed(self) -> list[int]:
        """Indices of the records that broke at least one rule, ascending."""
        return sorted(self.violations)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Field and batch rules; build it with ``load_rules`` or ``RuleSet.from_dict``.

    >>> rules = RuleSet.from_dict({"fields": {"amount": {"type": "float", "min": 0}}})
    >>> rules.check([{"amount": 3.5}, {"amount": -1}]).failed()
    [1]
    """

    fields: tuple[FieldRule, ...] = ()
    batch: tuple[MissingShareRule, ...] = ()

    def check(self, records: Sequence[Mapping[str, object]]) -> BatchResult:
        """Judge a batch of records; see ``BatchResult``."""
        return _check(self, field_columns(records), len(records))

    def check_fields(self, fields: Mapping[str, Sequence[object]], size: int) -> BatchResult:
        """Judge a batch of ``size`` records given by field (name to one value per record, None
        where a record lacks the field; a field no record has may be left out)."""
        return _check(self, fields, size)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str = "<rules>") -> RuleSet:
        """Build from parsed TOML; raises ``RulesFileError`` naming ``source`` and the problem."""
        top = _Table(source, "top level", data, frozenset({"fields", "batch"}))
        fields = _Table(source, "fields", data.get("fields", {}), None)
        batch = data.get("batch", [])
        if not isinstance(batch, list):
            top.fail("'batch' must be an array of tables ([[batch]])")
        return cls(tuple(_field_rule(source, str(k), v) for k, v in fields.raw.items()),
                   tuple(_batch_rule(source, i, v) for i, v in enumerate(batch)))


def load_rules(source: str | os.PathLike[str] | Traversable) -> RuleSet:
    """Load a rules file; any problem raises ``RulesFileError`` (a ``ConfigError``).

    >>> from importlib.resources import files
    >>> rules = load_rules(files("tidegate.example") / "rules.toml")
    """
    path: Traversable = Path(source) if isinstance(source, str | os.PathLike) else source
    where = f"rules file {path}"
    try:
        return RuleSet.from_dict(tomllib.loads(path.read_text(encoding="utf-8")), where)
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesFileError(f"{where}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesFileError(f"{where}: not valid TOML: {exc}") from exc


class _Table:
    """A TOML table being read: typed getters that fail with the file and key in the message."""

    def __init__(self, source: str, where: str, raw: object, keys: frozenset[str] | None) -> None:
        self.source, self.where = source, where
        if not isinstance(raw, Mapping):
            self.fail("must be a table")
        self.raw: Mapping[str, object] = raw
        unknown = sorted(set(raw) - keys) if keys is not None else []
        if unknown:
            self.fail(f"unknown key(s) {unknown}")

    def fail(self, problem: str, key: str | None = None) -> NoReturn:
        where = self.where if key is None else f"{self.where}.{key}"
        raise RulesFileError(f"{self.source}: {where}: {problem}")

    def flag(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if not isinstance(value, bool):
            self.fail("must be true or false", key)
        return value

    def number(self, key: str) -> float | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            self.fail("must be a number", key)
        return float(value)

    def count(self, key: str, default: int | None, least: int) -> int | None:
        value = self.raw.get(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < least):
            self.fail(f"must be an integer >= {least}", key)
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str | None) -> str | None:
        value = self.raw.get(key, default)
        if value is not None and value not in options:
            self.fail(f"must be one of {list(options)}", key)
        return None if value is None else str(value)


def _field_rule(source: str, name: str, spec: object) -> FieldRule:
    t = _Table(source, f"fields.{name}", spec, _FIELD_KEYS)
    allowed = t.raw.get("allowed")
    if allowed is not None and (not isinstance(allowed, list) or not allowed):
        t.fail("must be a non-empty array", "allowed")
    try:
        return FieldRule(name, t.flag("required"),
                         cast(FieldType | None, t.choice("type", _TYPES, None)),
                         t.number("min"), t.number("max"),
                         None if allowed is None else frozenset(allowed), t.flag("finite"),
                         t.count("max_length", None, 0))
    except (ValueError, TypeError) as exc:
        t.fail(str(exc))


def _batch_rule(source: str, index: int, spec: object) -> MissingShareRule:
    t = _Table(source, f"batch[{index}]", spec, _BATCH_KEYS)
    name, share = t.raw.get("field"), t.number("max_missing_share")
    if not isinstance(name, str) or not name:
        t.fail("must name a field", "field")
    if share is None or not 0.0 <= share <= 1.0:
        t.fail("must be a number within [0, 1]", "max_missing_share")
    action = cast(Literal["warn", "reject"], t.choice("action", ("warn", "reject"), "warn"))
    return MissingShareRule(name, share, action, t.count("min_records", 20, 1) or 1)


_NONE = type(None)
_FAST: dict[str, frozenset[type]] = {"string": frozenset({str}), "int": frozenset({int}),
                                     "float": frozenset({float, int}), "bool": frozenset({bool})}


def _type_ok(ftype: str, v: object) -> bool:
    if ftype == "string":
        return isinstance(v, str)
    if isinstance(v, bool | np.bool_):
        return ftype == "bool"
    if ftype == "int":
        return isinstance(v, int | np.integer)
    return ftype == "float" and isinstance(v, int | float | np.integer | np.floating)


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _floats(vals: Sequence[Any]) -> npt.NDArray[np.float64]:
    try:
        return np.fromiter(vals, dtype=np.float64, count=len(vals))
    except OverflowError:  # an int too large for a double: it is out of any range anyway
        return np.array([v if abs(v) < 1e308 else math.inf if v > 0 else -math.inf for v in vals],
                        dtype=np.float64)


def _not_allowed(vals: Sequence[Any], allowed: frozenset[object]) -> list[int]:
    try:
        if set(vals) <= allowed:
            return []
    except TypeError:  # an unhashable value: judge one by one below
        pass
    bad = []
    for j, v in enumerate(vals):
        try:
            if v not in allowed:
                bad.append(j)
        except TypeError:
            bad.append(j)
    return bad


class _Judge:
    """One batch being judged, by column; violations collected per record."""

    def __init__(self, columns: Mapping[str, Sequence[Any]], size: int) -> None:
        self.columns, self.n = columns, size
        self.found: dict[int, list[Violation]] = {}
        self.missing: dict[str, list[int]] = {}

    def column(self, name: str) -> Sequence[Any]:
        column = self.columns.get(name)
        return column if column is not None else [None] * self.n

    def flag(self, where: Iterable[int], name: str, rule: str, code: str,
             say: Callable[[int], str]) -> None:
        for i in where:
            self.found.setdefault(i, []).append(Violation(name, rule, code, say(i)))

    def field(self, fr: FieldRule) -> None:
        name, n = fr.name, self.n
        col = self.column(name)
        types = set(map(type, col))
        missing = [i for i, v in enumerate(col) if v is None] if _NONE in types else []
        self.missing[name] = missing
        if fr.required:
            self.flag(missing, name, "required", Code.REQUIRED, lambda i: f"{name} is required")
        skip = set(missing)
        if fr.type is not None and not types - {_NONE} <= _FAST[fr.type]:
            ftype = fr.type
            wrong = [i for i, v in enumerate(col) if v is not None and not _type_ok(ftype, v)]
            self.flag(wrong, name, "type", Code.WRONG_TYPE,
                      lambda i: f"{name} must be {ftype}, got {type(col[i]).__name__}")
            skip.update(wrong)
        idx = [i for i in range(n) if i not in skip] if skip else list(range(n))
        vals = [col[i] for i in idx] if skip else col
        if not vals:
            return
        if fr.finite or fr.min is not None or fr.max is not None:
            arr = _floats(vals)
            finite = np.isfinite(arr)
            if fr.finite:
                self.flag([idx[j] for j in np.flatnonzero(~finite).tolist()], name, "finite",
                          Code.NOT_FINITE, lambda i: f"{name} must be finite, got {col[i]!r}")
            outside = np.zeros(len(arr), dtype=np.bool_)
            if fr.min is not None:
                outside |= arr < fr.min
            if fr.max is not None:
                outside |= arr > fr.max
            if fr.finite:
                outside &= finite
            self.flag([idx[j] for j in np.flatnonzero(outside).tolist()], name, "range",
                      Code.OUT_OF_RANGE,
                      lambda i: f"{name} must be in [{fr.min}, {fr.max}], got {_show(col[i])}")
        if fr.allowed is not None:
            self.flag([idx[j] for j in _not_allowed(vals, fr.allowed)], name, "allowed",
                      Code.NOT_ALLOWED, lambda i: f"{name} value {_show(col[i])} is not allowed")
        if fr.max_length is not None:
            lengths = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
            self.flag([idx[j] for j in np.flatnonzero(lengths > fr.max_length).tolist()], name,
                      "max_length", Code.TOO_LONG,
                      lambda i: f"{name} has length {len(col[i])}, at most {fr.max_length}")

    def batch(self, br: MissingShareRule) -> BatchWarning | None:
        name, n = br.field, self.n
        if name not in self.missing:
            self.missing[name] = [i for i, v in enumerate(self.column(name)) if v is None]
        share = len(self.missing[name]) / n if n else 0.0
        if n < br.min_records or share <= br.max_missing_share:
            return None
        text = f"{share:.1%} of {n} records miss {name}, at most {br.max_missing_share:.1%}"
        if br.action == "reject":
            self.flag(self.missing[name], name, "max_missing_share", Code.MISSING_SHARE,
                      lambda i: text)
        return BatchWarning(name, "max_missing_share", Code.MISSING_SHARE, text, br.action, share)


def _check(rules: RuleSet, columns: Mapping[str, Sequence[object]], size: int) -> BatchResult:
    judge = _Judge(columns, size)
    for fr in rules.fields:
        judge.field(fr)
    warnings = tuple(w for w in map(judge.batch, rules.batch) if w is not None)
    return BatchResult(judge.n, {i: tuple(v) for i, v in judge.found.items()}, warnings)
