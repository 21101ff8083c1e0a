"""Synthetic card-fraud data: cards, merchants, transactions, late labels (the event stream: fraud_demo/arrivals.py).

What is modelled (all vectorised with numpy, deterministic for a seed):

* Cards live mostly in the US (some GB, DE, FR, CA) and have an account age,
  a lognormal credit limit and a premium flag (likelier with a high limit).
* Merchants have a category and a country: mostly US, some in the card
  countries, some in countries where no card lives.
* Legit traffic: every card makes Poisson(`txns_per_card_per_day`) purchases a
  day, at times following a daily cycle (busy afternoons, quiet nights; UTC
  hours). 85% go to the card's six favourite domestic merchants (the first
  favourite most), the rest to other domestic merchants in everyday
  categories. Amounts are lognormal by category; shops are mostly "pos",
  online merchants "web"/"app". A transaction's country and currency are its
  merchant's.
* Fraud: `fraud_card_fraction` of the cards are compromised at a uniform time
  in [start, end). The thief fires a burst of 3-15 purchases seconds to a few
  minutes apart, mostly abroad, mostly web/app, at high amounts in risky
  categories (electronics, online retail, gaming, travel), at merchants the
  card never uses itself (not its favourites; legit exploration only visits
  everyday categories). The card's legit traffic carries on.
* Concept drift: episodes starting at/after `drift_at` are "card testing"
  instead: domestic, amounts of 1-20, 5-60 minutes apart, pos/app.
* Labels come late. Fraud is known when the chargeback arrives (lognormal
  delay, median 2 days, clipped to [10 min, 45 days]); legit transactions get
  label 0 when the chargeback window closes, `legit_label_delay` later.

Random streams are split by purpose (world, favourites, legit, fraud) so that
changing e.g. `drift_at` leaves legit traffic alone; the period is part of the
legit/fraud seeds, so consecutive periods of one config are not copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

#: When the card profiles are valid from: before any generated transaction.
PROFILE_TIME = datetime(2020, 1, 1, tzinfo=UTC)
#: Fields of a transaction, in column order; every one is required in an event.
TRANSACTION_COLUMNS = ("transaction_id", "card_id", "merchant_id", "amount", "currency", "country", "channel",
                       "event_time")

HOME_COUNTRIES = ("US", "GB", "DE", "FR", "CA")
HOME_WEIGHTS = (0.80, 0.06, 0.05, 0.05, 0.04)
MERCHANT_COUNTRIES = HOME_COUNTRIES + ("MX", "BR", "NG", "RU", "CN", "IN")
MERCHANT_COUNTRY_WEIGHTS = (0.69, 0.04, 0.04, 0.04, 0.04) + (0.025,) * 6
CURRENCY = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "CA": "CAD", "MX": "MXN",
    "BR": "BRL", "NG": "NGN", "RU": "RUB", "CN": "CNY", "IN": "INR",
}
# category -> (share of merchants, median amount, lognormal sigma)
CATEGORIES = {
    "grocery": (0.20, 40.0, 0.6),
    "restaurant": (0.18, 28.0, 0.6),
    "fuel": (0.12, 45.0, 0.35),
    "pharmacy": (0.08, 22.0, 0.6),
    "clothing": (0.08, 65.0, 0.7),
    "electronics": (0.09, 150.0, 0.8),
    "online_retail": (0.11, 55.0, 0.9),
    "gaming": (0.07, 20.0, 0.9),
    "travel": (0.07, 300.0, 0.8),
}
RISKY = frozenset({"electronics", "online_retail", "gaming", "travel"})
ONLINE = frozenset({"online_retail", "gaming"})
CHANNELS = np.array(["pos", "web", "app"], dtype=object)
# Channel probabilities (pos, web, app).
SHOP_CHANNELS = (0.85, 0.05, 0.10)
ONLINE_CHANNELS = (0.0, 0.6, 0.4)
FRAUD_CHANNELS = (0.10, 0.55, 0.35)
TESTING_CHANNELS = (0.60, 0.0, 0.40)

N_FAVOURITES = 6
FAVOURITE_SHARE = 0.85
FAVOURITE_WEIGHTS = 1.0 / np.arange(1, N_FAVOURITES + 1)  # Zipf-like: the first favourite most often
FAVOURITE_WEIGHTS /= FAVOURITE_WEIGHTS.sum()
FOREIGN_SHARE = 0.85  # of fraud purchases before drift
FRAUD_AMOUNT_FACTOR = 3.0
PEAK_HOUR_UTC = 15.0

_MS_SECOND, _MS_MINUTE, _MS_DAY = 1_000, 60_000, 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Purposes that separate the random streams derived from one seed.
_WORLD, _FAVOURITES, _LEGIT, _FRAUD = range(4)


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 7
    n_cards: int = 5000
    n_merchants: int = 500
    txns_per_card_per_day: float = 4.0  # mean rate of legit activity
    fraud_card_fraction: float = 0.02  # share of cards compromised during a generated period
    drift_at: datetime | None = None  # from this event time on, fraud behaviour changes
    legit_label_delay: timedelta = timedelta(days=7)  # when a legit transaction is labelled 0


@dataclass(frozen=True)
class World:
    # card_id, account_age_days, credit_limit, home_country, is_premium, event_timestamp (profile time)
    cards: pd.DataFrame
    merchants: pd.DataFrame  # merchant_id, category, country


def make_world(cfg: DemoConfig) -> World:
    """Cards and merchants; the same config always gives the same world."""
    rng = np.random.default_rng([cfg.seed, _WORLD])
    n = cfg.n_cards
    limit = np.maximum(np.round(rng.lognormal(np.log(4000.0), 0.6, n), -2), 300.0)
    cards = pd.DataFrame({
        "card_id": _ids("card-", n, 6),
        "account_age_days": rng.integers(7, 3650, n, dtype=np.int64),
        "credit_limit": limit.astype(np.float64),
        "home_country": np.array(HOME_COUNTRIES, dtype=object)[rng.choice(len(HOME_COUNTRIES), n, p=HOME_WEIGHTS)],
        "is_premium": (rng.random(n) < np.where(limit >= 8000, 0.5, 0.08)).astype(np.int64),
        "event_timestamp": _times(np.full(n, _to_ms(PROFILE_TIME), dtype=np.int64)),
    })
    m = cfg.n_merchants
    names = np.array(list(CATEGORIES), dtype=object)
    category = names[rng.choice(len(names), m, p=[v[0] for v in CATEGORIES.values()])]
    places = np.array(MERCHANT_COUNTRIES, dtype=object)
    country = places[rng.choice(len(places), m, p=MERCHANT_COUNTRY_WEIGHTS)]
    # Small worlds could leave a card country without an everyday or a risky
    # merchant; the first merchants guarantee one of each per card country.
    if m >= 2 * len(HOME_COUNTRIES):
        for i, home in enumerate(HOME_COUNTRIES):
            country[2 * i : 2 * i + 2] = home
            category[2 * i : 2 * i + 2] = ("grocery", "electronics")
    merchants = pd.DataFrame({"merchant_id": _ids("m-", m, 5), "category": category, "country": country})
    return World(cards=cards, merchants=merchants)


def generate_transactions(
    world: World, cfg: DemoConfig, start: datetime, end: datetime, *, id_prefix: str = "t"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions with event time in [start, end), sorted by it, and one label each."""
    start_ms, end_ms = _to_ms(start), _to_ms(end)
    if end_ms <= start_ms:
        raise ValueError(f"end ({end}) must be after start ({start})")
    drift_ms = None if cfg.drift_at is None else _to_ms(cfg.drift_at)
    ctx = _Context(world, cfg)
    period = [start_ms % 2**64, end_ms % 2**64]
    legit = _legit(np.random.default_rng([cfg.seed, _LEGIT, *period]), ctx, cfg, start_ms, end_ms)
    fraud = _fraud(np.random.default_rng([cfg.seed, _FRAUD, *period]), ctx, cfg, start_ms, end_ms, drift_ms)
    # Stable sort keeps ties in a fixed order, so ids are deterministic too.
    order = np.argsort(np.concatenate([legit["time"], fraud["time"]]), kind="stable")
    col = {k: np.concatenate([legit[k], fraud[k]])[order] for k in legit}
    ids = _ids(id_prefix, len(order), 9)
    country = ctx.merchant_country[col["merchant"]]
    transactions = pd.DataFrame({
        "transaction_id": ids, "card_id": ctx.card_ids[col["card"]], "merchant_id": ctx.merchant_ids[col["merchant"]],
        "amount": col["amount"].astype(np.float64), "currency": ctx.currencies[country],
        "country": ctx.countries[country], "channel": CHANNELS[col["channel"]], "event_time": _times(col["time"]),
    })
    labels = pd.DataFrame({"transaction_id": ids, "is_fraud": col["fraud"], "label_time": _times(col["label"])})
    return transactions, labels


