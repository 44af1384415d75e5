"""The status board monitoring keeps: per-stage health, dead letters by code, prediction paths.

Served by the monitoring stage as JSON (``/status``) and Prometheus metrics (``/metrics``, see
``tidegate.monitoring.exposition``), and
printed by ``tidegate status``. ``History`` keeps a bounded series of chart points (``/history``)
computed from successive snapshots.

Example::

    board = StatusBoard(stale_after=10.0)
    board.on_health(event)
    board.snapshot()["stages"]["ingest"]["state"]    # 'up'
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from typing import Any

from tidegate.runtime.metrics import BATCH_SECONDS_BUCKETS, BATCH_SECONDS_PREFIX
from tidegate.topics import STAGE_ORDER

__all__ = ["History", "StatusBoard"]

_TOTALS = ("records_in", "records_out", "dead_lettered", "errors")


class StatusBoard:
    """What monitoring knows about every stage, built from health events and predictions."""

    def __init__(self, *, stale_after: float = 10.0) -> None:
        self.stale_after = stale_after
        self._latest: dict[str, dict[str, tuple[float, Mapping[str, Any]]]] = {}
        self._totals: dict[str, Counter[str]] = {}
        self._codes: dict[str, Counter[str]] = {}
        # per stage: batches per duration bucket (bounds as health events name them) and seconds
        self._batches: dict[str, Counter[str]] = {}
        self._batch_seconds: defaultdict[str, float] = defaultdict(float)
        self.paths: Counter[str] = Counter()
        self.predicted = 0
        self.flagged = 0

    def on_health(self, event: Mapping[str, Any], *, now: float | None = None) -> None:
        stage = str(event["stage"])
        received = time.time() if now is None else now
        self._latest.setdefault(stage, {})[str(event["instance"])] = (received, event)
        totals = self._totals.setdefault(stage, Counter())
        for name in _TOTALS:
            totals[name] += int(event.get(name, 0))
        self._codes.setdefault(stage, Counter()).update(event.get("dead_letters_by_code", {}))
        for name, value in event.get("extra", {}).items():
            if name.startswith(BATCH_SECONDS_PREFIX):
                self._on_batch_seconds(stage, name.removeprefix(BATCH_SECONDS_PREFIX), value)
            elif name.startswith("predictions.") and str(value).isdigit():
                kind = name.removeprefix("predictions.")
                if kind == "flagged":
                    self.flagged += int(value)
                else:
                    self.paths[kind] += int(value)
                    self.predicted += int(value)

    def _on_batch_seconds(self, stage: str, part: str, value: str) -> None:
        try:
            amount = float(value)
        except ValueError:
            return
        if part == "sum":
            self._batch_seconds[stage] += amount
        elif part.startswith("le."):
            self._batches.setdefault(stage, Counter())[part.removeprefix("le.")] += int(amount)

    def batch_durations(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """Per stage, the cumulative batch count at or under each bound (``+Inf`` last, as
        Prometheus histograms give them) and the seconds of all batches together."""
        bounds = [f"{b:g}" for b in BATCH_SECONDS_BUCKETS] + ["+Inf"]
        out: dict[str, tuple[list[tuple[str, int]], float]] = {}
        for stage, counts in self._batches.items():
            running, cumulative = 0, list[tuple[str, int]]()
            for bound in bounds:
                running += counts[bound]
                cumulative.append((bound, running))
            out[stage] = (cumulative, self._batch_seconds[stage])
        return out

    def on_predictions(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.predicted += 1
            self.paths[str(record["path"])] += 1
            self.flagged += bool(record["label"])

    def snapshot(self, *, now: float | None = None) -> dict[str, Any]:
        """The whole board as plain data."""
        now = time.time() if now is None else now
        stages = {}
        for stage in (*STAGE_ORDER, *sorted(set(self._latest) - set(STAGE_ORDER))):
            instances = self._latest.get(stage, {})
            live = {name: event for name, (at, event) in instances.items()
                    if now - at <= self.stale_after}
            state = "up" if live else ("stale" if instances else "unknown")
            newest = max(instances.values(), key=lambda item: item[0])[1] if instances else {}
            stages[stage] = {
                "state": state,
                "instances": sorted(live),
                **{name: self._totals.get(stage, Counter())[name] for name in _TOTALS},
                "dead_letters_by_code": dict(self._codes.get(stage, Counter())),
                "lag": sum(int(event.get("lag", 0)) for event in live.values()),
                "latency_p50_ms": float(newest.get("latency_p50_ms", 0.0)),
                "latency_p99_ms": float(newest.get("latency_p99_ms", 0.0)),
                "mode": newest.get("mode", "-"),
                "paused": any(bool(event.get("paused")) for event in live.values()),
                "pause_reason": next((event.get("pause_reason") for event in live.values()
                                      if event.get("paused")), None),
                "breakers": dict(newest.get("breakers", {})),
                "model_version": newest.get("model_version"),
            }
        return {"time": now, "stages": stages,
                "predictions": {"total": self.predicted, "flagged": self.flagged,
                                "by_path": dict(self.paths)}}


class History:
    """A ring buffer of chart points, one per status snapshot recorded.

    A point holds the time, predictions and dead letters per second, p99 latency and lag of every
    stage that is up, and the system crisis level (``None`` until monitoring reports one). A rate
    is the growth of the totals over the last ``window`` points divided by the time between them
    (``None`` for the first point and after the totals went back). Stages report in chunks on
    their own timers, so a window of a few points keeps a steady stream from charting as a saw.

    Example::

        history = History(size=720)
        history.record(board.snapshot(now=t0))
        history.record(board.snapshot(now=t0 + 2.0))
        history.points()[-1]["predictions_per_s"]    # e.g. 250.0
    """

    def __init__(self, *, size: int = 720, window: int = 3) -> None:
        if size < 1 or window < 1:
            raise ValueError(f"a history needs a size and a window of at least 1, not "
                             f"{size} and {window}")
        self.size = size
        self._points: deque[dict[str, Any]] = deque(maxlen=size)
        # (time, predictions, dead letters) of the newest points, the oldest the rate's base
        self._totals: deque[tuple[float, int, int]] = deque(maxlen=window + 1)

    def __len__(self) -> int:
        return len(self._points)

    def record(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Append the point of ``snapshot`` (a ``StatusBoard.snapshot()``) and return it."""
        now = float(snapshot["time"])
        stages: Mapping[str, Mapping[str, Any]] = snapshot.get("stages") or {}
        predicted = int((snapshot.get("predictions") or {}).get("total", 0))
        dead = sum(int(info.get("dead_lettered", 0)) for info in stages.values())
        live = {stage: info for stage, info in stages.items() if info.get("state") == "up"}
        crisis = snapshot.get("crisis")
        level = crisis.get("system") if isinstance(crisis, Mapping) else None
        if self._totals and (predicted < self._totals[-1][1] or dead < self._totals[-1][2]):
            self._totals.clear()  # monitoring's board restarted: no rate spans the restart
        self._totals.append((now, predicted, dead))
        point = {
            "time": now,
            "predictions_per_s": self._rate(1),
            "dead_letters_per_s": self._rate(2),
            "latency_p99_ms": {stage: float(info.get("latency_p99_ms", 0.0))
                               for stage, info in live.items()},
            "lag": {stage: int(info.get("lag", 0)) for stage, info in live.items()},
            "level": level if isinstance(level, str) else None,
        }
        self._points.append(point)
        return point

    def points(self, *, since: float | None = None) -> list[dict[str, Any]]:
        """The points oldest first; with ``since``, only those recorded after that time."""
        if since is None:
            return list(self._points)
        return [point for point in self._points if point["time"] > since]

    def _rate(self, index: int) -> float | None:
        base, newest = self._totals[0], self._totals[-1]
        elapsed = newest[0] - base[0]
        return round((newest[index] - base[index]) / elapsed, 3) if elapsed > 0 else None
