"""Where a `sluice bench --serve` run's time went: the worker's own step timings and every process's CPU.

The worker times each answered request's steps (`sluice_serve_step_seconds`)
and each stream computation that held its event loop
(`sluice_stage_seconds{step="compute"}`); a run's share of them is the
difference of two scrapes of its /metrics. CPU is sampled per process of
the benchmark (the worker, the broker, this process with its feeder and
reader) and for the whole machine, which the other jobs on it share: on 2
cores, what the load generator, the broker and the stream take is not
available to the requests.
"""

from __future__ import annotations

import time
import urllib.request

import psutil

#: The worker's request steps (stream/worker/serve.py).
STEPS = ("settle", "queue", "compute", "deliver")


def scrape(metrics_port: int) -> dict[str, float]:
    """Every sample of the worker's /metrics, by its full name with labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    samples = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def histogram(before: dict, after: dict, name: str, labels: str = "") -> dict | None:
    """Count, mean and the bucket bound under which 50% and 99% fell, between two scrapes (ms)."""
    wanted = _labels(labels)

    def delta(suffix: str, le: str | None = None) -> float:
        total = 0.0
        for key, value in after.items():
            metric, _, rest = key.partition("{")
            found = _labels(rest.rstrip("}"))
            if metric == f"{name}{suffix}" and found.pop("le", None) == le and found == wanted:
                total += value - before.get(key, 0.0)
        return total

    count = delta("_count")
    if count <= 0:
        return None
    bounds = sorted({float(k.split('le="', 1)[1].split('"', 1)[0]) for k in after
                     if k.startswith(f"{name}_bucket") and "+Inf" not in k})
    cumulative = [(bound, delta("_bucket", repr(bound))) for bound in bounds]

    def under(q: float) -> float | None:
        return next((bound * 1000 for bound, n in cumulative if n >= q * count), None)  # None: past the last bucket

    return {"count": int(count), "mean_ms": round(delta("_sum") / count * 1000, 3),
            "p50_under_ms": under(0.5), "p99_under_ms": under(0.99)}


def _labels(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.replace('"', "").split(",") if "=" in part)


def steps(before: dict, after: dict) -> dict:
    """Per request step, and the stream's computations that held the loop meanwhile."""
    out = {step: histogram(before, after, "sluice_serve_step_seconds", f'step="{step}"') for step in STEPS}
    out["stream_compute"] = histogram(before, after, "sluice_stage_seconds", 'step="compute"')
    out["stream_deliver"] = histogram(before, after, "sluice_stage_seconds", 'step="deliver"')
    together = histogram(before, after, "sluice_serve_asked_together")
    if together is not None:  # a count, not seconds
        out["asked_together_mean"] = round(together["mean_ms"] / 1000, 2)
    return out


class CpuSample:
    """CPU seconds of this process, of each of its children (the worker, the broker) and of the whole machine."""

    def __init__(self):
        self.at = time.monotonic()
        me = psutil.Process()
        self.procs = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                times, role = proc.cpu_times(), _role(proc, me.pid)
                self.procs[proc.pid] = (role, times.user + times.system)
                if role == "worker":  # its event loop's thread: requests and the stream share it
                    main = next(t for t in proc.threads() if t.id == proc.pid)
                    self.procs[-proc.pid] = ("worker event loop thread", main.user_time + main.system_time)
            except (psutil.Error, StopIteration):
                continue
        machine = psutil.cpu_times()
        self.busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)

    def cores_since(self, earlier: CpuSample) -> dict[str, float]:
        """Cores used on average between two samples, per role (processes that ended in between are left out)."""
        wall = max(self.at - earlier.at, 1e-9)
        used: dict[str, float] = {}
        for pid, (role, cpu) in self.procs.items():
            if pid in earlier.procs and role is not None:
                used[role] = used.get(role, 0.0) + (cpu - earlier.procs[pid][1]) / wall
        out = {role: round(v, 2) for role, v in sorted(used.items())}
        out["machine"] = round((self.busy - earlier.busy) / wall, 2)
        return out


def _role(proc: psutil.Process, me: int) -> str | None:
    if proc.pid == me:
        return "bench (stream feeder, reader)"
    command = " ".join(proc.cmdline())
    if "tansu" in command:
        return "broker"
    if "stream.cli" in command and "worker" in command:
        return "worker"
    return None  # the load generator reports its own CPU
