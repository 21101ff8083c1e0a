"""The batch histogram must expose exactly what prometheus_client's own Histogram does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import BatchHistogram

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _lines(text: str, name: str) -> list[str]:
    return sorted(
        line.replace(name, "m", 1)
        for line in text.splitlines()
        if line.startswith(name) and "_created" not in line
    )


def test_batch_histogram_matches_prometheus_histogram():
    registry = CollectorRegistry()
    reference = Histogram("ref", "d", buckets=BUCKETS, registry=registry)
    ours = BatchHistogram("ours", "d", buckets=BUCKETS, registry=registry)
    # Values on bucket bounds (le is inclusive), between them, and beyond the last.
    batches = [[0.0005, 0.001, 0.0011, 0.3], [], [20.0, 0.1, 0.1, 5.0, 0.002]]
    for batch in batches:
        for value in batch:
            reference.observe(value)
        ours.observe_many(batch)
    text = generate_latest(registry).decode()
    ours_lines, ref_lines = _lines(text, "ours"), _lines(text, "ref")
    # Buckets and count exactly; the sum up to float summation order.
    assert [x for x in ours_lines if not x.startswith("m_sum")] == [x for x in ref_lines if not x.startswith("m_sum")]
    (ours_sum,) = [float(x.split()[1]) for x in ours_lines if x.startswith("m_sum")]
    (ref_sum,) = [float(x.split()[1]) for x in ref_lines if x.startswith("m_sum")]
    assert abs(ours_sum - ref_sum) < 1e-9
    assert 'ours_bucket{le="0.001"} 2.0' in text
    assert "ours_count 9.0" in text
