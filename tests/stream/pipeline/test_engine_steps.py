"""The engine's steps return what they produced, as named records, and the engine keeps what it is given."""

from __future__ import annotations

import zlib

import numpy as np
import orjson

from stream.kafka.topics import AppTopics
from stream.pipeline import forwarded as forwarded_module
from stream.pipeline.clock import MARK_KEY, TICK_KEY
from stream.pipeline.engine import Engine
from stream.pipeline.forwarded import ForwardedRow
from stream.pipeline.outcomes import HEADER_SOURCE, Message
from stream.pipeline.vectors import BatchFeatures
from stream.pipeline.windowed import sift
from stream.serving.scorer import Serving
from stream.settings import Settings
from tests.stream.outcomes import key_of, kafka_time, live_events


def test_the_decode_step_returns_the_valid_events_and_the_dead_letters_of_the_rest(trained_repo, make_engine):
    engine = make_engine()
    plan = engine.plan
    payload = live_events(trained_repo, hours=0.05)[0]
    t = kafka_time([payload], plan)
    messages = [Message(b"card-1", b"{not json", 0, t), Message(key_of(plan, payload), payload, 1, t)]

    decoded = engine.decoder.decode(0, messages, 0, 3)
    id_field = plan.schema.event_id
    assert [r[id_field] for r in decoded.records] == [orjson.loads(payload)[id_field]]
    assert decoded.carried.raw == [payload] and decoded.carried.arrival == [[[3, 1]]]
    [letter] = decoded.dead_letters
    assert letter.topic == engine.topics["dlq"] and letter.value == b"{not json"
    assert dict(letter.headers)[HEADER_SOURCE] == f"{engine.topics['events']}/3/0".encode()
    # A message output before (below the partition's done mark) is not dead-lettered twice.
    assert engine.decoder.decode(0, messages, 1, 3).dead_letters == []


def test_an_outcome_is_composed_of_what_the_steps_returned(trained_repo, make_engine):
    engine = make_engine()
    plan = engine.plan
    events = live_events(trained_repo, hours=0.1)
    t = kafka_time(events, plan)
    messages = [Message(b"card-1", b"[]", 0, t)] + [Message(key_of(plan, p), p, i + 1, t) for i, p in enumerate(events)]
    outcomes = []
    for stage in range(engine.last_stage + 1):
        outcome = engine.process(stage, 0, messages, {})
        outcomes.append(outcome)
        nxt = [o for o in outcome.outputs if stage < engine.last_stage and o.topic == engine.repartition_topics[stage + 1]]
        messages = [Message(o.key, o.value, i, t) for i, o in enumerate(nxt)]
    for outcome in outcomes:
        topics = [o.topic for o in outcome.outputs]
        assert outcome.writes
        assert topics.count(engine.topics["dlq"]) == outcome.dlq
        assert topics.count(engine.topics["predictions"]) == outcome.predictions == len(outcome.latencies_s)
        assert topics.count(engine.topics["prediction_log"]) == outcome.predictions
    assert outcomes[0].dlq == 1 and outcomes[-1].predictions > 0


def test_the_engine_keeps_the_serving_and_batch_features_it_is_given(demo):
    plan, model = demo
    serving = Serving.alone(model, reason_k=1, reason_share=0.5)
    batch = BatchFeatures(None, slow_ms=7.0, retry_s=1.0)
    engine = Engine(plan, AppTopics.for_plan(Settings(app_id="t"), plan), "t", model=model, serving=serving, batch=batch)
    assert engine.serving is serving and engine.batch is batch
    plain = Engine(plan, AppTopics.for_plan(Settings(app_id="t"), plan), "t", model=model)
    assert plain.serving.champion is model and plain.batch is None


def _served(outputs, engine) -> dict:
    """Each prediction and log record by topic and key, without what depends on when it was computed."""
    out = {}
    for o in outputs:
        record = orjson.loads(o.value)
        for moment in ("scored_at", "latency_ms"):
            record.pop(moment, None)
        out[(o.topic, o.key)] = record
    return out


def test_partitions_scored_in_one_call_get_what_each_would_get_alone(trained_repo, make_engine):
    # Stage 1 scores every partition of a call together (one assembly, one model call per version); what
    # each partition gets must not depend on which partitions shared its call.
    engine = make_engine()
    plan = engine.plan
    events = live_events(trained_repo, hours=0.3)
    t = kafka_time(events, plan)
    parts = {0: [], 1: [], 2: []}
    for p in events:
        queue = parts[zlib.crc32(key_of(plan, p)) % 3]
        queue.append(Message(key_of(plan, p), p, len(queue), t))
    for stage in range(engine.last_stage):  # earlier stages one partition at a time
        nxt = engine.repartition_topics[stage + 1]
        forwarded = {q: [] for q in parts}
        for partition, messages in parts.items():
            for o in engine.process(stage, partition, messages, {}).outputs:
                if o.topic == nxt:
                    queue = forwarded[zlib.crc32(o.key) % 3]
                    queue.append(Message(o.key, o.value, len(queue), t))
        parts = forwarded
    assert all(parts.values())
    alone = {p: engine.process(engine.last_stage, p, m, {}) for p, m in parts.items()}
    together = engine.process_many(engine.last_stage, list(parts.items()), {})
    for (partition, _), outcome in zip(parts.items(), together):
        assert outcome.predictions == alone[partition].predictions > 0
        assert outcome.writes == alone[partition].writes
        assert _served(outcome.outputs, engine) == _served(alone[partition].outputs, engine)


