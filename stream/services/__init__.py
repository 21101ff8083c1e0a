"""Long-running processes beside the worker, each a thin loop over pure steps.

    monitor.py         `sluice monitor`: drift, data quality and outcome alerts (steps: stream.monitor)
    monitor_models.py  what the monitor knows of the versions it watches (read from the registry)
    reasons.py         `sluice reasons`: reason codes from the prediction log, off the scoring path (step: stream.serving.explain)
    rollout.py         `sluice rollout`: canary ramps, guardrails, A/B ratio checks (step: stream.serving.rollout)
    labels.py          `sluice labeled-sink` and the online metrics per version (steps: stream.lifecycle)
    archiver.py        `sluice archive`: the events topic as parquet by day, each offset once (stream.lifecycle.archive)
    autopilot.py       `sluice autopilot` / `sluice retrain`: continuous training (steps: stream.lifecycle.autopilot)

The status page (stream.ui) is a service too. Measuring and testing tools
are stream.tools; they may use a service, a service never uses them.
"""
