"""A question's answer is the prediction the stream then writes for the same event, and asking changes nothing."""

from __future__ import annotations

import orjson

from stream.pipeline.ask import Answer, Refused, ask, ask_many, question
from tests.stream.outcomes import PARTITIONS, kafka_time, start


def _asked(pipe, raw: bytes, t: int):
    q = question(pipe.engine, raw, t, PARTITIONS)
    assert not isinstance(q, Refused), q
    states = [pipe.states[s] for s in range(len(pipe.engine.stages))]
    return q, ask(pipe.engine, q, states)


def test_the_answer_equals_the_streams_prediction_for_every_stage(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=2.0)
    history, questions = events[:-40], events[-40:]
    for payload in history:
        pipe.send(str(orjson.loads(payload)[plan.partition_key]).encode(), payload, t)
    pipe.run()
    # Asked together, before any of them enters the stream: each counts the ones before it.
    together = ask_many(pipe.engine, [question(pipe.engine, raw, t, PARTITIONS) for raw in questions], list(pipe.states))
    for raw, batched in zip(questions, together):
        before = {s: dict(state) for s, state in enumerate(pipe.states)}
        q, answer = _asked(pipe, raw, t)
        assert [dict(s) for s in pipe.states] == list(before.values())  # nothing stored
        if isinstance(answer, Refused):
            assert answer.kind == "late"
        pipe.send(q.key, raw, t)
        pipe.run()
        event_id = str(q.record[plan.schema.event_id])
        logged = [orjson.loads(o.value) for o in pipe.by_topic("prediction_log") if o.key.decode() == event_id]
        assert type(batched) is type(answer)
        if isinstance(answer, Refused):
            assert logged == [] and batched.kind == answer.kind
            continue
        assert batched.log["features"] == answer.log["features"] and batched.log["score"] == answer.log["score"]
        assert isinstance(answer, Answer)
        [log] = logged
        assert answer.log["features"] == log["features"]
        assert answer.log["score"] == log["score"] and answer.log["decision"] == log["decision"]
        assert answer.log["arrival"][0][0] == log["arrival"][0][0] == q.partitions[0]
        assert set(answer.ages_ms) == set(plan.vector)


def test_a_bad_event_is_refused_with_the_dead_letters_reason(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.1)
    refused = question(pipe.engine, b"{not json", t, PARTITIONS)
    assert isinstance(refused, Refused) and refused.kind == "invalid_json" and "not valid JSON" in refused.reason
    event = orjson.loads(events[0])
    del event[plan.partition_key]
    refused = question(pipe.engine, orjson.dumps(event), kafka_time(events, plan), PARTITIONS)
    assert isinstance(refused, Refused) and plan.partition_key in refused.reason
