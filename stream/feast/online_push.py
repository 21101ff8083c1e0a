"""Fresh stream aggregates into the Feast online store, batched and off the hot path.

The worker hands over the state blobs it wrote; every `interval_s` a
background thread evaluates each touched entity's window values just after
its latest event (`features.online.values_after_latest`) and writes them with
`FeatureStore.write_to_online_store`, one call per view. `get_online_features`
and `feast serve` then return values at most about `interval_s` plus the
write time old. Only the newest blob per entity is kept between pushes, so
the cost follows distinct entities, not events.
"""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd

from features.columns import KEY_SEP
from features.online import values_after_latest
from features.spec import FeaturePlan
from stream import metrics

log = logging.getLogger("sluice.online_push")


class OnlinePusher:
    def __init__(self, repo_path, plan: FeaturePlan, interval_s: float = 1.0):
        from features.feast_repo import open_store
        from stream.feast.unchecked import offline_store_unvalidated

        # Its own FeatureStore: the online store client is used from this thread only.
        with offline_store_unvalidated():  # it writes online only
            self.store = open_store(repo_path)
        self.plan = plan
        self.views = {v.name: v for v in plan.stream_views}
        # Feast writes rows stamped with the view's batch source timestamp field.
        self.timestamp_fields = {
            name: self.store.get_stream_feature_view(name).batch_source.timestamp_field for name in self.views
        }
        self.interval_s = interval_s
        self._pending: dict[str, dict[str, tuple[bytes, float]]] = {name: {} for name in self.views}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-online-push", daemon=True)
        self.last_push_s = 0.0
        self.pushed = 0

    def start(self) -> OnlinePusher:
        self._thread.start()
        return self

    def offer(self, writes: dict[str, bytes], event_ms: float) -> None:
        """State written for a batch (table key "view/entity" -> blob); `event_ms` = its oldest Kafka timestamp."""
        with self._lock:
            for key, blob in writes.items():
                view, _, entity = key.partition("/")
                pending = self._pending.get(view)
                if pending is not None:
                    old = pending.get(entity)
                    pending[entity] = (blob, min(event_ms, old[1]) if old else event_ms)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception:  # noqa: BLE001 - the online store is best effort; scoring goes on
                log.exception("pushing aggregates to the online store failed; will retry")

    def push(self) -> int:
        with self._lock:
            batches, self._pending = self._pending, {name: {} for name in self.views}
        written = 0
        for name, entries in batches.items():
            if not entries:
                continue
            view = self.views[name]
            entities = list(entries)
            at_ms, values = values_after_latest(view, [entries[e][0] for e in entities])
            frame = pd.DataFrame({k: [] for k in view.join_keys})
            parts = [e.split(KEY_SEP) for e in entities]
            for i, key in enumerate(view.join_keys):
                frame[key] = [p[i] for p in parts]
            frame[self.timestamp_fields[name]] = pd.to_datetime(at_ms, unit="ms", utc=True)
            for agg in view.aggs:
                frame[agg.name] = values[agg.name]
            self.store.write_to_online_store(name, frame)
            now_ms = time.time() * 1000
            for entity in entities:
                metrics.ONLINE_STALENESS.observe(max(0.0, now_ms - entries[entity][1]) / 1000)
            written += len(entities)
        self.pushed += written
        self.last_push_s = time.time()
        return written

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.push()
