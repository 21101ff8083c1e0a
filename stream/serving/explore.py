"""Exploration: a logged, random share of would-be-blocked events let through, so that blocking can be evaluated.

A blocked transaction never gets a label (no chargeback can follow a payment
that did not happen), so labels exist only for what the model let through:
evaluation sees the fraud it missed and none it caught, and retraining on
those rows learns the same blind spot. Letting a small share of would-be-
blocked events through, and logging the probability each had of being let
through (its *propensity*), makes every blocking decision estimable: an
explored row with propensity p stands for 1/p would-be-blocked events.

The configuration is part of the deployment record (every worker applies the
same one, and the deployments topic keeps its history):

    {"share": 0.02,                                   # of would-be-blocked events, let through
     "seed": 7,                                       # which events: a hash of (seed, event id)
     "segment": {"field": "amount", "bands": [50, 500],          # segments: a field's value, or its band
                 "share": {"<50": 0.1, ">=500": 0.0}}}           # a segment's own share (a cap, or more)

Whether an event is explored is a function of the seed and its event id
(BLAKE2b, 64 bits), never of a random state: a replay, another worker or the
batch path decides the same. Only decisions the model's score made can be
explored: a deny rule or a fallback rule decided on purpose, and stays.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import NamedTuple

import numpy as np

from stream.serving.deployment import DeploymentError

_SCALE = float(1 << 64)
#: Rules that decide on purpose: their blocks are never explored.
_FIXED_RULES = ("deny:", "fallback")


class Outcome(NamedTuple):
    """One event's exploration: what the model and rules decided, whether it was let through, and how likely that was."""

    would_block: bool
    explored: bool
    propensity: float  # P(let through | this event, this deployment): 1 if not blocked, the share if it was


def check(config: dict) -> None:
    """Raise DeploymentError if `config` cannot be applied (checked when a deployment is written)."""
    if not config:
        return
    known = {"share", "seed", "segment"}
    unknown = set(config) - known
    if unknown:
        msg = f"unknown exploration settings {sorted(unknown)}; known: {sorted(known)}"
        raise DeploymentError(msg)
    shares = [config.get("share", 0.0)]
    segment = config.get("segment")
    if segment is not None:
        if "field" not in segment:
            msg = "exploration `segment` needs a `field` (and optionally `bands` and `share` per segment)"
            raise DeploymentError(msg)
        bands = segment.get("bands", [])
        if any(not isinstance(b, int | float) for b in bands) or list(bands) != sorted(set(bands)):
            msg = f"exploration segment bands {bands} must be increasing numbers"
            raise DeploymentError(msg)
        shares += list(segment.get("share", {}).values())
    for share in shares:
        if not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
            msg = f"exploration share {share!r} is not a number between 0 and 1"
            raise DeploymentError(msg)
    if not isinstance(config.get("seed", 0), int):
        msg = "exploration `seed` is an integer"
        raise DeploymentError(msg)


def band_names(bands: list) -> list[str]:
    """Segment names of numeric bands [b0, b1, ...]: `<b0`, `[b0,b1)`, ..., `>=bn`."""
    if not bands:
        return []
    names = [f"<{bands[0]:g}"]
    names += [f"[{lo:g},{hi:g})" for lo, hi in zip(bands, bands[1:])]
    return [*names, f">={bands[-1]:g}"]


def segment_of(segment: dict, record: dict) -> str:
    """The segment an event falls in: its field's value as text, or the band its number falls in."""
    value = record.get(segment["field"])
    bands = segment.get("bands")
    if not bands:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "missing"
    if math.isnan(number):
        return "missing"
    return band_names(bands)[bisect.bisect_right(bands, number)]


def shares(config: dict, records: list[dict]) -> np.ndarray:
    """Each event's exploration share: its segment's, else the default."""
    default = float(config.get("share", 0.0))
    segment = config.get("segment")
    if not segment or not segment.get("share"):
        return np.full(len(records), default)
    by_segment = segment["share"]
    return np.array([float(by_segment.get(segment_of(segment, r), default)) for r in records], dtype=np.float64)


def uniforms(seed: int, event_ids: list[str]) -> np.ndarray:
    """A number in [0, 1) per event, from (seed, event id) alone."""
    prefix = f"{seed}:".encode()
    out = np.empty(len(event_ids), dtype=np.float64)
    for i, event_id in enumerate(event_ids):
        out[i] = int.from_bytes(hashlib.blake2b(prefix + event_id.encode(), digest_size=8).digest(), "big") / _SCALE
    return out


def explore(config: dict, records: list[dict], event_ids: list[str], decisions: list[bool], rules: list) -> list[Outcome]:
    """Per event: its exploration outcome. `decisions`: after the business rules; `rules`: what decided each."""
    n = len(records)
    blocked = np.array(decisions, dtype=bool)
    share = np.zeros(n)
    # Blocks are few: segments, rules and hashes are looked at for them alone.
    rows = [i for i in np.flatnonzero(blocked).tolist() if not (rules[i] or "").startswith(_FIXED_RULES)]
    if rows:
        share[rows] = shares(config, [records[i] for i in rows])
    explored = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(share > 0)
    if len(candidates):
        drawn = uniforms(int(config.get("seed", 0)), [event_ids[i] for i in candidates.tolist()])
        explored[candidates] = drawn < share[candidates]
    propensity = np.where(blocked, share, 1.0)
    return list(map(Outcome._make, zip(blocked.tolist(), explored.tolist(), propensity.tolist())))


def active(config: dict) -> bool:
    """Whether a deployment explores at all (any share above 0): off by default."""
    if not config:
        return False
    segment_shares = (config.get("segment") or {}).get("share", {}).values()
    return float(config.get("share", 0.0)) > 0 or any(float(s) > 0 for s in segment_shares)
