"""The hostile corpus: generic, complete, and every message of it gets exactly one outcome."""

from __future__ import annotations

import inspect
import random
from collections import Counter

import orjson

from features.spec import EventSchema
from stream.tools import hostile
from stream.pipeline.outcomes import HEADER_REASON, HEADER_SOURCE, HEADER_TRUNCATED
from stream.pipeline.events import REASON_KINDS, EventValidator
from stream.tools.hostile import hostile_corpus
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from tests.stream.outcomes import Pipeline, assert_copies_carry_the_original, assert_one_outcome_each, check_features, kafka_time, key_of, live_events

#: A schema that is not the demo's: other names, a long and a bool.
OTHER = EventSchema(
    fields=(("order", "string"), ("shop", "string"), ("price", "double"), ("qty", "long"), ("gift", "bool"), ("at", "timestamp")),
    event_id="order",
    timestamp_field="at",
    topic="orders",
    allowed_lateness_ms=60_000,
)
TEMPLATE = {"order": "o-1", "shop": "s-1", "price": 9.5, "qty": 2, "gift": False, "at": 1_793_527_200_000}


def test_the_corpus_is_built_from_any_schema_and_says_what_to_expect():
    corpus = hostile_corpus(OTHER, "shop", TEMPLATE, seed=1)
    kinds = [m.kind for m in corpus]
    assert len(kinds) == len(set(kinds)) >= 30
    for name, _ in OTHER.fields:
        assert {f"missing:{name}", f"null:{name}", f"wrong_type:{name}"} <= set(kinds)
    assert {"uint64:qty", "float_for_long:qty", "bool_for_number:price", "tombstone", "huge_garbage", "mis_keyed"} <= set(kinds)
    assert {m.expect for m in corpus} == {"dlq", "prediction", "late"}
    assert {m.reason_kind for m in corpus if m.expect == "dlq"} <= set(REASON_KINDS)
    assert TEMPLATE == {"order": "o-1", "shop": "s-1", "price": 9.5, "qty": 2, "gift": False, "at": 1_793_527_200_000}
    assert [m.value for m in hostile_corpus(OTHER, "shop", TEMPLATE, seed=1)] == [m.value for m in corpus]
    # Generic: the module names no field of the demo.
    source = inspect.getsource(hostile)
    assert not any(word in source for word in ("card", "amount", "merchant", "transaction"))
    # The validator agrees with every expectation and reason kind.
    validator = EventValidator(OTHER, ("shop",), partition_key="shop")
    for m in corpus:
        parsed = validator.parse([m.value], [0], [m.key], [TEMPLATE["at"] + 1000])
        got = parsed.rejects[0].kind if parsed.rejects else "accepted"
        assert got == (m.reason_kind if m.expect == "dlq" else "accepted"), (m.kind, parsed.rejects)


def _mixed(plan, events: list[bytes], seed: int):
    """(key, value, hostile message or None) in arrival order, and the corpus.

    The corpus comes right after its template, shuffled, with the rest of
    the valid events after it: what the corpus expects to be scored is then
    within the allowed lateness of its partition's stream time.
    """
    middle = len(events) // 2
    corpus = hostile_corpus(plan.schema, plan.partition_key, orjson.loads(events[middle]), seed=seed)
    block = [(m.key, m.value, m) for m in corpus]
    random.Random(seed).shuffle(block)
    valid = [(key_of(plan, p), p, None) for p in events]
    return valid[: middle + 1] + block + valid[middle + 1 :], corpus


def test_every_hostile_message_gets_exactly_one_outcome_and_valid_events_their_features(trained_repo, make_engine):
    engine = make_engine()
    plan = engine.plan
    events = live_events(trained_repo, hours=3)
    stream, corpus = _mixed(plan, events, seed=5)
    t = kafka_time(events, plan)
    pipe = Pipeline(engine, seed=5)
    sent = {pipe.send(key, value, t): m for key, value, m in stream}
    pipe.run()
    outcomes = assert_one_outcome_each(pipe)
    assert_copies_carry_the_original(pipe)
    wrong = {m.kind: outcomes[pos][0][0] for pos, m in sent.items() if m is not None and outcomes[pos][0][0] != m.expect}
    assert not wrong, wrong
    n_valid = sum(m.expect == "prediction" for m in corpus) + len(events)
    assert check_features(pipe, plan) == n_valid
    dup = [o for o in pipe.by_topic("prediction_log") if o.key.endswith(b"~duplicate_event_id")]
    assert len(dup) == 2 and orjson.loads(dup[0].value)["arrival"] != orjson.loads(dup[1].value)["arrival"]
    assert Counter(m.expect for m in corpus)["dlq"] == len(pipe.by_topic("dlq"))


