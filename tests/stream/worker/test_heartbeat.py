"""A worker's heartbeat: how soon it hears that its group is rebalancing.

A group member learns of a peer's death, join or leave only from the answer
to its next heartbeat, so every rebalance a fault starts waits up to one
heartbeat interval before the survivor asks to join (docs/operations.md,
"Rebalances"). The interval is a setting, passed to the consumer.
"""

from __future__ import annotations

from stream.settings import Settings
from stream.worker.app import faust_app


def test_the_heartbeat_interval_is_the_settings_and_a_quarter_second_by_default(tmp_path):
    default = faust_app(Settings(bootstrap_servers="localhost:1", data_dir=tmp_path), "beat")
    assert default.conf.broker_heartbeat_interval == 0.25
    # at most a third of the session, as the group protocol asks
    assert default.conf.broker_heartbeat_interval * 3 <= default.conf.broker_session_timeout
    tuned = faust_app(Settings(bootstrap_servers="localhost:1", data_dir=tmp_path, heartbeat_interval_s=0.5), "beat2")
    assert tuned.conf.broker_heartbeat_interval == 0.5
