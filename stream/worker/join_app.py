"""Join-only workers: the label join in processes of its own, off the scoring path (SLUICE_LABEL_JOIN=service).

A join worker is a Faust app with the label join's two agents and its
table (stream/worker/labels.py, unchanged: the same committer order and
changelog-backed state as the inline join) and nothing else: no stages, no
model, no online store. Its app id, `<app id>-join`, is its consumer group
and names its table (`<app id>-join-label-join-changelog`); several join
workers of one pipeline split the partitions of `labels` and
`prediction_log` (co-partitioned: partition p of both goes to one worker)
and move the pending joins with them. The feature plan is read from the
Feast repo only for the join's schema (the FeatureService tags, the event
id field) and the topic names.

The scoring workers of the pipeline run with SLUICE_LABEL_JOIN=service:
they produce the prediction log and read neither topic.
"""

from __future__ import annotations

import logging

import faust
from prometheus_client import Gauge

from stream.kafka.clients import topic_partition_counts
from stream.kafka.topics import AppTopics
from stream.settings import Settings
from stream.worker.app import faust_app, report_health, run_app
from stream.worker.labels import add_label_join

log = logging.getLogger("sluice.labels")

#: What a join worker's /metrics says it is (the status page counts workers by sluice_worker_info: not this).
JOIN_INFO = Gauge("sluice_label_join_worker_info", "1: this endpoint is a join-only worker of the app", ["app_id"])


def build_join_app(settings: Settings, plan) -> faust.App:
    """The join-only app: the label join's agents and table, in consumer group `settings.join_app_id`."""
    app = faust_app(settings, settings.join_app_id)
    add_label_join(app, settings, plan)
    topics = AppTopics.for_plan(settings, plan)
    inputs = [topics.labels, topics.prediction_log]

    def assigned() -> None:
        log.info("sluice label-join worker assigned: %s", sorted(str(tp) for tp in app.consumer.assignment()))

    report_health(app, settings, inputs, assigned)
    return app


def _sized_like_the_log(settings: Settings, plan) -> Settings:
    """Settings whose partition count is the prediction log's (else the events topic's), where one exists.

    The scoring workers size every topic they make like the events topic;
    the join must read the log with the count it has.
    """
    topics = AppTopics.for_plan(settings, plan)
    counts = topic_partition_counts(settings.bootstrap_servers, [topics.prediction_log, topics.events])
    found = counts.get(topics.prediction_log) or counts.get(topics.events)
    return settings.with_(partitions=found) if found and found != settings.partitions else settings


def run_join_worker(settings: Settings) -> None:
    """Run a join-only worker until SIGINT/SIGTERM (blocking)."""
    from features.feast_repo import load_plan, open_store
    from stream.feast.unchecked import offline_store_unvalidated

    with offline_store_unvalidated():  # the plan only: no offline store
        plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    settings = _sized_like_the_log(settings, plan)
    app = build_join_app(settings, plan)
    JOIN_INFO.labels(settings.app_id).set(1)
    run_app(app, settings, settings.join_app_id)
