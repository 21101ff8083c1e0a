"""The label join under exploration: a blocked event is censored, an explored one is labeled like any other."""

from __future__ import annotations

import numpy as np

from stream.lifecycle import label_state as ls
from tests.stream.lifecycle.test_label_join import DAY, T0, Harness, ids_in, kinds


def test_a_block_not_let_through_gets_no_default_label_and_an_explored_one_does():
    h = Harness(default_label=0.0)
    blocked, explored, approved, old = ids_in(0, 4)
    h.run([
        h.pred(blocked, T0, score=0.9, decision=True, explored=False, propensity=0.05, would_block=True),
        h.pred(explored, T0, score=0.9, decision=False, explored=True, propensity=0.05, would_block=True),
        h.pred(approved, T0, score=0.1, decision=False, explored=False, propensity=1.0, would_block=False),
        h.pred(old, T0, score=0.9),  # written by a deployment that did not explore: the window's default, as always
    ])
    h.run(h.tick(T0 + 7 * DAY + 2 * 3_600_000))
    assert kinds(h.records) == ["unlabeled"] * 4
    by_id = {r["tid"]: r for r in h.records}
    assert by_id[blocked]["label"] is None and by_id[blocked]["label_source"] is None
    assert by_id[explored]["label"] == 0 and by_id[approved]["label"] == 0 and by_id[old]["label"] == 0
    assert (by_id[blocked]["would_block"], by_id[blocked]["explored"], by_id[blocked]["propensity"]) == (True, False, 0.05)
    assert (by_id[explored]["would_block"], by_id[explored]["explored"], by_id[explored]["propensity"]) == (True, True, 0.05)
    assert "propensity" not in by_id[old]
    # A label that comes for the blocked event anyway (a review) is still joined, and carries its exploration.
    h.run([h.lab(blocked, 1, T0 + 8 * DAY)])
    assert h.records[-1]["kind"] == "joined" and h.records[-1]["propensity"] == 0.05


def test_state_entries_keep_exploration_and_older_entries_decode_as_before():
    pred = ls.Prediction(T0, T0 + 40, 0.5, b"\x00" * 8, np.array([1.0, np.nan]), "v1", "champion", {"v1": 0.9}, None,
                         (True, True, 0.05))
    back = ls.decode(ls.encode(ls.Entry(has_pred=True, pred=pred))).pred
    assert back.exploration == (True, True, 0.05) and back.scores == {"v1": 0.9}
    older = ls.encode(ls.Entry(has_pred=True, pred=ls.Prediction(*[getattr(pred, f) for f in ls.Prediction.__slots__][:9])))
    assert ls.decode(older).pred.exploration is None
