"""The read-your-own-writes overlay over a plain dict: reads, deletions, commit and discard by owner."""

from __future__ import annotations

import pytest

from features.overlay import Overlay


def test_a_staged_write_hides_the_base_value_until_the_base_has_it():
    base = {"a": b"old", "b": b"kept"}
    view = Overlay(base)
    view.stage({"a": b"new"}, owner=1)
    assert view.get("a") == b"new" and view["a"] == b"new"
    assert view.get("b") == b"kept" and base["a"] == b"old"  # the base is the caller's to write
    base["a"] = b"new"
    view.committed(["a"], upto=1)
    assert view.pending == {} and view.get("a") == b"new"


def test_a_later_write_still_shadows_the_base_after_an_earlier_one_commits():
    base: dict[str, bytes] = {}
    view = Overlay(base)
    view.stage({"a": b"1", "b": b"1"}, owner=1)
    view.stage({"a": b"2"}, owner=2)  # computed while chunk 1's write was on its way
    base.update({"a": b"1", "b": b"1"})
    view.committed(["a", "b"], upto=1)
    assert view.get("a") == b"2" and view.pending == {"a": (b"2", 2)}
    base["a"] = b"2"
    view.committed(["a"], upto=2)
    assert view.pending == {}


def test_a_staged_deletion_reads_as_absent_whatever_the_base_holds():
    view = Overlay({"gone": b"stored", "here": b"stored"})
    view.put("gone", None)
    assert view.get("gone") is None and view.get("gone", b"default") == b"default"
    assert "gone" not in view and "here" in view
    with pytest.raises(KeyError):
        view["gone"]
    assert sorted(view) == ["here"] and len(view) == 1
    view.put("new", b"v")
    assert sorted(view) == ["here", "new"] and view.staged() == {"gone": None, "new": b"v"}


def test_discarding_one_owners_writes_keeps_another_owners():
    base = {"a": b"stored", "x": b"stored"}
    view = Overlay(base)
    view.stage({"x": b"other partition"}, owner=7)
    view.stage({"a": b"0"}, owner=8)
    view.stage({"a": b"1", "b": b"1"}, owner=9)
    view.discard({8, 9})
    assert view.pending == {"x": (b"other partition", 7)}
    assert view.get("a") == b"stored" and view.get("b") is None and view.get("x") == b"other partition"


def test_discard_limited_to_the_keys_given_leaves_the_rest():
    view = Overlay({})
    view.stage({"a": b"1", "b": b"1"}, owner=3)
    view.discard({3}, keys=["a", "not staged"])
    assert view.pending == {"b": (b"1", 3)}


def test_an_overlay_reads_through_another_overlay():
    inner = Overlay({"a": b"stored"})
    inner.stage({"a": b"pending"}, owner=1)
    outer = Overlay(inner)
    assert outer.get("a") == b"pending"
    outer.put("a", b"this batch")
    assert outer.get("a") == b"this batch" and inner.get("a") == b"pending"
