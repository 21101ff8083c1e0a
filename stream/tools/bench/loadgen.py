"""An open-loop load generator for `POST /score`, run as its own process by `sluice bench --serve`.

Request i is due at start + i / rate whether or not earlier ones were
answered (a closed loop would wait, and hide a slow server's queue), and
its latency runs from when it was due, not from when it was sent: time a
request spent waiting for the generator counts too. Prints one JSON line:
statuses and latency percentiles.

    python -m stream.tools.bench.loadgen --port 8080 --rate 1000 --payloads events.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp
import numpy as np


async def run(url: str, payloads: list[bytes], rate: float, start_at: float = 0.0) -> dict:
    """`start_at` (epoch seconds): when the first request is due, so that another process can start in step."""
    connector = aiohttp.TCPConnector(limit=256)
    latencies: list[float] = []
    late: list[float] = []  # ms from when a request was due to when this process got to send it
    statuses: Counter = Counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(body: bytes, due: float) -> None:
            late.append((time.perf_counter() - due) * 1000)
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                return
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_started = time.process_time()
        started = time.perf_counter()
        for i, body in enumerate(payloads):
            due = started + i / rate
            ahead = due - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
            tasks.append(asyncio.create_task(one(body, due)))
        sent_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
    out = summary(rate, len(payloads), sent_s, latencies, statuses)
    # The generator shares the machine with what it measures: how late it sent, and what it cost.
    out["generator"] = {"cpu_s": round(time.process_time() - cpu_started, 2)}
    if late:
        out["generator"].update(sent_late_p50_ms=round(float(np.percentile(late, 50)), 2),
                                sent_late_p99_ms=round(float(np.percentile(late, 99)), 2))
    return out


def summary(rate: float, n: int, sent_s: float, latencies: list[float], statuses: Counter) -> dict:
    out = {"rate": rate, "requests": n, "offered_per_s": round(n / max(sent_s, 1e-9), 1), "statuses": dict(statuses)}
    if latencies:
        p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
        out.update(p50_ms=round(float(p50), 2), p99_ms=round(float(p99), 2), p999_ms=round(float(p999), 2),
                   max_ms=round(float(max(latencies)), 2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--rate", type=float, required=True, help="requests per second (open loop)")
    p.add_argument("--payloads", required=True, help="file of events, one JSON object per line")
    p.add_argument("--start-at", type=float, default=0.0, help="epoch seconds of the first request (default: now)")
    args = p.parse_args(argv)
    with open(args.payloads, "rb") as f:
        payloads = [line.rstrip(b"\n") for line in f if line.strip()]
    result = asyncio.run(run(f"http://{args.host}:{args.port}/score", payloads, args.rate, args.start_at))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
