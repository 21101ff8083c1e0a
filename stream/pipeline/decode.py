"""The first step of a micro-batch: its messages read and validated, as columns plus what travels with them.

The first stage reads events as producers wrote them; later stages read
the records an earlier stage forwarded, and validate the events in them
again. Whatever cannot be read is returned as a dead letter, never raised.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from features.columns import EventColumns
from features.spec import FeaturePlan
from stream.pipeline import forwarded
from stream.pipeline.clock import MARK_KEY, TICK_KEY
from stream.pipeline.copies import Copies
from stream.pipeline.events import EventValidator, clip, columns_of
from stream.pipeline.forwarded import UNREADABLE, Carried, ForwardedRow
from stream.pipeline.outcomes import NO_PLACE, Message, Output


class Decoded(NamedTuple):
    """The valid events of one partition's micro-batch, and the dead letters of the rest."""

    columns: EventColumns
    records: list[dict]  # the valid events, parsed
    carried: Carried
    dead_letters: list[Output]


class Decoder:
    """Reads the messages of any stage of one plan.

    `stage_names[s]`: the stream features stages 0..s add to the vector,
    what a record forwarded by stage s carries; `topics[s]`: the topic
    stage s reads.
    """

    def __init__(
        self, plan: FeaturePlan, validator: EventValidator, copies: Copies, stage_names: list[list[str]], topics: list[str]
    ):
        self.plan = plan
        self.validator = validator
        self.copies = copies
        self.stage_names = stage_names
        self.topics = topics

    def decode(
        self, stage: int, messages: list[Message], done_before: int, partition: int, clocks: np.ndarray | None = None
    ) -> Decoded:
        """Messages below offset `done_before` were output before: a reject among them is not dead-lettered again.

        `clocks`: the first stage's arrival clock of each message (a later
        stage reads it from the records); by default, the running max of
        the messages' own timestamps.
        """
        if stage > 0:
            return self._decode_forwarded(stage, messages, done_before, partition)
        if any(m.key == TICK_KEY for m in messages):
            # A tick moved the clock (counted in `clocks`); it is not an event.
            if clocks is not None:
                clocks = clocks[[m.key != TICK_KEY for m in messages]]
            messages = [m for m in messages if m.key != TICK_KEY]
        values = [m.value for m in messages]
        keys = [m.key for m in messages]
        if clocks is None:
            clocks = np.maximum.accumulate(np.array([max(m.timestamp_ms, 0) for m in messages] or [0], dtype=np.int64))
        parsed = self.validator.parse(values, [m.offset for m in messages], keys, [m.timestamp_ms for m in messages])
        events_topic = self.copies.topics["events"]
        dead = []
        for i, reason, kind in parsed.rejects:
            m = messages[i]
            if m.offset >= done_before:
                dead.append(self.copies.dead_letter(kind, reason, m.key, m.value, f"{events_topic}/{partition}/{m.offset}"))
        index = parsed.index.tolist()
        carried = Carried(
            t0=np.array([messages[i].timestamp_ms for i in index], dtype=np.float64),
            arrival=[[[partition, messages[i].offset]] for i in index],
            features=np.zeros((len(index), 0)),
            names=[],
            stage_ms=[],
            source_wm=np.zeros(len(index), dtype=np.int64),
            raw=[values[i] for i in index],
            keys=[keys[i] for i in index],
            clock=clocks[parsed.index],
        )
        return Decoded(parsed.columns, parsed.records, carried, dead)

    def _decode_forwarded(self, stage: int, messages: list[Message], done_before: int, partition: int) -> Decoded:
        """Records an earlier stage forwarded, validated again; anything else on the topic is dead-lettered."""
        problem = self.validator.problem
        rows, records, raws, kept, bad = [], [], [], [], []
        for m in messages:
            if m.seq == NO_PLACE:
                bad.append((m, "its place in the arrival order cannot be read"))
                continue
            if m.key == MARK_KEY:
                continue  # a mark of the arrival clock, not an event: the arrival merge reads it
            try:
                row, raw = forwarded.decode(m.value)
                event = row.event
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                bad.append((m, str(exc)))
                continue
            invalid = problem(event, times=False)
            if invalid is not None:
                bad.append((m, invalid.reason))
                continue
            row.arrival.append([partition, m.offset])  # where it was read; its place in the order is `seq`
            rows.append(row)
            records.append(event)
            raws.append(raw)
            kept.append(m)
        try:
            columns, carried = self._forwarded_columns(stage, rows, records, raws, kept)
        except UNREADABLE:
            # Some record has the right shape but not the right contents: find it.
            good = []
            for j, m in enumerate(kept):
                try:
                    self._forwarded_columns(stage, rows[j : j + 1], records[j : j + 1], raws[j : j + 1], [m])
                    good.append(j)
                except UNREADABLE as exc:
                    bad.append((m, f"unreadable contents ({exc!r})"))
            rows, records, raws, kept = ([x[j] for j in good] for x in (rows, records, raws, kept))
            columns, carried = self._forwarded_columns(stage, rows, records, raws, kept)
        topic = self.topics[stage]
        dead = []
        for m, why in bad:
            if m.seq == NO_PLACE or (m.offset if m.seq is None else m.seq) >= done_before:
                reason = f"not valid JSON: not a record forwarded by stage {stage - 1}: {clip(why, 200)}"
                dead.append(self.copies.dead_letter("invalid_json", reason, m.key, m.value, f"{topic}/{partition}/{m.offset}"))
        return Decoded(columns, records, carried, dead)

    def _forwarded_columns(self, stage: int, rows: list, records: list[dict], raws: list[bytes], messages: list[Message]):
        names = self.stage_names[stage - 1]
        # The rows' items as columns, in the wire order (`ForwardedRow`), in one pass.
        items = zip(*rows) if rows else [()] * len(ForwardedRow._fields)
        _, features, arrival, t0, source_wm, event_ts, stage_ms, clock, _ = items
        arrival = list(arrival)
        source_wm = np.array(source_wm, dtype=np.int64)
        sources = np.column_stack(
            [
                np.array([a[0][0] for a in arrival], dtype=np.int64),
                np.array([a[0][1] for a in arrival], dtype=np.int64),
                source_wm,
            ]
        )
        carried = Carried(
            t0=np.array(t0, dtype=np.float64),
            arrival=arrival,
            features=np.array(features, dtype=np.float64).reshape(len(rows), len(names)),
            names=names,
            stage_ms=[list(s) for s in stage_ms],
            source_wm=source_wm,
            raw=raws,
            keys=None,
            clock=np.array(clock, dtype=np.int64),
            sources=sources,
        )
        ts = np.array(event_ts, dtype=np.int64)
        offsets = np.array([m.offset if m.seq is None else m.seq for m in messages], dtype=np.int64)
        columns = EventColumns(ts, offsets, columns_of(self.plan.schema, records))
        return columns, carried
