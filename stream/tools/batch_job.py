"""What an out-of-core batch run is given (`BatchJob`, `ServingSpec`) and what it reports (`BatchReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from features.spec import FeaturePlan

#: The column holding an event's scoring shard (a hash of the plan's partition key).
SHARD0 = "_shard0"
#: DuckDB's memory limit in the prepare pass. DuckDB fills it as soon as the history is larger (its table
#: pages, the arrival-order sort), and the process holds the rest of Sluice beside it (about 0.37 GB):
#: at 1GB a history of 20M events took the sharding pass to 1.6 GB, above every shard task's peak
#: (docs/performance.md, *Batch scoring at scale*). At 512MB it stays below them at any history size.
MEMORY_LIMIT = "512MB"


@dataclass(frozen=True)
class ServingSpec:
    """What serves, as data a task can rebuild `Serving` from: the deployment and each version's folder."""

    deployment: object  # stream.serving.deployment.Deployment
    folders: dict  # version -> model folder (a path every task can read)
    reason_share: float = 0.0
    reason_k: int = 3
    reason_method: str = "treeshap"


@dataclass(frozen=True)
class BatchJob:
    plan: FeaturePlan
    repo_path: str  # the feature repo: the online store the batch features are read from
    work: str  # scratch directory (the shards); removed at the end
    shards: int
    serving: ServingSpec | None = None  # None: features only (backfill)
    chunk_rows: int = 100_000
    memory_limit: str = MEMORY_LIMIT  # DuckDB's, for the prepare pass; beyond it DuckDB spills to `work`
    threads: int = 1


@dataclass
class BatchReport:
    events: int = 0
    late: int = 0
    predictions: int = 0
    seconds: dict = field(default_factory=dict)
