"""A stage process's garbage collector: collected less often, start-up objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tidegate.errors import ConfigError
from tidegate.runtime.stage import tune_gc
from tidegate.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_a_threshold_collects_less_often_and_freezes_what_exists() -> None:
    gc.unfreeze()
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 20, 100)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_zero_keeps_python_s_collector_as_it_is() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_the_setting_has_a_default_and_refuses_a_negative(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    assert load_settings().gc_threshold == 50_000
    monkeypatch.setenv("TIDEGATE_GC_THRESHOLD", "-1")
    with pytest.raises(ConfigError, match="invalid setting TIDEGATE_GC_THRESHOLD"):
        load_settings()
