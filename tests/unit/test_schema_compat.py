"""Every schema stays backward compatible: records written with its previous version still read.

tests/unit/previous_schemas holds the released version of each schema. When a release changes a
schema, copy the released file there first; this test then reads records generated with the old
version through the new one, the way a stage reads a topic that still holds old records.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fastavro.utils import generate_many

from tidegate.codec import AvroSchema
from tidegate.errors import CodecError

pytestmark = pytest.mark.unit

PREVIOUS = Path(__file__).parent / "previous_schemas"
CURRENT = importlib.resources.files("tidegate") / "schemas"
RECORDS_PER_SCHEMA = 200  # enough to take every union branch many times


def _load(text: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(text)
    return raw


def backward_incompatibility(
    previous: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """Why records written with ``previous`` cannot be read with ``current``; None if they can."""
    old, new = AvroSchema.from_json(dict(previous)), AvroSchema.from_json(dict(current))
    for record in generate_many(dict(previous), RECORDS_PER_SCHEMA):
        try:
            old.read(old.write(record), new)
        except CodecError as exc:
            return f"{exc.code}: {exc}"
    return None


def test_every_current_schema_has_a_previous_version() -> None:
    current = sorted(entry.name for entry in CURRENT.iterdir() if entry.name.endswith(".avsc"))
    previous = sorted(path.name for path in PREVIOUS.glob("*.avsc"))
    missing = sorted(set(current) - set(previous))
    assert not missing, f"copy the released version of {missing} to {PREVIOUS.name}/"


@pytest.mark.parametrize("filename", sorted(p.name for p in PREVIOUS.glob("*.avsc")))
def test_current_schema_reads_records_of_the_previous_version(filename: str) -> None:
    previous = _load((PREVIOUS / filename).read_text("utf-8"))
    name = f"{previous.get('namespace', '')}.{previous['name']}".lstrip(".")
    current_file = CURRENT / filename
    if not current_file.is_file():
        pytest.fail(f"{name}: schemas/{filename} was removed; topics may still hold its records")
    why = backward_incompatibility(previous, _load(current_file.read_text("utf-8")))
    if why is not None:
        pytest.fail(f"{name} (schemas/{filename}) is not backward compatible with its previous "
                    f"version: {why}")


def _card_transaction() -> dict[str, Any]:
    return _load((CURRENT / "card_transaction.avsc").read_text("utf-8"))


def _with(raw: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = copy.deepcopy(raw)
    change(changed["fields"])
    return changed


def test_the_check_detects_a_new_field_without_a_default() -> None:
    previous = _card_transaction()
    current = _with(previous, lambda fields: fields.append({"name": "risk_band", "type": "string"}))
    why = backward_incompatibility(previous, current)
    assert why is not None and "INCOMPATIBLE_SCHEMA" in why and "risk_band" in why


def test_the_check_detects_a_changed_type() -> None:
    previous = _card_transaction()

    def amount_to_string(fields: list[dict[str, Any]]) -> None:
        next(f for f in fields if f["name"] == "amount")["type"] = "string"

    assert backward_incompatibility(previous, _with(previous, amount_to_string)) is not None


def test_the_check_detects_a_dropped_union_branch() -> None:
    previous = _card_transaction()

    def age_not_nullable(fields: list[dict[str, Any]]) -> None:
        field = next(f for f in fields if f["name"] == "customer_age")
        field["type"], field["default"] = "int", 0

    assert backward_incompatibility(previous, _with(previous, age_not_nullable)) is not None


def test_the_check_accepts_compatible_changes() -> None:
    previous = _card_transaction()

    def evolve(fields: list[dict[str, Any]]) -> None:
        fields.append({"name": "risk_band", "type": "string", "default": "unknown"})
        next(f for f in fields if f["name"] == "account_age_days")["type"] = "long"  # promotion
        fields.remove(next(f for f in fields if f["name"] == "description"))

    assert backward_incompatibility(previous, _with(previous, evolve)) is None
