"""The online side: fold micro-batches into per-entity state, return features.

`StageAggregator.process` is pure with respect to Kafka and Faust: it reads
and writes blobs through any mapping (a Faust table in the worker, a dict in
tests). The caller must make outputs durable *before* writing the returned
state, and commit offsets only after that; `applied_seq` then makes a replay
after a crash produce neither double counts nor duplicate outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from features import state as st
from features.columns import EventColumns, value_codes
from features.overlay import Overlay
from features.spec import FeaturePlan, StreamView
from features.history import NEVER, STREAM_TIME_KEY, WATERMARKS_KEY, append_history, history_before, last_start
from features.windows import Items, Queries, aggregate


@dataclass
class StageResult:
    """Outcome of one micro-batch, aligned with the input events."""

    late: np.ndarray  # bool: beyond allowed lateness -> late topic, no features
    watermark: np.ndarray  # per event: stream time up to it minus the allowance (first stage)
    replayed: np.ndarray  # bool: already output before a crash -> emit nothing
    features: dict[str, np.ndarray]  # qualified name -> value (NaN where not computed)
    writes: dict[str, bytes]  # table key -> blob, to store after outputs are durable
    # The same values as one matrix, a row per feature in `features`' order (rows of it are `features`' arrays):
    # a caller that wants them side by side takes them in one call.
    block: np.ndarray


class StageAggregator:
    """Computes the stream features of one stage for micro-batches of one partition."""

    def __init__(self, plan: FeaturePlan, stage: int):
        self.plan = plan
        self.stage = stage
        self.views: tuple[StreamView, ...] = tuple(v for v in plan.stream_views if plan.stage_of(v) == stage)
        self.layouts = {v.name: st.layouts_of(v) for v in self.views}
        # Every feature of the stage, in the order `process_many` computes them: its row in a call's matrix.
        self.names = [f"{v.name}__{a.name}" for v in self.views for lay in self.layouts[v.name]
                      for a in v.aggs if a.layout == lay.tile_ms]
        self.lateness_ms = plan.schema.allowed_lateness_ms
        self.cache_entries = 250_000
        # count_distinct codes by value text (`value_codes` hashes each value on its own, so a
        # remembered code is the code): the columns' values repeat from batch to batch.
        self._distinct = tuple(dict.fromkeys(c for ls in self.layouts.values() for lay in ls for c in lay.distinct))
        self._code_memo: dict[str, int] = {}

    @staticmethod
    def table_key(view: str, entity: str) -> str:
        return f"{view}/{entity}"

    def outputs_done_before(self, table: Mapping[str, bytes], partition: int) -> int:
        """Offsets below this had their outputs made durable before a crash."""
        return last_start(table.get(STREAM_TIME_KEY.format(partition=partition)))

    def stream_time_before(self, table: Mapping[str, bytes], partition: int, first_seq: int) -> int:
        """Stream time just before offset `first_seq`, as the first run saw it (see `history_before`)."""
        return history_before(table, STREAM_TIME_KEY.format(partition=partition), first_seq)

    def process(
        self,
        table: Mapping[str, bytes],
        partition: int,
        events: EventColumns,
        sources: np.ndarray | None = None,
        n_sources: int = 0,
    ) -> StageResult:
        """Fold one micro-batch of one partition (events in arrival order).

        Lateness is judged only where events enter (stage 0). Later stages
        accept every forwarded event in its arrival order; `sources` gives,
        per event, (first-stage partition, its offset there, the watermark it
        carries). Offsets drop the copies a crashed first stage forwarded
        twice; watermarks bound what can still arrive, hence what state may
        be dropped (only once all `n_sources` partitions have reported).
        """
        return self.process_many(table, [(partition, events, sources)], n_sources)[0]

    def process_many(
        self,
        table: Mapping[str, bytes],
        parts: list[tuple[int, EventColumns, np.ndarray | None]],
        n_sources: int = 0,
        store: bool = True,
        events: EventColumns | None = None,
    ) -> list[StageResult]:
        """Fold one micro-batch per partition, as `process` would one after another.

        `store` False: the features only, no state writes (a question, which
        stores nothing, asks that way: stream.pipeline.ask). `events`: every
        part's events in order as one set of columns, when the caller has
        them so (stream.pipeline.decode reads a call's partitions into one):
        they are then not joined again.

        The per-partition parts (stream time, lateness, watermarks, replay
        markers) stay per partition; the window work runs once over all of
        them, which divides its fixed cost per call. That is exact because an
        entity's events all come through one partition. If an entity shows
        up in two of the batches (a producer keyed events by something else
        than the partition key), the batches are folded one after another.
        """
        # Over 60 lines on purpose: the steps share the per-partition arrays, and their
        # order (stream time, then lateness, then the fold, then the markers) is the point.
        writes_of = [dict() for _ in parts]
        prelude = [self._prelude(table, p, ev, src, n_sources, w) for (p, ev, src), w in zip(parts, writes_of)]
        sizes = [len(ev) for _, ev, _ in parts]
        if events is None or len(events) != sum(sizes):
            events = EventColumns.concat([ev for _, ev, _ in parts])
        n = len(events)
        part_of = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)
        if len(parts) == 1:
            late = prelude[0][0]
        else:
            late = np.concatenate([pre[0] for pre in prelude]) if n else np.zeros(0, dtype=bool)
        # The first stage has no copies to drop: one array for the call, not one per partition joined.
        duplicate = np.concatenate([pre[1] for pre in prelude]) if self.stage and n else np.zeros(n, dtype=bool)
        wm_of_part = np.array([pre[2] for pre in prelude], dtype=np.int64)
        live = np.flatnonzero(~late & ~duplicate)
        replayed = duplicate.copy()
        block = np.full((len(self.names), n), np.nan)  # one call for every feature's NaN where not computed
        features = dict(zip(self.names, block))
        per_view = []
        for view in self.views:
            group, uniq = _factorize(events.entity_keys(view)[live] if len(live) else np.zeros(0, dtype=object))
            entity_part = np.full(len(uniq), -1, dtype=np.int64)
            entity_part[group] = part_of[live]
            if len(parts) > 1 and not (entity_part[group] == part_of[live]).all():
                return self._one_after_another(table, parts, n_sources)  # with writes: each batch reads the last
            prefix = f"{view.name}/"  # keys as `table_key` writes them
            # Every entity's stored rows, read from the blobs together (no per-entity decoding).
            applied, stored = st.decode_many(list(map(table.get, [prefix + k for k in uniq.tolist()])),
                                             self.layouts[view.name])
            done = events.seq[live] <= applied[group] if len(live) else np.zeros(0, dtype=bool)
            replayed[live[done]] = True
            per_view.append((view, uniq, group, stored, applied, entity_part))
        codes = {c: self._codes(events.fields[c]) for c in self._distinct}  # once per call, for every view
        for view, uniq, group, stored, applied, entity_part in per_view:
            fresh = ~replayed[live]
            # Events already folded into an entity's state must not be counted twice.
            new_events = events.seq[live] > applied[group] if len(live) else np.zeros(0, dtype=bool)
            self._view_batch(view, events, live, group, stored, fresh, new_events, features, codes)
            if not store:
                continue
            entity_wm = wm_of_part[entity_part]  # every entity here has events, so a partition
            new = self._new_states(view, events, live, uniq, group, new_events, entity_wm, stored, codes)
            for key, blob, g in new:
                writes_of[int(entity_part[g])][key] = blob
        results = []
        names, lateness_ms, lo = self.names, self.lateness_ms, 0
        for (partition, ev, _), (_, _, _, stream_time, running), writes in zip(parts, prelude, writes_of):
            hi = lo + len(ev)
            if hi > lo and store:
                self._stream_time_writes(table, partition, int(ev.seq[-1]) + 1, stream_time, writes)
            part_block = block[:, lo:hi]
            results.append(
                StageResult(
                    late=late[lo:hi],
                    watermark=running[1:] - lateness_ms,
                    replayed=replayed[lo:hi],
                    features=dict(zip(names, part_block)),  # its rows: views, as `features` are of `block`
                    writes=writes,
                    block=part_block,
                )
            )
            lo = hi
        return results

    def _prelude(self, table, partition, events, sources, n_sources, writes):
        """(late, duplicate, watermark, stream time after, running stream time) of one partition's batch."""
        n = len(events)
        st_before_batch = self.stream_time_before(table, partition, int(events.seq[0])) if n else 0
        running = np.maximum.accumulate(np.concatenate([[st_before_batch], events.ts]))
        duplicate = np.zeros(n, dtype=bool)
        if self.stage == 0:
            late = events.ts < running[:-1] - self.lateness_ms
            watermark = int(running[-1]) - self.lateness_ms
        else:
            late = np.zeros(n, dtype=bool)
            if sources is None:
                sources = np.zeros((0, 3), dtype=np.int64)
            duplicate, watermark = self._merge_sources(table, partition, sources, n_sources, writes)
        return late, duplicate, watermark, int(running[-1]), running

    def _one_after_another(self, table, parts, n_sources) -> list[StageResult]:
        overlay = Overlay(table)  # each batch reads the state the ones before it left, never stored here
        results = []
        for part in parts:
            result = self.process_many(overlay, [part], n_sources)[0]
            overlay.stage(result.writes)
            results.append(result)
        return results

    @staticmethod
    def sources_seen(table: Mapping[str, bytes], partition: int) -> dict[int, int]:
        """For a later stage's partition: the highest first-stage offset folded in, per first-stage partition."""
        blob = table.get(WATERMARKS_KEY.format(partition=partition))
        rows = np.frombuffer(blob, dtype=np.int64).reshape(-1, 3).tolist() if blob else []
        return {q: off for q, _, off in rows}

    def _merge_sources(self, table, partition, sources: np.ndarray, n_sources: int, writes) -> tuple[np.ndarray, int]:
        """(duplicate mask, lowest watermark over all first-stage partitions or NEVER)."""
        key = WATERMARKS_KEY.format(partition=partition)
        blob = table.get(key)
        rows = np.frombuffer(blob, dtype=np.int64).reshape(-1, 3).tolist() if blob else []
        known = {q: [wm, off] for q, wm, off in rows}
        duplicate = np.zeros(len(sources), dtype=bool)
        for i, (q, offset, wm) in enumerate(sources.tolist()):
            seen = known.setdefault(q, [NEVER, -1])
            if offset <= seen[1]:
                duplicate[i] = True
                continue
            seen[1] = offset
            seen[0] = max(seen[0], wm)
        if len(sources):
            writes[key] = np.array([[q, wm, off] for q, (wm, off) in sorted(known.items())], dtype=np.int64).tobytes()
        if n_sources and len(known) >= n_sources:
            return duplicate, min(wm for wm, _ in known.values())
        return duplicate, NEVER

    def _codes(self, values: np.ndarray) -> np.ndarray:
        """`value_codes(values)`, hashing only the texts not seen lately."""
        memo = self._code_memo
        text = [v if isinstance(v, str) else repr(v) for v in values]  # as value_codes: numpy scalars too
        if len(memo) > self.cache_entries:
            memo.clear()
        unseen = [t for t in dict.fromkeys(text) if t not in memo]
        if unseen:
            memo.update(zip(unseen, value_codes(unseen).tolist()))
        return np.fromiter((memo[t] for t in text), dtype=np.int64, count=len(text))

    def _view_batch(self, view, events, live, group, stored, fresh, new_events, features, codes) -> None:
        """Features for the fresh events of this batch; `stored`: every entity's stored rows, per layout."""
        q_idx = np.flatnonzero(fresh)
        asked = live[q_idx]
        queries = Queries(group[q_idx], events.ts[asked], events.seq[asked])
        add = np.flatnonzero(new_events)
        added = live[add]
        for lay_i, lay in enumerate(self.layouts[view.name]):
            aggs = tuple(a for a in view.aggs if a.layout == lay.tile_ms)
            rows, row_group = stored[lay_i]
            batch_items = Items.from_events(
                group[add],
                events.ts[added],
                events.seq[added],
                {c: events.numeric(c)[added] for c in lay.numeric},
                {c: codes[c][added] for c in lay.distinct},
            )
            items = Items.concat([st.block_items(lay, rows, row_group), batch_items]).sorted()
            values = aggregate(aggs, items, queries)
            for agg in aggs:
                features[f"{view.name}__{agg.name}"][asked] = values[agg.name]

    def _new_states(self, view, events, live, uniq, group, new_events, entity_wm, stored, codes) -> list:
        """(table key, new blob, entity) for every entity that received events in this batch.

        `entity_wm` is each entity's watermark (its partition's); `stored`,
        every entity's stored rows per layout (`st.decode_many`). The blobs are
        `st.encode`'s, written for all entities at once (`st.encode_many`).
        """
        add = live[new_events]
        add_group = group[new_events]
        touched = np.bincount(add_group, minlength=len(uniq)).nonzero()[0]  # np.unique's, for codes below len(uniq)
        if not len(touched):
            return []
        everyone = len(touched) == len(uniq)  # the usual case: then slots are the groups themselves
        ts = events.ts[add]
        slot = np.full(len(uniq), -1, dtype=np.int64)
        slot[touched] = np.arange(len(touched))
        layouts = self.layouts[view.name]
        kept_of = []  # per layout: (rows kept, in entity order; rows per entity)
        for lay_i, lay in enumerate(layouts):
            values = {c: events.numeric(c)[add] for c in lay.numeric}
            rows, row_group = stored[lay_i]
            if not everyone:  # the touched entities' rows, their order kept, numbered by slot
                mine = slot[row_group] >= 0
                rows, row_group = rows[mine], slot[row_group[mine]]
            if lay.tile_ms:
                all_rows, all_group = st.fold_tiles(lay, rows, row_group, ts, values, slot[add_group])
            else:
                fresh_rows = st.raw_rows(lay, ts, values, {c: codes[c][add] for c in lay.distinct})
                all_rows = np.concatenate([rows, fresh_rows])
                all_group = np.concatenate([row_group, slot[add_group]])
                # Stored rows precede new ones, and a stable sort keeps arrival
                # order among equal timestamps: the order sums accumulate in.
                order = np.lexsort((st._i64(all_rows[:, 0]), all_group))
                all_rows, all_group = all_rows[order], all_group[order]
            alive = st._i64(all_rows[:, 0]) >= st.horizon(lay, entity_wm[touched])[all_group]  # per entity, then per row
            bounds = all_group[alive].searchsorted(np.arange(len(touched) + 1))
            kept_of.append((all_rows[alive], bounds[1:] - bounds[:-1]))
        max_seq = np.full(len(uniq), -1, dtype=np.int64)
        np.maximum.at(max_seq, add_group, events.seq[add])
        joined, at = st.encode_many(max_seq[touched], kept_of)
        prefix = f"{view.name}/"  # keys as `table_key` writes them
        return [(prefix + entity, joined[at[j] : at[j + 1]], g)
                for j, (g, entity) in enumerate(zip(touched.tolist(), uniq[touched].tolist()))]

    def _stream_time_writes(self, table, partition: int, next_seq: int, stream_time: int, writes: dict) -> None:
        append_history(table, STREAM_TIME_KEY.format(partition=partition), next_seq, stream_time, writes)


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each key, the distinct keys in order of first appearance), as `pd.factorize` (its fixed cost is
    most of the work on a micro-batch's few keys)."""
    index: dict = {}
    group = np.fromiter((index.setdefault(k, len(index)) for k in keys.tolist()), dtype=np.int64, count=len(keys))
    uniq = np.empty(len(index), dtype=object)
    uniq[:] = list(index)
    return group, uniq


def values_after_latest(view: StreamView, blobs: list[bytes]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each entity's window values just after its latest event, from stored blobs.

    This is what the online store holds for a stream view: for every entity,
    the aggregates over everything it has seen, evaluated 1 ms after its
    newest event. Returns (that time in ms, values per aggregation name).
    """
    layouts = st.layouts_of(view)
    states = [st.decode(b, layouts) for b in blobs]
    at = _latest(layouts, states) + 1
    queries = Queries(np.arange(len(states), dtype=np.int64), at, np.zeros(len(states), dtype=np.int64))
    values: dict[str, np.ndarray] = {}
    for lay_i, lay in enumerate(layouts):
        blocks = [s.blocks[lay_i] for s in states]
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        rows = np.concatenate(blocks) if int(sizes.sum()) else np.zeros((0, lay.width))
        group = np.repeat(np.arange(len(blocks), dtype=np.int64), sizes)
        items = st.block_items(lay, rows, group).sorted()
        values.update(aggregate(tuple(a for a in view.aggs if a.layout == lay.tile_ms), items, queries))
    return at, values


def latest_event_ms(view: StreamView, blob: bytes | None) -> int | None:
    """The time of the newest event an entity's stored state holds (a tile's last millisecond), or None if empty."""
    return latest_events_ms(view, [blob])[0]


def latest_events_ms(view: StreamView, blobs: list[bytes | None]) -> list[int | None]:
    """`latest_event_ms` of several entities' states of one view, the layouts derived once."""
    layouts = st.layouts_of(view)
    latest = _latest(layouts, [st.decode(blob, layouts) for blob in blobs])
    empty = np.iinfo(np.int64).min
    return [None if not blob or t == empty else int(t) for blob, t in zip(blobs, latest)]


def _latest(layouts, states: list[st.EntityState]) -> np.ndarray:
    latest = np.full(len(states), np.iinfo(np.int64).min, dtype=np.int64)
    for lay_i, lay in enumerate(layouts):
        for g, s in enumerate(states):
            block = s.blocks[lay_i]
            if len(block):
                newest = int(st._i64(block[:, 0]).max())
                if lay.tile_ms:
                    # A tile row holds its start: value it once its slide is complete.
                    newest += lay.tile_ms - 1
                latest[g] = max(latest[g], newest)
    return latest
