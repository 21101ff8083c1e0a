"""Where an event's latency goes: wall-clock times of each step a record passes in the worker.

Off unless `SLUICE_TIMELINE_FILE` names a file. Then every computed chunk
(one partition's part of one engine call) appends a JSON line once its
outputs are on the broker:

    {"s": stage, "p": partition, "t0": compute start, "t1": compute end,
     "dl": outputs acknowledged, "n": partitions in the call,
     "r": [[offset, Kafka timestamp, fetched, taken by the actor, source partition, source offset], ...]}

All times are ms since the epoch, on this host's clock (as the producers'
CreateTime timestamps are, on one machine). "fetched" is when the consumer
handed the fetched records to Faust; "taken" when the stage's actor took
the chunk. The source is the record's place in the events topic (the first
stage's partition and offset), which joins an event's steps across stages.
`python -m stream.tools.bench.timeline FILE` sums them up per step.
"""

from __future__ import annotations

import time

import orjson

from stream.pipeline.clock import MARK_KEY, _key_of


class Timeline:
    def __init__(self, path: str):
        self.file = open(path, "ab", buffering=1 << 16)  # noqa: SIM115 - open for the worker's lifetime
        self.stamps: dict[tuple[int, int, int], tuple[float, float]] = {}
        self.flushed = time.monotonic()
        self.fetches: list[list] = []  # [sent, answered, new records?], appended by the consumer's thread
        _watch_fetches(self.fetches)

    def taken(self, stage: int, partition: int, message) -> None:
        """An actor took `message` (a fetched chunk): note when it was fetched and taken, per record."""
        now = time.time() * 1000
        fetched = getattr(message, "fetched_ms", now)
        for key, _, offset, _ in message.records:
            if key != MARK_KEY:  # marks are folded into the merge, never computed
                self.stamps[(stage, partition, offset)] = (fetched, now)

    def computed(self, stage: int, partition: int, messages, started_ms: float, computed_ms: float, together: int,
                 sent) -> None:
        rows = []
        for m in messages:
            fetched, taken = self.stamps.pop((stage, partition, m.offset), (None, None))
            if m.key == MARK_KEY:
                continue
            if stage == 0:
                source = (partition, m.offset)
            else:
                read = _key_of(m.value, stage)  # (clock, events partition, offset there), upstream partition
                if read is None:
                    continue
                source = read[0][1:]
            rows.append([m.offset, m.timestamp_ms, fetched, taken, *source])
        if not rows:
            return
        line = {"s": stage, "p": partition, "t0": started_ms, "t1": computed_ms, "n": together, "r": rows}
        sent.add_done_callback(lambda _: self._write(line))

    def _write(self, line: dict) -> None:
        line["dl"] = time.time() * 1000
        self.file.write(orjson.dumps(line) + b"\n")
        if self.fetches:
            n = len(self.fetches)
            fetches = self.fetches[:n]
            del self.fetches[:n]
            self.file.write(orjson.dumps({"fetches": fetches}) + b"\n")
        if time.monotonic() - self.flushed > 1.0:
            self.file.flush()
            self.flushed = time.monotonic()


def _watch_fetches(into: list) -> None:
    """Note when each of the consumer's fetch requests went out and was answered (aiokafka's fetcher)."""
    from aiokafka.consumer.fetcher import Fetcher

    proc = Fetcher._proc_fetch_request
    if getattr(proc, "watched", False):
        return

    async def watched(self, assignment, node_id, request):
        sent = time.time() * 1000
        new = await proc(self, assignment, node_id, request)
        into.append([sent, time.time() * 1000, bool(new)])
        return new

    watched.watched = True
    Fetcher._proc_fetch_request = watched


#: The worker's timeline, when SLUICE_TIMELINE_FILE is set (stream.worker.app.build_app).
TIMELINE: Timeline | None = None


def start(path: str | None) -> None:
    global TIMELINE
    TIMELINE = Timeline(path) if path else None
