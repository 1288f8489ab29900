"""Driver for `videogen bench dispatch --peers procrastinate`: no-op jobs
through procrastinate on a fresh database, one JSON line on stdout.

    python procrastinate_driver.py --url URL --mode matching|batch --workers W --jobs J [--producers P]

matching: a worker (concurrency W, default settings: LISTEN/NOTIFY, jobs
  kept as `succeeded`) starts first; P producers each `defer_async` one job
  per call (one durable transaction each) until J are in; the clock runs
  from the first defer until no job is `todo` or `doing`.
batch: J jobs are bulk-deferred (`batch_defer_async`, 1,000 per call)
  first; the clock runs from starting a worker with `wait=False` until it
  returns (it stops once it has caught up with the queue).
Run with the interpreter of the venv that setup.sh made.
"""

import argparse
import asyncio
import json
import logging
import time
from importlib.metadata import version

import procrastinate


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


UNFINISHED = "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
SUCCEEDED = "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'"


async def count(app, sql: str) -> int:
    row = await app.connector.execute_query_one_async(sql)
    return row["n"]


async def main() -> None:
    a = parse_args()
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=a.url, min_size=1, max_size=a.producers + a.workers + 4
        )
    )
    handled = [0]

    @app.task(name="noop")
    async def noop() -> None:
        handled[0] += 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        if a.mode == "batch":
            t0 = time.perf_counter()
            done = 0
            while done < a.jobs:
                n = min(1000, a.jobs - done)
                await noop.batch_defer_async(*([{}] * n))
                done += n
            enqueue_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            await app.run_worker_async(
                concurrency=a.workers, wait=False, install_signal_handlers=False
            )
            wall_s = time.perf_counter() - t1
        else:
            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=a.workers, wait=True, install_signal_handlers=False
                )
            )
            await asyncio.sleep(0.5)  # let it start listening and go idle
            counter = [0]

            async def produce():
                while counter[0] < a.jobs:
                    counter[0] += 1
                    await noop.defer_async()

            t0 = time.perf_counter()
            await asyncio.gather(*(produce() for _ in range(a.producers)))
            enqueue_s = time.perf_counter() - t0
            while handled[0] < a.jobs:
                await asyncio.sleep(0.001)
            while await count(app, UNFINISHED) > 0:
                await asyncio.sleep(0.002)
            wall_s = time.perf_counter() - t0
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        succeeded = await count(app, SUCCEEDED)
    if handled[0] != a.jobs or succeeded != a.jobs:
        raise SystemExit(f"{handled[0]} of {a.jobs} jobs handled, {succeeded} succeeded")
    out = {
        "peer": "procrastinate",
        "version": version("procrastinate"),
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
    asyncio.run(main())
