"""Liveness and readiness of the long-running services beside the worker, for /livez and /readyz.

The monitor, the rollout controller and the status page answer the same
probes as the worker, through the worker's HTTP server (stream.metrics):

* alive: the service's loop beat within `liveness_timeout_s` (or, for a
  service without one loop, its `alive` check passes); a blocked or dead
  loop is cured by a restart;
* ready: the broker answered a metadata request within the last
  `stale_s`, and the service says it is doing its work (`working`).

The broker is looked at from a thread of its own, every `look_every_s`: a
service waiting on an idle topic would not notice a dead broker otherwise.
`look` is any callable taking `timeout=` that raises when the broker does not
answer (an admin client's `list_topics`); this module imports no Kafka.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client.core import GaugeMetricFamily

from stream import metrics

#: A check: None when fine, else why not (the probe's 503 body).
Check = Callable[[], "str | None"]

LOOK_EVERY_S, LOOK_TIMEOUT_S = 1.0, 2.0


class ServiceHealth:
    """The probes of one service: `beat()` from its loop, `serve()` to answer them, `close()` to stop."""

    def __init__(
        self, service: str, look: Callable, *, working: Check, alive: Check | None = None,
        liveness_timeout_s: float = metrics.LIVENESS_TIMEOUT_S, look_every_s: float = LOOK_EVERY_S,
    ):
        self.service = service
        self._look, self._working, self._alive = look, working, alive
        self.liveness_timeout_s, self.look_every_s = liveness_timeout_s, look_every_s
        # Two missed looks in a row before the broker counts as gone (one may just be slow).
        self.stale_s = 2 * look_every_s + LOOK_TIMEOUT_S
        self._beat = time.monotonic()  # alive while starting, until the timeout passes
        self._answered: float | None = None
        self._look_failure = "the broker has not been reached yet"
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"sluice-{service}-health", daemon=True)
        self._server: metrics.MetricsServer | None = None
        self._registry = None

    def beat(self) -> None:
        """The service's loop is alive: call it once per turn."""
        self._beat = time.monotonic()

    def start(self) -> ServiceHealth:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._halt.is_set():
            try:
                self._look(timeout=LOOK_TIMEOUT_S)
                self._answered = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - whatever the client raises, the broker did not answer
                self._look_failure = f"the broker does not answer ({' '.join(str(exc).split()) or type(exc).__name__})"
            self._halt.wait(self.look_every_s)

    def liveness(self) -> str | None:
        if self._alive is not None:
            return self._alive()
        age = time.monotonic() - self._beat
        return None if age <= self.liveness_timeout_s else f"no heartbeat from the {self.service} loop for {age:.0f} s"

    def readiness(self) -> str | None:
        if self._answered is None or time.monotonic() - self._answered > self.stale_s:
            return self._look_failure
        return self.liveness() or self._working()

    def collect(self):
        """`sluice_service_alive` and `sluice_service_ready` (1 while /livez, /readyz answer 200), in the service's registry."""
        for name, why in (("alive", self.liveness()), ("ready", self.readiness())):
            family = GaugeMetricFamily(f"sluice_service_{name}", f"1 while the {name} probe answers 200", labels=["service"])
            family.add_metric([self.service], 0.0 if why else 1.0)
            yield family

    def serve(self, port: int, host: str, registry) -> ServiceHealth:
        """/metrics of `registry` (with the gauges above), /livez and /readyz on host:port (port 0: none); starts the looks."""
        if port:
            registry.register(self)
            try:
                self._server = metrics.MetricsServer(host, port, health=self, registry=registry)
            except Exception:
                registry.unregister(self)
                raise
            self._registry = registry
        return self.start()

    def close(self) -> None:
        """Stop the looks and the server, and leave the registry as it was."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout=LOOK_TIMEOUT_S + 1)
        if self._server is not None:
            self._server.close()
            self._registry.unregister(self)
            self._server = None
