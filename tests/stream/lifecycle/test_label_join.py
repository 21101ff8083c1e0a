"""The label join as a pure step over dicts: every order, duplicates, corrections, expiry, replays."""

from __future__ import annotations

import random

import orjson
import pytest

from stream.lifecycle import label_state as ls
from stream.lifecycle.label_join import CLOCK_KEY, LABELS, LOG, JoinConfig, LabelJoin, partition_for
from stream.lifecycle.labeled import rows
from stream.pipeline.events import iso_ms

DAY = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21
NAMES = ["a__x", "a__y", "b__z"]
P = 4


def config(**kw) -> JoinConfig:
    base = dict(id_field="tid", label_field="is_fraud", window_ms=7 * DAY, grace_ms=14 * DAY, partitions=P)
    return JoinConfig(**{**base, **kw})


def ids_in(partition: int, n: int, prefix: str = "t") -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if partition_for(f"{prefix}{i}".encode(), P) == partition:
            out.append(f"{prefix}{i}")
        i += 1
    return out


def log_record(tid: str, t_ms: int, score: float = 0.25, vector=(1.0, None, 3.5), **extra) -> bytes:
    record = {
        "tid": tid, "score": score, "decision": score > 0.5, "model_version": "v1", "event_time": iso_ms(t_ms),
        "scored_at": iso_ms(t_ms + 40), "feature_service": "fs", "threshold": 0.5,
        "features": dict(zip(NAMES if len(vector) == 3 else [f"v__f{i}" for i in range(len(vector))], vector)),
        "event": {"tid": tid},
    }
    record.update(extra)
    return orjson.dumps(record)


def label(tid: str, value, t_ms: int) -> bytes:
    return orjson.dumps({"tid": tid, "is_fraud": value, "label_time": iso_ms(t_ms)})


def clock(t_ms: int, peer: int | None = None) -> bytes:
    return orjson.dumps({"clock": iso_ms(t_ms)} if peer is None else {"clock": iso_ms(t_ms), "from": peer})


class Harness:
    """One partition's two input topics and a dict state; offsets as a broker would give them."""

    def __init__(self, partition: int = 0, **kw):
        self.join, self.p, self.state = LabelJoin(config(**kw)), partition, {}
        self.offsets = {LABELS: 0, LOG: 0}
        self.records: list[dict] = []

    def msg(self, role: str, key: bytes, value: bytes):
        offset = self.offsets[role]
        self.offsets[role] += 1
        return (role, key, value, offset)

    def pred(self, tid: str, t_ms: int, **kw):
        return self.msg(LOG, tid.encode(), log_record(tid, t_ms, **kw))

    def lab(self, tid: str, value, t_ms: int):
        return self.msg(LABELS, tid.encode(), label(tid, value, t_ms))

    def tick(self, t_ms: int) -> list:
        """The label source's clock record, then every other partition's announcement of it (as a worker sees them)."""
        return [self.msg(LABELS, CLOCK_KEY, clock(t_ms))] + [
            self.msg(LABELS, CLOCK_KEY, clock(t_ms, q)) for q in range(P) if q != self.p
        ]

    def run(self, messages, state=None):
        outcome = self.join.step(self.p, messages, self.state if state is None else state)
        apply(self.state if state is None else state, outcome.writes)
        self.records += [orjson.loads(o.value) for o in outcome.outputs if o.topic == "labeled"]
        return outcome


def apply(state: dict, writes: dict) -> None:
    for key, value in writes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def kinds(records) -> list[str]:
    return [r["kind"] for r in records]


def test_a_label_after_its_prediction_joins_the_exact_vector_and_every_score():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.pred(a, T0, scores={"v1": 0.25, "v2": 0.75}, route="canary"), h.lab(a, 1, T0 + DAY)])
    (joined,) = h.records
    assert joined["kind"] == "joined" and joined["label"] == 1 and joined["revision"] == 1
    assert joined["features"] == {"a__x": 1.0, "a__y": None, "b__z": 3.5}
    assert joined["scores"] == {"v1": 0.25, "v2": 0.75} and joined["route"] == "canary" and joined["score"] == 0.25
    assert joined["event_time"] == iso_ms(T0) and joined["label_time"] == iso_ms(T0 + DAY)


