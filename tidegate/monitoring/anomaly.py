"""Per-stage signals from health events: windowed rates, z-score anomalies, trends, latency.

Every detector takes the time it is told (seconds, any clock) and never reads a clock, so the
same code runs live and in tests. :class:`StageWatch` combines them for one stage and says what is
wrong right now as :class:`~tidegate.monitoring.alerting.Finding` values.

Example::

    watch = StageWatch("validation", WatchConfig(latency_objective_ms=500.0))
    watch.observe(health_event, now=time.time())
    [f.kind for f in watch.findings(now=time.time())]    # ['dead_letter_rate']
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidegate.monitoring.alerting import Finding, Severity

__all__ = [
    "LatencyObjective", "SlidingRate", "StageWatch", "Trend", "TrendDetector", "WatchConfig",
    "ZScore", "ZScoreDetector",
]  # fmt: skip


class SlidingRate:
    """``count / records`` over the last ``window`` seconds (e.g. errors per record consumed).

    >>> rate = SlidingRate(60.0)
    >>> rate.add(0.0, count=5, records=100); rate.add(30.0, count=0, records=100)
    >>> rate.rate(30.0), rate.rate(61.0)
    (0.025, 0.0)
    """

    def __init__(self, window: float, *, max_entries: int = 10_000) -> None:
        self.window = window
        self._entries: deque[tuple[float, int, int]] = deque(maxlen=max_entries)
        self._count = self._records = 0

    def add(self, now: float, *, count: int, records: int) -> None:
        if len(self._entries) == self._entries.maxlen:
            self._pop()
        self._entries.append((now, count, records))
        self._count += count
        self._records += records

    def _pop(self) -> None:
        _, count, records = self._entries.popleft()
        self._count -= count
        self._records -= records

    def totals(self, now: float) -> tuple[int, int]:
        """(count, records) inside the window ending at ``now``."""
        while self._entries and self._entries[0][0] <= now - self.window:
            self._pop()
        return self._count, self._records

    def rate(self, now: float, *, min_records: int = 1) -> float | None:
        """The rate, or None with fewer than ``min_records`` records in the window."""
        count, records = self.totals(now)
        return count / records if records >= max(min_records, 1) else None


@dataclass(frozen=True)
class ZScore:
    """One value scored against its baseline."""

    value: float
    mean: float
    std: float
    z: float
    anomalous: bool


class ZScoreDetector:
    """Rising values scored against the mean and std of the last ``baseline`` normal values.

    The std is at least ``min_std``: a perfectly flat baseline (zero errors for an hour) must not
    make one error an infinite z. Only rises count. Anomalous values stay out of the baseline, so
    a lasting failure stays anomalous instead of becoming the norm, until ``adapt_after``
    anomalies in a row: then the new level is accepted as the baseline (None: never).

    >>> detector = ZScoreDetector(min_baseline=3, min_std=0.01)
    >>> [detector.observe(v) for v in (0.0, 0.0, 0.0)]
    [None, None, None]
    >>> detector.observe(0.5).anomalous
    True
    """

    def __init__(self, *, threshold: float = 4.0, baseline: int = 60, min_baseline: int = 10,
                 min_std: float = 0.01, adapt_after: int | None = 60) -> None:  # fmt: skip
        if not 1 <= min_baseline <= baseline or min_std <= 0:
            raise ValueError("need 1 <= min_baseline <= baseline and min_std > 0")
        if adapt_after is not None and adapt_after < min_baseline:
            raise ValueError("adapt_after must be at least min_baseline, to judge the new level")
        self.threshold, self.min_baseline, self.min_std = threshold, min_baseline, min_std
        self._baseline: deque[float] = deque(maxlen=baseline)
        self._streak: deque[float] = deque(maxlen=adapt_after or 1)
        self.adapt_after = adapt_after

    def observe(self, value: float) -> ZScore | None:
        """Score ``value`` (None while the baseline is short), then learn from it."""
        if len(self._baseline) < self.min_baseline:
            self._baseline.append(value)
            return None
        n = len(self._baseline)
        mean = math.fsum(self._baseline) / n
        std = max(math.sqrt(math.fsum((v - mean) ** 2 for v in self._baseline) / n),
                  self.min_std)  # fmt: skip
        z = (value - mean) / std
        anomalous = z >= self.threshold
        if not anomalous:
            self._streak.clear()
            self._baseline.append(value)
        else:
            self._streak.append(value)
            if self.adapt_after is not None and len(self._streak) >= self.adapt_after:
                self._baseline.clear()
                self._baseline.extend(self._streak)
                self._streak.clear()
        return ZScore(value, mean, std, z, anomalous)


@dataclass(frozen=True)
class Trend:
    """Least-squares slope of the recent points, its t statistic, and the rise it implies."""

    slope: float  # units per second
    t: float
    rise: float  # slope times the time the points span
    rising: bool


class TrendDetector:
    """A significant rise over the last ``window`` points: t >= ``t_threshold`` and
    rise >= ``min_rise`` (so a steady climb from 3 to 5 is not news).

    >>> trend = TrendDetector(window=5, min_points=5, min_rise=10.0)
    >>> [trend.observe(float(t), 100.0 * t) for t in range(5)][-1].rising
    True
    """

    def __init__(self, *, window: int = 15, min_points: int = 8, t_threshold: float = 4.0,
                 min_rise: float = 0.0) -> None:  # fmt: skip
        if not 3 <= min_points <= window:
            raise ValueError("need 3 <= min_points <= window")
        self.min_points, self.t_threshold, self.min_rise = min_points, t_threshold, min_rise
        self._points: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(self, now: float, value: float) -> Trend | None:
        """Add a point; the trend of the window, or None with too few points or one instant."""
        self._points.append((now, value))
        n = len(self._points)
        if n < self.min_points:
            return None
        ts = [t for t, _ in self._points]
        t_mean, v_mean = math.fsum(ts) / n, math.fsum(v for _, v in self._points) / n
        sxx = math.fsum((t - t_mean) ** 2 for t in ts)
        if sxx <= 0:
            return None
        slope = math.fsum((t - t_mean) * (v - v_mean) for t, v in self._points) / sxx
        residual = math.fsum((v - v_mean - slope * (t - t_mean)) ** 2 for t, v in self._points)
        se = math.sqrt(residual / (n - 2) / sxx)
        t_stat = slope / se if se > 0 else math.copysign(math.inf, slope) if slope else 0.0
        rise = slope * (ts[-1] - ts[0])
        return Trend(slope, t_stat, rise, t_stat >= self.t_threshold and rise >= self.min_rise)


class LatencyObjective:
    """Breached when the p99 was over ``objective_ms`` for ``consecutive`` intervals in a row.

    >>> slo = LatencyObjective(100.0, consecutive=2)
    >>> slo.observe(150.0), slo.observe(150.0), slo.observe(50.0)
    (False, True, False)
    """

    def __init__(self, objective_ms: float, *, consecutive: int = 3) -> None:
        if consecutive < 1:
            raise ValueError("consecutive must be at least 1")
        self.objective_ms, self.consecutive = objective_ms, consecutive
        self.streak = 0

    def observe(self, p99_ms: float) -> bool:
        self.streak = self.streak + 1 if p99_ms > self.objective_ms else 0
        return self.streak >= self.consecutive


@dataclass(frozen=True, kw_only=True)
class WatchConfig:
    """Thresholds of one stage; rates are shares of the records consumed."""

    rate_window: float = 60.0  # seconds; also how long a detector's last word counts
    min_window_records: int = 200  # fewer records in the window: no rate judged
    error_rate_warning: float = 0.05
    error_rate_critical: float = 0.25
    dead_letter_rate_warning: float = 0.05
    dead_letter_rate_critical: float = 0.25
    anomaly_z: float = 4.0
    anomaly_baseline: int = 60  # health intervals
    anomaly_min_baseline: int = 10
    anomaly_min_std: float = 0.01
    anomaly_min_records: int = 50  # an interval with fewer records is too noisy to score
    error_anomaly_severity: Severity = "warning"
    lag_trend_window: int = 15
    lag_trend_min_points: int = 8
    lag_trend_t: float = 4.0
    lag_trend_min_rise: float = 1000.0  # records
    latency_objective_ms: float | None = None
    latency_consecutive: int = 3
    latency_critical_factor: float = 4.0  # this many times the objective is critical


class StageWatch:
    """Rates, anomalies, lag trend and latency objectives of one stage (all its instances)."""

    def __init__(self, stage: str, config: WatchConfig | None = None) -> None:
        self.stage, cfg = stage, config or WatchConfig()
        self.config = cfg
        self.errors = SlidingRate(cfg.rate_window)
        self.dead_letters = SlidingRate(cfg.rate_window)
        self._z = {kind: ZScoreDetector(threshold=cfg.anomaly_z, baseline=cfg.anomaly_baseline,
                                        min_baseline=cfg.anomaly_min_baseline,
                                        min_std=cfg.anomaly_min_std)
                   for kind in ("error_rate", "dead_letter_rate")}  # fmt: skip
        self._trend = TrendDetector(window=cfg.lag_trend_window, t_threshold=cfg.lag_trend_t,
                                    min_points=cfg.lag_trend_min_points,
                                    min_rise=cfg.lag_trend_min_rise)  # fmt: skip
        objective = cfg.latency_objective_ms
        self._slo = None if objective is None else (
            LatencyObjective(objective, consecutive=cfg.latency_consecutive),
            LatencyObjective(objective * cfg.latency_critical_factor,
                             consecutive=cfg.latency_consecutive))  # fmt: skip
        self._lags: dict[str, tuple[float, int]] = {}  # instance -> (when, lag)
        self._latest: dict[str, tuple[float, Any]] = {}  # signal -> (when, last verdict)

    def observe(self, event: Mapping[str, Any], now: float) -> None:
        """Feed one health event of this stage."""
        records = int(event.get("records_in", 0))
        errors, dead = int(event.get("errors", 0)), int(event.get("dead_lettered", 0))
        self.errors.add(now, count=errors, records=records)
        self.dead_letters.add(now, count=dead, records=records)
        if records >= self.config.anomaly_min_records:
            for kind, count in (("error_rate", errors), ("dead_letter_rate", dead)):
                self._latest[kind] = (now, self._z[kind].observe(count / records))
        self._lags[str(event.get("instance", ""))] = (now, int(event.get("lag", 0)))
        self._lags = {i: v for i, v in self._lags.items() if v[0] > now - self.config.rate_window}
        if not event.get("paused"):  # a paused stage's lag grows on purpose
            lag = sum(lag for _, lag in self._lags.values())
            self._latest["lag"] = (now, self._trend.observe(now, float(lag)))
        if self._slo is not None and records > 0:
            p99 = float(event.get("latency_p99_ms", 0.0))
            self._latest["latency"] = (now, (p99, *(slo.observe(p99) for slo in self._slo)))

    def _recent(self, signal: str, now: float) -> Any:
        when, verdict = self._latest.get(signal, (-math.inf, None))
        return verdict if now - when <= self.config.rate_window else None

    def findings(self, now: float) -> list[Finding]:
        """What is wrong with the stage at ``now``; empty when nothing is."""
        cfg, out = self.config, []
        for kind, window, warn, crit in (
            ("error_rate", self.errors, cfg.error_rate_warning, cfg.error_rate_critical),
            ("dead_letter_rate", self.dead_letters, cfg.dead_letter_rate_warning,
             cfg.dead_letter_rate_critical),
        ):
            rate = window.rate(now, min_records=cfg.min_window_records)
            if rate is not None and rate >= warn:
                severity: Severity = "critical" if rate >= crit else "warning"
                out.append(self._finding(kind, severity, f"{kind} {rate:.1%} over "
                                         f"{cfg.rate_window:g} s", rate=f"{rate:.6f}",
                                         warning=f"{warn:g}", critical=f"{crit:g}"))  # fmt: skip
            z = self._recent(kind, now)
            if isinstance(z, ZScore) and z.anomalous:
                severity = cfg.error_anomaly_severity if kind == "error_rate" else "warning"
                out.append(self._finding(
                    f"{kind}_anomaly", severity,
                    f"{kind} {z.value:.1%} is {z.z:.1f} std above its baseline {z.mean:.1%}",
                    rate=f"{z.value:.6f}", mean=f"{z.mean:.6f}", std=f"{z.std:.6f}",
                    z=f"{z.z:.2f}", threshold=f"{cfg.anomaly_z:g}"))  # fmt: skip
        trend = self._recent("lag", now)
        if isinstance(trend, Trend) and trend.rising:
            out.append(self._finding("lag_trend", "warning",
                                     f"lag rising {trend.slope:.1f}/s (+{trend.rise:.0f})",
                                     slope=f"{trend.slope:.3f}", t=f"{trend.t:.2f}",
                                     rise=f"{trend.rise:.0f}"))  # fmt: skip
        latency = self._recent("latency", now)
        if latency is not None and self._slo is not None and latency[1]:
            p99, _, critical = latency
            objective = self._slo[1 if critical else 0].objective_ms
            out.append(self._finding("latency", "critical" if critical else "warning",
                                     f"p99 {p99:.0f} ms over {objective:g} ms for "
                                     f"{cfg.latency_consecutive} intervals",
                                     p99_ms=f"{p99:.1f}", objective_ms=f"{objective:g}"))
        return out

    def _finding(self, kind: str, severity: Severity, message: str, **details: str) -> Finding:
        return Finding(key=f"{self.stage}/{kind}", severity=severity, stage=self.stage,
                       kind=kind, message=f"{self.stage}: {message}", details=details)
