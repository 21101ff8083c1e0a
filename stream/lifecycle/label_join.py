"""The label join, one chunk at a time: labels meet the prediction log's rows, whichever comes first.

`LabelJoin.step` takes one partition's messages from the `labels` and
`prediction_log` topics (both keyed by event id, co-partitioned) and a state
mapping, and returns the records to produce and the state to write; no
Kafka, no Faust. Every label message gets exactly one outcome record on the
`labeled` topic:

* ``joined``: the event's first label met its prediction (either order);
* ``duplicate``: the label equals the one the event already has;
* ``correction``: a different label replaces it (the previous one is in the
  record, so an evaluation can take it back);
* ``unmatched_label``: no prediction came within the grace.

and every prediction one more when its label window closes without a label:

* ``unlabeled``: with the FeatureService's default label if it declares one
  (the demo: legitimate after 7 days), else with label null. A prediction
  blocked by a deployment that explores gets no default: nothing could be
  observed of a blocked event, and the default would call every fraud it
  caught legitimate (stream/serving/explore.py).

Time is the *label clock*. Each partition has its own: the largest label
time (or clock record) seen on its labels, in offset order. A label produced
to another partition than its prediction's is forwarded by the partition
that read it (see `label_wire`), so it lands here behind records that were
produced after it; therefore every partition announces its own clock to
the others (after forwarding what it read before), and deadlines are judged
by the earliest of this partition's clock and every announced one: nothing
is judged while a label older than the clock may still be on its way. (A
label's own time also closes its own event's window before it applies, as
it would on its own partition.) Windows close and graces end when
the clock leaves the bucket (`bucket_ms`) their deadline falls in, so a
replay in the same order gives the same records, and a label source that
lags does not close windows early. A prediction stays `grace` after its
window closed, so late labels and corrections still find it; a label waits
`grace` for its prediction.

Records are keyed by event id and carry `revision` (labels accepted so
far); (event id, kind, revision) identifies a record: after a crash a record
may come again, identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from features.errors import SluiceError
from features.overlay import Overlay
from stream.lifecycle import label_state as ls
from stream.lifecycle import label_wire
from stream.lifecycle.label_config import CLOCK_KEY, LABELS, LOG, JoinConfig, LabelConfigError, duration_ms, partition_for
from stream.lifecycle.labeled import labeled_record
from stream.pipeline.events import parse_timestamp_ms
from stream.pipeline.records import exploration
from stream.pipeline.outcomes import Output, copy_of

__all__ = ["CLOCK_KEY", "LABELS", "LOG", "JoinConfig", "JoinOutcome", "LabelConfigError", "LabelJoin", "duration_ms", "partition_for"]

@dataclass
class JoinOutcome:
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, bytes | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    records: list[dict] = field(default_factory=list)  # the labeled outputs, as dicts (for online evaluation)
    predicted: list[dict] = field(default_factory=list)  # prediction-log records newly seen

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


class LabelJoin:
    def __init__(self, config: JoinConfig):
        self.config = config
        self.dlq_topic = config.labels_dlq_topic
        self.shapes: dict[tuple, tuple[bytes, bytes]] = {}  # (service, *names) -> (names blob, its id)

    # -- deadlines ------------------------------------------------------------

    def due_ms(self, entry: ls.Entry) -> int:
        c = self.config
        if entry.has_pred:
            return entry.pred.event_ms + c.window_ms + (c.grace_ms if entry.closed else 0)
        return entry.label_ms + c.grace_ms

    def bucket(self, ms: int) -> int:
        return ms // self.config.bucket_ms

    def _is_due(self, entry: ls.Entry, clock_ms: int | None) -> bool:
        return clock_ms is not None and self.bucket(self.due_ms(entry)) < self.bucket(clock_ms)

    # -- the chunk ------------------------------------------------------------

    def step(self, partition: int, messages: list[tuple[str, bytes | None, bytes | None, int]], state: Mapping) -> JoinOutcome:
        """Messages are (topic role: LABELS or LOG, key, value, offset), in the order they are applied."""
        outcome = JoinOutcome()
        run = _Step(self, partition, Overlay(state), outcome)  # the chunk reads what it wrote itself
        for role, key, value, offset in messages:
            run.message(role, key, value, offset)
        run.finish()
        return outcome


class _Step:
    """One chunk's computation (see LabelJoin.step)."""

    def __init__(self, join: LabelJoin, partition: int, chunk: Overlay, outcome: JoinOutcome):
        self.join, self.c, self.p, self.chunk, self.out = join, join.config, partition, chunk, outcome
        self.marker = ls.Marker.decode(chunk.get(ls.marker_key(partition)))
        self.now = self.marker.join_clock_ms(partition, self.c.partitions)  # the clock deadlines are judged by
        self.entries: dict[str, ls.Entry | None] = {}  # decoded, as this chunk leaves them
        self.index: dict[int, set[str]] = {}  # bucket -> ids to add
        self.names: dict[bytes, tuple[str, list[str]]] = {}

    # -- inputs ---------------------------------------------------------------

    def message(self, role: str, key, value, offset: int) -> None:
        m = self.marker
        if offset <= (m.labels_done if role == LABELS else m.log_done):
            self.out.replayed += 1  # applied before a crash: its outputs exist
            return
        if role == LABELS:
            m.labels_done = offset
            self._label(key, value, offset)
        else:
            m.log_done = offset
            self._prediction(value)

    def _advance(self, ms: int) -> None:
        if self.marker.clock_ms is None or ms > self.marker.clock_ms:
            self.marker.clock_ms = ms
            self.now = self.marker.join_clock_ms(self.p, self.c.partitions)

    def _announced(self, partition: int, ms: int) -> None:
        peer = self.marker.peer(partition)
        if peer.clock_ms is None or ms > peer.clock_ms:
            peer.clock_ms = ms
            self.now = self.marker.join_clock_ms(self.p, self.c.partitions)

    def _label(self, key, value, offset: int) -> None:
        if key == CLOCK_KEY:
            try:
                at_ms, peer = label_wire.read_clock(value, self.c.partitions)
            except (ValueError, TypeError, KeyError) as exc:
                self._dead_letter(key, value, offset, f"unreadable clock record: {exc}")
                return
            if peer is None:
                self._advance(at_ms)
            elif peer != self.p:
                self._announced(peer, at_ms)
            return
        parsed = self._parse_label(key, value, offset)
        if parsed is None:
            return
        event_id, label, label_ms, origin = parsed
        wanted = partition_for(event_id.encode(), self.c.partitions)
        if wanted != self.p:
            # Produced with another partitioner (or key): its prediction is not here. The copy
            # goes ahead of this partition's next announced clock, which holds the other's judgement.
            raw = value if origin is None else orjson.dumps(label_wire.read_label(value, self.c.partitions)[0])
            copy = label_wire.forwarded_value(raw, self.p, offset)
            self.out.outputs.append(Output(self.c.labels_topic, event_id.encode(), copy, None, wanted))
            self.out.count("rerouted")
            return
        if origin is not None:
            peer = self.marker.peer(origin[0])
            if origin[1] <= peer.forwarded_done:
                self.out.replayed += 1  # forwarded again by a partition that crashed after sending it
                return
            peer.forwarded_done = origin[1]
        self._advance(label_ms)
        entry = self._settled(event_id, label_ms)
        if entry is not None and entry.label_offset >= offset:
            self.out.replayed += 1  # this entry reached the broker with the label before a crash
            self._keep(event_id, entry)
            return
        if entry is None:
            entry = ls.Entry(has_label=True, revision=1, label=label, label_ms=label_ms)
        elif not entry.has_label:
            entry.has_label, entry.revision, entry.label, entry.label_ms = True, entry.revision + 1, label, label_ms
            self._emit(event_id, "joined", entry)
        elif entry.label == label:
            self._emit(event_id, "duplicate", entry, at_ms=label_ms)
        else:
            previous = (entry.label, "window" if entry.from_window else "label")
            entry.revision, entry.label, entry.label_ms, entry.from_window = entry.revision + 1, label, label_ms, False
            self._emit(event_id, "correction", entry, previous=previous)
        entry.label_offset = offset
        self._keep(event_id, self._settle(event_id, entry))

    def _parse_label(self, key, value, offset: int):
        """(event id, label, label time, (partition, offset) it was forwarded from or None), or None: dead-lettered."""
        c = self.c
        try:
            record, origin = label_wire.read_label(value, c.partitions)
            event_id, label = str(record[c.id_field]), record[c.label_field]
            if isinstance(label, bool):
                label = float(label)
            if not isinstance(label, int | float) or not math.isfinite(label):
                raise ValueError(f"{c.label_field} must be a finite number, not {label!r}")
            label_ms = parse_timestamp_ms(record[c.time_field])
        except (ValueError, TypeError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
            self._dead_letter(key, value, offset, f"not a label record ({c.id_field}, {c.label_field}, {c.time_field}): {exc!r}")
            return None
        return event_id, float(label), label_ms, origin

    def _dead_letter(self, key, value, offset: int, reason: str) -> None:
        source = f"{self.c.labels_topic}/{self.p}/{offset}"
        self.out.outputs.append(copy_of(self.join.dlq_topic, key, value, reason, source, self.c.max_message_bytes))
        self.out.count("invalid")

    def _prediction(self, value) -> None:
        record = orjson.loads(value)  # the worker wrote it
        event_id = str(record[self.c.id_field])
        entry = self._settled(event_id)
        if entry is not None and entry.has_pred:
            self.out.count("duplicate_prediction")  # the worker re-sent it after a crash
            self._keep(event_id, entry)
            return
        self.out.count("predictions")
        self.out.predicted.append(record)
        pred = self._pred_of(record)
        if entry is None:
            entry = ls.Entry(has_pred=True, pred=pred)
        else:
            entry.has_pred, entry.pred = True, pred
            self._emit(event_id, "joined", entry)
        self._keep(event_id, self._settle(event_id, entry))

    def _pred_of(self, record: dict) -> ls.Prediction:
        features = record["features"]
        service = record.get("feature_service", "")
        shape = (service, *features)
        known = self.join.shapes.get(shape)
        if known is None:  # one FeatureService's names, hashed once per process rather than per record
            blob = ls.names_blob(service, list(features))
            known = self.join.shapes[shape] = (blob, ls.names_id(blob))
        blob, ident = known
        if ident not in self.names:
            names = list(features)
            self.names[ident] = (service, names)
            key = ls.names_key(self.p, ident)
            if self.chunk.get(key) is None:
                self.chunk.put(key, blob)
        vector = np.array([math.nan if v is None else v for v in features.values()], dtype=np.float64)
        version = record["model_version"]
        scores = record.get("scores") or ({version: record["score"]} if record.get("score") is not None else {})
        threshold = record.get("threshold")
        return ls.Prediction(
            parse_timestamp_ms(record["event_time"]), parse_timestamp_ms(record["scored_at"]),
            math.nan if threshold is None else float(threshold), ident, vector, version,
            record.get("route") or "champion", scores, record.get("fallback"),
            exploration(record) if "propensity" in record else None,
        )

    # -- entries --------------------------------------------------------------

    def _get(self, event_id: str) -> ls.Entry | None:
        if event_id in self.entries:
            return self.entries[event_id]
        blob = self.chunk.get(ls.entry_key(event_id))
        entry = ls.decode(blob) if blob else None
        self.entries[event_id] = entry
        return entry

    def _settled(self, event_id: str, label_ms: int | None = None) -> ls.Entry | None:
        entry = self._get(event_id)
        return None if entry is None else self._settle(event_id, entry, label_ms)

    def _settle(self, event_id: str, entry: ls.Entry, label_ms: int | None = None) -> ls.Entry | None:
        """Apply every deadline the clock has passed: close the window, or let the entry go.

        A label about to be applied is itself proof that its time has come for its event.
        """
        join, clock = self.join, self.now
        if label_ms is not None and (clock is None or label_ms > clock):
            clock = label_ms
        while entry is not None and join._is_due(entry, clock):
            if entry.has_pred and not entry.closed:
                entry.closed = True
                if not entry.has_label:
                    if self.c.default_label is not None and not _censored(entry.pred):
                        entry.has_label, entry.from_window, entry.label = True, True, self.c.default_label
                        entry.label_ms = entry.pred.event_ms + self.c.window_ms  # when the rule made it known
                    self._emit(event_id, "unlabeled", entry)
            else:
                if not entry.has_pred:
                    self._emit(event_id, "unmatched_label", entry)
                entry = None
        return entry

    def _keep(self, event_id: str, entry: ls.Entry | None) -> None:
        self.entries[event_id] = entry
        key = ls.entry_key(event_id)
        if entry is None:
            if self.chunk.get(key) is not None:
                self.chunk.put(key, None)
            return
        self.chunk.put(key, ls.encode(entry))
        self.index.setdefault(self.join.bucket(self.join.due_ms(entry)), set()).add(event_id)

    def _emit(self, event_id: str, kind: str, entry: ls.Entry, previous: tuple | None = None, at_ms: int | None = None) -> None:
        names = None
        if entry.pred is not None and kind != "duplicate":
            names = self._names(entry.pred.names_id)
        record = labeled_record(self.c.id_field, event_id, kind, entry, names, previous, at_ms)
        self.out.records.append(record)
        self.out.outputs.append(Output(self.c.labeled_topic, event_id.encode(), orjson.dumps(record), None, self.p))
        self.out.count(kind)

    def _names(self, ident: bytes) -> tuple[str, list[str]]:
        """(FeatureService, feature names) of a vector."""
        if ident not in self.names:
            blob = self.chunk.get(ls.names_key(self.p, ident))
            if blob is None:
                msg = f"label join state of partition {self.p} lost the feature names {ident.hex()}; its changelog is incomplete"
                raise SluiceError(msg)
            service, names = orjson.loads(blob)
            self.names[ident] = (service, names)
        return self.names[ident]

    # -- the end of the chunk -------------------------------------------------

    def finish(self) -> None:
        m, join, chunk = self.marker, self.join, self.chunk
        lows = [b for b in (m.low_bucket, min(self.index, default=None)) if b is not None]
        if self.now is not None and lows:
            now = join.bucket(self.now)
            for bucket in range(min(lows), now):
                self._sweep(bucket)
            m.low_bucket = max(min(lows), now)
        for bucket in sorted(self.index):
            ids = self.index[bucket]
            n_key = ls.count_key(self.p, bucket)
            n = int(chunk.get(n_key) or 0)
            chunk.put(ls.segment_key(self.p, bucket, n), ls.segment_blob(sorted(ids)))
            chunk.put(n_key, str(n + 1).encode())
            m.low_bucket = bucket if m.low_bucket is None else min(m.low_bucket, bucket)
        self._announce()
        chunk.put(ls.marker_key(self.p), m.encode())
        self.out.writes = dict(ls.write_order(chunk.staged()))

    def _announce(self) -> None:
        """Tell every other partition this one's clock when it entered a new bucket (judgement is per bucket)."""
        m = self.marker
        own, before = m.clock_ms, m.announced_ms
        if own is None or (before is not None and self.join.bucket(own) <= self.join.bucket(before)):
            return
        m.announced_ms = own
        value = label_wire.clock_value(own, self.p)
        for q in range(self.c.partitions):
            if q != self.p:  # after this chunk's forwarded labels: the same producer keeps their order
                self.out.outputs.append(Output(self.c.labels_topic, CLOCK_KEY, value, None, q))
                self.out.count("announced")

    def _sweep(self, bucket: int) -> None:
        chunk = self.chunk
        n_key = ls.count_key(self.p, bucket)
        n = int(chunk.get(n_key) or 0)
        ids = set(self.index.pop(bucket, ()))
        for i in range(n):
            seg = ls.segment_key(self.p, bucket, i)
            ids.update(ls.segment_ids(chunk.get(seg)))
            chunk.put(seg, None)
        if n:
            chunk.put(n_key, None)
        for event_id in sorted(ids):
            entry = self._get(event_id)
            if entry is not None and self.join._is_due(entry, self.now):
                self._keep(event_id, self._settle(event_id, entry))


def _censored(pred: ls.Prediction) -> bool:
    """A block that exploration did not let through: its outcome was never observable."""
    return pred.exploration is not None and pred.exploration[0] and not pred.exploration[1]
