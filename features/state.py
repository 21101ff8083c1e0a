"""Per-entity window state: what the worker keeps between micro-batches.

One blob per (view, entity), stored in a Faust table (changelog-backed). It
holds `applied_seq` (the arrival position of the last event folded in, used
to make replays after a crash idempotent) and, per storage layout, either the
raw events of the longest exact window or the tiles of a hopping window.

Memory per entity is bounded by the declarations: raw events only within the
longest exact window (plus allowed lateness), at most window/slide tiles for
hopping windows; everything older is dropped on every update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.spec import StreamView
from features.windows import NO_CODE, Items


@dataclass(frozen=True)
class Layout:
    """How one storage layout of a view is encoded.

    Raw layout (tile_ms == 0): ts, then one value per numeric column, then one
    code per distinct column. Tile layout: ts (tile start), count, then sum,
    m2, min, max per numeric column. All cells are 8 bytes.
    """

    tile_ms: int
    retention_ms: int
    numeric: tuple[str, ...]
    distinct: tuple[str, ...]

    @property
    def width(self) -> int:
        if self.tile_ms:
            return 2 + 4 * len(self.numeric)
        return 1 + len(self.numeric) + len(self.distinct)


def layouts_of(view: StreamView) -> tuple[Layout, ...]:
    out = []
    for tile_ms in view.layouts:
        aggs = [a for a in view.aggs if a.layout == tile_ms]
        numeric = tuple(dict.fromkeys(a.column for a in aggs if a.function not in ("count", "count_distinct")))
        distinct = tuple(dict.fromkeys(a.column for a in aggs if a.function == "count_distinct"))
        out.append(Layout(tile_ms, max(a.window_ms for a in aggs), numeric, distinct))
    return tuple(out)


@dataclass
class EntityState:
    applied_seq: int
    blocks: list[np.ndarray]  # per layout: float64 matrix (n, width); ts/codes stored as int64 bits


def decode(blob: bytes | None, layouts: tuple[Layout, ...]) -> EntityState:
    if not blob:
        return EntityState(-1, [np.zeros((0, lay.width)) for lay in layouts])
    head = np.frombuffer(blob, dtype=np.int64, count=1 + len(layouts))
    body = np.frombuffer(blob, dtype=np.float64, offset=8 * (1 + len(layouts)))
    blocks, pos = [], 0
    for lay, n in zip(layouts, head[1:]):
        size = int(n) * lay.width
        blocks.append(body[pos : pos + size].reshape(int(n), lay.width))
        pos += size
    return EntityState(int(head[0]), blocks)


def encode(state: EntityState) -> bytes:
    head = np.array([state.applied_seq] + [len(b) for b in state.blocks], dtype=np.int64)
    return head.tobytes() + b"".join(np.ascontiguousarray(b, dtype=np.float64).tobytes() for b in state.blocks)


def decode_many(blobs: list[bytes | None], layouts: tuple[Layout, ...]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """What `decode` gives each blob, for many entities at once, stacked.

    Returns (applied_seq per entity, per layout (every entity's rows in
    entity order, each row's entity index)). The blobs are joined and read
    with a fixed number of array calls, however many entities there are.
    A blob whose length disagrees with its head is read by `decode`, one
    blob after another, which says what is wrong with it.
    """
    n = len(blobs)
    if not n:
        return np.zeros(0, dtype=np.int64), [(np.zeros((0, lay.width)), np.zeros(0, dtype=np.int64)) for lay in layouts]
    head_cells = 1 + len(layouts)
    empty = np.array([-1] + [0] * len(layouts), dtype=np.int64).tobytes()
    blobs = [b or empty for b in blobs]
    sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    joined = b"".join(blobs)
    widths = np.array([lay.width for lay in layouts], dtype=np.int64)
    if (sizes % 8).any() or (sizes < 8 * head_cells).any():
        return _decode_one_by_one(blobs, layouts)
    cells = sizes // 8
    starts = cells.cumsum() - cells  # array methods: numpy's same-named functions add a Python wrapper per call
    ints = np.frombuffer(joined, dtype=np.int64)
    values = np.frombuffer(joined, dtype=np.float64)
    if len(layouts) == 1:  # the usual view: its rows are every cell but the heads' two
        counts = ints[starts + 1]
        if (counts < 0).any() or (2 + counts * int(widths[0]) != cells).any():
            return _decode_one_by_one(blobs, layouts)
        body = np.ones(len(values), dtype=bool)
        body[starts] = False
        body[starts + 1] = False
        rows = values[body].reshape(-1, layouts[0].width)
        return ints[starts], [(rows, np.arange(n, dtype=np.int64).repeat(counts))]
    heads = ints[starts[:, None] + np.arange(head_cells)]
    counts = heads[:, 1:]
    if (counts < 0).any() or not np.array_equal(head_cells + counts @ widths, cells):
        return _decode_one_by_one(blobs, layouts)
    stacked, at = [], starts + head_cells
    for lay_i, lay in enumerate(layouts):
        lengths = counts[:, lay_i] * lay.width
        rows = values[_ranges(at, lengths)].reshape(-1, lay.width)
        stacked.append((rows, np.arange(n, dtype=np.int64).repeat(counts[:, lay_i])))
        at = at + lengths
    return heads[:, 0].copy(), stacked


def _decode_one_by_one(blobs, layouts):
    states = [decode(b, layouts) for b in blobs]
    stacked = []
    for lay_i, lay in enumerate(layouts):
        blocks = [s.blocks[lay_i] for s in states]
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        rows = np.concatenate(blocks) if int(sizes.sum()) else np.zeros((0, lay.width))
        stacked.append((rows, np.repeat(np.arange(len(blocks), dtype=np.int64), sizes)))
    return np.array([s.applied_seq for s in states], dtype=np.int64), stacked


def encode_many(applied: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[bytes, list[int]]:
    """`encode` of many entities at once: their blobs joined, and the n + 1 byte offsets that cut them apart.

    `blocks`: per layout, (every entity's rows in entity order, rows per
    entity). Blob j is `joined[offsets[j]:offsets[j + 1]]`, byte for byte
    what `encode` writes for entity j.
    """
    n, parts = len(applied), len(blocks)
    heads = np.empty((n, 1 + parts), dtype=np.int64)
    heads[:, 0] = applied
    starts = np.empty((n, 1 + parts), dtype=np.int64)
    lengths = np.empty((n, 1 + parts), dtype=np.int64)
    starts[:, 0] = np.arange(n, dtype=np.int64) * (1 + parts)
    lengths[:, 0] = 1 + parts
    sources, base = [heads.reshape(-1)], n * (1 + parts)
    for lay_i, (rows, counts) in enumerate(blocks):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        width = rows.shape[1]
        heads[:, 1 + lay_i] = counts
        starts[:, 1 + lay_i] = base + (counts.cumsum() - counts) * width
        lengths[:, 1 + lay_i] = counts * width
        sources.append(rows.view(np.int64).reshape(-1))
        base += rows.size
    cells = np.concatenate(sources)[_ranges(starts.reshape(-1), lengths.reshape(-1))]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=1) * 8, out=offsets[1:])
    return cells.tobytes(), offsets.tolist()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indexes start, start + 1, ..., start + length - 1 of every (start, length), one after another."""
    total = int(lengths.sum())
    return (starts - (lengths.cumsum() - lengths)).repeat(lengths) + np.arange(total, dtype=np.int64)


def _i64(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.int64)


def _f64(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column, dtype=np.int64).view(np.float64)


def block_items(lay: Layout, block: np.ndarray, group: np.ndarray, seq: int = -1) -> Items:
    """Stored rows as kernel items; they arrived before anything queried now."""
    n = len(block)
    ts = _i64(block[:, 0])
    seqs = np.empty(n, dtype=np.int64)
    seqs.fill(seq)
    if lay.tile_ms:
        k = len(lay.numeric)
        return Items(
            group=group,
            ts=ts,
            seq=seqs,
            cnt=block[:, 1].copy(),
            sums={c: block[:, 2 + i].copy() for i, c in enumerate(lay.numeric)},
            m2s={c: block[:, 2 + k + i].copy() for i, c in enumerate(lay.numeric)},
            mins={c: block[:, 2 + 2 * k + i].copy() for i, c in enumerate(lay.numeric)},
            maxs={c: block[:, 2 + 3 * k + i].copy() for i, c in enumerate(lay.numeric)},
            codes={},
        )
    values = {c: block[:, 1 + i].copy() for i, c in enumerate(lay.numeric)}
    codes = {c: _i64(block[:, 1 + len(lay.numeric) + i]) for i, c in enumerate(lay.distinct)}
    return Items.from_events(group, ts, seqs, values, codes)


def raw_rows(lay: Layout, ts: np.ndarray, values: dict[str, np.ndarray], codes: dict[str, np.ndarray]) -> np.ndarray:
    cols = [_f64(ts)] + [values[c] for c in lay.numeric] + [_f64(codes[c]) for c in lay.distinct]
    return np.column_stack(cols) if cols else np.zeros((len(ts), 0))


def fold_tiles(
    lay: Layout,
    rows: np.ndarray,
    row_group: np.ndarray,
    ts: np.ndarray,
    values: dict[str, np.ndarray],
    group: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge new events into the stored tiles of many entities at once.

    Returns tile rows sorted by (group, tile start) with their groups. Stats
    combine exactly and in any order: counts, sums, min and max add up, and
    m2 follows Chan's formula, sum(m2_i) + sum(n_i (mean_i - mean)^2), so a
    tile's std/var stays accurate however many events it absorbs.
    """
    k = len(lay.numeric)
    n_new = len(ts)
    starts = (ts // lay.tile_ms) * lay.tile_ms
    fresh = np.empty((n_new, lay.width))
    fresh[:, 0] = _f64(starts)
    fresh[:, 1] = 1.0
    for i, c in enumerate(lay.numeric):
        v = values[c]
        fresh[:, 2 + i] = v
        fresh[:, 2 + k + i] = 0.0
        fresh[:, 2 + 2 * k + i] = v
        fresh[:, 2 + 3 * k + i] = v
    items = np.concatenate([rows, fresh]) if len(rows) else fresh
    groups = np.concatenate([row_group, group]) if len(rows) else group
    tile = _i64(items[:, 0])
    order = np.lexsort((tile, groups))
    items, groups, tile = items[order], groups[order], tile[order]
    first = np.ones(len(items), dtype=bool)
    first[1:] = (groups[1:] != groups[:-1]) | (tile[1:] != tile[:-1])
    starts_idx = first.nonzero()[0]
    seg = first.cumsum() - 1
    out = np.empty((len(starts_idx), lay.width))
    out[:, 0] = items[starts_idx, 0]
    cnt = np.add.reduceat(items[:, 1], starts_idx)
    out[:, 1] = cnt
    for i in range(k):
        sums = np.add.reduceat(items[:, 2 + i], starts_idx)
        mean = sums / cnt
        item_mean = items[:, 2 + i] / items[:, 1]
        dev = item_mean - mean[seg]
        out[:, 2 + i] = sums
        out[:, 2 + k + i] = np.add.reduceat(items[:, 2 + k + i] + items[:, 1] * dev * dev, starts_idx)
        out[:, 2 + 2 * k + i] = np.minimum.reduceat(items[:, 2 + 2 * k + i], starts_idx)
        out[:, 2 + 3 * k + i] = np.maximum.reduceat(items[:, 2 + 3 * k + i], starts_idx)
    return out, groups[starts_idx]


def horizon(lay: Layout, watermark_ms: int) -> int:
    """Oldest row time any window of an event at or after the watermark can reach."""
    if lay.tile_ms:
        return (watermark_ms // lay.tile_ms) * lay.tile_ms - lay.retention_ms
    return watermark_ms - lay.retention_ms


__all__ = ["NO_CODE", "EntityState", "Layout", "block_items", "decode", "decode_many", "encode", "encode_many", "fold_tiles", "horizon", "layouts_of", "raw_rows"]
