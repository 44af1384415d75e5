"""Canary release in inference: a candidate version serves a stable share of the accounts.

A ``canary`` command (``tidegate model canary NAME VERSION --share 0.1``) names a candidate
version of the primary model and a share. Inference loads the candidate outside the batch path
and from then on scores every event whose account hashes below the share with it; the other
events go through the fallback chain as before. The hash is CRC-32 of the account id, so an
account sees one version for the whole canary, in every process and after every restart, and
the split needs no state. Predictions name the version that made them, so monitoring can compare
the candidate's live accuracy and scores with production's and promote or end the canary.

Example::

    slot = CanarySlot(registry)
    slot.refresh(mode)                      # per batch: loads a newly named candidate
    rows = canary_rows(batch.account_ids, mode.canary_share)
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from tidegate.batches import Batch
from tidegate.breaker import BreakerOpenError, CircuitBreaker
from tidegate.control import StageMode
from tidegate.errors import ScoringError
from tidegate.models.registry import PRIMARY, ModelRegistry
from tidegate.models.scoring import ModelScorer
from tidegate.pipeline.inference import ScoreResult

__all__ = ["SCORE_CUTS", "CanarySlot", "ScoreBins", "canary_rows", "score_canary"]

log = logging.getLogger(__name__)

_SPAN = float(1 << 32)
# ten equal score bins: fraud scores crowd under 0.05, and retrained models reorder that crowd
# freely, which quantile bins would count as a shift (the shadow check bins the same way)
SCORE_CUTS = np.linspace(0.1, 0.9, 9)


def canary_rows(account_ids: Sequence[str], share: float) -> np.ndarray:
    """True for the rows whose account belongs to the canary's ``share`` (stable per account).

    >>> canary_rows(["a-1", "a-2"], 0.0).tolist()
    [False, False]
    """
    if share <= 0.0 or not account_ids:
        return np.zeros(len(account_ids), dtype=bool)
    crc = zlib.crc32
    buckets = np.fromiter((crc(account.encode()) for account in account_ids),
                          dtype=np.uint32, count=len(account_ids))
    return buckets < share * _SPAN


def score_canary(batch: Batch, scorer: ModelScorer, share: float, *,
                 breaker: CircuitBreaker | None = None
                 ) -> tuple[tuple[Batch, ScoreResult] | None, Batch]:
    """The canary's rows of ``batch`` scored by the candidate, and the rows left for the chain.

    A failing candidate (or its open breaker) leaves every row to the chain: a canary never
    costs an event its answer.
    """
    rows = canary_rows(batch.account_ids, share)
    if not rows.any():
        return None, batch
    part = batch.take(np.flatnonzero(rows).tolist())
    try:
        scores = (breaker.call_sync(scorer.score, part.features) if breaker is not None
                  else scorer.score(part.features))
    except BreakerOpenError:
        return None, batch
    except ScoringError as exc:
        log.warning("canary %s failed, production answers: %s", scorer.version, exc)
        return None, batch
    rest = batch.take(np.flatnonzero(~rows).tolist())
    return (part, ScoreResult(scores, "primary", scorer.version, scorer.threshold)), rest


class ScoreBins:
    """Counts of the candidate's and production's scores in ``SCORE_CUTS`` bins, per interval.

    Health events carry them (``extra["canary_bins"]``), so monitoring compares the two score
    distributions without decoding a prediction.
    """

    def __init__(self) -> None:
        self.version: str | None = None
        self._counts = {"candidate": np.zeros(len(SCORE_CUTS) + 1, dtype=np.int64),
                        "production": np.zeros(len(SCORE_CUTS) + 1, dtype=np.int64)}

    def add(self, side: str, scores: np.ndarray) -> None:
        self._counts[side] += np.bincount(np.searchsorted(SCORE_CUTS, scores, side="right"),
                                          minlength=len(SCORE_CUTS) + 1)

    def report(self) -> dict[str, str]:
        """The interval's counts as a health-event extra, then zero; {} without a canary."""
        counts = {side: c.tolist() for side, c in self._counts.items()}
        for c in self._counts.values():
            c[:] = 0
        if self.version is None or not any(map(sum, counts.values())):
            return {}
        return {"canary_bins": json.dumps({"version": self.version, **counts},
                                          separators=(",", ":"))}


class CanarySlot:
    """The candidate a ``canary`` command names, loaded in a thread; None while there is none.

    A candidate that cannot be loaded is logged and reported through ``on_error`` once per
    version; the canary's share is then served by production as if there were no canary.
    """

    def __init__(self, registry: ModelRegistry, *, name: str = PRIMARY,
                 on_change: Callable[[ModelScorer | None], None] = lambda scorer: None,
                 on_error: Callable[[str, Exception], None] = lambda version, exc: None) -> None:
        self.registry, self.name = registry, name
        self.scorer: ModelScorer | None = None
        self.breaker: CircuitBreaker | None = None  # the candidate's own, set by its owner
        self.share = 0.0
        self.on_change, self.on_error = on_change, on_error
        self._wanted: str | None = None
        self._failed: set[str] = set()
        self._loading: asyncio.Future[ModelScorer] | None = None

    def active(self) -> ModelScorer | None:
        """The candidate serving now, if the canary is on and its version is loaded."""
        return self.scorer if self.share > 0.0 else None

    def refresh(self, mode: StageMode) -> None:
        """Per batch, in the event loop: follow the newest canary command."""
        wanted, self.share = mode.canary_version, mode.canary_share
        if wanted != self._wanted:
            self._wanted = wanted
            if self.scorer is not None:
                log.warning("canary %s ended", self.scorer.version)
                self.scorer = None
                self.on_change(None)
        if wanted is None or self.scorer is not None or self._loading is not None \
                or wanted in self._failed:
            return
        self._loading = asyncio.get_running_loop().run_in_executor(
            None, ModelScorer.from_registry, self.registry, self.name, wanted)

        def done(future: asyncio.Future[ModelScorer]) -> None:
            self._loading = None
            if future.cancelled():
                return
            exc = future.exception()
            if isinstance(exc, Exception):
                self._failed.add(wanted)
                log.error("cannot serve canary %s %s: %s", self.name, wanted, exc)
                self.on_error(wanted, exc)
            elif exc is None and self._wanted == wanted:  # not ended while it loaded
                self.scorer = future.result()
                log.warning("canary %s serves %.0f%% of the accounts", self.scorer.version,
                            100 * self.share)
                self.on_change(self.scorer)

        self._loading.add_done_callback(done)
