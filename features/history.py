"""A partition's histories in its table: what was true just before each recent batch, and the order state writes take.

A stage remembers, per partition, a value as it stood before each batch
(the stream time, the arrival clock): every row (batch start, value before
it) is a fact about the partition's immutable log, so a replay that resumes
at any recently committed offset finds the value the first run saw there.
The head of a history is rewritten with every batch; full heads are sealed
into segments written once. Partition-level keys begin with a control
character, which no validated entity key contains.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

#: Table key holding the head of a partition's stream-time history (cannot
#: clash with an entity key: validated key values contain no control
#: characters). Sealed segments of the history live under
#: STREAM_TIME_KEY + "/{slot}".
STREAM_TIME_KEY = "\x00stream_time/{partition}"
#: Table key holding, for a later stage's partition, the latest watermark
#: seen from each first-stage partition.
WATERMARKS_KEY = "\x00watermarks/{partition}"
#: Table key holding the head of a first-stage partition's arrival-clock
#: history (features/arrival.py), kept as the stream-time history is.
CLOCK_KEY = "\x00clock/{partition}"
NEVER = np.iinfo(np.int64).min // 4
#: Batch-start positions remembered per partition, so a replay that resumes
#: at any recently committed offset recovers the exact stream time there:
#: a head of up to STREAM_TIME_SEGMENT rows, rewritten with every batch, and
#: STREAM_TIME_SEGMENTS sealed segments, each written once (4,096 rows in
#: all, as 64 KiB; a batch writes at most two small blobs instead of all).
STREAM_TIME_SEGMENT = 64
STREAM_TIME_SEGMENTS = 64
#: A row of a history blob, (batch start, value), as `history_blob` writes it (native int64s).
_LAST = struct.Struct("=qq")
_ROW = _LAST.size


def history_before(table: Mapping[str, bytes], key: str, first_seq: int) -> int:
    """A partition history's value just before offset `first_seq`, as the first run saw it; NEVER if unknown.

    Every row (batch start, value before it) is a fact about the
    partition's immutable log, so the row for this exact position is right
    whichever run wrote it. The next batch in order finds its row at the end
    of the head; a replay from further back searches the sealed segments too.
    """
    blob = table.get(key)
    if blob and len(blob) >= 2 * _ROW:
        last_seq, last_value = _LAST.unpack_from(blob, len(blob) - _ROW)
        if last_seq == first_seq:  # the next batch in order (head rows strictly increase: see append_history)
            return last_value
    sealed, rows = history_rows(blob)
    if not (len(rows) and rows[-1, 0] == first_seq):
        parts = [rows] + [
            history_rows(table.get(f"{key}/{k % STREAM_TIME_SEGMENTS}"))[1]
            for k in range(max(0, sealed - STREAM_TIME_SEGMENTS), sealed)
        ]
        rows = np.concatenate(parts)
    at_or_before = rows[rows[:, 0] <= first_seq]
    if len(at_or_before) == 0:
        return NEVER
    return int(at_or_before[np.argmax(at_or_before[:, 0]), 1])


def append_history(table: Mapping[str, bytes], key: str, next_seq: int, value: int, writes: dict) -> None:
    """Append (next batch start, value before it) to a partition history, into `writes`."""
    blob = table.get(key)
    if blob and 2 * _ROW <= len(blob) < (STREAM_TIME_SEGMENT + 1) * _ROW:
        last_seq, _ = _LAST.unpack_from(blob, len(blob) - _ROW)
        if last_seq < next_seq:  # in order, and the head has room: the row is appended to the blob as it is
            writes[key] = blob + _LAST.pack(next_seq, value)
            return
    sealed, head = history_rows(blob)
    head = head[head[:, 0] < next_seq]  # a replay rewrites what follows its start
    if len(head) >= STREAM_TIME_SEGMENT:
        writes[f"{key}/{sealed % STREAM_TIME_SEGMENTS}"] = history_blob(0, head)
        sealed, head = sealed + 1, head[:0]
    writes[key] = history_blob(sealed, np.vstack([head, [[next_seq, value]]]))


def write_order(writes: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """The order a state write must reach the changelog in: entity states first, partition markers last.

    A crash can leave any prefix of a write on the broker (and a broker that
    undercounts end offsets can make recovery read only a prefix). Entity
    states describe themselves (each records the last offset folded in), so
    any subset of them replays exactly. The partition markers (stream-time
    history, the later stages' highest offsets per first-stage partition)
    summarise the whole batch: one that arrived without the entity states it
    summarises would make the replay skip events that no state holds.
    """
    return sorted(writes.items(), key=lambda item: item[0].startswith("\x00"))


def last_start(blob: bytes | None) -> int:
    """The latest batch start a history's head holds, or -1 (its last row: head rows strictly increase)."""
    if not blob or len(blob) < 2 * _ROW:
        return -1
    return _LAST.unpack_from(blob, len(blob) - _ROW)[0]


def history_rows(blob: bytes | None) -> tuple[int, np.ndarray]:
    """(sealed segments so far, rows of (batch start, stream time before it)) of a history blob.

    The first row is a header, (-1, sealed segments): -1 is no offset.
    """
    if not blob:
        return 0, np.zeros((0, 2), dtype=np.int64)
    rows = np.frombuffer(blob, dtype=np.int64).reshape(-1, 2)
    return int(rows[0, 1]), rows[1:]


def history_blob(sealed: int, rows: np.ndarray) -> bytes:
    return np.array([-1, sealed], dtype=np.int64).tobytes() + np.ascontiguousarray(rows, dtype=np.int64).tobytes()
