"""Quix Streams as a peer system of `sluice bench --peers`: per-entity sliding windows, one output per event.

    python -m stream.tools.bench.quix_peer --bootstrap-servers B --topic IN --output OUT --app-id GROUP \\
        --id-field transaction_id --time-field event_time --column amount \\
        --feature txn_count_5m:count:300000 --feature amount_sum_5m:sum:300000 ...

A Quix Streams `Application` reading the same JSON events as the other
systems, keyed by the same entity (the events topic's key: the card in the
demo). For each distinct window length it keeps one sliding window per key
(`StreamingDataFrame.sliding_window(...).agg(...).current()`, RocksDB state
with a changelog topic, Quix's defaults), the windows chained one after the
other, and for every event it sends one record `{<id field>: id, <feature>:
value, ...}` keyed by the event id, so the bench's throughput and latency
readers take it exactly as they take Sluice's predictions.

What it computes is the windowed part of the partition-key view, as far as
Quix has the function built in (count, sum, mean, max, min): in the demo, 11
of card_txn's 13 features (not `amount_std_24h`, not `country_distinct_1h`),
no merchant or card x merchant view, no batch features, no model. What differs
from Sluice for the features it has (docs/performance.md):

* Quix's sliding window for an event at t covers [t - W, t] and includes the
  event itself (and others at t); Sluice's covers [t - W, t) without them.
* An event later than the grace period (Sluice's allowed lateness) is dropped
  by Quix; Sluice records it on the late topic. The bench's events are in
  order, so neither happens there.

Two things the embedded broker and the bench need, both through Quix's own API:

* Quix sizes the changelog topics of its windows from the input topic's
  `retention.ms`, read with DescribeConfigs. Apache Kafka reports every
  config; Tansu reports only those a topic was created with. So the input
  topic is created beforehand with Kafka's default retention (`create_input_topic`),
  and the peer stops with a message saying so if it is missing.
* Quix produces each output with its record's timestamp (here the window's),
  and the bench reads throughput and latency from the outputs' timestamps as
  set when produced: so the last step stamps each record with the wall clock,
  as a plain producer would.

Writes the ready file named by SLUICE_READY_FILE once it holds its
partitions, like `sluice worker`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from features.errors import SluiceError

#: Window functions Quix Streams has built in, by the names feature repos use.
QUIX_FUNCTIONS = {"count": "Count", "sum": "Sum", "mean": "Mean", "avg": "Mean", "max": "Max", "min": "Min"}
#: Apache Kafka's default retention, given to the input topic at creation (see the module docstring).
INPUT_TOPIC_CONFIG = {"retention.ms": str(7 * 24 * 3600 * 1000), "retention.bytes": "-1"}
#: Its own pins would take confluent-kafka below the 2.13 Sluice needs (pyproject.toml, extra `peers`).
INSTALL_HINT = "pip install 'sluice[peers]' && pip install --no-deps 'quixstreams>=3.28,<4'"


def installed() -> bool:
    return importlib.util.find_spec("quixstreams") is not None


@dataclass(frozen=True)
class PeerSpec:
    """What the peer computes: (feature name, function, window ms) over one column, per event key."""

    id_field: str
    time_field: str
    column: str
    features: tuple[tuple[str, str, int], ...]
    lateness_ms: int

    @classmethod
    def from_plan(cls, plan) -> PeerSpec:
        """The exact sliding windows of the view keyed by the partition key alone, on its most used column."""
        view = next((v for v in plan.stream_views if v.join_keys == (plan.partition_key,)), None)
        aggs = [a for a in view.aggs if a.function in QUIX_FUNCTIONS and a.slide_ms == a.window_ms] if view else []
        if not aggs:
            msg = f"no view keyed by {plan.partition_key} alone has an exact sliding count/sum/mean/max/min to compare"
            raise SluiceError(msg)
        columns = [a.column for a in aggs]
        column = max(dict.fromkeys(columns), key=columns.count)
        features = tuple((a.name, a.function, a.window_ms) for a in aggs if a.column == column)
        return cls(plan.schema.event_id, plan.schema.timestamp_field, column, features, plan.schema.allowed_lateness_ms)

    def args(self) -> list[str]:
        out = ["--id-field", self.id_field, "--time-field", self.time_field, "--column", self.column,
               "--lateness-ms", str(self.lateness_ms)]
        for name, function, window_ms in self.features:
            out += ["--feature", f"{name}:{function}:{window_ms}"]
        return out

    def by_window(self) -> dict[int, list[tuple[str, str]]]:
        windows: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for name, function, window_ms in self.features:
            windows[window_ms].append((name, function))
        return dict(sorted(windows.items()))


def create_input_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """The peer's input topic, with the retention Quix reads back (see the module docstring); kept if it exists."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    from stream.kafka.clients import make_admin

    admin = make_admin(bootstrap)  # held until the answer: a dropped client cancels its requests
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=INPUT_TOPIC_CONFIG)]
    )
    try:
        futures[topic].result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            msg = f"cannot create the Quix peer's input topic {topic}: {exc}"
            raise SluiceError(msg) from exc


