"""`POST /score` on a real worker: the answer is the stream's prediction for the same event; errors are answers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.pipeline.events import iso_ms, parse_timestamp_ms
from stream.tools.bench.serve import free_port
from stream.tools.process import worker_process
from tests.stream.outcomes import live_events


def call(port: int, path: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; an HTTP error status is an answer too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), dict(exc.headers)


def patient(port: int, path: str, body: bytes | None = None, limit_s: float = 60.0) -> tuple[int, dict, dict]:
    """A request as a client should make it: again after Retry-After while the answer is a 503."""
    deadline = time.monotonic() + limit_s
    while True:
        status, body_, headers = call(port, path, body)
        if status != 503 or time.monotonic() > deadline:
            return status, body_, headers
        time.sleep(float(headers["Retry-After"]))


def metric(port: int, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name}{{{labels}}}"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def logged(broker, topic: str, ids: set[str]) -> dict[str, dict]:
    """The prediction log records of `ids` (read until every one is there or the topic goes quiet)."""
    found = {}
    for message in read_topic(broker.bootstrap_servers, topic, timeout_s=60, idle_s=8):
        if message.key().decode() in ids:
            found[message.key().decode()] = orjson.loads(message.value())
            if len(found) == len(ids):
                break
    return found


@pytest.fixture
def serving(broker, own_topic_repo, tmp_path, unique):
    """Factory: a worker with /score on, after `history` events were scored; returns its ports and topics."""
    plan_key = "card_id"
    topics = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    ensure_topics(broker.bootstrap_servers, [own_topic_repo["topic"]], 4)
    app_id = unique("serve")
    workers = []

    def start(history: list[bytes], n: int = 1) -> list[dict]:
        started = []
        for _ in range(n):
            ports = {"serve": free_port(), "metrics": free_port()}
            env = {**topics, "SLUICE_SERVE_PORT": str(ports["serve"])}
            proc = worker_process(
                broker.bootstrap_servers, own_topic_repo["path"], own_topic_repo["model_dir"], tmp_path,
                f"worker-{len(workers)}", app_id=app_id, metrics_port=ports["metrics"], env=env,
            )
            workers.append(proc)
            started.append({**ports, "proc": proc.start()})
        for worker in started:
            worker["proc"].wait_ready()
        if history:
            producer = make_producer(broker.bootstrap_servers)
            for payload in history:
                producer.produce(own_topic_repo["topic"], payload, str(orjson.loads(payload)[plan_key]).encode())
            assert producer.flush(30) == 0
            list(read_topic(broker.bootstrap_servers, topics["SLUICE_PREDICTION_LOG_TOPIC"], expect=len(history), timeout_s=90, idle_s=10))
        return started

    start.topics = topics
    yield start
    for proc in workers:
        proc.stop()


def test_the_answer_is_the_streams_prediction_for_the_same_event(broker, trained_repo, serving):
    events = live_events(trained_repo, hours=1.0)
    history, rest = events[:-40], events[-40:]
    # Equal is promised while no other event of the same merchant is in flight (docs/serving.md):
    # one event per merchant, and two events of one card back to back (the second must count the first).
    by_merchant = {orjson.loads(raw)["merchant_id"]: raw for raw in rest}
    asked = list(by_merchant.values())[:12]
    first = orjson.loads(asked[0])
    later = iso_ms(parse_timestamp_ms(first["event_time"]) + 1000)  # the same time would not count it (semantics.md)
    asked.insert(1, orjson.dumps(dict(first, transaction_id="again-1", event_time=later)))  # right behind it
    [worker] = serving(history)
    answers = {}
    for raw in asked:
        status, body, _ = patient(worker["serve"], "/score", raw)
        if status == 422:  # late against the stream time so far: not produced
            assert body["error"] == "late"
            continue
        assert status == 200, body
        answers[body["transaction_id"]] = body
        assert set(body["feature_age_ms"]) == set(body["features"])
    assert len(answers) >= 8
    assert len({body["request_id"] for body in answers.values()}) == len(answers)
    logs = logged(broker, serving.topics["SLUICE_PREDICTION_LOG_TOPIC"], set(answers))
    assert set(logs) == set(answers)  # each event entered the stream once and was scored
    for event_id, body in answers.items():
        assert body["features"] == logs[event_id]["features"]
        assert body["score"] == logs[event_id]["score"] and body["decision"] == logs[event_id]["decision"]
        assert logs[event_id]["arrival"][0] == [body["partition"], body["offset"]]
    assert metric(worker["metrics"], "sluice_serve_consistency_total", 'outcome="equal"') == len(answers)
    first = answers[orjson.loads(asked[0])["transaction_id"]]["features"]
    assert answers["again-1"]["features"]["card_txn__txn_count_24h"] == first["card_txn__txn_count_24h"] + 1
    # The entity's current windowed values: what the state holds now.
    entity = next(iter(answers.values()))["entity"]["card_id"]
    status, body, _ = patient(worker["serve"], f"/features/{entity}")
    assert status == 200 and body["features"] and body["entity"] == entity


def test_bad_input_is_a_400_with_the_reason(trained_repo, serving):
    [worker] = serving([])
    status, body, _ = call(worker["serve"], "/score", b"{not json")
    assert status == 400 and body["error"] == "invalid_json" and "not valid JSON" in body["reason"]
    event = orjson.loads(live_events(trained_repo, hours=0.05)[0])
    del event["amount"]
    status, body, _ = call(worker["serve"], "/score", orjson.dumps(event))
    assert status == 400 and "amount" in body["reason"]
    status, body, _ = patient(worker["serve"], "/features/nobody")
    assert status == 404 and body["error"] == "unknown_entity"


def test_a_partition_held_elsewhere_is_a_503_then_the_right_answer_once_it_moved(broker, trained_repo, serving):
    events = live_events(trained_repo, hours=1.0)
    history, asked = events[:-30], events[-30:]
    a, b = serving(history, n=2)
    for raw in asked:  # an event whose state (some stage of it) b holds
        status, body, headers = call(a["serve"], "/score", raw)
        for _ in range(30):  # the group may still be settling (b's join): that 503 is not the one asked about
            if not (status == 503 and "rebalance" in body["reason"]):
                break
            time.sleep(1.0)
            status, body, headers = call(a["serve"], "/score", raw)
        if status == 503:
            break
        assert status in (200, 422), body
    assert status == 503 and headers["Retry-After"] == "1" and "not held by this worker" in body["reason"]
    b["proc"].stop()  # its partitions move to a
    statuses = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status, body, headers = call(a["serve"], "/score", raw)
        statuses.append(status)
        if status != 503:
            break
        assert headers["Retry-After"] == "1"
        time.sleep(float(headers["Retry-After"]) / 4)
    assert status == 200, (statuses, body)
    event_id = body["transaction_id"]
    logs = logged(broker, serving.topics["SLUICE_PREDICTION_LOG_TOPIC"], {event_id})
    assert body["features"] == logs[event_id]["features"] and body["score"] == logs[event_id]["score"]
