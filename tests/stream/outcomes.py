"""Helpers for tests that drive the engine without Kafka: a pipeline of stages over dict state, outcome checks."""

from __future__ import annotations

import math
import random
import zlib
from collections import defaultdict
from datetime import timedelta

import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.pipeline.engine import Engine
from stream.pipeline.outcomes import HEADER_REASON, HEADER_SOURCE, HEADER_TRUNCATED, Message, Output
from stream.pipeline.outcomes import wire_size as _wire_size
from stream.pipeline.events import parse_timestamp_ms
from tests.conftest import NOW
from tests.features.reference import brute_features


PARTITIONS = 4


class Pipeline:
    """Both stages of an Engine in-process: one dict of state per stage, topics as lists."""

    def __init__(self, engine: Engine, seed: int = 0):
        self.engine = engine
        self.rng = random.Random(seed)
        n_stages = len(engine.stages)
        self.inputs: list[list[list[Message]]] = [[[] for _ in range(PARTITIONS)] for _ in range(n_stages)]
        self.done = [[0] * PARTITIONS for _ in range(n_stages)]
        self.states: list[dict] = [{} for _ in range(n_stages)]
        self.outputs: list[Output] = []

    def send(self, key: bytes | None, value: bytes | None, timestamp_ms: int, partition: int | None = None):
        """Produce to the events topic; returns (partition, offset)."""
        if partition is None:
            partition = zlib.crc32(key) % PARTITIONS if key else 0
        queue = self.inputs[0][partition]
        queue.append(Message(key, value, len(queue), timestamp_ms))
        return partition, len(queue) - 1

    def run(self, chunk_sizes: tuple[int, int] = (1, 40), stages: int | None = None) -> None:
        """Process everything sent so far, in chunks of random sizes, stage after stage (the first `stages`)."""
        engine = self.engine
        for stage in range(stages or len(engine.stages)):
            for partition in range(PARTITIONS):
                queue = self.inputs[stage][partition]
                while self.done[stage][partition] < len(queue):
                    start = self.done[stage][partition]
                    chunk = queue[start : start + self.rng.randint(*chunk_sizes)]
                    outcome = engine.process(stage, partition, chunk, self.states[stage])
                    self.states[stage].update(outcome.writes)
                    self.done[stage][partition] += len(chunk)
                    for out in outcome.outputs:
                        self._route(stage, out)

    def _route(self, stage: int, out: Output) -> None:
        if stage + 1 < len(self.engine.stages) and out.topic == self.engine.repartition_topics[stage + 1]:
            queue = self.inputs[stage + 1][zlib.crc32(out.key) % PARTITIONS]
            queue.append(Message(out.key, out.value, len(queue), 0))
        else:
            self.outputs.append(out)

    def by_topic(self, role: str) -> list[Output]:
        return [o for o in self.outputs if o.topic == self.engine.topics[role]]

    def outcomes(self) -> dict[tuple[int, int], list[tuple[str, Output]]]:
        """(events partition, offset) -> every outcome naming it."""
        found: dict[tuple[int, int], list] = defaultdict(list)
        events = self.engine.topics["events"]
        for role in ("dlq", "late"):
            for out in self.by_topic(role):
                topic, p, o = dict(out.headers)[HEADER_SOURCE].decode().rsplit("/", 2)
                assert topic == events
                found[(int(p), int(o))].append((role, out))
        for out in self.by_topic("prediction_log"):
            p, o = orjson.loads(out.value)["arrival"][0]
            found[(p, o)].append(("prediction", out))
        return found

    def message(self, position: tuple[int, int]) -> Message:
        return self.inputs[0][position[0]][position[1]]


def live_events(trained_repo, hours: float = 2.0, start_h: float = 0.0) -> list[bytes]:
    cfg, world = trained_repo["cfg"], trained_repo["world"]
    start = NOW + timedelta(hours=start_h)
    live, _ = generate_transactions(world, cfg, start, start + timedelta(hours=hours), id_prefix="O")
    return list(event_stream(live, disorder_ms=20_000, seed=4))


