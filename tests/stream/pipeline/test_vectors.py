"""The model's input: stream and batch features put in the vector's order."""

from __future__ import annotations

import dataclasses

import numpy as np

from stream.pipeline.vectors import BatchFeatures, assemble


class _Store:
    """Distinct values per view, key and feature; no row for keys ending in 7 (a missing entity)."""

    def lookup(self, view, keys):
        rows = [[np.nan] * len(view.features) if k[0].endswith("7") else
                [hash((view.name, k, j)) % 1000 / 7 for j in range(len(view.features))] for k in keys]
        return np.array(rows, dtype=np.float64).reshape(len(keys), len(view.features))


def _one_column_at_a_time(plan, names, features, blocks) -> np.ndarray:
    """The vector built column by column from a dict of every column (a batch feature named like a stream
    feature replaces it)."""
    columns = dict(zip(names, features.T))
    for view in plan.batch_views:
        for j, feature in enumerate(view.features):
            columns[f"{view.name}__{feature}"] = blocks[view.name][:, j]
    return np.column_stack([columns[name] for name in plan.vector])


def test_the_vector_takes_every_column_from_where_it_was_computed_in_any_order(make_engine):
    plan = make_engine().plan
    assert plan.batch_views
    rng = np.random.default_rng(3)
    names = [n for n in plan.vector if "__" in n and all(not n.startswith(f"{v.name}__") for v in plan.batch_views)]
    pk = plan.partition_key
    keys = {k for v in plan.batch_views for k in v.join_keys}
    records = [{k: f"{k}-{i}" for k in keys | {pk}} for i in range(30)]
    features = rng.normal(size=(30, len(names)))
    features[3, 0] = np.nan
    batch = BatchFeatures(_Store())
    shuffled = list(plan.vector)
    rng.shuffle(shuffled)
    for vector in (plan.vector, tuple(shuffled), tuple(reversed(plan.vector))):
        p = dataclasses.replace(plan, vector=vector)
        got = assemble(p, names, features, records, list(range(30)), batch)
        blocks, _ = batch.lookup(p, records, list(range(30)))
        want = _one_column_at_a_time(p, names, features, blocks)
        assert got.matrix.shape == want.shape == (30, len(plan.vector))
        assert got.matrix.tobytes() == want.tobytes() and got.matrix.flags.c_contiguous
        assert any(m.any() for m in got.missing.values())
