"""Standby copies of window state, applied in small batches.

With `standby_replicas` (stream.settings) each worker follows the changelogs
of partitions it does not own, so that it can take them over from its copy
when their owner dies. Faust applies a standby's changelog records to the
store only once a table's buffer holds `standby_buffer_size` of them (1,000
by default, shared by the table's partitions), and has no time-based flush:
at low rates a copy can stay a thousand records behind, or never be written
at all, and the takeover reads those records again. Batches of
`STANDBY_BATCH` keep a copy within that many records of the changelog, for
one RocksDB write per batch.
"""

from __future__ import annotations

import faust

#: Changelog records a standby copy is applied in, per table.
STANDBY_BATCH = 100


class StandbyTable(faust.Table):
    """A Faust table whose standby copies are applied every `STANDBY_BATCH` records (the app's `Table` class)."""

    def __init__(self, *args, standby_buffer_size: int | None = None, **kwargs):
        super().__init__(*args, standby_buffer_size=standby_buffer_size or STANDBY_BATCH, **kwargs)