class _Context:
    """The world as integer codes, plus each card's favourites and merchant pools."""

    def __init__(self, world: World, cfg: DemoConfig):
        cards, merchants = world.cards, world.merchants
        self.card_ids = cards["card_id"].to_numpy(dtype=object)
        self.merchant_ids = merchants["merchant_id"].to_numpy(dtype=object)
        vocab = pd.Index(sorted(set(cards["home_country"]) | set(merchants["country"])))
        self.countries = vocab.to_numpy(dtype=object)
        self.currencies = np.array([CURRENCY.get(c, "USD") for c in vocab], dtype=object)
        self.home = vocab.get_indexer(cards["home_country"])
        self.merchant_country = vocab.get_indexer(merchants["country"])
        category = merchants["category"].to_numpy(dtype=object)
        params = [CATEGORIES.get(c, (0.0, 50.0, 0.7)) for c in category]
        self.median = np.array([p[1] for p in params], dtype=np.float64)
        self.sigma = np.array([p[2] for p in params], dtype=np.float64)
        self.online = np.isin(category, list(ONLINE))
        risky = np.isin(category, list(RISKY))
        codes = range(len(vocab))
        mc = self.merchant_country
        self.domestic = {c: np.flatnonzero(mc == c) for c in codes}
        self.domestic_safe = {c: np.flatnonzero((mc == c) & ~risky) for c in codes}
        self.domestic_risky = {c: np.flatnonzero((mc == c) & risky) for c in codes}
        self.foreign_risky = {c: np.flatnonzero((mc != c) & risky) for c in codes}
        # Favourites depend only on the world and seed, not on the period, so a
        # card keeps its habits across generated periods.
        rng = np.random.default_rng([cfg.seed, _FAVOURITES])
        n = len(self.card_ids)
        anywhere = rng.integers(0, max(len(self.merchant_ids), 1), (n, N_FAVOURITES))
        self.favourites = _draw_by_country(rng, np.repeat(self.home, N_FAVOURITES), self.domestic, anywhere.ravel())
        self.favourites = self.favourites.reshape(n, N_FAVOURITES)


