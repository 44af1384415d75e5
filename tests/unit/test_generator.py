"""The synthetic transaction generator: shape, determinism, realism, drift, learnable fraud."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from tidegate.codec import Codec
from tidegate.example.generator import (
    CATEGORIES,
    CHANNELS,
    COUNTRIES,
    CURRENCIES,
    ENTRY_MODES,
    TransactionGenerator,
)
from tidegate.example.stream import example_messages

pytestmark = pytest.mark.unit

START = 1_700_000_000_000
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FIELDS: dict[str, tuple[type, ...]] = {
    "event_id": (str,), "event_time": (int,), "account_id": (str,), "merchant_id": (str,),
    "merchant_category": (str,), "amount": (float,), "currency": (str,), "country": (str,),
    "channel": (str,), "card_present": (bool,), "entry_mode": (str,),
    "device_id": (str, type(None)), "ip_address": (str, type(None)),
    "latitude": (float, type(None)), "longitude": (float, type(None)),
    "customer_age": (int, type(None)), "account_age_days": (int,),
    "previous_declines_24h": (int,), "description": (str, type(None)),
}


def frame(seed: int = 1, n: int = 50_000, *, drift: float = 0.0, fraud_rate: float = 0.02,
          events_per_second: float = 1000.0) -> pd.DataFrame:
    gen = TransactionGenerator(seed=seed, start_time_ms=START, drift=drift, fraud_rate=fraud_rate,
                               events_per_second=events_per_second)
    pairs = gen.generate(n)
    df = pd.DataFrame([event for event, _ in pairs])
    df["fraud"] = [label for _, label in pairs]
    return df


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    """About two days of traffic, so every hour of the daily cycle is present."""
    return frame(n=100_000, events_per_second=0.5)


def test_events_have_exactly_the_schema_fields_and_types() -> None:
    for event, label in TransactionGenerator(seed=3, start_time_ms=START).generate(2000):
        assert list(event) == list(FIELDS)
        for name, types in FIELDS.items():
            value = event[name]
            assert type(value) in types, (name, value)
        assert UUID4.match(str(event["event_id"]))
        assert isinstance(label, bool)


def test_values_come_from_the_declared_vocabularies(day: pd.DataFrame) -> None:
    assert set(day.merchant_category) <= set(CATEGORIES)
    assert set(day.currency) <= set(CURRENCIES)
    assert set(day.country) <= set(COUNTRIES)
    assert set(day.channel) == set(CHANNELS)
    assert set(day.entry_mode) == set(ENTRY_MODES)
    assert (day.amount > 0).all() and (day.amount <= 1e6).all()
    assert day.latitude.dropna().between(-90, 90).all()
    assert day.longitude.dropna().between(-180, 180).all()


def test_same_seed_same_stream_and_other_seed_differs() -> None:
    a = TransactionGenerator(seed=5, start_time_ms=START).generate(500)
    b = TransactionGenerator(seed=5, start_time_ms=START).generate(500)
    c = TransactionGenerator(seed=6, start_time_ms=START).generate(500)
    assert a == b
    assert a != c


def test_successive_calls_continue_time_with_unique_ids() -> None:
    gen = TransactionGenerator(seed=2, start_time_ms=START)
    events = [e for e, _ in gen.generate(3000) + gen.generate(3000)]
    times = [int(str(e["event_time"])) for e in events]
    assert times == sorted(times)
    assert times[0] >= START
    assert len({e["event_id"] for e in events}) == len(events)
    assert gen.generate(0) == []


def test_time_advances_at_the_mean_rate_with_a_daily_cycle(day: pd.DataFrame) -> None:
    span_s = (day.event_time.max() - day.event_time.min()) / 1000
    assert 0.85 < span_s / (len(day) / 0.5) < 1.15  # whole days average out the cycle
    per_hour = day.groupby((day.event_time // 3_600_000) % 24).size()
    assert per_hour.loc[12:19].mean() > 3 * per_hour.loc[1:4].mean()


def test_without_the_daily_cycle_time_advances_steadily_even_at_night() -> None:
    night = START - START % 86_400_000 + 3 * 3_600_000  # 03:00 UTC, the quietest hour
    steady = TransactionGenerator(seed=3, start_time_ms=night, events_per_second=1000.0,
                                  daily_cycle=False)
    times = np.array([event["event_time"] for event, _ in steady.generate(60_000)])
    assert np.all(np.diff(times) >= 0)
    assert 55_000 < times[-1] - night < 65_000  # a minute of events at 1,000/s
    cycled = TransactionGenerator(seed=3, start_time_ms=night, events_per_second=1000.0)
    # in the cycle the same events span over five minutes: sent live in one, they ran ahead
    last = cycled.generate(60_000)[-1][0]["event_time"]
    assert isinstance(last, int) and last - night > 5 * 60_000


def test_example_messages_are_timed_for_sending_at_their_rate() -> None:
    codec = Codec()
    began = int(time.time() * 1000)
    messages = list(example_messages(20_000, seed=4, json_share=0.0, events_per_second=2000.0))
    times = [codec.decode(message.value)["event_time"] for message in messages]
    # ten seconds of events at 2,000/s from when they were made, whatever the hour
    assert began <= times[0] and times[-1] - began < 12_000 + (time.time() * 1000 - began)
    assert times[-1] - times[0] > 8_000


def test_channel_and_entry_mode_agree_with_card_presence(day: pd.DataFrame) -> None:
    present = day.card_present
    assert not present[day.channel.isin(["ecommerce", "mobile"])].any()
    assert present[day.channel.isin(["pos", "atm"])].all()
    assert not present[day.entry_mode == "online"].any()
    assert ((day.channel == "atm") == (day.merchant_category == "cash_withdrawal")).all()
    assert day[day.channel == "atm"].entry_mode.isin(["chip", "contactless", "swipe"]).all()
    assert day[~present].latitude.isna().all() and day[present].ip_address.isna().all()


def test_optional_fields_are_sometimes_null_and_sometimes_not(day: pd.DataFrame) -> None:
    for name in ("device_id", "ip_address", "latitude", "longitude", "customer_age",
                 "description"):
        share = day[name].isna().mean()
        assert 0.01 < share < 0.9, name


def test_fraud_rate_matches_the_request(day: pd.DataFrame) -> None:
    assert 0.016 < day.fraud.mean() < 0.024
    assert frame(n=20_000, fraud_rate=0.0).fraud.sum() == 0


def _features(df: pd.DataFrame) -> pd.DataFrame:
    legit = df[~df.fraud]
    usual = legit.groupby("account_id").amount.median()
    home = legit.groupby("account_id").country.agg(lambda s: s.mode().iloc[0])
    hour = (df.event_time // 3_600_000) % 24
    return pd.DataFrame({
        "ratio": df.amount / df.account_id.map(usual).fillna(df.amount.median()),
        "foreign": (df.country != df.account_id.map(home)).astype(float),
        "night": hour.isin(range(6)).astype(float),
        "cnp": (~df.card_present).astype(float),
        "manual": (df.entry_mode == "manual").astype(float),
        "declines": df.previous_declines_24h.astype(float),
        "young": (df.account_age_days < 30).astype(float),
    })


def test_fraud_leaves_learnable_traces(day: pd.DataFrame) -> None:
    feats = _features(day)
    fraud, legit = feats[day.fraud], feats[~day.fraud]
    assert fraud.ratio.mean() > 3 * legit.ratio.mean()
    for name in ("foreign", "night", "cnp", "manual", "declines", "young"):
        assert fraud[name].mean() > 2 * legit[name].mean(), name
    x = feats.assign(ratio=np.log(feats.ratio)).to_numpy()
    half = len(x) // 2
    model = LogisticRegression(max_iter=500).fit(x[:half], day.fraud[:half])
    auc = roc_auc_score(day.fraud[half:], model.predict_proba(x[half:])[:, 1])
    assert auc > 0.9


def test_drift_shifts_the_distributions_measurably() -> None:
    base, drifted = frame(seed=4, n=30_000), frame(seed=4, n=30_000, drift=1.0)
    assert drifted.amount.median() > 1.3 * base.amount.median()
    assert (~drifted.card_present).mean() > (~base.card_present).mean() + 0.1
    home = base.groupby("account_id").country.agg(lambda s: s.mode().iloc[0])
    foreign_base = (base.country != base.account_id.map(home)).mean()
    foreign_drift = (drifted.country != drifted.account_id.map(home)).mean()
    assert foreign_drift > foreign_base + 0.05
    mix = pd.concat([base.merchant_category.value_counts(normalize=True),
                     drifted.merchant_category.value_counts(normalize=True)], axis=1).fillna(0)
    assert 0.5 * (mix.iloc[:, 0] - mix.iloc[:, 1]).abs().sum() > 0.1


def test_drift_can_change_between_calls_and_is_validated() -> None:
    gen = TransactionGenerator(seed=1, start_time_ms=START)
    gen.drift = 0.5
    assert gen.drift == 0.5
    with pytest.raises(ValueError, match="drift"):
        gen.drift = 1.5
    with pytest.raises(ValueError):
        TransactionGenerator(events_per_second=0)


def test_generates_100k_events_quickly() -> None:
    gen = TransactionGenerator(seed=9, start_time_ms=START)
    began = time.perf_counter()
    assert len(gen.generate(100_000)) == 100_000
    assert time.perf_counter() - began < 5.0  # about 0.6 s here; loose for slow CI machines
