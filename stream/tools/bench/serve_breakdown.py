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
    sep = "," if labels else ""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta(f"{name}_count{{{labels}}}" if labels else f"{name}_count")
    if count <= 0:
        return None
    total = delta(f"{name}_sum{{{labels}}}" if labels else f"{name}_sum")
    bounds = sorted(
        (float(key.split('le="', 1)[1].split('"', 1)[0]), delta(key))
        for key in after
        if key.startswith(f"{name}_bucket{{{labels}{sep}le=") and "+Inf" not in key
    )

    def under(q: float) -> float | None:
        return next((bound * 1000 for bound, n in bounds if n >= q * count), None)  # None: beyond the last bucket

    return {"count": int(count), "mean_ms": round(total / count * 1000, 3), "sum_s": round(total, 3),
            "p50_under_ms": under(0.5), "p99_under_ms": under(0.99)}


def steps(before: dict, after: dict) -> dict:
    """Per request step, and the stream's computations that held the loop meanwhile."""
    out = {step: histogram(before, after, "sluice_serve_step_seconds", f'step="{step}"') for step in STEPS}
    out["stream_compute"] = histogram(before, after, "sluice_stage_seconds", 'step="compute"')
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
                times = proc.cpu_times()
                self.procs[proc.pid] = (_role(proc, me.pid), times.user + times.system)
            except psutil.Error:
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
