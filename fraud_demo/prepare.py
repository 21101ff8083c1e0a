"""A ready-to-serve copy of the demo repo: data written, applied, materialized, model trained."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fraud_demo.generator import DemoConfig, World, generate_transactions, make_world, write_repo_data
from stream.feast import repo
from stream.lifecycle.train import TrainResult, train


@dataclass(frozen=True)
class Prepared:
    path: Path
    model_dir: Path
    topic: str
    world: World
    cfg: DemoConfig
    trained: TrainResult
    history_end: datetime


def copy_repo(source: Path, dest: Path, topic: str | None = None) -> Path:
    """Copy a repo's definitions (not its data); optionally point its KafkaSource at `topic`."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.suffix in (".py", ".yaml", ".yml"):
            text = item.read_text()
            if topic and item.suffix == ".py":
                text = text.replace('topic="transactions"', f'topic="{topic}"')
            (dest / item.name).write_text(text)
    return dest


def prepare(
    source_repo: Path,
    dest: Path,
    cfg: DemoConfig,
    *,
    history_days: float,
    history_end: datetime,
    topic: str = "transactions",
    trees: int = 200,
) -> Prepared:
    path = copy_repo(Path(source_repo), Path(dest) / "feature_repo", topic if topic != "transactions" else None)
    world = make_world(cfg)
    history, labels = generate_transactions(world, cfg, history_end - timedelta(days=history_days), history_end, id_prefix="h")
    write_repo_data(path, world, history, labels)
    repo.apply(path)
    repo.materialize(path, datetime(2000, 1, 1, tzinfo=UTC), history_end, views=["card_profile"])
    model_dir = Path(dest) / "models"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    trained = train(path, model_dir, num_trees=trees)
    return Prepared(path, model_dir, topic, world, cfg, trained, history_end)
