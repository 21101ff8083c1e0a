"""The output step of every stage but the last: the events handed on to the next stage, keyed by its entity.

Each record is a `forwarded.ForwardedRow`: the event's original bytes,
spliced in, and what the next stage needs beside them. An event whose
record cannot be written, or would not fit the message limit, gets a dead
letter instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import orjson

from stream.pipeline.copies import Copies
from stream.pipeline.events import clip
from stream.pipeline.forwarded import Carried
from stream.pipeline.outcomes import RECORD_OVERHEAD, Output, oversize, tuple_new
from stream.pipeline.windowed import Windowed


class Forwarded(NamedTuple):
    rows: list[Output]  # records for the next stage's topic, in event order
    dead_letters: list[Output]


def forward(
    stage: int,
    topic: str,
    key_fields: tuple[str, ...],
    windowed: Windowed,
    records: list[dict],
    carried: Carried,
    event_ts: np.ndarray,
    watermark: np.ndarray,
    copies: Copies,
) -> Forwarded:
    """`stage` is the receiving one; `watermark`: the first stage's, per decoded event."""
    rows = windowed.features.tolist()
    stage_ms = windowed.stage_ms
    # The first stage hands on its own watermark; later stages pass theirs through.
    wm = (watermark if stage == 1 else carried.source_wm).tolist()
    t0, ts = carried.t0.tolist(), event_ts.tolist()
    raws, arrival, clock = carried.raw, carried.arrival, carried.clock.tolist()
    keep = windowed.keep.tolist()
    if len(key_fields) == 1:
        field = key_fields[0]
        keys = [str(records[i][field]).encode() for i in keep]
    else:
        keys = ["\x1f".join(str(records[i][k]) for k in key_fields).encode() for i in keep]
    limit = copies.max_message_bytes
    roomy = limit - RECORD_OVERHEAD
    dumps, fragment = orjson.dumps, orjson.Fragment
    out, dead = [], []
    # `forwarded.encode`, written out: one call fewer per event, the same bytes (a test compares them).
    for row, (i, key) in enumerate(zip(keep, keys)):
        raw = raws[i]
        try:
            payload = dumps([fragment(raw), rows[row], arrival[i], t0[i], wm[i], ts[i], stage_ms[row], clock[i], len(raw)])
        except TypeError as exc:  # orjson.JSONEncodeError
            reason = f"cannot write the forwarded record: {clip(str(exc), 200)}"
            dead.append(copies.event_dead_letter(carried, i, records[i], "unserializable", reason))
            continue
        if len(payload) + len(key) > roomy:
            too_large = oversize("forwarded record", key, payload, limit)
            if too_large is not None:
                dead.append(copies.event_dead_letter(carried, i, records[i], "too_large", too_large))
                continue
        out.append(tuple_new(Output, (topic, key, payload, None, None)))
    return Forwarded(out, dead)
