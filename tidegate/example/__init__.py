"""The shipped example: card-transaction fraud scoring on a synthetic generator.

``TransactionGenerator`` makes labelled events, ``BadRecordInjector`` corrupts some of them the
way real producers do, and ``rules.toml`` holds the validation rules for the event schema.

>>> rules = example_rules()
>>> gen = TransactionGenerator(seed=1, start_time_ms=1_700_000_000_000)
>>> rules.check([event for event, _ in gen.generate(64)]).ok
True
"""

from __future__ import annotations

from importlib.resources import files

from tidegate.example.badrecords import ALL_KINDS, BadKind, BadRecordInjector, list_kinds
from tidegate.example.generator import TransactionGenerator
from tidegate.pipeline.validation import RuleSet, load_rules

__all__ = [
    "ALL_KINDS",
    "BadKind",
    "BadRecordInjector",
    "TransactionGenerator",
    "example_rules",
    "list_kinds",
]


def example_rules() -> RuleSet:
    """The validation rules shipped with the example (``tidegate/example/rules.toml``)."""
    return load_rules(files("tidegate.example") / "rules.toml")
