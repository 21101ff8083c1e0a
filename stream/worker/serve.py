"""Request/response in the worker: `POST /score` and `GET /features/{entity}` over the live window state.

The HTTP server runs in the worker's event loop (aiohttp, which Faust
brings), so a request reads the state between two micro-batches, never in
the middle of one, and needs no lock. `/score` checks the event as the
first stage would (a reject is a 400 with the dead letter's reason), makes
sure this worker holds the event's state in every stage (else 503 with
Retry-After: the partition is elsewhere, or moving), asks the engine what
the stream would answer (`stream.pipeline.ask`), then produces the event
to the events topic, to the partition it asked, and answers once the
broker has it. The stream then scores the event like any other; its
prediction is compared with the answer (`stream.serving.consistency`,
counted in sluice_serve_consistency_total). docs/serving.md has the why.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import NamedTuple

import mode
import orjson
from aiohttp import web

from features.online import values_after_latest
from stream import metrics
from stream.kafka.delivery import Deliveries, KafkaDeliveryError
from stream.lifecycle.label_config import partition_for
from stream.pipeline.ask import Answer, Question, Refused, ask_many, question
from stream.pipeline.engine import Engine
from stream.pipeline.events import iso_ms
from stream.serving.consistency import Consistency
from stream.settings import Settings
from stream.worker.broker_watch import producer_fatal

log = logging.getLogger("sluice.serve")

#: The header the produced event carries: the request that answered it.
HEADER_REQUEST = "sluice.request"
#: Seconds a client should wait before asking again while a partition moves.
RETRY_AFTER_S = 1
#: Longest request body read (an event over the message limit is refused by the validator anyway).
BODY_SLACK = 1024


class Served:
    """Answers given here whose events the stream has not scored yet: held for the comparison, and waited for.

    An answer must see the events answered before it: a client that scores
    two transactions of one card back to back expects the second to count
    the first. The first is on the events topic but maybe not folded yet,
    so a request whose entity (the partition key's value) has an answered
    event in flight waits until the stream has scored it, at most
    `settle_s`. Later stages' entities (a merchant, shared by many cards)
    are not waited for: at 1,000 requests/s most requests would share one
    with an event in flight and wait for the stream (tens of milliseconds);
    an answer that missed such an event ends as `differs`.
    """

    def __init__(self, engine: Engine, wait_s: float = 60.0, settle_s: float = 1.0):
        self.engine, self.settle_s = engine, settle_s
        self.consistency = Consistency(wait_s)
        self.log_topic = engine.topics["prediction_log"]
        self.unscored_topics = {engine.topics["late"], engine.topics["dlq"]}
        self.keys_of: dict[str, list[tuple[int, bytes]]] = {}  # event id -> its (stage, key) pairs
        self.in_flight: dict[tuple[int, bytes], int] = {}  # (stage, key) -> answered events not scored yet
        self.waiters: list[asyncio.Future] = []

    async def settled(self, keys: list[tuple[int, bytes]]) -> bool:
        """Wait until no answered event of these (stage, key) pairs is in flight (False: gave up after settle_s)."""
        deadline = time.monotonic() + self.settle_s
        while any(k in self.in_flight for k in keys):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                return False
        return True

    def hold(self, event_id: str, keys: list[tuple[int, bytes]], log_record: dict) -> None:
        self._release(event_id)  # the same event asked again (a client's retry): one count per key
        self._end(self.consistency.hold(event_id, log_record, time.monotonic()), "unseen")
        self.keys_of[event_id] = keys
        for k in keys:
            self.in_flight[k] = self.in_flight.get(k, 0) + 1

    def forget(self, event_id: str) -> None:
        """An answer whose event never entered the stream."""
        self.consistency.forget(event_id)
        self._release(event_id)

    def seen(self, outcomes) -> None:
        """The last stage's outcomes of one computation: compare the predictions of events answered here."""
        held = self.consistency.held
        if held:
            for outcome in outcomes:
                for out in outcome.outputs:
                    if out.topic == self.log_topic and out.key.decode() in held:
                        event_id = out.key.decode()
                        self._end([event_id], self.consistency.seen(event_id, orjson.loads(out.value)))
                    elif out.topic in self.unscored_topics:
                        self._unscored(out.value)
        self._end(self.consistency.expire(time.monotonic()), "unseen")

    def _unscored(self, value: bytes) -> None:
        """A late or dead-letter copy (the event's own bytes): an answered event the stream did not score ends unseen."""
        try:
            event_id = str(orjson.loads(value)[self.engine.id_field])
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return
        if event_id in self.consistency.held:
            self.consistency.forget(event_id)
            self._end([event_id], "unseen")

    def _end(self, event_ids: list[str], outcome: str | None) -> None:
        for event_id in event_ids:
            metrics.SERVE_CONSISTENCY.labels(outcome).inc()
            self._release(event_id)

    def _release(self, event_id: str) -> None:
        for k in self.keys_of.pop(event_id, ()):
            n = self.in_flight.pop(k) - 1
            if n:
                self.in_flight[k] = n
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Asked(NamedTuple):
    """An answer whose event is on its way to the events topic."""

    answer: Answer
    request_id: str
    sent: asyncio.Future  # resolves with the event's offset once the broker has it
    sent_at: float  # perf_counter when it was handed to the producer


class Asking:
    """Requests that arrive together (while the event loop was busy), asked of the engine in one pass (`ask_many`).

    One pass through the windows costs about as much for a few events as
    for one (1.5 ms for one answer, most of it fixed), so requests are
    asked together: those whose handlers reach `ask` before the next turn
    of the event loop (all that arrived while it was busy; waiting longer
    for company, 2 ms once, only added its own time: docs/serving.md,
    "Measured"). Answers come back in arrival order,
    and the requests' events are produced in that order (the order the
    questions were folded in) right after the computation, in the same turn
    of the loop: a handler resumes a turn later, which on a busy loop is
    milliseconds.
    """

    def __init__(self, engine: Engine, states: list, served: Served, send):
        self.engine, self.states, self.served = engine, states, served
        # send(question, request id) -> delivery future: an answered event is produced as soon as it is
        # answered, in the order the questions were folded, without waiting for its handler's next turn.
        self.send = send
        self.waiting: list[tuple[Question, asyncio.Future]] = []
        # Request ids: unique per worker run (a random prefix) and cheap (a counter, no urandom per request).
        self._id_prefix, self._ids = uuid.uuid4().hex[:16], itertools.count()

    def request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):016x}"

    async def ask(self, q: Question, steps: dict[str, float] | None = None) -> Asked | Refused:
        """The answer to `q`, its event sent; `steps` (if given) receives the seconds it queued and was computed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        asked_at = time.perf_counter()
        self.waiting.append((q, future))
        if len(self.waiting) == 1:
            loop.call_soon(self._run)
        answer, started, computed = await future
        if steps is not None:
            steps.update(queue=started - asked_at, compute=computed - started)
        return answer

    def _run(self) -> None:
        batch, self.waiting = self.waiting, []
        started = time.perf_counter()
        try:
            answers = ask_many(self.engine, [q for q, _ in batch], self.states)
        except Exception as exc:  # noqa: BLE001 - each request gets the error (a 500), the worker goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        computed = time.perf_counter()
        metrics.SERVE_ASKED_TOGETHER.observe(len(batch))
        for (q, future), answer in zip(batch, answers):
            if isinstance(answer, Answer):
                # Held at once: a request of the same card that arrives before this one's
                # event is scored must wait for it (Served.settled).
                self.served.hold(str(q.record[self.engine.id_field]), [(0, q.key)], answer.log)
                request_id = self.request_id()
                try:
                    answer = Asked(answer, request_id, self.send(q, request_id), time.perf_counter())
                except Exception as exc:  # noqa: BLE001 - refused by the client: this request's error (a 500)
                    self.served.forget(str(q.record[self.engine.id_field]))
                    if not future.done():
                        future.set_exception(exc)
                    continue
            if not future.done():
                future.set_result((answer, started, computed))


class ScoreServer(mode.Service):
    """The HTTP doors onto `ask`; started with the worker when --serve-port is set."""

    def __init__(self, app, engine: Engine, states: list, served: Served, settings: Settings, **kwargs):
        super().__init__(**kwargs)
        self.app, self.engine, self.states, self.served, self.settings = app, engine, states, served, settings
        self.deliveries: Deliveries | None = None
        self.runner: web.AppRunner | None = None
        self.listening = asyncio.Event()  # the worker's ready file waits for it
        self.asking = Asking(engine, states, served, send=self._send)

    async def on_start(self) -> None:
        # linger 0: one event per request, and a request waits for its delivery.
        self.deliveries = Deliveries(self.settings.bootstrap_servers, on_fatal=producer_fatal, **{"linger.ms": 0})
        http = web.Application(client_max_size=self.settings.max_message_bytes + BODY_SLACK)
        http.add_routes([web.post("/score", self.score), web.get("/features/{entity}", self.features)])
        self.runner = web.AppRunner(http, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.settings.metrics_host, self.settings.serve_port).start()
        self.listening.set()
        log.warning("sluice serve: http://%s:%d/score", self.settings.metrics_host, self.settings.serve_port)

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # -- the doors --------------------------------------------------------------

    async def score(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        steps: dict[str, float] = {}
        response = await self._score(request, steps)
        metrics.SERVE_REQUESTS.labels("/score", str(response.status)).inc()
        if response.status == 200:
            metrics.SERVE_SECONDS.observe(time.perf_counter() - started)
            for step, seconds in steps.items():
                metrics.SERVE_STEP_SECONDS.labels(step).observe(seconds)
        return response

    async def _score(self, request: web.Request, steps: dict[str, float]) -> web.Response:
        raw = await request.read()
        now_ms = int(time.time() * 1000)
        q = question(self.engine, raw, now_ms, self.settings.partitions)
        if isinstance(q, Refused):  # bad wherever it is asked
            return _json(400, {"error": q.kind, "reason": q.reason})
        elsewhere = self._moving() or self._not_owned([(stage, p) for stage, p in enumerate(q.partitions)])
        if elsewhere:
            return _unavailable(elsewhere)
        steps["settle"] = 0.0
        if (0, q.key) in self.served.in_flight:  # else nothing to wait for, and ownership checked this turn holds
            settling = time.perf_counter()
            await self.served.settled([(0, q.key)])
            steps["settle"] = time.perf_counter() - settling
            if self._moving() or self._not_owned(list(enumerate(q.partitions))):
                return _unavailable("the partition moved while the request waited")
        asked = await self.asking.ask(q, steps)
        if isinstance(asked, Refused):
            # Not produced: an event the stream would not score gets an answer saying why, and nothing else.
            return _json(422 if asked.kind == "late" else 400, {"error": asked.kind, "reason": asked.reason})
        event_id = str(q.record[self.engine.id_field])
        try:
            offset = await self.deliveries.wait(asked.sent)
            steps["deliver"] = time.perf_counter() - asked.sent_at
        except (KafkaDeliveryError, asyncio.TimeoutError) as exc:
            self.served.forget(event_id)
            return _unavailable(f"the event could not be written to {self.engine.topics['events']}: {exc}")
        return _json(200, _body(asked.answer, self.engine.id_field, asked.request_id, q.partitions[0], offset))

    def _send(self, q: Question, request_id: str) -> asyncio.Future:
        header = [(HEADER_REQUEST, request_id.encode())]
        return self.deliveries.send([(self.engine.topics["events"], q.key, q.raw, header, q.partitions[0])])

    async def features(self, request: web.Request) -> web.Response:
        response = self._features(request)
        metrics.SERVE_REQUESTS.labels("/features", str(response.status)).inc()
        return response

    def _features(self, request: web.Request) -> web.Response:
        moving = self._moving()
        if moving:
            return _unavailable(moving)
        entity = request.match_info["entity"]
        plan = self.engine.plan
        key = request.query.get("key", plan.partition_key)
        views = [v for v in plan.stream_views if v.join_keys == (key,)]
        if not views:
            keys = sorted({k for v in plan.stream_views for k in v.join_keys if len(v.join_keys) == 1})
            return _json(400, {"error": "unknown_key", "reason": f"no stream view is keyed by {key!r} alone; keys: {keys}"})
        stage = plan.stage_of(views[0])
        partition = partition_for(entity.encode(), self.settings.partitions)
        elsewhere = self._not_owned([(stage, partition)])
        if elsewhere:
            return _unavailable(elsewhere)
        aggregator, state = self.engine.aggregators[stage], self.states[stage]
        values, latest = {}, None
        for view in views:
            blob = state.get(aggregator.table_key(view.name, entity))
            if not blob:
                continue
            at, found = values_after_latest(view, [blob])
            latest = max(latest or 0, int(at[0]) - 1)
            values.update({f"{view.name}__{name}": _number(v[0]) for name, v in found.items()})
        if latest is None:
            return _json(404, {"error": "unknown_entity", "reason": f"no window state for {key}={entity!r} here"})
        return _json(200, {"key": key, "entity": entity, "latest_event_time": iso_ms(latest), "features": values})

    # -- ownership --------------------------------------------------------------

    def _moving(self) -> str | None:
        if self.app.rebalancing or getattr(self.app, "in_recovery", False):
            return "a rebalance is in progress: partitions are moving"
        return None

    def _not_owned(self, needed: list[tuple[int, int]]) -> str | None:
        """Why this worker cannot answer for these (stage, partition) pairs, or None if it holds them all."""
        actives = self.app.assignor.assigned_actives()  # a set of TPs, (topic, partition) named tuples
        topics = self.engine.repartition_topics
        for stage, partition in needed:
            if (topics[stage], partition) not in actives:
                return f"partition {partition} of {topics[stage]} (stage {stage}) is not held by this worker"
        return None


def _body(answer: Answer, id_field: str, request_id: str, partition: int, offset: int | None) -> dict:
    logged = answer.log
    keep = ("entity", "score", "decision", "model_version", "route", "fallback", "reasons", "rule", "threshold",
            "deployment", "event_time", "scored_at", "scores", "batch_missing", "features")
    body = {k: logged.get(k) for k in keep}
    body = {id_field: logged[id_field], **body, "feature_age_ms": answer.ages_ms}
    body.update(request_id=request_id, partition=partition, offset=offset)
    return body


def _number(value: float):
    value = float(value)
    return None if value != value else value


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _unavailable(reason: str) -> web.Response:
    return _json(503, {"error": "unavailable", "reason": reason, "retry_after_s": RETRY_AFTER_S},
                 {"Retry-After": str(RETRY_AFTER_S)})
