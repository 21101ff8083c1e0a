"""Events as columns: the shape both the worker's micro-batches and histories take."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.spec import StreamView

#: Joins the values of a compound entity key; it cannot occur in a key value
#: that passed validation (control characters are rejected).
KEY_SEP = "\x1f"


def value_codes(values: np.ndarray | list) -> np.ndarray:
    """Stable 64-bit codes for count_distinct, identical in every process.

    Values are compared as text, so 7, 7.0 and "7" arriving through JSON and
    through parquet get the same code when they print the same.
    """
    text = np.asarray([v if isinstance(v, str) else repr(v) for v in values], dtype=object)
    return pd.util.hash_array(text, categorize=False).view(np.int64)


@dataclass
class EventColumns:
    """Columns of N events in arrival order (`seq` increasing within a partition)."""

    ts: np.ndarray  # event time, int64 ms since the epoch
    seq: np.ndarray  # arrival position: offset in the stage's input partition
    fields: dict[str, np.ndarray]  # raw field values (object or numeric arrays)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> EventColumns:
        return EventColumns(self.ts[idx], self.seq[idx], {k: v[idx] for k, v in self.fields.items()})

    @staticmethod
    def concat(parts: list[EventColumns]) -> EventColumns:
        if len(parts) == 1:
            return parts[0]
        fields = {k: np.concatenate([p.fields[k] for p in parts]) for k in parts[0].fields}
        return EventColumns(np.concatenate([p.ts for p in parts]), np.concatenate([p.seq for p in parts]), fields)

    def entity_keys(self, view: StreamView) -> np.ndarray:
        """One string per event identifying the view's entity (compound keys joined)."""
        parts = [self.fields[k] for k in view.join_keys]
        if len(parts) == 1:
            return np.asarray([str(v) for v in parts[0]], dtype=object)
        return np.asarray([KEY_SEP.join(map(str, vals)) for vals in zip(*parts)], dtype=object)

    def numeric(self, column: str) -> np.ndarray:
        return np.asarray(self.fields[column], dtype=np.float64)

    def codes(self, column: str) -> np.ndarray:
        return value_codes(self.fields[column])


def to_epoch_ms(series: pd.Series) -> np.ndarray:
    """Timezone-aware (or UTC-naive) datetimes to int64 milliseconds; integers are taken as milliseconds already.

    Integer milliseconds reach every time the worker accepts (years 1 to
    9999); pandas datetimes stop at 1677 and 2262.
    """
    if series.dtype.kind in "iu":
        return series.to_numpy(dtype=np.int64)
    values = pd.to_datetime(series, utc=True)
    return (values.astype("datetime64[ns, UTC]").astype("int64") // 1_000_000).to_numpy()
