"""The batch-feature cache reads the online store directly; it must agree with Feast's own API."""

from __future__ import annotations

import math

import numpy as np

from features.feast_repo import load_plan, open_store
from stream.feast.online_read import BatchFeatureCache


def test_cache_agrees_with_get_online_features(trained_repo):
    store = open_store(trained_repo["path"])
    plan = load_plan(store)
    (view,) = plan.batch_views
    cards = list(trained_repo["world"].cards["card_id"][:40])
    keys = [(c,) for c in cards] + [("card-not-there",)] + [(cards[3],)]

    rows = BatchFeatureCache(store, plan.batch_views).lookup(view, keys)

    refs = [f"{view.name}:{f}" for f in view.features]
    theirs = store.get_online_features(features=refs, entity_rows=[{"card_id": k[0]} for k in keys]).to_dict()
    expected = np.array(
        [[math.nan if v is None else float(v) for v in theirs[f]] for f in view.features], dtype=np.float64
    ).T
    assert rows.shape == (len(keys), len(view.features))
    # Every known card has all its features; the unknown one has none.
    assert not np.isnan(rows[:-2]).any()
    assert np.isnan(rows[-2]).all()
    np.testing.assert_array_equal(rows, expected)


def test_an_events_batch_features_are_its_entitys_row_in_the_store(trained_repo):
    from stream.pipeline.vectors import BatchFeatures

    store = open_store(trained_repo["path"])
    plan = load_plan(store)
    (view,) = plan.batch_views
    (key,) = view.join_keys
    cards = list(trained_repo["world"].cards["card_id"][:8])
    records = [{key: c, "amount": 1.0} for c in reversed(cards)]
    rows = [3, 0, 7, 7, 5]  # some events of the batch, one twice, out of order

    blocks, problem = BatchFeatures(BatchFeatureCache(store, plan.batch_views)).lookup(plan, records, rows)

    refs = [f"{view.name}:{f}" for f in view.features]
    theirs = store.get_online_features(features=refs, entity_rows=[{key: records[i][key]} for i in rows]).to_dict()
    expected = np.array([[float(v) for v in theirs[f]] for f in view.features], dtype=np.float64).T
    assert problem is None
    np.testing.assert_array_equal(blocks[view.name], expected)