def test_a_label_before_its_prediction_joins_when_the_prediction_comes():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.lab(a, 1, T0 + DAY)])
    assert h.records == []
    h.run([h.pred(a, T0)])
    assert kinds(h.records) == ["joined"] and h.records[0]["label"] == 1


def test_records_without_scores_or_route_take_the_contract_defaults():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.pred(a, T0, score=0.3), h.lab(a, 0, T0 + 1)])
    assert h.records[0]["scores"] == {"v1": 0.3} and h.records[0]["route"] == "champion"
    assert h.records[0]["fallback"] is None


def test_duplicates_change_nothing_and_corrections_replace_the_label():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.pred(a, T0), h.lab(a, 1, T0 + DAY), h.lab(a, 1, T0 + DAY)])
    h.run([h.lab(a, 0, T0 + 2 * DAY), h.lab(a, 0, T0 + 3 * DAY)])
    assert kinds(h.records) == ["joined", "duplicate", "correction", "duplicate"]
    correction = h.records[2]
    assert correction["previous_label"] == 1 and correction["label"] == 0 and correction["revision"] == 2
    assert correction["features"] == h.records[0]["features"]
    assert rows(h.records, "tid")[a]["label"] == 0


def test_a_label_corrected_before_its_prediction_joins_with_the_latest_label():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.lab(a, 1, T0 + DAY), h.lab(a, 0, T0 + 2 * DAY), h.pred(a, T0)])
    assert kinds(h.records) == ["correction", "joined"]
    assert h.records[1]["label"] == 0 and h.records[1]["revision"] == 2


def test_a_label_with_no_prediction_is_unmatched_once_its_grace_has_passed():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.lab(a, 1, T0)])
    h.run(h.tick(T0 + 14 * DAY - 3_600_000))  # still within the grace
    assert h.records == []
    h.run(h.tick(T0 + 15 * DAY))
    assert kinds(h.records) == ["unmatched_label"] and h.records[0]["label"] == 1
    assert not [k for k in h.state if k.startswith(ls.ENTRY_PREFIX)]


@pytest.mark.parametrize("default", [None, 0.0])
def test_a_prediction_whose_window_closes_without_a_label_is_emitted_as_unlabeled(default):
    h = Harness(default_label=default)
    a, b = ids_in(0, 2)
    h.run([h.pred(a, T0), h.pred(b, T0)])
    h.run([h.lab(b, 1, T0 + DAY), *h.tick(T0 + 7 * DAY + 2 * 3_600_000)])
    assert kinds(h.records) == ["joined", "unlabeled"]
    unlabeled = h.records[1]
    assert unlabeled["tid"] == a and unlabeled["label"] == (None if default is None else 0)
    assert unlabeled["features"]["a__x"] == 1.0
    # A chargeback after the window: a correction of the default, or the first label.
    h.run([h.lab(a, 1, T0 + 10 * DAY)])
    assert h.records[-1]["kind"] == ("joined" if default is None else "correction")
    # After the window and the grace, nothing of either event is kept.
    h.run(h.tick(T0 + 30 * DAY))
    assert sorted(k for k in h.state if not k.startswith("\x00")) == [k for k in h.state if k.startswith("ljn:")]


def test_a_misrouted_label_is_sent_to_the_partition_of_its_prediction_and_garbage_is_dead_lettered():
    h = Harness(partition=0)
    other, = ids_in(1, 1)
    out = h.run([h.msg(LABELS, b"whatever", label(other, 1, T0)), h.msg(LABELS, b"x", b"{not json")])
    rerouted, dead = out.outputs
    assert (rerouted.topic, rerouted.key, rerouted.partition) == ("labels", other.encode(), 1)
    assert dead.topic == "labels.dlq" and dict(dead.headers)["sluice.reason"]
    assert out.counts == {"rerouted": 1, "invalid": 1}