def _each_stage(engine, trained_repo, hours: float):
    """(stage, its messages, its outcome) for every stage, each reading what the stage before forwarded."""
    plan = engine.plan
    events = live_events(trained_repo, hours=hours)
    t = kafka_time(events, plan)
    messages = [Message(key_of(plan, p), p, i, t) for i, p in enumerate(events)]
    for stage in range(engine.last_stage + 1):
        outcome = engine.process(stage, 0, messages, {})
        yield stage, messages, outcome
        if stage < engine.last_stage:
            nxt = [o for o in outcome.outputs if o.topic == engine.repartition_topics[stage + 1]]
            messages = [Message(o.key, o.value, i, t) for i, o in enumerate(nxt)]


def test_the_log_record_times_every_stage_of_its_event(trained_repo, make_engine):
    # Each stage adds its feature time to what travels with the event; the log names one per stage.
    engine = make_engine()
    *_, (_, _, outcome) = _each_stage(engine, trained_repo, 0.1)
    logs = [orjson.loads(o.value) for o in outcome.outputs if o.topic == engine.topics["prediction_log"]]
    stages = [f"features_{s}" for s in range(engine.last_stage + 1)]
    assert engine.last_stage > 0 and logs
    for log in logs:
        assert list(log["latency_ms"]) == [*stages, "batch_features", "score", "total"]
        assert all(log["latency_ms"][s] >= 0 for s in stages)


def test_sift_takes_the_window_features_from_their_matrix_as_it_would_one_by_one(trained_repo, make_engine):
    # The window step hands its features over as one matrix as well; taken from it, they are the same bytes.
    engine = make_engine()
    for stage, messages, _ in _each_stage(engine, trained_repo, 0.2):
        decoded = engine.decoder.decode(stage, messages, 0, 0)
        [result] = engine.aggregators[stage].process_many({}, [(0, decoded.columns, decoded.carried.sources)], engine.n_sources)
        assert result.block is not None and len(result.block) == len(result.features) > 0
        args = (decoded.columns, decoded.records, decoded.carried, 0, 1.0, engine.stream_names, engine.copies, 300_000)
        from_block = sift(stage, result, *args)
        names = [n for n in engine.stream_names if n in result.features]
        one_by_one = np.column_stack([decoded.carried.features, *(result.features[n] for n in names)])[from_block.keep]
        assert from_block.names == decoded.carried.names + names and from_block.features.shape == one_by_one.shape
        assert from_block.features.tobytes() == one_by_one.tobytes()
    assert from_block.features.shape[1] == len(engine.stream_names)


def _written(outputs) -> list:
    """Each output as (topic, key, headers, partition, value), what was measured blanked (JSON or not)."""
    out = []
    for o in outputs:
        value = o.value
        try:
            record = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            record = None
        if type(record) is list and len(record) == len(ForwardedRow._fields):
            record[ForwardedRow._fields.index("stage_ms")] = None  # each stage's feature time, measured
            value = orjson.dumps(record)
        elif type(record) is dict and ("scored_at" in record or "latency_ms" in record):
            value = orjson.dumps({k: v for k, v in record.items() if k not in ("scored_at", "latency_ms")})
        out.append((o.topic, o.key, o.headers, o.partition, value))
    return out


