"""Drift and data-quality monitoring of what the workers served: pure, mergeable statistics.

histograms (bins from a model's reference; rings of sub-window counts),
drift (PSI, Jensen-Shannon, L-infinity, nDCG, noise floors), quality
(training entities, DLQ and late rates), window (one model version's
window), alerts (open once, recover once), thresholds (defaults and
overrides), monitor (records in, statistics and alert records out),
gauges (the Prometheus metrics). No Kafka here: `sluice monitor`
(stream/services/monitor.py) drives it from the topics.
"""
