"""The experiment report of `sluice experiment report`, kept current by services that read the topics as they grow.

The monitor (its gauges) and the status page (its Experiments section) hand
over `labeled` records with their message key (the label join keys them by
event id) and deployment records as they arrive; `report()` is
stream.lifecycle.experiment_report.report over what was handed over, so its
numbers are the command's on the same topics.

Only each event's row is held (`labeled.rows`, applied to what was held and
the new records together): memory grows with the events, not with the
corrections and duplicates, and the report is the same as over every record.
"""

from __future__ import annotations

import threading

from stream.lifecycle import experiments as ex
from stream.lifecycle.experiment_report import report
from stream.lifecycle.labeled import rows
from stream.serving.deployment import Deployment

#: The field the held rows carry their event id in (the message key).
KEY_FIELD = "_event_key"


class LiveExperiments:
    def __init__(self, settings: ex.Settings | None = None):
        self.settings = settings or ex.Settings()
        self.history: list[Deployment] = []
        self.changed = False  # something arrived since the last report
        self._rows: dict[str, dict] = {}
        self._report: dict | None = None
        self._lock = threading.Lock()  # the page's reader thread adds while its server reports

    def add(self, keyed: list[tuple[bytes | str | None, dict]]) -> None:
        """`labeled` records with their message keys; an unkeyed record names no event and is skipped."""
        batch = [{**record, KEY_FIELD: key.decode() if isinstance(key, bytes) else key}
                 for key, record in keyed if key is not None]
        with self._lock:
            held = {r[KEY_FIELD]: self._rows[r[KEY_FIELD]] for r in batch if r[KEY_FIELD] in self._rows}
            latest = rows([*held.values(), *batch], KEY_FIELD)
            self._rows.update(latest)
            self.changed = self.changed or bool(latest)

    def deployed(self, deployment: Deployment) -> None:
        with self._lock:
            self.history.append(deployment)
            self.changed = True

    @property
    def events(self) -> int:
        return len(self._rows)

    def report(self) -> dict | None:
        """The command's JSON report (None before the first deployment record); recomputed only after news."""
        with self._lock:
            if self.changed and self.history:
                self._report = report(list(self._rows.values()), list(self.history), KEY_FIELD, settings=self.settings)
            self.changed = False
            return self._report
