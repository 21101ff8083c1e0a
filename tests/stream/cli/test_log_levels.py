"""Routine events (a deployment swap, a warm start, a ramp step) are INFO; problems stay WARNING or ERROR.

With the default SLUICE_LOG_LEVEL (warn) a worker's log then holds problems
only; `--log-level info` adds the routine events.
"""

from __future__ import annotations

import logging
import shutil

from features.warm import save
from stream.serving.deployment import Deployment
from stream.settings import Settings
from stream.services.rollout import Controller
from stream.worker.deployments import Deployer


def _levels(caplog, text: str) -> list[int]:
    return [r.levelno for r in caplog.records if text in r.getMessage()]


def test_a_deployment_swap_is_info_and_a_refused_one_an_error(broker, make_engine, model_versions, unique, caplog):
    models, v1, v2 = model_versions
    shutil.copytree(models / v1, models / "v-bad")
    (models / "v-bad" / "model.txt").write_bytes(b"tree\nnot a model\n")
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, model_dir=models, monitoring_topic=unique("mon"))
    deployer = Deployer(make_engine(), settings)
    with caplog.at_level(logging.DEBUG, logger="sluice.deployments"):
        assert deployer.apply(Deployment(seq=1, champion=v2))
        assert not deployer.apply(Deployment(seq=2, champion="v-bad"))
    assert _levels(caplog, "deployment 1 applied") == [logging.INFO]
    assert _levels(caplog, "deployment 2 refused") == [logging.ERROR]


def test_a_warm_start_is_info(tmp_path, caplog):
    from stream.worker.app import _warm_lookup

    path = tmp_path / "warm.parquet"
    save({"card-1": b"state"}, path)
    with caplog.at_level(logging.DEBUG, logger="sluice"):
        _warm_lookup(Settings(warm_state=str(path)))
    assert _levels(caplog, "warm start: 1 entity states") == [logging.INFO]


def test_a_ramp_step_is_info_and_a_guardrail_rollback_a_warning(broker, model_versions, unique, caplog):
    models, v1, v2 = model_versions
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, model_dir=models, deployments_topic=unique("deploy"))
    controller = Controller(settings, "card_id", v1)  # not started: only its publishing step runs
    canary = Deployment(seq=1, champion=v1, mode="canary", challengers=(v2,), share=0.05, ramp=(0.05, 0.5))
    step = canary.but(seq=2, step=1, share=0.5, by="ramp", reason="ramp step 1")
    rollback = step.but(seq=3, mode="champion", challengers=(), share=0.0, ramp=(), step=0, by="guardrail",
                        reason="guardrail: fallback rate 0.2 > 0.05; canary rolled back")
    with caplog.at_level(logging.DEBUG, logger="sluice"):
        controller._publish(step)
        controller._publish(rollback)
    assert _levels(caplog, "deployment 2 written") == [logging.INFO]
    assert _levels(caplog, "deployment 3 written") == [logging.WARNING]
