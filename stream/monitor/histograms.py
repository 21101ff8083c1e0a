"""Binned counts over sliding windows of event time: the drift monitor's memory.

A column's bins come from its reference (model.json "reference"): a numeric
column has the reference's interior quantile edges (bin of x =
`searchsorted(edges, x, side="right")`) and a missing bin; a categorical one
has a bin per reference category, one for a category the reference never
saw, and a missing bin. A `Layout` puts every binned column (the features,
the score) and a few plain counters side by side in one flat vector of
slots, so that one `bincount` per micro-batch updates all of them.

A `Ring` keeps one such vector per sub-window (event time // sub-window
length) for the newest `length` sub-windows: memory is slots x
sub-windows, whatever the event rate. Rings over disjoint events merge by
adding the vectors of equal sub-windows, so partitions or workers can each
keep their own and the merged ring is exactly what one pass over all the
events gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.lifecycle.reference import category_key

NUMERIC, CATEGORICAL = "numeric", "categorical"


@dataclass(frozen=True)
class Binning:
    """The bins of one column, from its reference entry; the missing bin is the last one."""

    name: str
    kind: str
    reference: np.ndarray  # reference counts per bin (float64)
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # numeric: interior edges, ascending
    categories: tuple[str, ...] = ()  # categorical: then one "unseen" bin, then "missing"
    low: float = float("nan")  # numeric: the reference's min and max
    high: float = float("nan")
    # Categorical: the categories that are numbers, sorted, and their bins (values arrive as floats).
    _numbers: np.ndarray = field(init=False, repr=False, compare=False)
    _numbered: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbers, index = [], []
        for i, c in enumerate(self.categories):
            try:
                numbers.append(float(c))
                index.append(i)
            except ValueError:
                continue
        order = np.argsort(numbers, kind="stable")
        object.__setattr__(self, "_numbers", np.asarray(numbers, dtype=np.float64)[order])
        object.__setattr__(self, "_numbered", np.asarray(index, dtype=np.int64)[order])

    @classmethod
    def from_reference(cls, name: str, spec: dict) -> Binning:
        missing = float(spec.get("missing", 0))
        if spec["kind"] == CATEGORICAL:
            categories = tuple(str(c) for c in spec["counts"])
            counts = [float(spec["counts"][c]) for c in categories] + [0.0, missing]
            return cls(name, CATEGORICAL, np.asarray(counts), categories=categories)
        edges = np.unique(np.asarray(spec.get("edges", []), dtype=np.float64))
        counts = np.asarray(spec["counts"], dtype=np.float64)
        if len(counts) != len(edges) + 1:
            msg = f"reference of {name!r}: {len(counts)} counts for {len(edges)} edges (expected one more count than edges)"
            raise ValueError(msg)
        # An all-missing column's reference has "min": null (JSON has no NaN).
        low, high = (float(np.nan if spec.get(k) is None else spec[k]) for k in ("min", "max"))
        return cls(name, NUMERIC, np.append(counts, missing), edges=edges, low=low, high=high)

    @property
    def n_bins(self) -> int:
        return len(self.reference)

    @property
    def missing_bin(self) -> int:
        return self.n_bins - 1

    @property
    def unseen_bin(self) -> int | None:
        return len(self.categories) if self.kind == CATEGORICAL else None

    def codes(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value (float array, NaN for missing; object array for text categories)."""
        values = np.asarray(values)
        if self.kind == NUMERIC:
            x = values.astype(np.float64, copy=False)
            out = np.searchsorted(self.edges, x, side="right")
            out[np.isnan(x)] = self.missing_bin
            return out
        return self._category_codes(values)

    def _category_codes(self, values: np.ndarray) -> np.ndarray:
        if values.dtype.kind == "f":
            numbers, index = self._numbers, self._numbered
            out = np.full(len(values), len(self.categories), dtype=np.int64)
            if len(numbers):
                pos = np.minimum(np.searchsorted(numbers, values), len(numbers) - 1)
                hit = numbers[pos] == values
                out[hit] = index[pos[hit]]
            out[np.isnan(values)] = self.missing_bin
            return out
        names = {c: i for i, c in enumerate(self.categories)}
        unseen = len(self.categories)
        return np.array(
            [self.missing_bin if _is_missing(v) else names.get(category_key(v), unseen) for v in values.tolist()],
            dtype=np.int64,
        )

    def out_of_range(self, values: np.ndarray) -> np.ndarray:
        """Values outside the reference's [min, max] (numeric) or categories it never saw (categorical)."""
        if self.kind == CATEGORICAL:
            return self.codes(values) == self.unseen_bin
        x = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (x < self.low) | (x > self.high)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


