"""Hot swap: every worker follows the `deployments` topic, loads what a record names, then switches.

Load, verify, switch: each version a deployment names is loaded and
verified (checksum, the FeatureService's feature list, a test load in a
child process) in the follower's thread while the old models keep serving;
only when all of them load does the engine get the new `Serving`, which the
next micro-batch of every partition picks up. A record whose models do not
load is refused: counted, logged and answered by an alert record on the
`monitoring` topic; the old deployment keeps serving.

On start-up the worker reads the whole topic before it takes partitions and
applies the newest deployment that loads, which is the one the running
workers serve: they refused the same records.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from datetime import UTC, datetime

import orjson

from features.errors import SluiceError
from stream import metrics
from stream.kafka.clients import make_producer
from stream.kafka.control import Follower
from stream.kafka.topics import AppTopics
from stream.registry import local_folder, open_registry
from stream.serving.compiled import with_compiled
from stream.serving.deployment import Deployment
from stream.serving.model import load_model
from stream.serving.scorer import Serving

log = logging.getLogger("sluice.deployments")



class Deployer:
    """Applies deployment records to an engine (`engine.serving`)."""

    def __init__(self, engine, settings, folder_of=None):
        self.engine = engine
        self.settings = settings
        self.features = tuple(engine.plan.vector)
        self.folder_of = folder_of or local_folder(open_registry(settings))
        self.refused: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._follower: Follower | None = None
        self._info: set = set()  # (version, role) label pairs of sluice_model_info now set

    @property
    def current(self) -> Deployment:
        return self.engine.serving.deployment

    def start(self) -> None:
        """Catch up with the topic (blocking), then follow it in the background."""
        bootstrap, topic = self.settings.bootstrap_servers, AppTopics.named(self.settings).deployments
        self._follower = Follower(bootstrap, topic, Deployment.from_json)
        seen: list[Deployment] = []
        self._follower.catch_up(seen.append, timeout_s=60.0)
        for record in reversed(seen):  # the newest that loads
            if record.seq <= self.current.seq or self.apply(record):
                break
        self._report()
        self._follower.follow(self.apply, self._stop)

    def stop(self) -> None:
        self._stop.set()

    def apply(self, record: Deployment) -> bool:
        """Switch to `record` if its models load; False (and an alert) if they do not."""
        with self._lock:
            if record.seq <= self.current.seq:
                return True  # already applied, or older than what serves
            old = self.engine.serving
            started = time.perf_counter()
            models = {}
            for version in (*record.versions, *record.fallback_versions):
                if version in old.models:
                    models[version] = old.models[version]
                    continue
                try:
                    model = load_model(self.folder_of(version), expected_features=self.features)
                    models[version] = with_compiled(model, self.settings.compiled_scorer)
                except SluiceError as exc:  # ModelError, or the registry cannot provide the version
                    self._refuse(record, version, str(exc))
                    return False
            self.engine.serving = Serving(
                record, models, reason_share=self.settings.reason_share, reason_k=self.settings.scoring_reason_k,
                reason_method=self.settings.reason_method,
            )
            took_s = time.perf_counter() - started
            metrics.DEPLOYMENT_APPLY_SECONDS.observe(took_s)
            log.info(  # routine: the deployments topic holds the record; a refusal below is the problem
                "deployment %d applied after %.2f s of loading: %s champion=%s challengers=%s share=%.3f (%s)",
                record.seq, took_s, record.mode, record.champion, list(record.challengers), record.share, record.reason,
            )
            self._report()
            return True

    def _refuse(self, record: Deployment, version: str, why: str) -> None:
        metrics.MODEL_LOAD_FAILURES.inc()
        self.refused.append((record.seq, version))
        log.error("deployment %d refused: version %s did not load: %s; still serving deployment %d",
                  record.seq, version, why, self.current.seq)
        alert = {
            "kind": "model_load_failed",
            "model_version": version,
            "deployment_seq": record.seq,
            "serving_seq": self.current.seq,
            "reason": why,
            "worker": socket.gethostname(),
            "at": datetime.now(tz=UTC).isoformat(timespec="milliseconds"),
        }
        try:
            producer = make_producer(self.settings.bootstrap_servers)
            producer.produce(AppTopics.named(self.settings).monitoring, key=b"model_load_failed", value=orjson.dumps(alert))
            producer.flush(10.0)
        except Exception:  # noqa: BLE001 - the refusal is counted and logged already
            log.exception("could not write the refusal alert to %s", AppTopics.named(self.settings).monitoring)

    def _report(self) -> None:
        dep = self.current
        metrics.DEPLOYMENT_SEQ.set(dep.seq)
        role = {"shadow": "shadow", "canary": "canary", "ab": "ab_b"}.get(dep.mode, "challenger")
        labels = {(dep.champion, "champion")}
        labels |= {(version, role) for version in dep.challengers}
        labels |= {(version, "fallback") for version in dep.fallback_versions}
        with warnings.catch_warnings():
            # Feast's import sets PROMETHEUS_MULTIPROC_DIR, so prometheus_client warns that removal is
            # not implemented for multi-process mode; the worker keeps in-process values (stream.metrics),
            # where removal works.
            warnings.simplefilter("ignore", UserWarning)
            for gone in self._info - labels:
                metrics.MODEL_INFO.remove(*gone)
        for version, kind in labels:
            metrics.MODEL_INFO.labels(version, kind).set(1)
        self._info = labels