def _scenario(h: Harness, seed: int) -> list:
    """Predictions and labels of 40 events, interleaved at random, with duplicates, corrections and orphans."""
    rng = random.Random(seed)
    ids = ids_in(h.p, 40)
    preds = [h.pred(tid, T0 + i * 3_600_000) for i, tid in enumerate(ids[:30])]
    labels = []
    for i, tid in enumerate(ids[10:]):
        at = T0 + i * 3_600_000 + rng.randint(1, 9) * DAY
        labels.append((at, tid, rng.random() < 0.3))
    for at, tid, _ in list(labels[:8]):
        labels.append((at + DAY, tid, rng.random() < 0.5))  # duplicates or corrections
    labels.sort()
    label_msgs = [h.lab(tid, int(v), at) for at, tid, v in labels] + h.tick(T0 + 60 * DAY)
    merged, i, j = [], 0, 0
    while i < len(preds) or j < len(label_msgs):  # keep each topic's own order, interleave the two
        if j >= len(label_msgs) or (i < len(preds) and rng.random() < 0.5):
            merged.append(preds[i])
            i += 1
        else:
            merged.append(label_msgs[j])
            j += 1
    return merged


def _canon(records) -> list:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_how_the_stream_is_cut_into_chunks_changes_nothing(seed):
    whole = Harness(default_label=0.0)
    messages = _scenario(whole, seed)
    whole.run(messages)
    cut = Harness(default_label=0.0)
    rng = random.Random(seed)
    at = 0
    while at < len(messages):
        n = rng.randint(1, 6)
        cut.run(messages[at : at + n])
        at += n
    assert _canon(cut.records) == _canon(whole.records)
    assert cut.state == whole.state
    # Every label message has one outcome; every prediction one row.
    assert len(rows(whole.records, "tid")) == 30
    assert not [k for k in whole.state if k.startswith(ls.ENTRY_PREFIX)]


@pytest.mark.parametrize("seed", [4, 5, 7])
def test_a_replay_after_a_crash_resends_only_identical_records(seed):
    h = Harness(default_label=0.0)
    messages = _scenario(h, seed)
    first, second = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    if seed % 2:  # without the last clock record, entries stay (with their labels) instead of expiring
        second = [m for m in second if m[1] != CLOCK_KEY]
    h.run(first)
    before = dict(h.state)
    outcome = h.join.step(h.p, second, before)
    sent = [orjson.loads(o.value) for o in outcome.outputs if o.topic == "labeled"]
    # The crash left any prefix of the state write on the broker (entries first, marker, then deletions).
    ordered = list(outcome.writes.items())
    for cut in range(len(ordered) + 1):
        state = dict(before)
        apply(state, dict(ordered[:cut]))
        again = h.join.step(h.p, second, state)
        replayed = [orjson.loads(o.value) for o in again.outputs if o.topic == "labeled"]
        assert set(_canon(replayed)) <= set(_canon(sent)), cut
        # Announced clocks too (on the labels topic, to the other partitions).
        assert {(o.topic, o.key, o.value, o.partition) for o in again.outputs} <= {
            (o.topic, o.key, o.value, o.partition) for o in outcome.outputs
        }, cut
        apply(state, again.writes)
        # Whatever landed, the outcome of every event is the one of the run without a crash.
        assert rows(h.records + sent + replayed, "tid") == rows(h.records + sent, "tid")


def test_the_state_of_a_pending_prediction_is_a_few_hundred_bytes():
    h = Harness()
    a, = ids_in(0, 1)
    h.run([h.pred(a, T0, vector=tuple(float(i) for i in range(17)), score=0.1)])
    blob = h.state[ls.entry_key(a)]
    entry = ls.decode(blob)
    assert entry.has_pred and list(entry.pred.vector) == [float(i) for i in range(17)]
    assert len(blob) < 300


def test_the_fast_timestamp_text_is_iso_ms():
    from stream.lifecycle.labeled import fast_iso_ms

    rng = random.Random(3)
    for ms in [0, 999, -1, 86_399_999, T0, *(rng.randrange(-10**12, 4 * 10**12) for _ in range(2000))]:
        assert fast_iso_ms(ms) == iso_ms(ms)
