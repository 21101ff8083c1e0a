"""Sum up a worker's timeline (SLUICE_TIMELINE_FILE, stream/worker/timeline.py): where each event's latency went.

    python -m stream.tools.bench.timeline FILE [--since-ms T] [--until-ms T]

Joins each event's first-stage and last-stage records by its place in the
events topic, and prints p50 / p90 / p99 of each step, in ms:

* in -> fetched: the event's Kafka timestamp (the bench's produce call) to
  the worker's consumer handing its fetch to Faust: the input producer's
  linger, the broker, the fetch's wait;
* fetched -> taken: Faust's queues and the event loop, until the stage's
  actor takes the chunk;
* taken -> compute: the actor's wait for other partitions' chunks (gather)
  and, after the hop, the arrival clock's hold;
* compute: the engine call the record was in;
* compute -> delivered: the chunk's outputs acknowledged by the broker;
* produced -> fetched (hop): from the forwarded record's Kafka timestamp
  (the first stage's produce call) to the last stage's fetch;
* total: the event's timestamp to the end of the last stage's compute, when
  its prediction is produced (what `sluice bench --latency` measures, to
  within the produce call).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import orjson

STEPS = ("in -> fetched", "fetched -> taken", "taken -> compute", "compute", "compute -> delivered")


def load(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def events(lines: list[dict]) -> dict[tuple[int, int], dict[int, dict]]:
    """(events partition, offset) -> stage -> that stage's step times for the event (the first computation)."""
    out: dict[tuple[int, int], dict[int, dict]] = {}
    for line in lines:
        if "r" not in line:
            continue
        for offset, ts, fetched, taken, src_p, src_o in line["r"]:
            if fetched is None:
                continue
            stages = out.setdefault((src_p, src_o), {})
            stages.setdefault(line["s"], {"ts": ts, "fetched": fetched, "taken": taken, "t0": line["t0"],
                                          "t1": line["t1"], "dl": line["dl"], "n": line["n"]})
    return out


def steps(by_event: dict, since_ms: float = 0.0, until_ms: float = float("inf")) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    for stages in by_event.values():
        if 0 not in stages or not since_ms <= stages[0]["ts"] <= until_ms:
            continue
        last = max(stages)
        for s in sorted(stages):
            step = stages[s]
            if s > 0:
                add(f"{s}: produced -> fetched (hop)", step["fetched"] - step["ts"])
            else:
                add("0: in -> fetched", step["fetched"] - step["ts"])
            add(f"{s}: fetched -> taken", step["taken"] - step["fetched"])
            add(f"{s}: taken -> compute", step["t0"] - step["taken"])
            add(f"{s}: compute", step["t1"] - step["t0"])
            add(f"{s}: compute -> delivered", step["dl"] - step["t1"])
        if last > 0:
            add("total", stages[last]["t1"] - stages[0]["ts"])
    return out


def fetches(lines: list[dict], since_ms: float = 0.0, until_ms: float = float("inf")) -> dict[str, list[float]]:
    """The consumer's fetch requests: how long the broker took to answer, and how long until the next one went out."""
    rows = sorted(f for line in lines for f in line.get("fetches", ()) if since_ms <= f[0] <= until_ms)
    out: dict[str, list[float]] = {}
    for (sent, answered, new), after in zip(rows, rows[1:] + [None]):
        out.setdefault("fetch: answered, with records" if new else "fetch: answered, empty", []).append(answered - sent)
        if after is not None:
            out.setdefault("fetch: answered -> next sent", []).append(after[0] - answered)
    return out


def table(named: dict[str, list[float]]) -> str:
    rows = [f"{'step':34s} {'n':>7s} {'p50':>7s} {'p90':>7s} {'p99':>7s}"]
    for name in sorted(named, key=lambda n: (n == "total", n)):
        values = np.asarray(named[name])
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        rows.append(f"{name:34s} {len(values):7d} {p50:7.1f} {p90:7.1f} {p99:7.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--since-ms", type=float, default=0.0, help="only events with a Kafka timestamp from this on")
    p.add_argument("--until-ms", type=float, default=float("inf"), help="... and up to this")
    args = p.parse_args(argv)
    lines = load(args.file)
    print(table({**steps(events(lines), args.since_ms, args.until_ms), **fetches(lines, args.since_ms, args.until_ms)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
