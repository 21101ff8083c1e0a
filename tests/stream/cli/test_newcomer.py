"""A newcomer's path, as a user types it: `sluice init`, feast apply, train, a worker, `sluice send`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import orjson
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from stream.cli.send import key_of, read_rows
from stream.kafka.reader import read_topic
from tests.stream.cli.test_cli import SLUICE, _env, run


def test_init_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = run("init", str(tmp_path))
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_init_repo_applies_trains_serves_and_send_delivers_every_event(tmp_path, broker, start_worker, unique):
    repo = tmp_path / "my_repo"
    topic = unique("purchases")
    proc = run("init", str(repo), "--topic", topic, "--users", "150", "--days", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("materialize", "--repo", str(repo), "2000-01-01", "2100-01-01", cwd=tmp_path)
    assert proc.returncode != 0 and "feast apply" in proc.stderr  # not applied yet: the fix is named

    from stream.feast import repo as feast_repo

    feast_repo.apply(repo)
    assert run("materialize", "--repo", str(repo), "2000-01-01", "2100-01-01").returncode == 0
    models = tmp_path / "models"
    proc = run("train", "--repo", str(repo), "--model-dir", str(models), "--trees", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation AUC" in proc.stdout

    predictions = unique("predictions")
    start_worker({"path": repo, "model_dir": models}, env={"SLUICE_PREDICTIONS_TOPIC": predictions})

    live = repo / "data" / "live.jsonl"
    ids = [orjson.loads(line)["event_id"] for line in live.read_bytes().splitlines()]
    assert ids
    with_garbage = tmp_path / "live_and_garbage.jsonl"
    with_garbage.write_bytes(live.read_bytes() + b"{not json\n")
    proc = run("send", str(with_garbage), "--repo", str(repo), "--bootstrap-servers", broker.bootstrap_servers, "--rate", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sent {len(ids) + 1:,} events to {topic}" in proc.stdout
    assert "1 had no readable 'user_id'" in proc.stdout

    scored = {orjson.loads(m.value())["event_id"] for m in read_topic(broker.bootstrap_servers, predictions, expect=len(ids), timeout_s=120, idle_s=30)}
    assert scored == set(ids)
    dead = list(read_topic(broker.bootstrap_servers, f"{topic}.dlq", expect=1, timeout_s=60, idle_s=20))
    assert [m.value() for m in dead] == [b"{not json"]


def test_send_reads_csv_and_parquet_as_typed_events(tmp_path):
    kinds = {"event_id": "string", "user_id": "string", "amount": "double", "n": "long", "ok": "bool", "event_time": "timestamp"}
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("event_id,user_id,amount,n,ok,event_time\ne-1,u-1,12.5,3,true,2026-12-01T00:00:00Z\ne-2,u-2,oops,,0,2026-12-01T00:00:01Z\n")
    rows = [orjson.loads(v) for v in read_rows(str(csv_path), kinds)]
    assert rows[0] == {"event_id": "e-1", "user_id": "u-1", "amount": 12.5, "n": 3, "ok": True, "event_time": "2026-12-01T00:00:00Z"}
    # A cell that is not its declared type goes as it is, for the worker to dead-letter with the reason.
    assert rows[1]["amount"] == "oops" and rows[1]["n"] is None and rows[1]["ok"] is False

    pq_path = tmp_path / "e.parquet"
    table = pa.table({
        "user_id": pa.array(["u-9"]), "amount": pa.array([1.25]),
        "event_time": pa.array([1_764_547_200_123_000], type=pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, pq_path)
    (row,) = [orjson.loads(v) for v in read_rows(str(pq_path), kinds)]
    assert row == {"user_id": "u-9", "amount": 1.25, "event_time": "2025-12-01T00:00:00.123Z"}


def test_the_key_is_the_partition_key_as_text():
    assert key_of(b'{"user_id": 42}', "user_id") == b"42"
    assert key_of(b'{"user_id": "u-1"}', "user_id") == b"u-1"
    assert key_of(b'{"other": 1}', "user_id") is None
    assert key_of(b"[1, 2]", "user_id") is None
    assert key_of(b"{oops", "user_id") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_keeps_a_stack_running_and_ctrl_c_stops_all_of_it(tmp_path, unique):
    """`sluice up` over a user's repo: it prints where everything is, serves, and Ctrl-C leaves nothing running."""
    repo = tmp_path / "repo"
    topic = unique("up")
    assert run("init", str(repo), "--topic", topic, "--users", "100", "--days", "3").returncode == 0
    from stream.feast import repo as feast_repo

    feast_repo.apply(repo)
    models = tmp_path / "models"
    assert run("train", "--repo", str(repo), "--model-dir", str(models), "--trees", "10").returncode == 0

    ports = {name: _free_port() for name in ("metrics", "monitor", "reasons", "join", "ui")}
    proc = subprocess.Popen(
        [SLUICE, "up", "--repo", str(repo), "--model-dir", str(models), "--dir", str(tmp_path / "stack"),
         "--app-id", unique("up"), "--metrics-port", str(ports["metrics"]), "--monitor-port", str(ports["monitor"]),
         "--reasons-port", str(ports["reasons"]), "--label-join-port", str(ports["join"]), "--ui-port", str(ports["ui"])],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  sluice send"):
                break
        text = "".join(lines)
        assert "sluice is up" in text, text[-3000:]
        bootstrap = re.search(r"broker\s+(\S+)", text).group(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # worker, label join, monitor, reasons, status page (and their helpers)

        for url in (f"http://127.0.0.1:{ports['ui']}/", f"http://127.0.0.1:{ports['metrics']}/readyz",
                    f"http://127.0.0.1:{ports['join']}/readyz"):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200, url
        send = run("send", str(repo / "data" / "live.jsonl"), "--repo", str(repo), "--bootstrap-servers", bootstrap)
        assert send.returncode == 0, send.stderr[-2000:]
        n = len((repo / "data" / "live.jsonl").read_bytes().splitlines())
        scored = list(read_topic(bootstrap, "predictions", expect=n, timeout_s=120, idle_s=30))
        assert len({m.key() for m in scored}) == n

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
