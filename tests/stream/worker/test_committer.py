"""The worker's per-partition committer: order, grouping and what it writes.

The broker is replaced here by deliveries whose completion the test decides,
because the property under test is the order of events when deliveries
finish out of order, which a real broker does not produce on demand. The
end-to-end and crash-parity tests run the same code against a real broker.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from stream.pipeline.engine import BatchOutcome, Message
from stream.worker.committer import MAX_IN_FLIGHT, Chunk, Committer
from stream.worker.ends import FENCE_KEY
from stream.worker.state import TableState


class ControlledDeliveries:
    """`send` records what was sent and returns a future the test resolves."""

    def __init__(self):
        self.sent: list[list[tuple]] = []
        self.futures: list[asyncio.Future] = []
        self.auto = False  # resolve state and fence writes at once

    def send(self, messages):
        future = asyncio.get_running_loop().create_future()
        self.sent.append(list(messages))
        self.futures.append(future)
        if self.auto or not messages:
            future.set_result(None)
        return future

    async def wait(self, future):
        await asyncio.shield(future)  # as Deliveries.wait: cancelling a waiter leaves the delivery alone


class Event:
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def ack(self):
        self.log.append(("ack", self.name))


def _table():
    return SimpleNamespace(data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: "changelog"))


def _setup(auto: bool = True) -> tuple[ControlledDeliveries, TableState, list]:
    """Deliveries (state writes resolve at once when `auto`), a table state over them, an ack log."""
    deliveries = ControlledDeliveries()
    deliveries.auto = auto
    return deliveries, TableState(_table(), deliveries), []


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


def _chunk(number: int, writes: dict[str, bytes], sent: asyncio.Future, log: list) -> Chunk:
    outcome = BatchOutcome(writes=writes)
    now = time.perf_counter()
    return Chunk(number, [Event(log, f"c{number}")], [Message(None, b"", number, 0)], outcome, sent, now, now, 0.0)


async def _settle():
    for _ in range(20):
        await asyncio.sleep(0)


def test_chunks_delivered_out_of_order_are_committed_in_order_as_one_group():
    async def scenario():
        deliveries, state, log = _setup()
        outputs = [_future() for _ in range(3)]
        committer = Committer(0, state, None, partition=2)
        chunks = [
            _chunk(1, {"a": b"1", "b": b"1"}, outputs[0], log),
            _chunk(2, {"a": b"2"}, outputs[1], log),
            _chunk(3, {"c": b"3"}, outputs[2], log),
        ]
        for c in chunks:
            state.stage(c.outcome.writes, c.number)
            committer.add(c)
        # Later chunks' outputs arrive first: nothing may be written or acked.
        outputs[1].set_result(None)
        outputs[2].set_result(None)
        await _settle()
        assert log == [] and deliveries.sent == [] and state.table.data == {}
        outputs[0].set_result(None)
        await _settle()
        # One state write (merged, the latest chunk's value wins) and one fence.
        assert len(deliveries.sent) == 2
        written = {k: v for _, k, v, _, _ in deliveries.sent[0]}
        assert written == {b"a": b"2", b"b": b"1", b"c": b"3"}
        assert {p for *_, p in deliveries.sent[0]} == {2}
        assert deliveries.sent[1] == [("changelog", FENCE_KEY, b"", None, 2)]
        assert log == [("ack", "c1"), ("ack", "c2"), ("ack", "c3")]
        assert state.table.data == {b"a": b"2", b"b": b"1", b"c": b"3"}
        assert state.pending == {}
        await committer.close()

    asyncio.run(scenario())


def test_state_is_written_only_after_the_outputs_and_pending_state_of_later_chunks_survives():
    async def scenario():
        deliveries, state, log = _setup(auto=False)
        first_out = _future()
        second_out = _future()
        committer = Committer(1, state, None, partition=0)
        first, second = _chunk(1, {"a": b"1"}, first_out, log), _chunk(2, {"a": b"2"}, second_out, log)
        state.stage(first.outcome.writes, 1)
        committer.add(first)
        first_out.set_result(None)
        await _settle()
        # The first chunk's state write is on its way; a second chunk computed
        # meanwhile rewrites the same key before that write is acknowledged.
        assert len(deliveries.sent) == 1 and log == []
        state.stage(second.outcome.writes, 2)
        committer.add(second)
        deliveries.futures[0].set_result(None)  # state records
        await _settle()
        deliveries.futures[1].set_result(None)  # fence
        await _settle()
        assert log == [("ack", "c1")]
        # The table holds chunk 1's value; reads still see chunk 2's pending one.
        assert state.table.data == {b"a": b"1"}
        assert state.get("a") == b"2"
        # The second chunk's outputs are not on the broker: no write, no ack.
        assert len(deliveries.sent) == 2
        second_out.set_result(None)
        await _settle()
        deliveries.futures[2].set_result(None)
        await _settle()
        deliveries.futures[3].set_result(None)
        await _settle()
        assert log == [("ack", "c1"), ("ack", "c2")]
        assert state.table.data == {b"a": b"2"} and state.pending == {}
        await committer.close()

    asyncio.run(scenario())


def test_the_actor_waits_for_room_when_too_many_chunks_are_uncommitted():

    async def scenario():
        deliveries, state, log = _setup()
        committer = Committer(0, state, None, partition=0)
        held = _future()
        for n in range(MAX_IN_FLIGHT):
            committer.add(_chunk(n, {}, held, log))
        room = asyncio.ensure_future(committer.room())
        await _settle()
        assert not room.done()
        held.set_result(None)
        await _settle()
        assert room.done()
        assert [name for _, name in log] == [f"c{n}" for n in range(MAX_IN_FLIGHT)]
        await committer.close()

    asyncio.run(scenario())


def test_a_group_stops_at_the_first_chunk_whose_outputs_are_not_on_the_broker():
    async def scenario():
        deliveries, state, log = _setup()
        outs = [_future() for _ in range(3)]
        committer = Committer(0, state, None, partition=1)
        for n, writes in enumerate([{"a": b"0"}, {"b": b"1"}, {"c": b"2"}]):
            chunk = _chunk(n, writes, outs[n], log)
            state.stage(writes, n)
            committer.add(chunk)
        outs[2].set_result(None)  # the third is delivered, the second is not
        outs[0].set_result(None)
        await _settle()
        assert log == [("ack", "c0")]
        assert [k for _, k, *_ in deliveries.sent[0]] == [b"a"]
        assert state.table.data == {b"a": b"0"}
        assert set(state.pending) == {"b", "c"}
        outs[1].set_result(None)
        await _settle()
        assert log == [("ack", "c0"), ("ack", "c1"), ("ack", "c2")]
        assert [k for _, k, *_ in deliveries.sent[2]] == [b"b", b"c"]
        await committer.close()

    asyncio.run(scenario())


def test_closing_drops_the_pending_state_of_uncommitted_chunks_only():
    async def scenario():
        deliveries, state, log = _setup()
        done, held = (_future() for _ in range(2))
        committer = Committer(0, state, None, partition=3)
        other = Committer(0, state, None, partition=1)
        state.stage({"x": b"other"}, 99)  # another partition's uncommitted chunk
        other.add(_chunk(99, {"x": b"other"}, _future(), log))
        for n, (writes, sent) in enumerate([({"a": b"0"}, done), ({"a": b"1", "b": b"1"}, held)]):
            state.stage(writes, n)
            committer.add(_chunk(n, writes, sent, log))
        done.set_result(None)
        await _settle()
        assert log == [("ack", "c0")] and state.table.data == {b"a": b"0"}
        # The partition is revoked with chunk 1 uncommitted, its outputs still
        # in flight: closing waits until the broker has them (a new owner's
        # replayed rows must not land before them), then drops its state.
        closing = asyncio.ensure_future(committer.close())
        await _settle()
        assert not closing.done()
        held.set_result(None)
        await closing
        assert state.get("a") == b"0" and state.get("b") is None
        assert state.pending == {"x": (b"other", 99)}
        await _settle()
        assert log == [("ack", "c0")]
        other.chunks[0].sent.set_result(None)
        await other.close()

    asyncio.run(scenario())


def test_a_delivery_timeout_ends_the_worker_with_one_line_and_no_traceback(monkeypatch, caplog):
    """An outage (outputs not delivered in time) is not a bug: one CRITICAL line, no traceback, status 70."""
    import pytest

    from stream.kafka.clients import KafkaDeliveryError
    from stream.worker import committer

    def exit_(status):
        raise SystemExit(status)

    monkeypatch.setattr(committer.os, "_exit", exit_)
    monkeypatch.setattr(committer.logging, "shutdown", lambda: None)
    with pytest.raises(SystemExit) as ended:
        try:
            raise KafkaDeliveryError("3 outputs not delivered within 60 s: Local: Message timed out")
        except KafkaDeliveryError:
            committer.crash(1, 2)
    assert ended.value.code == 70
    (record,) = [r for r in caplog.records if r.name == "sluice.worker"]
    assert record.levelname == "CRITICAL" and record.exc_info is None
    assert "Message timed out" in record.getMessage() and "partition 2" in record.getMessage()
