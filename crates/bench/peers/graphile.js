// Driver for `videogen bench dispatch --peers graphile`: no-op jobs through
// graphile-worker on a fresh database, one JSON line on stdout.
//
//   node graphile.js --url URL --mode matching|batch --workers W --jobs J [--producers P]
//
// matching: a runner with concurrency W starts first; P producers each add
//   one job per call (`addJob`: one durable transaction each) until J are
//   added; the clock runs from the first add until the queue table is empty
//   (graphile-worker deletes a job once it has completed it).
// batch: J jobs are bulk-inserted with `addJobs` (1,000 per call) first;
//   the clock runs from starting the runner until the table is empty.
// Default runner settings otherwise (no local queue, no completion batching).
// Needs NODE_PATH pointing at the node_modules that setup.sh installed.
"use strict";
process.env.NO_LOG_SUCCESS = "1";
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { Pool } = require("pg");
const version = require("graphile-worker/package.json").version;

function parseArgs(argv) {
  const a = { producers: 32 };
  for (let i = 0; i < argv.length; i += 2) a[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const k of ["workers", "jobs", "producers"]) a[k] = Number(a[k]);
  if (!a.url || !["matching", "batch"].includes(a.mode) || !(a.workers > 0) || !(a.jobs > 0) || !(a.producers > 0)) {
    throw new Error("usage: graphile.js --url URL --mode matching|batch --workers W --jobs J [--producers P]");
  }
  return a;
}

const quiet = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function remaining(pool) {
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
  return rows[0].n;
}

// Once every handler has run, poll until the completions are committed.
async function drained(pool, handled, jobs) {
  while (handled.n < jobs) await sleep(1);
  while ((await remaining(pool)) > 0) await sleep(2);
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const pool = new Pool({ connectionString: a.url, max: a.producers + 2 });
  // graphile-worker wants error handlers on the pool and on each client.
  const handle = (p, name) => {
    p.on("error", (e) => console.error(`${name}: ${e}`));
    p.on("connect", (c) => c.on("error", (e) => console.error(`${name} client: ${e}`)));
  };
  handle(pool, "pool");
  const utils = await makeWorkerUtils({ pgPool: pool, logger: quiet });
  await utils.migrate();
  const handled = { n: 0 };
  const runnerPool = new Pool({ connectionString: a.url, max: Math.max(10, a.workers + 2) });
  handle(runnerPool, "runner pool");
  const runnerOptions = {
    pgPool: runnerPool,
    concurrency: a.workers,
    noHandleSignals: true,
    logger: quiet,
    taskList: { noop: async () => { handled.n += 1; } },
  };
  let wall_s, enqueue_s;
  if (a.mode === "batch") {
    const t0 = process.hrtime.bigint();
    for (let done = 0; done < a.jobs; ) {
      const n = Math.min(1000, a.jobs - done);
      await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
      done += n;
    }
    enqueue_s = Number(process.hrtime.bigint() - t0) / 1e9;
    const t1 = process.hrtime.bigint();
    const runner = await run(runnerOptions);
    await drained(pool, handled, a.jobs);
    wall_s = Number(process.hrtime.bigint() - t1) / 1e9;
    await runner.stop();
  } else {
    const runner = await run(runnerOptions);
    let next = 0;
    const t0 = process.hrtime.bigint();
    const producer = async () => {
      while (next < a.jobs) {
        next += 1;
        await utils.addJob("noop", {});
      }
    };
    await Promise.all(Array.from({ length: a.producers }, producer));
    enqueue_s = Number(process.hrtime.bigint() - t0) / 1e9;
    await drained(pool, handled, a.jobs);
    wall_s = Number(process.hrtime.bigint() - t0) / 1e9;
    await runner.stop();
  }
  if (handled.n !== a.jobs) throw new Error(`${handled.n} of ${a.jobs} jobs handled`);
  await utils.release();
  await pool.end();
  await runnerPool.end();
  console.log(JSON.stringify({
    peer: "graphile-worker", version, mode: a.mode, workers: a.workers,
    producers: a.mode === "matching" ? a.producers : 0, jobs: a.jobs,
    wall_s, jobs_per_sec: a.jobs / wall_s, enqueue_s,
  }));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
