"""The prediction log names the consumer group (app id) that wrote each record: monitors judge their own group's only."""

from __future__ import annotations

from stream.pipeline.outcomes import HEADER_APP
from stream.pipeline.records import read_log, read_prediction
from tests.stream.outcomes import key_of, start


def test_every_log_record_names_the_app_id_of_the_engine_that_wrote_it(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.25)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    logs = [read_log(o.value) for o in pipe.by_topic("prediction_log")]
    assert logs and {log["app_id"] for log in logs} == {"t"}  # make_engine's app id
    # The predictions topic's contract is unchanged.
    assert all("app_id" not in read_prediction(o.value) for o in pipe.by_topic("predictions"))


def test_dead_letter_and_late_copies_name_the_app_id(trained_repo, make_engine):
    """A monitor of another group reading the same events topic can tell these copies are not its own."""
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.25)
    pipe.send(b"card-1", b"{not json", t)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    late = events[0]  # sent again at the end: far behind its partition's stream time by then
    pipe.send(key_of(plan, late), late, t)
    pipe.run()
    copies = pipe.by_topic("dlq") + pipe.by_topic("late")
    assert pipe.by_topic("dlq") and pipe.by_topic("late")
    assert {dict(o.headers)[HEADER_APP] for o in copies} == {b"t"}
