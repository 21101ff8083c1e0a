"""The prediction log names the consumer group (app id) that wrote each record: monitors judge their own group's only."""

from __future__ import annotations

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
