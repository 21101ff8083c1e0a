"""What serves: one deployment record, and how it routes each event.

A deployment names the champion, the challengers, the mode and its shares,
the ramp of a canary, the guardrails, the fallback chain and the business
rules. It is one JSON record on the compacted `deployments` topic; every
change (a promotion, a canary step, a guardrail trip, a rollback) is a new
record with a higher `seq` and its reason, so the topic's history says what
served when, and why.

Routing is by a stable hash of the entity key (the events topic's partition
key), never random per event: an entity sees one model for as long as the
share does not change, and the share an arm gets is the share of entities
whose hash falls below it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import orjson

from features.errors import SluiceError

MODES = ("champion", "shadow", "canary", "ab")
#: Routes a prediction can name.
ROUTES = ("champion", "canary", "ab:A", "ab:B")
#: Last element of a fallback chain: business rules decide, no model scores.
RULES = "rules"
_BUCKETS = 1 << 32


class DeploymentError(SluiceError):
    """A deployment record that cannot be applied as it is."""


@dataclass(frozen=True)
class Guardrails:
    """Limits on a canary arm; crossing one rolls the canary back (stream/serving/rollout.py)."""

    max_fallback_rate: float = 0.05  # share of the arm's events answered by a fallback
    max_score_ms_p99: float = 250.0  # the arm's batch scoring time, p99
    max_score_psi: float = 0.25  # the arm's score distribution against its reference
    min_events: int = 500  # events on the arm before a guardrail may judge it


@dataclass(frozen=True)
class Deployment:
    seq: int
    champion: str
    mode: str = "champion"
    challengers: tuple[str, ...] = ()
    share: float = 0.0  # canary: the challenger's share now; ab: arm B's split
    ramp: tuple[float, ...] = ()  # canary shares, in order; `share` is ramp[step]
    step: int = 0
    step_after_events: int = 0  # canary: step when the arm has this many events since the last step
    step_after_s: float = 0.0  # ... or after this long
    guardrails: Guardrails = field(default_factory=Guardrails)
    fallback: tuple[str, ...] = ()  # versions, then optionally "rules"
    rules: dict = field(default_factory=dict)  # see stream/serving/rules.py
    exploration: dict = field(default_factory=dict)  # see stream/serving/explore.py; empty: off
    reason: str = ""
    at: str = ""  # ISO-8601 UTC of the change
    by: str = ""  # who or what made it (a user, `guardrail`, `ramp`, `autopilot`)
    #: The autopilot's stage, candidate, trigger, lineage and the seq its decision was based on
    #: (stream/lifecycle/autopilot.py); empty on records nobody's autopilot wrote.
    autopilot: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            msg = f"deployment mode {self.mode!r} is not one of {', '.join(MODES)}"
            raise DeploymentError(msg)
        if self.mode in ("canary", "ab") and len(self.challengers) != 1:
            msg = f"a {self.mode} deployment needs exactly one challenger, got {list(self.challengers)}"
            raise DeploymentError(msg)
        if not 0.0 <= self.share <= 1.0:
            msg = f"share {self.share} is not between 0 and 1"
            raise DeploymentError(msg)
        if self.champion in self.challengers:
            msg = f"version {self.champion} cannot be champion and challenger at once"
            raise DeploymentError(msg)
        named = (*self.versions, *self.fallback_versions)
        if len(named) > 8 or any(len(v) > 128 for v in named):
            msg = "a deployment names at most 8 model versions (champion, challengers, fallbacks) of at most 128 characters"
            raise DeploymentError(msg)
        if not isinstance(self.exploration, dict):
            msg = f"exploration {self.exploration!r} is not a JSON object; write it with `sluice deploy --explore`"
            raise DeploymentError(msg)
        if RULES in self.fallback[:-1]:
            msg = "`rules` can only be the last step of a fallback chain"
            raise DeploymentError(msg)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every model version this deployment scores with (champion first), fallbacks excluded."""
        return (self.champion, *self.challengers)

    @property
    def fallback_versions(self) -> tuple[str, ...]:
        return tuple(v for v in self.fallback if v != RULES)

    def to_json(self) -> bytes:
        body = asdict(self)
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> Deployment:
        try:
            body = orjson.loads(raw)
            body["guardrails"] = Guardrails(**body.get("guardrails", {}))
            for name in ("challengers", "ramp", "fallback"):
                body[name] = tuple(body.get(name, ()))
            return cls(**body)
        except (ValueError, TypeError) as exc:
            msg = f"not a deployment record ({exc}); write deployments with `sluice deploy`"
            raise DeploymentError(msg) from exc

    def but(self, **changes) -> Deployment:
        return replace(self, **changes)


def entity_buckets(keys: list[str]) -> np.ndarray:
    """A stable bucket in [0, 2**32) per entity key: the first 4 bytes of its BLAKE2b digest."""
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        out[i] = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big")
    return out


def routes(deployment: Deployment, keys: list[str]) -> list[str]:
    """The route of each event, from its entity key: which arm answers it."""
    mode = deployment.mode
    if mode in ("champion", "shadow"):
        return ["champion"] * len(keys)
    cut = int(deployment.share * _BUCKETS)
    on_challenger = entity_buckets(keys) < cut
    if mode == "canary":
        return np.where(on_challenger, "canary", "champion").tolist()
    return np.where(on_challenger, "ab:B", "ab:A").tolist()


def serving_version(deployment: Deployment, route: str) -> str:
    """The version whose score a route publishes."""
    return deployment.challengers[0] if route in ("canary", "ab:B") else deployment.champion


def first(champion: str) -> Deployment:
    """The deployment before any record exists: the model directory's champion, alone."""
    return Deployment(seq=0, champion=champion, reason="initial: the model directory's champion", by="worker")
