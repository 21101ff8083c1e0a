"""The events archive against the real broker: every offset once, by the day of its broker time, across kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.lifecycle.archive import EventsArchive, day_of
from stream.services.archiver import archive_topic

DAY_MS = 86_400_000
START_MS = 1_796_000_000_000  # a fixed instant; messages alternate between its day and the next


def _produce(bootstrap: str, topic: str, first: int, n: int) -> None:
    producer = make_producer(bootstrap)
    for i in range(first, first + n):
        value = b"\xff not json" if i % 97 == 0 else b'{"i": %d}' % i
        key = None if i % 89 == 0 else b"card-%d" % (i % 7)
        producer.produce(topic, value, key, partition=i % 2, timestamp=START_MS + (i % 3 == 0) * DAY_MS + i)
    assert producer.flush(30) == 0


def _truth(bootstrap: str, topic: str, n: int) -> dict[tuple[int, int], tuple]:
    return {
        (m.partition(), m.offset()): (m.timestamp()[1], m.key(), m.value())
        for m in read_topic(bootstrap, topic, expect=n, timeout_s=60)
    }


def _archived(root) -> tuple[Counter, dict]:
    table = EventsArchive(root).read().to_pylist()
    counts = Counter((r["partition"], r["offset"]) for r in table)
    rows = {(r["partition"], r["offset"]): (r["broker_ts_ms"], r["key"], r["value"]) for r in table}
    return counts, rows


def test_every_message_is_archived_once_under_the_day_of_its_broker_time(broker, unique, tmp_path):
    bootstrap, topic = broker.bootstrap_servers, unique("archived")
    ensure_topics(bootstrap, [topic], 2)
    _produce(bootstrap, topic, 0, 600)
    root = tmp_path / "archive"
    assert archive_topic(bootstrap, topic, root, idle_s=2.0, flush_s=0.05) == 600
    counts, rows = _archived(root)
    truth = _truth(bootstrap, topic, 600)
    assert set(counts.values()) == {1}
    assert rows == truth  # bytes as they arrived: invalid values and missing keys too
    for path in root.glob("day=*/partition=*/*.parquet"):
        day = path.parent.parent.name.split("=", 1)[1]
        for row in pq.read_table(path).to_pylist():
            assert day_of(row["broker_ts_ms"]) == day
    assert len({p.parent.parent.name for p in root.glob("day=*/partition=*/*.parquet")}) == 2

    # A second run finds nothing new: the position comes from the files.
    assert archive_topic(bootstrap, topic, root, idle_s=1.0) == 0
    _produce(bootstrap, topic, 600, 100)
    assert archive_topic(bootstrap, topic, root, idle_s=2.0) == 100
    counts, rows = _archived(root)
    assert set(counts.values()) == {1} and rows == _truth(bootstrap, topic, 700)


def test_a_run_whose_days_alternate_is_written_as_a_prefix_in_offset_order(tmp_path):
    """Broker times need not rise with offsets; a writer stopped half-way must leave a prefix, not holes."""
    archive = EventsArchive(tmp_path)
    rows = [(10, START_MS + DAY_MS, b"k", b"a"), (11, START_MS, b"k", b"b"), (12, START_MS, b"k", b"c"),
            (13, START_MS + DAY_MS, b"k", b"d")]
    paths = archive.write(0, rows)
    assert [p.name for p in paths] == ["10-10.parquet", "11-12.parquet", "13-13.parquet"]
    paths[-1].unlink()  # as if stopped before the last file
    assert archive.next_offsets() == {0: 13}
    (tmp_path / "day=x").mkdir()
    (paths[0].parent / ".half-written.tmp").write_bytes(b"partial")  # a temporary file is never read
    assert [r["offset"] for r in archive.read().to_pylist()] == [10, 11, 12]


@pytest.mark.parametrize("kills", [2])
def test_a_killed_archiver_restarted_archives_every_offset_exactly_once(broker, unique, tmp_path, kills):
    bootstrap, topic = broker.bootstrap_servers, unique("killed")
    ensure_topics(bootstrap, [topic], 2)
    root = tmp_path / "archive"
    command = [sys.executable, "-m", "stream.cli", "archive", "--bootstrap-servers", bootstrap, "--topic", topic,
               "--output", str(root), "--flush-s", "0.05", "--metrics-port", "0"]
    produced = 0
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            before = sum(EventsArchive(root).next_offsets().values())
            _produce(bootstrap, topic, produced, 400)
            produced += 400
            deadline = time.monotonic() + 60
            while sum(EventsArchive(root).next_offsets().values()) <= before and time.monotonic() < deadline:
                time.sleep(0.05)
            _produce(bootstrap, topic, produced, 400)  # arriving while the archiver is killed
            produced += 400
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    finished = subprocess.run([*command, "--idle", "3"], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    counts, rows = _archived(root)
    assert set(counts.values()) == {1}
    assert rows == _truth(bootstrap, topic, produced)


def test_the_archiver_answers_its_probes_and_counts_what_it_archived(broker, unique, tmp_path):
    import socket
    import urllib.request

    bootstrap, topic = broker.bootstrap_servers, unique("probed")
    ensure_topics(bootstrap, [topic], 2)
    _produce(bootstrap, topic, 0, 50)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "archive", "--bootstrap-servers", bootstrap, "--topic", topic,
         "--output", str(tmp_path / "archive"), "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    try:
        deadline = time.monotonic() + 60
        while get("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get("/readyz")[0] == 200 and get("/livez")[0] == 200

        def archived() -> float:
            return sum(
                float(line.rsplit(" ", 1)[1]) for line in get("/metrics")[1].splitlines()
                if line.startswith("sluice_archived_total{")
            )

        while archived() < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert archived() == 50
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0  # SIGTERM: the last run is written, and it exits cleanly