def _legit(rng, ctx: _Context, cfg: DemoConfig, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
    """Everyday purchases of every card, as code columns."""
    days = (end_ms - start_ms) / _MS_DAY
    card = np.repeat(np.arange(len(ctx.card_ids)), rng.poisson(cfg.txns_per_card_per_day * days, len(ctx.card_ids)))
    n = card.size
    time = _daily_cycle_times(rng, start_ms, end_ms, n)
    merchant = ctx.favourites[card, rng.choice(N_FAVOURITES, n, p=FAVOURITE_WEIGHTS)]
    explore = np.flatnonzero(rng.random(n) >= FAVOURITE_SHARE)
    merchant[explore] = _draw_by_country(rng, ctx.home[card[explore]], ctx.domestic_safe, merchant[explore])
    channel = _channels(rng, np.where(ctx.online[merchant][:, None], ONLINE_CHANNELS, SHOP_CHANNELS))
    label = time + cfg.legit_label_delay // timedelta(milliseconds=1)  # the chargeback window closes
    return dict(card=card, merchant=merchant, amount=_amounts(rng, ctx, merchant, 1.0), channel=channel,
                time=time, fraud=np.zeros(n, dtype=np.int64), label=label)


def _fraud(rng, ctx: _Context, cfg, start_ms: int, end_ms: int, drift_ms: int | None) -> dict[str, np.ndarray]:
    """One episode per compromised card, all episodes built at once as flat arrays."""
    n_cards = len(ctx.card_ids)
    k = min(int(round(cfg.fraud_card_fraction * n_cards)), n_cards)
    victims = rng.choice(n_cards, k, replace=False)
    t0 = start_ms + rng.integers(0, end_ms - start_ms, k)
    testing = np.zeros(k, dtype=bool) if drift_ms is None else t0 >= drift_ms
    length = rng.integers(3, 16, k)
    episode = np.repeat(np.arange(k), length)
    first = np.cumsum(length) - length
    burst_gap = np.clip(rng.lognormal(np.log(45 * _MS_SECOND), 0.8, episode.size), 2 * _MS_SECOND, 240 * _MS_SECOND)
    testing_gap = rng.integers(5 * _MS_MINUTE, 60 * _MS_MINUTE + 1, episode.size)
    gap = np.where(testing[episode], testing_gap, burst_gap).astype(np.int64)
    gap[first] = 0
    walked = np.cumsum(gap)
    offset = walked - walked[first][episode]
    # An episode that would run past `end` starts earlier instead of being cut,
    # but never crosses back over `start` or over the drift point.
    duration = offset[first + length - 1]
    floor = np.where(testing, start_ms if drift_ms is None else max(drift_ms, start_ms), start_ms)
    t0 = np.maximum(np.minimum(t0, end_ms - 1 - duration), floor)
    time = t0[episode] + offset
    card = victims[episode]
    after = testing[episode]
    foreign = ~after & (rng.random(episode.size) < FOREIGN_SHARE)
    merchant = _fraud_merchants(rng, ctx, card, foreign)
    testing_amount = np.round(rng.uniform(1.0, 20.0, episode.size), 2)
    amount = np.where(after, testing_amount, _amounts(rng, ctx, merchant, FRAUD_AMOUNT_FACTOR))
    channel = _channels(rng, np.where(after[:, None], TESTING_CHANNELS, FRAUD_CHANNELS))
    chargeback = rng.lognormal(np.log(2 * _MS_DAY), 1.3, episode.size)
    label = time + np.clip(chargeback, 10 * _MS_MINUTE, 45 * _MS_DAY).astype(np.int64)
    keep = time < end_ms  # all but in periods shorter than an episode
    columns = dict(card=card, merchant=merchant, amount=amount, channel=channel, time=time,
                   fraud=np.ones(episode.size, dtype=np.int64), label=label)
    return {name: values[keep] for name, values in columns.items()}


def _fraud_merchants(rng, ctx: _Context, card: np.ndarray, foreign: np.ndarray) -> np.ndarray:
    """Risky merchants abroad or at home, never one of the card's favourites.

    Cheap uniform draws first; the rare rows that hit a favourite are redrawn,
    and the last round picks exactly among the non-favourites (it is only
    unavoidable when a country has no risky merchant besides the favourites).
    """
    merchant = rng.integers(0, max(len(ctx.merchant_ids), 1), card.size)
    todo = np.arange(card.size)
    for exact in (False, False, False, True):
        away, here = todo[foreign[todo]], todo[~foreign[todo]]
        for rows, pools in ((away, ctx.foreign_risky), (here, ctx.domestic_risky)):
            avoid = ctx.favourites[card[rows]] if exact else None
            merchant[rows] = _draw_by_country(rng, ctx.home[card[rows]], pools, merchant[rows], avoid)
        todo = todo[(ctx.favourites[card[todo]] == merchant[todo, None]).any(axis=1)]
        if todo.size == 0:
            break
    return merchant


def _draw_by_country(rng, country: np.ndarray, pools: dict, current: np.ndarray, avoid=None) -> np.ndarray:
    """For each row a uniform pick from the pool of its country.

    With `avoid` (rows x k merchant codes) the pick skips that row's codes.
    Rows with nothing to pick from keep `current`.
    """
    out = np.array(current, dtype=np.int64, copy=True)
    for c in np.unique(country):  # a handful of countries, not one step per row
        pool = pools.get(int(c))
        if pool is None or pool.size == 0:
            continue
        rows = np.flatnonzero(country == c)
        if avoid is None:
            out[rows] = pool[rng.integers(0, pool.size, rows.size)]
            continue
        # Random keys zeroed where forbidden: the arg-max is a uniform allowed pick.
        allowed = ~(pool[None, :, None] == avoid[rows][:, None, :]).any(axis=2)
        pick = np.argmax(rng.random(allowed.shape) * allowed, axis=1)
        ok = allowed.any(axis=1)
        out[rows[ok]] = pool[pick[ok]]
    return out


def _daily_cycle_times(rng, start_ms: int, end_ms: int, n: int) -> np.ndarray:
    """n event times (ms) in [start, end) whose density follows a daily cycle.

    The period is cut into minutes weighted by the hour of day; sampling the
    minute by inverse CDF keeps the total count exactly n (Poisson volumes stay
    as drawn), unlike thinning.
    """
    edges = np.arange(start_ms, end_ms, _MS_MINUTE, dtype=np.int64)
    widths = np.minimum(edges + _MS_MINUTE, end_ms) - edges
    hour = ((edges + widths / 2) % _MS_DAY) / 3_600_000
    weight = (1.0 + 0.8 * np.cos(2 * np.pi * (hour - PEAK_HOUR_UTC) / 24)) * widths
    cdf = np.cumsum(weight)
    slot = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), edges.size - 1)
    return edges[slot] + (rng.random(n) * widths[slot]).astype(np.int64)


