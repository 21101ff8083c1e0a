"""Each synchronous answer ends as one outcome: equal, differs or unseen."""

from __future__ import annotations

from stream.serving.consistency import Consistency


def _log(score, **features):
    return {"features": features, "score": score, "model_version": "v1"}


def test_equal_differs_and_unseen():
    c = Consistency(wait_s=10.0, max_held=2)
    c.hold("a", _log(0.5, x=1.0, y=None), now=0.0)
    c.hold("b", _log(0.5, x=1.0), now=1.0)
    assert c.seen("a", _log(0.5, x=1.0, y=None)) == "equal"
    assert c.seen("a", _log(0.5, x=1.0, y=None)) is None  # already ended
    assert c.seen("b", _log(0.5, x=2.0)) == "differs"
    c.hold("c", _log(0.1, x=1.0), now=2.0)
    assert c.seen("c", {**_log(0.1, x=1.0), "model_version": "v2"}) == "differs"  # a switch in between
    c.hold("d", _log(0.1), now=3.0)
    assert c.expire(now=12.0) == []
    assert c.expire(now=13.0) == ["d"]  # not scored here within wait_s
    for event_id in ("e", "f"):
        assert c.hold(event_id, _log(0.1), now=20.0) == []
    assert c.hold("g", _log(0.1), now=20.0) == ["e"]  # the oldest beyond max_held
