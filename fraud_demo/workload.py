"""The card-fraud demo as a workload for Sluice's tools (see stream.tools.workload)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.prepare import prepare
from stream.tools.workload import Prepared

#: Fixed end of the generated history, so runs are reproducible.
HISTORY_END = datetime(2026, 11, 1, tzinfo=UTC)


class FraudWorkload:
    """Cards and merchants; `entities` is the number of cards (merchants: one per 20, at least 50)."""

    name = "card fraud (demo)"

    def __init__(self, source_repo: Path, history_days: float = 2.0, history_end: datetime = HISTORY_END):
        self.source_repo = Path(source_repo)
        self.history_days = history_days
        self.history_end = history_end
        self.prepared = None  # fraud_demo.prepare.Prepared, once prepare() ran

    def prepare(self, work: Path, *, entities: int, seed: int, topic: str, trees: int) -> Prepared:
        cfg = DemoConfig(
            seed=seed, n_cards=entities, n_merchants=max(50, entities // 20), legit_label_delay=timedelta(hours=12)
        )
        self.prepared = prepare(
            self.source_repo, work, cfg, history_days=self.history_days, history_end=self.history_end, topic=topic,
            trees=trees,
        )
        trained = self.prepared.trained
        about = {"cards": entities, "model_version": trained.version, "validation_auc": trained.validation_auc}
        return Prepared(self.prepared.path, self.prepared.model_dir, about)

    def _days_for(self, n: int) -> float:
        cfg = self.prepared.cfg
        return n / (cfg.n_cards * cfg.txns_per_card_per_day) * 1.2 + 0.1

    def live_events(self, n: int, *, seed: int, disorder_ms: int = 0) -> list[bytes]:
        end = self.history_end
        live, _ = generate_transactions(
            self.prepared.world, self.prepared.cfg, end, end + timedelta(days=self._days_for(n)), id_prefix=f"l{seed}-"
        )
        return list(event_stream(live.iloc[:n], disorder_ms=disorder_ms, seed=seed))

    def history(self, n: int):
        start = self.history_end - timedelta(days=self._days_for(n))
        history, _ = generate_transactions(self.prepared.world, self.prepared.cfg, start, self.history_end, id_prefix="o")
        return history.iloc[-n:].reset_index(drop=True)
