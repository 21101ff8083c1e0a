"""`sluice bench --quick` makes the sizes small, except those given on the command line."""

from __future__ import annotations

import argparse

from stream.tools.bench import main as bench


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(), workload_for=None)
    args = parser.parse_args(["bench", *argv])
    bench.sizes(args)
    return args


def test_quick_keeps_the_rates_and_seconds_it_is_given_even_when_they_equal_the_defaults():
    args = _parse(["--quick", "--clock", "--rates", "1000,5000", "--rate-seconds", "10"])
    assert (args.rates, args.rate_seconds, args.events) == ("1000,5000", 10.0, bench.QUICK["events"])


def test_quick_alone_is_small_and_no_flag_is_the_full_run():
    quick, full = _parse(["--quick"]), _parse([])
    assert {name: getattr(quick, name) for name in bench.QUICK} == bench.QUICK
    assert {name: getattr(full, name) for name in bench.DEFAULTS} == bench.DEFAULTS


def test_the_engine_bench_runs_every_stage_at_every_size_and_answers_the_same_events(trained_repo, make_engine):
    from stream.tools.bench.engine import measure_engine
    from stream.tools.workload import keyed
    from tests.stream.outcomes import live_events

    engine = make_engine()
    payloads = [keyed(engine.plan, p) for p in live_events(trained_repo, hours=0.2)]
    report = measure_engine(engine, payloads, partitions=2, rounds=1, sizes=(5, 50))
    assert set(report["us_per_event"]) == {"5", "50"} and set(report["per_stage_us_per_event"]) == {"0", "1"}
    assert report["predictions"]["5"] == report["predictions"]["50"] == len(payloads)
    assert all(v > 0 for v in report["us_per_event"].values())


def test_the_paced_events_producer_lingers_longer_on_the_embedded_broker_unless_told(monkeypatch, tmp_path):
    from stream.kafka.clients import PRODUCER_LINGER_MS
    from stream.tools.bench import systems

    assert _parse([]).input_linger_ms is None
    assert bench.input_linger_ms(None, embedded=True) == bench.EMBEDDED_INPUT_LINGER_MS > PRODUCER_LINGER_MS
    assert bench.input_linger_ms(None, embedded=False) == PRODUCER_LINGER_MS
    assert bench.input_linger_ms(_parse(["--input-linger-ms", "0"]).input_linger_ms, embedded=True) == 0
    made = []
    monkeypatch.setattr(systems, "warmed_producer", lambda bootstrap, topic, **extra: made.append(extra))
    for linger in (bench.EMBEDDED_INPUT_LINGER_MS, None):
        systems.SystemBench("127.0.0.1:1", tmp_path, 4, None, 1.0, None, linger).input_producer("events")
    assert made == [{"linger.ms": bench.EMBEDDED_INPUT_LINGER_MS}, {}]