class Layout:
    """Binned columns and named counters as consecutive slots of one count vector."""

    def __init__(self, binnings: list[Binning], counters: list[str] = ()):
        self.binnings = list(binnings)
        self.offsets = np.cumsum([0] + [b.n_bins for b in self.binnings])[:-1].astype(np.int64)
        start = int(sum(b.n_bins for b in self.binnings))
        self.counters = {name: start + i for i, name in enumerate(counters)}
        self.width = start + len(self.counters)

    def slots(self, columns: list[np.ndarray]) -> np.ndarray:
        """(n, columns) slot numbers: each column's values (in binning order) in its bins."""
        return np.column_stack([b.codes(c) + off for b, c, off in zip(self.binnings, columns, self.offsets)])

    def counts(self, totals: np.ndarray, j: int) -> np.ndarray:
        """Column j's bins in a count vector."""
        off = int(self.offsets[j])
        return totals[off : off + self.binnings[j].n_bins]


class Ring:
    """Count (or sum) vectors per sub-window, for the newest `length` sub-windows seen."""

    def __init__(self, width: int, length: int, dtype=np.int64):
        self.width, self.length, self.dtype = width, length, dtype
        self.buckets: dict[int, np.ndarray] = {}
        self.newest: int | None = None

    def add(self, bucket: np.ndarray, slots: np.ndarray) -> int:
        """Count each event once in each of its slots (one row of `slots` per event, -1 = none).

        Events of a sub-window that has already left the ring are not
        counted; returns how many were dropped.
        """
        bucket = np.asarray(bucket, dtype=np.int64)
        if not len(bucket):
            return 0
        keep = self._advance(bucket)
        slots = np.asarray(slots, dtype=np.int64).reshape(len(bucket), -1)[keep]
        uniq, inverse = np.unique(bucket[keep], return_inverse=True)
        flat = (inverse[:, None] * self.width + slots)[slots >= 0]
        counts = np.bincount(flat, minlength=len(uniq) * self.width).reshape(len(uniq), self.width)
        self._accumulate(uniq, counts)
        return int(len(keep) - keep.sum())

    def add_values(self, bucket: np.ndarray, values: np.ndarray) -> int:
        """Add each event's row of `values` (n x width) to its sub-window's vector; returns how many were dropped."""
        bucket = np.asarray(bucket, dtype=np.int64)
        if not len(bucket):
            return 0
        keep = self._advance(bucket)
        uniq, inverse = np.unique(bucket[keep], return_inverse=True)
        sums = np.zeros((len(uniq), self.width), dtype=self.dtype)
        np.add.at(sums, inverse, np.asarray(values, dtype=self.dtype)[keep])
        self._accumulate(uniq, sums)
        return int(len(keep) - keep.sum())

    def _advance(self, bucket: np.ndarray) -> np.ndarray:
        top = int(bucket.max())
        if self.newest is None or top > self.newest:
            self.newest = top
            self._expire()
        return bucket > self.newest - self.length

    def _accumulate(self, uniq: np.ndarray, rows: np.ndarray) -> None:
        buckets = self.buckets
        for b, row in zip(uniq.tolist(), rows):
            have = buckets.get(b)
            if have is None:
                buckets[b] = row.astype(self.dtype, copy=True)
            else:
                have += row

    def _expire(self) -> None:
        floor = self.newest - self.length
        for b in [b for b in self.buckets if b <= floor]:
            del self.buckets[b]

    def total(self, last: int, span: int | None = None) -> np.ndarray:
        """The sum over the `span` (default `length`) sub-windows ending with sub-window `last`."""
        span = self.length if span is None else span
        out = np.zeros(self.width, dtype=self.dtype)
        for b, row in self.buckets.items():
            if last - span < b <= last:
                out += row
        return out

    def merge(self, other: Ring) -> Ring:
        """A new ring holding both rings' events (they must have the same shape)."""
        if (other.width, other.length) != (self.width, self.length):
            msg = f"cannot merge rings of shape {(self.width, self.length)} and {(other.width, other.length)}"
            raise ValueError(msg)
        merged = Ring(self.width, self.length, self.dtype)
        for ring in (self, other):
            for b, row in ring.buckets.items():
                merged._accumulate(np.array([b]), row[None, :])
        tops = [r.newest for r in (self, other) if r.newest is not None]
        if tops:
            merged.newest = max(tops)
            merged._expire()
        return merged

    @property
    def nbytes(self) -> int:
        return sum(row.nbytes for row in self.buckets.values())
