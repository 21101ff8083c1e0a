"""`sluice broker` starts Tansu on 127.0.0.1, accepts clients, and stops on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from stream.kafka.broker import free_port


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A process started in the background by a non-interactive shell (`sluice
# broker &` in a script, CI runners) inherits SIGINT as ignored; Ctrl-C or
# `kill -INT` must stop the broker all the same.
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sluice_broker_runs_until_interrupted(inherited):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint if inherited == "ignored" else None,
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert admin.list_topics(timeout=10) is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "broker stopped" in proc.stdout.read()
        time.sleep(0.2)
        # Nothing listens any more: the broker process is gone.
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_embedded_broker_undercounts_end_offsets_and_a_marker_gives_the_exact_end(broker, unique):
    # Minimal reproduction of why Sluice never trusts reported end offsets
    # when it restores state: ten records in one batch, and the broker
    # reports the end as the start of that batch + 1.
    from confluent_kafka import Consumer, TopicPartition
    from faust.types.tuples import TP

    from stream.worker.ends import mark_ends
    from stream.kafka.clients import ensure_topics, make_producer

    topic = unique("ends")
    ensure_topics(broker.bootstrap_servers, [topic], 1)
    producer = make_producer(broker.bootstrap_servers, **{"linger.ms": 50})
    for i in range(10):
        producer.produce(topic, b"%d" % i, partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": unique("g"), "log_level": 0})
    try:
        _, reported = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert reported < 10  # Tansu: 1 (Apache Kafka: 10)
        assert mark_ends(broker.bootstrap_servers, [TP(topic, 0)]) == {TP(topic, 0): 11}
    finally:
        consumer.close()
