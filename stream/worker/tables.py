"""The worker's table manager: Faust's, without its pause at start.

Faust's `TableManager.on_start` sleeps one second before it registers the
tables' changelogs, so that tables declared while the app starts are still
counted; the consumer subscribes, and the worker asks to join its group,
only after that. A Sluice worker declares every table before it starts
(`build_app`), and a table added later is refused loudly by Faust
("Too late to add tables at this point"), so the second was only ever a
wait: on every start, and so on every restart after a kill, whose
partitions have no owner until the restarted worker has joined
(docs/operations.md, "Rebalances").
"""

from __future__ import annotations

from faust.tables import TableManager


class PromptTableManager(TableManager):
    """Registers the tables' changelogs and starts their recovery as soon as it starts (the app's `TableManager`)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
