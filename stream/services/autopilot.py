"""`sluice autopilot` (and `sluice retrain`, one turn of it): continuous training for one consumer group.

A loop over the pure decisions of stream/lifecycle/autopilot.py. Each turn
reads what is new on four topics: `deployments` (its own state: the last
records), `labeled` (each event's row: the served vector, every version's
score, the label), `monitoring` (drift alerts) and `prediction_log` (the
canary arm's events, for the guardrails of stream/serving/rollout.py). Then
it does at most one thing, and every thing it does is first a deployment
record at the next seq, read back: when another writer's record took that
seq first, this autopilot lost and does nothing (see the pure module).

Training uses only mature labeled rows (their label window closed by the
label clock), the served vectors themselves (no skew), plus the repo's
history before the first labeled row when asked; the most recent
`gate_share` of the mature rows is held out and is the gate's window. The
candidate is registered with its lineage (data window, parent, trigger,
gate) whatever the gate says, and retired when refused or rolled back.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from features.errors import SluiceError
from features.feast_repo import load_plan, open_store
from stream.kafka.clients import ensure_topics
from stream.kafka.control import Follower, publish
from stream.kafka.reader import assigned_consumer
from stream.kafka.topics import AppTopics
from stream.lifecycle import autopilot as ap
from stream.lifecycle.experiment_report import paired
from stream.lifecycle.label_config import JoinConfig
from stream.lifecycle.labeled import rows as latest_rows
from stream.lifecycle.train import TrainingFrame, categorical_features, train, training_frame
from stream.registry import CHALLENGER, ModelStore, RegistryError, open_registry
from stream.registry.manage import promote
from stream.serving.deployment import Deployment, first
from stream.serving.rollout import RolloutPolicy, now_iso
from stream.services.rollout import score_reference

log = logging.getLogger("sluice.autopilot")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class Autopilot:
    """One autopilot: `step()` is one turn (read, decide, act at most once); `run()` turns until stopped."""

    def __init__(self, settings, *, policy: ap.Policy | None = None, registry: ModelStore | None = None,
                 history: bool = True, num_trees: int = 100, seed: int = 7, topics: AppTopics | None = None):
        self.settings, self.policy = settings, policy or ap.Policy()
        self.repo_path = Path(settings.repo_path)
        store = open_store(self.repo_path)
        self.plan = load_plan(store, settings.feature_service)
        self.categorical = categorical_features(store, self.plan)
        self.registry = registry or open_registry(settings, name=self.plan.service)
        self.topics = topics or AppTopics.for_plan(settings, self.plan)
        self.id_field = self.plan.schema.event_id
        self.window_ms = JoinConfig.from_tags(self.plan.tags, self.id_field).window_ms
        self.use_history, self.num_trees, self.seed = history, num_trees, seed
        self.actor = f"autopilot-{uuid.uuid4().hex[:8]}"
        self.history: list[Deployment] = []
        self.rows: dict[str, dict] = {}
        self.alerts: list[dict] = []
        self.skipped: dict[str, int] = {}  # topic -> records that were not JSON objects
        bootstrap = settings.bootstrap_servers
        ensure_topics(bootstrap, [self.topics.labeled, self.topics.prediction_log], settings.partitions)
        ensure_topics(bootstrap, [self.topics.monitoring], 1)
        self._deployments = Follower(bootstrap, self.topics.deployments, Deployment.from_json)
        self._labeled = assigned_consumer(bootstrap, self.topics.labeled)
        self._monitoring = assigned_consumer(bootstrap, self.topics.monitoring)
        self._log = assigned_consumer(bootstrap, self.topics.prediction_log)
        self._guard = RolloutPolicy(self.plan.partition_key, score_reference(self.registry))

    def close(self) -> None:
        for c in (self._labeled, self._monitoring, self._log):
            c.close()
        self._deployments.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ------------------------------------------------------------

    def _read(self) -> None:
        self._deployments.read(self.history.append, idle_s=0.3, timeout_s=30.0)
        batch = [r for r in self._parse(_drain(self._labeled), self.topics.labeled) if self.id_field in r]
        held = [self.rows[k] for k in {str(r[self.id_field]) for r in batch} if k in self.rows]
        self.rows.update(latest_rows([*held, *batch], self.id_field))
        alerts = self._parse(_drain(self._monitoring), self.topics.monitoring)
        self.alerts.extend(r for r in alerts if r.get("kind") == "alert")
        current = self._state().current
        log_records = _drain(self._log)
        if current.mode == "canary":  # the largest topic: parsed only while a canary's guardrails are judged
            self._guard.observe(current, self._parse(log_records, self.topics.prediction_log), time.monotonic())

    def _parse(self, values: list[bytes], topic: str) -> list[dict]:
        """JSON objects; anything else is skipped, counted in `skipped[topic]` and logged (it is not the autopilot's
        to dead-letter: the topic's writer owns it)."""
        out = []
        for value in values:
            try:
                record = orjson.loads(value)
            except ValueError:
                record = None
            if isinstance(record, dict):
                out.append(record)
            else:
                self.skipped[topic] = self.skipped.get(topic, 0) + 1
                log.warning("skipping a record on %s that is not a JSON object (%d so far)", topic, self.skipped[topic])
        return out

    def _state(self) -> ap.State:
        state = ap.state_of(self.history)
        if state.current is None:
            # No record yet: the registry's champion serves, as the workers assume (seq 0).
            state = ap.State(current=first(self.registry.resolve("champion")))
        return state

    # -- one turn -----------------------------------------------------------

    def step(self, force_trigger: str | None = None) -> list[Deployment]:
        """Read what is new and act at most once; returns the records this autopilot wrote (and won)."""
        return self.turn(self.read_state(), force_trigger)

    def read_state(self) -> ap.State:
        """Read what is new on the four topics; the state the deployments topic says."""
        self._read()
        return self._state()

    def turn(self, state: ap.State, force_trigger: str | None = None) -> list[Deployment]:
        """Act on `state` at most once (every action a record at `state`'s seq + 1, read back before acting)."""
        if state.stage == ap.SHADOW:
            return self._after_shadow(state)
        if state.stage == ap.CANARY:
            return self._after_canary(state)
        if state.stage == ap.TRAINING and not ap.stale(state, self.policy, _now_ms()):
            return []  # another turn (or autopilot) is training; its outcome will be the next record
        trigger = force_trigger or self._trigger(state)
        return [] if trigger is None else self._train(state, trigger)

    def _trigger(self, state: ap.State) -> str | None:
        champion = state.current.champion
        mature, _ = ap.mature(list(self.rows.values()), self.window_ms)
        after = state.data_end_ms
        new = sum(1 for r in mature if after is None or ap.ms_of(r["event_time"]) > after)
        meta = self._meta(champion)
        created = ap.ms_of(meta["created_at"]) if meta.get("created_at") else None
        validation = meta.get("validation_auc")
        online = ap.champion_auc(mature, champion, self.policy.metric_rows)
        since = ap.ms_of(state.last_training_at) if state.last_training_at else None
        return ap.due(
            state, self.policy, now_ms=_now_ms(), champion_created_ms=created,
            alerts=ap.drift_alerts(self.alerts, champion, since), new_mature_labels=new,
            champion_auc=None if validation is None else (online, float(validation)),
        )

    def _meta(self, version: str) -> dict:
        try:
            return self.registry.meta(version)
        except (RegistryError, OSError):
            return {}

    # -- acting: every action a record first, read back ---------------------

    def _write(self, record: Deployment) -> bool:
        """Publish `record` and read the topic back: True if it took effect (no other record took its seq first)."""
        claim = record.autopilot["claim"]
        publish(self.settings.bootstrap_servers, self.topics.deployments, record)
        deadline = time.monotonic() + 60
        while not any(r.autopilot.get("claim") == claim for r in self.history) and time.monotonic() < deadline:
            self._deployments.read(self.history.append, idle_s=0.5, timeout_s=10.0)
        won = any(r.autopilot.get("claim") == claim for r in ap.applied(self.history))
        if won:
            log.info("deployment %d written: %s", record.seq, record.reason)
        else:
            log.warning("deployment %d lost: another writer took seq %d first; not acting", record.seq, record.seq)
        return won

    def _act(self, state: ap.State, stage: str, reason: str, **changes) -> Deployment | None:
        claim = f"{self.actor}:{uuid.uuid4().hex[:8]}"
        extra = changes.pop("autopilot", {})
        rec = ap.record(state, stage, reason, now_iso(), claim, autopilot={"actor": self.actor, **extra}, **changes)
        return rec if self._write(rec) else None

    def _train(self, state: ap.State, trigger: str) -> list[Deployment]:
        claim = self._act(state, ap.TRAINING, f"training a candidate (trigger {trigger})", trigger=trigger,
                          candidate="")
        if claim is None:
            return []
        wrote = [claim]
        state = self._state()
        try:
            version, meta = self._fit(state.current.champion, trigger)
        except Exception as exc:  # noqa: BLE001 - an outcome, not a crash: too few mature rows, LightGBM's refusal, ...
            # The rows it had count as seen: the next "new labels" trigger waits for as many new ones.
            mature, _ = ap.mature(list(self.rows.values()), self.window_ms)
            seen = max((ap.ms_of(r["event_time"]) for r in mature), default=None)
            done = self._act(state, ap.REFUSED, f"training failed: {exc}", candidate="",
                             autopilot={"data_window": {"end_ms": seen}} if seen is not None else {})
            return wrote + ([done] if done else [])
        gate, lineage = meta["gate"], {"gate": meta["gate"], "data_window": meta["data_window"]}
        if not gate["passed"]:
            done = self._act(state, ap.REFUSED, f"candidate {version} refused at the gate: {gate['why']}",
                             candidate=version, autopilot=lineage)
            if done:
                self._retire(version, done.reason)
            return wrote + ([done] if done else [])
        done = self._act(state, ap.SHADOW, f"candidate {version} passed the gate ({gate['why']}); shadow",
                         candidate=version, mode="shadow", challengers=(version,), share=0.0, autopilot=lineage)
        if done:
            self.registry.set_alias(CHALLENGER, version, reason=done.reason)
        return wrote + ([done] if done else [])

    def _after_shadow(self, state: ap.State) -> list[Deployment]:
        report = self._report(state)
        nxt = ap.after_shadow(report, self.policy)
        if nxt is None:
            return []
        stage, why = nxt
        if stage == ap.CANARY:
            done = self._act(state, ap.CANARY, f"canary {state.candidate} at {self.policy.canary_share:g}: {why}",
                             mode="canary", challengers=(state.candidate,), share=self.policy.canary_share, ramp=(),
                             step=0, autopilot={"experiment": _brief(report)})
        else:
            done = self._end(state, ap.REFUSED, f"candidate {state.candidate} refused: {why}", report)
        return [done] if done else []

    def _after_canary(self, state: ap.State) -> list[Deployment]:
        report = self._report(state)
        guard = self._guard.decide(state.current, time.monotonic())
        breach = guard.reason.removeprefix("guardrail: ") if guard is not None and guard.by == "guardrail" else None
        arm = self._guard.arms.get("canary")
        nxt = ap.after_canary(report, arm.events if arm else 0, breach and f"guardrail: {breach}", self.policy)
        if nxt is None:
            return []
        stage, why = nxt
        if stage == ap.ROLLED_BACK:
            done = self._end(state, ap.ROLLED_BACK, f"canary {state.candidate} rolled back: {why}", report)
            return [done] if done else []
        done = self._act(state, ap.PROMOTED, f"{state.candidate} promoted: {why}", champion=state.candidate,
                         mode="champion", challengers=(), share=0.0, ramp=(), step=0,
                         autopilot={"experiment": _brief(report), "previous_champion": state.current.champion})
        if done:
            try:
                promote(self.registry, state.candidate, reason=done.reason)
            except RegistryError as exc:
                # The record serves the candidate already; the alias is what `sluice train` and rollback read.
                log.error("deployment %d promotes %s, but the registry refused the alias: %s", done.seq,
                          state.candidate, exc)
        return [done] if done else []

    def _end(self, state: ap.State, stage: str, reason: str, report: dict) -> Deployment | None:
        done = self._act(state, stage, reason, mode="champion", challengers=(), share=0.0, ramp=(), step=0,
                         autopilot={"experiment": _brief(report)})
        if done:
            self._retire(state.candidate, reason)
        return done

    def _retire(self, version: str, reason: str) -> None:
        try:
            self.registry.retire(version, reason=reason)
        except RegistryError as exc:
            log.warning("could not retire %s: %s", version, exc)

    def _report(self, state: ap.State) -> dict:
        champion, candidate = state.current.champion, state.candidate
        thresholds = {v: float(t) for v in (champion, candidate) if (t := self._meta(v).get("threshold")) is not None}
        return paired(list(self.rows.values()), champion, candidate, thresholds).report(self.policy.experiment)

    # -- training and the gate ---------------------------------------------

    def _fit(self, champion: str, trigger: str) -> tuple[str, dict]:
        mature, clock = ap.mature(list(self.rows.values()), self.window_ms)
        fit_rows, gate_rows = ap.split(mature, self.policy.gate_share)
        gate_rows = [r for r in gate_rows if (r.get("scores") or {}).get(champion) is not None]
        if not fit_rows or not gate_rows:
            msg = f"{len(mature)} mature labeled rows: not enough to train and gate (label clock {clock and _iso(clock)})"
            raise SluiceError(msg)
        frame = self._frame(fit_rows, clock)
        gate_x = _matrix(gate_rows, self.plan.vector)
        gate_y = np.array([r["label"] for r in gate_rows], dtype=np.float64)
        champion_scores = np.array([r["scores"][champion] for r in gate_rows], dtype=np.float64)
        window = {
            "start": frame.event_time.min().isoformat(), "end": frame.event_time.max().isoformat(),
            "end_ms": int(frame.event_time.max().value // 1_000_000), "rows": len(frame.y),
            "labeled_rows": len(fit_rows), "history_rows": len(frame.y) - len(fit_rows),
            "gate_start": gate_rows[0]["event_time"], "gate_end": gate_rows[-1]["event_time"],
            "gate_rows": len(gate_rows), "label_clock": _iso(clock), "label_window_ms": self.window_ms,
        }
        # The training rows' newest event time is where the next "new labels" count starts; the gate's rows
        # count as seen too (they are in this decision).
        window["end_ms"] = max(window["end_ms"], ap.ms_of(gate_rows[-1]["event_time"]))

        def judge(booster) -> dict:
            candidate = booster.predict(gate_x.to_numpy(), num_threads=2)
            return {"gate": ap.gate(gate_y, champion_scores, candidate, self.policy), "data_window": window,
                    "autopilot": {"actor": self.actor, "trigger": trigger}}

        definition = ("autopilot: labels joined to the served vectors, mature rows only (label window closed by "
                      "the label clock), the most recent share held out for the gate"
                      + ("; plus the repo's history before the first labeled row" if self.use_history else ""))
        result = train(self.repo_path, self.registry, service=self.settings.feature_service, frame=frame,
                       num_trees=self.num_trees, seed=self.seed, parent=champion, trigger=trigger, alias=None,
                       label_definition=definition, before_publish=judge)
        return result.version, result.meta

    def _frame(self, fit_rows: list[dict], clock: int) -> TrainingFrame:
        x = _matrix(fit_rows, self.plan.vector)
        y = np.array([r["label"] >= 0.5 for r in fit_rows], dtype=int)
        event_time = pd.Series(pd.to_datetime([r["event_time"] for r in fit_rows], utc=True, format="ISO8601"))
        if self.use_history:
            past = training_frame(self.repo_path, self.settings.feature_service, None, None)
            keep = (past.event_time < event_time.min()).to_numpy()
            x = pd.concat([past.x[keep].reset_index(drop=True), x], ignore_index=True)
            y = np.concatenate([past.y[keep], y])
            event_time = pd.concat([past.event_time[keep].reset_index(drop=True), event_time], ignore_index=True)
        return TrainingFrame(x, y, event_time, self.plan, pd.Timestamp(clock, unit="ms", tz="UTC"),
                             pd.Timedelta(milliseconds=self.window_ms), self.categorical)

    def run(self, stop, interval_s: float = 5.0) -> None:
        """Turn until `stop` (a threading.Event) is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a broker or registry hiccup: the next turn reads the topics again
                log.exception("autopilot turn failed; trying again in %.0f s", interval_s)
            stop.wait(interval_s)


def _matrix(rows: list[dict], names) -> pd.DataFrame:
    """The served vectors in FeatureService order (null: missing)."""
    data = np.array([[np.nan if (v := r["features"].get(n)) is None else v for n in names] for r in rows],
                    dtype=np.float64).reshape(len(rows), len(names))
    return pd.DataFrame(data, columns=list(names))


def _brief(report: dict) -> dict:
    return {k: report.get(k) for k in ("metric", "effect", "interval", "p_value", "n", "positives", "decision")}


def _drain(consumer) -> list[bytes]:
    """Every message the consumer has now (until a poll returns nothing)."""
    out: list[bytes] = []
    while True:
        batch = consumer.consume(10000, timeout=0.2)
        if not batch:
            return out
        out.extend(m.value() for m in batch if not m.error() and m.value() is not None)


def _now_ms() -> int:
    return int(time.time() * 1000)