def build_app(args: argparse.Namespace, spec: PeerSpec):
    """The Quix application and its dataframe, ready to run."""
    from quixstreams import Application
    from quixstreams.dataframe.windows import aggregations

    from stream.pipeline.events import parse_timestamp_ms

    class ReadyApplication(Application):
        # Quix has no public hook for "partitions assigned"; this is where its consumer learns it.
        def _on_assign(self, consumer, topic_partitions):
            super()._on_assign(consumer, topic_partitions)
            ready_file = os.environ.get("SLUICE_READY_FILE")
            if ready_file:
                Path(ready_file).write_text("ready\n")

    app = ReadyApplication(
        broker_address=args.bootstrap_servers,
        consumer_group=args.app_id,
        auto_offset_reset="earliest",
        state_dir=str(Path(args.data_dir) / args.app_id),
        loglevel="WARNING",
        # Group membership timing as `sluice worker` sets it (its default session timeout, 1 s heartbeats),
        # so joining the group on the embedded broker takes as long; the rest is Quix's defaults.
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    # Event time, read as Sluice reads it (ISO-8601 or epoch ms), so both put an event at the same millisecond.
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer="json",
                       timestamp_extractor=lambda value, headers, ts, kind: parse_timestamp_ms(value[spec.time_field]))
    retention = source.broker_config.extra_config.get("retention.ms")
    if retention is None:
        msg = (f"the broker reports no retention.ms for {args.topic}, which Quix Streams needs for its changelogs: "
               f"create the topic with it set (quix_peer.create_input_topic does)")
        raise SluiceError(msg)
    sink = app.topic(args.output, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda event: {spec.id_field: str(event[spec.id_field]), "_x": float(event[spec.column])})
    for window_ms, features in spec.by_window().items():
        aggs = {name: getattr(aggregations, QUIX_FUNCTIONS[function])(column="_x") for name, function in features}
        window = sdf.sliding_window(duration_ms=window_ms, grace_ms=spec.lateness_ms, name=f"w{window_ms}")
        # A window's record carries its start (event time - W) as its time: the same shift for every
        # event, so the next window still sees the same gaps between them and needs no timestamp reset.
        sdf = window.agg(_event=aggregations.Latest(), **aggs).current()
        sdf = sdf.apply(lambda r, names=tuple(aggs): {**r["_event"], **{n: r[n] for n in names}})
    sdf = sdf.apply(lambda value: {k: v for k, v in value.items() if k != "_x"})
    sdf = sdf.set_timestamp(lambda value, key, ts, headers: int(time.time() * 1000))
    sdf.to_topic(sink, key=lambda value: value[spec.id_field])
    return app


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PeerSpec]:
    parser = argparse.ArgumentParser(prog="python -m stream.tools.bench.quix_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="input topic (JSON events keyed by entity)")
    parser.add_argument("--output", required=True, help="output topic (one record per event, keyed by event id)")
    parser.add_argument("--app-id", required=True, help="consumer group")
    parser.add_argument("--data-dir", default=".sluice/data", help="Quix's state directory goes under it")
    parser.add_argument("--id-field", required=True)
    parser.add_argument("--time-field", required=True)
    parser.add_argument("--column", required=True, help="the numeric field the windows aggregate")
    parser.add_argument("--lateness-ms", type=int, default=0, help="the windows' grace period")
    parser.add_argument("--feature", action="append", required=True, metavar="NAME:FUNCTION:WINDOW_MS",
                        help="one windowed feature; repeat (functions: " + ", ".join(QUIX_FUNCTIONS) + ")")
    args = parser.parse_args(argv)
    features = []
    for text in args.feature:
        name, function, window_ms = text.rsplit(":", 2)
        if function not in QUIX_FUNCTIONS:
            parser.error(f"--feature {text}: Quix Streams has no built-in {function}")
        features.append((name, function, int(window_ms)))
    return args, PeerSpec(args.id_field, args.time_field, args.column, tuple(features), args.lateness_ms)


def main(argv: list[str] | None = None) -> None:
    args, spec = parse_args(argv)
    if not installed():
        raise SystemExit(f"Quix Streams is not installed: {INSTALL_HINT}")
    logging.basicConfig(level=logging.WARNING)
    build_app(args, spec).run()


if __name__ == "__main__":
    main()
