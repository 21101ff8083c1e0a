"""The Quix Streams peer of `sluice bench --peers` computes what docs/performance.md says it does.

On the real embedded broker: one output per event, keyed by event id, and
each window value equal to Sluice's own offline feature with the event itself
added (Quix's sliding window is [t - W, t] with the event, Sluice's
[t - W, t) without it), for every event of four busy cards. No timing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd

from features.feast_repo import load_plan, open_store
from features.offline import compute_features
from stream.kafka.clients import ensure_topics
from stream.kafka.reader import TopicReader
from stream.tools.bench.quix_peer import PeerSpec, create_input_topic
from stream.tools.bench.systems import ModuleProcess, produce_all

N_EVENTS = 200
CARDS = ("card-a", "card-b", "card-c", "card-d")
#: Gaps between one card's events: some share the 5-minute window, one puts an event exactly on a window's
#: start (included by both), some leave the hour.
GAPS_MS = (1_000, 40_000, 240_000, 300_000, 1_500_000, 7_200_000)


def _events() -> list[dict]:
    """50 events per card; card k's times are k ms past whole seconds, so no two events share a time."""
    rng = np.random.default_rng(5)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    events = []
    for k, card in enumerate(CARDS):
        times = start + k + np.cumsum(rng.choice(GAPS_MS, N_EVENTS // len(CARDS)))
        events += [{
            "card_id": card, "event_ms": int(t), "merchant_id": f"m-{int(t) % 7}",
            "amount": round(float(rng.lognormal(3, 1)), 2), "currency": "EUR", "country": "DE", "channel": "web",
        } for t in times]
    events.sort(key=lambda e: e["event_ms"])
    for i, e in enumerate(events):
        e["transaction_id"] = f"q-{i:04d}"
        e["event_time"] = datetime.fromtimestamp(e.pop("event_ms") / 1000, UTC).isoformat(timespec="milliseconds")
    return events


def _expected(plan, spec: PeerSpec, events: list[dict]) -> pd.DataFrame:
    """Sluice's offline features of the partition-key view, with each event's own amount folded in."""
    frame = pd.DataFrame(events)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    offline = compute_features(plan, frame).frame
    view = next(v for v in plan.stream_views if v.join_keys == (plan.partition_key,))
    x = frame[spec.column].to_numpy()
    out = {}
    for name, function, _ in spec.features:
        before = offline[f"{view.name}__{name}"].to_numpy()
        count = offline[f"{view.name}__{_count_of(spec, name)}"].to_numpy() if function == "mean" else None
        if function == "count":
            out[name] = before + 1
        elif function == "sum":
            out[name] = before + x
        elif function == "max":
            out[name] = np.fmax(before, x)
        elif function == "min":
            out[name] = np.fmin(before, x)
        else:  # mean: Sluice's mean over the events before, and their count
            out[name] = (np.nan_to_num(before) * count + x) / (count + 1)
    return pd.DataFrame(out, index=frame["transaction_id"])


def _count_of(spec: PeerSpec, name: str) -> str:
    window = next(w for n, _, w in spec.features if n == name)
    return next(n for n, f, w in spec.features if f == "count" and w == window)


def test_one_output_per_event_with_sluices_windows_plus_the_event(broker, trained_repo, tmp_path, unique):
    plan = load_plan(open_store(trained_repo["path"]))
    spec = PeerSpec.from_plan(plan)
    assert {f for _, f, _ in spec.features} == {"count", "sum", "mean", "max"}
    assert sorted({w for *_, w in spec.features}) == [300_000, 3_600_000, 86_400_000]
    events = _events()
    source, output = unique("quix-in"), unique("quix-out")
    create_input_topic(broker.bootstrap_servers, source, partitions=2)
    ensure_topics(broker.bootstrap_servers, [output], 2)
    payloads = [(e["card_id"].encode(), orjson.dumps(e), e["transaction_id"].encode()) for e in events]
    produce_all(broker.bootstrap_servers, source, payloads)

    reader = TopicReader(broker.bootstrap_servers, output, partitions=2,
                         keep=lambda m: (m.key().decode(), orjson.loads(m.value())))
    reader.start()
    args = ["--bootstrap-servers", broker.bootstrap_servers, "--topic", source, "--output", output,
            "--app-id", unique("quix"), "--data-dir", str(tmp_path / "data"), *spec.args()]
    peer = ModuleProcess("stream.tools.bench.quix_peer", args, tmp_path / "quix.log", tmp_path / "quix.ready").start()
    try:
        peer.wait_ready(timeout_s=60)
        reader.wait_for(N_EVENTS, idle_s=20, limit_s=60)
    finally:
        peer.stop()
        reader.stop()

    outputs = dict(reader.records)
    assert len(reader.records) == len(outputs) == N_EVENTS, (tmp_path / "quix.log").read_text()[-2000:]
    expected = _expected(plan, spec, events)
    for event_id in expected.index:
        got = outputs[event_id]
        assert got[spec.id_field] == event_id
        for name, _, _ in spec.features:
            assert math.isclose(got[name], expected.at[event_id, name], rel_tol=1e-9), (event_id, name)
