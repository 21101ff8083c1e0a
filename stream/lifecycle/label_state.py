"""What the label join keeps per event, and the index that finds what is due: keys and byte layouts.

One entry per event id (`lj:<id>`) holds a prediction waiting for its
label, a label waiting for its prediction, or a joined row kept so that
duplicates and corrections can still be recognised. A prediction keeps only
what its labeled row needs: the vector (float64), every version's score, the
route, the threshold, the event and scoring times. Feature names are stored
once per partition and FeatureService (`ljn:<partition>:<hash>`), not per entry.

Entries are found again when their time is due through buckets of due time:
a chunk that touches entries appends their ids to one new segment per bucket
(`ljs:<partition>:<bucket>:<i>`, with a count `ljb:<partition>:<bucket>`);
segments are append-only, so writing one costs what the chunk added, never
what the bucket holds. An id may sit in stale segments: whoever reads a
segment checks the entry's own due time.

Per partition, one marker (`\\x00lj:<partition>`) records the label clock,
the lowest bucket that may hold ids, the last offset applied of each input
topic and, per other partition, the clock it announced and the offset of
the last label it forwarded here. It is written after the entries and
before any deletion (see `write_order`): a crash leaves a prefix of a state
write, so a deletion is never on the broker without the marker that makes
its cause skipped on replay.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

ENTRY_PREFIX = "lj:"
_HEAD = struct.Struct("<BHqdq")  # flags, revision, last labels offset applied, label, label time (ms)
_PRED = struct.Struct("<qqd8sH")  # event time, scored at (ms), threshold, names id, vector length
_MARK = struct.Struct("<qqqq")  # clock (ms), lowest bucket, last labels offset, last prediction_log offset
_PEERS = struct.Struct("<qH")  # own clock last announced (ms), how many peer rows follow (older markers end before)
_PEER = struct.Struct("<Hqq")  # partition, the clock it announced (ms), last offset of its forwarded labels applied
_NONE = -(2**62)  # "no value" for times, buckets and offsets
HAS_PRED, CLOSED, HAS_LABEL, FROM_WINDOW = 1, 2, 4, 8


@dataclass(slots=True)
class Prediction:
    event_ms: int
    scored_ms: int
    threshold: float  # NaN: none was given
    names_id: bytes  # 8 bytes, see names_key
    vector: np.ndarray  # float64, NaN for a missing value
    model_version: str
    route: str
    scores: dict  # version -> score
    fallback: str | None = None
    exploration: tuple | None = None  # (would_block, explored, propensity) where the deployment explored


@dataclass(slots=True)
class Entry:
    """One event's join state."""

    has_pred: bool = False
    closed: bool = False  # its label window closed
    has_label: bool = False
    from_window: bool = False  # the label is the window's default, not a label record
    revision: int = 0  # labels accepted so far (a duplicate does not count)
    label_offset: int = -1  # the last labels-topic offset applied to this entry
    label: float = math.nan
    label_ms: int = _NONE
    pred: Prediction | None = field(default=None)


def encode(entry: Entry) -> bytes:
    flags = (HAS_PRED * entry.has_pred) | (CLOSED * entry.closed) | (HAS_LABEL * entry.has_label)
    flags |= FROM_WINDOW * entry.from_window
    head = _HEAD.pack(flags, entry.revision, entry.label_offset, entry.label, entry.label_ms)
    p = entry.pred
    if p is None:
        return head
    vector = np.ascontiguousarray(p.vector, dtype="<f8")
    parts = [p.model_version, p.route, p.scores, p.fallback]
    if p.exploration is not None:  # older entries end after the fallback: they decode the same
        parts.append(list(p.exploration))
    tail = orjson.dumps(parts)
    return head + _PRED.pack(p.event_ms, p.scored_ms, p.threshold, p.names_id, len(vector)) + vector.tobytes() + tail


def decode(blob: bytes) -> Entry:
    flags, revision, label_offset, label, label_ms = _HEAD.unpack_from(blob)
    entry = Entry(
        bool(flags & HAS_PRED), bool(flags & CLOSED), bool(flags & HAS_LABEL), bool(flags & FROM_WINDOW),
        revision, label_offset, label, label_ms,
    )
    if entry.has_pred:
        at = _HEAD.size
        event_ms, scored_ms, threshold, names_id, n = _PRED.unpack_from(blob, at)
        at += _PRED.size
        vector = np.frombuffer(blob, dtype="<f8", count=n, offset=at)
        version, route, scores, fallback, *rest = orjson.loads(blob[at + 8 * n :])
        exploration = tuple(rest[0]) if rest else None
        entry.pred = Prediction(event_ms, scored_ms, threshold, names_id, vector, version, route, scores, fallback, exploration)
    return entry


