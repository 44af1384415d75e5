"""Ingest's de-duplication window in fixed memory: staged like the state it replaces, forgetting
the oldest first by count and by age, the batch call equal to the single one, no growth."""

from __future__ import annotations

import random
import tracemalloc
import uuid
from collections.abc import Callable

import pytest

from tidegate.cli.dedupebench import measure_dedupe, render_dedupe
from tidegate.pipeline.dedupe import Dedupe

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000


def ids(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(count)]


def structured(count: int, seed: int = 2) -> list[str]:
    """Ids that differ only in a few bits of one half (time-based UUIDs of one host look so)."""
    low = random.Random(seed).getrandbits(64)
    return [str(uuid.UUID(int=(i << 96) | low)) for i in range(count)]


class Model:
    """The window as plainly as it can be said: lists, oldest first."""

    def __init__(self, max_ids: int, window_ms: int) -> None:
        self.max_ids, self.window_ms = max_ids, window_ms
        self.window: list[tuple[str, int]] = []
        self.kept: list[tuple[str, int]] = []
        self.call: list[tuple[str, int]] = []

    def seen(self, event_id: str, now_ms: int) -> bool:
        while self.window and self.window[0][1] < now_ms - self.window_ms:
            self.window.pop(0)
        key = event_id.lower()
        if any(key == known for known, _ in self.window + self.kept + self.call):
            return True
        self.call.append((key, now_ms))
        return False

    def keep(self) -> None:
        self.kept, self.call = self.kept + self.call, []

    def drop(self) -> None:
        self.call = []

    def commit(self) -> None:
        self.keep()
        self.window, self.kept = (self.window + self.kept)[-self.max_ids:], []


def test_an_id_is_seen_again_in_its_call_but_counts_for_the_window_only_once_committed() -> None:
    dedupe = Dedupe()
    a, b = ids(2)
    assert dedupe.seen(a, T0) is False
    assert dedupe.seen(a, T0) is True  # earlier in this batch
    assert dedupe.seen_many([b, b, a], T0) == [False, True, True]
    assert len(dedupe) == 0
    dedupe.keep()
    assert dedupe.seen(a, T0) is True and len(dedupe) == 0
    dedupe.commit()
    assert len(dedupe) == 2
    assert dedupe.seen_many([a, b], T0 + 1) == [True, True]


def test_a_dropped_call_forgets_its_ids_and_keeps_the_kept_ones() -> None:
    dedupe = Dedupe()
    a, b, c = ids(3)
    dedupe.seen(a, T0)
    dedupe.keep()
    assert dedupe.seen_many([b, c], T0) == [False, False]
    dedupe.drop()  # the handler raised: its call is retried
    assert dedupe.seen_many([a, b], T0) == [True, False]
    dedupe.drop()
    dedupe.commit()
    assert len(dedupe) == 1
    assert [dedupe.seen(x, T0) for x in (a, b, c)] == [True, False, False]


def test_the_oldest_are_forgotten_first_by_count() -> None:
    dedupe = Dedupe(max_ids=3)
    a, b, c, d, e, f, g, h = ids(8)
    for event_id in (a, b, c, d):
        dedupe.seen(event_id, T0)
        dedupe.commit()
    assert len(dedupe) == 3
    assert dedupe.seen_many([a, b, c, d], T0) == [False, True, True, True]
    dedupe.drop()
    assert dedupe.seen_many([e, f, b, g, h], T0) == [False, False, True, False, False]
    dedupe.commit()  # four ids staged for a window of three: the last three stay
    assert len(dedupe) == 3
    assert dedupe.seen_many([b, c, d, e, f, g, h], T0) == [False] * 4 + [True] * 3


def test_the_oldest_are_forgotten_first_by_age_up_to_a_younger_one() -> None:
    dedupe = Dedupe(window_ms=100)
    a, b, c = ids(3)
    dedupe.seen(a, T0)
    dedupe.commit()
    dedupe.seen(b, T0 + 50)
    dedupe.commit()
    dedupe.seen(c, T0 + 20)  # the clock stepped back: c is older than b, but behind it
    dedupe.commit()
    assert dedupe.seen(a, T0 + 100) is True  # not older than the window yet
    dedupe.drop()
    assert dedupe.seen(a, T0 + 101) is False
    dedupe.drop()
    assert len(dedupe) == 2
    assert dedupe.seen(c, T0 + 149) is True  # b still stands before it
    assert dedupe.seen_many([c], T0 + 151) == [False]
    assert len(dedupe) == 0


def test_upper_and_lower_case_text_are_one_id() -> None:
    dedupe = Dedupe()
    [a] = ids(1)
    dedupe.seen(a.upper(), T0)
    assert dedupe.seen_many([a, a.upper()], T0) == [True, True]
    dedupe.commit()
    assert dedupe.seen(a, T0) is True


