"""The worker's log: terminal escape codes only on a terminal.

`faust.Worker` (through mode) writes two kinds of escape codes into a log
that is not a terminal:

* Colours. mode's "colored" formatter (colorlog's TTYColoredFormatter)
  decides whether to colour by asking `sys.stdout` whether it is a terminal,
  but its handler writes to `sys.stderr`. `sluice worker 2> worker.log` run
  from a shell therefore writes colour codes into the file, since stdout is
  still the terminal.
* The start-up spinner. At log level warn and above, faust draws a spinner on
  stdout for each log record while the worker starts; it checks for a
  terminal before each frame, but not before hiding the cursor at the start
  (`ESC[?25l`) or showing it again at the end and at exit (`ESC[?25h`).

`Worker` fixes both once mode has configured logging: every colouring
formatter on a root handler asks the stream that handler writes to, and the
spinner is dropped when stdout is not a terminal (faust then logs "Ready" at
info level instead of drawing the final frame). colorlog's own switches
still apply: NO_COLOR turns colours off, FORCE_COLOR on.

It also bounds the stop: Faust's shutdown commits offsets, leaves the group
and stops its clients, each of which can wait for a broker that is gone
(measured: more than 60 s with the broker down). `shutdown_grace_s` after
the first SIGTERM or SIGINT the process exits regardless, with one log line
(status EXIT_STOP_CUT): crash-only processing makes that safe, since
nothing is acked before its outputs and state are on the broker.

And it thins out aiokafka's retries: with the broker away, aiokafka logs
the same few errors over and over (measured: 45-65 lines a second),
burying the one line that says what is wrong. Each of its
messages is logged at most once per REPEAT_EVERY_S.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import colorlog
import faust


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def colour_by_own_stream(logger: logging.Logger) -> None:
    """Make each colouring formatter of `logger`'s stream handlers decide by that handler's stream."""
    for handler in logger.handlers:
        formatter = handler.formatter
        if isinstance(handler, logging.StreamHandler) and isinstance(formatter, colorlog.ColoredFormatter):
            formatter.stream = handler.stream


#: Seconds during which an aiokafka message (by its format string) is not logged again.
REPEAT_EVERY_S = 30.0


class RepeatLimit(logging.Filter):
    """Lets each aiokafka message through at most once per `every_s` (other loggers are untouched)."""

    def __init__(self, every_s: float = REPEAT_EVERY_S):
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, object], float] = {}  # bounded by aiokafka's format strings

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key, now = (record.name, record.msg), time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        self._last[key] = now
        return True


#: Exit status of a worker whose stop took longer than its grace period and was cut short.
EXIT_STOP_CUT = 75


def _cut_stop(grace_s: float) -> None:
    logging.getLogger("sluice.worker").critical(
        "still stopping %.0f s after the stop signal (an unreachable broker?); exiting now (status %d): "
        "batches not yet committed are replayed by the next owner of their partitions",
        grace_s, EXIT_STOP_CUT,
    )
    logging.shutdown()
    os._exit(EXIT_STOP_CUT)


class Worker(faust.Worker):
    """`faust.Worker` whose output holds escape codes only where it goes to a terminal, and whose stop is bounded."""

    shutdown_grace_s: float = 10.0  # SLUICE_SHUTDOWN_GRACE_S

    def _schedule_shutdown(self, signal) -> None:
        if not self._signal_stop_time:  # the first stop signal starts the clock
            timer = threading.Timer(self.shutdown_grace_s, _cut_stop, args=(self.shutdown_grace_s,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        if self.spinner is not None and not _is_terminal(self.spinner.file):
            self.spinner = None
        super().on_setup_root_logger(logger, level)
        colour_by_own_stream(logger)
        for handler in logger.handlers:
            handler.addFilter(RepeatLimit())