def entry_key(event_id: str) -> str:
    return ENTRY_PREFIX + event_id


def names_blob(feature_service: str, names: list[str]) -> bytes:
    return orjson.dumps([feature_service, names])


def names_id(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=8).digest()


def names_key(partition: int, ident: bytes) -> str:
    # Per partition: a partition's changelog must restore everything its entries refer to.
    return f"ljn:{partition}:{ident.hex()}"


def count_key(partition: int, bucket: int) -> str:
    return f"ljb:{partition}:{bucket}"


def segment_key(partition: int, bucket: int, i: int) -> str:
    return f"ljs:{partition}:{bucket}:{i}"


def marker_key(partition: int) -> str:
    return f"\x00lj:{partition}"


@dataclass
class Peer:
    """What this partition knows of another partition of the labels topic."""

    clock_ms: int | None = None  # the label clock it announced: it has forwarded every older label it read
    forwarded_done: int = -1  # the last offset (on its partition) of a label it forwarded here, applied


@dataclass
class Marker:
    clock_ms: int | None = None  # this partition's own label clock: largest label time (or clock record) seen
    low_bucket: int | None = None  # no id is indexed below this bucket
    labels_done: int = -1  # offsets applied (outputs and state on the broker)
    log_done: int = -1
    peers: dict[int, Peer] = field(default_factory=dict)  # partition -> what it announced and forwarded
    announced_ms: int | None = None  # this partition's clock as it last announced it to the others

    def encode(self) -> bytes:
        clock = _NONE if self.clock_ms is None else self.clock_ms
        low = _NONE if self.low_bucket is None else self.low_bucket
        rows = [
            _PEER.pack(q, _NONE if peer.clock_ms is None else peer.clock_ms, peer.forwarded_done)
            for q, peer in sorted(self.peers.items())
        ]
        announced = _NONE if self.announced_ms is None else self.announced_ms
        return _MARK.pack(clock, low, self.labels_done, self.log_done) + _PEERS.pack(announced, len(rows)) + b"".join(rows)

    @classmethod
    def decode(cls, blob: bytes | None) -> Marker:
        if not blob:
            return cls()
        clock, low, labels_done, log_done = _MARK.unpack_from(blob)
        marker = cls(None if clock == _NONE else clock, None if low == _NONE else low, labels_done, log_done)
        if len(blob) > _MARK.size:
            announced, n = _PEERS.unpack_from(blob, _MARK.size)
            marker.announced_ms = None if announced == _NONE else announced
            for i in range(n):
                q, peer_clock, done = _PEER.unpack_from(blob, _MARK.size + _PEERS.size + i * _PEER.size)
                marker.peers[q] = Peer(None if peer_clock == _NONE else peer_clock, done)
        return marker

    def peer(self, partition: int) -> Peer:
        found = self.peers.get(partition)
        if found is None:
            found = self.peers[partition] = Peer()
        return found

    def join_clock_ms(self, partition: int, partitions: int) -> int | None:
        """The clock deadlines are judged by: the earliest of this partition's own and every peer's announced clock.

        A label produced to another partition reaches this one only after
        that partition has read it, so until every partition has announced
        a time, a label older than it may still be on its way here.
        """
        clock = self.clock_ms
        for q in range(partitions):
            if q == partition or clock is None:
                continue
            peer = self.peers.get(q)
            announced = None if peer is None else peer.clock_ms
            clock = None if announced is None else min(clock, announced)
        return clock


def write_order(writes: dict[str, bytes | None]) -> list[tuple[str, bytes | None]]:
    """Entries, names and segments first, then the markers, then every deletion (see the module docstring)."""
    return sorted(writes.items(), key=lambda kv: 2 if kv[1] is None else (1 if kv[0].startswith("\x00") else 0))


def segment_ids(blob: bytes | None) -> list[str]:
    return blob.decode().split("\n") if blob else []


def segment_blob(ids) -> bytes:
    return "\n".join(ids).encode()
