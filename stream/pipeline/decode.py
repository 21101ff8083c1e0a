"""The first step of a micro-batch: its messages read and validated, as columns plus what travels with them.

The first stage reads events as producers wrote them; later stages read
the records an earlier stage forwarded, and validate the events in them
again. Whatever cannot be read is returned as a dead letter, never raised.
"""

from __future__ import annotations

import bisect
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
    # The call's one set of columns `columns` is rows of (`Decoder.decode_many`), or None when read on its own:
    # every part of a call that has it holds the same, their rows in order.
    call: EventColumns | None = None


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
        return self.decode_many(stage, [(partition, messages, done_before, clocks)])[0]

    def decode_many(self, stage: int, parts: list[tuple[int, list[Message], int, np.ndarray | None]]) -> list[Decoded]:
        """`decode` for several partitions' batches, (partition, messages, done_before, clocks) each, in one pass.

        The messages of every part are read and turned into columns
        together, then cut back into one `Decoded` per part (views of the
        call's arrays): what a part gets does not depend on the others,
        and the arrays are built once per call instead of once per partition.
        """
        if stage > 0:
            return self._decode_forwarded_many(stage, parts)
        messages: list[Message] = []
        clock_parts, ends, part_of = [], [], []
        for i, (_, batch, _, clocks) in enumerate(parts):
            if any(m.key == TICK_KEY for m in batch):
                # A tick moved the clock (counted in `clocks`); it is not an event.
                if clocks is not None:
                    clocks = clocks[[m.key != TICK_KEY for m in batch]]
                batch = [m for m in batch if m.key != TICK_KEY]
            if clocks is None:
                clocks = np.maximum.accumulate(np.array([max(m.timestamp_ms, 0) for m in batch] or [0], dtype=np.int64))
            messages.extend(batch)
            clock_parts.append(clocks[: len(batch)])
            ends.append(len(messages))
            part_of.extend([i] * len(batch))
        values = [m.value for m in messages]
        keys = [m.key for m in messages]
        parsed = self.validator.parse(values, [m.offset for m in messages], keys, [m.timestamp_ms for m in messages])
        events_topic = self.copies.topics["events"]
        dead: list[list[Output]] = [[] for _ in parts]
        for i, reason, kind in parsed.rejects:
            m, at = messages[i], part_of[i]
            partition, _, done_before, _ = parts[at]
            if m.offset >= done_before:
                letter = self.copies.dead_letter(kind, reason, m.key, m.value, f"{events_topic}/{partition}/{m.offset}")
                dead[at].append(letter)
        index = parsed.index.tolist()
        n = len(index)
        clocks = np.concatenate(clock_parts) if len(clock_parts) > 1 else clock_parts[0]
        t0 = np.array([messages[i].timestamp_ms for i in index], dtype=np.float64)
        clock = clocks[parsed.index]
        features, source_wm = np.zeros((n, 0)), np.zeros(n, dtype=np.int64)
        columns = parsed.columns
        out, lo = [], 0
        for at, ((partition, _, _, _), end) in enumerate(zip(parts, ends)):
            hi = bisect.bisect_left(index, end, lo) if len(parts) > 1 else n
            mine = index[lo:hi]
            carried = Carried(
                t0=t0[lo:hi],
                arrival=[[[partition, messages[i].offset]] for i in mine],
                features=features[lo:hi],
                names=[],
                stage_ms=[],
                source_wm=source_wm[lo:hi],
                raw=[values[i] for i in mine],
                keys=[keys[i] for i in mine],
                clock=clock[lo:hi],
            )
            out.append(Decoded(_rows(columns, lo, hi, n), parsed.records[lo:hi], carried, dead[at], columns))
            lo = hi
        return out

    def _decode_forwarded_many(self, stage: int, parts: list[tuple[int, list[Message], int, np.ndarray | None]]) -> list[Decoded]:
        """Records an earlier stage forwarded, validated again; anything else on the topic is dead-lettered.

        Every part's good records are read into columns together; if some
        record has the right shape but not the right contents, each part
        is read on its own to find it.
        """
        loaded = [self._load_forwarded(messages) for _, messages, _, _ in parts]
        # Every part's events validated in one pass (what `problems` finds for an event depends on it alone).
        found, _ = self.validator.problems([e for _, events in loaded for e in events], times=False)
        read, lo = [], 0
        for (partition, _, _, _), (part, events) in zip(parts, loaded):
            read.append(self._sort_forwarded(partition, part, found[lo : lo + len(events)]))
            lo += len(events)
        if len(parts) > 1:
            rows, records, raws, kept = ([x for r in read for x in r[i]] for i in range(4))
            try:
                columns, carried = self._forwarded_columns(stage, rows, records, raws, kept)
            except UNREADABLE:
                pass
            else:
                out, lo = [], 0
                for (partition, _, done_before, _), (part_rows, part_records, _, _, bad) in zip(parts, read):
                    hi = lo + len(part_rows)
                    dead = self._forwarded_dead_letters(stage, partition, done_before, bad)
                    part = Decoded(_rows(columns, lo, hi, len(rows)), part_records, _carried_rows(carried, lo, hi), dead, columns)
                    out.append(part)
                    lo = hi
                return out
        return [
            self._forwarded_part(stage, partition, done_before, *r)
            for (partition, _, done_before, _), r in zip(parts, read)
        ]

    @staticmethod
    def _load_forwarded(messages: list[Message]) -> tuple[list, list]:
        """(per message: (message, row, raw) or (message, why), the events of the rows), in message order."""
        read = []
        events = []
        for m in messages:
            if m.seq == NO_PLACE:
                read.append((m, "its place in the arrival order cannot be read"))
                continue
            if m.key == MARK_KEY:
                continue  # a mark of the arrival clock, not an event: the arrival merge reads it
            try:
                row, raw = forwarded.decode(m.value)
                event = row.event
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                read.append((m, str(exc)))
                continue
            read.append((m, row, raw))
            events.append(event)
        return read, events

    @staticmethod
    def _sort_forwarded(partition: int, read: list, found: list):
        """(rows, events, their bytes, their messages, (message, why) of the rest) of one partition's records,
        from `_load_forwarded`'s reading and each event's problem (`found`, in order)."""
        rows, records, raws, kept, bad = [], [], [], [], []
        at = 0
        for r in read:
            if len(r) == 2:
                bad.append(r)
                continue
            m, row, raw = r
            invalid = found[at]
            at += 1
            if invalid is not None:
                bad.append((m, invalid.reason))
                continue
            row.arrival.append([partition, m.offset])  # where it was read; its place in the order is `seq`
            rows.append(row)
            records.append(row.event)
            raws.append(raw)
            kept.append(m)
        return rows, records, raws, kept, bad

    def _forwarded_part(self, stage: int, partition: int, done_before: int, rows, records, raws, kept, bad) -> Decoded:
        """One partition's records read into columns on their own (finding any with unreadable contents)."""
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
        return Decoded(columns, records, carried, self._forwarded_dead_letters(stage, partition, done_before, bad))

    def _forwarded_dead_letters(self, stage: int, partition: int, done_before: int, bad) -> list[Output]:
        topic = self.topics[stage]
        dead = []
        for m, why in bad:
            if m.seq == NO_PLACE or (m.offset if m.seq is None else m.seq) >= done_before:
                reason = f"not valid JSON: not a record forwarded by stage {stage - 1}: {clip(why, 200)}"
                dead.append(self.copies.dead_letter("invalid_json", reason, m.key, m.value, f"{topic}/{partition}/{m.offset}"))
        return dead

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


def _rows(columns: EventColumns, lo: int, hi: int, n: int) -> EventColumns:
    """Rows lo..hi of a call's columns (views), or the columns themselves when they are all of them."""
    if lo == 0 and hi == n:
        return columns
    return EventColumns(columns.ts[lo:hi], columns.seq[lo:hi], {k: v[lo:hi] for k, v in columns.fields.items()})


def _carried_rows(carried: Carried, lo: int, hi: int) -> Carried:
    """Rows lo..hi of what a call's events carry (views of its arrays)."""
    c = carried
    return Carried(
        t0=c.t0[lo:hi],
        arrival=c.arrival[lo:hi],
        features=c.features[lo:hi],
        names=c.names,
        stage_ms=c.stage_ms[lo:hi],
        source_wm=c.source_wm[lo:hi],
        raw=c.raw[lo:hi],
        keys=None if c.keys is None else c.keys[lo:hi],
        clock=c.clock[lo:hi],
        sources=None if c.sources is None else c.sources[lo:hi],
    )
