"""The two comparison systems of `sluice bench`: plain Faust apps, one process each.

    python -m stream.tools.bench.naive --mode naive --topic IN --output OUT ...
    python -m stream.tools.bench.naive --mode parse --topic IN --output OUT ...

``naive`` is what a first streaming-scoring service usually looks like: a
per-event agent (``async for value in stream``) that parses the event, makes
one Feast ``get_online_features`` call for the card profile, scores one row
with LightGBM and sends one prediction with Faust's own producer. It computes
*no* windowed features (they are NaN in the vector), which is generous to it:
a real per-event implementation would also read, update and write per-entity
window state for every event.

``parse`` is the ceiling of a plain Faust agent: it reads in batches
(``stream.take(2000, within=0.05)``), only orjson-parses each value and sends
one small output per event (the event id, keyed by it). One output per event
keeps its output traffic the same shape as the other systems' (one record per
event), and lets the benchmark measure per-event latency the same way for all.

Both write the ready file named by SLUICE_READY_FILE once they hold their
partitions, exactly like `sluice worker`, so the benchmark starts and waits
for all three the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import faust
import numpy as np
import orjson


def build_app(args: argparse.Namespace) -> faust.App:
    # Broker-facing settings match `sluice worker` (stream/worker/app.py) so group
    # joins on the embedded broker take as long; the rest is Faust's defaults.
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap_servers}",
        store="memory://",
        datadir=str(Path(args.data_dir) / args.app_id),
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        value_serializer="raw",
        key_serializer="raw",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    source = app.topic(args.topic, partitions=args.partitions, key_type=bytes, value_type=bytes)
    sink = app.topic(args.output, partitions=args.partitions, key_type=bytes, value_type=bytes)
    agent = naive_agent(args, sink) if args.mode == "naive" else parse_agent(sink, args.id_field)
    app.agent(source, name=f"bench-{args.mode}")(agent)

    @app.on_rebalance_complete.connect
    async def ready(sender, **kwargs) -> None:
        ready_file = os.environ.get("SLUICE_READY_FILE")
        if ready_file:
            Path(ready_file).write_text("ready\n")

    return app


def parse_agent(sink, id_field: str):
    async def agent(stream):
        async for values in stream.take(2000, within=0.05):
            for value in values:
                event = orjson.loads(value)
                event_id = str(event[id_field]).encode()
                await sink.send(key=event_id, value=b'{"id":"' + event_id + b'"}')

    return agent


class NaiveScorer:
    """One event at a time: a Feast online lookup, one LightGBM row."""

    def __init__(self, repo: str, model_dir: str):
        from features.feast_repo import load_plan, open_store
        from stream.serving.model import load_model

        self.store = open_store(repo)
        plan = load_plan(self.store)
        self.vector = plan.vector
        self.model = load_model(model_dir, expected_features=plan.vector)
        self.id_field = plan.schema.event_id
        # Only batch (Feast online store) features are looked up; every
        # windowed feature stays NaN, which LightGBM treats as missing.
        self.views = plan.batch_views
        self.refs = [f"{v.name}:{f}" for v in self.views for f in v.features]
        self.slots = [(f, self.vector.index(f"{v.name}__{f}")) for v in self.views for f in v.features]
        self.keys = tuple(dict.fromkeys(k for v in self.views for k in v.join_keys))

    def score(self, event: dict) -> float:
        row = {k: str(event[k]) for k in self.keys}
        found = self.store.get_online_features(features=self.refs, entity_rows=[row]).to_dict()
        vector = np.full((1, len(self.vector)), np.nan)
        for feature, slot in self.slots:
            value = found.get(feature, [None])[0]
            if value is not None:
                vector[0, slot] = float(value)
        return float(self.model.booster.predict(vector, num_threads=1)[0])


def naive_agent(args: argparse.Namespace, sink):
    scorer = NaiveScorer(args.repo, args.model_dir)

    async def agent(stream):
        async for value in stream:
            event = orjson.loads(value)
            event_id = str(event[scorer.id_field])
            score = scorer.score(event)
            prediction = {
                scorer.id_field: event_id,
                "score": score,
                "decision": score >= scorer.model.threshold,
                "model_version": scorer.model.version,
            }
            await sink.send(key=event_id.encode(), value=orjson.dumps(prediction))

    return agent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stream.tools.bench.naive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["naive", "parse"], required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="input topic (JSON events)")
    parser.add_argument("--output", required=True, help="output topic (one record per event)")
    parser.add_argument("--app-id", required=True, help="Faust app id / consumer group")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--data-dir", default=".sluice/data")
    parser.add_argument("--repo", help="Feast repo (naive mode)")
    parser.add_argument("--model-dir", help="model directory (naive mode)")
    parser.add_argument("--id-field", required=True, help="the events' id field (the repo's event id)")
    args = parser.parse_args(argv)
    if args.mode == "naive" and not (args.repo and args.model_dir):
        parser.error("--mode naive needs --repo and --model-dir")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("FEAST_USAGE", "False")
    Path(args.data_dir, args.app_id).mkdir(parents=True, exist_ok=True)
    app = build_app(args)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
