"""Many entities' blobs read and written at once must be, byte for byte, what `decode` and `encode` give one by one."""

from __future__ import annotations

import numpy as np
import pytest

from features import state as st

RAW = st.Layout(tile_ms=0, retention_ms=3_600_000, numeric=("amount",), distinct=("country",))
TILES = st.Layout(tile_ms=60_000, retention_ms=600_000, numeric=("amount", "fee"), distinct=())


def _states(layouts, counts, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for applied, rows in counts:
        blocks = []
        for lay, n in zip(layouts, rows):
            block = rng.normal(size=(n, lay.width))
            block[:, 0] = st._f64(rng.integers(0, 10**12, size=n))
            if n:
                block[0, -1] = np.nan
            blocks.append(block)
        out.append(st.EntityState(applied, blocks))
    return out


@pytest.mark.parametrize("layouts", [(RAW,), (RAW, TILES), (TILES, RAW)])
def test_encode_many_writes_each_entitys_blob_as_encode(layouts):
    counts = [(7, [2] * len(layouts)), (-1, [0] * len(layouts)), (12, [0, 3][: len(layouts)]), (3, [5, 0][: len(layouts)])]
    states = _states(layouts, counts)
    blocks = [(np.concatenate([s.blocks[i] for s in states]), np.array([len(s.blocks[i]) for s in states]))
              for i in range(len(layouts))]
    joined, at = st.encode_many(np.array([s.applied_seq for s in states]), blocks)
    assert [joined[at[j] : at[j + 1]] for j in range(len(states))] == [st.encode(s) for s in states]


@pytest.mark.parametrize("layouts", [(RAW,), (RAW, TILES)])
def test_decode_many_reads_what_decode_reads_one_by_one(layouts):
    counts = [(7, [2] * len(layouts)), (-1, [0] * len(layouts)), (12, [1, 3][: len(layouts)]), (3, [4, 0][: len(layouts)])]
    blobs = [st.encode(s) for s in _states(layouts, counts)] + [None, b""]
    applied, stacked = st.decode_many(blobs, layouts)
    alone = [st.decode(b, layouts) for b in blobs]
    assert applied.tolist() == [s.applied_seq for s in alone]
    for i, (rows, group) in enumerate(stacked):
        want = np.concatenate([s.blocks[i] for s in alone])
        assert rows.tobytes() == want.tobytes()
        assert group.tolist() == [g for g, s in enumerate(alone) for _ in range(len(s.blocks[i]))]


def test_decode_many_of_no_entity_and_of_a_blob_that_disagrees_with_its_head():
    applied, stacked = st.decode_many([], (RAW,))
    assert len(applied) == 0 and stacked[0][0].shape == (0, RAW.width)
    good = st.encode(_states((RAW,), [(4, [3])])[0])
    short = good[:-8]  # its head says 3 rows, its body holds less: decode says so, for it alone
    with pytest.raises(ValueError):
        st.decode(short, (RAW,))
    with pytest.raises(ValueError):
        st.decode_many([good, short], (RAW,))
