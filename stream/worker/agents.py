"""The stage agent: binds the engine to a stage's topic, one actor per partition."""

from __future__ import annotations

import asyncio

from stream.pipeline.engine import Engine
from stream.worker.committer import Committer, crash
from stream.worker.gather import Gather
from stream.worker.state import TableState


def stage_agent(engine: Engine, stage: int, state: TableState, pusher=None, debug: bool = False, served=None):
    # `served` (stream.worker.serve.Served): answers given by /score, compared with the last stage's predictions.
    gather = Gather(engine, stage, state, served if stage == engine.last_stage else None)  # shared by the stage's actors

    async def agent(stream):
        # Each event is a chunk: one partition's records from one fetch. The
        # stage computes it (with other partitions' chunks of the same fetch,
        # reading earlier chunks' pending state) and sends its outputs; the partition's committer waits for them, writes
        # the state and acks. Acks are manual: a chunk is acked after its
        # outputs and its state are on the broker, and after every earlier
        # chunk of the partition.
        committer: Committer | None = None
        try:
            async for event in stream.noack().events():
                try:
                    if committer is None:
                        committer = Committer(stage, state, pusher, event.message.partition, debug)
                    await committer.room()
                    chunk = await gather.compute(event)
                    committer.add(chunk)
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    crash(stage, event.message.partition)
        finally:
            # The partition was revoked or the worker stops: what is not
            # committed is replayed by whoever reads the partition next.
            if committer is not None:
                await committer.close()

    agent.__name__ = f"stage_{stage}"
    return agent