def start(trained_repo, make_engine, hours: float):
    """A fresh pipeline, its plan, the demo's live events of `hours`, and a Kafka time just after them."""
    engine = make_engine()
    events = live_events(trained_repo, hours=hours)
    return Pipeline(engine), engine.plan, events, kafka_time(events, engine.plan)


def key_of(plan, payload: bytes) -> bytes:
    return str(orjson.loads(payload)[plan.partition_key]).encode()


def kafka_time(payloads: list[bytes], plan) -> int:
    """A Kafka timestamp just after every event: as if produced a second after the last one."""
    return max(parse_timestamp_ms(orjson.loads(p)[plan.schema.timestamp_field]) for p in payloads) + 1000


def reasons(outputs: list[Output]) -> list[str]:
    return [dict(o.headers)[HEADER_REASON].decode() for o in outputs]


def _close(a, b) -> bool:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def check_features(pipe: Pipeline, plan) -> int:
    """Every logged stream feature equals a naive recomputation over the accepted events; returns how many predictions."""
    outcomes = pipe.outcomes()
    accepted = sorted(pos for pos, got in outcomes.items() if got[0][0] in ("prediction", "late"))
    logs = {pos: orjson.loads(got[0][1].value) for pos, got in outcomes.items() if got[0][0] == "prediction"}
    rows = []
    for pos in accepted:
        row = orjson.loads(pipe.message(pos).value)
        row["ts"] = parse_timestamp_ms(row[plan.schema.timestamp_field])
        row["_partition_0"], row["_offset_0"] = pos
        if pos in logs:
            row["_partition_1"], row["_offset_1"] = logs[pos]["arrival"][1]
        rows.append(row)
    late, expected = brute_features(plan, rows, n_stages=2)
    assert {accepted[i] for i in late} == {pos for pos, got in outcomes.items() if got[0][0] == "late"}
    mismatches = []
    for i, pos in enumerate(accepted):
        if pos not in logs:
            continue
        logged = logs[pos]["features"]
        assert list(logged) == list(plan.vector)
        for name, value in logged.items():
            assert value is None or math.isfinite(value), (name, value)
        for name, value in expected[i].items():
            if not _close(logged[name], value):
                mismatches.append((pos, name, logged[name], value))
    assert not mismatches, mismatches[:5]
    return len(logs)


def assert_one_outcome_each(pipe: Pipeline) -> dict:
    outcomes = pipe.outcomes()
    sent = [(p, o) for p in range(PARTITIONS) for o in range(len(pipe.inputs[0][p]))]
    assert sorted(outcomes) == sorted(sent), "some message has no outcome"
    several = {pos: [k for k, _ in got] for pos, got in outcomes.items() if len(got) != 1}
    assert not several, several
    assert len(pipe.by_topic("predictions")) == len(pipe.by_topic("prediction_log"))
    limit = pipe.engine.max_message_bytes
    for out in pipe.outputs:
        assert _wire_size(out.key, out.value, out.headers) <= limit, (out.topic, len(out.value or b""))
    return outcomes


def assert_copies_carry_the_original(pipe: Pipeline) -> None:
    """Dead letters and late records: the original bytes (or a cut with its size), the key, source and reason."""
    for role, out in ((role, out) for pos, got in pipe.outcomes().items() for role, out in got if role != "prediction"):
        headers = dict(out.headers)
        _, p, o = headers[HEADER_SOURCE].decode().rsplit("/", 2)
        original = pipe.message((int(p), int(o)))
        assert headers[HEADER_REASON]
        assert out.key == original.key or (original.key and out.key == original.key[: len(out.key)])
        if HEADER_TRUNCATED in headers:
            assert int(headers[HEADER_TRUNCATED]) == len(original.value)
            assert original.value.startswith(out.value)
        else:
            assert out.value == original.value, role


# -- one test per way a message used to stop or distort the pipeline ----------


