"""SLUICE_COMPILED_SCORER reaches the models the worker loads: at start-up, and each version a hot swap loads."""

from __future__ import annotations

from stream.serving import compiled
from stream.serving.deployment import Deployment
from stream.settings import Settings
from stream.worker.app import build_engine
from stream.worker.deployments import Deployer


def test_the_worker_gates_its_champion_and_every_version_a_swap_loads(trained_repo, model_versions):
    models, v1, v2 = model_versions
    settings = Settings(repo_path=trained_repo["path"], model_dir=models, compiled_scorer=500)
    engine, _ = build_engine(settings)
    first = engine.serving.champion.compiled
    assert first is not None and first.version == v1 and first.gate_rows == 500
    assert first.wait_compiled(120) and first.state == compiled.GATING

    assert Deployer(engine, settings, folder_of=lambda version: models / version).apply(Deployment(seq=1, champion=v2))
    swapped = engine.serving.champion.compiled
    assert swapped is not first and swapped.version == v2 and swapped.compared == 0
    assert swapped.wait_compiled(120)  # its compiling child ends with the test

    engine, _ = build_engine(settings.with_(compiled_scorer=0))
    assert engine.serving.champion.compiled is None