def test_a_worker_survives_the_corpus_and_every_message_gets_one_outcome(broker, own_topic_repo, start_worker, unique):
    from features.feast_repo import load_plan, open_store

    plan = load_plan(open_store(own_topic_repo["path"]))
    topic = own_topic_repo["topic"]
    topics = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    ensure_topics(broker.bootstrap_servers, [topic, f"{topic}.dlq", f"{topic}.late"], 4)
    worker = start_worker(own_topic_repo, env=topics)
    events = live_events(own_topic_repo, hours=1)
    stream, corpus = _mixed(plan, events, seed=9)
    positions: dict[tuple[int, int], object] = {}

    def delivered(err, msg, m) -> None:
        assert err is None, err
        positions[(msg.partition(), msg.offset())] = m

    producer = make_producer(broker.bootstrap_servers, **{"message.max.bytes": 10_000_000})  # it sends 5 MB too
    for key, value, m in stream:
        producer.produce(topic, value, key, on_delivery=lambda err, msg, m=m: delivered(err, msg, m))
    assert producer.flush(60) == 0
    assert len(positions) == len(stream)
    n_predicted = len(events) + sum(m.expect == "prediction" for m in corpus)
    bootstrap = broker.bootstrap_servers
    logs = list(read_topic(bootstrap, topics["SLUICE_PREDICTION_LOG_TOPIC"], expect=n_predicted, timeout_s=60, idle_s=15))
    dlq = list(read_topic(bootstrap, f"{topic}.dlq", idle_s=3))
    late = list(read_topic(bootstrap, f"{topic}.late", idle_s=1))
    outcomes: dict[tuple[int, int], list[str]] = {}
    for kind, messages in (("dlq", dlq), ("late", late)):
        for msg in messages:
            headers = dict(msg.headers())
            assert headers[HEADER_REASON]
            source_topic, p, o = headers[HEADER_SOURCE].decode().rsplit("/", 2)
            assert source_topic == topic
            outcomes.setdefault((int(p), int(o)), []).append(kind)
            assert len(msg.value() or b"") <= 1_000_000
            if HEADER_TRUNCATED in headers:
                assert int(headers[HEADER_TRUNCATED]) > 1_000_000
    for msg in logs:
        p, o = orjson.loads(msg.value())["arrival"][0]
        outcomes.setdefault((p, o), []).append("prediction")
    assert sorted(outcomes) == sorted(positions), "some message has no outcome"
    assert {pos: got for pos, got in outcomes.items() if len(got) != 1} == {}
    wrong = {m.kind: outcomes[pos] for pos, m in positions.items() if m is not None and outcomes[pos] != [m.expect]}
    assert not wrong, wrong
    assert worker.proc.poll() is None, "the worker exited"


def test_a_spread_corpus_goes_where_its_time_belongs_and_makes_no_on_time_event_late():
    """Over a stream of days, each kind once, after its own template and before anything far ahead of it.

    Mixed in at random (as `sluice chaos` once did), the ordinary-looking
    events made from the middle of the stream pushed the stream time hours
    ahead and made thousands of on-time events late. Stream time here is
    the whole stream's (stricter than a partition's).
    """
    rng = random.Random(3)
    start, step = TEMPLATE["at"], 20_000  # 3 days of event time
    valid = [
        orjson.dumps({**TEMPLATE, "order": f"v-{i}", "shop": f"s-{i % 7}", "at": start + i * step + rng.randrange(30_000)})
        for i in range(13_000)
    ]
    placed = hostile.spread_corpus(OTHER, "shop", valid, seed=5)
    kinds = [m.kind for _, m in placed]
    assert sorted(kinds) == sorted(m.kind for m in hostile_corpus(OTHER, "shop", orjson.loads(valid[0]), seed=5))
    assert [at for at, _ in placed] == sorted(at for at, _ in placed)
    assert len({at // 1625 for at, _ in placed}) >= 4  # spread over the stream, not in one place
    stream_ms, late, pending = 0, 0, iter(placed)
    upcoming = next(pending, None)
    for i, payload in enumerate(valid):
        while upcoming is not None and upcoming[0] <= i:
            m = upcoming[1]
            if m.expect == "prediction":
                stream_ms = max(stream_ms, orjson.loads(m.value)["at"])
            upcoming = next(pending, None)
        at = orjson.loads(payload)["at"]
        late += at < stream_ms - OTHER.allowed_lateness_ms
        stream_ms = max(stream_ms, at)
    assert late == 0
