"""The worker's timeline (SLUICE_TIMELINE_FILE): what it writes, and how the summary joins an event's stages."""

from __future__ import annotations

import asyncio

import orjson

from stream.pipeline.outcomes import Message
from stream.tools.bench import timeline as summary
from stream.worker.timeline import Timeline


class Fetched:
    """What the consumer hands an actor: one partition's records of a fetch."""

    def __init__(self, records, fetched_ms):
        self.records, self.fetched_ms = records, fetched_ms


def forwarded(source_partition: int, source_offset: int, clock: int) -> bytes:
    # The shape stream.pipeline.clock reads: arrival [[events partition, offset], ...] at index 2, clock second last.
    return orjson.dumps(["card", 1.0, [[source_partition, source_offset]], clock, 0])


def test_a_computed_chunk_is_written_once_its_outputs_are_delivered(tmp_path):
    path = tmp_path / "timeline.jsonl"

    async def run():
        line = Timeline(str(path))
        line.taken(0, 2, Fetched([(b"c1", b"{}", 7, 1000), (b"\x00mark", b"[]", 8, 1001)], fetched_ms=1010.0))
        line.taken(1, 3, Fetched([(b"m1", forwarded(2, 7, 1000), 9, 1030)], fetched_ms=1040.0))
        sent = asyncio.get_running_loop().create_future()
        line.computed(0, 2, [Message(b"c1", b"{}", 7, 1000)], 1020.0, 1024.0, 3, sent)
        line.computed(1, 3, [Message(b"m1", forwarded(2, 7, 1000), 9, 1030)], 1050.0, 1052.0, 1, sent)
        line.file.flush()
        assert path.read_bytes() == b""  # not before the broker has the outputs
        sent.set_result(None)
        await asyncio.sleep(0)
        line.file.flush()
        return line

    line = asyncio.run(run())
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    rows = [r for r in rows if "r" in r]
    assert len(rows) == 2
    row, later = rows
    assert (row["s"], row["p"], row["t0"], row["t1"], row["n"]) == (0, 2, 1020.0, 1024.0, 3)
    assert row["r"][0][:3] == [7, 1000, 1010.0] and row["r"][0][4:] == [2, 7]
    assert row["dl"] >= row["t1"]
    # After the hop a record names the event it carries: events partition 2, offset 7.
    assert later["r"][0][:3] == [9, 1030, 1040.0] and later["r"][0][4:] == [2, 7]
    assert line.stamps == {}  # the mark was never noted, the record was taken off when computed


def test_the_summary_joins_an_event_across_stages_by_its_place_in_the_events_topic():
    lines = [
        {"s": 0, "p": 1, "t0": 130.0, "t1": 135.0, "dl": 145.0, "n": 2, "r": [[5, 100, 120.0, 125.0, 1, 5]]},
        {"s": 1, "p": 3, "t0": 180.0, "t1": 184.0, "dl": 190.0, "n": 1, "r": [[9, 136, 160.0, 161.0, 1, 5]]},
        {"fetches": [[110.0, 118.0, True], [121.0, 150.0, False]]},
    ]
    steps = summary.steps(summary.events(lines))
    assert steps["0: in -> fetched"] == [20.0]
    assert steps["0: taken -> compute"] == [5.0]
    assert steps["1: produced -> fetched (hop)"] == [24.0]
    assert steps["1: taken -> compute"] == [19.0]
    assert steps["total"] == [84.0]  # from the event's timestamp to the end of the last stage's compute
    fetches = summary.fetches(lines)
    assert fetches["fetch: answered, with records"] == [8.0]
    assert fetches["fetch: answered, empty"] == [29.0]
    assert fetches["fetch: answered -> next sent"] == [3.0]
