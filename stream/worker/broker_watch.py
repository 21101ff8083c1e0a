"""Readiness that follows the broker, and a clear exit when the broker has lost its log.

Faust's clients notice a dead broker only when they next need it: an idle
worker stayed ready for as long as no event came, and a broker restarted
without its data (the embedded broker keeps everything in memory) left a
worker that looked healthy but whose offsets and window state belonged to
a log that no longer existed. It died only at the next event, from
whichever client tripped first.

`BrokerWatch` looks at the broker every PROBE_INTERVAL_S from a thread of
its own (`stream.kafka.probe`): the worker's topics, their end offsets and
the group's committed offsets. An unanswered look makes the worker not
ready at once. Evidence that the log was lost (a watched topic gone or
resized, an end offset or a committed offset lower than before, or gone),
seen in two looks in a row, ends the process with one log line and status EXIT_LOG_LOST: nothing the
worker could do from there would be right, and a supervisor restarting it
into the new log, with the operator told what happened, is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from stream import metrics
from stream.kafka.delivery import EXIT_FATAL_CLIENT
from stream.kafka.probe import LogProbe, LogView, ProbeFailed

log = logging.getLogger("sluice.worker")

#: Seconds between two looks at the broker.
PROBE_INTERVAL_S = 1.0
#: How long one look may wait for an answer before the broker counts as unreachable.
PROBE_TIMEOUT_S = 1.0
#: Exit status of a worker whose broker lost its log (or its consumer group).
EXIT_LOG_LOST = 72


def evidence_of_loss(before: LogView, now: LogView) -> str | None:
    """What in `now` shows the broker no longer holds the log seen in `before` (None: nothing does).

    End offsets and committed offsets never decrease on a broker that keeps
    its data (the embedded broker's end offsets lag, but never go back).
    """
    for topic, n in before.partitions.items():
        if topic not in now.partitions:
            return f"topic {topic} is gone"
        if now.partitions[topic] != n:
            return f"topic {topic} has {now.partitions[topic]} partitions instead of {n}"
    for (topic, partition), end in before.ends.items():
        found = now.ends.get((topic, partition), 0)
        if found < end:
            return f"the end offset of {topic}[{partition}] went back from {end} to {found}"
    for (topic, partition), offset in before.committed.items():
        found = now.committed.get((topic, partition))
        if found is None:
            return f"the group's committed offset {offset} on {topic}[{partition}] is gone"
        if found < offset:
            return f"the group's committed offset on {topic}[{partition}] went back from {offset} to {found}"
    return None


def lost_log_line(bootstrap: str, evidence: str, data_dir: str) -> str:
    return (
        f"the Kafka broker at {bootstrap} lost its log ({evidence}), so this worker's offsets and window state "
        f"belong to data that no longer exists; exiting (status {EXIT_LOG_LOST}). To do: give the broker "
        f"persistent storage, then restart the worker with an empty data directory ({data_dir}) "
        "so its state is rebuilt from what the broker holds now"
    )


def exit_with(line: str, status: int) -> None:
    """One critical log line, then exit at once (crash-only: nothing is acked on the way out)."""
    log.critical(line)
    logging.shutdown()
    os._exit(status)


def producer_fatal(reason: str) -> None:
    """A delivery producer can never send again (`Deliveries.on_fatal`): one line saying why and what to do, then exit."""
    exit_with(
        f"{reason}: the broker refuses this worker's producer for good (OUT_OF_ORDER_SEQUENCE_NUMBER or "
        "UNKNOWN_PRODUCER_ID: the broker lost its log or producer state; PRODUCER_FENCED: another process took "
        f"the producer over); exiting (status {EXIT_FATAL_CLIENT}). To do: restart the worker (a supervisor does); "
        "if the broker lost its log, give it persistent storage",
        EXIT_FATAL_CLIENT,
    )


class BrokerWatch:
    """Looks at the broker every PROBE_INTERVAL_S from a daemon thread (see the module docstring).

    `answering()` is False from the first look that goes unanswered (or
    when looks stop coming) until one is answered again. `on_lost(evidence)`
    is called once the log is seen to be lost; the worker's exits.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Callable[[], list[str]],
        committed_topics: list[str],
        on_lost: Callable[[str], None],
    ):
        self.topics = topics  # asked before each look: Faust names its changelogs once the app is built
        self.committed_topics = committed_topics
        self.on_lost = on_lost
        self._probe = LogProbe(bootstrap, group)
        self._answered_at: float | None = None
        self._problem: str | None = "the broker was not asked yet"
        self._known: LogView | None = None
        self._suspect: str | None = None  # evidence of a lost log seen in the latest look, to be confirmed
        self._thread = threading.Thread(target=self._run, name="sluice-broker-watch", daemon=True)

    def start(self) -> BrokerWatch:
        self._thread.start()
        return self

    def answering(self) -> bool:
        if self._problem is not None or self._answered_at is None:
            return False
        return time.monotonic() - self._answered_at <= PROBE_INTERVAL_S + 2 * PROBE_TIMEOUT_S

    def look_once(self) -> None:
        try:
            view = self._probe.look(self.topics(), self.committed_topics, PROBE_TIMEOUT_S)
        except ProbeFailed as exc:
            if self._problem is None:
                log.warning("not ready: the broker did not answer within %.0f s (%s)", PROBE_TIMEOUT_S, exc)
            self._problem = str(exc)
            metrics.set_ready(False, f"the broker does not answer ({exc})")  # at once; it rises again only through the health check
            return
        if self._known is not None:
            evidence = evidence_of_loss(self._known, view)
            if evidence is not None:
                # Two looks in a row must show it: a lost log stays lost, a
                # one-off odd answer does not end a healthy worker.
                suspected, self._suspect = self._suspect, evidence
                self._problem = evidence
                metrics.set_ready(False, f"the broker may have lost its log: {evidence}")
                if suspected is not None:
                    self.on_lost(evidence)
                return
        self._suspect = None
        if self._problem is not None and self._answered_at is not None:
            log.warning("the broker answers again")
        self._known, self._problem, self._answered_at = view, None, time.monotonic()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self.look_once()
            time.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - started)))
