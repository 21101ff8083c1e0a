"""`sluice rollout`: the one controller of a consumer group's canaries and A/B tests.

It follows the `deployments` topic (what serves now) and reads the whole
`prediction_log` (what every worker served), feeds the rollout policy
(stream/serving/rollout.py) and writes what it decides, a ramp step or a
guardrail rollback, as a new deployment record. An A/B sample-ratio
mismatch is an alert on the `monitoring` topic, sent once while it lasts.
The controller holds no state of its own: restarted, it reads both topics
again and reaches the same view.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from prometheus_client import CollectorRegistry

from features.errors import SluiceError
from stream.health_http import ServiceHealth
from stream.kafka.clients import ensure_topics, make_admin, make_producer
from stream.kafka.control import Follower, publish
from stream.kafka.reader import assigned_consumer
from stream.kafka.topics import AppTopics
from stream.registry import ModelStore, open_registry
from stream.serving.deployment import Deployment, first
from stream.serving.rollout import RolloutPolicy, now_iso

log = logging.getLogger("sluice.rollout")


def score_reference(registry: ModelStore):
    """version -> the score reference in its model.json, or None."""
    cache: dict = {}

    def lookup(version: str):
        if version not in cache:
            try:
                meta = registry.meta(version)
                cache[version] = (meta.get("reference") or {}).get("score")
            except (OSError, ValueError, SluiceError):
                cache[version] = None
        return cache[version]

    return lookup


class Controller:
    def __init__(
        self, settings, entity_field: str, champion: str, interval_s: float = 0.5, registry: ModelStore | None = None,
        topics: AppTopics | None = None,
    ):
        self.settings = settings
        self.topics = topics or AppTopics.named(settings)
        self.interval_s = interval_s
        self.policy = RolloutPolicy(entity_field, score_reference(registry or open_registry(settings)))
        self.current: Deployment = first(champion)
        self.decisions: list[Deployment] = []
        self._srm_open = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beat = lambda: None  # once per turn of the loop: run_rollout makes it the liveness heartbeat

    def _apply(self, record: Deployment) -> None:
        if record.seq > self.current.seq:
            self.current = record

    def start(self) -> Controller:
        bootstrap = self.settings.bootstrap_servers
        ensure_topics(bootstrap, [self.topics.prediction_log, self.topics.monitoring], self.settings.partitions)
        self._follower = Follower(bootstrap, self.topics.deployments, Deployment.from_json)
        self._follower.read(self._apply, idle_s=1.0, timeout_s=30.0)
        self._follower.follow(self._apply, self._stop)
        self._log = assigned_consumer(bootstrap, self.topics.prediction_log)
        self._thread = threading.Thread(target=self._loop, name="sluice-rollout", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._follower.close()
        self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _loop(self) -> None:
        next_check = time.monotonic()
        while not self._stop.is_set():
            self.beat()
            batch = self._log.consume(5000, timeout=0.1)
            records = []
            for msg in batch:
                if msg.error():
                    continue
                try:
                    records.append(orjson.loads(msg.value()))
                except ValueError:
                    continue
            dep = self.current
            now = time.monotonic()
            self.policy.observe(dep, records, now)
            if now < next_check:
                continue
            next_check = now + self.interval_s
            decision = self.policy.decide(dep, now)
            if decision is not None:
                self._publish(decision)
            self._check_ratio(dep)

    def _publish(self, decision: Deployment) -> None:
        try:
            publish(self.settings.bootstrap_servers, self.topics.deployments, decision)
        except Exception:  # noqa: BLE001 - retried at the next check
            log.exception("could not write deployment %d", decision.seq)
            return
        self.decisions.append(decision)
        self._apply(decision)
        # A ramp step is routine; a guardrail rolling the canary back is what an operator must see.
        level = logging.WARNING if decision.by == "guardrail" else logging.INFO
        log.log(level, "deployment %d written: %s", decision.seq, decision.reason)

    def _check_ratio(self, dep: Deployment) -> None:
        check = self.policy.sample_ratio(dep)
        if check is None or check["mismatch"] == self._srm_open:
            return
        self._srm_open = check["mismatch"]
        alert = {
            "kind": "sample_ratio_mismatch" if check["mismatch"] else "sample_ratio_recovered",
            "statistic": "srm_p_value", "value": check["p_value"], "threshold": 0.001,
            "model_version": dep.challengers[0], "deployment_seq": dep.seq, "at": now_iso(), **check,
        }
        producer = make_producer(self.settings.bootstrap_servers)
        producer.produce(self.topics.monitoring, key=b"sample_ratio", value=orjson.dumps(alert))
        producer.flush(10.0)
        log.log(logging.WARNING if check["mismatch"] else logging.INFO, "A/B sample ratio: %s", alert)


def run_rollout(settings, entity_field: str, champion: str, registry: ModelStore | None = None) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    controller = Controller(settings, entity_field, champion, registry=registry)
    health = controller_health(controller).serve(settings.metrics_port, settings.metrics_host, CollectorRegistry())
    controller.start()
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        health.close()
        controller.stop()


def controller_health(controller: Controller) -> ServiceHealth:
    """Alive while the loop turns; ready once it follows the deployments and the broker answers."""
    admin = make_admin(controller.settings.bootstrap_servers)
    health = ServiceHealth(
        "rollout", admin.list_topics, working=lambda: None if controller._thread else "reading the deployments",
    )
    controller.beat = health.beat
    return health
