"""Features: column transforms, per-account state, imputation and quality flags."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tidegate.example import generator
from tidegate.pipeline.feature import (
    CHANNELS,
    ENTRY_MODES,
    FEATURE_NAMES,
    MERCHANT_CATEGORIES,
    AccountState,
    compute_features,
    decode_state,
    encode_state,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
HOUR = 3_600_000
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _rec(
    account: str = "acct-1", t: int = T0, amount: float = 20.0, **extra: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": f"e-{account}-{t}", "event_time": t, "account_id": account,
        "merchant_id": "m-1", "merchant_category": "grocery", "amount": amount,
        "currency": "EUR", "country": "DE", "channel": "pos", "card_present": True,
        "entry_mode": "chip", "device_id": None, "ip_address": None, "latitude": None,
        "longitude": None, "customer_age": 35, "account_age_days": 400,
        "previous_declines_24h": 0, "description": None,
    }  # fmt: skip
    record.update(extra)
    return record


def _history(
    records: list[dict[str, Any]],
) -> tuple[np.ndarray, list[str], dict[str, AccountState | None]]:
    states: dict[str, AccountState | None] = {}
    batch, new = compute_features(records, states, now_ms=T0)
    states.update(new)
    return batch.matrix, batch.quality, states


def test_vector_is_stable_and_vocabularies_cover_the_generator() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert set(generator.CATEGORIES) <= set(MERCHANT_CATEGORIES)
    assert set(generator.CHANNELS) <= set(CHANNELS)
    assert set(generator.ENTRY_MODES) <= set(ENTRY_MODES)
    batch, _ = compute_features([], {}, now_ms=T0)
    assert batch.matrix.shape == (0, len(FEATURE_NAMES))


def test_first_transaction_is_imputed_and_flagged() -> None:
    matrix, quality, states = _history([_rec(amount=99.0)])
    row = matrix[0]
    assert quality == ["no_state"]
    assert row[COL["state_imputed"]] == 1.0
    assert row[COL["amount_to_account_mean"]] == 1.0
    assert row[COL["amount_zscore"]] == 0.0
    assert row[COL["amount_log1p"]] == pytest.approx(np.log1p(99.0))
    assert states["acct-1"] is not None and states["acct-1"]["n"] == 1


def test_one_hot_columns_and_unknown_values_go_to_other() -> None:
    matrix, _, _ = _history([_rec(merchant_category="space_travel", channel="atm")])
    assert matrix[0, COL["merchant_other"]] == 1.0
    assert matrix[0, COL["channel_atm"]] == 1.0
    assert matrix[0, COL["entry_chip"]] == 1.0
    one_hot = [i for name, i in COL.items() if name.startswith(("merchant_", "channel_", "entry_"))]
    assert matrix[0, one_hot].sum() == 3.0


def test_records_of_one_account_see_each_other_in_event_time_order() -> None:
    later, earlier = _rec(t=T0 + 60_000, amount=500.0), _rec(t=T0, amount=10.0)
    matrix, quality, states = _history([later, earlier, _rec("acct-2")])
    assert quality == ["ok", "no_state", "no_state"]
    assert matrix[1, COL["state_imputed"]] == 1.0
    assert matrix[0, COL["txn_count_window"]] == 1.0
    assert matrix[0, COL["amount_sum_window_log1p"]] == pytest.approx(np.log1p(10.0))
    assert matrix[0, COL["amount_to_account_mean"]] == pytest.approx(50.0)
    assert matrix[0, COL["seconds_since_last_log1p"]] == pytest.approx(np.log1p(60.0))
    assert states["acct-1"] is not None and states["acct-1"]["n"] == 2


def test_window_counts_only_recent_events_and_zscore_flags_outliers() -> None:
    records = [_rec(t=T0 + k * 10 * 60_000, amount=20.0 + k % 3) for k in range(12)]
    _, _, states = _history(records)
    probe = _rec(t=T0 + 12 * 10 * 60_000, amount=2000.0)
    batch, _ = compute_features([probe], states, now_ms=T0)
    row = batch.matrix[0]
    assert row[COL["txn_count_window"]] == 5.0  # the events of the last hour, exclusive
    assert row[COL["amount_zscore"]] > 10.0
    assert row[COL["amount_to_account_mean"]] > 50.0


def test_foreign_uses_the_home_country_from_state() -> None:
    _, _, states = _history([_rec(t=T0 + k) for k in range(3)])
    batch, _ = compute_features(
        [_rec(t=T0 + 10, country="NG"), _rec("acct-9", t=T0 + 10, country="NG")],
        states,
        now_ms=T0,
    )
    assert batch.matrix[:, COL["foreign"]].tolist() == [1.0, 0.0]


def test_stale_and_unreadable_state_degrade_to_imputed_values() -> None:
    _, _, states = _history([_rec(t=T0)])
    states["acct-bad"] = {"n": "many"}  # type: ignore[assignment]
    late = _rec(t=T0 + 40 * 24 * HOUR)
    batch, new = compute_features([late, _rec("acct-bad")], states, now_ms=late["event_time"])
    assert batch.quality == ["stale_state", "bad_state"]
    assert batch.matrix[:, COL["state_imputed"]].tolist() == [1.0, 1.0]
    assert new["acct-1"]["n"] == 1 and new["acct-bad"]["n"] == 1


def test_missing_age_is_imputed_and_out_of_order_is_flagged() -> None:
    _, _, states = _history([_rec(t=T0 + HOUR)])
    batch, _ = compute_features([_rec(t=T0, customer_age=None)], states, now_ms=T0)
    assert batch.quality == ["imputed_age,out_of_order"]
    assert batch.matrix[0, COL["customer_age"]] == 40.0
    assert batch.matrix[0, COL["customer_age_missing"]] == 1.0


def test_state_is_plain_bounded_data_and_inputs_are_not_mutated() -> None:
    records = [
        _rec(t=T0 + k * 1000, country=("DE", "FR", "NG", "US", "JP", "TH")[k % 6])
        for k in range(300)
    ]
    _, _, states = _history(records[:1])
    before = json.dumps(states, sort_keys=True)
    _, new = compute_features(records, states, now_ms=T0)
    assert json.dumps(states, sort_keys=True) == before
    state = new["acct-1"]
    assert json.loads(json.dumps(state)) == state
    assert len(state["times"]) == len(state["amounts"]) <= 50
    assert len(state["countries"]) <= 4
    assert state["n"] == 301


def test_one_batch_equals_record_by_record_with_state_carried() -> None:
    gen = generator.TransactionGenerator(seed=3, accounts=40, start_time_ms=T0,
                                         events_per_second=0.05)  # fmt: skip
    records = [event for event, _ in gen.generate(400)]
    whole, _ = compute_features(records, {}, now_ms=T0)
    states: dict[str, AccountState | None] = {}
    rows = []
    for record in records:
        single, new = compute_features([record], states, now_ms=T0)
        states.update(new)
        rows.append(single.matrix[0])
    np.testing.assert_allclose(whole.matrix, np.vstack(rows), rtol=1e-12, atol=1e-12)
    assert np.isfinite(whole.matrix).all()


def _states_after(records: list[dict[str, Any]]) -> dict[str, AccountState]:
    _, states = compute_features(records, {}, now_ms=T0)
    return states


def test_state_bytes_round_trip_and_the_first_json_layout_still_reads() -> None:
    records = [_rec(t=T0 + k * 60_000, amount=10.0 + k, country=("DE", "FR")[k % 2])
               for k in range(80)]
    state = _states_after(records)["acct-1"]
    data = encode_state(state)
    assert decode_state(data) == state
    assert len(state["times"]) == 50  # a full ring, the largest state
    legacy = json.dumps(state, separators=(",", ":")).encode()
    assert decode_state(legacy) == state
    assert len(data) < len(legacy)


@pytest.mark.parametrize("data", [
    b"", b"\x02\x00", b"\x07" + bytes(60), b'{"n": "many"}', b"{not json",
    encode_state(_states_after([_rec()])["acct-1"])[:-3],  # countries cut short
    encode_state(_states_after([_rec()])["acct-1"])[:-2] + b"[]",  # countries not an object
])
def test_unreadable_state_bytes_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_state(data)


def test_a_restored_state_scores_like_the_one_kept_in_memory() -> None:
    first = [_rec(t=T0 + k * 60_000, amount=5.0 * (k + 1)) for k in range(20)]
    later = [_rec(t=T0 + 30 * 60_000 + k * 1000, amount=300.0) for k in range(3)]
    kept = _states_after(first)
    restored = {key: decode_state(encode_state(value)) for key, value in kept.items()}
    from_memory, _ = compute_features(later, dict(kept), now_ms=T0)
    from_changelog, _ = compute_features(later, dict(restored), now_ms=T0)
    np.testing.assert_array_equal(from_memory.matrix, from_changelog.matrix)
    assert from_memory.quality == from_changelog.quality


def test_state_the_store_could_not_decode_is_flagged_bad() -> None:
    batch, _ = compute_features([_rec()], {"acct-1": b"\x09junk"}, now_ms=T0)  # type: ignore[dict-item]
    assert "bad_state" in batch.quality[0]
