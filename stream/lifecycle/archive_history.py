"""Features from the archive: the events log read back as a history whose rows say where and when they arrived.

An event's served features depend on what arrived before it, not only on
event times: a history sorted by event time gives an event the events that
happened before it, serving gave it those that had *arrived* before it.
The events archive (stream/lifecycle/archive.py) holds every message of the
events topic with its partition, offset and broker timestamp, so the
arrival order can be rebuilt exactly:

* stage 0 reads an events partition in offset order: `_partition_0` and
  `_offset_0` are the message's own partition and offset (lateness is judged
  per events partition, as the worker judges it);
* every later stage (after a repartition hop) takes its input in the
  arrival order of features/arrival.py, (clock, partition, offset) over the
  whole log: `_partition_<s>` is 0 and `_offset_<s>` the rank in that order.
  Within an entity only the order of the offsets counts.

The clock of a record depends on every earlier record of its partition,
valid or not, so it is computed over the whole archive (three small
columns) even when only some days are read. Messages are validated as the
worker validates them (same limits, same Kafka key check); a message it
dead-lettered enters no window here either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from features.arrival import arrival_clock, arrival_rank
from features.offline import offset_col, partition_col
from features.spec import FeaturePlan
from stream.lifecycle.archive import EventsArchive
from stream.pipeline.clock import TICK_KEY
from stream.pipeline.events import EventValidator, columns_of
from stream.settings import Settings

#: How a history's events are ordered, as commands print it.
ARRIVAL_ARCHIVE = "arrival: archive"
EVENT_TIME = "event time"
#: What a command says when it computes features from a plain history.
EVENT_TIME_NOTE = "features in event-time order: a plain history has no arrival times; expect skew, see `sluice skew`"
#: Columns of an archive-read history besides the event's fields.
PLACE = ("partition", "offset", "broker_ts_ms")


@dataclass
class ArchiveHistory:
    """The valid events of an archive (fields, arrival columns, partition, offset, broker_ts_ms) and what was left out."""

    frame: pd.DataFrame
    messages: int  # archived messages read, ticks included
    rejected: int  # messages the worker dead-lettered: in no window, no row here
    root: Path
    ticks: int = 0  # ticks (stream.worker.ticks): they move the clock, they are not events

    @property
    def order(self) -> str:
        return order_of(self.frame)

    def describe(self) -> str:
        return (
            f"features in arrival order ({ARRIVAL_ARCHIVE} {self.root}: {len(self.frame):,} events of "
            f"{self.messages:,} messages, {self.rejected:,} dead-lettered)"
        )


def order_of(frame: pd.DataFrame) -> str:
    """ARRIVAL_ARCHIVE if the frame carries where its events arrived, else EVENT_TIME."""
    return ARRIVAL_ARCHIVE if offset_col(0) in frame and partition_col(0) in frame else EVENT_TIME


def arrival_columns(
    n_stages: int, partition: np.ndarray, offset: np.ndarray, clock: np.ndarray
) -> dict[str, np.ndarray]:
    """`_partition_<s>` / `_offset_<s>` of every stage for records with these places and arrival clocks."""
    partition = np.asarray(partition, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.int64)
    columns = {partition_col(0): partition, offset_col(0): offset}
    if n_stages > 1:
        # The clock is already a running max within each partition, so ranking on it as the
        # "broker time" reproduces the order (clock, partition, offset).
        rank = arrival_rank(partition, offset, clock)
        for stage in range(1, n_stages):
            columns[partition_col(stage)] = np.zeros(len(partition), dtype=np.int64)
            columns[offset_col(stage)] = rank
    return columns


def _query(paths: list[Path], columns: str):
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        query = f'SELECT {columns} FROM read_parquet($1) ORDER BY partition, "offset"'
        return con.sql(query, params=[[str(p) for p in paths]]).to_arrow_table()
    finally:
        con.close()


def _clocks(archive: EventsArchive) -> pd.DataFrame:
    """(partition, offset, clock) of every archived record."""
    table = _query(archive.files(), 'partition, "offset", broker_ts_ms').to_pandas()
    table["clock"] = arrival_clock(table["partition"].to_numpy(), table["offset"].to_numpy(), table["broker_ts_ms"].to_numpy())
    return table


def validator_for(plan: FeaturePlan, settings: Settings | None = None) -> EventValidator:
    """The worker's validator for `plan`, under the settings' input limits (default: SLUICE_MAX_* as the worker reads them)."""
    settings = settings or Settings.from_env()
    stream_keys = tuple(k for v in plan.stream_views for k in v.join_keys)
    entity_fields = tuple(dict.fromkeys(stream_keys + tuple(k for v in plan.batch_views for k in v.join_keys)))
    return EventValidator(
        plan.schema, entity_fields, partition_key=plan.partition_key, max_message_bytes=settings.max_message_bytes,
        max_event_ahead_ms=settings.max_event_ahead_ms, max_abs_value=settings.max_abs_value,
    )


def read_archive(
    root: str | Path, plan: FeaturePlan, *, first_day: str | None = None, last_day: str | None = None,
    settings: Settings | None = None,
) -> ArchiveHistory:
    """The archive's valid events of days first_day..last_day (broker time, YYYY-MM-DD; None: open), in arrival order.

    The frame has the schema's fields (the timestamp as UTC datetimes where
    pandas can hold them, else epoch milliseconds), every entity key, the
    arrival columns of each stage and the message's partition, offset and
    broker_ts_ms; `features.offline.compute_features` on it gives what the
    worker served.
    """
    archive = EventsArchive(root)
    paths = archive.files(first_day, last_day)
    if not paths:
        msg = f"no archived events in {root}" + (f" for days {first_day or '...'} to {last_day or '...'}" if first_day or last_day else "")
        raise FileNotFoundError(msg)
    table = _query(paths, 'partition, "offset", broker_ts_ms, "key", "value"')
    partition = table.column("partition").to_numpy().astype(np.int64)
    offset = table.column("offset").to_numpy().astype(np.int64)
    broker_ts = table.column("broker_ts_ms").to_numpy().astype(np.int64)
    validator = validator_for(plan, settings)
    keys, values = table.column("key").to_pylist(), table.column("value").to_pylist()
    events = np.array([k != TICK_KEY for k in keys], dtype=bool)  # every record moves the clock; ticks are not events
    at = np.flatnonzero(events)
    parsed = validator.parse(
        [values[i] for i in at], offset[at].tolist(), [keys[i] for i in at], broker_ts[at].tolist()
    )
    kept = at[parsed.index]
    frame = pd.DataFrame(columns_of(plan.schema, parsed.records))
    for name in validator.key_fields:
        if name not in frame:
            frame[name] = np.asarray([r[name] for r in parsed.records], dtype=object)
    frame[plan.schema.timestamp_field] = _times(parsed.columns.ts)
    if first_day is None and last_day is None:
        clock = arrival_clock(partition, offset, broker_ts)
    else:
        whole = _clocks(archive).set_index(["partition", "offset"])["clock"]
        clock = whole.reindex(pd.MultiIndex.from_arrays([partition, offset])).to_numpy(dtype=np.int64)
    for name, column in arrival_columns(len(plan.stages()), partition[kept], offset[kept], clock[kept]).items():
        frame[name] = column
    frame["partition"], frame["offset"], frame["broker_ts_ms"] = partition[kept], offset[kept], broker_ts[kept]
    frame.attrs["arrival"] = ARRIVAL_ARCHIVE
    return ArchiveHistory(frame, len(offset), len(parsed.rejects), Path(root), int((~events).sum()))


def _times(ms: np.ndarray):
    """Epoch milliseconds as UTC datetimes; as integers where a time lies beyond pandas' years (1677-2262)."""
    try:
        return pd.to_datetime(ms, unit="ms", utc=True)
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        return np.asarray(ms, dtype=np.int64)