def test_partitions_read_together_get_what_each_would_get_alone_rejects_included(trained_repo, make_engine):
    # Every stage reads a call's partitions in one pass and cuts the result back per partition: each
    # partition's outputs (its dead letters among them, with their sources) and state writes must be what
    # it gets when computed alone, also when a record with unreadable contents sends stage 1 back to
    # reading partition by partition.
    engine = make_engine()
    plan = engine.plan
    events = live_events(trained_repo, hours=0.3)
    t = kafka_time(events, plan)
    rogue = [b"{not json", b"[]", None]
    parts: dict[int, list[Message]] = {0: [], 1: [], 2: []}
    for n, p in enumerate(events):
        queue = parts[zlib.crc32(key_of(plan, p)) % 3]
        if n % 7 == 3:  # a reject in every partition, between valid events
            queue.append(Message(b"card-x", rogue[len(queue) % 3], len(queue), t))
        if n == 11:
            queue.append(Message(TICK_KEY, b"", len(queue), t + 5))
        queue.append(Message(key_of(plan, p), p, len(queue), t))
    calls = []
    for stage in range(engine.last_stage + 1):
        state_alone: dict = {}
        alone = {p: engine.process(stage, p, m, state_alone) for p, m in parts.items()}
        together = engine.process_many(stage, list(parts.items()), {})
        calls.append(together)
        for partition, outcome in zip(parts, together):
            assert outcome.dlq == alone[partition].dlq > 0
            assert (outcome.predictions, outcome.late, outcome.replayed) == (
                alone[partition].predictions, alone[partition].late, alone[partition].replayed)
            assert outcome.writes == alone[partition].writes
            assert _written(outcome.outputs) == _written(alone[partition].outputs)
        if stage == engine.last_stage:
            break
        nxt = engine.repartition_topics[stage + 1]
        forwarded: dict[int, list[Message]] = {q: [] for q in parts}
        for outcome in together:
            for o in outcome.outputs:
                if o.topic == nxt and o.key != MARK_KEY:
                    queue = forwarded[zlib.crc32(o.key) % 3]
                    queue.append(Message(o.key, o.value, len(queue), t))
        for q, queue in forwarded.items():  # foreign records on the repartition topic, in every partition
            queue.insert(1, Message(b"rogue", b'[{"a": 1}]', -1, t))
        # A record of the right shape whose event is not valid, in one partition only: the partitions'
        # events are validated in one pass, and its reject must stay with its partition.
        row = orjson.loads(forwarded[2][0].value)
        bad = orjson.dumps({k: v for k, v in row[0].items() if k != plan.schema.event_id})
        forwarded[2].insert(2, Message(b"rogue", forwarded_module.encode(bad, *row[1:-1]), -1, t))
        parts = {q: [Message(m.key, m.value, i, t) for i, m in enumerate(queue)] for q, queue in forwarded.items()}
    assert calls[-1][0].predictions > 0
    # A record of the right shape whose contents cannot be read: stage 1 reads each partition on its own.
    stage = engine.last_stage
    good = orjson.loads(parts[1][0].value)
    size = good[-1]
    raw = parts[1][0].value[1 : 1 + size]
    unreadable = forwarded_module.encode(raw, ["x"] * len(good[1]), good[2], good[3], good[4], good[5], good[6], good[7])
    parts[1].insert(2, Message(b"rogue", unreadable, -1, t))
    parts = {q: [Message(m.key, m.value, i, t) for i, m in enumerate(queue)] for q, queue in parts.items()}
    alone = {p: engine.process(stage, p, m, {}) for p, m in parts.items()}
    together = engine.process_many(stage, list(parts.items()), {})
    for partition, outcome in zip(parts, together):
        assert outcome.writes == alone[partition].writes
        assert _written(outcome.outputs) == _written(alone[partition].outputs)
    assert together[1].dlq == 2 and together[0].dlq == 1


def test_forwarded_records_are_what_forwarded_encode_writes():
    # The forwarding step writes each record itself (one call fewer per event): it must write what
    # `forwarded.encode`, which defines the wire format, writes for the same items, byte for byte,
    # for the events it keeps, at the first stage and at a later one.
    from stream.pipeline.copies import Copies
    from stream.pipeline.forwarded import Carried
    from stream.pipeline.handoff import forward
    from stream.pipeline.windowed import Windowed

    n = 4
    records = [{"card_id": f"c{i}", "merchant_id": f"m{i % 2}", "amount": 1.5 * i} for i in range(n)]
    carried = Carried(
        t0=np.array([1.7e12 + i for i in range(n)]), arrival=[[[i % 2, 10 + i]] for i in range(n)],
        features=np.zeros((n, 0)), names=[], stage_ms=[[0.25]] * n, source_wm=np.array([5, 6, 7, 8], dtype=np.int64),
        raw=[orjson.dumps(r) for r in records], keys=None, clock=np.array([100, 101, 101, 103], dtype=np.int64),
    )
    keep = np.array([0, 2, 3])
    windowed = Windowed(0, [], keep, np.array([[1.0, float("nan")], [2.5, 3.0], [0.1, 1e300]]), ["a", "b"],
                        [[0.5], [0.75], [1.0]])
    event_ts = np.array([1000, 1001, 1002, 1003], dtype=np.int64)
    watermark = np.array([900, 901, 902, 903], dtype=np.int64)
    copies = Copies({"dlq": "dlq", "late": "late", "events": "events"}, "app", "card_id", 1_000_000)
    for stage, key_fields in ((1, ("merchant_id",)), (2, ("card_id", "merchant_id"))):
        sent = forward(stage, "topic", key_fields, windowed, records, carried, event_ts, watermark, copies)
        wm = watermark if stage == 1 else carried.source_wm
        assert sent.dead_letters == []
        for row, (i, out) in enumerate(zip(keep.tolist(), sent.rows)):
            assert out.key == "\x1f".join(str(records[i][k]) for k in key_fields).encode()
            assert out.value == forwarded_module.encode(
                carried.raw[i], windowed.features[row].tolist(), carried.arrival[i], float(carried.t0[i]), int(wm[i]),
                int(event_ts[i]), windowed.stage_ms[row], int(carried.clock[i]))
