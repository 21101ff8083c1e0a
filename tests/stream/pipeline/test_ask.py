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


def _scored(trained_repo, make_engine, asked: int):
    """A pipeline that has scored 2 hours of events but the last `asked`: (pipe, plan, those events, Kafka time)."""
    pipe, plan, events, t = start(trained_repo, make_engine, hours=2.0)
    for payload in events[:-asked]:
        pipe.send(str(orjson.loads(payload)[plan.partition_key]).encode(), payload, t)
    pipe.run()
    return pipe, plan, events[-asked:], t


def test_the_answer_equals_the_streams_prediction_for_every_stage(trained_repo, make_engine):
    pipe, plan, questions, t = _scored(trained_repo, make_engine, 40)
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


def test_feature_ages_are_each_questions_own_when_asked_together(trained_repo, make_engine):
    """A question's feature ages come from its own entities' newest events, whatever else is asked with it."""
    from features.columns import KEY_SEP
    from features.online import latest_event_ms

    pipe, _, asked, t = _scored(trained_repo, make_engine, 30)
    engine, states = pipe.engine, list(pipe.states)
    questions = [question(engine, raw, t, PARTITIONS) for raw in asked]
    together = ask_many(engine, questions, states)
    checked = 0
    for q, batched in zip(questions, together):
        alone = ask(engine, q, states)
        if not isinstance(alone, Answer):
            continue
        assert batched.ages_ms == alone.ages_ms
        for stage, aggregator in enumerate(engine.aggregators):
            for view in aggregator.views:
                entity = KEY_SEP.join(str(q.record[k]) for k in view.join_keys)
                newest = latest_event_ms(view, states[stage].get(aggregator.table_key(view.name, entity)))
                expected = None if newest is None else float(q.event_ms - newest)
                assert all(alone.ages_ms[f"{view.name}__{a.name}"] == expected for a in view.aggs)
                checked += expected is not None
    assert checked > 20
