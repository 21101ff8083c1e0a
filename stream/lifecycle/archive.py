"""The events archive: what arrived on the events topic, as parquet by day, each offset once.

Serving computes an event's features from what arrived before it on the
events log, so the offline side can reproduce serving only from a record of
that log: every message's partition, offset and broker timestamp with its
original bytes (valid or not: a message the worker dead-lettered is still
part of what arrived). The archive is that record.

Layout: `<root>/day=YYYY-MM-DD/partition=P/<first>-<last>.parquet`, the day
of the broker timestamp (UTC), `first`..`last` the offsets a file holds. A
file is written to a temporary name and renamed into place, so a file either
exists whole or not at all. Where to go on from is read back from the file
names (`next_offsets`), never from a consumer group's commits: a writer
killed after a rename and before anything else resumes after that file, and
one killed before it writes the file again. So each offset is in the archive
exactly once, across any number of restarts. One writer per topic.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("broker_ts_ms", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
    ]
)
_FILE = re.compile(r"^(\d+)-(\d+)\.parquet$")


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


class EventsArchive:
    """An archive directory: where each partition goes on from, writing runs of messages, reading it all back."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _files(self) -> Iterable[tuple[int, int, int, Path]]:
        """(partition, first, last, path) of every complete file."""
        if not self.root.is_dir():
            return
        for day in self.root.glob("day=*"):
            for part in day.glob("partition=*"):
                partition = int(part.name.split("=", 1)[1])
                for path in part.iterdir():
                    match = _FILE.match(path.name)
                    if match:
                        yield partition, int(match.group(1)), int(match.group(2)), path

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the offset after the last one archived (partitions never archived are absent)."""
        after: dict[int, int] = {}
        for partition, _, last, _ in self._files():
            after[partition] = max(after.get(partition, 0), last + 1)
        return after

    def write(self, partition: int, rows: list[tuple[int, int, bytes | None, bytes | None]]) -> list[Path]:
        """Append a run of one partition's messages, (offset, broker_ts_ms, key, value) in offset order.

        A file per stretch of consecutive messages of one day, written in
        offset order, each whole or not at all: a writer stopped half-way has
        archived a prefix of the run (broker times need not rise with the
        offset, so days can alternate; grouping by day would leave holes).
        """
        written: list[Path] = []
        start = 0
        for end in range(1, len(rows) + 1):
            if end < len(rows) and day_of(rows[end][1]) == day_of(rows[start][1]):
                continue
            written.append(self._write_file(partition, rows[start:end]))
            start = end
        return written

    def _write_file(self, partition: int, rows: list) -> Path:
        folder = self.root / f"day={day_of(rows[0][1])}" / f"partition={partition}"
        folder.mkdir(parents=True, exist_ok=True)
        offsets, times, keys, values = zip(*rows, strict=True)
        table = pa.table(
            [
                pa.array([partition] * len(rows), pa.int32()),
                pa.array(offsets, pa.int64()),
                pa.array(times, pa.int64()),
                pa.array(keys, pa.binary()),
                pa.array(values, pa.binary()),
            ],
            schema=SCHEMA,
        )
        final = folder / f"{offsets[0]}-{offsets[-1]}.parquet"
        temporary = folder / f".{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, final)
        return final

    def files(self, first_day: str | None = None, last_day: str | None = None) -> list[Path]:
        """Complete files, in (partition, first offset) order, of the days first_day..last_day (YYYY-MM-DD; None: open)."""
        chosen = []
        for *_, path in sorted(self._files()):
            day = path.parent.parent.name.split("=", 1)[1]
            if (first_day is None or day >= first_day) and (last_day is None or day <= last_day):
                chosen.append(path)
        return chosen

    def read(self) -> pa.Table:
        """Every archived message, ordered by partition and offset."""
        tables = [pq.read_table(path, schema=SCHEMA) for path in self.files()]
        if not tables:
            return SCHEMA.empty_table()
        return pa.concat_tables(tables).sort_by([("partition", "ascending"), ("offset", "ascending")])