def test_what_is_not_uuid_text_is_refused() -> None:
    dedupe = Dedupe()
    [a] = ids(1)
    for bad in ("", a[:-1], a.replace("-", "x"), a[:-2] + "zz", "-" + a[:-1]):
        with pytest.raises(ValueError):
            dedupe.seen_many([a, bad], T0)
    for bad in ("", a[:-1], a.replace("-", ""), a[:-2] + "zz"):
        with pytest.raises(ValueError):
            dedupe.seen(bad, T0)
    assert dedupe.seen_many([], T0) == []
    with pytest.raises(ValueError):
        Dedupe(max_ids=0)


@pytest.mark.parametrize("make", [ids, structured])
def test_seen_many_is_seen_on_each_id_in_order(make: Callable[[int], list[str]]) -> None:
    pool = make(3000)
    rng = random.Random(5)
    one, many = Dedupe(max_ids=1500, window_ms=5_000), Dedupe(max_ids=1500, window_ms=5_000)
    now = T0
    for step in range(60):
        now += rng.choice([0, 100, 400, 3000])
        batch = [rng.choice(pool[: 200 + 50 * step]) for _ in range(rng.choice([1, 40, 700]))]
        assert many.seen_many(batch, now) == [one.seen(x, now) for x in batch]
        for dedupe in (one, many):
            if step % 5:
                dedupe.keep()
            else:
                dedupe.drop()
            if step % 3 == 0:
                dedupe.commit()
        assert len(one) == len(many)


@pytest.mark.parametrize("seed", range(12))
def test_random_calls_agree_with_a_plain_model(seed: int) -> None:
    rng = random.Random(seed)
    max_ids, window_ms = rng.choice([1, 2, 7, 50, 300]), rng.choice([0, 30, 500, 10**9])
    pool = ids(rng.choice([5, 60, 400]), seed) + structured(rng.choice([5, 200]), seed)
    pool += [x.upper() for x in rng.sample(pool, 5)]
    dedupe, model = Dedupe(max_ids=max_ids, window_ms=window_ms), Model(max_ids, window_ms)
    now = T0
    for _ in range(400):
        now += rng.choice([0, 0, 1, 5, 40, -3])
        action = rng.random()
        if action < 0.5:
            batch = [rng.choice(pool) for _ in range(rng.choice([0, 1, 3, 30, 120]))]
            expected = [model.seen(x, now) for x in batch]
            got = (dedupe.seen_many(batch, now) if rng.random() < 0.5
                   else [dedupe.seen(x, now) for x in batch])
            assert got == expected
        elif action < 0.65:
            dedupe.keep()
            model.keep()
        elif action < 0.75:
            dedupe.drop()
            model.drop()
        else:
            dedupe.commit()
            model.commit()
        assert len(dedupe) == len(model.window)


def test_a_batch_larger_than_the_pending_area_and_the_window() -> None:
    dedupe = Dedupe(max_ids=100)
    batch = ids(20_000)
    assert dedupe.seen_many(batch, T0) == [False] * 20_000
    assert dedupe.seen_many(batch[::-1], T0) == [True] * 20_000
    dedupe.commit()
    assert len(dedupe) == 100
    assert dedupe.seen_many(batch[-101:], T0) == [False] + [True] * 100


def test_churn_leaves_the_storage_as_it_was_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    rebuilds = 0
    rebuild = Dedupe._rebuild

    def counted(self: Dedupe, extra: int) -> None:
        nonlocal rebuilds
        rebuilds += 1
        rebuild(self, extra)

    monkeypatch.setattr(Dedupe, "_rebuild", counted)
    stream, now = ids(280_000), T0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dedupe = Dedupe(max_ids=5000, window_ms=60_000)
        allocated = dedupe.nbytes
        assert tracemalloc.get_traced_memory()[0] - before == pytest.approx(allocated, abs=16384)

        def churn(start: int, stop: int) -> None:
            nonlocal now
            for offset in range(start, stop, 1000):
                now += 100
                batch = stream[offset:offset + 1000]
                dedupe.seen_many(batch[:900], now)
                for event_id in batch[900:]:
                    dedupe.seen(event_id, now)
                dedupe.keep()
                dedupe.commit()

        churn(0, 80_000)  # the window full, its table rebuilt
        assert rebuilds >= 1
        warm, rebuilds = tracemalloc.get_traced_memory()[0], 0
        churn(80_000, 280_000)  # 200,000 more ids through a window of 5,000
        assert rebuilds >= 2
        assert tracemalloc.get_traced_memory()[0] - warm < 16384
        assert dedupe.nbytes == allocated
        assert len(dedupe) == 5000
    finally:
        tracemalloc.stop()


def test_the_bench_measures_either_call() -> None:
    many = measure_dedupe(count=6000, max_ids=1000, batch=500)
    assert many["call"] == "seen_many" and many["us_per_id"] > 0
    assert many["heap_growth_bytes"] is None
    one = measure_dedupe(count=6000, max_ids=1000, batch=500, many=False, heap=True)
    assert one["call"] == "seen" and isinstance(one["heap_growth_bytes"], int)
    lines = render_dedupe([many, one]).splitlines()
    assert len(lines) == 2 and "by seen_many" in lines[0] and "by seen:" in lines[1]
    with pytest.raises(ValueError):
        measure_dedupe(count=2000, max_ids=1000)
