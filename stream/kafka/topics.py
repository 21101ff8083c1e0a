"""Every topic name of one app, derived in one place: `AppTopics`.

Built once per process from the Settings (SLUICE_*_TOPIC variables and the
app id), the events topic and the plan's stage keys, then handed to whoever
reads or writes a topic: the worker's engine, the monitor, the rollout
controller, the label join, the reasons service, parity and the chaos
audit. A name derived anywhere else could silently disagree with the one the
worker uses.

    topics = AppTopics.of(settings, "transactions", [("card_id",), ("merchant_id",)])
    topics.late                  # "transactions.late"
    topics["prediction_log"]     # roles by name too
    topics.repartition(1)        # "<app id>-repartition-merchant_id"
    topics.changelog("state-0")  # "<app id>-state-0-changelog" (Faust's name for a table's changelog)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stream.settings import ENV, JOIN_APP_SUFFIX, Settings

#: The label join's table (stream/worker/labels.py).
LABEL_JOIN_TABLE = "label-join"

#: Role -> the Settings field that names it (the roles the operator may rename).
NAMED = {
    "predictions": "predictions_topic",
    "prediction_log": "prediction_log_topic",
    "deployments": "deployments_topic",
    "monitoring": "monitoring_topic",
    "labels": "labels_topic",
    "labeled": "labeled_topic",
    "reasons": "reasons_topic",
}
ROLES = ("events", "dlq", "late", *NAMED, "labels_dlq")
#: What an input topic's dead-letter and late copies are named after: `<topic>.dlq`, `<topic>.late`.
OUTCOME_SUFFIXES = {"dlq": ".dlq", "late": ".late"}


def outcome_role(topic: str, events: Iterable[str] = ()) -> str | None:
    """"dlq" or "late" when `topic` holds an events topic's dead letters or late copies (of one of `events`, or of any when empty)."""
    for role, suffix in OUTCOME_SUFFIXES.items():
        if topic.endswith(suffix) and (not events or topic[: -len(suffix)] in events):
            return role
    return None


@dataclass(frozen=True)
class AppTopics:
    app_id: str
    events: str
    predictions: str = "predictions"
    prediction_log: str = "prediction_log"
    deployments: str = "deployments"
    monitoring: str = "monitoring"
    labels: str = "labels"
    labeled: str = "labeled"
    reasons: str = "reasons"
    #: The entity keys each stage is partitioned by; stage 0 reads the events topic itself.
    stage_keys: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, settings: Settings, events: str, stage_keys: Iterable[Sequence[str]] = ()) -> AppTopics:
        names = {role: getattr(settings, field) for role, field in NAMED.items()}
        keys = tuple(tuple(k) for k in stage_keys)
        return cls(app_id=settings.app_id, events=events, stage_keys=keys, **names)

    @classmethod
    def named(cls, settings: Settings) -> AppTopics:
        """The topics a process that never reads the events topic uses (deployments, prediction log, monitoring, ...)."""
        return cls.of(settings, "")

    @classmethod
    def for_plan(cls, settings: Settings, plan) -> AppTopics:
        """From a FeaturePlan: its events topic (schema.topic) and its stages' keys."""
        return cls.of(settings, plan.schema.topic, plan.stages())

    @property
    def dlq(self) -> str:
        return self.events + OUTCOME_SUFFIXES["dlq"]

    @property
    def late(self) -> str:
        return self.events + OUTCOME_SUFFIXES["late"]

    @property
    def labels_dlq(self) -> str:
        return self.labels + OUTCOME_SUFFIXES["dlq"]

    def repartition(self, stage: int) -> str:
        """The topic stage `stage` reads: the events topic for stage 0, else the app's hop keyed by that stage's entity."""
        if stage == 0:
            return self.events
        return f"{self.app_id}-repartition-{'-'.join(self.stage_keys[stage])}"

    @property
    def repartitions(self) -> list[str]:
        """The topic of every stage, stage 0 (the events topic) first."""
        return [self.repartition(s) for s in range(max(len(self.stage_keys), 1))]

    @property
    def repartition_prefix(self) -> str:
        return f"{self.app_id}-repartition-"

    def changelog(self, table: str) -> str:
        return f"{self.app_id}-{table}-changelog"

    def label_join_changelog(self, where: str = "inline") -> str:
        """The label join's table changelog: the scoring app's (`inline`) or its join workers' (`service`, app `<app id>-join`)."""
        app_id = self.app_id + JOIN_APP_SUFFIX if where == "service" else self.app_id
        return f"{app_id}-{LABEL_JOIN_TABLE}-changelog"

    def __getitem__(self, role: str) -> str:
        if role not in ROLES:
            msg = f"no topic role {role!r}; the roles are {', '.join(ROLES)}"
            raise KeyError(msg)
        return getattr(self, role)

    def by_role(self) -> dict[str, str]:
        return {role: self[role] for role in ROLES}

    def env(self) -> dict[str, str]:
        """The SLUICE_*_TOPIC variables that give a worker process these names."""
        return {ENV[field]: getattr(self, role) for role, field in NAMED.items()}