def _amounts(rng, ctx: _Context, merchant: np.ndarray, factor: float) -> np.ndarray:
    raw = factor * ctx.median[merchant] * np.exp(ctx.sigma[merchant] * rng.standard_normal(merchant.size))
    return np.round(np.maximum(raw, 0.5), 2)


def _channels(rng, probs: np.ndarray) -> np.ndarray:
    """Channel code per row from that row's (pos, web, app) probabilities."""
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random(len(probs))[:, None] >= cum).sum(axis=1), len(CHANNELS) - 1)


def write_repo_data(repo_path: str | Path, world: World, transactions: pd.DataFrame, labels: pd.DataFrame) -> None:
    """Write the four parquet files a Sluice feature repo reads from <repo>/data/."""
    data = Path(repo_path) / "data"
    data.mkdir(parents=True, exist_ok=True)
    frames = {"cards": world.cards, "merchants": world.merchants, "transactions": transactions, "labels": labels}
    for name, frame in frames.items():
        frame.to_parquet(data / f"{name}.parquet", index=False)


def _to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"{dt!r} is naive; pass a timezone-aware (UTC) datetime")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _times(ms: np.ndarray) -> pd.DatetimeIndex:
    """Epoch milliseconds as datetime64[ns, UTC]."""
    return pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms", utc=True).as_unit("ns")


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    """prefix + zero-padded counter 0..n-1, as an object array of str.

    The characters are written as UCS-4 code points and viewed as a numpy
    unicode array: ~10x faster than formatting numbers as text for 1M ids.
    """
    width = max(width, len(str(max(n - 1, 0))))
    chars = np.empty((n, len(prefix) + width), dtype=np.uint32)
    chars[:, : len(prefix)] = [ord(c) for c in prefix]
    rest = np.arange(n, dtype=np.int64)
    for pos in range(chars.shape[1] - 1, len(prefix) - 1, -1):  # one step per digit, right to left
        rest, digit = np.divmod(rest, 10)
        chars[:, pos] = digit + ord("0")
    return chars.view(f"U{chars.shape[1]}").ravel().astype(object)
