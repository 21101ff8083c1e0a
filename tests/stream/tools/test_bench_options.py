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
