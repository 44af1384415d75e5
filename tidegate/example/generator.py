"""Synthetic card transactions with fraud labels, drift and a daily cycle.

Every column is drawn for a whole batch at once with numpy; only the final dicts are built per
event. Fraud leaves learnable traces: amounts far above the account's usual spend, foreign
countries, night hours (UTC), card-not-present and manual or swiped entry, recent declines,
young accounts and a small set of risky merchants. Amounts are in the account's billing
currency, so an account's amounts are comparable with each other.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "COUNTRIES",
    "CURRENCIES",
    "ENTRY_MODES",
    "TransactionGenerator",
]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

# category: (share, drifted share, fraud share, log-mean USD, log-sigma, card-not-present share)
_CAT_TABLE: dict[str, tuple[float, float, float, float, float, float]] = {
    "grocery": (0.22, 0.15, 0.03, 3.6, 0.7, 0.05),
    "restaurants": (0.14, 0.10, 0.02, 3.2, 0.6, 0.10),
    "fuel": (0.09, 0.06, 0.04, 3.7, 0.4, 0.02),
    "retail": (0.13, 0.11, 0.10, 3.9, 0.9, 0.20),
    "online_retail": (0.11, 0.20, 0.17, 3.8, 0.9, 1.00),
    "digital_goods": (0.04, 0.09, 0.12, 2.5, 0.8, 1.00),
    "electronics": (0.04, 0.08, 0.16, 5.0, 0.9, 0.40),
    "travel": (0.04, 0.07, 0.10, 5.6, 0.8, 0.60),
    "entertainment": (0.05, 0.05, 0.03, 3.4, 0.7, 0.40),
    "utilities": (0.04, 0.03, 0.01, 4.4, 0.5, 0.90),
    "health": (0.05, 0.03, 0.01, 3.8, 0.8, 0.10),
    "cash_withdrawal": (0.05, 0.02, 0.10, 4.3, 0.6, 0.00),
    "jewelry": (0.01, 0.01, 0.07, 5.3, 1.0, 0.20),
    "gambling": (0.01, 0.00, 0.04, 4.0, 1.0, 0.80),
}
CATEGORIES: tuple[str, ...] = tuple(_CAT_TABLE)
_CAT = np.array(list(_CAT_TABLE.values()), dtype=np.float64)
_CASH = CATEGORIES.index("cash_withdrawal")

# home country: (share of accounts, billing currency, USD->currency rate, latitude, longitude)
_HOME = {
    "US": (0.35, "USD", 1.0, 39.8, -98.6), "GB": (0.12, "GBP", 0.79, 52.4, -1.5),
    "DE": (0.10, "EUR", 0.92, 51.2, 10.4), "FR": (0.08, "EUR", 0.92, 46.6, 2.4),
    "CA": (0.07, "CAD", 1.36, 45.5, -75.0), "ES": (0.05, "EUR", 0.92, 40.4, -3.7),
    "IT": (0.05, "EUR", 0.92, 42.8, 12.6), "NL": (0.04, "EUR", 0.92, 52.1, 5.3),
    "AU": (0.04, "AUD", 1.52, -33.9, 151.2), "SE": (0.03, "SEK", 10.5, 59.3, 18.1),
    "MX": (0.04, "MXN", 17.0, 19.4, -99.1), "BR": (0.03, "BRL", 5.0, -23.5, -46.6),
}
# countries only ever visited: (latitude, longitude)
_ABROAD = {"TH": (13.7, 100.5), "AE": (25.2, 55.3), "TR": (41.0, 28.9), "JP": (35.7, 139.7),
           "NG": (6.5, 3.4), "RU": (55.8, 37.6), "CN": (31.2, 121.5), "IN": (19.1, 72.9)}
COUNTRIES: tuple[str, ...] = (*_HOME, *_ABROAD)
CURRENCIES: tuple[str, ...] = tuple(sorted({v[1] for v in _HOME.values()}))
CHANNELS: tuple[str, ...] = ("pos", "ecommerce", "atm", "mobile")
ENTRY_MODES: tuple[str, ...] = ("chip", "contactless", "swipe", "manual", "online")
_NHOME = len(_HOME)
_HOME_P = np.array([v[0] for v in _HOME.values()])
_FX = np.array([v[2] for v in _HOME.values()])
_CUR = np.array([CURRENCIES.index(v[1]) for v in _HOME.values()])
_GEO = np.array([v[3:] for v in _HOME.values()] + list(_ABROAD.values()))
# where foreign transactions happen: home countries first, then _ABROAD
_DEST_LEGIT = np.array([4, 2, 3, 3, 2, 3, 3, 2, 2, 1, 3, 1, 3, 2, 2, 2, 0.3, 0.3, 1, 1.0])
_DEST_FRAUD = np.array([2.0] * _NHOME + [3, 3, 3, 1, 6, 6, 4, 4])

# Traffic by UTC hour (mean 1) and how much likelier a single event is fraud at that hour.
_TRAFFIC = np.array([.25, .18, .14, .12, .14, .25, .5, .8, 1.1, 1.3, 1.4, 1.5,
                     1.6, 1.55, 1.45, 1.4, 1.45, 1.6, 1.7, 1.6, 1.35, 1.0, .7, .42])
_TRAFFIC = _TRAFFIC / _TRAFFIC.mean()
_CUM = np.concatenate([[0.0], np.cumsum(_TRAFFIC * 3600.0)])
_NIGHT = np.array([3.0] * 6 + [1.0] * 16 + [1.8] * 2)

# entry mode probabilities, columns in ENTRY_MODES order
_ENTRY = {
    "atm": np.array([0.80, 0.05, 0.15, 0.0, 0.0]),
    "pos": np.array([0.55, 0.38, 0.06, 0.01, 0.0]),
    "pos_fraud": np.array([0.25, 0.10, 0.40, 0.25, 0.0]),
    "cnp": np.array([0.0, 0.0, 0.0, 0.03, 0.97]),
    "cnp_fraud": np.array([0.0, 0.0, 0.0, 0.20, 0.80]),
}
_FIELDS = ("event_id", "event_time", "account_id", "merchant_id", "merchant_category", "amount",
           "currency", "country", "channel", "card_present", "entry_mode", "device_id",
           "ip_address", "latitude", "longitude", "customer_age", "account_age_days",
           "previous_declines_24h", "description")
_MERCHANTS_PER_CAT = 400
_DAY_MS = 86_400_000


def _pick(rng: np.random.Generator, probs: Floats) -> Ints:
    """One categorical draw per row of ``probs`` (rows need not be normalised)."""
    cum = probs.cumsum(axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    idx: Ints = np.minimum((u[:, None] >= cum).sum(axis=1), probs.shape[1] - 1).astype(np.int64)
    return idx


def _uuid4s(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, 32 * n, 32)]


class TransactionGenerator:
    """Deterministic stream of labelled ``CardTransaction`` events.

    Successive ``generate`` calls continue the same stream (time keeps advancing, ids stay
    unique). Traffic follows a daily cycle in UTC at ``events_per_second`` on average, so pick a
    low rate (e.g. 1.0) when training data should span whole days. With ``daily_cycle=False``
    event times advance steadily at ``events_per_second`` (a stream sent live at that rate: in
    the cycle, a night hour's events lie up to eight times further apart than the rate says, so
    they would run minutes ahead of the clock). ``drift`` (0..1, settable
    between calls) raises amounts, shifts the category mix and adds foreign and online traffic.

    >>> gen = TransactionGenerator(seed=7, start_time_ms=1_700_000_000_000)
    >>> event, is_fraud = gen.generate(1)[0]
    >>> sorted(event)[:3]
    ['account_age_days', 'account_id', 'amount']
    """

    def __init__(self, *, seed: int = 0, accounts: int = 2000, fraud_rate: float = 0.02,
                 drift: float = 0.0, start_time_ms: int | None = None,
                 events_per_second: float = 1000.0, daily_cycle: bool = True) -> None:
        if accounts < 1 or not 0.0 <= fraud_rate <= 1.0 or events_per_second <= 0:
            raise ValueError("need accounts >= 1, 0 <= fraud_rate <= 1, events_per_second > 0")
        self.fraud_rate = fraud_rate
        self.drift = drift
        self.events_per_second = events_per_second
        self._rng = np.random.default_rng(seed)
        start = int(time.time() * 1000) if start_time_ms is None else int(start_time_ms)
        self._start_ms = start
        self._day0_ms = start - start % _DAY_MS
        phase = (start - self._day0_ms) / 1000.0
        hour = int(phase // 3600)
        self._op_s = float(_CUM[hour] + (phase - hour * 3600) * _TRAFFIC[hour])
        self._op_start = self._op_s
        self._daily_cycle = daily_cycle
        self._make_accounts(np.random.default_rng([seed, 1]), accounts)

    @property
    def drift(self) -> float:
        """Current drift strength in [0, 1]."""
        return self._drift

    @drift.setter
    def drift(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"drift must be within [0, 1], got {value}")
        self._drift = float(value)

    def _make_accounts(self, rng: np.random.Generator, n: int) -> None:
        self._acct_ids = np.array([f"acct-{i:06d}" for i in range(n)], dtype=object)
        self._home = _pick(rng, np.broadcast_to(_HOME_P, (n, _NHOME)))
        self._spend = rng.lognormal(0.0, 0.5, n)
        self._activity = rng.lognormal(0.0, 1.0, n)
        self._activity /= self._activity.sum()
        young = rng.random(n) < 0.08
        age = np.where(young, rng.uniform(0, 30, n), np.minimum(rng.lognormal(6.5, 1.0, n), 15000))
        self._acct_age = age.astype(np.int64)
        risk = 1.0 + 6.0 * (self._acct_age < 30) + 2.0 * (self._acct_age < 90)
        self._fraud_pick = risk / risk.sum()
        cust_age = np.minimum(18 + rng.gamma(4.0, 6.0, n), 95).astype(np.int64)
        self._cust_age = [None if m else int(a) for a, m in zip(cust_age, rng.random(n) < 0.04,
                                                                 strict=True)]
        self._device = np.array([f"dev-{x:012x}" for x in rng.integers(0, 2**47, n).tolist()],
                                dtype=object)
        self._ip = rng.integers(1, 224, size=(n, 3))
        self._loc = _GEO[self._home] + rng.normal(0, 2.0, (n, 2))

    def generate(self, n: int) -> list[tuple[dict[str, object], bool]]:
        """Return ``n`` events in time order, each paired with its fraud label."""
        rng, d = self._rng, self._drift
        if n <= 0:
            return []
        # Time: a homogeneous clock in "operational" seconds, warped through the daily cycle.
        op = self._op_s + np.cumsum(rng.exponential(1.0 / self.events_per_second, n))
        self._op_s = float(op[-1])
        if self._daily_cycle:
            day, rest = np.divmod(op, 86400.0)
            hour = np.minimum(np.searchsorted(_CUM, rest, side="right") - 1, 23)
            secs = day * 86400.0 + hour * 3600.0 + (rest - _CUM[hour]) / _TRAFFIC[hour]
            t_ms = self._day0_ms + (secs * 1000.0).astype(np.int64)
        else:  # steady: event time advances at events_per_second, whatever the hour
            t_ms = self._start_ms + ((op - self._op_start) * 1000.0).astype(np.int64)
            hour = (t_ms - self._day0_ms) // 3_600_000 % 24
        w = _NIGHT[hour]
        fraud = rng.random(n) < np.minimum(self.fraud_rate * w / w.mean(), 1.0)

        acct = np.where(fraud, rng.choice(len(self._spend), n, p=self._fraud_pick),
                        rng.choice(len(self._spend), n, p=self._activity))
        home = self._home[acct]
        shares = (1 - d) * _CAT[:, 0] + d * _CAT[:, 1]
        cat = _pick(rng, np.where(fraud[:, None], _CAT[:, 2], shares))
        merchant_j = np.where(fraud & (rng.random(n) < 0.5), rng.integers(0, 40, n),
                              rng.integers(0, _MERCHANTS_PER_CAT, n))

        usd = np.exp(_CAT[cat, 3] + _CAT[cat, 4] * rng.standard_normal(n)) * self._spend[acct]
        usd *= np.exp(0.5 * d) * np.where(fraud, np.exp(rng.normal(1.4, 0.5, n)), 1.0)
        amount = usd * _FX[home]
        amount = np.where(cat == _CASH, np.maximum(np.round(amount / 10) * 10, 10), amount)
        amount = np.clip(np.round(amount, 2), 0.5, 500_000.0)

        foreign = rng.random(n) < np.where(fraud, 0.45, 0.04 + 0.12 * d)
        dest = _pick(rng, np.where(fraud[:, None], _DEST_FRAUD, _DEST_LEGIT))
        dest = np.where(dest == home, (dest + 1) % len(COUNTRIES), dest)
        country = np.where(foreign, dest, home)

        p_cnp = _CAT[cat, 5]
        p_cnp = np.where(fraud, 0.5 + 0.5 * p_cnp, p_cnp + 0.25 * d * (1 - p_cnp))
        cnp = (rng.random(n) < p_cnp) & (cat != _CASH)
        channel = np.where(cnp, np.where(rng.random(n) < 0.35, 3, 1), np.where(cat == _CASH, 2, 0))
        entry_p = np.where(cnp[:, None], np.where(fraud[:, None], _ENTRY["cnp_fraud"],
                                                  _ENTRY["cnp"]),
                           np.where((channel == 2)[:, None], _ENTRY["atm"],
                                    np.where(fraud[:, None], _ENTRY["pos_fraud"], _ENTRY["pos"])))
        entry = _pick(rng, entry_p)

        none = np.full(n, None, dtype=object)
        device = np.where(fraud, [f"dev-{x:012x}" for x in rng.integers(0, 2**47, n).tolist()],
                          self._device[acct])
        device = np.where(cnp & (rng.random(n) < 0.95), device, none)
        octets = rng.integers(1, 255, size=(n, 4))
        octets[:, :3] = np.where(fraud[:, None], octets[:, :3], self._ip[acct])
        ips = np.array(["{}.{}.{}.{}".format(*o) for o in octets.tolist()], dtype=object)
        ips = np.where(cnp & (rng.random(n) < 0.97), ips, none)
        has_geo = ~cnp & (rng.random(n) < 0.9)
        geo = np.where(foreign[:, None], _GEO[country] + rng.normal(0, 1.0, (n, 2)),
                       self._loc[acct] + rng.normal(0, 0.2, (n, 2)))
        lat = np.where(has_geo, np.round(np.clip(geo[:, 0], -90, 90), 4).astype(object), none)
        lon = np.where(has_geo, np.round((geo[:, 1] + 180) % 360 - 180, 4).astype(object), none)
        declines = rng.poisson(np.where(fraud, 1.2, 0.03))
        labels = np.array([c.replace("_", " ").upper() for c in CATEGORIES], dtype=object)
        desc = [f"{lab} {k:04d}" for lab, k in zip(labels[cat], rng.integers(0, 10000, n).tolist(),
                                                    strict=True)]
        desc_col = np.where(rng.random(n) < 0.65, np.array(desc, dtype=object), none)
        age_days = self._acct_age[acct] + (t_ms - self._start_ms) // _DAY_MS
        merchants = [f"mch-{c:02d}{j:04d}" for c, j in zip(cat.tolist(), merchant_j.tolist(),
                                                             strict=True)]
        cust_age = [self._cust_age[a] for a in acct.tolist()]
        columns = (
            _uuid4s(rng, n), t_ms.tolist(), self._acct_ids[acct].tolist(), merchants,
            np.array(CATEGORIES, dtype=object)[cat].tolist(), amount.tolist(),
            np.array(CURRENCIES, dtype=object)[_CUR[home]].tolist(),
            np.array(COUNTRIES, dtype=object)[country].tolist(),
            np.array(CHANNELS, dtype=object)[channel].tolist(), (~cnp).tolist(),
            np.array(ENTRY_MODES, dtype=object)[entry].tolist(), device.tolist(), ips.tolist(),
            lat.tolist(), lon.tolist(), cust_age, age_days.tolist(), declines.tolist(),
            desc_col.tolist(),
        )
        return [(dict(zip(_FIELDS, row, strict=True)), f)
                for row, f in zip(zip(*columns, strict=True), fraud.tolist(), strict=True)]
