"""Driver for `videogen bench dispatch --peers pgqueuer`: no-op jobs through
pgqueuer on a fresh database, one JSON line on stdout.

    python pgqueuer_driver.py --url URL --mode matching|batch --workers W --jobs J [--producers P]

A worker is a QueueManager on its own connection, as pgqueuer's own
benchmark (tools/benchmark.py) scales out: W of them, default dequeue batch
size (10, so each may run up to 10 jobs at once), no concurrency limit (a
per-entrypoint limit counts picked jobs until their buffered completion is
flushed, every 0.1 s, which caps it at limit / 0.1 s), uvloop.

matching: the W QueueManagers start first (continuous mode); P producers, each on its own
  connection, enqueue one job per call (one durable statement each) until J
  are in; the clock runs from the first enqueue until the `pgqueuer` table is
  empty (pgqueuer deletes a job's row when its buffered completion is
  written to `pgqueuer_log`).
batch: J jobs are bulk-enqueued (lists, 1,000 per call) first; the clock
  runs from starting the W QueueManagers in their `drain` mode until all
  have returned (queue empty, completions flushed).
Run with the interpreter of the venv that setup.sh made.
"""

import argparse
import asyncio
import json
import time
from datetime import timedelta
from importlib.metadata import version

import asyncpg
import uvloop
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["matching", "batch"], required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--producers", type=int, default=32)
    a = p.parse_args()
    if a.workers < 1 or a.jobs < 1 or a.producers < 1:
        p.error("--workers, --jobs and --producers must be positive")
    return a


async def remaining(conn) -> int:
    return await conn.fetchval("SELECT count(*) FROM pgqueuer")


def queue_manager(conn, handled: list[int]) -> QueueManager:
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        handled[0] += 1

    return qm


async def main() -> None:
    a = parse_args()
    admin = await asyncpg.connect(a.url)
    await Queries(AsyncpgDriver(admin)).install()
    handled = [0]
    qms = [queue_manager(await asyncpg.connect(a.url), handled) for _ in range(a.workers)]
    if a.mode == "batch":
        queries = Queries(AsyncpgDriver(admin))
        t0 = time.perf_counter()
        done = 0
        while done < a.jobs:
            n = min(1000, a.jobs - done)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            done += n
        enqueue_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        drain = QueueExecutionMode.drain
        await asyncio.gather(*(qm.run(mode=drain, dequeue_timeout=timedelta(seconds=1)) for qm in qms))
        wall_s = time.perf_counter() - t1
    else:
        continuous = QueueExecutionMode.continuous
        consumers = asyncio.gather(*(qm.run(mode=continuous) for qm in qms))
        await asyncio.sleep(0.5)  # let them install their listeners and go idle
        conns = [await asyncpg.connect(a.url) for _ in range(a.producers)]
        counter = [0]

        async def produce(conn):
            queries = Queries(AsyncpgDriver(conn))
            while counter[0] < a.jobs:
                counter[0] += 1
                await queries.enqueue("noop", None)

        t0 = time.perf_counter()
        await asyncio.gather(*(produce(c) for c in conns))
        enqueue_s = time.perf_counter() - t0
        while handled[0] < a.jobs:
            await asyncio.sleep(0.001)
        while await remaining(admin) > 0:
            await asyncio.sleep(0.002)
        wall_s = time.perf_counter() - t0
        for qm in qms:
            qm.shutdown.set()
        await consumers
        for c in conns:
            await c.close()
    left = await remaining(admin)
    if handled[0] != a.jobs or left != 0:
        raise SystemExit(f"{handled[0]} of {a.jobs} jobs handled, {left} rows left")
    await admin.close()
    out = {
        "peer": "pgqueuer",
        "version": version("pgqueuer"),
        "mode": a.mode,
        "workers": a.workers,
        "producers": a.producers if a.mode == "matching" else 0,
        "jobs": a.jobs,
        "wall_s": wall_s,
        "jobs_per_sec": a.jobs / wall_s,
        "enqueue_s": enqueue_s,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    uvloop.run(main())
