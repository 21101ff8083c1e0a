"""The --serve bench's reading of the worker's histograms: a run's share is the difference of two scrapes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.tools.bench.serve_breakdown import CpuSample, histogram


def _scrape(registry: CollectorRegistry) -> dict[str, float]:
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_histogram_between_two_scrapes_counts_only_what_came_in_between():
    registry = CollectorRegistry()
    steps = Histogram("x_step_seconds", "steps", ["step"], buckets=(0.001, 0.01, 0.1), registry=registry)
    steps.labels("deliver").observe(0.5)  # before the run: left out
    before = _scrape(registry)
    for seconds in (0.0005, 0.005, 0.005, 0.05):
        steps.labels("deliver").observe(seconds)
    steps.labels("queue").observe(0.0001)  # another label: left out
    found = histogram(before, _scrape(registry), "x_step_seconds", 'step="deliver"')
    assert found == {"count": 4, "mean_ms": 15.125, "p50_under_ms": 10.0, "p99_under_ms": 100.0}
    assert histogram(before, before, "x_step_seconds", 'step="deliver"') is None


def test_cores_are_per_role_and_for_the_machine():
    earlier = CpuSample()
    sum(i * i for i in range(300_000))
    cores = CpuSample().cores_since(earlier)
    assert cores["bench (stream feeder, reader)"] > 0 and cores["machine"] > 0
