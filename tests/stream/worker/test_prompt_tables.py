"""A worker's table manager registers its tables' changelogs as soon as it starts.

Faust's own table manager sleeps a second first, which every start (and so
every restart after a kill) waited out before the worker asked to join its
group (stream/worker/tables.py). What registering and recovery do needs a
started consumer, so they are only recorded here, in the order they ran;
the chaos runs in docs/operations.md start them for real.
"""

from __future__ import annotations

from stream.settings import Settings
from stream.worker.app import faust_app


def test_the_worker_registers_its_tables_without_sleeping_first(tmp_path):
    app = faust_app(Settings(bootstrap_servers="localhost:1", data_dir=tmp_path, store="memory://"), "prompt")
    manager = app.tables
    ran: list[object] = []

    async def sleep(seconds: float) -> None:
        ran.append(("sleep", seconds))

    async def register() -> None:
        ran.append("register the changelogs")

    class Recovery:
        async def start(self) -> None:
            ran.append("start the recovery")

    manager.sleep, manager._update_channels, manager._recovery = sleep, register, Recovery()
    app.loop.run_until_complete(manager.on_start())
    assert ran == ["register the changelogs", "start the recovery"]
